r"""Per-layer gradient and signal statistics of any model in one jitted call.

"Where do my gradients vanish or explode, layer by layer, and why?" :func:`probe` answers for
the model the researcher wrote, unchanged: a Flax linen module, a Flax NNX module, an Equinox
module or any ``apply_fn(params, x)`` (see :mod:`gradflow.adapters`). Its layers -- every
parameterised linear map the forward pass runs (Dense, Einsum, attention projections, Conv,
Embed, ``x @ w``) and every norm layer with parameters -- are found on the traced program and
tapped exactly by :mod:`gradflow.taps`, in the order the forward pass runs them. Layers of
:mod:`gradflow.models` also report the statistics of their activation (they sow it).

For each layer :math:`l = 1..L` in forward order, the readout last, with output :math:`z_l` and
the cost :math:`C = \frac{1}{B}\sum_x C_x` the mean over the batch:

* ``weight_grad_norm`` :math:`\|\partial C/\partial W_l\|_F` and ``bias_grad_norm``
  :math:`\|\partial C/\partial b_l\|_2` -- Nielsen's "speed of learning" of layer :math:`l`
  (*Neural Networks and Deep Learning*, ch. 5). NaN for a layer without a bias.
* ``preact_grad_norm`` / ``preact_grad_norm_std`` -- mean and standard deviation over the examples
  of :math:`\|\delta_l^x\|_2`, Nielsen's per-example error
  :math:`\delta_l^x = \partial C_x/\partial z_l^x = B\,\partial C/\partial z_l^x`. (The gradient
  of the *mean* cost with respect to one example's :math:`z` carries a factor :math:`1/B`; we undo
  it so the numbers do not depend on the batch size, and :math:`\partial C/\partial b_l =
  \frac{1}{B}\sum_x \delta_l^x`.)
* ``act_mean``, ``act_var`` -- mean and variance of the layer's signal :math:`h_l` over
  examples, positions and channels; ``avg_sq_channel_mean`` :math:`\frac{1}{n}\sum_i (E_x
  h_{l,i})^2` and ``avg_channel_var`` :math:`\frac{1}{n}\sum_i \mathrm{Var}_x h_{l,i}` over the
  :math:`n` channels (means over examples and positions), the signal-propagation plot statistics
  of Brock et al. (2021); ``preact_sq_mean`` :math:`\frac{1}{n}\sum_i E_x u_{l,i}^2` (the
  mean-field length :math:`q^l` of Poole et al. 2016 when there is no norm). For a
  :mod:`gradflow.models` layer, :math:`h_l = \phi(u_l)` is the activation and :math:`u_l` its
  argument; for any other layer both are its output :math:`z_l` (the probe cannot know which
  nonlinearity, if any, the model applies next).
* ``saturated_frac`` -- fraction of (example, unit) pairs with
  :math:`|\phi'(u)| < 0.01 \sup|\phi'|` (for ReLU this counts the inactive half);
  ``dead_frac`` -- fraction of units with :math:`\phi'(u) = 0` for every example of the batch
  (dead ReLUs). Both 0 for the linear readout, and NaN for layers not built from
  :class:`gradflow.models.DenseBlock`: they need :math:`\phi'`, which a generic layer does not
  name.
* ``weight_norm`` :math:`\|W_l\|_F`, and ``loss`` :math:`C`.

All arrays have shape ``(..., L)`` (``loss`` ``(...)``): ``jax.vmap`` over seeds adds the leading
axes::

    report = jax.vmap(lambda k: gf.probes.probe(model, model.init(k, x), x, y))(keys)

(keys from :func:`gradflow.rng.threefry_key` draw ``jax.random.key``'s numbers and compile faster).

:func:`probe_rnn` gives :math:`\|\partial C/\partial h_t\|` for every time step of a
:class:`gradflow.models.RNN` (Pascanu et al. 2013).

This module holds the probe itself. The report types and their readers live beside each other in
:mod:`gradflow.report` (:func:`~gradflow.report.verdict` labels each layer ``"vanishing"``,
``"healthy"`` or ``"exploding"``; :func:`~gradflow.report.format_report`,
:func:`~gradflow.report.to_frame` and :func:`~gradflow.report.plot_report` make it readable), the
costs in :mod:`gradflow.losses`, and :func:`~gradflow.history.check_history`, which scans a
training history for the signs of explosion, in :mod:`gradflow.history`. Their names stay
importable from here: ``gf.probes.verdict`` is ``gf.report.verdict``.
"""

from __future__ import annotations

import collections
import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from gradflow import _checks
from gradflow import adapters as _adapters
from gradflow import config as _config
from gradflow import losses as _losses
from gradflow import models as _models
from gradflow import report as _report
from gradflow import taps as _taps

# The losses, the report types and their readers, and the history check live in their own
# modules; their names stay importable from here (``gf.probes.verdict`` etc.).
from gradflow.history import Sign, check_history
from gradflow.losses import LossFn, get_loss
from gradflow.losses import mse as mse
from gradflow.losses import sigmoid_cross_entropy as sigmoid_cross_entropy
from gradflow.losses import softmax_cross_entropy as softmax_cross_entropy
from gradflow.report import EXPLODING as EXPLODING
from gradflow.report import VANISHING as VANISHING
from gradflow.report import (
    LayerReport,
    RecurrentReport,
    format_report,
    plot_report,
    to_frame,
    verdict,
)

#: Loss names :func:`probe` accepts (or pass a callable ``(logits, y) -> scalar``); the same
#: tuple as :data:`gradflow.losses.LOSSES`.
LOSSES: tuple[str, ...] = _losses.LOSSES
#: The array fields of :class:`LayerReport`; the same tuple as :data:`gradflow.report.STATS`.
STATS: tuple[str, ...] = _report.STATS

__all__ = [
    "LOSSES",
    "STATS",
    "LayerReport",
    "RecurrentReport",
    "Sign",
    "check_history",
    "format_report",
    "get_loss",
    "plot_report",
    "probe",
    "probe_rnn",
    "time_decay_rate",
    "to_frame",
    "verdict",
]

Array = jax.Array
_ROW_STATS = tuple(k for k in STATS if k != "loss")

#: Saturation threshold: :math:`|\phi'(u)|` below this fraction of :math:`\sup|\phi'|`.
SATURATION = 0.01


# ----------------------------------------------------------------------------------------- probe


def _strip(variables: Mapping) -> dict:
    return {k: v for k, v in variables.items() if k not in ("perturbations", "intermediates")}


def _pow2(k: Array, dtype) -> Array:
    """2**k for integer k in the normal exponent range of ``dtype``, exactly (from its bits)."""
    info = jnp.finfo(dtype)
    itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[info.bits // 8]
    bits = (k.astype(itype) + (info.maxexp - 1)) << info.nmant
    return jax.lax.bitcast_convert_type(bits, dtype)


def _norm(x: Array | Sequence[Array], axis: int | None = None) -> Array:
    r"""Euclidean norm :math:`\sqrt{\sum x^2}` of ``x`` (over ``axis``; of every array of a list)
    whose squares neither overflow nor underflow.

    The naive formula overflows in float32 once :math:`\max|x| > 1.8 \cdot 10^{19}` (exploding
    gradients: the seeds' w = 100 chain reaches :math:`25^{14}` at depth 15) and returns 0 below
    :math:`10^{-19}` (vanishing ones: the squares fall under the smallest normal float32, which
    XLA's CPU flushes to zero). So ``x`` is first multiplied by :math:`2^{-e}`, :math:`2^{e-1} \le
    \max|x| < 2^e`, and the result by :math:`2^e`. Scaling by a power of two is exact, so
    wherever the naive formula neither overflows nor underflows the two agree to float32 rounding
    (XLA may order the scaled sum differently: in the quick experiments' stores the values moved
    by at most 1.9e-7 relative, one or two ulps, and no generated table changed).
    """
    xs = list(x) if isinstance(x, list | tuple) else [x]
    dtype = jnp.result_type(*xs)
    m = functools.reduce(jnp.maximum, [jnp.max(jnp.abs(v), axis=axis, keepdims=True) for v in xs])
    info = jnp.finfo(dtype)
    _, e = jnp.frexp(jnp.where(jnp.isfinite(m), m, 1).astype(dtype))
    e = jnp.clip(e, info.minexp, info.maxexp - 1)  # 2**-e and 2**e normal numbers
    scale = _pow2(-e, dtype)
    sq = sum(jnp.sum(jnp.square(v * scale), axis=axis) for v in xs)
    return jnp.sqrt(sq) * _pow2(jnp.squeeze(e, axis), dtype)


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(tree, Mapping) or p not in tree:
            return None
        tree = tree[p]
    return tree


def _select_rows(
    plan: _taps.TapPlan, layers: tuple | None, declared: tuple | None, owner: str
) -> list[_taps.Layer]:
    """The rows to report: ``layers`` if given, else the model's declared ``layer_names()``,
    else every layer the forward pass ran."""
    found = {row.name: row for row in plan.layers}
    if not found:
        raise ValueError(
            f"{owner} has no parameterised layer: no dot_general, conv or embedding lookup "
            "uses a parameter on the data, and no norm scales it (see gradflow.taps)"
        )
    want = layers if layers is not None else declared
    if want is None:
        return list(plan.layers)
    missing = [n for n in want if n not in found]
    if missing:
        what = "" if layers is not None else f" in {owner}.layer_names()"
        raise ValueError(f"unknown layers {missing}{what}; the model has {list(found)}")
    return [found[n] for n in want]


def _sq_norms(leaves: list, items: Sequence[tuple], dt) -> Array:
    """``(n,)``: for each row's ``items`` ``((leaf, index), ...)``, the Euclidean norm of the
    arrays ``leaves[leaf][index]`` together (:func:`_norm`: no overflow or underflow of the
    squares); NaN for a row without items.

    Rows whose items have matching shapes (the layers of one scan) are reduced together, one
    stacked array per item position, so the program does not grow with the number of rows."""
    parts = [[leaves[i][idx] for i, idx in it] for it in items]
    n = len(parts[0])
    if n == 0 and all(not p for p in parts):
        return jnp.full((len(items),), jnp.nan, dtype=dt)
    if (
        n
        and all(len(p) == n for p in parts)
        and all(p[k].shape == parts[0][k].shape for p in parts for k in range(n))
    ):
        rows = len(parts)
        stacked = [
            jnp.stack([p[k] for p in parts]).astype(dt).reshape(rows, math.prod(parts[0][k].shape))
            for k in range(n)
        ]
        return _norm(stacked, axis=-1)
    return jnp.concatenate([_sq_norms(leaves, [it], dt) for it in items])


def _signal(
    row: _taps.Layer, z: Array, gz: Array, batch: int, sown: Mapping | None
) -> dict[str, Array]:
    """The statistics of one layer from its output ``z``, ``dC/dz`` and its sown values."""
    dt = jnp.promote_types(z.dtype, jnp.float32)
    z, gz = z.astype(dt), gz.astype(dt)
    nan = jnp.full((), jnp.nan, dtype=dt)
    ba = row.batch_axis
    if ba is not None and z.shape[ba] % batch == 0 and batch > 0:
        # per-example delta: all positions of example x (batch-major when the batch axis was
        # flattened with positions), times B to undo the batch mean of the cost
        delta = jnp.moveaxis(gz, ba, 0).reshape(batch, -1) * batch
        dn = _norm(delta, axis=-1)
        d_mean, d_std = dn.mean(), dn.std()
    else:
        d_mean = d_std = nan
    if sown is not None:  # gradflow.models layers sow what they apply the activation to
        n = z.shape[-1]
        h = sown["act"].astype(dt).reshape(-1, n)
        u = sown["preact"].astype(dt).reshape(-1, n)
        slope = jnp.abs(sown["slope"].astype(dt).reshape(-1, n))
        sat = jnp.mean((slope < SATURATION).astype(dt))
        dead = jnp.mean(jnp.all(slope == 0, axis=0).astype(dt))
        q = jnp.mean(jnp.square(u))
    else:
        ch = row.channel_axes
        rest = [a for a in range(z.ndim) if a not in ch]
        h = jnp.transpose(z, (*rest, *ch)).reshape(-1, max(1, math.prod(z.shape[a] for a in ch)))
        sat = dead = nan
        q = jnp.mean(jnp.square(z))
    chan_mean = h.mean(0)
    return dict(
        preact_grad_norm=d_mean,
        preact_grad_norm_std=d_std,
        act_mean=h.mean(),
        act_var=h.var(),
        avg_sq_channel_mean=jnp.mean(jnp.square(chan_mean)),
        avg_channel_var=jnp.mean(h.var(0)),
        preact_sq_mean=q,
        saturated_frac=sat,
        dead_frac=dead,
    )


def _sown(aux: chex.ArrayTree, row: _taps.Layer) -> dict | None:
    """What a :class:`gradflow.models.DenseBlock` sowed for ``row`` (None for other layers)."""
    sown = _get(aux, row.owner)
    if isinstance(sown, Mapping) and {"act", "preact", "slope"} <= set(sown):
        return {k: sown[k][0] for k in ("act", "preact", "slope")}
    return None


def _groups(rows: Sequence[_taps.Layer], sown: list) -> list[list[int]]:
    """Indices of ``rows`` in groups whose statistics are computed together: the iterations of
    one scanned layer (same tapped value and scan index, same shapes, sown or not); every other
    row alone. Groups keep the rows' order."""
    groups: dict[tuple, list[int]] = {}
    for k, row in enumerate(rows):
        ints = [j for j, t in enumerate(row.select) if t is not None]
        if len(ints) != 1:
            groups[("row", k)] = [k]
            continue
        shapes = None if sown[k] is None else tuple(v.shape for v in sown[k].values())
        key = (row.chain, ints[0], row.batch_axis, row.channel_axes, row.shape, shapes)
        groups.setdefault(key, []).append(k)
    return list(groups.values())


def _stacked_output(values: dict, rows: Sequence[_taps.Layer]) -> Array:
    """The outputs of rows that differ only in one scan index, stacked on a new axis 0."""
    (j,) = [j for j, t in enumerate(rows[0].select) if t is not None]
    ts = [row.select[j] for row in rows]
    v = values[rows[0].chain]
    if ts == list(range(ts[0], ts[0] + len(ts))):
        v = jax.lax.slice_in_dim(v, ts[0], ts[0] + len(ts), axis=j)
    else:
        v = jnp.take(v, jnp.asarray(ts), axis=j)
    rest = tuple(slice(None) if t is None else t for i, t in enumerate(rows[0].select) if i != j)
    return jnp.moveaxis(v, j, 0)[(slice(None), *rest)]


def _make_probe(model: _adapters.Model, loss_fn: LossFn, layers: tuple | None, labels: bool):
    apply, paths, declared = model.apply, model.paths, model.layer_names
    owner = getattr(type(model.source), "__name__", "model")
    if model.kind == "function":
        owner = getattr(model.source, "__name__", "apply_fn")

    def run(params, state, x, y):
        plan = _taps.trace(apply, params, x, state, paths=paths)
        rows = _select_rows(plan, layers, declared, owner)
        batch = jax.tree.leaves(x)[0].shape[0]

        def cost(params, perturbations):
            (out, aux), values = plan.apply(params, x, state, taps=perturbations)
            c = loss_fn(out, y)
            if jnp.ndim(c) != 0:
                raise ValueError(
                    f"loss must return a scalar (the mean over the batch), got shape {jnp.shape(c)}"
                )
            return c, (values, aux, out)

        (c, (values, aux, out)), (g_params, g_values) = jax.value_and_grad(
            cost, argnums=(0, 1), has_aux=True
        )(params, plan.zeros())
        leaves, gleaves = jax.tree.leaves(params), jax.tree.leaves(g_params)
        sown = [_sown(aux, row) for row in rows]
        order, parts = [], []
        for group in _groups(rows, sown):
            members = [rows[k] for k in group]
            row = members[0]
            if len(group) == 1:
                z, gz = plan.output(values, row), plan.output(g_values, row)
                sig = jax.tree.map(lambda a: a[None], _signal(row, z, gz, batch, sown[group[0]]))
            else:  # the iterations of one scanned layer: one vectorised computation
                z, gz = _stacked_output(values, members), _stacked_output(g_values, members)
                sw = None
                if sown[group[0]] is not None:
                    sw = {k: jnp.stack([sown[i][k] for i in group]) for k in sown[group[0]]}
                sig = jax.vmap(lambda z, gz, sw, row=row: _signal(row, z, gz, batch, sw))(z, gz, sw)
            dt = jnp.promote_types(z.dtype, jnp.float32)
            sig["weight_grad_norm"] = _sq_norms(gleaves, [r.weight for r in members], dt)
            sig["bias_grad_norm"] = _sq_norms(gleaves, [r.bias for r in members], dt)
            sig["weight_norm"] = _sq_norms(leaves, [r.weight for r in members], dt)
            order += group
            parts.append(sig)
        stacked = {k: jnp.concatenate([p[k] for p in parts]) for k in _ROW_STATS}
        if order != sorted(order):
            inverse = np.argsort(order)
            stacked = {k: v[inverse] for k, v in stacked.items()}
        ok = jnp.asarray(True)
        if labels and jnp.issubdtype(jnp.result_type(y), jnp.integer):
            n_classes = jnp.shape(out)[-1]
            ok = jnp.all((y >= 0) & (y < max(n_classes, 2 if n_classes == 1 else n_classes)))
        report = LayerReport(
            loss=c,
            layer_names=tuple(r.name for r in rows),
            layer_kinds=tuple(r.kind for r in rows),
            **stacked,
        )
        return report, ok

    return run


_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 256


def _compiled(model: _adapters.Model, loss: str | LossFn, layers: tuple | None) -> Callable:
    """The jitted probe of ``model`` (cached per model, loss and layers when hashable)."""
    labels = isinstance(loss, str)
    key = None if model.key is None else (model.key, loss, layers)
    try:
        hit = _CACHE.get(key) if key is not None else None
    except TypeError:  # an unhashable loss
        key, hit = None, None
    if hit is not None:
        _CACHE.move_to_end(key)
        return hit
    fn = jax.jit(_make_probe(model, get_loss(loss), layers, labels))
    if key is not None:
        _CACHE[key] = fn
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return fn


def _batch_size(x: chex.ArrayTree, y: ArrayLike) -> int:
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError("x is empty: pass a batch of inputs with the examples on axis 0")
    sizes = {jnp.shape(v)[0] if jnp.ndim(v) else None for v in leaves}
    if None in sizes:
        raise ValueError("every input in x needs a batch axis 0; got a scalar")
    if len(sizes) != 1:
        raise ValueError(f"the inputs in x disagree on the batch size: {sorted(sizes)}")
    (batch,) = sizes
    if batch == 0:
        raise ValueError("x holds an empty batch (0 examples); a probe needs at least one")
    ny = jnp.shape(y)[0] if jnp.ndim(y) else None
    if ny != batch:
        raise ValueError(f"x has {batch} examples but y has {ny} (shape {jnp.shape(y)})")
    return batch


def _check_finite(name: str, tree: chex.ArrayTree) -> None:
    for v in jax.tree.leaves(tree):
        if isinstance(v, jax.core.Tracer) or not jnp.issubdtype(jnp.result_type(v), jnp.inexact):
            continue
        a = np.asarray(v)
        bad = ~np.isfinite(a)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name} holds {int(bad.sum())} non-finite value(s) (first {a[first]} at index "
                f"{first}); gradient statistics of non-finite inputs are meaningless"
            )


def probe(
    model: Any,
    variables: chex.ArrayTree | None,
    x: chex.ArrayTree,
    y: ArrayLike,
    loss: str | LossFn = "softmax_cross_entropy",
    *,
    train: bool = False,
    layers: Sequence[str] | None = None,
    rngs: jax.Array | Mapping[str, jax.Array] | None = None,
) -> LayerReport:
    r"""Per-layer gradient and signal statistics of any model on the batch ``(x, y)``.

    One jitted forward and backward pass, traceable, so it can be ``jax.vmap`` -ed over seeds or
    hyperparameters. The compiled program is cached per model (a linen module, an NNX graph
    definition, an Equinox module's structure or an ``apply_fn`` object), loss and ``layers``,
    so calls with new parameters or data of the same shapes do not recompile.

    **Which model.** Whatever the researcher wrote, unchanged:

    * ``probe(module, variables, x, y)`` -- a :class:`flax.linen.Module` and the variables of
      ``module.init``; :mod:`gradflow.models` networks and any linen CNN, Transformer, ...;
    * ``probe(nnx_module, None, x, y)`` -- a :class:`flax.nnx.Module` with its own state;
    * ``probe(eqx_module, None, x, y)`` -- an Equinox module, applied per example with vmap;
    * ``probe(apply_fn, params, x, y)`` -- any ``apply_fn(params, x) -> outputs`` of a pytree
      ``params`` (e.g. an Equinox model split with ``eqx.partition``).

    **Which layers.** Every parameterised linear map the forward pass runs (Dense, Einsum, the
    query/key/value/out projections of attention, Conv, ConvTranspose, Embed, ``x @ w``), and
    every norm layer with parameters, as its own row, in the order the forward pass runs them
    (readout last), named by their parameters' module path and labelled with a ``kind`` --
    found on the traced program by :mod:`gradflow.taps`. A stack built with ``nn.scan`` over
    stacked parameters gives a row per layer (``stack/Dense_0[3]``); a recurrent cell whose
    weights are shared across time steps gives one row whose positions are the time steps. A
    model that declares ``layer_names()`` (every :mod:`gradflow.models` network) is reported
    on exactly those layers.

    **What.** For layer :math:`l` with output :math:`z_l` (for a Dense layer :math:`xW + b`)
    and the cost :math:`C = \frac{1}{B}\sum_x C_x`:
    :math:`\|\partial C/\partial W_l\|`, :math:`\|\partial C/\partial b_l\|`, and the
    per-example error :math:`\delta_l^x = B\,\partial C/\partial z_l^x` over every position of
    example :math:`x` (sequence, spatial axes), as the mean and standard deviation of
    :math:`\|\delta_l^x\|` over the examples. It is exact: the gradient with respect to a zero
    perturbation of :math:`z_l`. With BatchNorm in ``train=True`` mode the batch statistics
    couple the examples: :math:`\delta_l^x` is then the gradient of the *mean* cost with respect
    to example :math:`x`'s output (times :math:`B`), which includes the paths through the other
    examples' normalisation, not the gradient of :math:`C_x` alone. The signal statistics are
    those of :math:`z_l` over examples and positions, per channel (the last axis; a conv's
    feature axis); for :mod:`gradflow.models` layers they are those of the activation
    :math:`h_l = \phi(u_l)` and its argument :math:`u_l`, as the module docstring defines.
    ``saturated_frac`` and ``dead_frac`` need the activation function, which a generic layer
    does not name: they are NaN for layers not built from :class:`gradflow.models.DenseBlock`.

    Args:
      model: a linen module, an NNX module, an Equinox module or a callable ``apply_fn``.
      variables: linen: the variables of ``model.init`` (``params``, and ``batch_stats`` with
        BatchNorm; ``perturbations``/``intermediates`` are ignored); NNX and Equinox: None;
        ``apply_fn``: its ``params`` pytree.
      x: inputs, examples on axis 0 (an array or a pytree of arrays).
      y: integer labels ``(B,)`` (or ``(B, T)`` for sequences) or real targets shaped like the
        output.
      loss: ``"softmax_cross_entropy"``, ``"sigmoid_cross_entropy"`` (Nielsen's), ``"mse"``
        (see :func:`get_loss`) or a callable ``(outputs, y) -> scalar`` averaging over the batch.
      train: training-mode behaviour: linen ``train=True`` (BatchNorm uses the batch statistics,
        i.e. the gradients a training step sees; updated statistics are discarded), NNX
        ``.train()``; ``False`` gives evaluation mode (running averages; at initialisation mean
        0 and variance 1, so BatchNorm does almost nothing).
      layers: names of the rows to report (default: all, or ``model.layer_names()``).
      rngs: linen only, e.g. ``{"dropout": key}`` when ``train=True`` enables dropout.

    Returns:
      :class:`LayerReport` with arrays ``(L,)`` (``(..., L)`` under vmap), ``layer_names`` and
      ``layer_kinds``.

    Raises:
      ValueError: an empty batch, ``x`` and ``y`` of different batch sizes, non-finite inputs or
        labels outside the output's classes (checked when the values are concrete), a model with
        no parameterised layer, a loss that is not a scalar, unknown ``layers``.
      TypeError: variables of the wrong kind for the model.

    Example:
      A depth-5 sigmoid MLP on 100 digits: the first layer learns slowest.

      >>> x, y, *_ = gf.data.load_digits(n_train=100)
      >>> model = gf.models.MLP(widths=(30,) * 4, out=10, activation="sigmoid",
      ...                       kernel_init="lecun_normal", bias_init="normal")
      >>> variables = model.init(jax.random.key(0), x)
      >>> report = gf.probes.probe(model, variables, x, y, loss="sigmoid_cross_entropy")
      >>> report.bias_grad_norm.shape                  # one entry per Dense layer, readout last
      (5,)
      >>> bool(report.bias_grad_norm[0] < report.bias_grad_norm[3])
      True
    """
    if isinstance(model, _models.RNN):
        raise TypeError("probe reports layers; use gradflow.probes.probe_rnn for an RNN")
    m = _adapters.as_model(model, variables, train=train, rngs=rngs)
    _batch_size(x, y)
    _check_finite("x", x)
    layers = None if layers is None else tuple(layers)
    get_loss(loss)
    # float32 matmuls unless asked (gradflow.config), entered outside the jit
    report, ok = _config.wrap(_compiled(m, loss, layers))(m.params, m.state, x, y)
    if not isinstance(ok, jax.core.Tracer) and not bool(ok):
        raise ValueError(
            f"labels y must lie in [0, number of outputs) for loss {loss!r}; got values from "
            f"{int(jnp.min(y))} to {int(jnp.max(y))}"
        )
    return report


def _make_probe_rnn(model: nn.Module, loss_fn: LossFn):
    def run(variables, x, y):
        variables = _strip(variables)
        perts = _models.perturbations(model, variables, x)

        def cost(params, perts):
            v = {**variables, "params": params, "perturbations": perts}
            out, state = model.apply(v, x, mutable=["intermediates"])
            return loss_fn(out, y), state["intermediates"]

        (c, inter), (g_params, g_perts) = jax.value_and_grad(cost, argnums=(0, 1), has_aux=True)(
            variables["params"], perts
        )
        g = g_perts["rnn"]["h"]  # (B, T, H)
        delta = _norm(g, axis=-1) * g.shape[0]  # per-example: B dC/dh_t
        h = inter["rnn"]["h"][0]
        leaves = jax.tree.leaves(g_params)
        return RecurrentReport(
            loss=c,
            hidden_grad_norm=delta.mean(0),
            hidden_grad_norm_std=delta.std(0),
            hidden_norm=_norm(h, axis=-1).mean(0),
            param_grad_norm=_norm(leaves),
        )

    return run


@functools.lru_cache(maxsize=64)
def _cached_rnn(model, loss):
    return jax.jit(_make_probe_rnn(model, get_loss(loss)))


def probe_rnn(
    model: _models.RNN,
    variables: Mapping,
    x: ArrayLike,
    y: ArrayLike,
    loss: str | LossFn = "mse",
) -> RecurrentReport:
    r""":math:`\|\partial C/\partial h_t\|` for every time step of a :class:`~gradflow.models.RNN`.

    Backpropagation through time (Pascanu et al. 2013):
    :math:`\partial C/\partial h_t = \sum_{s \ge t} (\partial h_s/\partial h_t)^\top
    \partial C/\partial h_s\,|_{\text{direct}}`; with the loss on the last output only,
    :math:`\|\partial C/\partial h_t\| \le \|\partial C/\partial h_T\|\prod_{i=t+1}^{T}
    \|U^\top \mathrm{diag}\,\phi'(z_i)\|`, which vanishes geometrically when
    :math:`\lambda_1(U) \sup|\phi'| < 1`. Read the per-step factor with :func:`time_decay_rate`.

    Args:
      model: a :class:`gradflow.models.RNN`.
      variables: its variables; x: ``(B, T, F)``; y: targets for ``model.apply(variables, x)``.
      loss: as in :func:`probe` (default ``"mse"``, Nielsen's quadratic cost).

    Returns:
      :class:`RecurrentReport`, arrays ``(T,)`` (``(..., T)`` under vmap), ``t`` ascending.
    """
    if not isinstance(model, _models.RNN):
        raise TypeError(f"probe_rnn takes a gradflow.models.RNN, got {type(model).__name__}")
    if not (isinstance(variables, Mapping) and "params" in variables):
        raise TypeError(
            "variables must be the mapping model.init returned (with a 'params' entry), got "
            f"{_checks.show(variables)}"
        )
    x = _checks.array("x", x, ndim=3)  # (batch, time, features); finite when concrete
    try:
        fn = _cached_rnn(model, loss)
    except TypeError:  # an unhashable loss: compile without caching
        fn = jax.jit(_make_probe_rnn(model, get_loss(loss)))
    return _config.wrap(fn)(variables, x, y)  # float32 matmuls unless asked: gradflow.config


def time_decay_rate(norms: ArrayLike, *, axis: int = -1) -> Array:
    r"""Per-step factor :math:`r` of a geometric fit :math:`\|\partial C/\partial h_t\| \propto
    r^{T - t}`: the factor by which the gradient shrinks for each step back in time.

    Least-squares slope of :math:`\log\|\cdot\|` against :math:`t` along ``axis``:
    :math:`r = \exp(-\text{slope})`; :math:`r < 1` vanishing, :math:`r > 1` exploding through time.
    Steps whose norm is zero (underflow) or infinite (overflow) are left out of the fit.

    On concrete ``norms`` bad values are refused; under ``jit``/``vmap`` the values cannot be
    inspected, so a NaN step is then left out too and a row with fewer than two usable steps
    gives NaN.

    Raises:
      TypeError: ``norms`` not a real array, ``axis`` not an int.
      ValueError: ``norms`` empty or a scalar, ``axis`` out of range, a NaN norm (a broken
        gradient, not an underflow or overflow), or a row with fewer than two finite, positive
        steps (no rate can be fitted).
    """
    norms = _checks.array("norms", norms, finite=False, min_ndim=1)
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {_checks.show(axis)}")
    if not -norms.ndim <= axis < norms.ndim:
        raise ValueError(
            f"axis {axis} is out of range for norms of shape {norms.shape} "
            f"(valid: {-norms.ndim} .. {norms.ndim - 1})"
        )
    host = _checks.concrete(norms)
    if host is not None:
        rows = np.moveaxis(host, axis, -1).reshape(-1, host.shape[axis])
        if np.isnan(rows).any():
            raise ValueError(
                f"norms holds {int(np.isnan(rows).sum())} NaN value(s): a NaN gradient norm means "
                "the gradient itself is broken (zeros and inf, underflow and overflow, are left "
                "out of the fit)"
            )
        usable = (np.isfinite(rows) & (rows > 0)).sum(-1)
        if (usable < 2).any():
            i = int(np.argmax(usable < 2))
            raise ValueError(
                f"norms needs at least two finite, positive steps along axis {axis} to fit a "
                f"rate; row {i} has {int(usable[i])} of {rows.shape[-1]}"
            )
    n = jnp.moveaxis(norms, axis, -1)
    if not jnp.issubdtype(n.dtype, jnp.floating):
        n = n.astype(jnp.result_type(float))
    ok = jnp.isfinite(n) & (n > 0)
    w = ok.astype(n.dtype)
    logn = jnp.where(ok, jnp.log(jnp.where(ok, n, 1)), 0)
    t = jnp.arange(n.shape[-1], dtype=n.dtype)
    count = w.sum(-1, keepdims=True)
    tc = t - jnp.sum(w * t, -1, keepdims=True) / count
    lc = logn - jnp.sum(w * logn, -1, keepdims=True) / count
    slope = jnp.sum(w * tc * lc, -1) / jnp.sum(w * tc * tc, -1)
    return jnp.where(count[..., 0] >= 2, jnp.exp(-slope), jnp.nan)
