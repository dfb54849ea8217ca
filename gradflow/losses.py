r"""The costs the probe and the training loop minimise: functions ``(logits, y) -> scalar``.

Each averages over the batch axis 0, :math:`C = \frac{1}{B}\sum_x C_x`, so that
:math:`B\,\partial C/\partial z^x` is the per-example error :math:`\delta^x` of
:func:`gradflow.probes.probe`. ``y`` is integer class labels (one-hot targets) or real targets
shaped like the logits:

* :func:`softmax_cross_entropy` -- :math:`\delta^L = \mathrm{softmax}(z) - y`;
* :func:`sigmoid_cross_entropy` -- Nielsen's cross-entropy on sigmoid outputs,
  :math:`\delta^L = \sigma(z) - y`;
* :func:`mse` -- Nielsen's quadratic cost :math:`\frac{1}{2}\|z - y\|^2`, :math:`\delta^L = z - y`.

:func:`get_loss` maps a name in :data:`LOSSES` to its function (a callable passes unchanged).
The numerics are optax's (``optax.softmax_cross_entropy``, ``optax.sigmoid_binary_cross_entropy``).

References:
  M. Nielsen, *Neural Networks and Deep Learning*, ch. 3, "Improving the way neural networks
  learn" (2015), http://neuralnetworksanddeeplearning.com/chap3.html (the quadratic and the
  cross-entropy cost and their output errors).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

__all__ = ["LOSSES", "get_loss"]

Array = jax.Array
#: A loss: ``(outputs, y) -> scalar``, the mean over the batch.
LossFn = Callable[[Array, ArrayLike], Array]


def _targets(logits: Array, y: ArrayLike, loss: str) -> Array:
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


def softmax_cross_entropy(logits: Array, y: ArrayLike) -> Array:
    r""":math:`-\frac{1}{B}\sum_x \log \mathrm{softmax}(z^x)_{y^x}` (optax); integer labels or
    probability targets."""
    y = jnp.asarray(y)
    if jnp.issubdtype(y.dtype, jnp.integer):
        _targets(logits, y, "softmax_cross_entropy")
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return optax.softmax_cross_entropy(logits, _targets(logits, y, "softmax_cross_entropy")).mean()


def sigmoid_cross_entropy(logits: Array, y: ArrayLike) -> Array:
    r"""Nielsen's cross-entropy cost on sigmoid outputs :math:`a = \sigma(z)`:

    .. math::
        C = -\frac{1}{B}\sum_x \sum_j \big[y_j \ln a_j + (1 - y_j)\ln(1 - a_j)\big],

    summed over output units, averaged over examples (one-hot targets for integer labels), so
    :math:`\delta^L = a - y` per example. Computed stably from the logits (optax)."""
    t = _targets(logits, y, "sigmoid_cross_entropy")
    return optax.sigmoid_binary_cross_entropy(logits, t).sum(-1).mean()


def mse(logits: Array, y: ArrayLike) -> Array:
    r"""Nielsen's quadratic cost :math:`C = \frac{1}{2B}\sum_x \|a^x - y^x\|^2` on the raw
    outputs (one-hot targets for integer labels), so :math:`\partial C_x/\partial a = a - y`."""
    t = _targets(logits, y, "mse")
    return 0.5 * jnp.sum(jnp.square(logits - t), axis=-1).mean()


_LOSSES: dict[str, LossFn] = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "sigmoid_cross_entropy": sigmoid_cross_entropy,
    "mse": mse,
}
#: Loss names :func:`gradflow.probes.probe` and :mod:`gradflow.training` accept (or pass a
#: callable ``(logits, y) -> scalar``).
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
