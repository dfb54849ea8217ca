r"""Per-layer gradient and signal statistics in one jitted call, and health verdicts.

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

:func:`probe_rnn` gives :math:`\|\partial C/\partial h_t\|` for every time step of a
:class:`gradflow.models.RNN` (Pascanu et al. 2013). :func:`verdict` labels each layer
``"vanishing"``, ``"healthy"`` or ``"exploding"``; :func:`check_history` scans a training history
for the signs of explosion the seed notes list; :func:`format_report` and :func:`plot_report` make
it readable.
"""

from __future__ import annotations

import collections
import functools
import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from gradflow import _checks
from gradflow import adapters as _adapters
from gradflow import config as _config
from gradflow import models as _models
from gradflow import taps as _taps

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
LossFn = Callable[[Array, Array], Array]

#: Saturation threshold: :math:`|\phi'(u)|` below this fraction of :math:`\sup|\phi'|`.
SATURATION = 0.01


# ---------------------------------------------------------------------------------------- losses


def _targets(logits: Array, y: Array, loss: str) -> Array:
    """One-hot integer labels, or check and broadcast real targets to the logits' shape."""
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.integer):
        if y.shape != logits.shape[:-1]:
            raise ValueError(
                f"{loss}: integer labels must have shape {logits.shape[:-1]} (the logits' "
                f"{logits.shape} without the class axis), got {y.shape}"
            )
        return jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    if y.shape == logits.shape:
        return y.astype(logits.dtype)
    if logits.shape[-1] == 1 and y.shape == logits.shape[:-1]:
        return y[..., None].astype(logits.dtype)
    raise ValueError(
        f"{loss}: real targets must have the logits' shape {logits.shape}, got {y.shape}"
    )


def softmax_cross_entropy(logits: Array, y: Array) -> Array:
    r""":math:`-\frac{1}{B}\sum_x \log \mathrm{softmax}(z^x)_{y^x}` (optax); integer labels or
    probability targets."""
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.integer):
        _targets(logits, y, "softmax_cross_entropy")
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return optax.softmax_cross_entropy(logits, _targets(logits, y, "softmax_cross_entropy")).mean()


def sigmoid_cross_entropy(logits: Array, y: Array) -> Array:
    r"""Nielsen's cross-entropy cost on sigmoid outputs :math:`a = \sigma(z)`:

    .. math::
        C = -\frac{1}{B}\sum_x \sum_j \big[y_j \ln a_j + (1 - y_j)\ln(1 - a_j)\big],

    summed over output units, averaged over examples (one-hot targets for integer labels), so
    :math:`\delta^L = a - y` per example. Computed stably from the logits (optax)."""
    t = _targets(logits, y, "sigmoid_cross_entropy")
    return optax.sigmoid_binary_cross_entropy(logits, t).sum(-1).mean()


def mse(logits: Array, y: Array) -> Array:
    r"""Nielsen's quadratic cost :math:`C = \frac{1}{2B}\sum_x \|a^x - y^x\|^2` on the raw
    outputs (one-hot targets for integer labels), so :math:`\partial C_x/\partial a = a - y`."""
    t = _targets(logits, y, "mse")
    return 0.5 * jnp.sum(jnp.square(logits - t), axis=-1).mean()


_LOSSES: dict[str, LossFn] = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "sigmoid_cross_entropy": sigmoid_cross_entropy,
    "mse": mse,
}
#: Loss names :func:`probe` accepts (or pass a callable ``(logits, y) -> scalar``).
LOSSES: tuple[str, ...] = tuple(_LOSSES)


def get_loss(loss: str | LossFn) -> LossFn:
    """The loss function ``(logits, y) -> scalar`` for a name in :data:`LOSSES` (or a callable,
    returned unchanged)."""
    if isinstance(loss, str):
        if loss not in _LOSSES:
            raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)} or a callable")
        return _LOSSES[loss]
    if callable(loss):
        return loss
    raise TypeError(f"loss must be a name ({', '.join(LOSSES)}) or a callable, got {loss!r}")


# ---------------------------------------------------------------------------------------- report


@struct.dataclass
class LayerReport:
    """Per-layer statistics from :func:`probe`; arrays ``(..., L)``, forward order, readout last.

    See the module docstring for the definitions. ``layer_names`` is static (not a pytree leaf).
    """

    loss: Array
    weight_grad_norm: Array
    bias_grad_norm: Array
    preact_grad_norm: Array
    preact_grad_norm_std: Array
    weight_norm: Array
    act_mean: Array
    act_var: Array
    avg_sq_channel_mean: Array
    avg_channel_var: Array
    preact_sq_mean: Array
    saturated_frac: Array
    dead_frac: Array
    layer_names: tuple[str, ...] = struct.field(pytree_node=False, default=())
    layer_kinds: tuple[str, ...] = struct.field(pytree_node=False, default=())

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)


#: The array fields of :class:`LayerReport` (``verdict(stat=...)`` takes the gradient ones).
STATS: tuple[str, ...] = tuple(
    f.name
    for f in LayerReport.__dataclass_fields__.values()
    if f.name not in ("layer_names", "layer_kinds")
)
_GRAD_STATS = ("weight_grad_norm", "bias_grad_norm", "preact_grad_norm")
_ROW_STATS = tuple(k for k in STATS if k != "loss")


@struct.dataclass
class RecurrentReport:
    r"""From :func:`probe_rnn`: arrays ``(..., T)`` over time steps ``t = 1..T``.

    ``hidden_grad_norm`` / ``_std``: mean / std over examples of
    :math:`\|\partial C_x/\partial h_t\|` (per-example, as ``preact_grad_norm`` of
    :class:`LayerReport`); ``hidden_norm``: mean :math:`\|h_t\|`; ``param_grad_norm`` (``(...)``):
    :math:`\|\partial C/\partial \theta\|` over all parameters; ``loss`` (``(...)``).
    """

    loss: Array
    hidden_grad_norm: Array
    hidden_grad_norm_std: Array
    hidden_norm: Array
    param_grad_norm: Array


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


def _sown(aux: Any, row: _taps.Layer) -> dict | None:
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


def _batch_size(x: Any, y: Any) -> int:
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


def _check_finite(name: str, tree: Any) -> None:
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
    variables: Any,
    x: Any,
    y: Array,
    loss: str | LossFn = "softmax_cross_entropy",
    *,
    train: bool = False,
    layers: Sequence[str] | None = None,
    rngs: Any = None,
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
    model: _models.RNN, variables: Mapping, x: Array, y: Array, loss: str | LossFn = "mse"
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


def time_decay_rate(norms: Array, *, axis: int = -1) -> Array:
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


# --------------------------------------------------------------------------------------- verdict


#: Default thresholds of :func:`verdict` on the ratio to the readout layer.
VANISHING = 1e-2
EXPLODING = 1e2


def verdict(
    report: LayerReport,
    *,
    vanishing: float = VANISHING,
    exploding: float = EXPLODING,
    stat: str = "preact_grad_norm",
) -> np.ndarray:
    r"""Label each layer ``"vanishing"``, ``"healthy"``, ``"exploding"`` or ``"non-finite"``.

    With :math:`g_l` the gradient statistic ``stat`` of layer :math:`l` and :math:`g_L` the
    readout's, layer :math:`l` is

    * ``"vanishing"`` if :math:`g_l / g_L < ` ``vanishing`` (default :math:`10^{-2}`: the layer
      learns a hundred times slower than the readout, Nielsen's ch. 5 picture), and wherever
      :math:`g_l = g_L = 0` (no gradient reaches the layer at all: an all-zero gradient is not
      healthy);
    * ``"exploding"`` if :math:`g_l / g_L > ` ``exploding`` (default :math:`10^{2}`), including
      :math:`g_l = +\infty` with a finite loss and :math:`g_L` (overflow in the backward pass);
    * ``"non-finite"`` if :math:`g_l` is NaN, and for every layer of a report whose loss or
      readout statistic :math:`g_L` is not finite (NaN or infinite input, labels out of range,
      an empty batch): no ratio can be formed, so no layer is called healthy. A
      :class:`RuntimeWarning` names the first non-finite quantity (the loss, or ``stat`` at a
      layer);
    * ``"healthy"`` otherwise (always for a finite, nonzero readout itself).

    The default statistic is the per-example error :math:`\|\delta_l\|` (``preact_grad_norm``):
    it measures the backward signal itself, does not depend on the input scale or on a layer's
    fan-in, and stays defined with BatchNorm (which zeroes :math:`\partial C/\partial b_l`) and
    for bias-free layers. ``stat="bias_grad_norm"`` gives Nielsen's speeds,
    ``"weight_grad_norm"`` the weight gradients.

    Returns:
      NumPy string array of shape ``(..., L)``.
    """
    if not isinstance(report, LayerReport):
        raise TypeError(f"report must be a LayerReport (from probe), got {type(report).__name__}")
    if stat not in _GRAD_STATS:
        raise ValueError(f"unknown stat {stat!r}; valid: {', '.join(_GRAD_STATS)}")
    for name, v in (("vanishing", vanishing), ("exploding", exploding)):
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} threshold must be a finite float > 0, got {v!r}")
    if not vanishing < 1 < exploding:
        raise ValueError(
            f"thresholds must satisfy vanishing < 1 < exploding, got {vanishing}, {exploding}"
        )
    g = np.asarray(getattr(report, stat), dtype=np.float64)
    if g.ndim == 0 or g.shape[-1] == 0:
        raise ValueError(f"report.{stat} must have a layer axis (..., L), L >= 1; got {g.shape}")
    loss = np.broadcast_to(np.asarray(report.loss, dtype=np.float64), g.shape[:-1])
    ref = g[..., -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = g / ref
    out = np.full(g.shape, "healthy", dtype="<U10")
    out[ratio < vanishing] = "vanishing"
    out[ratio > exploding] = "exploding"
    out[(g == 0) & (ref == 0)] = "vanishing"
    out[np.isnan(g)] = "non-finite"
    lost = ~np.isfinite(loss)[..., None] | ~np.isfinite(ref)
    out[np.broadcast_to(lost, g.shape)] = "non-finite"
    if (out == "non-finite").any():
        warnings.warn(
            f"gradflow.probes.verdict: {_first_non_finite(report, stat, g, loss)}; layers "
            "without a meaningful ratio are labelled 'non-finite' (check the batch for NaN/inf "
            "inputs, labels out of range and emptiness)",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


def _first_non_finite(report: LayerReport, stat: str, g: np.ndarray, loss: np.ndarray) -> str:
    """The first non-finite quantity a verdict reads, in words."""
    draw = lambda idx: f" (draw {idx})" if idx else ""
    if not np.isfinite(loss).all():
        idx = tuple(int(i) for i in np.unravel_index(np.argmin(np.isfinite(loss)), loss.shape))
        return f"the loss is {float(loss[idx])}{draw(idx)}"
    bad = np.argwhere(~np.isfinite(g))
    idx = tuple(int(i) for i in bad[0])
    names = report.layer_names or ()
    layer = names[idx[-1]] if idx[-1] < len(names) else f"layer {idx[-1]}"
    return f"{stat} of {layer} is {float(g[idx])}{draw(idx[:-1])}"


# ------------------------------------------------------------------------------- history check


class Sign(NamedTuple):
    """One sign of trouble found by :func:`check_history`."""

    #: "loss_nonfinite" | "weights_nonfinite" | "large_updates" | "loss_spike" |
    #: "grad_norm_above_threshold"
    kind: str
    step: int  #: first step (index into the history) where it shows
    message: str  #: human-readable explanation
    layers: tuple[int, ...] = ()  #: layers concerned (per-layer signs only)


_HISTORY_KEYS = ("loss", "param_norm", "update_norm", "grad_norm")


def _column(key: str, values: Any) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"check_history: history[{key!r}] must hold numbers (per-step floats or arrays), got "
            f"{_checks.show(values)}"
        ) from None


def _columns(history: Mapping | Sequence) -> dict[str, np.ndarray]:
    if isinstance(history, Mapping):
        cols = {k: _column(k, history[k]) for k in _HISTORY_KEYS if k in history}
    elif isinstance(history, Sequence) and not isinstance(history, (str, bytes)):
        if not history:
            raise ValueError("check_history: empty history")
        keys = [k for k in _HISTORY_KEYS if k in history[0]]
        for i, step in enumerate(history):
            missing = [k for k in keys if k not in step]
            if missing:
                raise ValueError(f"check_history: step {i} lacks {missing} (step 0 has {keys})")
        cols = {k: _column(k, [s[k] for s in history]) for k in keys}
    else:
        raise TypeError(
            "check_history: history must be a mapping of per-step arrays or a sequence of "
            f"per-step mappings, got {type(history).__name__}"
        )
    if not cols:
        raise ValueError(f"check_history: history has none of the keys {', '.join(_HISTORY_KEYS)}")
    lengths = {k: v.shape[0] if v.ndim else 0 for k, v in cols.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(
            f"check_history: every entry needs the same number of steps, got {lengths}"
        )
    return cols


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def check_history(
    history: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    update_ratio: float = 0.5,
    grad_threshold: float = 1.0,
    window: int = 10,
    spike_factor: float = 10.0,
) -> tuple[Sign, ...]:
    r"""Scan a training history for the signs of exploding gradients listed in the seed notes.

    ``history`` is a mapping of per-step arrays (or a sequence of per-step mappings) with any of
    the keys ``"loss"`` ``(T,)``, ``"param_norm"`` ``(T,)`` or ``(T, L)``, ``"update_norm"``
    (same shape as ``param_norm``: :math:`\|\Delta\theta_t\|`), ``"grad_norm"`` ``(T, L)``
    per-layer gradient norms (or ``(T,)``); other keys are ignored. Signs, each reported once at
    its first step:

    * ``"loss_nonfinite"`` -- the loss becomes NaN or infinite;
    * ``"weights_nonfinite"`` -- a parameter norm becomes NaN or infinite (some weight did);
    * ``"large_updates"`` -- :math:`\|\Delta\theta_t\| > ` ``update_ratio``
      :math:`\cdot \|\theta_t\|` (the weights change a lot from one update to the next);
    * ``"loss_spike"`` -- the loss exceeds ``spike_factor`` times its running minimum (unstable
      loss, large changes between updates);
    * ``"grad_norm_above_threshold"`` -- a layer's gradient norm stays above ``grad_threshold``
      (default 1, the seeds' "error gradient consistently above 1.0") for ``window`` consecutive
      steps (all steps if the history is shorter).

    Returns:
      A tuple of :class:`Sign` (empty: no sign found), ordered by step.
    """
    for name, v, lo in (
        ("update_ratio", update_ratio, 0.0),
        ("grad_threshold", grad_threshold, 0.0),
        ("spike_factor", spike_factor, 1.0),
    ):
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v > lo):
            raise ValueError(f"check_history: {name} must be a finite float > {lo}, got {v!r}")
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
        raise ValueError(f"check_history: window must be an int >= 1, got {window!r}")
    cols = _columns(history)
    signs: list[Sign] = []

    def per_step(a: np.ndarray) -> np.ndarray:
        return a.reshape(a.shape[0], -1)

    if "loss" in cols:
        loss = cols["loss"].reshape(-1)
        s = _first(~np.isfinite(loss))
        if s is not None:
            signs.append(Sign("loss_nonfinite", s, f"loss is {loss[s]} at step {s}"))
        finite = np.where(np.isfinite(loss), loss, np.inf)
        running_min = np.minimum.accumulate(finite)
        prev_min = np.concatenate([[np.inf], running_min[:-1]])
        spike = np.isfinite(loss) & (prev_min > 0) & (loss > spike_factor * prev_min)
        s = _first(spike)
        if s is not None:
            signs.append(
                Sign(
                    "loss_spike",
                    s,
                    f"loss jumps to {loss[s]:.4g} at step {s}, more than {spike_factor:g}x its "
                    f"running minimum {prev_min[s]:.4g}",
                )
            )
    if "param_norm" in cols:
        pn = per_step(cols["param_norm"])
        s = _first(~np.all(np.isfinite(pn), axis=1))
        if s is not None:
            signs.append(Sign("weights_nonfinite", s, f"parameter norm is not finite at step {s}"))
        if "update_norm" in cols:
            un = per_step(cols["update_norm"])
            if un.shape != pn.shape:
                raise ValueError(
                    f"check_history: update_norm {un.shape} and param_norm {pn.shape} differ"
                )
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = un / pn
            big = np.isfinite(ratio) & (ratio > update_ratio)
            s = _first(np.any(big, axis=1))
            if s is not None:
                signs.append(
                    Sign(
                        "large_updates",
                        s,
                        f"update norm is {np.nanmax(ratio[s]):.3g}x the parameter norm at step "
                        f"{s} (threshold {update_ratio:g}); {int(big.any(1).sum())} such steps",
                        tuple(int(i) for i in np.flatnonzero(big[s])) if pn.shape[1] > 1 else (),
                    )
                )
    if "grad_norm" in cols:
        gn = per_step(cols["grad_norm"])
        w = min(int(window), gn.shape[0])
        above = ~(gn <= grad_threshold)  # NaN counts as above
        # run[t, l]: above at every step of [t - w + 1, t]
        csum = np.concatenate([np.zeros((1, gn.shape[1])), np.cumsum(above, axis=0)])
        run = (csum[w:] - csum[:-w]) == w  # window ending at step t = w - 1 + index
        s = _first(np.any(run, axis=1))
        if s is not None:
            layers = tuple(int(i) for i in np.flatnonzero(run[s]))
            signs.append(
                Sign(
                    "grad_norm_above_threshold",
                    s,
                    f"gradient norm of layer(s) {list(layers)} stays above {grad_threshold:g} for "
                    f"{w} consecutive steps from step {s}",
                    layers,
                )
            )
    return tuple(sorted(signs, key=lambda sg: sg.step))


# -------------------------------------------------------------------------------------- display


def _summary(report: LayerReport) -> tuple[dict[str, np.ndarray], int]:
    """Median over leading (vmapped) axes; returns the per-layer arrays and the number of draws."""
    arrays = {k: np.asarray(getattr(report, k), dtype=np.float64) for k in STATS if k != "loss"}
    loss = np.asarray(report.loss, dtype=np.float64)
    draws = int(loss.size)
    if draws > 1:
        arrays = {k: np.median(v.reshape(-1, v.shape[-1]), axis=0) for k, v in arrays.items()}
        loss = np.median(loss.reshape(-1))
    arrays["loss"] = np.asarray(loss).reshape(())
    return arrays, draws


def to_frame(report: LayerReport):
    """A tidy :class:`pandas.DataFrame`: one row per (draw, layer), a column per statistic.

    Columns ``draw`` (flat index over leading vmapped axes; 0 for a single report), ``layer``
    (0-based, forward order), ``name``, ``kind`` (``""`` when the report has none), the
    statistics of :data:`STATS` (``loss`` repeated per layer) and ``verdict`` (default
    thresholds).
    """
    if not isinstance(report, LayerReport):
        raise TypeError(f"report must be a LayerReport (from probe), got {type(report).__name__}")
    import pandas as pd

    L = report.num_layers or np.shape(report.weight_grad_norm)[-1]
    names = report.layer_names or tuple(f"layer_{i}" for i in range(L))
    kinds = report.layer_kinds if len(report.layer_kinds) == L else ("",) * L
    cols = {k: np.asarray(getattr(report, k), dtype=np.float64) for k in STATS}
    draws = int(np.asarray(report.loss).size)
    data = {
        "draw": np.repeat(np.arange(draws), L),
        "layer": np.tile(np.arange(L), draws),
        "name": np.tile(np.asarray(names, dtype=object), draws),
        "kind": np.tile(np.asarray(kinds, dtype=object), draws),
    }
    for k, v in cols.items():
        data[k] = np.repeat(v.reshape(-1), L) if k == "loss" else v.reshape(-1)
    data["verdict"] = verdict(report).reshape(-1)
    return pd.DataFrame(data)


def format_report(
    report: LayerReport,
    *,
    vanishing: float = VANISHING,
    exploding: float = EXPLODING,
    stat: str = "preact_grad_norm",
) -> str:
    r"""A table for the terminal: one row per layer, forward order, readout last.

    Columns: the layer's kind (when the report has them), :math:`\|\partial C/\partial W\|`,
    :math:`\|\partial C/\partial b\|` (Nielsen's speed), :math:`\|\delta\|` mean and std
    over examples, the ratio of ``stat`` to the readout's, activation mean and variance, %
    saturated and % dead units ("-" where undefined), and the :func:`verdict`. A
    vmapped report is summarised by the median over its draws (said in the header).
    """
    if not isinstance(report, LayerReport):
        raise TypeError(f"report must be a LayerReport (from probe), got {type(report).__name__}")
    arrays, draws = _summary(report)
    L = arrays["weight_grad_norm"].shape[-1]
    names = report.layer_names or tuple(f"layer_{i}" for i in range(L))
    summary = LayerReport(**{k: v for k, v in arrays.items()}, layer_names=tuple(names))
    labels = verdict(summary, vanishing=vanishing, exploding=exploding, stat=stat)
    g = arrays[stat]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = g / g[-1]

    def sci(v: float) -> str:
        return "-" if np.isnan(v) else f"{v:.2e}"

    def pct(v: float) -> str:
        return "-" if np.isnan(v) else f"{100 * v:.1f}"

    kinds = report.layer_kinds if len(report.layer_kinds) == L else None
    header = [
        "layer",
        *(["kind"] if kinds else []),
        "|dC/dW|",
        "|dC/db|",
        "|delta|",
        "(std)",
        "ratio",
        "act mean",
        "act var",
        "sat %",
        "dead %",
        "verdict",
    ]
    rows = []
    for i in range(L):
        rows.append(
            [
                names[i],
                *([kinds[i]] if kinds else []),
                sci(arrays["weight_grad_norm"][i]),
                sci(arrays["bias_grad_norm"][i]),
                sci(arrays["preact_grad_norm"][i]),
                sci(arrays["preact_grad_norm_std"][i]),
                sci(ratio[i]),
                f"{arrays['act_mean'][i]:.3f}",
                f"{arrays['act_var'][i]:.3g}",
                pct(arrays["saturated_frac"][i]),
                pct(arrays["dead_frac"][i]),
                str(labels[i]),
            ]
        )
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    left = {0, len(header) - 1, *([1] if kinds else [])}

    def line(cells):
        return "  ".join(
            c.ljust(w) if j in left else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    what = f"median over {draws} draws, " if draws > 1 else ""
    title = (
        f"gradflow probe: {L} layers, loss {float(arrays['loss']):.4g} ({what}ratio = {stat} / "
        f"readout; vanishing < {vanishing:g}, exploding > {exploding:g})"
    )
    rule = "-" * len(line(header))
    return "\n".join([title, line(header), rule, *(line(r) for r in rows)])


def plot_report(
    report: LayerReport,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    vanishing: float = VANISHING,
    exploding: float = EXPLODING,
    stat: str = "preact_grad_norm",
) -> list:
    """Figure of a report, written as ``path.pdf`` and ``path.png`` (via
    :func:`gradflow.plotting.savefig`).

    Left: per-layer gradient norms on a log scale -- :math:`\\|\\partial C/\\partial W_l\\|`,
    :math:`\\|\\partial C/\\partial b_l\\|`, :math:`\\|\\delta_l\\|` -- with the healthy band of
    :func:`verdict` for ``stat`` shaded (readout value times ``vanishing`` .. ``exploding``).
    Right: the signal-propagation statistics (Brock et al. 2021) of the layer outputs. A
    vmapped report is drawn as the median over draws with the 10-90% range shaded.

    Returns:
      The written paths.
    """
    if not isinstance(report, LayerReport):
        raise TypeError(f"report must be a LayerReport (from probe), got {type(report).__name__}")
    from gradflow import plotting

    L = np.shape(report.weight_grad_norm)[-1]
    names = report.layer_names or tuple(f"layer_{i}" for i in range(L))
    layer = np.arange(1, L + 1)
    draws = int(np.asarray(report.loss).size)

    def band(k: str):
        v = np.asarray(getattr(report, k), dtype=np.float64).reshape(-1, L)
        return np.median(v, 0), np.quantile(v, 0.1, 0), np.quantile(v, 0.9, 0)

    labels = verdict(
        LayerReport(
            **{k: band(k)[0] if k != "loss" else np.zeros(()) for k in STATS},
            layer_names=tuple(names),
        ),
        vanishing=vanishing,
        exploding=exploding,
        stat=stat,
    )
    counts = [f"{int((labels == v).sum())} {v}" for v in ("vanishing", "exploding")]
    fig, (ax_g, ax_s) = plotting.figure(1, 2, width="text", aspect=0.7)
    with plotting.style():
        series = [
            ("weight_grad_norm", r"$\|\partial C/\partial W_l\|$", plotting.COLORS[0], "o"),
            ("bias_grad_norm", r"$\|\partial C/\partial b_l\|$ (speed)", plotting.COLORS[1], "s"),
            ("preact_grad_norm", r"$\|\delta_l\|$ per example", plotting.COLORS[2], "^"),
        ]
        for k, label, color, marker in series:
            med, lo, hi = band(k)
            if not np.any(np.isfinite(med) & (med > 0)):
                continue  # e.g. no biases
            ax_g.plot(layer, med, marker=marker, color=color, label=label)
            if draws > 1:
                ax_g.fill_between(layer, lo, hi, color=color, alpha=0.2, linewidth=0)
        ref = band(stat)[0][-1]
        if np.isfinite(ref) and ref > 0:
            ax_g.axhspan(
                ref * vanishing,
                ref * exploding,
                color="0.5",
                alpha=0.12,
                linewidth=0,
                zorder=0,
                label=f"healthy band of {stat}",
            )
        ax_g.set_yscale("log")
        ax_g.set_ylabel("gradient norm")
        ax_g.set_title(f"gradients ({', '.join(counts)} of {L} layers)")

        for k, label, color in (
            ("avg_channel_var", "avg. channel variance", plotting.COLORS[0]),
            ("avg_sq_channel_mean", "avg. squared channel mean", plotting.COLORS[1]),
        ):
            med, lo, hi = band(k)
            ax_s.plot(layer, med, marker="o", color=color, label=label)
            if draws > 1:
                ax_s.fill_between(layer, lo, hi, color=color, alpha=0.2, linewidth=0)
        spp = np.concatenate([band(k)[0] for k in ("avg_channel_var", "avg_sq_channel_mean")])
        plotting.log_axis_if_spans(ax_s, spp)
        ax_s.set_ylabel("statistic of layer output $h_l$")
        ax_s.set_title("signal propagation (Brock et al. 2021)")
        for ax in (ax_g, ax_s):
            ax.set_xlabel("layer (input $\\to$ readout)")
            ax.set_xticks(layer[:: max(1, -(-L // 10))])
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        if title:
            what = f" (median and 10-90% over {draws} draws)" if draws > 1 else ""
            fig.suptitle(title + what)
    return plotting.savefig(fig, path)
