r"""Any model as a pure function of its parameters: Flax linen, Flax NNX, Equinox or plain JAX.

gradflow measures a model through one interface, :math:`(\theta, x, s) \mapsto (f(\theta, x),
\text{aux})`, with :math:`\theta` the trainable parameters (a pytree), :math:`x` a batch and
:math:`s` everything else the call needs (BatchNorm statistics, dropout keys, NNX RNG streams).
:func:`as_model` builds it from what researchers already have:

=============================================  ==============================================
``as_model(module, variables)``                a :class:`flax.linen.Module` and its
                                               ``model.init`` variables; :math:`\theta` is
                                               ``variables["params"]``, the other collections
                                               are :math:`s`
``as_model(nnx_module)``                       a :class:`flax.nnx.Module`: :func:`flax.nnx.split`
                                               into its ``nnx.Param`` state (:math:`\theta`) and
                                               the rest; each call merges a fresh copy, so the
                                               module itself is never mutated
``as_model(eqx_module)``                       an Equinox module: :func:`equinox.partition` into
                                               its inexact arrays (:math:`\theta`) and the rest,
                                               applied per example with :func:`jax.vmap`
                                               (Equinox's convention)
``as_model(apply_fn, params)``                 any ``apply_fn(params, x) -> outputs`` and any
                                               pytree ``params`` (a dict, or an Equinox model
                                               split by ``eqx.partition`` with ``apply_fn``
                                               combining and vmapping it)
=============================================  ==============================================

``train`` selects the behaviour of BatchNorm and dropout: linen modules get ``train=`` when
their ``__call__`` takes it (BatchNorm then uses batch statistics, and ``mutable=["batch_stats"]``
discards the updated ones); NNX modules are switched with ``.train()`` / ``.eval()`` on the
merged copy. A plain function decides for itself.

The models a module of :mod:`gradflow.models` builds also declare their layer order
(``layer_names()``) and sow per-layer intermediates; :class:`Model` carries both.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gradflow import taps as _taps

__all__ = [
    "KINDS",
    "Model",
    "accepts_train",
    "as_model",
    "is_equinox_module",
    "is_nnx_module",
    "is_nnx_state",
]

#: What :func:`as_model` accepts.
KINDS: tuple[str, ...] = ("linen", "nnx", "equinox", "function")
_SKIP = ("params", "perturbations", "intermediates")


@dataclasses.dataclass(frozen=True)
class Model:
    """A model as a pure function (see the module docstring).

    Attributes:
      kind: one of :data:`KINDS`.
      apply: ``apply(params, x, state) -> (outputs, aux)``; pure and traceable. ``aux`` holds
        the ``"intermediates"`` a linen module sowed (``{}`` otherwise).
      params: the trainable parameters :math:`\\theta` (a pytree).
      state: everything else ``apply`` needs (a pytree, possibly empty).
      key: identifies ``apply`` for caching compiled programs (None: do not cache).
      paths: the name path of every leaf of ``params`` (:func:`gradflow.taps.leaf_paths`).
      layer_names: the layer order the model declares (``model.layer_names()``), or None.
      source: the object :func:`as_model` was given.
    """

    kind: str
    apply: Callable[..., tuple[chex.ArrayTree, chex.ArrayTree]]
    params: optax.Params
    state: chex.ArrayTree
    key: Hashable | None
    paths: tuple[tuple[str, ...], ...]
    layer_names: tuple[str, ...] | None = None
    source: Any = None

    def __call__(self, params: optax.Params, x: chex.ArrayTree) -> chex.ArrayTree:
        """The model's outputs for ``params`` and ``x`` (its own state)."""
        return self.apply(params, x, self.state)[0]


def is_nnx_module(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`flax.nnx.Module` (without importing NNX needlessly)."""
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax always ships nnx here
        return False
    return isinstance(obj, nnx.Module)


def is_equinox_module(obj: Any) -> bool:
    """Whether ``obj`` is an Equinox module (Equinox itself is optional)."""
    return any(
        c.__name__ == "Module" and c.__module__.startswith("equinox") for c in type(obj).__mro__
    )


def accepts_train(module: nn.Module) -> bool:
    """Whether a linen module's ``__call__`` takes a ``train`` argument."""
    try:
        return "train" in inspect.signature(type(module).__call__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


def _hashable(key: Any) -> Hashable | None:
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _check_params(owner: str, params: Any) -> None:
    leaves = jax.tree.leaves(params)
    if not any(hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.inexact) for v in leaves):
        raise ValueError(
            f"{owner}: params has no floating-point array (got {type(params).__name__} with "
            f"{len(leaves)} leaves); pass the model's trainable parameters"
        )


def _linen(module: nn.Module, variables: Any, train: bool, rngs: Any) -> Model:
    name = type(module).__name__
    if is_nnx_state(variables):
        raise TypeError(
            f"{name} is a flax.linen Module but variables is an NNX State: pass the variables "
            "from model.init (a dict with 'params')"
        )
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"{name}: variables must be the dict model.init returned (with 'params'), got "
            f"{type(variables).__name__}"
        )
    if "params" not in variables:
        raise ValueError(
            f"{name}: variables must contain 'params' (from model.init), got {sorted(variables)}"
        )
    takes_train = accepts_train(module)
    if train and not takes_train:
        raise TypeError(f"train=True but {name}.__call__ takes no 'train' argument")
    collections = {k: v for k, v in variables.items() if k not in _SKIP}
    mutable = ["intermediates"]
    if train and "batch_stats" in collections:
        mutable.append("batch_stats")
    kw = {"train": bool(train)} if takes_train else {}
    if rngs is not None and not isinstance(rngs, Mapping):
        rngs = {"dropout": rngs}
    for stream, k in (rngs or {}).items():
        if not (
            isinstance(k, jax.Array)
            and (
                jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key)
                or (k.dtype == jnp.uint32 and k.shape[-1:] == (2,))
            )
        ):
            raise TypeError(
                f"rngs[{stream!r}] must be a JAX key (jax.random.key or PRNGKey), got {k!r:.60}"
            )

    def apply(params, x, state):
        out, updates = module.apply(
            {"params": params, **state["collections"]},
            x,
            mutable=mutable,
            rngs=state["rngs"],
            **kw,
        )
        return out, updates.get("intermediates", {})

    order = getattr(module, "layer_names", None)
    return Model(
        kind="linen",
        apply=apply,
        params=variables["params"],
        state={"collections": collections, "rngs": rngs},
        key=_hashable(("linen", module, bool(train), rngs is None)),
        paths=_taps.leaf_paths(variables["params"]),
        layer_names=tuple(order()) if callable(order) else None,
        source=module,
    )


def is_nnx_state(obj: Any) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, nnx.State)


def _nnx(module: Any, variables: Any, train: bool) -> Model:
    from flax import nnx

    name = type(module).__name__
    if variables is not None:
        raise TypeError(
            f"{name} is a flax.nnx.Module, which carries its own state: pass variables=None, "
            f"got {type(variables).__name__}"
        )
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def apply(params, x, state):
        m = nnx.merge(graphdef, params, state, copy=True)
        if train:
            m.train()
        else:
            m.eval()
        return m(x), {}

    return Model(
        kind="nnx",
        apply=apply,
        params=params,
        state=rest,
        key=_hashable(("nnx", graphdef, bool(train))),
        paths=_taps.leaf_paths(params),
        source=module,
    )


def _equinox(module: Any, variables: Any) -> Model:
    import equinox as eqx

    name = type(module).__name__
    if variables is not None:
        raise TypeError(
            f"{name} is an Equinox module, which holds its own parameters: pass variables=None "
            "(or pass apply_fn, params from eqx.partition)"
        )
    params, static = eqx.partition(module, eqx.is_inexact_array)

    def apply(params, x, state):
        del state
        return jax.vmap(eqx.combine(params, static))(x), {}

    static_leaves = tuple(jax.tree.leaves(static))
    return Model(
        kind="equinox",
        apply=apply,
        params=params,
        state=(),
        key=_hashable(
            ("equinox", jax.tree.structure(params), jax.tree.structure(static), static_leaves)
        ),
        paths=_taps.leaf_paths(params),
        source=module,
    )


def _function(fn: Callable, params: Any) -> Model:
    _check_params(getattr(fn, "__name__", "apply_fn"), params)

    def apply(params, x, state):
        del state
        return fn(params, x), {}

    return Model(
        kind="function",
        apply=apply,
        params=params,
        state=(),
        key=_hashable(("function", fn)),
        paths=_taps.leaf_paths(params),
        source=fn,
    )


def as_model(
    model: Any,
    variables: chex.ArrayTree | None = None,
    *,
    train: bool = False,
    rngs: jax.Array | Mapping[str, jax.Array] | None = None,
) -> Model:
    """A :class:`Model` from a linen module and its variables, an NNX or Equinox module, or an
    ``apply_fn(params, x)`` and its ``params`` (see the module docstring).

    Args:
      model: a :class:`flax.linen.Module`, a :class:`flax.nnx.Module`, an Equinox module, a
        callable ``apply_fn(params, x)``, or a :class:`Model` (returned as it is).
      variables: the linen variables (``model.init``), None for NNX and Equinox modules, the
        ``params`` pytree for a callable.
      train: training-mode behaviour (BatchNorm batch statistics, dropout); see the module
        docstring.
      rngs: linen only: keys for ``apply`` (e.g. ``{"dropout": key}``; a bare key means
        ``{"dropout": key}``), needed when ``train=True`` enables dropout.

    Raises:
      TypeError: for an object of none of these kinds, or variables of the wrong kind for the
        model (e.g. NNX state for a linen module).
    """
    if isinstance(train, (jax.Array,)) or not isinstance(train, bool):
        raise TypeError(f"train must be a bool, got {train!r}")
    if isinstance(model, Model):
        if variables is not None:
            raise TypeError("a gradflow.adapters.Model carries its parameters: pass variables=None")
        return model
    if isinstance(model, nn.Module):
        return _linen(model, variables, train, rngs)
    if rngs is not None:
        raise TypeError("rngs is for flax.linen modules; NNX modules carry their own nnx.Rngs")
    if is_nnx_module(model):
        return _nnx(model, variables, train)
    if is_equinox_module(model) and variables is None:
        if train:
            raise TypeError(
                "train=True: an Equinox module decides its own mode (eqx.nn.inference_mode)"
            )
        return _equinox(model, variables)
    if callable(model):
        if train:
            raise TypeError(
                "train=True applies to Flax modules; a plain apply_fn decides its own mode"
            )
        if variables is None:
            raise ValueError(
                "a plain apply_fn needs its params: call with (apply_fn, params, x, y)"
            )
        return _function(model, variables)
    raise TypeError(
        f"model must be a flax.linen Module (with its variables), a flax.nnx Module, an Equinox "
        f"module or a callable apply_fn(params, x), got {type(model).__name__}"
    )
