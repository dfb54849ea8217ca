r"""Activation registry: :math:`\phi`, its closed-form derivatives, and :math:`\sup_x|\phi'(x)|`.

Why a registry with *closed-form* derivatives? The vanishing-gradient argument of the seed notes
(Nielsen, *Neural Networks and Deep Learning*, ch. 5) is a statement about :math:`\phi'`:

.. math::

    \frac{\partial C}{\partial b_1} = \phi'(z_1)\, w_2 \phi'(z_2) \cdots w_L \phi'(z_L)
    \frac{\partial C}{\partial a_L},

so every bound gradflow proves needs :math:`\phi'` written out (not autodiff, which is what we
check it against) and :math:`\sup_x |\phi'(x)|`: the sigmoid's :math:`1/4` makes the product shrink
like :math:`(1/4)^L`; tanh's :math:`1` makes it depend on the weights alone.

Usage::

    act = gf.activations.get("sigmoid")
    act.sup_grad          # 0.25
    act.argsup            # 0.0
    act.grad(z)           # sigma(z) (1 - sigma(z)), closed form
    gf.activations.get("leaky_relu", negative_slope=0.2)
    gf.activations.names()

Every :class:`Activation` is a frozen, hashable dataclass (equal when name and parameters are
equal), so it can be passed as a static argument to :func:`jax.jit`. ``argsup`` is a point where the
supremum is attained, or ``None`` where it is only approached (softplus as :math:`x\to\infty`, SELU
and ELU with :math:`\alpha > 1` as :math:`x \to 0^-`). ``kinks`` lists the points where
:math:`\phi'` jumps or :math:`\phi''` does not exist (Gaussian quadrature in
:mod:`gradflow.meanfield` splits its integrals there).

References: Nielsen ch. 5 (sigmoid); Glorot & Bengio 2010 (tanh, saturation); He et al. 2015
(ReLU, leaky ReLU); Clevert et al. 2016 (ELU); Klambauer et al. 2017 (SELU); Hendrycks & Gimpel
2016 (GELU, SiLU).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "BUILTIN",
    "SELU_ALPHA",
    "SELU_LAMBDA",
    "Activation",
    "get",
    "names",
    "register",
    "unregister",
]

Array = jax.Array
ArrayFn = Callable[[Array], Array]  # called with arrays (the builtins accept any ArrayLike)

#: SELU's scale :math:`\lambda` (Klambauer et al. 2017, https://arxiv.org/abs/1706.02515): with
#: :data:`SELU_ALPHA` it makes mean 0, variance 1 the fixed point of the layer-to-layer map.
SELU_LAMBDA = 1.0507009873554805
#: SELU's negative-side saturation :math:`\alpha` (Klambauer et al. 2017), with :data:`SELU_LAMBDA`.
SELU_ALPHA = 1.6732632423543772


@dataclasses.dataclass(frozen=True)
class Activation:
    r"""An activation :math:`\phi` with closed-form :math:`\phi'`, :math:`\phi''` and
    :math:`\sup|\phi'|`.

    Attributes:
      name: registry name, e.g. ``"sigmoid"``.
      fn: :math:`\phi`, elementwise, any shape, floating dtypes preserved.
      grad: :math:`\phi'` written in closed form (no autodiff). At a kink the right-hand
        convention of :mod:`jax.nn` is not assumed: the value at the kink is documented per
        activation (relu: 0, leaky_relu: ``negative_slope``, elu: ``alpha``).
      grad2: :math:`\phi''` in closed form away from ``kinks``.
      sup_grad: :math:`\sup_x |\phi'(x)|`.
      argsup: a point where the supremum is attained, or ``None`` if it is only approached.
      kinks: points where :math:`\phi'` jumps or :math:`\phi''` does not exist.
      params: the activation's parameters as sorted ``(name, value)`` pairs (hashable); see
        :attr:`kwargs` for a dict.
    """

    name: str
    fn: ArrayFn = dataclasses.field(compare=False, repr=False)
    grad: ArrayFn = dataclasses.field(compare=False, repr=False)
    grad2: ArrayFn = dataclasses.field(compare=False, repr=False)
    sup_grad: float = dataclasses.field(compare=False)
    argsup: float | None = dataclasses.field(compare=False)
    kinks: tuple[float, ...] = dataclasses.field(default=(), compare=False)
    params: tuple[tuple[str, float], ...] = ()

    def __call__(self, x: ArrayLike) -> Array:
        return self.fn(x)

    @property
    def kwargs(self) -> dict[str, float]:
        """The parameters as a dict, e.g. ``{"negative_slope": 0.01}``."""
        return dict(self.params)


class StaticActivation:
    """An :class:`Activation` as a :func:`jax.jit` static argument, keyed also on its functions.

    ``Activation`` equality compares name and parameters only, so an activation re-registered
    under the same name (``register(..., overwrite=True)``) would otherwise hit a stale compiled
    function. Internal: the jitted functions of :mod:`gradflow.analytic` and
    :mod:`gradflow.meanfield` take it (``.act`` is the activation).
    """

    __slots__ = ("act",)

    def __init__(self, act: Activation):
        self.act = act

    def __hash__(self) -> int:
        return hash((self.act, id(self.act.fn), id(self.act.grad), id(self.act.grad2)))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, StaticActivation)
            and self.act == other.act
            and self.act.fn is other.act.fn
            and self.act.grad is other.act.grad
            and self.act.grad2 is other.act.grad2
        )


def _float(x: ArrayLike) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _ones_like(x: Array) -> Array:
    return jnp.ones_like(x)


def _std_normal_pdf(x: Array) -> Array:
    return jnp.exp(-0.5 * x * x) / jnp.sqrt(2.0 * jnp.pi).astype(x.dtype)


def _std_normal_cdf(x: Array) -> Array:
    return 0.5 * jax.scipy.special.erfc(-x / jnp.sqrt(2.0).astype(x.dtype))


# --- the built-in activations -----------------------------------------------------------------


def _linear() -> Activation:
    return Activation(
        name="linear",
        fn=lambda x: _float(x),
        grad=lambda x: _ones_like(_float(x)),
        grad2=lambda x: jnp.zeros_like(_float(x)),
        sup_grad=1.0,
        argsup=0.0,
    )


def _sigmoid() -> Activation:
    def grad(x):
        s = jax.nn.sigmoid(_float(x))
        return s * (1 - s)

    def grad2(x):
        s = jax.nn.sigmoid(_float(x))
        return s * (1 - s) * (1 - 2 * s)

    return Activation(
        name="sigmoid",
        fn=lambda x: jax.nn.sigmoid(_float(x)),
        grad=grad,
        grad2=grad2,
        sup_grad=0.25,
        argsup=0.0,
    )


def _tanh() -> Activation:
    # (1 - t)(1 + t) rather than 1 - t^2: full relative precision where tanh saturates.
    def grad(x):
        t = jnp.tanh(_float(x))
        return (1 - t) * (1 + t)

    def grad2(x):
        t = jnp.tanh(_float(x))
        return -2 * t * (1 - t) * (1 + t)

    return Activation(
        name="tanh",
        fn=lambda x: jnp.tanh(_float(x)),
        grad=grad,
        grad2=grad2,
        sup_grad=1.0,
        argsup=0.0,
    )


def _relu() -> Activation:
    def grad(x):
        x = _float(x)
        return (x > 0).astype(x.dtype)

    return Activation(
        name="relu",
        fn=lambda x: jnp.maximum(_float(x), 0),
        grad=grad,
        grad2=lambda x: jnp.zeros_like(_float(x)),
        sup_grad=1.0,
        argsup=1.0,
        kinks=(0.0,),
    )


def _leaky_relu(negative_slope: float = 0.01) -> Activation:
    a = negative_slope

    def fn(x):
        x = _float(x)
        return jnp.where(x > 0, x, a * x)

    def grad(x):
        x = _float(x)
        return jnp.where(x > 0, 1.0, a).astype(x.dtype)

    return Activation(
        name="leaky_relu",
        fn=fn,
        grad=grad,
        grad2=lambda x: jnp.zeros_like(_float(x)),
        sup_grad=max(1.0, abs(a)),
        argsup=1.0 if abs(a) <= 1 else -1.0,
        kinks=(0.0,),
        params=(("negative_slope", a),),
    )


@jax.custom_jvp
def _expm1(x):
    """expm1 with derivative exp(x) (JAX uses expm1(x) + 1: 0 below ~-17 in float32)."""
    return jnp.expm1(x)


@_expm1.defjvp
def _expm1_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return jnp.expm1(x), jnp.exp(x) * dx


def _elu_family(name: str, alpha: float, scale: float, params) -> Activation:
    def fn(x):
        x = _float(x)
        return scale * jnp.where(x > 0, x, alpha * _expm1(jnp.minimum(x, 0)))

    def grad(x):
        x = _float(x)
        return scale * jnp.where(x > 0, 1.0, alpha * jnp.exp(jnp.minimum(x, 0))).astype(x.dtype)

    def grad2(x):
        x = _float(x)
        return scale * jnp.where(x > 0, 0.0, alpha * jnp.exp(jnp.minimum(x, 0))).astype(x.dtype)

    # phi'(x) = scale for x > 0, scale alpha e^x for x <= 0 (rising to scale alpha at 0-).
    if alpha > 1:
        # approached as x -> 0-, never attained by the derivative (grad's value at the kink 0,
        # the left limit scale * alpha, is a convention: phi is not differentiable there)
        sup, argsup = scale * alpha, None
    else:
        sup, argsup = scale, 1.0
    return Activation(
        name=name,
        fn=fn,
        grad=grad,
        grad2=grad2,
        sup_grad=sup,
        argsup=argsup,
        kinks=(0.0,),
        params=params,
    )


def _elu(alpha: float = 1.0) -> Activation:
    return _elu_family("elu", alpha, 1.0, (("alpha", alpha),))


def _selu() -> Activation:
    return _elu_family("selu", SELU_ALPHA, SELU_LAMBDA, ())


def _gelu() -> Activation:
    # Exact GELU, x Phi(x) (Hendrycks & Gimpel 2016): phi' = Phi + x pdf, phi'' = pdf (2 - x^2).
    # phi'' = 0 at x = sqrt(2), where phi' = Phi(sqrt 2) + sqrt(2) pdf(sqrt 2) ~ 1.1289.
    def fn(x):
        x = _float(x)
        return x * _std_normal_cdf(x)

    def grad(x):
        x = _float(x)
        return _std_normal_cdf(x) + x * _std_normal_pdf(x)

    def grad2(x):
        x = _float(x)
        return _std_normal_pdf(x) * (2 - x * x)

    r2 = math.sqrt(2.0)
    sup = 0.5 * math.erfc(-r2 / math.sqrt(2.0)) + r2 * math.exp(-1.0) / math.sqrt(2 * math.pi)
    return Activation(name="gelu", fn=fn, grad=grad, grad2=grad2, sup_grad=sup, argsup=r2)


def _silu_argsup() -> float:
    # phi''(x) = s(1-s)(2 + x(1-2s)) = 0  <=>  2 + x(1 - 2 s(x)) = 0; Newton in float64 from 2.4.
    def h(x):
        s = 1 / (1 + np.exp(-x))
        return 2 + x * (1 - 2 * s)

    x = 2.4
    for _ in range(50):
        eps = 1e-7
        x -= h(x) / ((h(x + eps) - h(x - eps)) / (2 * eps))
    return float(x)


def _silu() -> Activation:
    # SiLU / swish, x sigma(x): phi' = s (1 + x (1 - s)), phi'' = s (1 - s) (2 + x (1 - 2 s)).
    def fn(x):
        x = _float(x)
        return x * jax.nn.sigmoid(x)

    def grad(x):
        x = _float(x)
        s = jax.nn.sigmoid(x)
        return s * (1 + x * (1 - s))

    def grad2(x):
        x = _float(x)
        s = jax.nn.sigmoid(x)
        return s * (1 - s) * (2 + x * (1 - 2 * s))

    x0 = _silu_argsup()
    s0 = 1 / (1 + math.exp(-x0))
    return Activation(
        name="silu", fn=fn, grad=grad, grad2=grad2, sup_grad=s0 * (1 + x0 * (1 - s0)), argsup=x0
    )


def _softplus() -> Activation:
    def grad2(x):
        s = jax.nn.sigmoid(_float(x))
        return s * (1 - s)

    return Activation(
        name="softplus",
        fn=lambda x: jax.nn.softplus(_float(x)),
        grad=lambda x: jax.nn.sigmoid(_float(x)),
        grad2=grad2,
        sup_grad=1.0,
        argsup=None,  # sigma(x) -> 1 as x -> infinity
    )


# --- registry ---------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[..., Activation]] = {
    "linear": _linear,
    "sigmoid": _sigmoid,
    "tanh": _tanh,
    "relu": _relu,
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "selu": _selu,
    "gelu": _gelu,
    "silu": _silu,
    "softplus": _softplus,
}
_ALIASES = {"swish": "silu", "identity": "linear"}


BUILTIN: tuple[str, ...] = tuple(_FACTORIES)
"""The activations gradflow ships (the experiments and the paper use exactly these)."""


def names(*, builtin_only: bool = False) -> tuple[str, ...]:
    """Names of the registered activations (aliases such as ``"swish"`` not included).

    With ``builtin_only=True`` the activations added by :func:`register` are left out, so code
    that must not depend on what a user registered (the experiments, the paper) sees a fixed set.
    """
    if not isinstance(builtin_only, bool):
        raise TypeError(f"builtin_only must be True or False, got {builtin_only!r}")
    return BUILTIN if builtin_only else tuple(_FACTORIES)


def _check_params(name: str, factory: Callable[..., Activation], params: dict) -> None:
    import inspect

    accepted = tuple(inspect.signature(factory).parameters)
    for key, value in params.items():
        if key not in accepted:
            raise TypeError(
                f"activation {name!r} got an unexpected parameter {key!r}; "
                f"it accepts {accepted if accepted else 'no parameters'}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(
                f"activation {name!r} parameter {key!r} must be a real number, got {value!r}"
            )
        if not math.isfinite(float(value)):
            raise ValueError(f"activation {name!r} parameter {key!r} must be finite, got {value}")
    if name == "elu" and float(params.get("alpha", 1.0)) < 0:
        raise ValueError(f"elu alpha must be >= 0, got {params['alpha']}")


@functools.cache
def _cached(name: str, params: tuple[tuple[str, float], ...]) -> Activation:
    return _FACTORIES[name](**dict(params))


def get(name: str | Activation, **params: float) -> Activation:
    """Look up an activation by name (or pass an :class:`Activation` through unchanged).

    Args:
      name: one of :func:`names` (or the aliases ``"swish"``, ``"identity"``), or an
        :class:`Activation`.
      **params: the activation's parameters: ``negative_slope`` for ``leaky_relu`` (default 0.01),
        ``alpha`` for ``elu`` (default 1.0).

    Returns:
      The :class:`Activation`; the same object for the same name and parameters.

    Raises:
      ValueError: unknown name (the message lists the valid names) or non-finite parameter.
      TypeError: a parameter the activation does not take.

    Example:
      >>> act = gf.activations.get("sigmoid")
      >>> act.sup_grad, act.argsup           # sup |sigmoid'| = 1/4, at z = 0
      (0.25, 0.0)
      >>> float(act.grad(0.0))
      0.25
    """
    if isinstance(name, Activation):
        if params:
            raise TypeError(f"parameters {params} given with an Activation instance {name.name!r}")
        return name
    if not isinstance(name, str):
        raise TypeError(
            "activation must be a name from gradflow.activations.names() or an Activation, "
            f"got {type(name).__name__}"
        )
    key = _ALIASES.get(name, name)
    if key not in _FACTORIES:
        raise ValueError(f"unknown activation {name!r}; valid names: {', '.join(names())}")
    _check_params(key, _FACTORIES[key], params)
    return _cached(key, tuple(sorted((k, float(v)) for k, v in params.items())))


def register(
    name: str,
    fn: ArrayFn,
    grad: ArrayFn,
    *,
    sup_grad: float,
    argsup: float | None,
    grad2: ArrayFn | None = None,
    kinks: tuple[float, ...] = (),
    overwrite: bool = False,
) -> Activation:
    """Register a user activation so every gradflow function (analytic, meanfield, models) takes it.

    ``grad`` must be the closed-form derivative; ``grad2`` defaults to autodiff of ``grad``
    (elementwise) when not given. Registering an existing name raises unless ``overwrite=True``.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    if (name in _FACTORIES or name in _ALIASES) and not overwrite:
        raise ValueError(f"activation {name!r} is already registered; pass overwrite=True")
    for label, f in (("fn", fn), ("grad", grad), ("grad2", grad2)):
        if not callable(f) and not (label == "grad2" and f is None):
            raise TypeError(f"{label} must be a callable x -> array, got {f!r}")
    if isinstance(sup_grad, bool) or not isinstance(sup_grad, numbers.Real):
        raise TypeError(f"sup_grad must be a real number, got {sup_grad!r}")
    if not (math.isfinite(sup_grad) and sup_grad >= 0):
        raise ValueError(f"sup_grad must be finite and >= 0, got {sup_grad}")
    real = isinstance(argsup, numbers.Real) and not isinstance(argsup, bool)
    if argsup is not None and not (real and math.isfinite(argsup)):
        raise TypeError(f"argsup must be a finite real number or None, got {argsup!r}")
    kinks = tuple(kinks) if isinstance(kinks, list | tuple) else kinks
    if not isinstance(kinks, tuple) or not all(
        isinstance(k, numbers.Real) and not isinstance(k, bool) and math.isfinite(k) for k in kinks
    ):
        raise TypeError(f"kinks must be a tuple of finite real numbers, got {kinks!r}")
    if grad2 is None:
        grad2 = jnp.vectorize(jax.grad(lambda x: grad(x)))

    act = Activation(
        name=name,
        fn=fn,
        grad=grad,
        grad2=grad2,
        sup_grad=float(sup_grad),
        argsup=argsup,
        kinks=tuple(kinks),
    )
    _FACTORIES[name] = lambda: act
    _cached.cache_clear()
    return act


def unregister(name: str) -> None:
    """Remove an activation added by :func:`register` (the built-in ones cannot be removed)."""
    if name in BUILTIN:
        raise ValueError(f"activation {name!r} is built in and cannot be unregistered")
    if name not in _FACTORIES:
        user = [n for n in _FACTORIES if n not in BUILTIN]
        raise ValueError(
            f"activation {name!r} is not registered; registered by the user: "
            f"{', '.join(user) or 'none'}"
        )
    del _FACTORIES[name]
    _cached.cache_clear()
