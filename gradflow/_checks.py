"""Shared argument checks: bad input fails early with a ValueError or TypeError naming the
argument, the bad value and what is expected, instead of a traceback from deep inside JAX.

Value checks (finiteness, ranges) run only on concrete values: under ``jit``/``vmap`` a traced
value cannot raise, so it passes through (each public function documents this).

The checked values are annotated ``Any``: a check takes whatever the caller was given (None, a
string, an object) and turns what does not fit into the error.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "array",
    "boolean",
    "concrete",
    "correlation",
    "float_dtype",
    "function",
    "nonneg",
    "path",
    "positive",
    "prng_key",
    "real",
    "real_host",
    "show",
    "size",
    "values",
]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def show(value: Any) -> str:
    """``repr(value)`` cut to 60 characters, for error messages."""
    return _show(value)


def concrete(value: ArrayLike) -> np.ndarray | None:
    """``value`` on the host, or None when it is traced."""
    try:
        return np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def real_host(name: str, value: Any) -> np.ndarray | None:
    """``value`` (a real number or array) on the host as float64, or None when it is traced;
    TypeError naming ``name`` for anything else (None, strings, objects, bools, complex)."""
    if isinstance(value, jax.core.Tracer):
        return None
    if value is None or isinstance(value, str | bytes):
        raise TypeError(f"{name} must be a real number or array, got {_show(value)}")
    try:
        host = np.asarray(value)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a real number or array, got {_show(value)}") from e
    if host.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must be a real number or array, got {_show(value)} (dtype {host.dtype})"
        )
    return host.astype(np.float64)


def values(name: str, value: Any, ok: Callable[[np.ndarray], ArrayLike], requirement: str) -> None:
    """ValueError ``"{name} {requirement}, got {the first bad element}"`` when ``ok(host)`` (an
    elementwise predicate on the float64 host array) fails anywhere; TypeError for non-numbers
    (:func:`real_host`); traced values pass unchecked."""
    host = real_host(name, value)
    if host is None:
        return
    bad = ~np.asarray(ok(host), dtype=bool)
    if bad.any():
        first = float(host[bad].flat[0] if host.ndim else host)
        raise ValueError(f"{name} {requirement}, got {first!r}")


def _meaning(meaning: str | None) -> str:
    return f"({meaning}) " if meaning else ""


def nonneg(name: str, value: Any, meaning: str | None = None) -> None:
    """Every element finite and ``>= 0`` (variances), else ValueError; see :func:`values`."""
    values(
        name,
        value,
        lambda h: np.isfinite(h) & (h >= 0),
        _meaning(meaning) + "must be finite and >= 0",
    )


def positive(name: str, value: Any, meaning: str | None = None) -> None:
    """Every element finite and ``> 0``, else ValueError; see :func:`values`."""
    values(
        name,
        value,
        lambda h: np.isfinite(h) & (h > 0),
        _meaning(meaning) + "must be finite and > 0",
    )


def correlation(name: str, value: Any) -> None:
    """Every element in ``[-1, 1]``, else ValueError; see :func:`values`."""
    values(name, value, lambda h: np.abs(h) <= 1, "(a correlation) must lie in [-1, 1]")


def array(
    name: str,
    value: Any,
    *,
    finite: bool = True,
    nonempty: bool = True,
    ndim: int | tuple[int, ...] | None = None,
    min_ndim: int = 0,
) -> jax.Array:
    """``value`` as a real numeric JAX array, or TypeError/ValueError naming ``name``.

    Refused: ``None``, strings, objects and mixed lists (not numbers), complex and non-numeric
    dtypes, and, when concrete, NaN/inf (``finite``), no elements (``nonempty``), another
    number of dimensions (``ndim``: one or several allowed; ``min_ndim``).
    """
    if value is None or isinstance(value, str | bytes):
        raise TypeError(f"{name} must be a real number or array, got {_show(value)}")
    if isinstance(value, jax.Array):
        arr = value
    else:
        try:
            host = np.asarray(value)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a real number or array, got {_show(value)}") from e
        if host.dtype == object or host.dtype.kind not in "biuf":
            raise TypeError(
                f"{name} must be a real number or array, got {_show(value)} (dtype {host.dtype})"
            )
        arr = jnp.asarray(host)
    if arr.dtype == jnp.bool_ or not jnp.issubdtype(arr.dtype, jnp.number):
        raise TypeError(f"{name} must be a real number or array, got dtype {arr.dtype}")
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(d) for d in allowed)
            raise ValueError(f"{name} must have {want} dimension(s), got shape {arr.shape}")
    if arr.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got {arr.shape}")
    if nonempty and arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); give at least one element")
    if finite:
        host = concrete(arr)
        if host is not None and host.dtype.kind == "f" and not np.isfinite(host).all():
            bad = np.argwhere(~np.isfinite(host))
            first = host[tuple(bad[0])] if host.ndim else host
            raise ValueError(
                f"{name} must be finite; got {len(bad)} non-finite value(s), the first {first}"
                + (f" at index {tuple(int(i) for i in bad[0])}" if host.ndim else "")
            )
    return arr


def boolean(name: str, value: Any) -> bool:
    """``value`` as a bool (``True``/``False`` or a NumPy bool), or TypeError naming ``name``."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {_show(value)}")


def size(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum``: TypeError for non-integers (bools included),
    ValueError below the minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {_show(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def path(name: str, value: Any) -> Path:
    """``value`` (a ``str`` or ``os.PathLike``) as a :class:`~pathlib.Path`, or TypeError."""
    if isinstance(value, str | os.PathLike) and str(value):
        return Path(value)
    raise TypeError(f"{name} must be a path (str or os.PathLike), got {_show(value)}")


def real(
    name: str, value: Any, *, positive: bool = False, nonneg: bool = False, finite: bool = True
) -> float:
    """``value`` as a Python float: TypeError for non-numbers (bools included), ValueError for
    NaN/inf (``finite``) and for values <= 0 (``positive``) or < 0 (``nonneg``)."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_show(value)}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonneg and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def function(name: str, value: Any) -> Callable[..., Any]:
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {_show(value)}")
    return value


def prng_key(name: str, value: Any) -> jax.Array:
    """A JAX PRNG key: a typed key (``jax.random.key``) or raw ``uint32`` key data whose last
    axis has the default implementation's length (``jax.random.PRNGKey``)."""
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        return value
    if isinstance(value, jax.Array | np.ndarray) and value.dtype == np.uint32:
        width = jax.random.key_data(jax.random.key(0)).shape[-1]
        if value.ndim >= 1 and value.shape[-1] == width:
            return value
    raise TypeError(
        f"{name} must be a PRNG key, e.g. jax.random.key(0), got {_show(value)}"
        + (f" of dtype {value.dtype}" if hasattr(value, "dtype") else "")
    )


def float_dtype(name: str, value: Any) -> jnp.dtype | None:
    """``value`` (``None`` allowed) as a floating dtype, or TypeError/ValueError naming it."""
    if value is None:
        return None
    try:
        dtype = jnp.dtype(value)
    except TypeError:
        raise TypeError(
            f"{name} must be a floating dtype such as float32, got {_show(value)}"
        ) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating dtype such as float32, got {dtype}")
    return dtype
