r"""Closed-form gradients of deep nets: the one-neuron chain, its log domain, bounds, and the MLP.

The vanishing-gradient argument of the seed notes (seeds 000, 001; Nielsen, *Neural Networks and
Deep Learning*, ch. 5) is about a chain with one neuron per layer,

.. math::

    a_0 = x, \qquad z_j = w_j a_{j-1} + b_j, \qquad a_j = \phi(z_j), \qquad j = 1, \dots, L,

with a cost :math:`C(a_L)`. The chain rule gives every gradient as a product:

.. math::

    \frac{\partial C}{\partial b_j}
      = \phi'(z_j) \prod_{k=j+1}^{L} \bigl[w_k \phi'(z_k)\bigr] \frac{\partial C}{\partial a_L},
    \qquad
    \frac{\partial C}{\partial w_j} = a_{j-1} \frac{\partial C}{\partial b_j}.

Since :math:`\sup|\sigma'| = 1/4`, with :math:`|w_k| \le 1` every factor is at most 1/4 and
:math:`|\partial C / \partial b_1| \le (1/4)^L |\partial C / \partial a_L|` (vanishing); with
:math:`w_j = 100` and biases chosen so that :math:`z_j = 0` every factor is :math:`25` (exploding).

This module computes those quantities exactly and jittably, without autodiff (autodiff is what
the tests check them against):

* :func:`chain_forward`, :func:`chain_grads` -- the chain and its closed-form gradients;
* :func:`chain_log_grads` -- sign and :math:`\log|\partial C / \partial b_j|` by sums of logs,
  finite in float32 at any depth (the plain product underflows past depth ~60 for the sigmoid);
* :func:`signed_log_abs_grad` -- a stable :math:`(\operatorname{sign}, \log|\phi'(z)|)`;
* :func:`gradient_bound`, :func:`log_gradient_bound` -- :math:`\sup|\phi'|^L \prod_{k\ge 2}|w_k|`;
* :func:`exploding_chain` -- the seed's :math:`w_j = 100`, :math:`z_j = 0` construction;
* :func:`scaled_identity_mlp`, :func:`deep_linear_gain` -- deep linear nets with
  :math:`W_l = gI` (seed 002; Saxe et al. 2014), gain :math:`g^L` forward and backward;
* :func:`mlp_forward`, :func:`mlp_grads` -- the matrix form
  :math:`\delta^l = \Sigma'(z^l) (W^{l+1})^\top \cdots \Sigma'(z^L) \nabla_{a} C`.

Conventions: chain arrays are ``(..., L)`` with the layer axis last and any leading batch axes;
``x`` and ``dC_daL`` broadcast against ``w[..., 0]``. Everything works under :func:`jax.jit` and
:func:`jax.vmap` (pass the activation by closure or as a static argument) in float32 and float64.
Activations are names of :mod:`gradflow.activations` or :class:`~gradflow.activations.Activation`
objects. Bad input raises ``ValueError`` early; the finiteness of array inputs is checked only when
they are concrete (outside ``jit``/``vmap``), since a traced value cannot raise.

References:
  M. Nielsen, *Neural Networks and Deep Learning*, ch. 5, "Why are deep neural networks hard to
  train?" (2015). A. Saxe, J. McClelland, S. Ganguli, "Exact solutions to the nonlinear dynamics of
  learning in deep linear neural networks", ICLR 2014.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from gradflow import _checks, _limits
from gradflow import activations as _activations
from gradflow import config as _config

__all__ = [
    "ChainForward",
    "ChainGrads",
    "LogGrads",
    "MLPForward",
    "MLPGrads",
    "chain_forward",
    "chain_grads",
    "chain_log_grads",
    "deep_linear_gain",
    "exploding_chain",
    "gradient_bound",
    "log_gradient_bound",
    "mlp_forward",
    "mlp_grads",
    "scaled_identity_mlp",
    "signed_log_abs_grad",
]

Array = jax.Array
ActivationLike = str | _activations.Activation


class ChainForward(NamedTuple):
    """Forward pass of the one-neuron chain: pre-activations ``z`` and activations ``a``,
    both ``(..., L)``; ``a[..., j-1]`` is :math:`a_j` (the input :math:`a_0 = x` is not
    repeated)."""

    z: Array
    a: Array


class ChainGrads(NamedTuple):
    r"""Closed-form gradients of the chain, each ``(..., L)`` except ``input`` (``(...)``).

    Attributes:
      bias: :math:`\partial C / \partial b_j` (equal to :math:`\partial C / \partial z_j`).
      weight: :math:`\partial C / \partial w_j = a_{j-1}\, \partial C / \partial b_j`.
      input: :math:`\partial C / \partial x = w_1\, \partial C / \partial b_1`.
    """

    bias: Array
    weight: Array
    input: Array


class LogGrads(NamedTuple):
    r"""Sign and :math:`\log|\partial C / \partial b_j|`, each ``(..., L)``.

    A zero gradient has ``sign == 0`` and ``log_abs == -inf``. The weight gradient follows as
    ``sign * sign(a_{j-1})`` and ``log_abs + log|a_{j-1}|``.
    """

    sign: Array
    log_abs: Array


class MLPForward(NamedTuple):
    """Forward pass of an MLP: lists of per-layer pre-activations ``z[l]`` and activations ``a[l]``
    (``l = 0, ..., L-1`` for layers 1 to L), each ``(..., fan_out_l)``."""

    z: list[Array]
    a: list[Array]


class MLPGrads(NamedTuple):
    r"""Closed-form gradients of an MLP, one entry per layer in forward order.

    Attributes:
      kernel: :math:`\partial C / \partial W^l = a^{l-1} \otimes \delta^l`, ``(..., fan_in,
        fan_out)`` per example (sum over the batch axes yourself for a summed cost).
      bias: :math:`\partial C / \partial b^l = \delta^l`, ``(..., fan_out)``.
      input: :math:`\partial C / \partial x = W^1 \delta^1`, ``(..., fan_in)``.
    """

    kernel: list[Array]
    bias: list[Array]
    input: Array

    @property
    def delta(self) -> list[Array]:
        r"""The error terms :math:`\delta^l = \partial C / \partial z^l` (the same arrays as
        :attr:`bias`)."""
        return self.bias


# --- validation -------------------------------------------------------------------------------


def _check_finite(name: str, value: Array) -> None:
    """Raise if a concrete array has non-finite entries; traced values pass unchecked."""
    try:
        host = np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if host.dtype.kind in "fc" and not np.all(np.isfinite(host)):
        bad = np.argwhere(~np.isfinite(host))
        where = tuple(int(i) for i in bad[0]) if host.ndim else ()
        raise ValueError(
            f"{name} must be finite; got {len(bad)} non-finite value(s), the first "
            f"{host[where] if host.ndim else host} at index {where}"
        )


def _float_dtype(*arrays: ArrayLike) -> np.dtype:
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return dtype


def _as_array(name: str, value: Any) -> Array:
    if value is None or isinstance(value, str | bytes):
        raise TypeError(f"{name} must be array-like, got {value!r}")
    try:
        arr = jnp.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be array-like, got {type(value).__name__}") from err
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(
            f"{name} must be real; got {arr.dtype} (the chain rule here is for real weights: "
            "pass the real part explicitly if that is what you mean)"
        )
    return arr


_ABSENT = object()


def _chain_inputs(w, b, x, dC_daL=_ABSENT):
    """Validate and cast chain inputs; returns (w, b, x) or (w, b, x, dC_daL)."""
    w, b, x = _as_array("w", w), _as_array("b", b), _as_array("x", x)
    if w.ndim == 0 or b.ndim == 0:
        raise ValueError(
            f"w and b need a trailing layer axis (..., L); got w.shape={w.shape}, b.shape={b.shape}"
        )
    if w.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"w and b must have the same depth (last axis); got w.shape={w.shape} and "
            f"b.shape={b.shape}"
        )
    if w.shape[-1] == 0:
        raise ValueError(f"depth must be at least 1; got w.shape={w.shape} (depth 0)")
    arrays = [w, b, x] if dC_daL is _ABSENT else [w, b, x, _as_array("dC_daL", dC_daL)]
    try:
        jnp.broadcast_shapes(w.shape[:-1], b.shape[:-1], *(a.shape for a in arrays[2:]))
    except ValueError as err:
        extra = "" if dC_daL is _ABSENT else f", dC_daL.shape={jnp.shape(dC_daL)}"
        raise ValueError(
            "w[..., 0], b[..., 0], x and dC_daL must broadcast to one batch shape; got "
            f"w.shape={w.shape}, b.shape={b.shape}, x.shape={x.shape}{extra}"
        ) from err
    for name, arr in zip(("w", "b", "x", "dC_daL"), arrays):
        _check_finite(name, arr)
    dtype = _float_dtype(*arrays)
    return tuple(a.astype(dtype) for a in arrays)


# --- stable log|phi'| ---------------------------------------------------------------------------


def _log_sigmoid(z):
    return -jax.nn.softplus(-z)


def _signed_log_builtin(act: _activations.Activation, z: Array):
    """(sign, log|phi'(z)|) in closed form for the built-in activations, or None."""
    name, kw = act.name, act.kwargs
    one, zero = jnp.ones_like(z), jnp.zeros_like(z)
    neg_inf = jnp.full_like(z, -jnp.inf)
    pos = z > 0  # the registry's kink convention: phi'(0) takes the left-hand value
    if name == "linear":
        return one, zero
    if name == "sigmoid":  # log sigma' = log sigma(z) + log sigma(-z)
        return one, -jax.nn.softplus(z) - jax.nn.softplus(-z)
    if name == "tanh":  # 1 - tanh^2 = 4 e^{-2|z|} / (1 + e^{-2|z|})^2
        u = jnp.abs(z)
        return one, 2 * (math.log(2.0) - u - jnp.log1p(jnp.exp(-2 * u)))
    if name == "softplus":
        return one, _log_sigmoid(z)
    if name == "relu":
        return jnp.where(pos, one, zero), jnp.where(pos, zero, neg_inf)
    if name == "leaky_relu":
        s = kw["negative_slope"]
        log_s = math.log(abs(s)) if s != 0 else -math.inf
        return jnp.where(pos, one, math.copysign(1.0, s) if s else 0.0), jnp.where(pos, zero, log_s)
    if name in ("elu", "selu"):
        alpha = kw.get("alpha", _activations.SELU_ALPHA if name == "selu" else 1.0)
        scale = _activations.SELU_LAMBDA if name == "selu" else 1.0
        log_alpha = math.log(alpha) if alpha > 0 else -math.inf
        neg_sign = 1.0 if alpha > 0 else 0.0
        log_neg = log_alpha + jnp.minimum(z, 0) if alpha > 0 else neg_inf
        return (
            jnp.where(pos, one, neg_sign),
            math.log(scale) + jnp.where(pos, zero, log_neg),
        )
    if name == "silu":  # sigma(z) (1 + z sigma(-z))
        t = 1 + z * jax.nn.sigmoid(-z)
        return jnp.sign(t), _log_sigmoid(z) + jnp.log(jnp.abs(t))
    if name == "gelu":
        # Phi(z) + z pdf(z) = pdf(z) [m(z) + z] with the Mills ratio m = Phi/pdf
        # = sqrt(pi/2) erfcx(-z/sqrt 2), stable for z < 0; for z >= 0 the value is >= 1/2.
        log_pdf = -0.5 * z * z - 0.5 * math.log(2 * math.pi)
        zn = jnp.minimum(z, 0)
        t = math.sqrt(math.pi / 2) * jax.scipy.special.erfcx(-zn / math.sqrt(2.0)) + zn
        neg = (jnp.sign(t), log_pdf + jnp.log(jnp.abs(t)))
        direct = jnp.log(act.grad(jnp.maximum(z, 0)))
        return jnp.where(pos, one, neg[0]), jnp.where(pos, direct, neg[1])
    return None


def signed_log_abs_grad(z: ArrayLike, activation: ActivationLike) -> tuple[Array, Array]:
    r"""Sign and :math:`\log|\phi'(z)|`, computed without forming :math:`\phi'(z)`.

    For the built-in activations the logarithm is written in closed form so that it is finite
    wherever :math:`\phi'(z) \neq 0`, even where :math:`\phi'(z)` itself underflows (sigmoid at
    :math:`|z| > 88` in float32):

    * sigmoid: :math:`\log\sigma'(z) = -\operatorname{softplus}(z) - \operatorname{softplus}(-z)`;
    * tanh: :math:`\log(1 - \tanh^2 z) = 2(\log 2 - |z| - \log(1 + e^{-2|z|}))`;
    * softplus: :math:`\log\sigma(z)`; silu: :math:`\log\sigma(z) + \log|1 + z\sigma(-z)|`;
    * elu/selu: :math:`\log(\lambda\alpha) + z` for :math:`z \le 0`;
    * gelu: :math:`\log\varphi(z) + \log|m(z) + z|` with the Mills ratio
      :math:`m(z) = \sqrt{\pi/2}\,\operatorname{erfcx}(-z/\sqrt 2)` for :math:`z < 0`.

    At a kink the registry's convention holds (``relu'(0) = 0``). Zeros of :math:`\phi'` (relu for
    :math:`z \le 0`, silu and gelu at their minima) give ``sign = 0`` and ``log_abs = -inf``. An
    activation registered by the user falls back to ``log|grad(z)|``.

    Args:
      z: pre-activations, any shape.
      activation: a name from :func:`gradflow.activations.names` or an ``Activation``.

    Returns:
      ``(sign, log_abs)``, each the shape and floating dtype of ``z``.
    """
    act = _activations.get(activation)
    z = _as_array("z", z)
    _check_finite("z", z)
    return _signed_log_jit(z.astype(_float_dtype(z)), _activations.StaticActivation(act))


def _signed_log(z, act):
    out = None
    if getattr(act.grad, "__module__", None) == _activations.__name__:
        out = _signed_log_builtin(act, z)
    if out is None:
        g = act.grad(z)
        out = (jnp.sign(g), jnp.log(jnp.abs(g)))
    sign, log_abs = out
    return sign.astype(z.dtype), log_abs.astype(z.dtype)


@functools.partial(jax.jit, static_argnums=1)
def _signed_log_jit(z, key):
    return _signed_log(z, key.act)


# --- the one-neuron chain -----------------------------------------------------------------------


def _forward(w, b, x, act):
    batch = jnp.broadcast_shapes(w.shape[:-1], b.shape[:-1], x.shape)
    a0 = jnp.broadcast_to(x, batch)

    def step(a_prev, wb):
        w_j, b_j = wb
        z = w_j * a_prev + b_j
        a = jnp.broadcast_to(act.fn(z), batch).astype(a_prev.dtype)
        return a, (jnp.broadcast_to(z, batch), a)

    _, (z, a) = jax.lax.scan(step, a0, (jnp.moveaxis(w, -1, 0), jnp.moveaxis(b, -1, 0)))
    return jnp.moveaxis(z, 0, -1), jnp.moveaxis(a, 0, -1)


def _exclusive_suffix(op, values, identity):
    """out_j = op over k > j of values_k along the last axis (identity at j = L)."""
    axis = values.ndim - 1
    if op == "prod":
        incl = jax.lax.cumprod(values, axis=axis, reverse=True)
    else:
        incl = jax.lax.cumsum(values, axis=axis, reverse=True)
    pad = jnp.full((*values.shape[:-1], 1), identity, values.dtype)
    return jnp.concatenate([incl[..., 1:], pad], axis=-1)


def chain_forward(
    w: ArrayLike, b: ArrayLike, x: ArrayLike, activation: ActivationLike
) -> ChainForward:
    r"""Forward pass of the one-neuron-per-layer chain (Nielsen ch. 5; seeds 000, 001).

    .. math::

        a_0 = x, \qquad z_j = w_j a_{j-1} + b_j, \qquad a_j = \phi(z_j), \qquad j = 1..L.

    Args:
      w: weights ``(..., L)``.
      b: biases ``(..., L)``; leading axes broadcast against those of ``w``.
      x: the input :math:`a_0`, broadcasting against ``w[..., 0]``.
      activation: a name from :func:`gradflow.activations.names` or an ``Activation``.

    Returns:
      ``ChainForward(z, a)``, each ``(..., L)`` in the promoted floating dtype (integer input is
      promoted to the default float dtype).

    Raises:
      ValueError: ``w``/``b`` without a layer axis or of different depths, depth 0, shapes that
        do not broadcast, non-finite concrete input, or an unknown activation name.
    """
    act = _activations.get(activation)
    w, b, x = _chain_inputs(w, b, x)
    return _chain_forward_jit(w, b, x, _activations.StaticActivation(act))


@functools.partial(jax.jit, static_argnums=3)
def _chain_forward_jit(w, b, x, key):
    return ChainForward(*_forward(w, b, x, key.act))


def chain_grads(
    w: ArrayLike, b: ArrayLike, x: ArrayLike, dC_daL: ArrayLike, activation: ActivationLike
) -> ChainGrads:
    r"""Bias, weight and input gradients of the chain by the closed form, no autodiff.

    With :math:`f_k = w_k \phi'(z_k)` (Nielsen, *Neural Networks and Deep Learning*, ch. 5, "What's
    causing the vanishing gradient problem?", http://neuralnetworksanddeeplearning.com/chap5.html):

    .. math::

        \frac{\partial C}{\partial b_j}
          = \phi'(z_j) \prod_{k=j+1}^{L} f_k \, \frac{\partial C}{\partial a_L}, \qquad
        \frac{\partial C}{\partial w_j} = a_{j-1} \frac{\partial C}{\partial b_j}, \qquad
        \frac{\partial C}{\partial x} = w_1 \frac{\partial C}{\partial b_1}.

    :math:`\phi'` is the activation's closed-form ``grad``; the suffix products
    :math:`\prod_{k>j} f_k` are one reverse cumulative product (:func:`jax.lax.cumprod`), so all
    ``L`` gradients cost :math:`O(L)` work. The products underflow
    in float32 past depth ~60 for the sigmoid (:math:`0.25^{60} \approx 10^{-36}`); use
    :func:`chain_log_grads` there.

    Args:
      w, b, x: as in :func:`chain_forward`.
      dC_daL: :math:`\partial C / \partial a_L`, broadcasting against ``w[..., 0]``.
      activation: a name or an ``Activation``.

    Returns:
      ``ChainGrads(bias, weight, input)``: ``bias`` and ``weight`` ``(..., L)``, ``input`` the
      batch shape.

    Raises:
      ValueError: as :func:`chain_forward`, and for non-finite concrete ``dC_daL``.

    Example:
      The seed's exploding chain: every factor :math:`w_j \sigma'(z_j)` is 25.

      >>> w, b = gf.analytic.exploding_chain(4, x=0.5)
      >>> g = gf.analytic.chain_grads(w, b, 0.5, 1.0, "sigmoid")
      >>> print(g.bias[:-1] / g.bias[1:])
      [25. 25. 25.]
    """
    act = _activations.get(activation)
    return _chain_grads_jit(*_chain_inputs(w, b, x, dC_daL), _activations.StaticActivation(act))


@functools.partial(jax.jit, static_argnums=4)
def _chain_grads_jit(w, b, x, g, key):
    act = key.act
    z, a = _forward(w, b, x, act)
    dphi = act.grad(z).astype(z.dtype)
    suffix = _exclusive_suffix("prod", w * dphi, 1)
    bias = dphi * suffix * g[..., None]
    x_full = jnp.broadcast_to(x, a.shape[:-1])
    a_prev = jnp.concatenate([x_full[..., None], a[..., :-1]], axis=-1)
    return ChainGrads(bias=bias, weight=a_prev * bias, input=w[..., 0] * bias[..., 0])


def chain_log_grads(
    w: ArrayLike, b: ArrayLike, x: ArrayLike, dC_daL: ArrayLike, activation: ActivationLike
) -> LogGrads:
    r"""Sign and :math:`\log|\partial C / \partial b_j|` of the chain, by sums of logarithms.

    .. math::

        \log\Bigl|\frac{\partial C}{\partial b_j}\Bigr|
          = \log|\phi'(z_j)| + \sum_{k=j+1}^{L} \bigl(\log|w_k| + \log|\phi'(z_k)|\bigr)
            + \log\Bigl|\frac{\partial C}{\partial a_L}\Bigr|,

    with :math:`\log|\phi'|` from :func:`signed_log_abs_grad` (never forming :math:`\phi'`) and the
    suffix sums as one reverse cumulative sum; the sign is the product of the factors' signs
    (exact). This stays finite where :func:`chain_grads` underflows: in float32 the plain sigmoid
    product is 0 past depth ~60-75, while ``log_abs`` is finite and accurate at depth 10,000 and
    beyond (the forward pass of a bounded activation stays finite at any depth). The relative error
    of ``log_abs`` is that of a float cumulative sum: about :math:`\log_2(L)\,\epsilon` times
    :math:`\sum|\log f_k|`.

    A zero factor (a zero weight, :math:`\phi'(z) = 0` as for relu at :math:`z \le 0`, or
    :math:`\partial C / \partial a_L = 0`) gives ``sign = 0`` and ``log_abs = -inf`` for every
    layer it reaches.

    Args:
      w, b, x, dC_daL, activation: as in :func:`chain_grads`.

    Returns:
      ``LogGrads(sign, log_abs)``, each ``(..., L)``; ``sign * exp(log_abs)`` equals
      ``chain_grads(...).bias`` wherever the latter does not underflow or overflow.

    Example:
      Depth 1000 in float32, where the plain product is 0:

      >>> ones, zeros = jnp.ones(1000), jnp.zeros(1000)
      >>> sign, log_abs = gf.analytic.chain_log_grads(ones, zeros, 0.0, 1.0, "sigmoid")
      >>> round(float(log_abs[0] / jnp.log(10)), 1)     # log10 |dC/db_1|
      -648.3
      >>> float(gf.analytic.chain_grads(ones, zeros, 0.0, 1.0, "sigmoid").bias[0])
      0.0
    """
    act = _activations.get(activation)
    return _chain_log_grads_jit(*_chain_inputs(w, b, x, dC_daL), _activations.StaticActivation(act))


@functools.partial(jax.jit, static_argnums=4)
def _chain_log_grads_jit(w, b, x, g, key):
    z, _ = _forward(w, b, x, key.act)
    s_phi, l_phi = _signed_log(z, key.act)
    s_f = jnp.sign(w) * s_phi
    l_f = jnp.log(jnp.abs(w)) + l_phi
    sign = s_phi * _exclusive_suffix("prod", s_f, 1) * jnp.sign(g)[..., None]
    log_abs = l_phi + _exclusive_suffix("sum", l_f, 0) + jnp.log(jnp.abs(g))[..., None]
    return LogGrads(sign=sign, log_abs=jnp.where(sign == 0, -jnp.inf, log_abs))


def _bound_inputs(w, activation):
    act = _activations.get(activation)
    w = _as_array("w", w)
    if w.ndim == 0:
        raise ValueError(f"w needs a trailing layer axis (..., L); got w.shape={w.shape}")
    if w.shape[-1] == 0:
        raise ValueError(f"depth must be at least 1; got w.shape={w.shape} (depth 0)")
    _check_finite("w", w)
    return act, w.astype(_float_dtype(w))


def log_gradient_bound(
    w: ArrayLike, activation: ActivationLike, *, per_layer: bool = False
) -> Array:
    r"""Logarithm of :func:`gradient_bound`: :math:`L \log\sup|\phi'| + \sum_{k\ge2}\log|w_k|`.

    Finite at any depth (unless a weight is 0 or :math:`\sup|\phi'| = 0`, giving ``-inf``).
    ``per_layer=True`` returns the ``(..., L)`` bounds for every :math:`b_j` as in
    :func:`gradient_bound`.
    """
    act, w = _bound_inputs(w, activation)
    depth = w.shape[-1]
    log_sup = math.log(act.sup_grad) if act.sup_grad > 0 else -math.inf
    log_w = _exclusive_suffix("sum", jnp.log(jnp.abs(w)), 0)
    n_factors = jnp.arange(depth, 0, -1, dtype=w.dtype)  # L - j + 1 for j = 1..L
    out = n_factors * log_sup + log_w
    return out if _checks.boolean("per_layer", per_layer) else out[..., 0]


def gradient_bound(w: ArrayLike, activation: ActivationLike, *, per_layer: bool = False) -> Array:
    r"""Bound on :math:`|\partial C / \partial b_1| / |\partial C / \partial a_L|` of the chain.

    Since :math:`|\phi'(z)| \le \sup|\phi'|` for every :math:`z` (Nielsen, *Neural Networks and Deep
    Learning*, ch. 5, http://neuralnetworksanddeeplearning.com/chap5.html),

    .. math::

        \Bigl|\frac{\partial C}{\partial b_1}\Bigr|
          \le \sup|\phi'|^{L} \prod_{k=2}^{L} |w_k| \, \Bigl|\frac{\partial C}{\partial a_L}\Bigr|,

    with equality when every :math:`z_j` sits at ``activation.argsup`` (for the sigmoid
    :math:`z_j = 0`, e.g. :func:`exploding_chain`). For the sigmoid with :math:`|w_k| \le 1` this is
    the :math:`(1/4)^L` of the vanishing-gradient argument. It holds for every bias and input.

    Args:
      w: weights ``(..., L)``.
      activation: a name or an ``Activation`` (its ``sup_grad`` is used).
      per_layer: if True, return the bound for every layer,
        :math:`\sup|\phi'|^{L-j+1} \prod_{k>j} |w_k|`, as ``(..., L)``.

    Returns:
      ``(...)`` (or ``(..., L)`` with ``per_layer``). Overflows/underflows like the product it is;
      see :func:`log_gradient_bound`.

    Example:
      >>> float(gf.analytic.gradient_bound(jnp.ones(10), "sigmoid"))   # (1/4)^10
      9.5367431640625e-07
    """
    act, w = _bound_inputs(w, activation)
    depth = w.shape[-1]
    suffix = _exclusive_suffix("prod", jnp.abs(w), 1)
    n_factors = jnp.arange(depth, 0, -1, dtype=w.dtype)
    out = jnp.asarray(act.sup_grad, w.dtype) ** n_factors * suffix
    return out if _checks.boolean("per_layer", per_layer) else out[..., 0]


def exploding_chain(
    depth: int,
    x: ArrayLike,
    weight: ArrayLike = 100.0,
    *,
    activation: ActivationLike = "sigmoid",
    dtype: DTypeLike | None = None,
) -> tuple[Array, Array]:
    r"""The seed's exploding chain: :math:`w_j = 100`, :math:`b_j = -w_j a_{j-1}`, :math:`z_j = 0`.

    Nielsen ch. 5 (seed 001): choose large weights and biases that put every neuron at the peak of
    :math:`\sigma'`. With :math:`z_j = 0` every :math:`a_j = \phi(0)` (:math:`1/2` for the sigmoid),
    so

    .. math::

        b_1 = -w_1 x, \qquad b_j = -w_j \phi(0) \; (j \ge 2), \qquad
        \frac{\partial C}{\partial b_1} = \phi'(0) \prod_{k=2}^L w_k \phi'(0)\,
        \frac{\partial C}{\partial a_L} = \tfrac14\, 25^{L-1} \frac{\partial C}{\partial a_L}

    for the sigmoid with ``weight=100``: every factor is :math:`w \phi'(0) = 25`, and the chain
    attains :func:`gradient_bound` with equality.

    Exactness. The biases are computed in float64 NumPy and rounded once to ``dtype``, so ``b_1``
    is exactly :math:`-\mathrm{fl}(w_1 x)`, the negative of the product the forward pass rounds.

    * If :math:`w_1 x` and :math:`w_j \phi(0)` are exactly representable in ``dtype`` (e.g.
      sigmoid, ``weight=100`` and ``x`` a dyadic rational such as 0.5, 1, -0.75 or 3.25 -- at
      most 19 significant bits in float32, as 100 = 25 * 4 has 5), then :math:`z_j = 0` exactly
      for every layer at any depth, on every backend.
    * Otherwise (e.g. ``x = 0.3``) :math:`z_1` is 0 where the forward pass rounds :math:`w_1 x`
      before adding :math:`b_1`, but is the rounding error of :math:`w_1 x` (up to
      :math:`\tfrac12\,\mathrm{ulp}(w_1 x)`) where the backend fuses the multiply-add (XLA on CPU
      does under ``jit``). That error is amplified by :math:`w\phi'(0) = 25` per layer,
      :math:`z_j \approx 25^{j-1} z_1`, and the chain leaves :math:`z = 0` after about 5 layers in
      float32 and 11 in float64 for ``x = 0.3``. The construction is numerically unstable; use an
      exactly representable ``x``.

    Args:
      depth: number of layers :math:`L \ge 1`.
      x: the input :math:`a_0`, a scalar or an array of any batch shape ``(...)``.
      weight: the weights, a scalar or an array broadcasting against ``(..., depth)``.
      activation: a name or an ``Activation`` (any :math:`\phi`; the factor is
        :math:`w\phi'(0)`).
      dtype: floating dtype of ``w`` and ``b``; default the result dtype of ``x`` and ``weight``
        (float32 unless x64 is enabled).

    Returns:
      ``(w, b)``, each ``(..., depth)``.

    It is a host-side constructor (the float64 step above needs concrete values): build the chain
    outside ``jit`` and pass ``(w, b)`` into the jitted code, as one passes any parameters.

    Raises:
      TypeError: ``depth`` not an integer, or ``x``/``weight`` traced (called inside ``jit``,
      ``vmap`` or ``grad``). ValueError: ``depth < 1`` or non-finite ``x``/``weight``.
    """
    for label, v in (("x", x), ("weight", weight)):
        if isinstance(v, jax.core.Tracer):
            raise TypeError(
                f"exploding_chain builds (w, b) on the host in float64 and needs a concrete "
                f"{label}, got a traced value ({type(v).__name__}); call it outside jit/vmap/grad "
                "and pass (w, b) in"
            )
    act = _activations.get(activation)
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)):
        raise TypeError(f"depth must be an int, got {type(depth).__name__}")
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    x_arr, w_arr = _as_array("x", x), _as_array("weight", weight)
    _check_finite("x", x_arr)
    _check_finite("weight", w_arr)
    dtype = jnp.dtype(dtype) if dtype is not None else _float_dtype(x_arr, w_arr)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    # three float64 work arrays and the two results, of (*x.shape, depth) entries each
    n = math.prod(np.broadcast_shapes(np.shape(w_arr), (*np.shape(x_arr), 1))[:-1]) * depth
    _limits.check_bytes(
        f"exploding_chain(depth={depth}) with x of shape {np.shape(x_arr)}",
        n * (3 * 8 + 2 * dtype.itemsize),
    )
    # Round x, weight and phi(0) to dtype first: the forward pass sees exactly these values.
    x64 = np.asarray(jnp.asarray(x_arr, dtype), np.float64)
    w64 = np.asarray(jnp.asarray(w_arr, dtype), np.float64)
    phi0 = float(np.asarray(act.fn(jnp.zeros((), dtype)), np.float64))
    try:
        shape = np.broadcast_shapes(w64.shape, (*x64.shape, depth))
    except ValueError as err:
        raise ValueError(
            f"weight of shape {w64.shape} does not broadcast against x.shape + (depth,) = "
            f"{(*x64.shape, depth)}"
        ) from err
    w64 = np.broadcast_to(w64, shape)
    a_prev = np.broadcast_to(np.asarray(phi0), shape).copy()
    a_prev[..., 0] = np.broadcast_to(x64, shape[:-1])
    # w*a is exact in float64 when dtype is float32 (24 + 24 bits); rounding it to dtype gives
    # the forward pass's own fl(w a). In float64 the product rounds once, as the forward pass does.
    b64 = -(w64 * a_prev)
    return jnp.asarray(w64, dtype), jnp.asarray(b64, dtype)


# --- deep linear nets and the MLP ---------------------------------------------------------------


def deep_linear_gain(gain: ArrayLike, depth: int) -> Array:
    r"""Gain :math:`g^L` of a deep linear net with :math:`W_l = gI` (seed 002; Saxe et al. 2014).

    The output is :math:`(gI)^L x = g^L x` and the input gradient :math:`((gI)^\top)^L \nabla C =
    g^L \nabla C`: :math:`2^{100} \approx 1.3 \times 10^{30}` for :math:`g = 2` over 100 layers
    (exploding), :math:`0.5^{100} \approx 7.9 \times 10^{-31}` for :math:`g = 0.5` (vanishing).
    ``gain`` may be an array (a grid of gains).

    Example:
      >>> float(gf.analytic.deep_linear_gain(2.0, 100)) == 2.0**100
      True
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)):
        raise TypeError(f"depth must be an int, got {type(depth).__name__}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    gain = _as_array("gain", gain)
    _check_finite("gain", gain)
    return gain.astype(_float_dtype(gain)) ** depth


def scaled_identity_mlp(
    depth: int, gain: float, width: int = 1, *, dtype: DTypeLike | None = None
) -> list[tuple[Array, Array]]:
    r"""The seed's deep linear net: ``depth`` layers of :math:`W_l = gI` and :math:`b_l = 0`.

    Seed 002 (after Saxe et al. 2014): with every :math:`W = 2I` a 100-layer linear net maps
    :math:`x \mapsto 2^{100} x` and multiplies gradients by :math:`2^{100}` on the way back;
    :math:`0.5 I` gives :math:`0.5^{100}`. Feed the result to :func:`mlp_forward` /
    :func:`mlp_grads` with ``activation="linear"``; :func:`deep_linear_gain` is the prediction.
    (For a weight-matrix initializer, see ``gradflow.initializers.get("scaled_identity")``.)

    Returns:
      A list of ``depth`` pairs ``(kernel (width, width), bias (width,))`` in ``dtype`` (default
      float32, or float64 with x64).
    """
    for name, v in (("depth", depth), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if v < 1:
            raise ValueError(f"{name} must be at least 1, got {v}")
    if isinstance(gain, bool) or not isinstance(gain, numbers.Real):
        raise TypeError(f"gain must be a real number, got {gain!r}")
    if not math.isfinite(float(gain)):
        raise ValueError(f"gain must be finite, got {gain}")
    dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(float)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype (kernel and bias share it), got {dtype}")
    kernel = gain * jnp.eye(width, dtype=dtype)
    bias = jnp.zeros((width,), dtype)
    return [(kernel, bias) for _ in range(depth)]


def _mlp_params(params) -> list[tuple[Array, Array]]:
    if isinstance(params, Mapping) or not isinstance(params, Sequence):
        raise TypeError(
            "params must be a list of (kernel, bias) pairs (or of {'kernel', 'bias'} dicts), got "
            f"{type(params).__name__}"
        )
    if len(params) == 0:
        raise ValueError("params is empty: an MLP needs at least one layer (depth 0)")
    out = []
    for i, layer in enumerate(params):
        if isinstance(layer, Mapping):
            if "kernel" not in layer or "bias" not in layer:
                raise ValueError(
                    f"params: layer {i}: dict needs 'kernel' and 'bias', got {list(layer)}"
                )
            kernel, bias = layer["kernel"], layer["bias"]
        elif isinstance(layer, Sequence) and len(layer) == 2:
            kernel, bias = layer
        else:
            raise TypeError(
                f"params: layer {i} must be a (kernel, bias) pair, got {type(layer).__name__}"
            )
        kernel, bias = _as_array(f"kernel {i}", kernel), _as_array(f"bias {i}", bias)
        if kernel.ndim != 2 or bias.shape != kernel.shape[-1:]:
            raise ValueError(
                f"layer {i}: need kernel (fan_in, fan_out) and bias (fan_out,); got "
                f"kernel.shape={kernel.shape}, bias.shape={bias.shape}"
            )
        if out and out[-1][0].shape[1] != kernel.shape[0]:
            raise ValueError(
                f"layer {i}: fan_in {kernel.shape[0]} does not match fan_out "
                f"{out[-1][0].shape[1]} of layer {i - 1}"
            )
        _check_finite(f"kernel {i}", kernel)
        _check_finite(f"bias {i}", bias)
        out.append((kernel, bias))
    return out


def _mlp_setup(params, x, dC_daL=None):
    layers = _mlp_params(params)
    x = _as_array("x", x)
    if x.ndim == 0 or x.shape[-1] != layers[0][0].shape[0]:
        raise ValueError(
            f"x must be (..., fan_in) with fan_in={layers[0][0].shape[0]}; got x.shape={x.shape}"
        )
    _check_finite("x", x)
    arrays = [x, *(a for layer in layers for a in layer)]
    if dC_daL is not None:
        dC_daL = _as_array("dC_daL", dC_daL)
        n_out = layers[-1][0].shape[1]
        if dC_daL.ndim == 0 or dC_daL.shape[-1] != n_out:
            raise ValueError(
                f"dC_daL must be (..., fan_out) with fan_out={n_out}; got shape {dC_daL.shape}"
            )
        _check_finite("dC_daL", dC_daL)
        arrays.append(dC_daL)
    dtype = _float_dtype(*arrays)
    layers = [(k.astype(dtype), bb.astype(dtype)) for k, bb in layers]
    x = x.astype(dtype)
    if dC_daL is not None:
        dC_daL = dC_daL.astype(dtype)
    return layers, x, dC_daL


#: Runs of at least this many consecutive layers of one shape go through one lax.scan, so that the
#: compile time of a deep MLP does not grow with its depth (shorter runs are unrolled).
_SCAN_MIN = 4


def _runs(layers, linear_readout):
    """(start, stop) of the runs of consecutive layers with equal kernel shapes; a linear readout
    is a run of its own."""
    runs: list[list] = []
    n = len(layers)
    for i, (kernel, _) in enumerate(layers):
        readout = linear_readout and i == n - 1
        if runs and not readout and runs[-1][2] == kernel.shape:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, None if readout else kernel.shape])
    return [(start, stop) for start, stop, _ in runs]


def _stack_runs(layers, linear_readout):
    """Per run, the stacked kernels (n, fan_in, fan_out) and biases (n, fan_out)."""
    return [
        (jnp.stack([k for k, _ in layers[s:e]]), jnp.stack([b for _, b in layers[s:e]]))
        for s, e in _runs(layers, linear_readout)
    ]


def _over_run(step, carry, xs, *, reverse=False):
    """:func:`jax.lax.scan` over a long run, an unrolled loop over a short one (same result)."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if n >= _SCAN_MIN:
        return jax.lax.scan(step, carry, xs, reverse=reverse)
    outs: list[chex.ArrayTree | None] = [None] * n
    for i in range(n - 1, -1, -1) if reverse else range(n):
        carry, outs[i] = step(carry, jax.tree.map(lambda v, i=i: v[i], xs))
    return carry, jax.tree.map(lambda *v: jnp.stack(v), *outs)


def _forward_runs(runs, x, act, linear_readout):
    """Per run, the stacked z^l and a^l."""
    out = []
    a = x
    for r, (kernels, biases) in enumerate(runs):
        readout = linear_readout and r == len(runs) - 1

        def step(a, kb, readout=readout):
            z = a @ kb[0] + kb[1]
            a = z if readout else act.fn(z).astype(z.dtype)
            return a, (z, a)

        a, z_and_a = _over_run(step, a, (kernels, biases))
        out.append(z_and_a)
    return out


@functools.partial(jax.jit, static_argnums=(2, 3))
def _mlp_forward_jit(runs, x, key, linear_readout):
    return _forward_runs(runs, x, key.act, linear_readout)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _mlp_grads_jit(runs, x, g, key, linear_readout):
    act = key.act
    batch = jnp.broadcast_shapes(x.shape[:-1], g.shape[:-1])
    x = jnp.broadcast_to(x, (*batch, x.shape[-1]))
    upstream = jnp.broadcast_to(g, (*batch, g.shape[-1]))  # dC/da^l, from l = L down
    fwd = _forward_runs(runs, x, act, linear_readout)
    a_before = [x] + [a_run[-1] for _, a_run in fwd[:-1]]
    out: list[tuple[Array, Array] | None] = [None] * len(runs)
    for r in range(len(runs) - 1, -1, -1):
        z_run, a_run = fwd[r]
        a_prev = a_before[r][None]  # a run of 2+ layers is square: a^l all share one shape
        if a_run.shape[0] > 1:
            a_prev = jnp.concatenate([a_prev, a_run[:-1]], axis=0)
        readout = linear_readout and r == len(runs) - 1

        def step(up, xs, readout=readout):
            kernel, z, a_in = xs
            delta = up if readout else act.grad(z).astype(z.dtype) * up
            return delta @ kernel.T, (delta, a_in[..., :, None] * delta[..., None, :])

        upstream, out[r] = _over_run(step, upstream, (runs[r][0], z_run, a_prev), reverse=True)
    return out, upstream


def _flatten_runs(per_run):
    # plain indexing: list(stacked) would compile one n-output unstack per depth
    return [stacked[i] for stacked in per_run for i in range(stacked.shape[0])]


@_config.wrap
def mlp_forward(
    params: Sequence[tuple[ArrayLike, ArrayLike] | Mapping[str, ArrayLike]],
    x: ArrayLike,
    activation: ActivationLike,
    *,
    linear_readout: bool = False,
) -> MLPForward:
    r"""Forward pass of an MLP given its ``[(kernel, bias), ...]``, Flax ``Dense`` convention.

    :math:`a^0 = x`, :math:`z^l = a^{l-1} W^l + b^l`, :math:`a^l = \phi(z^l)` for every layer
    (Nielsen's networks apply :math:`\phi` to the output layer too); ``linear_readout=True`` makes
    the last layer linear, :math:`a^L = z^L`.

    Args:
      params: a list of ``(kernel (fan_in, fan_out), bias (fan_out,))`` pairs (or dicts with keys
        ``"kernel"`` and ``"bias"``, e.g. the values of a Flax params dict in layer order).
      x: inputs ``(..., fan_in)``.
      activation: a name or an ``Activation``.
      linear_readout: keyword-only; skip :math:`\phi` on the last layer.

    Returns:
      ``MLPForward(z, a)``: lists of ``L`` arrays ``(..., fan_out_l)``.
    """
    act = _activations.get(activation)
    layers, x, _ = _mlp_setup(params, x)
    linear_readout = _checks.boolean("linear_readout", linear_readout)
    runs = _stack_runs(layers, linear_readout)
    fwd = _mlp_forward_jit(runs, x, _activations.StaticActivation(act), linear_readout)
    return MLPForward(z=_flatten_runs(z for z, _ in fwd), a=_flatten_runs(a for _, a in fwd))


@_config.wrap
def mlp_grads(
    params: Sequence[tuple[ArrayLike, ArrayLike] | Mapping[str, ArrayLike]],
    x: ArrayLike,
    dC_daL: ArrayLike,
    activation: ActivationLike,
    *,
    linear_readout: bool = False,
) -> MLPGrads:
    r"""Backpropagation of an MLP in closed form: the matrix generalisation of the chain.

    With :math:`\Sigma'(z^l) = \operatorname{diag}\phi'(z^l)` and Flax kernels
    :math:`z^l = a^{l-1} W^l + b^l` (Nielsen, *Neural Networks and Deep Learning*, ch. 2, BP1-BP4,
    http://neuralnetworksanddeeplearning.com/chap2.html, and ch. 5,
    http://neuralnetworksanddeeplearning.com/chap5.html):

    .. math::

        \delta^L = \Sigma'(z^L) \nabla_{a^L} C, \qquad
        \delta^l = \Sigma'(z^l)\, W^{l+1} \delta^{l+1}
          = \Sigma'(z^l) W^{l+1} \Sigma'(z^{l+1}) \cdots W^L \Sigma'(z^L) \nabla_{a^L} C,

    (:math:`W^{l+1}` acting on the fan-out side is the :math:`(W^{l+1})^\top` of the
    :math:`(\text{fan\_out}, \text{fan\_in})` convention), and

    .. math::

        \frac{\partial C}{\partial b^l} = \delta^l, \qquad
        \frac{\partial C}{\partial W^l} = a^{l-1} (\delta^l)^\top, \qquad
        \frac{\partial C}{\partial x} = W^1 \delta^1.

    Every leading axis of ``x`` and ``dC_daL`` is an independent example: the gradients are per
    example, equal to ``jax.vmap(jax.grad(...))`` of a cost whose gradient at :math:`a^L` is
    ``dC_daL``. Sum them over the batch for a summed cost (divide for a mean). Consecutive layers
    of one shape run through one :func:`jax.lax.scan`, so compile time does not grow with depth.

    Args:
      params, x, activation, linear_readout: as in :func:`mlp_forward`.
      dC_daL: :math:`\nabla_{a^L} C`, ``(..., fan_out_L)`` broadcasting against ``x``'s batch
        axes (e.g. :math:`a^L - y` for cross-entropy on sigmoid outputs with
        ``linear_readout=True`` on the logits).

    Returns:
      ``MLPGrads(kernel, bias, input)`` with ``.delta`` (= ``bias``), per layer in forward order.
    """
    act = _activations.get(activation)
    if dC_daL is None:
        raise TypeError("dC_daL must be array-like (dC/da at the output), got None")
    layers, x, g = _mlp_setup(params, x, dC_daL)
    linear_readout = _checks.boolean("linear_readout", linear_readout)
    runs = _stack_runs(layers, linear_readout)
    out, dx = _mlp_grads_jit(runs, x, g, _activations.StaticActivation(act), linear_readout)
    return MLPGrads(
        kernel=_flatten_runs(k for _, k in out), bias=_flatten_runs(d for d, _ in out), input=dx
    )
