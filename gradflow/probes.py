r"""Per-layer gradient and signal statistics in one jitted call, and health verdicts.

"Where do my gradients vanish or explode, layer by layer, and why?" :func:`probe` answers for any
:mod:`gradflow.models` feed-forward network (and any module following its layer protocol: blocks
that perturb their pre-activation as ``"z"`` and sow ``"preact"``, ``"slope"``, ``"act"``).

For each Dense layer :math:`l = 1..L` in forward order, the readout last, with the cost
:math:`C = \frac{1}{B}\sum_x C_x` the mean over the batch:

* ``weight_grad_norm`` :math:`\|\partial C/\partial W_l\|_F` and ``bias_grad_norm``
  :math:`\|\partial C/\partial b_l\|_2` -- Nielsen's "speed of learning" of layer :math:`l`
  (*Neural Networks and Deep Learning*, ch. 5). NaN for a layer without a bias.
* ``preact_grad_norm`` / ``preact_grad_norm_std`` -- mean and standard deviation over the examples
  of :math:`\|\delta_l^x\|_2`, Nielsen's per-example error
  :math:`\delta_l^x = \partial C_x/\partial z_l^x = B\,\partial C/\partial z_l^x`. (The gradient
  of the *mean* cost with respect to one example's :math:`z` carries a factor :math:`1/B`; we undo
  it so the numbers do not depend on the batch size, and :math:`\partial C/\partial b_l =
  \frac{1}{B}\sum_x \delta_l^x`.)
* ``act_mean``, ``act_var`` -- mean and variance of the layer output :math:`h_l` over examples
  and units; ``avg_sq_channel_mean`` :math:`\frac{1}{n}\sum_i (E_x h_{l,i})^2` and
  ``avg_channel_var`` :math:`\frac{1}{n}\sum_i \mathrm{Var}_x h_{l,i}`, the signal-propagation
  plot statistics of Brock et al. (2021); ``preact_sq_mean`` :math:`\frac{1}{n}\sum_i E_x u_{l,i}^2`
  (the mean-field length :math:`q^l` of Poole et al. 2016 when there is no norm).
* ``saturated_frac`` -- fraction of (example, unit) pairs with
  :math:`|\phi'(u)| < 0.01 \sup|\phi'|` (for ReLU this counts the inactive half);
  ``dead_frac`` -- fraction of units with :math:`\phi'(u) = 0` for every example of the batch
  (dead ReLUs). Both 0 for the linear readout.
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

import functools
import inspect
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
from flax import struct, traverse_util

from gradflow import models as _models

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

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)


#: The array fields of :class:`LayerReport` (``verdict(stat=...)`` takes the gradient ones).
STATS: tuple[str, ...] = tuple(
    f.name for f in LayerReport.__dataclass_fields__.values() if f.name != "layer_names"
)
_GRAD_STATS = ("weight_grad_norm", "bias_grad_norm", "preact_grad_norm")


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


def _accepts_train(model: nn.Module) -> bool:
    try:
        return "train" in inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


def _layer_paths(model: nn.Module, found: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Paths (tuples of module names) of the layers, in forward order.

    ``found``: the paths of the blocks that sowed ``"act"``, in the order they ran (Flax keeps the
    creation order of a collection). ``model.layer_names()``, when defined, fixes the order.
    """
    if not found:
        raise ValueError(
            f"{type(model).__name__} exposes no layers: build it from "
            "gradflow.models.DenseBlock (perturb 'z', sow 'preact', 'slope', 'act')"
        )
    order = getattr(model, "layer_names", None)
    if not callable(order):
        return list(found)
    names = tuple(order())
    by_name = {"/".join(p): p for p in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f"{type(model).__name__}.layer_names() lists {missing} but found only the layers "
            f"{list(by_name)}"
        )
    return [by_name[n] for n in names]


def _strip(variables: Mapping) -> dict:
    return {k: v for k, v in variables.items() if k not in ("perturbations", "intermediates")}


def _norm(x: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(x)))


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _make_probe(model: nn.Module, loss_fn: LossFn, train: bool, layers: tuple | None):
    kw = {"train": train} if _accepts_train(model) else {}
    if train and not kw:
        raise TypeError(f"train=True but {type(model).__name__}.__call__ takes no 'train'")

    def run(variables, x, y):
        variables = _strip(variables)
        if "params" not in variables:
            raise ValueError(f"variables must contain 'params', got {sorted(variables)}")
        mutable = ["intermediates"]
        if train and "batch_stats" in variables:
            mutable.append("batch_stats")
        perts = _models.perturbations(model, variables, x, **kw)
        found: list[tuple[str, ...]] = []

        def cost(params, perts):
            v = {**variables, "params": params, "perturbations": perts}
            out, state = model.apply(v, x, mutable=mutable, **kw)
            # record the forward order at trace time (pytree flattening would sort the names)
            flat = traverse_util.flatten_dict(state["intermediates"])
            found[:] = [k[:-1] for k in flat if k[-1] == "act"]
            return loss_fn(out, y), state["intermediates"]

        (c, inter), (g_params, g_perts) = jax.value_and_grad(cost, argnums=(0, 1), has_aux=True)(
            variables["params"], perts
        )
        if layers is not None:
            paths = [tuple(n.split("/")) for n in layers]
            unknown = [n for n, p in zip(layers, paths) if p not in found]
            if unknown:
                raise ValueError(
                    f"unknown layers {unknown}; the model has {['/'.join(p) for p in found]}"
                )
        else:
            paths = _layer_paths(model, found)
        rows = []
        for path in paths:
            p = _get(variables["params"], path)
            gp = _get(g_params, path)
            gz = _get(g_perts, path)["z"]
            it = _get(inter, path)
            n = gz.shape[-1]
            delta = gz.reshape(-1, n) * (gz.size // n)  # per-example delta: B dC/dz
            delta_norm = jnp.sqrt(jnp.sum(jnp.square(delta), axis=-1))
            h = it["act"][0].reshape(-1, n)
            u = it["preact"][0].reshape(-1, n)
            slope = jnp.abs(it["slope"][0].reshape(-1, n))
            chan_mean = h.mean(0)
            nan = jnp.full((), jnp.nan, dtype=gz.dtype)
            rows.append(
                dict(
                    weight_grad_norm=_norm(gp["kernel"]),
                    bias_grad_norm=_norm(gp["bias"]) if "bias" in gp else nan,
                    preact_grad_norm=delta_norm.mean(),
                    preact_grad_norm_std=delta_norm.std(),
                    weight_norm=_norm(p["kernel"]),
                    act_mean=h.mean(),
                    act_var=h.var(),
                    avg_sq_channel_mean=jnp.mean(jnp.square(chan_mean)),
                    avg_channel_var=jnp.mean(h.var(0)),
                    preact_sq_mean=jnp.mean(jnp.square(u)),
                    saturated_frac=jnp.mean((slope < SATURATION).astype(gz.dtype)),
                    dead_frac=jnp.mean(jnp.all(slope == 0, axis=0).astype(gz.dtype)),
                )
            )
        stacked = {k: jnp.stack([r[k] for r in rows]) for k in rows[0]}
        return LayerReport(loss=c, layer_names=tuple("/".join(p) for p in paths), **stacked)

    return run


@functools.lru_cache(maxsize=256)
def _cached(model: nn.Module, loss: Any, train: bool, layers: tuple | None):
    return jax.jit(_make_probe(model, get_loss(loss), train, layers))


def _compiled(model, loss, train, layers, maker):
    try:
        return maker(model, loss, train, layers)
    except TypeError as e:
        if "unhashable" not in str(e):
            raise
        # An unhashable model or loss (e.g. a list field): compile without caching.
        return jax.jit(_make_probe(model, get_loss(loss), train, layers))


def probe(
    model: nn.Module,
    variables: Mapping,
    x: Array,
    y: Array,
    loss: str | LossFn = "softmax_cross_entropy",
    *,
    train: bool = False,
    layers: Sequence[str] | None = None,
) -> LayerReport:
    r"""Per-layer gradient and signal statistics of ``model`` on the batch ``(x, y)``.

    One jitted forward and backward pass (cached per ``(model, loss, train, layers)``, so calls
    with new variables or data of the same shapes do not recompile); traceable, so it can be
    ``jax.vmap`` -ed over seeds or hyperparameters.

    Args:
      model: a :mod:`gradflow.models` feed-forward model (:class:`~gradflow.models.Chain`,
        :class:`~gradflow.models.MLP`, :class:`~gradflow.models.DeepLinear`) or any module built
        from :class:`~gradflow.models.DenseBlock` s.
      variables: from ``model.init`` (``params``, and ``batch_stats`` with BatchNorm); any
        ``perturbations`` / ``intermediates`` in it are ignored.
      x: inputs ``(B, ...)``.
      y: integer labels ``(B,)`` or real targets shaped like the output.
      loss: ``"softmax_cross_entropy"``, ``"sigmoid_cross_entropy"`` (Nielsen's), ``"mse"``
        (see :func:`get_loss`) or a callable ``(outputs, y) -> scalar`` that averages over the
        batch.
      train: passed to the model; with BatchNorm, ``True`` uses batch statistics, i.e. the
        gradients a training step sees (updated statistics are discarded), ``False`` the running
        averages (at initialisation, mean 0 and variance 1: BatchNorm then does almost nothing).
      layers: names of the layers to report, nested ones as ``"outer/inner"`` (default
        ``model.layer_names()``, else every :class:`~gradflow.models.DenseBlock` in the order
        the blocks run).

    Returns:
      :class:`LayerReport` with arrays ``(L,)`` (``(..., L)`` under vmap).
    """
    if isinstance(model, _models.RNN):
        raise TypeError("probe reports Dense layers; use gradflow.probes.probe_rnn for an RNN")
    layers = None if layers is None else tuple(layers)
    fn = _compiled(model, loss, bool(train), layers, _cached)
    return fn(variables, x, y)


def _make_probe_rnn(model: nn.Module, loss_fn: LossFn, train: bool, layers: Any):
    del train, layers

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
        delta = jnp.linalg.norm(g, axis=-1) * g.shape[0]  # per-example: B dC/dh_t
        h = inter["rnn"]["h"][0]
        leaves = jax.tree.leaves(g_params)
        return RecurrentReport(
            loss=c,
            hidden_grad_norm=delta.mean(0),
            hidden_grad_norm_std=delta.std(0),
            hidden_norm=jnp.linalg.norm(h, axis=-1).mean(0),
            param_grad_norm=jnp.sqrt(sum(jnp.sum(jnp.square(v)) for v in leaves)),
        )

    return run


@functools.lru_cache(maxsize=64)
def _cached_rnn(model, loss, train, layers):
    return jax.jit(_make_probe_rnn(model, get_loss(loss), train, layers))


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
    fn = _compiled(model, loss, False, None, _cached_rnn)
    return fn(variables, x, y)


def time_decay_rate(norms: Array, *, axis: int = -1) -> Array:
    r"""Per-step factor :math:`r` of a geometric fit :math:`\|\partial C/\partial h_t\| \propto
    r^{T - t}`: the factor by which the gradient shrinks for each step back in time.

    Least-squares slope of :math:`\log\|\cdot\|` against :math:`t` along ``axis``:
    :math:`r = \exp(-\text{slope})`; :math:`r < 1` vanishing, :math:`r > 1` exploding through time.
    Steps whose norm is zero (underflow) or not finite are left out of the fit; NaN when fewer
    than two remain.
    """
    n = jnp.moveaxis(jnp.asarray(norms), axis, -1)
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


def _columns(history: Mapping | Sequence) -> dict[str, np.ndarray]:
    if isinstance(history, Mapping):
        cols = {k: np.asarray(history[k], dtype=np.float64) for k in _HISTORY_KEYS if k in history}
    elif isinstance(history, Sequence) and not isinstance(history, (str, bytes)):
        if not history:
            raise ValueError("check_history: empty history")
        keys = [k for k in _HISTORY_KEYS if k in history[0]]
        for i, step in enumerate(history):
            missing = [k for k in keys if k not in step]
            if missing:
                raise ValueError(f"check_history: step {i} lacks {missing} (step 0 has {keys})")
        cols = {k: np.asarray([s[k] for s in history], dtype=np.float64) for k in keys}
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
    (0-based, forward order), ``name``, the statistics of :data:`STATS` (``loss`` repeated per
    layer) and ``verdict`` (default thresholds).
    """
    import pandas as pd

    L = report.num_layers or np.shape(report.weight_grad_norm)[-1]
    names = report.layer_names or tuple(f"layer_{i}" for i in range(L))
    cols = {k: np.asarray(getattr(report, k), dtype=np.float64) for k in STATS}
    draws = int(np.asarray(report.loss).size)
    data = {
        "draw": np.repeat(np.arange(draws), L),
        "layer": np.tile(np.arange(L), draws),
        "name": np.tile(np.asarray(names, dtype=object), draws),
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

    Columns: :math:`\|\partial C/\partial W\|`, :math:`\|\partial C/\partial b\|` (Nielsen's
    speed), :math:`\|\delta\|` mean and std over examples, the ratio of ``stat`` to the readout's,
    activation mean and variance, % saturated and % dead units, and the :func:`verdict`. A
    vmapped report is summarised by the median over its draws (said in the header).
    """
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

    header = [
        "layer",
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
                sci(arrays["weight_grad_norm"][i]),
                sci(arrays["bias_grad_norm"][i]),
                sci(arrays["preact_grad_norm"][i]),
                sci(arrays["preact_grad_norm_std"][i]),
                sci(ratio[i]),
                f"{arrays['act_mean'][i]:.3f}",
                f"{arrays['act_var'][i]:.3g}",
                f"{100 * arrays['saturated_frac'][i]:.1f}",
                f"{100 * arrays['dead_frac'][i]:.1f}",
                str(labels[i]),
            ]
        )
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]

    def line(cells):
        return "  ".join(
            c.ljust(w) if j in (0, len(cells) - 1) else c.rjust(w)
            for j, (c, w) in enumerate(zip(cells, widths))
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
