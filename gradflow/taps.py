r"""Find the layers of any JAX function of parameters, and tap their outputs exactly.

A researcher's model is a function :math:`f(\theta, x)` -- a Flax linen or NNX module, an
Equinox model, or plain JAX. To measure, layer by layer, how gradients flow through it, we need
for every layer :math:`l` its output :math:`z_l` and the gradient :math:`\partial C/\partial z_l`,
without changing the model. This module does it on the program itself:

1. **Trace** :math:`f` to a jaxpr (:func:`jax.make_jaxpr`) and follow, equation by equation, which
   values depend on the data :math:`x` and which only on the parameters :math:`\theta`.
2. **Find the layers.** A layer is a *chain* of equations that use parameters on data:

   * a linear map -- ``dot_general`` (Dense, DenseGeneral, Einsum, attention projections,
     ``x @ w``), ``conv_general_dilated`` (Conv, ConvTranspose) or a ``gather`` from a parameter
     table (Embed) -- one of whose operands is computed from parameters alone (the weight, after
     any reshape or reparameterisation such as weight standardisation), the other from the data;
   * followed by the elementwise additions of parameters of the same module (the bias);
   * or, without a linear map, an elementwise scale and shift by parameters (LayerNorm,
     BatchNorm, RMSNorm, GroupNorm; ``kind="norm"`` when the scaled value comes from a
     normalisation, ``"scale"`` otherwise, e.g. SkipInit's scalar). A chain whose parameters are
     only *added* to a value that was not normalised (a positional embedding, a class token) is not
     a layer.

   The layer's output :math:`z_l` is the chain's last value (for Dense: :math:`xW + b`, the
   pre-activation). Layers are listed in the order the forward pass runs them; the equations of
   nested ``jit`` calls are followed inline, ``jax.checkpoint`` (``nn.remat``) bodies are
   followed, and ``lax.scan`` (``nn.scan``) bodies give one row per iteration when the layer's
   weight is sliced from a parameter stacked along the scanned axis, or one row whose positions
   include the iterations when the weight is shared across them (a recurrent cell). Layers inside
   ``cond``, ``while_loop``, ``custom_jvp`` or ``custom_vjp`` bodies are not seen.
3. **Tap.** :func:`TapPlan.apply` re-evaluates the jaxpr with a perturbation :math:`\epsilon_l`
   added to every layer output, :math:`z_l \mapsto z_l + \epsilon_l`, and returns the outputs and
   the :math:`z_l`. At :math:`\epsilon = 0` nothing changes, and
   :math:`\partial C/\partial \epsilon_l = \partial C/\partial z_l` exactly -- the trick of Flax's
   ``Module.perturb``, applied to a model that was not written for it. Everything is traceable:
   it runs under ``jit``, ``vmap`` and ``grad``.

Names come from the parameters' paths: the path of the weight's parent (``block_0/attn/query``
for a linen kernel ``params/block_0/attn/query/kernel``, ``layers/0`` for an Equinox
``layers[0].weight``); a parameter at the top level names its layer itself (``w1``). A layer
whose parameters are used again later (tied embeddings, weights shared by a Python loop) gives a
row per use, ``name``, ``name#2``, ...; per-iteration rows of a scan are ``name[t]``.

The example (batch) axis of every layer output is found by tracing twice, with batch sizes
:math:`B` and :math:`B + 1`: the axis whose size changes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

__all__ = ["KINDS", "Layer", "TapPlan", "leaf_paths", "path_names", "trace"]

#: Primitives that only view their operand (the value is still "that parameter").
_VIEWS = frozenset(
    {
        "reshape",
        "transpose",
        "convert_element_type",
        "broadcast_in_dim",
        "squeeze",
        "expand_dims",
        "copy",
        "copy_p",
        "reduce_precision",
    }
)
_LINEAR = frozenset({"dot_general", "conv_general_dilated"})
_LOOKUP = frozenset({"gather", "dynamic_slice"})
_SCALE = frozenset({"mul", "div"})
_SHIFT = frozenset({"add", "sub", "add_any"})
_INLINE = frozenset({"jit", "pjit", "closed_call", "core_call"})
_REMAT = frozenset({"checkpoint", "remat2", "remat"})
_NORM_ROOTS = frozenset({"rsqrt", "sqrt"})
_NORM_DEPTH = 3

_ATTENTION_TOKENS = (
    "attn",
    "attention",
    "query",
    "key",
    "value",
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "out_proj",
    "qkv",
)

#: The ``kind`` of a layer.
KINDS = ("dense", "attention", "conv", "conv_transpose", "embedding", "norm", "scale")


# ----------------------------------------------------------------------------------------- paths


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
    """A JAX key path as a tuple of names: dict keys, attribute names, sequence indices; the
    ``.value`` attribute of an NNX Variable is dropped (``("block", "kernel")``, not
    ``("block", "kernel", "value")``)."""
    names = [_key_name(k) for k in path]
    if names and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        names = names[:-1]
    return tuple(names)


def leaf_paths(params: chex.ArrayTree) -> tuple[tuple[str, ...], ...]:
    """The :func:`path_names` of every leaf of ``params``, in :func:`jax.tree.leaves` order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return tuple(path_names(path) for path, _leaf in flat)


# ------------------------------------------------------------------------------------- analysis


@dataclasses.dataclass(frozen=True)
class _Info:
    """What the analysis knows about one value of the jaxpr.

    data: depends on the data x. leaves: for values computed from parameters alone, the leaves
    they come from, as (leaf, scan levels along which the leaf was sliced); ``leaf`` is a leaf
    index, or a tuple of leaf indices for a stack of whole leaves (``jnp.stack``), whose first
    slicing level selects the leaf (see _stacked). exact: the value is such a leaf or stack
    itself (or a dtype cast or transpose of it: ``perm``, with ``_STACK`` for the stacking axis),
    so a scan over it slices the leaf (or, over a stack, takes leaf t at iteration t). chain: the
    chain whose output this is (through views). axes: the chain output's channel axes. norm:
    distance (in equations) from a rsqrt/sqrt, or None beyond _NORM_DEPTH.
    """

    data: bool = False
    leaves: frozenset = frozenset()
    exact: bool = False
    perm: tuple[int, ...] | None = None  # exact values: operand axis k is leaf axis perm[k]
    chain: int | None = None
    axes: tuple[int, ...] | None = None
    norm: int | None = None
    unit: tuple | None = None  # (leaf, perm): a whole leaf with a unit axis inserted (_unit)


_CONST = _Info()

#: In an exact value's ``perm``: the axis along which whole leaves were stacked.
_STACK = -1


def _first(leaf) -> int:
    """The first leaf index of a leaf entry (an index, or a stack of them)."""
    return leaf[0] if isinstance(leaf, tuple) else leaf


@dataclasses.dataclass
class _Chain:
    id: int
    owner: tuple[str, ...]
    kind: str
    weight: set  # {(leaf, sliced)}
    bias: set
    fan_in: dict  # leaf -> the leaf axes the linear map contracts (exact weights only)
    site: tuple  # position of the equation whose output is the layer output
    aval: jax.core.AbstractValue  # that output's abstract value
    axes: tuple[int, ...] | None
    levels: tuple[int, ...]  # enclosing scan levels, outermost first
    last_prim: str
    last_data_size: int
    stack: tuple | None = None  # (scan level, leaves): the layer's parameters are leaf t at t
    extended: bool = False
    closed: bool = False


@dataclasses.dataclass(frozen=True)
class _Level:
    id: int
    length: int
    reverse: bool


@dataclasses.dataclass(frozen=True)
class _Row:
    chain: int
    index: tuple[tuple[int, int], ...]  # ((level id, iteration), ...)


class _Analysis:
    def __init__(self, paths: Sequence[tuple[str, ...]]):
        self.paths = paths
        self.chains: list[_Chain] = []
        self.levels: dict[int, _Level] = {}
        self.taps: dict[tuple, int] = {}  # site -> chain id
        self.inner: dict[tuple, list[int]] = {}  # scan / remat site -> chain ids inside

    # -- helpers --------------------------------------------------------------------------

    def owner(self, leaves: frozenset) -> tuple[str, ...]:
        """The parent path of the first leaf (``()`` for a top-level leaf)."""
        return self.paths[min(_first(i) for i, _ in leaves)][:-1]

    def stack(self, leaves: frozenset) -> tuple | None:
        """``(level, leaves)`` when the first leaf is a stack of leaves selected per iteration of
        a scan (the layer is then leaf t's layer at iteration t), else None."""
        first = min(leaves, key=lambda e: _first(e[0]))
        leaf, sliced = first
        return (sliced[0], leaf) if isinstance(leaf, tuple) and sliced else None

    def same_owners(self, a: tuple | None, b: tuple | None) -> bool:
        """Whether two stacks (:meth:`stack`) belong to the same module at every iteration."""
        if a is None or b is None:
            return a is b
        owners = [tuple(self.paths[i][:-1] for i in s[1]) for s in (a, b)]
        return a[0] == b[0] and owners[0] == owners[1]

    def name(self, c: _Chain, leaf: int | None = None) -> str:
        """The layer's name: its owner path (of ``leaf``, the leaf of one iteration of a stack),
        or a top-level leaf's own path."""
        if leaf is not None:
            path = self.paths[leaf]
            return "/".join(path[:-1] or path)
        if c.owner:
            return "/".join(c.owner)
        leaves = c.weight or c.bias
        return "/".join(self.paths[min(_first(i) for i, _ in leaves)]) if leaves else "layer"

    def new_chain(self, **kw) -> _Chain:
        c = _Chain(id=len(self.chains), **kw)
        self.chains.append(c)
        return c

    # -- the walk -------------------------------------------------------------------------

    def run(self, jaxpr, infos: list[_Info], pos: tuple, levels: tuple[int, ...]):
        """Walk ``jaxpr`` (a Jaxpr) with input infos; returns the output infos and the rows in
        forward order."""
        env: dict = {}
        rows: list[_Row] = []

        def read(v) -> _Info:
            if isinstance(v, jcore.Literal):
                return _CONST
            return env.get(v, _CONST)

        for v, info in zip(jaxpr.invars, infos):
            env[v] = info
        for i, eqn in enumerate(jaxpr.eqns):
            site = (*pos, i)
            ins = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            if name in _INLINE and "jaxpr" in eqn.params:
                closed = eqn.params["jaxpr"]
                inner = closed.jaxpr
                consts = [_CONST] * len(inner.constvars)
                env_in = [*consts, *ins]
                outs, sub_rows = self.run(inner, env_in, site, levels)
                rows += sub_rows
            elif name in _REMAT and "jaxpr" in eqn.params:
                before = len(self.chains)
                outs, sub_rows = self.run(eqn.params["jaxpr"], ins, site, levels)
                outs = [dataclasses.replace(o, chain=None, axes=None) for o in outs]
                self._close(before)
                self.inner[site] = [c.id for c in self.chains[before:]]
                rows += sub_rows
            elif name == "scan":
                outs, sub_rows = self.run_scan(eqn, ins, site, levels)
                rows += sub_rows
            else:
                outs = self.step(eqn, ins, site, levels, rows)
            for v, info in zip(eqn.outvars, outs):
                if not isinstance(v, jcore.DropVar):
                    env[v] = info
        return [read(v) for v in jaxpr.outvars], rows

    def _close(self, start: int):
        for c in self.chains[start:]:
            c.closed = True

    def run_scan(self, eqn, ins: list[_Info], site: tuple, levels: tuple[int, ...]):
        p = eqn.params
        nc, nk = _scan_counts(p)
        body, _ = _open(p["jaxpr"])
        level = _Level(id=len(self.levels), length=int(p["length"]), reverse=bool(p["reverse"]))
        self.levels[level.id] = level
        consts, carry, xs = ins[:nc], ins[nc : nc + nk], ins[nc + nk :]
        xs_body = []
        for info in xs:
            if info.data:
                xs_body.append(_Info(data=True, norm=info.norm))
            elif info.leaves and info.exact:
                sliced = frozenset((leaf, (*s, level.id)) for leaf, s in info.leaves)
                # the axis a slice index selects along: a stack of leaves first along _STACK
                # (leaf t), then along leaf t's own axes in order; a leaf along its axes in order
                (leaf, s), *more = info.leaves  # exact: one leaf (or one stack)
                stack = isinstance(leaf, tuple)
                head = (len(s) - 1 if s else _STACK) if stack else len(s)
                if more or not info.perm or info.perm[0] != head:
                    # scanned along another axis: iteration t's slice is not the one the next
                    # index selects (leaf t of a stack, row t of a leaf), so the whole value is
                    # one weight shared by every iteration
                    xs_body.append(_Info(leaves=info.leaves))
                    continue
                xs_body.append(_Info(leaves=sliced, exact=True, perm=info.perm[1:]))
            else:
                xs_body.append(_Info(leaves=info.leaves))
        carry_body = [_Info(data=c.data, leaves=c.leaves) for c in carry]
        body_consts = [_CONST] * len(body.constvars)
        inner_levels = (*levels, level.id)
        # a carry may become data-dependent inside the loop: analyse again with the joined carry
        for attempt in range(2):
            start = len(self.chains)
            outs, body_rows = self.run(
                body, [*body_consts, *consts, *carry_body, *xs_body], site, inner_levels
            )
            flags = [a.data or b.data for a, b in zip(carry_body, outs[:nk])]
            if attempt == 1 or flags == [c.data for c in carry_body]:
                break
            carry_body = [
                _Info(data=True) if f else _Info(leaves=c.leaves) for f, c in zip(flags, carry_body)
            ]
            del self.chains[start:]
            for k in [k for k in self.taps if k[: len(site)] == site]:
                del self.taps[k]
            for k in [k for k in self.inner if k[: len(site)] == site and k != site]:
                del self.inner[k]
        self._close(start)
        inside = self.chains[start:]
        self.inner[site] = [c.id for c in inside]
        out_infos = [
            _Info(data=o.data, leaves=o.leaves if not o.data else frozenset()) for o in outs
        ]
        # rows: per iteration for chains whose weight is sliced at this level
        per_iter = {
            c.id
            for c in inside
            if (c.stack is not None and c.stack[0] == level.id)
            or (c.weight and all(level.id in s for _, s in c.weight))
        }
        order = range(level.length - 1, -1, -1) if level.reverse else range(level.length)
        rows: list[_Row] = []
        first = True
        for t in order:
            for r in body_rows:
                if r.chain in per_iter:
                    rows.append(_Row(r.chain, ((level.id, t), *r.index)))
                elif first:
                    rows.append(r)
            first = False
        return out_infos, rows

    def step(self, eqn, ins: list[_Info], site, levels, rows: list[_Row]) -> list[_Info]:
        """The infos of one equation's outputs; a new layer's row is appended to ``rows``."""
        name = eqn.primitive.name
        norm = 0 if name in _NORM_ROOTS else _norm_depth(ins)
        if not any(i.data for i in ins):
            return _parameter_infos(eqn, ins, norm)
        out = _Info(data=True, norm=norm)
        if len(eqn.outvars) != 1:
            return [out] * len(eqn.outvars)
        param_ops = [i for i in ins if not i.data and i.leaves]
        if name in _VIEWS and len(ins) == 1:  # views carry the chain through
            return [self._view(eqn, ins[0], out)]
        lookup = name in _LOOKUP and ins[0].leaves and not ins[0].data
        if param_ops and (name in _LINEAR or lookup):
            return [self._linear(eqn, ins, param_ops, site, levels, rows, out)]
        if param_ops and (name in _SCALE or name in _SHIFT) and len(ins) == 2:
            return [self._elementwise(eqn, ins, param_ops, site, levels, rows, out)]
        if name == "mul" and len(ins) == 2 and all(i.data for i in ins):
            return [self._norm_scale(eqn, ins, site, levels, out)]
        return [out]

    def _view(self, eqn, src: _Info, out: _Info) -> _Info:
        """A view of a chain's output is still that output (with its channel axes moved)."""
        if src.chain is not None and not self.chains[src.chain].closed:
            return dataclasses.replace(out, chain=src.chain, axes=_view_axes(eqn, src.axes))
        return out

    def _linear(self, eqn, ins, param_ops, site, levels, rows: list[_Row], out: _Info) -> _Info:
        """A linear map of the data by parameters: a new layer (chain) and its row."""
        weight = frozenset().union(*(i.leaves for i in param_ops))
        owner = self.owner(weight)
        aval = eqn.outvars[0].aval
        kind, axes, fan_in = _linear_kind(eqn, ins, owner, aval)
        c = self.new_chain(
            owner=owner,
            kind=kind,
            weight=set(weight),
            bias=set(),
            fan_in=fan_in,
            site=site,
            aval=aval,
            axes=axes,
            levels=levels,
            last_prim=eqn.primitive.name,
            last_data_size=0,
            stack=self.stack(weight),
        )
        self.taps[site] = c.id
        rows.append(_Row(c.id, ()))
        # a linear map's output is not a normalised value
        return dataclasses.replace(out, chain=c.id, axes=axes, norm=None)

    def _elementwise(self, eqn, ins, param_ops, site, levels, rows: list[_Row], out: _Info):
        """Parameters multiplied or added elementwise: extend the stream's open chain of the
        same owner (a bias, a norm's shift), or start a norm or scale layer."""
        name = eqn.primitive.name
        leaves = frozenset().union(*(i.leaves for i in param_ops))
        owner, stack = self.owner(leaves), self.stack(leaves)
        stream = next(i for i in ins if i.data)
        aval = eqn.outvars[0].aval
        c = self.chains[stream.chain] if stream.chain is not None else None
        if (
            c is not None
            and not c.closed
            and c.owner == owner
            and self.same_owners(c.stack, stack)
            and c.levels == levels
        ):
            self._move(c, site, aval)
            (c.bias if name in _SHIFT else c.weight).update(leaves)
            c.last_prim = name
            c.last_data_size = _aval_size(_data_aval(eqn, ins))
            c.extended = False
            c.axes = _same_axes(stream, aval.shape)
            return dataclasses.replace(out, chain=c.id, axes=c.axes)
        is_norm = stream.norm is not None or any(i.norm is not None for i in param_ops)
        if name in _SHIFT and not is_norm:
            return out  # parameters only added: not a layer
        c = self.new_chain(
            owner=owner,
            kind="norm" if is_norm else "scale",
            fan_in={},
            weight=set(leaves) if name in _SCALE else set(),
            bias=set(leaves) if name in _SHIFT else set(),
            site=site,
            aval=aval,
            axes=(len(aval.shape) - 1,) if aval.shape else (),
            levels=levels,
            last_prim=name,
            last_data_size=_aval_size(_data_aval(eqn, ins)),
            stack=stack,
        )
        self.taps[site] = c.id
        rows.append(_Row(c.id, ()))
        return dataclasses.replace(out, chain=c.id, axes=c.axes)

    def _norm_scale(self, eqn, ins, site, levels, out: _Info) -> _Info:
        """A normalisation's scale applied to the normalised stream, ``x_hat * (rsqrt * gamma)``:
        extends an open norm or scale chain whose last step was a ``mul``."""
        aval = eqn.outvars[0].aval
        for k, i in enumerate(ins):
            c = self.chains[i.chain] if i.chain is not None else None
            if (
                c is not None
                and not c.closed
                and not c.extended
                and c.kind in ("norm", "scale")
                and c.last_prim == "mul"
                and c.levels == levels
                and ins[1 - k].chain is None
                and (
                    _aval_size(eqn.invars[k].aval) < _aval_size(aval)
                    or c.last_data_size < _aval_size(eqn.invars[k].aval)
                )
            ):
                self._move(c, site, aval)
                c.extended = True
                c.kind = "norm"
                c.axes = (len(aval.shape) - 1,)
                return dataclasses.replace(out, chain=c.id, axes=c.axes)
        return out

    def _move(self, c: _Chain, site, aval):
        del self.taps[c.site]
        c.site = site
        c.aval = aval
        self.taps[site] = c.id


def _parameter_infos(eqn, ins: list[_Info], norm: int | None) -> list[_Info]:
    """The infos of an equation on parameters alone: the leaves it comes from, and whether it is
    exactly a leaf (a cast or transpose of one, a whole leaf with a unit axis, a stack)."""
    single = len(eqn.outvars) == 1
    name = eqn.primitive.name
    leaves = frozenset().union(*(i.leaves for i in ins)) if ins else frozenset()
    perm = None
    if single and len(ins) == 1 and ins[0].exact and ins[0].perm is not None:
        if name in {"convert_element_type", "copy", "copy_p"}:
            perm = ins[0].perm
        elif name == "transpose":
            perm = tuple(ins[0].perm[k] for k in eqn.params["permutation"])
    unit = None
    if single and len(ins) == 1 and name in ("broadcast_in_dim", "reshape"):
        unit = _unit(eqn, ins[0])
    stacked = _stacked(eqn, ins) if single else None
    if stacked is not None:
        leaves, perm = stacked
    info = _Info(leaves=leaves, exact=perm is not None, perm=perm, norm=norm, unit=unit)
    return [info] * len(eqn.outvars)


def _linear_kind(eqn, ins: list[_Info], owner: tuple[str, ...], aval) -> tuple[str, tuple, dict]:
    """``(kind, channel axes of the output, fan_in)`` of a linear map: a ``dot_general`` (dense
    or attention), a convolution (or transposed one) or an embedding lookup."""
    name = eqn.primitive.name
    fan_in: dict = {}
    if name == "dot_general":
        kind = "attention" if _is_attention(owner) else "dense"
        axes = _dot_axes(eqn, [i.data for i in ins])
        (lc, rc), _ = eqn.params["dimension_numbers"]
        for k, contract in ((0, lc), (1, rc)):
            _fan_in(fan_in, ins[k], contract)
    elif name == "conv_general_dilated":
        dil = eqn.params.get("lhs_dilation") or ()
        kind = "conv_transpose" if any(d != 1 for d in dil) else "conv"
        dn = eqn.params["dimension_numbers"]
        axes = (dn.out_spec[1],)
        _fan_in(fan_in, ins[1], dn.rhs_spec[1:])
    else:
        kind = "embedding"
        axes = (len(aval.shape) - 1,)
    return kind, axes, fan_in


def _fan_in(out: dict, info: _Info, contract) -> None:
    """Record the leaf axes a linear map contracts, for an operand that is exactly a leaf."""
    if info.data or not info.exact or info.perm is None or len(info.leaves) != 1:
        return
    ((leaf, sliced),) = info.leaves
    if isinstance(leaf, tuple) and not sliced:
        return  # the stacking axis is still there: not the layout of one leaf
    out[leaf] = tuple(sorted(info.perm[d] for d in contract))  # perm is in leaf coordinates


def _stacked(eqn, ins: list[_Info]) -> tuple[frozenset, tuple] | None:
    """``(leaves, perm)`` when ``eqn`` stacks whole leaves along a new axis: the ``stack``
    primitive, or ``concatenate`` along a unit axis inserted into each leaf (``jnp.stack`` in
    jax versions without the primitive; see :func:`_unit`)."""
    name = eqn.primitive.name
    if name not in ("stack", "concatenate") or not ins:
        return None
    parts, perms = [], set()
    for i in ins:
        if name == "concatenate" and i.unit is not None:
            leaf, perm = i.unit
            parts.append((leaf,))
        elif i.exact and i.perm is not None and len(i.leaves) == 1:
            ((leaf, sliced),) = i.leaves
            if sliced or isinstance(leaf, tuple) != (name == "concatenate"):
                return None
            perm = i.perm
            parts.append(leaf if name == "concatenate" else (leaf,))
        else:
            return None
        perms.add(perm)
    if len(perms) != 1:
        return None
    (perm,) = perms
    if name == "stack":
        axis = eqn.params.get("axis", 0)
        perm = (*perm[:axis], _STACK, *perm[axis:])
    elif perm[eqn.params["dimension"]] != _STACK:
        return None
    return frozenset({(sum(parts, ()), ())}), perm


def _unit(eqn, info: _Info) -> tuple | None:
    """``(leaf, perm)`` when ``eqn`` inserts a unit axis into an exact whole leaf
    (``broadcast_in_dim`` or ``reshape``: ``expand_dims``), ``perm`` marking the new axis
    ``_STACK``; such values stack into a stack of leaves by ``concatenate`` along that axis."""
    if not info.exact or info.perm is None or len(info.leaves) != 1:
        return None
    ((leaf, sliced),) = info.leaves
    if sliced or isinstance(leaf, tuple):
        return None
    in_shape = tuple(eqn.invars[0].aval.shape)
    out_shape = tuple(eqn.outvars[0].aval.shape)
    if len(out_shape) != len(in_shape) + 1:
        return None
    name = eqn.primitive.name
    if name == "broadcast_in_dim":
        dims = tuple(eqn.params["broadcast_dimensions"])
        new = [a for a in range(len(out_shape)) if a not in dims]
        if dims != tuple(sorted(dims)) or len(new) != 1 or out_shape[new[0]] != 1:
            return None
        if tuple(out_shape[d] for d in dims) != in_shape:
            return None
        axis = new[0]
    elif name == "reshape" and out_shape == (1, *in_shape):
        axis = 0
    else:
        return None
    return leaf, (*info.perm[:axis], _STACK, *info.perm[axis:])


def _norm_depth(ins: list[_Info]) -> int | None:
    ds = [i.norm for i in ins if i.norm is not None]
    if not ds:
        return None
    d = min(ds) + 1
    return d if d <= _NORM_DEPTH else None


def _aval_size(aval) -> int:
    return int(math.prod(getattr(aval, "shape", ())))


def _data_aval(eqn, ins):
    for v, i in zip(eqn.invars, ins):
        if i.data:
            return v.aval
    return eqn.outvars[0].aval


def _same_axes(info: _Info, shape) -> tuple[int, ...] | None:
    return info.axes if info.axes is not None else ((len(shape) - 1,) if shape else ())


def _is_attention(owner: tuple[str, ...]) -> bool:
    for part in owner:
        p = part.lower()
        if p in _ATTENTION_TOKENS or "attention" in p or "attn" in p:
            return True
    return False


def _dot_axes(eqn, is_data: list[bool]) -> tuple[int, ...]:
    """Output axes of a dot_general that come from its parameter operand's free dimensions."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    ls, rs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    lfree = [d for d in range(len(ls)) if d not in lc and d not in lb]
    rfree = [d for d in range(len(rs)) if d not in rc and d not in rb]
    nb = len(lb)
    if not is_data[1]:  # x @ W: W's free dims come last
        return tuple(range(nb + len(lfree), nb + len(lfree) + len(rfree)))
    return tuple(range(nb, nb + len(lfree)))


def _view_axes(eqn, axes: tuple[int, ...] | None) -> tuple[int, ...] | None:
    if axes is None:
        return None
    name = eqn.primitive.name
    out_shape = eqn.outvars[0].aval.shape
    in_shape = eqn.invars[0].aval.shape
    if name in {"convert_element_type", "copy", "copy_p", "reduce_precision"}:
        return axes
    if name == "transpose":
        perm = eqn.params["permutation"]
        return tuple(sorted(perm.index(a) for a in axes))
    if name == "broadcast_in_dim":
        dims = eqn.params["broadcast_dimensions"]
        return tuple(dims[a] for a in axes)
    if tuple(in_shape) == tuple(out_shape):
        return axes
    # reshape / squeeze / expand_dims: keep trailing channel axes when they survive
    k = len(axes)
    if axes == tuple(range(len(in_shape) - k, len(in_shape))) and tuple(in_shape[-k:]) == tuple(
        out_shape[-k:]
    ):
        return tuple(range(len(out_shape) - k, len(out_shape)))
    return (len(out_shape) - 1,) if out_shape else ()


# ------------------------------------------------------------------------------------ the layers


@dataclasses.dataclass(frozen=True)
class Layer:
    """One row of a tapped model: a layer as the forward pass ran it.

    Attributes:
      name: ``owner`` path joined by ``/`` (``#k`` for the k-th use of the same parameters,
        ``[t]`` for iteration ``t`` of a scan over stacked parameters).
      kind: one of :data:`KINDS`.
      owner: the parameters' parent path.
      weight: ``((leaf, index), ...)``: the leaves (indices into ``jax.tree.leaves(params)``) of
        the weight (the linear map's parameter operand, or a norm's scale) and the index into
        each leaf (``()``, or the scan iterations of a stacked leaf).
      bias: likewise for the parameters added to the output (the bias, a norm's shift).
      fan_in: ``((leaf, axes), ...)``: for weights used directly (up to a transpose or cast) by
        the linear map, the leaf axes it contracts -- the fan-in axes, whatever the layout
        (Flax's ``(in, out)``, PyTorch/Equinox's ``(out, in)``, a conv's ``HWIO``).
      chain: which tapped value holds this layer's output (a key of the values
        :meth:`TapPlan.apply` returns).
      select: one entry per scan enclosing the layer, outermost first, for the leading axes of
        that value: the iteration of this row, or None where the iterations are positions of
        the same layer (a weight shared across them).
      batch_axis: the example axis of the (selected) output, or None if it has none.
      channel_axes: the output's channel (feature) axes; the rest are positions.
      shape: shape of the (selected) output.
    """

    name: str
    kind: str
    owner: tuple[str, ...]
    weight: tuple[tuple[int, tuple[int, ...]], ...]
    bias: tuple[tuple[int, tuple[int, ...]], ...]
    fan_in: tuple[tuple[int, tuple[int, ...]], ...]
    chain: int
    select: tuple[int | None, ...]
    batch_axis: int | None
    channel_axes: tuple[int, ...]
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class TapPlan:
    """The layers of ``fn`` and how to tap them (from :func:`trace`; static, hashable by id).

    ``apply(params, *args, taps=None)`` evaluates ``fn(params, *args)`` with ``taps[c]`` added to
    every tapped value ``c`` (zeros when ``None``) and returns ``(outputs, values)``, both as
    the flat lists of the traced function's outputs and of the tapped values by chain id.
    """

    layers: tuple[Layer, ...]
    chain_avals: tuple[jax.ShapeDtypeStruct, ...]
    closed: jcore.ClosedJaxpr = dataclasses.field(repr=False)
    in_tree: jax.tree_util.PyTreeDef = dataclasses.field(repr=False)
    out_tree: jax.tree_util.PyTreeDef = dataclasses.field(repr=False)
    taps: dict = dataclasses.field(repr=False)
    inner: dict = dataclasses.field(repr=False)

    def output(self, values: dict, layer: Layer) -> jax.Array:
        """The output of ``layer`` from the tapped values (or their gradients)."""
        v = values[layer.chain]
        idx = tuple(slice(None) if t is None else t for t in layer.select)
        return v[idx] if idx else v

    def zeros(self) -> dict[int, jax.Array]:
        """Zero perturbations, one per tapped value."""
        return {i: jnp.zeros(a.shape, a.dtype) for i, a in enumerate(self.chain_avals)}

    def apply(self, params, *args, taps: dict | None = None):
        taps = self.zeros() if taps is None else taps
        flat, tree = jax.tree.flatten((params, *args))
        if tree != self.in_tree:
            raise ValueError(
                f"TapPlan.apply: inputs have structure {tree}, the plan was traced for "
                f"{self.in_tree}"
            )
        outs, values = _evaluate(
            self.closed.jaxpr, list(self.closed.consts), flat, (), self.taps, self.inner, taps
        )
        return jax.tree.unflatten(self.out_tree, outs), values


def _evaluate(jaxpr, consts, args, pos, taps, inner, probes):
    env: dict = {}
    values: dict[int, jax.Array] = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, a in zip(jaxpr.constvars, consts):
        env[v] = a
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for i, eqn in enumerate(jaxpr.eqns):
        site = (*pos, i)
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in _INLINE and "jaxpr" in eqn.params:
            closed = eqn.params["jaxpr"]
            outs, sub = _evaluate(
                closed.jaxpr, list(closed.consts), invals, site, taps, inner, probes
            )
            values.update(sub)
        elif name in _REMAT and "jaxpr" in eqn.params and inner.get(site):
            ids = inner[site]
            body = eqn.params["jaxpr"]

            def fn(invals, ps, body=body, site=site):
                return _evaluate(body, [], invals, site, taps, inner, ps)

            outs, sub = jax.checkpoint(
                fn,
                prevent_cse=eqn.params.get("prevent_cse", True),
                policy=eqn.params.get("policy"),
            )(invals, {k: probes[k] for k in ids})
            values.update(sub)
        elif name == "scan" and inner.get(site):
            outs, sub = _evaluate_scan(eqn, invals, site, taps, inner, probes)
            values.update(sub)
        else:
            outs = _bind(eqn, invals)
        cid = taps.get(site)
        if cid is not None:
            z = outs[0] + probes[cid].astype(outs[0].dtype)
            values[cid] = z
            outs = [z]
        for v, o in zip(eqn.outvars, outs):
            if not isinstance(v, jcore.DropVar):
                env[v] = o
    return [read(v) for v in jaxpr.outvars], values


def _bind(eqn, invals: list) -> list:
    """``eqn.primitive.bind`` as :func:`jax.core.eval_jaxpr` does it (jax >= 0.7 and older)."""
    bound = eqn.primitive.get_bind_params(eqn.params)
    subfuns, params = ([], bound) if isinstance(bound, dict) else bound
    ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
    if ctx is not None:
        with ctx:
            outs = eqn.primitive.bind(*subfuns, *invals, **params)
    else:
        outs = eqn.primitive.bind(*subfuns, *invals, **params)
    return outs if eqn.primitive.multiple_results else [outs]


def _open(jaxpr) -> tuple[Any, list]:
    """(Jaxpr, consts) of a ClosedJaxpr or an open Jaxpr (jax >= 0.11 gives scan an open one)."""
    if hasattr(jaxpr, "consts"):
        return jaxpr.jaxpr, list(jaxpr.consts)
    return jaxpr, []


def _scan_counts(params: dict) -> tuple[int, int]:
    """(number of consts, number of carries) of a scan.

    ``num_consts``/``num_carry`` (jax <= 0.10) or the flat trees ``ft_in`` of (consts, carry,
    xs), whose ``len`` counts leaves (jax >= 0.11).
    """
    if "num_consts" in params:
        return params["num_consts"], params["num_carry"]
    ft_in = params["ft_in"]
    consts, carry, _ = ft_in.unpack() if hasattr(ft_in, "unpack") else ft_in
    return len(consts), len(carry)


def _evaluate_scan(eqn, invals, site, taps, inner, probes):
    p = eqn.params
    nc, nk = _scan_counts(p)
    body_jaxpr, body_consts = _open(p["jaxpr"])
    consts, init, xs = invals[:nc], invals[nc : nc + nk], invals[nc + nk :]
    ids = inner[site]

    def body(carry, xt):
        x_t, ps = xt
        outs, vals = _evaluate(
            body_jaxpr, body_consts, [*consts, *carry, *x_t], site, taps, inner, ps
        )
        return outs[:nk], (outs[nk:], {k: vals[k] for k in ids})

    carry, (ys, vals) = lax.scan(
        body,
        init,
        (xs, {k: probes[k] for k in ids}),
        length=p["length"],
        reverse=p["reverse"],
        unroll=p.get("unroll", 1),
    )
    return [*carry, *ys], vals


# ----------------------------------------------------------------------------------------- trace


def _analyse(closed, paths, param_avals: list, n_data: int):
    n_params = len(param_avals)
    a = _Analysis(paths)
    jaxpr = closed.jaxpr
    infos = [_CONST] * len(jaxpr.constvars)
    infos += [
        _Info(leaves=frozenset({(i, ())}), exact=True, perm=tuple(range(len(a.shape))))
        for i, a in enumerate(param_avals)
    ]
    infos += [_Info(data=True)] * n_data
    extra = len(jaxpr.invars) - n_params - n_data
    infos += [_CONST] * extra
    env_in = infos[len(jaxpr.constvars) :]
    # constvars are bound by ClosedJaxpr; treat them as constants
    a_jaxpr = jaxpr
    _, rows = a.run(_WithConsts(a_jaxpr), [*([_CONST] * len(jaxpr.constvars)), *env_in], (), ())
    return a, rows


class _WithConsts:
    """A Jaxpr view whose invars are constvars + invars (so the walk binds both)."""

    def __init__(self, jaxpr):
        self.invars = [*jaxpr.constvars, *jaxpr.invars]
        self.eqns = jaxpr.eqns
        self.outvars = jaxpr.outvars


def _grow(x: chex.ArrayTree) -> chex.ArrayTree:
    """Abstract inputs with one more example along axis 0 of every leaf."""

    def g(a):
        shape = tuple(a.shape)
        if not shape:
            raise ValueError("every leaf of x must have a batch axis 0; got a scalar")
        return jax.ShapeDtypeStruct((shape[0] + 1, *shape[1:]), a.dtype)

    return jax.tree.map(g, x)


def _abstract(tree: chex.ArrayTree) -> chex.ArrayTree:
    def shape_dtype(a):
        if isinstance(a, jax.ShapeDtypeStruct):
            return a
        return jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a))

    return jax.tree.map(shape_dtype, tree)


def _check_data(x: chex.ArrayTree) -> None:
    """``x``'s leaves are numeric arrays with a non-empty example axis 0."""
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise ValueError(f"x must hold at least one array, got {x!r:.80}")
    for leaf in leaves:
        if isinstance(leaf, jax.ShapeDtypeStruct):
            shape, dtype = leaf.shape, leaf.dtype
        else:
            try:
                shape, dtype = jnp.shape(leaf), jnp.result_type(leaf)
            except TypeError:
                raise TypeError(
                    f"x must be an array (or a pytree of arrays) of numbers, got {leaf!r:.80}"
                ) from None
        if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
            raise TypeError(f"x must hold numbers, got dtype {dtype}")
        if len(shape) == 0 or shape[0] == 0:
            raise ValueError(
                f"x must have a non-empty example axis 0, got an array of shape {tuple(shape)}"
            )


def trace(
    fn: Callable[..., Any],
    params: chex.ArrayTree,
    x: chex.ArrayTree,
    *rest: Any,
    paths: Sequence[tuple[str, ...]] | None = None,
) -> TapPlan:
    """Trace ``fn(params, x, *rest)`` and find its layers (see the module docstring).

    Args:
      fn: any JAX-traceable function; its outputs may be any pytree.
      params: the parameters (a pytree); layers are the uses of these leaves on data.
      x: the data (a pytree whose leaves have the example axis 0).
      rest: further inputs that are neither parameters nor data (e.g. model state, keys).
      paths: names of the leaves of ``params`` (default :func:`leaf_paths`).

    Returns:
      A :class:`TapPlan`. Only shapes and dtypes of the inputs are used.
    """
    _check_data(x)
    p_abs, x_abs, r_abs = _abstract(params), _abstract(x), _abstract(rest)
    n_params = len(jax.tree.leaves(p_abs))
    n_data = len(jax.tree.leaves(x_abs))
    paths = leaf_paths(params) if paths is None else tuple(paths)
    if len(paths) != n_params:
        raise ValueError(f"paths has {len(paths)} entries for {n_params} parameter leaves")
    closed, in_tree, out_tree = _make_jaxpr(fn, p_abs, x_abs, *r_abs)
    param_avals = jax.tree.leaves(p_abs)
    a, rows = _analyse(closed, paths, param_avals, n_data)
    # the example axis: trace once more with B + 1 examples and compare the tapped shapes
    try:
        closed_big = _make_jaxpr(fn, p_abs, _grow(x_abs), *r_abs)[0]
        a_big, _ = _analyse(closed_big, paths, param_avals, n_data)
        same = [(c.site, c.owner, c.kind) for c in a.chains] == [
            (c.site, c.owner, c.kind) for c in a_big.chains
        ]
    except Exception:  # a model that only runs at this batch size
        same = False
    batch = jax.tree.leaves(x_abs)[0].shape[0]
    batch_axes = [_batch_axis(c, a_big.chains[c.id] if same else None, batch) for c in a.chains]
    counts: dict[str, int] = {}
    seen: dict[tuple, str] = {}
    layers = [_layer(a, r, _row_name(a, r, counts, seen), batch_axes[r.chain]) for r in rows]
    chain_avals = tuple(
        jax.ShapeDtypeStruct(
            (*(a.levels[lv].length for lv in c.levels), *c.aval.shape), c.aval.dtype
        )
        for c in a.chains
    )
    return TapPlan(
        layers=tuple(layers),
        chain_avals=chain_avals,
        closed=closed,
        in_tree=in_tree,
        out_tree=out_tree,
        taps=dict(a.taps),
        inner={k: list(v) for k, v in a.inner.items()},
    )


def _make_jaxpr(
    fn: Callable, *args: Any
) -> tuple[jcore.ClosedJaxpr, jax.tree_util.PyTreeDef, jax.tree_util.PyTreeDef]:
    """``(closed jaxpr, input treedef, output treedef)`` of ``fn(*args)`` on flat inputs and
    outputs (``args`` abstract)."""
    flat_in, in_tree = jax.tree.flatten(args)
    out_trees = []

    def flat_fn(*flat):
        out, tree = jax.tree.flatten(fn(*jax.tree.unflatten(in_tree, list(flat))))
        out_trees.append(tree)
        return out

    closed = jax.make_jaxpr(flat_fn)(*flat_in)
    return closed, in_tree, out_trees[0]


def _batch_axis(c: _Chain, big: _Chain | None, batch: int) -> int | None:
    """The example axis of chain ``c``'s output: the axis that grew in the trace with one more
    example (``big``, that trace's chain), or without it the leading axis if it has ``batch``
    entries."""
    shape = tuple(c.aval.shape)
    if big is not None:
        diff = [k for k, (s, t) in enumerate(zip(shape, tuple(big.aval.shape))) if s != t]
        return diff[0] if diff else None
    return 0 if shape and shape[0] == batch else None


def _stack_iteration(c: _Chain, its: dict) -> int | None:
    """For a scan over a stack of leaves, the iteration of this row (it selects leaf t)."""
    return its[c.stack[0]] if c.stack is not None and c.stack[0] in its else None


def _row_name(a: _Analysis, r: _Row, counts: dict[str, int], seen: dict[tuple, str]) -> str:
    """The row's name: its owner path, ``#k`` for the k-th use of the same parameters, ``[t]``
    per scan iteration (but the stack's own, which names the leaf)."""
    c = a.chains[r.chain]
    its = dict(r.index)
    stack_t = _stack_iteration(c, its)
    key = (r.chain, stack_t)
    if key not in seen:
        base = a.name(c, None if stack_t is None else c.stack[1][stack_t])
        counts[base] = counts.get(base, 0) + 1
        seen[key] = base if counts[base] == 1 else f"{base}#{counts[base]}"
    name = seen[key]
    if its:
        name += "".join(
            f"[{its[lv]}]" for lv in c.levels if lv in its and lv != (c.stack or (None,))[0]
        )
    return name


def _pick(leaf, sliced, its: dict) -> list[tuple[int, tuple]]:
    """(leaf index, index into it) entries of one leaf entry at iterations ``its``."""
    if not isinstance(leaf, tuple):
        return [(leaf, tuple(its[lv] for lv in sliced if lv in its))]
    if sliced and sliced[0] in its:
        return [(leaf[its[sliced[0]]], tuple(its[lv] for lv in sliced[1:] if lv in its))]
    return [(i, ()) for i in leaf]


def _leaf_index(items, its: dict) -> tuple:
    return tuple(sorted(e for leaf, sliced in items for e in _pick(leaf, sliced, its)))


def _layer(a: _Analysis, r: _Row, name: str, ba: int | None) -> Layer:
    """The :class:`Layer` of row ``r`` (named ``name``; its chain's example axis ``ba``)."""
    c = a.chains[r.chain]
    its = dict(r.index)
    stack_t = _stack_iteration(c, its)
    select = tuple(its.get(lv) for lv in c.levels)
    n_pos = sum(t is None for t in select)
    fan_in = {}
    for leaf, axes in c.fan_in.items():
        sliced = [s for lf, s in (*c.weight, *c.bias) if lf == leaf]
        for i, _ in _pick(leaf, sliced[0] if sliced else (), its):
            fan_in.setdefault(i, axes)
    body_shape = tuple(c.aval.shape)
    positions = tuple(a.levels[lv].length for lv in c.levels if lv not in its)
    return Layer(
        name=name,
        kind=c.kind,
        owner=c.owner if stack_t is None else a.paths[c.stack[1][stack_t]][:-1],
        weight=_leaf_index(c.weight, its),
        bias=_leaf_index(c.bias, its),
        fan_in=tuple(sorted(fan_in.items())),
        chain=c.id,
        select=select,
        batch_axis=None if ba is None else ba + n_pos,
        channel_axes=tuple(ax + n_pos for ax in (c.axes or (len(body_shape) - 1,))),
        shape=(*positions, *body_shape),
    )
