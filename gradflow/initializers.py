r"""Weight initializers and their theoretical variance.

Each initializer has the :mod:`jax.nn.initializers` signature ``init(key, shape, dtype)``, so it can
be passed as Flax ``kernel_init`` / ``bias_init``. Kernels are ``(fan_in, fan_out)`` as in Flax
``Dense`` (for higher-rank kernels the receptive field multiplies both fans, as in JAX). Normal
initializers are *untruncated* Gaussians, because the variance conditions below and the mean-field
theory of :mod:`gradflow.meanfield` assume Gaussians (JAX's own ``lecun_normal``/``he_normal`` are
truncated; ours are not).

The variance conditions (REFERENCES.md):

* Glorot & Bengio 2010, forward :math:`n_{in}\operatorname{Var}(W) = 1`, backward
  :math:`n_{out}\operatorname{Var}(W) = 1`, compromise
  :math:`\operatorname{Var}(W) = 2/(n_{in}+n_{out})` (``xavier_*``; the uniform bound is
  :math:`\sqrt{6/(n_{in}+n_{out})}`). Their "standard" heuristic
  :math:`U[-1/\sqrt{n}, 1/\sqrt{n}]` (``fan_in_uniform``) gives :math:`n\operatorname{Var}(W)=1/3`.
* LeCun et al. 1998: :math:`\operatorname{Var}(W) = 1/n_{in}` (``lecun_*``; Nielsen's
  :math:`N(0, 1/n_{in})` weights).
* He et al. 2015: for ReLU :math:`\operatorname{Var}(y_l) = \tfrac12 n_l \operatorname{Var}(W_l)
  \operatorname{Var}(y_{l-1})`, so :math:`\operatorname{Var}(W) = 2/n_{in}`; with leaky slope
  :math:`a`, :math:`2/((1+a^2) n_{in})` (``he_*``).
* Saxe et al. 2014: orthogonal weights keep every singular value of a deep linear product at the
  gain; ``scaled_identity`` gives the seeds' :math:`W = gI` (:math:`2^L` or :math:`0.5^L`).
* The seeds' :math:`N(0,1)` is ``normal`` with ``std=1``.
* ``scaled_normal(scale)`` is the mean-field parameterisation :math:`W \sim N(0, \sigma_w^2/n_{in})`
  with ``scale`` :math:`=\sigma_w^2` (Poole et al. 2016).

Usage::

    init = gf.initializers.get("he_normal")
    w = init(jax.random.key(0), (256, 256))
    gf.initializers.weight_variance("xavier_normal", 64, 30)     # 2 / 94
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Initializer", "get", "names", "weight_variance"]

Initializer = Callable[..., jax.Array]
"""``init(key, shape, dtype=jnp.float32) -> Array`` (the jax.nn.initializers signature)."""

_ALIASES = {
    "glorot_normal": "xavier_normal",
    "glorot_uniform": "xavier_uniform",
    "kaiming_normal": "he_normal",
    "kaiming_uniform": "he_uniform",
}


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    if len(shape) < 2:
        raise ValueError(
            f"this initializer needs a kernel of rank >= 2 (fan_in, fan_out), got shape {shape}; "
            "for biases use 'normal', 'zeros' or 'constant'"
        )
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _check_fans(fan_in: Any, fan_out: Any) -> None:
    for label, n in (("fan_in", fan_in), ("fan_out", fan_out)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
            raise ValueError(f"{label} must be a positive integer, got {n!r}")


def _nonneg(name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"initializer {name!r}: {key} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"initializer {name!r}: {key} must be finite and >= 0, got {value}")
    return value


def _variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    # jax's variance_scaling with distribution="normal" is an untruncated Gaussian.
    return jax.nn.initializers.variance_scaling(scale, mode, distribution)


# Each entry: (factory(**params) -> init, variance(fan_in, fan_out, **params) -> float).
def _normal(std: float = 1.0):
    return jax.nn.initializers.normal(std)


def _scaled_normal(scale: float = 1.0):
    return _variance_scaling(scale, "fan_in", "normal") if scale > 0 else jax.nn.initializers.zeros


def _he(distribution: str):
    def factory(negative_slope: float = 0.0):
        return _variance_scaling(2.0 / (1.0 + negative_slope**2), "fan_in", distribution)

    return factory


def _orthogonal(gain: float = 1.0):
    base = jax.nn.initializers.orthogonal(scale=gain)

    def init(key, shape, dtype=jnp.float32):
        dtype = jnp.dtype(dtype)
        if dtype.itemsize < 4 and jnp.issubdtype(dtype, jnp.floating):
            # LAPACK has no half-precision QR: draw in float32, round once to dtype
            return base(key, shape, jnp.float32).astype(dtype)
        return base(key, shape, dtype)

    return init


def _scaled_identity(gain: float = 1.0):
    def init(key, shape, dtype=jnp.float32):
        del key
        shape = tuple(shape)
        if len(shape) != 2:
            raise ValueError(f"scaled_identity needs a 2-D kernel (fan_in, fan_out), got {shape}")
        return gain * jnp.eye(shape[0], shape[1], dtype=dtype)

    return init


def _constant(value: float = 0.0):
    return jax.nn.initializers.constant(value)


_REGISTRY: dict[str, tuple[Callable[..., Initializer], Callable[..., float]]] = {
    "normal": (_normal, lambda fi, fo, std=1.0: std**2),
    "scaled_normal": (_scaled_normal, lambda fi, fo, scale=1.0: scale / fi),
    "lecun_normal": (
        lambda: _variance_scaling(1.0, "fan_in", "normal"),
        lambda fi, fo: 1.0 / fi,
    ),
    "lecun_uniform": (
        lambda: _variance_scaling(1.0, "fan_in", "uniform"),
        lambda fi, fo: 1.0 / fi,
    ),
    "xavier_normal": (
        lambda: _variance_scaling(1.0, "fan_avg", "normal"),
        lambda fi, fo: 2.0 / (fi + fo),
    ),
    "xavier_uniform": (
        lambda: _variance_scaling(1.0, "fan_avg", "uniform"),
        lambda fi, fo: 2.0 / (fi + fo),
    ),
    "he_normal": (
        _he("normal"),
        lambda fi, fo, negative_slope=0.0: 2.0 / ((1 + negative_slope**2) * fi),
    ),
    "he_uniform": (
        _he("uniform"),
        lambda fi, fo, negative_slope=0.0: 2.0 / ((1 + negative_slope**2) * fi),
    ),
    "fan_in_uniform": (
        lambda: _variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        lambda fi, fo: 1.0 / (3.0 * fi),
    ),
    # Semi-orthogonal (fan_in, fan_out): unit-norm columns if fan_in >= fan_out, rows otherwise,
    # so E[W_ij^2] = gain^2 / max(fan_in, fan_out).
    "orthogonal": (_orthogonal, lambda fi, fo, gain=1.0: gain**2 / max(fi, fo)),
    # Deterministic: the mean square entry, gain^2 min(fi, fo) / (fi fo).
    "scaled_identity": (
        _scaled_identity,
        lambda fi, fo, gain=1.0: gain**2 * min(fi, fo) / (fi * fo),
    ),
    "zeros": (lambda: jax.nn.initializers.zeros, lambda fi, fo: 0.0),
    "constant": (_constant, lambda fi, fo, value=0.0: value**2),
}

_NONNEG_PARAMS = {"std", "scale", "gain", "negative_slope"}


def names() -> tuple[str, ...]:
    """Names of the registered initializers (aliases ``glorot_*``/``kaiming_*`` not included)."""
    return tuple(_REGISTRY)


def _resolve(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"initializer name must be a string, got {type(name).__name__}")
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        valid = ", ".join((*names(), *_ALIASES))
        raise ValueError(f"unknown initializer {name!r}; valid names: {valid}")
    return key


def _params(key: str, params: dict) -> dict[str, float]:
    factory = _REGISTRY[key][0]
    accepted = tuple(inspect.signature(factory).parameters)
    out = {}
    for p, value in params.items():
        if p not in accepted:
            raise TypeError(
                f"initializer {key!r} got an unexpected parameter {p!r}; "
                f"it accepts {accepted if accepted else 'no parameters'}"
            )
        if p in _NONNEG_PARAMS:
            out[p] = _nonneg(key, p, value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"initializer {key!r}: {p} must be a real number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ValueError(f"initializer {key!r}: {p} must be finite, got {value}")
            out[p] = float(value)
    return out


def get(name: str, **params: float) -> Initializer:
    """An initializer by name, with the :mod:`jax.nn.initializers` signature.

    Args:
      name: one of :func:`names` or an alias (``glorot_normal``, ``glorot_uniform``,
        ``kaiming_normal``, ``kaiming_uniform``).
      **params: ``std`` (normal, default 1), ``scale`` (scaled_normal: :math:`\\sigma_w^2`),
        ``negative_slope`` (he_*), ``gain`` (orthogonal, scaled_identity), ``value`` (constant).

    Returns:
      ``init(key, shape, dtype=jnp.float32) -> Array``.

    Raises:
      ValueError: unknown name (lists the valid ones), negative or non-finite std/scale/gain.
      TypeError: a parameter the initializer does not take.

    Example:
      >>> init = gf.initializers.get("he_normal")
      >>> w = init(jax.random.key(0), (256, 128))      # (fan_in, fan_out), as Flax Dense
      >>> round(float(256 * w.var()), 1)                # n_in Var(W) = 2 for He
      2.0
    """
    key = _resolve(name)
    kwargs = _params(key, params)
    inner = _REGISTRY[key][0](**kwargs)

    def init(rng, shape, dtype=jnp.float32):
        if key not in ("normal", "zeros", "constant"):
            _fans(tuple(shape))
        return inner(rng, tuple(shape), dtype)

    init.__name__ = key
    init.__qualname__ = f"gradflow.initializers.{key}"
    init.__doc__ = f"gradflow initializer {key!r} with {kwargs or 'default parameters'}."
    return init


def weight_variance(name: str, fan_in: int, fan_out: int, **params: float) -> float:
    """Theoretical :math:`E[W_{ij}^2]` of an initializer (its variance: every random one is
    zero-mean; for the deterministic ``scaled_identity``/``constant`` the mean square entry).

    ``weight_variance("xavier_normal", n_in, n_out) == 2 / (n_in + n_out)``,
    ``weight_variance("he_normal", n_in, n_out) == 2 / n_in``,
    ``weight_variance("fan_in_uniform", n, m) == 1 / (3 n)``.

    Example:
      >>> gf.initializers.weight_variance("xavier_normal", 30, 10)   # 2 / (30 + 10)
      0.05
      >>> gf.initializers.weight_variance("he_normal", 256, 128)     # 2 / 256
      0.0078125
    """
    key = _resolve(name)
    _check_fans(fan_in, fan_out)
    kwargs = _params(key, params)
    return float(_REGISTRY[key][1](int(fan_in), int(fan_out), **kwargs))
