r"""Optax transforms against exploding gradients: clipping with telemetry, weight decay, monitors.

Every factory returns an :class:`optax.GradientTransformation` (a pair of pure ``init``/``update``
functions whose state is a ``NamedTuple``), so they compose with :func:`optax.chain`, run under
``jax.jit``/``jax.vmap``/``lax.scan`` and nest inside :func:`optax.masked`,
:func:`optax.apply_if_finite` and :func:`optax.inject_hyperparams`. Where optax already has the
piece (element-wise and global-norm clipping, unit-wise norms, decayed weights, masking) it is
reused; this module adds what optax lacks:

* per-layer clipping (:func:`clip_by_layer_norm`);
* a rule for non-finite gradients: every clipping transform here replaces the update of a layer
  holding a NaN or an infinity by zeros (:func:`clip_by_global_norm`: the whole update, since its
  one norm is then non-finite) and counts those updates in its state (``nonfinite_count``), where
  optax's clipping would turn one ``inf`` into NaN updates for every parameter;
* telemetry: every clipping transform here records, in its state, the pre-clip global norm, the
  per-layer norms and which layers were clipped; :func:`telemetry` collects them from a whole chain;
* adaptive gradient clipping that leaves the readout layer alone (:func:`adaptive_grad_clip`);
* L1 decay (:func:`add_l1_decay`), and coupled vs decoupled L2 decay as two placements of the same
  piece (:func:`coupled_l2`, :func:`decoupled_l2`), with a default :func:`decay_mask`;
* a gradient-statistics monitor, identity on the updates (:func:`monitor_grad_stats`);
* an optimizer factory by name (:func:`make_optimizer`).

**Layers.** A *layer* is a group of leaves of the parameter pytree, and the per-layer arrays here
(norms, clipped flags) list the layers in *forward order*. Say which with ``layers=``:

* ``layers=gf.optim.layer_order(model, variables, x)`` -- the layers the forward pass runs, in the
  order it runs them, found on the traced program by :mod:`gradflow.taps` (the same rows as
  :func:`gradflow.probes.probe`): a Flax linen, NNX or Equinox model or a plain ``apply_fn``.
  A weight with its bias (or a norm's scale with its shift) is one layer; the layers of a stack
  scanned over stacked parameters share their leaves and form one group; parameters no layer
  uses on the data (positional embeddings, class tokens) form groups of their own, first. It
  also gives :func:`adaptive_grad_clip` each weight's fan-in axes;
* ``layers=["embed", "block_0", ..., "head"]`` -- the forward order by hand: a leaf belongs to
  the longest listed name that is a prefix of its path (``"block_0/attn/query/kernel"`` is in
  ``"block_0"``); every leaf must belong to one;
* ``layers=k`` (an int) groups by the first ``k`` path keys, joined by ``"/"``; ``layers=fn``
  maps a leaf's path (a tuple of key strings) to its layer name; these two, and the default,
  order the layers by the natural sort of their names (digit runs compare as integers, so
  ``dense_2 < dense_10``), a layer named ``"readout"`` last;
* the default (``layers=None``) groups by the top-level key (one level deeper under a
  top-level sequence: an Equinox ``layers[i]``, an NNX ``nnx.List``). The natural sort is the
  forward order of gradflow.models (``dense_0`` ... ``dense_{L-1}``, ``rnn``/``readout``) and
  of Flax's automatic names of one module type (``Dense_0``, ``Dense_1``, ...), but not of
  arbitrary names (``Conv_0, BatchNorm_0, Dense_0`` sorts BatchNorm first). The order only
  labels the per-layer telemetry (:func:`layer_names` gives the labels) -- except for
  :func:`adaptive_grad_clip` with ``unclipped="last"``, which refuses to guess the readout when
  the names are not one such family.

Paths name dict keys, attributes and sequence indices; an NNX Variable's ``.value`` is dropped.

Hyperparameters (thresholds, decays, learning rates) may be traced values, so a sweep can
``jax.vmap`` over them; they are validated only when concrete. Under
:func:`optax.inject_hyperparams`, pass an integer ``layers`` through ``static_args=("layers",)``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike, DTypeLike

from gradflow import _checks
from gradflow import taps as _taps

__all__ = [
    "AdaptiveGradClipState",
    "ClipByGlobalNormState",
    "ClipByLayerNormState",
    "ClipByValueState",
    "GradStatsState",
    "LayerOrder",
    "adaptive_grad_clip",
    "add_l1_decay",
    "add_l2_decay",
    "clip_by_global_norm",
    "clip_by_layer_norm",
    "clip_by_value",
    "coupled_l2",
    "decay_mask",
    "decoupled_l2",
    "direction",
    "layer_names",
    "layer_norms",
    "layer_order",
    "make_optimizer",
    "monitor_grad_stats",
    "optimizer_names",
    "telemetry",
]


class LayerOrder(NamedTuple):
    """The layers of a model in forward order, from :func:`layer_order` (pass as ``layers=``).

    Attributes:
      names: layer names, forward order (the readout last).
      groups: the layer name of every parameter leaf, by its path (a tuple of names).
      fan_in: the fan-in (contracted) axes of every weight leaf the layers use directly, by
        path: the reduction axes of a unit-wise norm (one norm per output unit).
    """

    names: tuple[str, ...]
    groups: Mapping[tuple[str, ...], str]
    fan_in: Mapping[tuple[str, ...], tuple[int, ...]]


LayerSpec = int | Callable[[tuple[str, ...]], str] | Sequence[str] | LayerOrder | None
#: A layer of this name is the readout: last in forward order whatever the other names.
READOUT = "readout"
_NO_PARAMS_MSG = "{name} needs the parameters: call tx.update(updates, state, params) with params."


# --------------------------------------------------------------------------------------------------
# validation (concrete values only, so traced hyperparameters pass through vmap/jit)
# --------------------------------------------------------------------------------------------------


def _check_positive(name: str, value: Any) -> None:
    """Threshold-like: > 0 (inf allowed: it means "never clip"), not NaN; schedules pass."""
    if not callable(value):
        _checks.values(name, value, lambda h: h > 0, "must be positive (> 0; inf disables it)")


def _check_nonnegative(name: str, value: Any) -> None:
    """Decay-like: finite and >= 0; schedules pass."""
    if not callable(value):
        _checks.values(
            name, value, lambda h: np.isfinite(h) & (h >= 0), "must be a finite number >= 0"
        )


def _check_unit_interval(name: str, value: Any) -> None:
    """Averaging constants: in [0, 1); schedules pass."""
    if not callable(value):
        _checks.values(name, value, lambda h: (h >= 0) & (h < 1), "must lie in [0, 1)")


def _check_learning_rate(value: Any) -> None:
    """Finite and > 0, or an optax schedule (step -> learning rate)."""
    if not callable(value):
        _checks.values(
            "learning_rate",
            value,
            lambda h: np.isfinite(h) & (h > 0),
            "must be a finite number > 0 or an optax schedule",
        )


def _check_layers(layers: LayerSpec) -> None:
    if layers is None or callable(layers) or isinstance(layers, LayerOrder):
        return
    if isinstance(layers, Sequence) and not isinstance(layers, str):
        bad = [n for n in layers if not isinstance(n, str)]
        if bad or not layers:
            raise TypeError(
                f"layers as a sequence must list layer names (non-empty strings), got {layers!r}"
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers lists a name twice: {list(layers)}")
        return
    if isinstance(layers, bool) or not isinstance(layers, int | np.integer):
        raise TypeError(
            "layers must be None (top-level keys), gf.optim.layer_order(...), a sequence of "
            "layer names in forward order, a positive int (path depth) or a callable path -> "
            f"layer name, got {layers!r}. Under optax.inject_hyperparams pass "
            "static_args=('layers',)."
        )
    if layers < 1:
        raise ValueError(f"layers (a path depth) must be >= 1, got {layers}.")


def _bare_non_array(tree: Any) -> bool:
    """None, a string, or a single leaf that is not an array (a Python number, an object)."""
    if tree is None or isinstance(tree, str | bytes):
        return True
    is_leaf = jax.tree_util.treedef_is_leaf(jax.tree.structure(tree))
    return is_leaf and not isinstance(tree, jax.Array | np.ndarray)


def _check_tree(name: str, tree: Any, *, numeric: bool = False) -> None:
    """``tree`` must be a pytree of arrays (a dict, list, dataclass, ... of leaves, or one array):
    not None, a string or a bare Python value. With ``numeric``, every leaf must be a real array
    or number (its static dtype only, so traced leaves pass)."""
    if _bare_non_array(tree):
        raise TypeError(
            f"{name} must be a pytree of arrays (e.g. variables['params'], a dict of layers), "
            f"got {_checks.show(tree)}"
        )
    if numeric:
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            dtype = getattr(leaf, "dtype", None)
            if dtype is not None:
                ok = jnp.issubdtype(dtype, jnp.number)
            else:
                ok = isinstance(leaf, int | float) and not isinstance(leaf, bool)
            if not ok:
                raise TypeError(
                    f"{name} must hold real arrays; the leaf at {jax.tree_util.keystr(path)!r} "
                    f"is {_checks.show(leaf)}"
                )


def _check_mask(mask: Any) -> None:
    """A mask of :func:`optax.masked`: None, a callable ``params -> tree`` or a tree of bools."""
    if mask is None or callable(mask):
        return
    leaves = jax.tree.leaves(mask)
    bad = [
        v
        for v in leaves
        if not isinstance(v, bool | np.bool_)
        and not (getattr(v, "dtype", None) == np.bool_ and np.ndim(v) == 0)
    ]
    if isinstance(mask, str | bytes) or not leaves or bad:
        raise TypeError(
            "mask must be None (decay every leaf), a callable params -> tree of bools (e.g. "
            f"decay_mask) or a tree of bools shaped like the params, got {_checks.show(mask)}"
        )


# --------------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------------


def _path_names(path: jax.tree_util.KeyPath) -> tuple[str, ...]:
    return _taps.path_names(path)


def _natural_key(name: str) -> tuple[bool, tuple[str | int, ...]]:
    # A layer named "readout" goes last (gradflow.models.RNN names its layers "rnn", "readout").
    # re.split with a capture group alternates text (even positions) and digit runs (odd ones),
    # so equal positions always hold equal types and the tuples compare.
    parts = tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", name)))
    return (name.split("/", 1)[0] == READOUT, parts)


def _one_family(names: Sequence[str]) -> bool:
    """Whether natural sorting surely gives the forward order: the names (but ``readout``) are
    one prefix numbered by creation, e.g. ``dense_0 .. dense_9`` or ``layers/0 .. layers/3``."""
    prefixes = {re.sub(r"\d+$", "", n) for n in names if n.split("/", 1)[0] != READOUT}
    return len(prefixes) <= 1


def _layer_of(path: tuple[str, ...], layers: LayerSpec, seq_top: frozenset = frozenset()) -> str:
    if callable(layers):
        return str(layers(path))
    if isinstance(layers, LayerOrder):
        name = layers.groups.get(path)
        if name is None:
            raise ValueError(
                f"the parameter {'/'.join(path)!r} is not in the LayerOrder (built for other "
                f"parameters?); its layers are {list(layers.names)}"
            )
        return name
    if isinstance(layers, Sequence) and not isinstance(layers, str):
        joined = "/".join(path)
        hits = [n for n in layers if joined == n or joined.startswith(n + "/")]
        if not hits:
            raise ValueError(
                f"the parameter {joined!r} belongs to none of the layers {list(layers)}: list "
                "every layer (a name is a prefix of its parameters' paths)"
            )
        return max(hits, key=len)
    if layers is None:
        depth = 2 if path and path[0] in seq_top and len(path) > 2 else 1
        return "/".join(path[:depth])
    return "/".join(path[:layers])


class _Partition(NamedTuple):
    names: tuple[str, ...]  # layer names, forward order
    leaf_layer: tuple[int, ...]  # layer index of every leaf, in jax.tree.leaves order
    ordered: bool = True  # False: natural sort of names that need not be the forward order


def _sequence_tops(paths: list[tuple[str, ...]]) -> frozenset:
    """Top-level keys holding a sequence (their next key is an index)."""
    return frozenset(p[0] for p in paths if len(p) > 2 and p[1].isdigit())


def _partition(tree: chex.ArrayTree, layers: LayerSpec) -> _Partition:
    with_path = jax.tree_util.tree_flatten_with_path(tree)[0]
    paths = [_path_names(p) for p, _ in with_path]
    seq_top = _sequence_tops(paths) if layers is None else frozenset()
    leaf_names = [_layer_of(p, layers, seq_top) for p in paths]
    if isinstance(layers, LayerOrder):
        names = tuple(n for n in layers.names if n in set(leaf_names))
        ordered = True
    elif isinstance(layers, Sequence) and not isinstance(layers, str):
        names = tuple(n for n in layers if n in set(leaf_names))
        ordered = True
    else:
        names = tuple(sorted(set(leaf_names), key=_natural_key))
        ordered = layers is not None or _one_family(names)
    index = {n: i for i, n in enumerate(names)}
    return _Partition(names, tuple(index[n] for n in leaf_names), ordered)


def _norm_dtype(tree: chex.ArrayTree) -> jnp.dtype:
    leaves = jax.tree.leaves(tree)
    return jnp.result_type(*leaves, jnp.float32) if leaves else jnp.dtype(jnp.float32)


def _layer_sq_norms(tree: chex.ArrayTree, part: _Partition, dtype: DTypeLike) -> jax.Array:
    """(n_layers,) sums of squares, accumulated in ``dtype``."""
    sums = [jnp.zeros((), dtype) for _ in part.names]
    for leaf, i in zip(jax.tree.leaves(tree), part.leaf_layer, strict=True):
        sums[i] = sums[i] + jnp.sum(jnp.square(jnp.asarray(leaf).astype(dtype)))
    return jnp.stack(sums) if sums else jnp.zeros((0,), dtype)


def layer_order(
    model: Any,
    variables: chex.ArrayTree | None,
    x: chex.ArrayTree,
    *,
    train: bool = False,
    rngs: jax.Array | Mapping[str, jax.Array] | None = None,
) -> LayerOrder:
    """The layers of ``model`` in the order its forward pass runs them, for ``layers=``.

    One traced call of the model on ``x`` (shapes only; nothing is computed), read by
    :mod:`gradflow.taps`: the same layers :func:`gradflow.probes.probe` reports, grouped by the
    parameters they use (see the module docstring).

    Args:
      model, variables: as :func:`gradflow.probes.probe` takes them -- a linen module and its
        variables (or their ``params``), an NNX or Equinox module and None, or an
        ``apply_fn(params, x)`` and its ``params``.
      x: a batch of inputs (only its shape and dtype are used).
      train, rngs: as for :func:`gradflow.adapters.as_model`.

    Returns:
      A :class:`LayerOrder` whose paths match the parameter pytree an optimizer of this model
      sees (linen ``variables["params"]``, NNX ``nnx.state(model, nnx.Param)``, Equinox
      ``eqx.filter(model, eqx.is_inexact_array)``, the ``params`` of an ``apply_fn``).

    Raises:
      ValueError: if the model has no parameterised layer.
    """
    from gradflow import adapters as _adapters

    if (
        variables is not None
        and isinstance(model, __import__("flax").linen.Module)
        and isinstance(variables, Mapping)
        and "params" not in variables
    ):
        variables = {"params": variables}
    m = _adapters.as_model(model, variables, train=train, rngs=rngs)
    plan = _taps.trace(m.apply, m.params, x, m.state, paths=m.paths)
    if not plan.layers:
        raise ValueError(
            f"layer_order: {type(model).__name__} has no parameterised layer on this input"
        )
    paths = m.paths
    groups: dict[tuple[str, ...], str] = {}
    fan_in: dict[tuple[str, ...], tuple[int, ...]] = {}
    names: list[str] = []
    for row in plan.layers:
        leaves = [i for i, _ in (*row.weight, *row.bias)]
        taken = [groups[paths[i]] for i in leaves if paths[i] in groups]
        # a leaf used again (a scanned stack, a shared weight) keeps its first layer
        name = taken[0] if taken else ("/".join(row.owner) or "/".join(paths[leaves[0]]))
        if name not in names:
            names.append(name)
        for i in leaves:
            groups.setdefault(paths[i], name)
        for i, axes in row.fan_in:
            fan_in.setdefault(paths[i], axes)
    unused = [p for p in paths if p not in groups]
    extra: list[str] = []
    for p in unused:
        name = "/".join(p[:-1]) or "/".join(p)
        while name in names:
            name += "'"
        groups[p] = name
        if name not in extra:
            extra.append(name)
    return LayerOrder(tuple(extra + names), groups, fan_in)


def layer_names(params: optax.Params, *, layers: LayerSpec = None) -> tuple[str, ...]:
    """Names of the layers of ``params`` in forward order (see the module docstring).

    Args:
      params: a parameter (or gradient) pytree, e.g. ``variables["params"]`` of a Flax model.
      layers: a :class:`LayerOrder` (:func:`layer_order`), names in forward order, None
        (top-level keys), an int path depth, or a callable ``path -> name``.

    Returns:
      A tuple of layer names; per-layer arrays of this module are indexed in this order.
    """
    _check_tree("params", params)
    _check_layers(layers)
    return _partition(params, layers).names


def layer_norms(tree: chex.ArrayTree, *, layers: LayerSpec = None) -> jax.Array:
    r"""Per-layer L2 norms :math:`\|g_l\|_2 = (\sum_{\text{leaves } x \in l} \sum x^2)^{1/2}`.

    Args:
      tree: a pytree of arrays (gradients or parameters).
      layers: None (top-level keys), an int path depth, or a callable ``path -> name``.

    Returns:
      Array of shape ``(n_layers,)`` in the order of :func:`layer_names`, at least float32.
    """
    _check_tree("tree", tree, numeric=True)
    _check_layers(layers)
    part = _partition(tree, layers)
    return jnp.sqrt(_layer_sq_norms(tree, part, _norm_dtype(tree)))


# --------------------------------------------------------------------------------------------------
# clipping with telemetry
# --------------------------------------------------------------------------------------------------


class _ClipState(NamedTuple):
    """The telemetry fields every clipping transform records (see :class:`ClipByValueState`).

    Each transform has its own subclass, so that :func:`telemetry` names it by its type.
    """

    global_norm: jax.Array
    layer_norms: jax.Array
    clipped: jax.Array
    nonfinite_count: jax.Array


class ClipByValueState(_ClipState):
    """Telemetry of :func:`clip_by_value` from the latest update.

    Attributes:
      global_norm: ``()`` pre-clip global L2 norm of the updates.
      layer_norms: ``(n_layers,)`` pre-clip per-layer L2 norms, forward order.
      clipped: ``(n_layers,)`` bool, True where at least one entry of the layer was clipped.
      nonfinite_count: ``()`` int32, the number of updates so far in which a non-finite layer
        update was replaced by zeros (see :func:`clip_by_value`).
    """

    __slots__ = ()


class ClipByGlobalNormState(_ClipState):
    """Telemetry of :func:`clip_by_global_norm`; fields as in :class:`ClipByValueState`.

    ``clipped`` is True for every layer when the global norm exceeded the threshold.
    """

    __slots__ = ()


class ClipByLayerNormState(_ClipState):
    """Telemetry of :func:`clip_by_layer_norm`; fields as in :class:`ClipByValueState`.

    ``clipped`` is True for the layers whose norm exceeded the threshold.
    """

    __slots__ = ()


class AdaptiveGradClipState(_ClipState):
    """Telemetry of :func:`adaptive_grad_clip`; fields as in :class:`ClipByValueState`.

    ``clipped`` is True for the layers in which at least one unit was rescaled.
    """

    __slots__ = ()


def _init_clip_state(cls: type[_ClipState], params: optax.Params, layers: LayerSpec) -> _ClipState:
    n = len(_partition(params, layers).names)
    dtype = _norm_dtype(params)
    zeros = jnp.zeros((n,), dtype)
    return cls(jnp.zeros((), dtype), zeros, jnp.zeros((n,), bool), jnp.zeros((), jnp.int32))


def _zero_nonfinite(updates: optax.Updates, part: _Partition, bad: jax.Array) -> optax.Updates:
    """``updates`` with every leaf of a layer flagged in ``bad`` (``(n_layers,)`` bool) replaced
    by zeros: the clipping transforms' rule for non-finite gradients."""
    leaves, treedef = jax.tree.flatten(updates)
    pairs = zip(leaves, part.leaf_layer, strict=True)
    leaves = [jnp.where(bad[i], jnp.zeros_like(x), x) for x, i in pairs]
    return jax.tree.unflatten(treedef, leaves)


def _count(state: _ClipState, bad: jax.Array) -> jax.Array:
    return state.nonfinite_count + jnp.any(bad).astype(jnp.int32)


def _pre_clip(updates: optax.Updates, layers: LayerSpec) -> tuple[_Partition, jax.Array, jax.Array]:
    part = _partition(updates, layers)
    sq = _layer_sq_norms(updates, part, _norm_dtype(updates))
    return part, jnp.sqrt(jnp.sum(sq)), jnp.sqrt(sq)


def clip_by_value(
    max_delta: ArrayLike = 1.0, *, layers: LayerSpec = None
) -> optax.GradientTransformation:
    r"""Element-wise clipping :math:`g \leftarrow \mathrm{clip}(g, -\delta, \delta)`, telemetry.

    The update is :func:`optax.clip`; the state (:class:`ClipByValueState`) records the pre-clip
    global and per-layer norms and which layers had an entry clipped. Clipping by value changes the
    direction of the gradient, unlike norm clipping (Pascanu et al. 2013).

    Non-finite gradients: an entry :math:`\pm\infty` is clipped to :math:`\pm\delta` by the rule
    itself; a layer holding a NaN gets a zero update, and the update is counted in
    ``nonfinite_count``.

    Args:
      max_delta: :math:`\delta > 0`, the largest absolute value of an update entry (may be traced).
      layers: how leaves group into layers for the telemetry (see the module docstring).

    Returns:
      An :class:`optax.GradientTransformation`.
    """
    _check_positive("max_delta", max_delta)
    _check_layers(layers)
    inner = optax.clip(max_delta)

    def init_fn(params):
        return _init_clip_state(ClipByValueState, params, layers)

    def update_fn(updates, state, params=None):
        del params
        part, gnorm, lnorms = _pre_clip(updates, layers)
        hit = [jnp.zeros((), bool) for _ in part.names]
        for leaf, i in zip(jax.tree.leaves(updates), part.leaf_layer, strict=True):
            hit[i] = hit[i] | jnp.any(jnp.abs(leaf) > max_delta)
        clipped = jnp.stack(hit) if hit else jnp.zeros((0,), bool)
        bad = jnp.isnan(lnorms)
        updates, _ = inner.update(updates, optax.EmptyState())
        return _zero_nonfinite(updates, part, bad), ClipByValueState(
            gnorm.astype(state.global_norm.dtype),
            lnorms.astype(state.layer_norms.dtype),
            clipped,
            _count(state, bad),
        )

    return optax.GradientTransformation(init_fn, update_fn)


def clip_by_global_norm(
    max_norm: ArrayLike = 1.0, *, layers: LayerSpec = None
) -> optax.GradientTransformation:
    r"""Global-norm clipping (Pascanu, Mikolov & Bengio 2013), with telemetry.

    .. math::
        \text{if } \|g\|_2 > c:\quad g \leftarrow c\, g / \|g\|_2 ,

    with :math:`\|g\|_2` the L2 norm over every leaf; the direction of :math:`g` is unchanged. The
    update is :func:`optax.clip_by_global_norm`; the state (:class:`ClipByGlobalNormState`) records
    the pre-clip global and per-layer norms and whether the threshold was exceeded.

    Non-finite gradients: when :math:`\|g\|_2` is not finite (a NaN or an infinity anywhere) the
    rule has no direction to keep (optax would return NaN for every parameter), so the whole
    update is zero (the step is skipped) and counted in ``nonfinite_count``.

    Args:
      max_norm: the threshold :math:`c > 0` (may be traced; ``inf`` never clips).
      layers: how leaves group into layers for the telemetry (see the module docstring).

    Returns:
      An :class:`optax.GradientTransformation`.
    """
    _check_positive("max_norm", max_norm)
    _check_layers(layers)
    inner = optax.clip_by_global_norm(max_norm)

    def init_fn(params):
        return _init_clip_state(ClipByGlobalNormState, params, layers)

    def update_fn(updates, state, params=None):
        del params
        part, gnorm, lnorms = _pre_clip(updates, layers)
        clipped = jnp.broadcast_to(gnorm > max_norm, lnorms.shape)
        bad = jnp.broadcast_to(~jnp.isfinite(gnorm), lnorms.shape)
        updates, _ = inner.update(updates, optax.EmptyState())
        return _zero_nonfinite(updates, part, bad), ClipByGlobalNormState(
            gnorm.astype(state.global_norm.dtype),
            lnorms.astype(state.layer_norms.dtype),
            clipped,
            _count(state, bad),
        )

    return optax.GradientTransformation(init_fn, update_fn)


def clip_by_layer_norm(
    max_norm: ArrayLike = 1.0, *, layers: LayerSpec = None
) -> optax.GradientTransformation:
    r"""Per-layer norm clipping: each layer's gradient is scaled to norm at most ``max_norm``.

    .. math::
        g_l \leftarrow g_l \min\!\left(1, \frac{c}{\|g_l\|_2}\right)\quad\text{for every layer } l,

    the rule of Pascanu et al. (2013) applied to each layer independently (a *layer* is a subtree of
    the params, see the module docstring), so one exploding layer does not shrink the updates of the
    healthy ones as global clipping does. Each layer keeps its direction. The state
    (:class:`ClipByLayerNormState`) records the pre-clip norms and which layers were clipped.

    Non-finite gradients: a layer whose norm is not finite (a NaN or an infinity in it) gets a
    zero update (the other layers are clipped as usual), and the update is counted in
    ``nonfinite_count``.

    Args:
      max_norm: the threshold :math:`c > 0` (may be traced; ``inf`` never clips).
      layers: None (top-level keys), an int path depth, or a callable ``path -> layer name``.

    Returns:
      An :class:`optax.GradientTransformation`.

    Example:
      >>> params = {"dense_0": {"kernel": jnp.ones((3, 4))},
      ...           "dense_1": {"kernel": jnp.ones((4, 2))}}
      >>> tx = gf.optim.clip_by_layer_norm(1.0)
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jax.tree.map(lambda p: 10 * p, params), state)
      >>> [round(float(optax.global_norm(u)), 4) for u in updates.values()]   # each layer at 1
      [1.0, 1.0]
      >>> gf.optim.telemetry(state)["clip_by_layer_norm/clipped"]
      Array([ True,  True], dtype=bool)
    """
    _check_positive("max_norm", max_norm)
    _check_layers(layers)

    def init_fn(params):
        return _init_clip_state(ClipByLayerNormState, params, layers)

    def update_fn(updates, state, params=None):
        del params
        part, gnorm, lnorms = _pre_clip(updates, layers)
        clipped = lnorms > max_norm
        bad = ~jnp.isfinite(lnorms)
        scale = jnp.where(clipped & ~bad, max_norm / jnp.where(clipped, lnorms, 1.0), 1.0)
        leaves, treedef = jax.tree.flatten(updates)
        leaves = [
            (x * scale[i].astype(x.dtype)).astype(x.dtype)
            for x, i in zip(leaves, part.leaf_layer, strict=True)
        ]
        clipped_tree = jax.tree.unflatten(treedef, leaves)
        return _zero_nonfinite(clipped_tree, part, bad), ClipByLayerNormState(
            gnorm.astype(state.global_norm.dtype),
            lnorms.astype(state.layer_norms.dtype),
            clipped,
            _count(state, bad),
        )

    return optax.GradientTransformation(init_fn, update_fn)


def _resolve_unclipped(
    unclipped: str | Sequence[str] | None, names: tuple[str, ...]
) -> frozenset[str]:
    if unclipped is None:
        return frozenset()
    if unclipped == "last":
        return frozenset(names[-1:])
    wanted = (unclipped,) if isinstance(unclipped, str) else tuple(unclipped)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ValueError(
            f"adaptive_grad_clip: unclipped layers {missing} are not layers of the params; "
            f"layers are {list(names)} (or use unclipped='last' or None)."
        )
    return frozenset(wanted)


def _unit_axes(
    path: tuple[str, ...], ndim: int, axis: int | tuple[int, ...] | None, layers: LayerSpec
) -> int | tuple[int, ...] | None:
    """Reduction axes of the unit norm of one leaf: ``axis`` where the leaf has those axes,
    else its fan-in axes from a :class:`LayerOrder`, else None (optax infers them by rank)."""
    if axis is not None:
        wanted = (axis,) if isinstance(axis, int) else tuple(axis)
        if all(-ndim <= a < ndim for a in wanted) and ndim > 1:
            return axis
        return None
    if isinstance(layers, LayerOrder) and path in layers.fan_in and ndim > 1:
        return layers.fan_in[path]
    return None


def adaptive_grad_clip(
    clipping: ArrayLike = 0.01,
    eps: ArrayLike = 1e-3,
    *,
    unclipped: str | Sequence[str] | None = "last",
    layers: LayerSpec = None,
    axis: int | tuple[int, ...] | None = None,
) -> optax.GradientTransformation:
    r"""Unit-wise adaptive gradient clipping (AGC; Brock, De, Smith & Simonyan 2021), telemetry.

    For every unit :math:`i` (a column of a Dense kernel ``(fan_in, fan_out)``, i.e. the weights
    into one output unit; a whole bias or scale vector):

    .. math::
        \text{if } \frac{\|G_i\|}{\max(\|W_i\|, \epsilon)} > \lambda:\quad
        G_i \leftarrow \lambda \max(\|W_i\|, \epsilon) \frac{G_i}{\|G_i\|} .

    Unit norms are :func:`optax.transforms.unitwise_norm` and the rescaling is
    :func:`optax.transforms.unitwise_clip`. As in the paper, the final linear (readout) layer is not
    clipped by default: ``unclipped="last"`` leaves the last layer in forward order untouched (see
    the module docstring: the layer named ``"readout"`` if there is one, else the last of the
    naturally sorted names; for every gradflow.models network that is its readout).

    Non-finite gradients: a layer whose gradient holds a NaN or an infinity gets a zero update
    (the unclipped readout too: there is no finite update to pass on), and the update is counted
    in ``nonfinite_count``.

    Args:
      clipping: :math:`\lambda > 0`, the largest allowed ratio of unit gradient norm to unit
        parameter norm (may be traced). Brock et al. use 0.01 to 0.16 depending on batch size.
      eps: :math:`\epsilon > 0`, floor on the parameter norm so zero-initialised units can move.
      unclipped: ``"last"`` (the readout layer), None (clip every layer), or a layer name or names.
      layers: how leaves group into layers (see the module docstring). With
        :func:`layer_order`, every weight's unit norm reduces over its fan-in axes, whatever its
        layout (Flax ``(in, out)``, PyTorch/Equinox ``(out, in)``, conv ``HWIO``).
      axis: reduction axes of the unit norm for the leaves that have them (e.g. ``axis=1`` for
        ``(out, in)`` weights; vectors such as biases keep the whole-vector norm); None takes
        the fan-in axes from a :class:`LayerOrder`, else infers them from the rank (as optax
        does: axis 0 for a Flax ``(in, out)`` kernel).

    Returns:
      An :class:`optax.GradientTransformation` whose ``update`` needs ``params``.
    """
    _check_positive("clipping", clipping)
    _check_positive("eps", eps)
    _check_layers(layers)
    if unclipped is not None and not isinstance(unclipped, str | Sequence):
        raise TypeError(
            "unclipped must be 'last', None, a layer name or a sequence of names, "
            f"got {unclipped!r}."
        )

    def init_fn(params):
        part = _partition(params, layers)
        if unclipped == "last" and not part.ordered:
            raise ValueError(
                f"adaptive_grad_clip: unclipped='last' but the layers {list(part.names)} are "
                "ordered by name, so the last need not be the readout; pass "
                "layers=gf.optim.layer_order(model, variables, x), the names in forward order, "
                "or unclipped='<readout name>'"
            )
        _resolve_unclipped(unclipped, part.names)
        return _init_clip_state(AdaptiveGradClipState, params, layers)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(_NO_PARAMS_MSG.format(name="adaptive_grad_clip"))
        part, gnorm, lnorms = _pre_clip(updates, layers)
        skip = _resolve_unclipped(unclipped, part.names)
        with_path, treedef = jax.tree_util.tree_flatten_with_path(updates)
        p_leaves = treedef.flatten_up_to(params)
        hit = [jnp.zeros((), bool) for _ in part.names]
        out = []
        for (path, g), p, i in zip(with_path, p_leaves, part.leaf_layer, strict=True):
            if part.names[i] in skip:
                out.append(g)
                continue
            ax = _unit_axes(_path_names(path), jnp.ndim(g), axis, layers)
            g_norm = optax.transforms.unitwise_norm(g, axis=ax)
            max_norm = clipping * jnp.maximum(optax.transforms.unitwise_norm(p, axis=ax), eps)
            max_norm = max_norm.astype(g_norm.dtype)
            hit[i] = hit[i] | jnp.any(g_norm > max_norm)
            out.append(optax.transforms.unitwise_clip(g_norm, max_norm, g))
        clipped = jnp.stack(hit) if hit else jnp.zeros((0,), bool)
        bad = ~jnp.isfinite(lnorms)
        return _zero_nonfinite(jax.tree.unflatten(treedef, out), part, bad), AdaptiveGradClipState(
            gnorm.astype(state.global_norm.dtype),
            lnorms.astype(state.layer_norms.dtype),
            clipped,
            _count(state, bad),
        )

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------------------
# monitor
# --------------------------------------------------------------------------------------------------


class GradStatsState(NamedTuple):
    """State of :func:`monitor_grad_stats`.

    Attributes:
      count: ``()`` int32, number of updates seen.
      global_norm: ``()`` global L2 norm of the latest updates.
      layer_norms: ``(n_layers,)`` per-layer L2 norms of the latest updates, forward order.
      ema_layer_norms: ``(n_layers,)`` their exponential moving average.
    """

    count: jax.Array
    global_norm: jax.Array
    layer_norms: jax.Array
    ema_layer_norms: jax.Array


def monitor_grad_stats(
    decay: ArrayLike = 0.9, *, layers: LayerSpec = None
) -> optax.GradientTransformation:
    r"""Gradient-statistics monitor: identity on the updates, keeps per-layer norms and their EMA.

    After each update the state (:class:`GradStatsState`) holds :math:`n_l = \|g_l\|_2` and

    .. math::
        \bar n_l \leftarrow \beta \bar n_l + (1 - \beta) n_l ,\qquad \bar n_l^{(1)} = n_l^{(1)},

    (started at the first observation, so it needs no bias correction). Place it first in a chain to
    watch raw gradients (the per-layer "speed of learning" of Nielsen, ch. 5), or after a clipping
    transform to watch what the optimizer receives.

    Args:
      decay: :math:`\beta \in [0, 1)` (may be traced).
      layers: how leaves group into layers (see the module docstring).

    Returns:
      An :class:`optax.GradientTransformation` that returns its input updates unchanged.
    """
    _check_unit_interval("decay", decay)
    _check_layers(layers)

    def init_fn(params):
        n = len(_partition(params, layers).names)
        dtype = _norm_dtype(params)
        zeros = jnp.zeros((n,), dtype)
        return GradStatsState(jnp.zeros((), jnp.int32), jnp.zeros((), dtype), zeros, zeros)

    def update_fn(updates, state, params=None):
        del params
        _, gnorm, lnorms = _pre_clip(updates, layers)
        lnorms = lnorms.astype(state.layer_norms.dtype)
        beta = jnp.asarray(decay, lnorms.dtype)
        ema = jnp.where(
            state.count == 0, lnorms, beta * state.ema_layer_norms + (1 - beta) * lnorms
        )
        return updates, GradStatsState(
            state.count + 1, gnorm.astype(state.global_norm.dtype), lnorms, ema
        )

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------------------------------
# telemetry
# --------------------------------------------------------------------------------------------------

# Not built on optax.monitor/optax.snapshot: they record a function of the updates they are
# given, at their own place in the chain, so they cannot see a clip's own decisions (``clipped``,
# the zeroed non-finite layers); snapshot's initial state is measure(params), not zeros, and
# monitor's is an empty dict that the first update fills (a lax.scan carry changes structure).
_TELEMETRY_STATES: dict[type, str] = {
    ClipByValueState: "clip_by_value",
    ClipByGlobalNormState: "clip_by_global_norm",
    ClipByLayerNormState: "clip_by_layer_norm",
    AdaptiveGradClipState: "adaptive_grad_clip",
    GradStatsState: "grad_stats",
}
_WRAPPER_STATES: dict[type, str] = {
    optax.ApplyIfFiniteState: "apply_if_finite",
    optax.InjectHyperparamsState: "hyperparams",
    optax.InjectStatefulHyperparamsState: "hyperparams",
}


def telemetry(opt_state: optax.OptState) -> dict[str, jax.Array]:
    """Collect the telemetry of every gradflow transform (and optax guard) in an optimizer state.

    Walks the whole state pytree (nested chains, :class:`optax.MaskedState`,
    :func:`optax.inject_hyperparams` and :func:`optax.apply_if_finite` states, ...) in order and
    returns a flat dict of arrays, readable under ``jit``/``vmap`` (under ``vmap`` every array gains
    the batch axes):

    * ``"<transform>/global_norm"``, ``"<transform>/layer_norms"``, ``"<transform>/clipped"``,
      ``"<transform>/nonfinite_count"`` for each clipping transform (``clip_by_value``,
      ``clip_by_global_norm``, ``clip_by_layer_norm``, ``adaptive_grad_clip``): pre-clip norms,
      the clipped layers (see :func:`layer_names`) and how many updates had a non-finite layer
      replaced by zeros;
    * ``"grad_stats/count"``, ``"grad_stats/global_norm"``, ``"grad_stats/layer_norms"``,
      ``"grad_stats/ema_layer_norms"`` for :func:`monitor_grad_stats`;
    * ``"apply_if_finite/notfinite_count"``, ``"apply_if_finite/total_notfinite"``,
      ``"apply_if_finite/last_finite"`` for :func:`optax.apply_if_finite`;
    * ``"hyperparams/<name>"`` for :func:`optax.inject_hyperparams`.

    A second transform of the same kind gets the suffix ``_1`` (``clip_by_value_1/...``), etc.

    Args:
      opt_state: the state of any optax transformation.

    Returns:
      ``dict[str, jax.Array]``; empty when the state holds no such transform.
    """
    if _bare_non_array(opt_state) and opt_state is not None:
        raise TypeError(
            "opt_state must be an optax state (the pytree tx.init(params) returns), got "
            f"{_checks.show(opt_state)}"
        )
    out: dict[str, jax.Array] = {}
    seen: dict[str, int] = {}

    def prefix(kind: str) -> str:
        k = seen.get(kind, 0)
        seen[kind] = k + 1
        return kind if k == 0 else f"{kind}_{k}"

    def walk(state: optax.OptState) -> None:
        kinds = _TELEMETRY_STATES | _WRAPPER_STATES
        for node in jax.tree.leaves(state, is_leaf=lambda x: type(x) in kinds):
            kind = kinds.get(type(node))
            if kind is None:
                continue
            p = prefix(kind)
            if type(node) in _TELEMETRY_STATES:
                out.update({f"{p}/{f}": v for f, v in node._asdict().items()})
            elif kind == "apply_if_finite":
                for f in ("notfinite_count", "last_finite", "total_notfinite"):
                    out[f"{p}/{f}"] = getattr(node, f)
                walk(node.inner_state)
            else:
                out.update({f"{p}/{k}": jnp.asarray(v) for k, v in node.hyperparams.items()})
                walk(node.inner_state)

    walk(opt_state)
    return out


# --------------------------------------------------------------------------------------------------
# weight decay
# --------------------------------------------------------------------------------------------------

DECAY_NAMES: tuple[str, ...] = ("kernel", "embedding")
NO_DECAY_NAMES: tuple[str, ...] = ("bias", "scale")


def decay_mask(
    params: optax.Params,
    *,
    decay: Sequence[str] = DECAY_NAMES,
    no_decay: Sequence[str] = NO_DECAY_NAMES,
) -> chex.ArrayTree:
    """Which leaves weight decay applies to: kernels yes, biases and normalisation scales no.

    A leaf is decayed when its own name (the last key of its path; for an NNX Variable the
    attribute holding it, not ``.value``) is in ``decay``; not decayed when it is in ``no_decay``
    (Flax Dense/LSTM/attention ``bias``, BatchNorm/LayerNorm ``scale`` and ``bias``, Equinox
    ``bias``); otherwise decayed iff it has rank >= 2 (a matrix-like weight: an Equinox
    ``weight``, but not a LayerNorm's rank-1 ``weight``). Override the names with
    ``functools.partial(decay_mask, decay=..., no_decay=...)``, or pass any tree of bools or
    callable as ``mask=`` to the decay transforms.

    Args:
      params: a parameter pytree.
      decay: leaf names always decayed.
      no_decay: leaf names never decayed (wins over ``decay``).

    Returns:
      A pytree of Python bools with the structure of ``params`` (an :func:`optax.masked` mask).
    """
    if isinstance(decay, str) or isinstance(no_decay, str):
        raise TypeError("decay and no_decay must be sequences of leaf names, not a single string.")
    for name, names in (("decay", decay), ("no_decay", no_decay)):
        if not isinstance(names, Collection) or not all(isinstance(n, str) for n in names):
            raise TypeError(
                f"{name} must be a sequence of leaf names (e.g. {DECAY_NAMES}), got "
                f"{_checks.show(names)}"
            )
    _check_tree("params", params)

    def rule(path, leaf):
        names = _path_names(path)  # an NNX Variable's ".value" is dropped
        name = names[-1] if names else ""
        if name in no_decay:
            return False
        if name in decay:
            return True
        return bool(jnp.ndim(leaf) >= 2)

    return jax.tree_util.tree_map_with_path(rule, params)


def _masked(
    tx: optax.GradientTransformation,
    mask: chex.ArrayTree | Callable[[optax.Params], chex.ArrayTree] | None,
) -> optax.GradientTransformation:
    return tx if mask is None else optax.masked(tx, mask)


def add_l1_decay(
    weight_decay: ArrayLike = 1e-4,
    *,
    mask: chex.ArrayTree | Callable[[optax.Params], chex.ArrayTree] | None = decay_mask,
) -> optax.GradientTransformation:
    r"""L1 weight decay: add the subgradient of :math:`\lambda \|w\|_1` to the updates.

    .. math::
        g \leftarrow g + \lambda\, \mathrm{sign}(w) \quad \text{on the masked leaves,}

    pushing every weight towards zero by a constant amount (sparsifying), unlike L2 whose pull is
    proportional to :math:`w`. Place it before the optimizer's scaling (coupled), like the gradient
    of a penalty term in the loss.

    Args:
      weight_decay: :math:`\lambda \ge 0` (may be traced).
      mask: which leaves decay: a tree of bools or a callable ``params -> tree`` (default
        :func:`decay_mask`: kernels only); None decays every leaf.

    Returns:
      An :class:`optax.GradientTransformation` whose ``update`` needs ``params``.
    """
    _check_nonnegative("weight_decay", weight_decay)
    _check_mask(mask)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(_NO_PARAMS_MSG.format(name="add_l1_decay"))
        updates = jax.tree.map(
            lambda g, w: g + (weight_decay * jnp.sign(w)).astype(g.dtype), updates, params
        )
        return updates, state

    return _masked(optax.GradientTransformation(optax.init_empty_state, update_fn), mask)


def add_l2_decay(
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    *,
    mask: chex.ArrayTree | Callable[[optax.Params], chex.ArrayTree] | None = decay_mask,
) -> optax.GradientTransformation:
    r"""L2 weight decay :math:`g \leftarrow g + \lambda w` on the masked leaves.

    This is :func:`optax.add_decayed_weights` with a validated :math:`\lambda` and the
    :func:`decay_mask` default. *Where* it sits in the chain decides what it means (Loshchilov &
    Hutter 2019): before the optimizer's preconditioning it is the gradient of the penalty
    :math:`\frac{\lambda}{2}\|w\|^2` (coupled L2, :func:`coupled_l2`); after it, it shrinks the
    weights by :math:`\eta\lambda w` per step independently of the gradient scale (decoupled weight
    decay, AdamW, :func:`decoupled_l2`). For SGD the two coincide; for Adam they differ.

    Args:
      weight_decay: :math:`\lambda \ge 0` (may be traced), or an optax schedule (step -> decay).
      mask: a tree of bools or a callable ``params -> tree`` (default :func:`decay_mask`); None
        decays every leaf.

    Returns:
      An :class:`optax.GradientTransformation` whose ``update`` needs ``params``.
    """
    _check_nonnegative("weight_decay", weight_decay)
    _check_mask(mask)
    return _masked(optax.add_decayed_weights(weight_decay), mask)


# --------------------------------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------------------------------


def _sgd_direction() -> optax.GradientTransformation:
    return optax.identity()


def _momentum_direction(momentum: ArrayLike = 0.9) -> optax.GradientTransformation:
    _check_unit_interval("momentum", momentum)
    return optax.trace(decay=momentum, nesterov=False)


def _nesterov_direction(momentum: ArrayLike = 0.9) -> optax.GradientTransformation:
    _check_unit_interval("momentum", momentum)
    return optax.trace(decay=momentum, nesterov=True)


def _adam_direction(
    b1: ArrayLike = 0.9, b2: ArrayLike = 0.999, eps: ArrayLike = 1e-8
) -> optax.GradientTransformation:
    _check_unit_interval("b1", b1)
    _check_unit_interval("b2", b2)
    _check_positive("eps", eps)
    return optax.scale_by_adam(b1=b1, b2=b2, eps=eps)


def _rmsprop_direction(
    decay: ArrayLike = 0.9, eps: ArrayLike = 1e-8
) -> optax.GradientTransformation:
    _check_unit_interval("decay", decay)
    _check_positive("eps", eps)
    return optax.scale_by_rms(decay=decay, eps=eps)


def _adagrad_direction(
    initial_accumulator_value: ArrayLike = 0.1, eps: ArrayLike = 1e-7
) -> optax.GradientTransformation:
    _check_nonnegative("initial_accumulator_value", initial_accumulator_value)
    _check_positive("eps", eps)
    return optax.scale_by_rss(initial_accumulator_value=initial_accumulator_value, eps=eps)


_DIRECTIONS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd_direction,
    "momentum": _momentum_direction,
    "nesterov": _nesterov_direction,
    "adam": _adam_direction,
    "rmsprop": _rmsprop_direction,
    "adagrad": _adagrad_direction,
}


def optimizer_names() -> tuple[str, ...]:
    """Names accepted by :func:`direction` and :func:`make_optimizer`."""
    return tuple(_DIRECTIONS)


def direction(name: str, **kwargs: Any) -> optax.GradientTransformation:
    """The update direction of a named optimizer, before the learning rate (and its sign).

    ``"sgd"`` is the identity; ``"momentum"``/``"nesterov"`` are :func:`optax.trace`
    (``momentum=0.9``); ``"adam"`` is :func:`optax.scale_by_adam` (``b1=0.9, b2=0.999, eps=1e-8``);
    ``"rmsprop"`` is :func:`optax.scale_by_rms` (``decay=0.9, eps=1e-8``); ``"adagrad"`` is
    :func:`optax.scale_by_rss` (``initial_accumulator_value=0.1, eps=1e-7``). Chained with
    :func:`optax.scale_by_learning_rate` these equal ``optax.sgd``/``optax.adam``/... exactly.

    Args:
      name: one of :func:`optimizer_names`.
      **kwargs: the direction's hyperparameters (listed above; may be traced).

    Returns:
      An :class:`optax.GradientTransformation`.

    Raises:
      ValueError: unknown name. TypeError: a keyword the optimizer does not take.
    """
    if name not in _DIRECTIONS:
        raise ValueError(f"Unknown optimizer {name!r}; valid names: {', '.join(_DIRECTIONS)}.")
    factory = _DIRECTIONS[name]
    allowed = tuple(inspect.signature(factory).parameters)
    bad = sorted(set(kwargs) - set(allowed))
    if bad:
        raise TypeError(
            f"Optimizer {name!r} got unexpected hyperparameters {bad}; it takes {list(allowed)}."
        )
    return factory(**kwargs)


def _as_direction(dir_: str | optax.GradientTransformation) -> optax.GradientTransformation:
    if isinstance(dir_, str):
        return direction(dir_)
    if not isinstance(dir_, optax.GradientTransformation):
        raise TypeError(
            "direction must be an optimizer name or an optax.GradientTransformation without the "
            f"learning rate (e.g. optax.scale_by_adam()), got {type(dir_).__name__}."
        )
    return dir_


def coupled_l2(
    direction_: str | optax.GradientTransformation,
    weight_decay: optax.ScalarOrSchedule,
    learning_rate: optax.ScalarOrSchedule,
    *,
    mask: chex.ArrayTree | Callable[[optax.Params], chex.ArrayTree] | None = decay_mask,
) -> optax.GradientTransformation:
    r"""Coupled L2: the decay term enters *before* the optimizer's preconditioning.

    ``chain(add_l2_decay(weight_decay), direction, scale_by_learning_rate(learning_rate))``, i.e.
    :math:`\Delta w = -\eta\, P(g + \lambda w)` where :math:`P` is the direction (identity for SGD,
    Adam's moment normalisation, ...): gradient descent on :math:`C + \frac{\lambda}{2}\|w\|^2`.

    Args:
      direction_: an optimizer name (see :func:`direction`) or a transformation without the
        learning rate.
      weight_decay: :math:`\lambda \ge 0` or an optax schedule.
      learning_rate: :math:`\eta > 0` or an optax schedule.
      mask: leaves to decay (default :func:`decay_mask`); None decays all.

    Returns:
      An :class:`optax.GradientTransformation` (a chain) whose ``update`` needs ``params``.
    """
    _check_learning_rate(learning_rate)
    return optax.chain(
        add_l2_decay(weight_decay, mask=mask),
        _as_direction(direction_),
        optax.scale_by_learning_rate(learning_rate),
    )


def decoupled_l2(
    direction_: str | optax.GradientTransformation,
    weight_decay: optax.ScalarOrSchedule,
    learning_rate: optax.ScalarOrSchedule,
    *,
    mask: chex.ArrayTree | Callable[[optax.Params], chex.ArrayTree] | None = decay_mask,
) -> optax.GradientTransformation:
    r"""Decoupled weight decay (Loshchilov & Hutter 2019): the same term *after* preconditioning.

    ``chain(direction, add_l2_decay(weight_decay), scale_by_learning_rate(learning_rate))``, i.e.
    :math:`\Delta w = -\eta\,(P(g) + \lambda w)`; with ``direction="adam"`` this is exactly
    :func:`optax.adamw`. For SGD (:math:`P = I`) it equals :func:`coupled_l2`.

    Args:
      direction_: an optimizer name (see :func:`direction`) or a transformation without the
        learning rate.
      weight_decay: :math:`\lambda \ge 0` or an optax schedule.
      learning_rate: :math:`\eta > 0` or an optax schedule (the decay is scaled by it too).
      mask: leaves to decay (default :func:`decay_mask`); None decays all.

    Returns:
      An :class:`optax.GradientTransformation` (a chain) whose ``update`` needs ``params``.
    """
    _check_learning_rate(learning_rate)
    return optax.chain(
        _as_direction(direction_),
        add_l2_decay(weight_decay, mask=mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def make_optimizer(
    name: str,
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: optax.ScalarOrSchedule | None = None,
    decoupled: bool = False,
    l1_decay: ArrayLike | None = None,
    mask: chex.ArrayTree | Callable[[optax.Params], chex.ArrayTree] | None = decay_mask,
    **kwargs: Any,
) -> optax.GradientTransformation:
    r"""A named optimizer with optional L1 and (coupled or decoupled) L2 decay, as one chain.

    The chain is ``[add_l1_decay] -> [coupled add_l2_decay] -> direction(name, **kwargs) ->
    [decoupled add_l2_decay] -> scale_by_learning_rate``; the bracketed pieces are present only
    when their strength is not None (a decay of 0.0 keeps the piece, so a sweep can vmap over it).
    Without decay, ``make_optimizer("adam", lr)`` updates exactly as ``optax.adam(lr)``.

    Args:
      name: one of :func:`optimizer_names` (``sgd momentum nesterov adam rmsprop adagrad``).
      learning_rate: :math:`\eta > 0` or an optax schedule (may be traced).
      weight_decay: L2 strength :math:`\lambda \ge 0` (or an optax schedule), or None for no
        L2 piece.
      decoupled: False puts L2 before the direction (coupled), True after it (AdamW-style).
      l1_decay: L1 strength (:func:`add_l1_decay`, always coupled), or None.
      mask: leaves to decay (default :func:`decay_mask`); None decays all.
      **kwargs: the direction's hyperparameters (see :func:`direction`).

    Returns:
      An :class:`optax.GradientTransformation`.

    Raises:
      ValueError: unknown name or invalid hyperparameter. TypeError: unexpected keyword.
    """
    _check_learning_rate(learning_rate)
    if not isinstance(decoupled, bool):
        raise TypeError(f"decoupled must be a bool, got {decoupled!r}.")
    parts = []
    if l1_decay is not None:
        parts.append(add_l1_decay(l1_decay, mask=mask))
    if weight_decay is not None and not decoupled:
        parts.append(add_l2_decay(weight_decay, mask=mask))
    parts.append(direction(name, **kwargs))
    if weight_decay is not None and decoupled:
        parts.append(add_l2_decay(weight_decay, mask=mask))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
