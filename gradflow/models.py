r"""Flax linen models whose every layer exposes its pre-activations and activations.

The networks the seed notes reason about, as :mod:`flax.linen` modules with the usual functional
``init`` / ``apply``:

* :class:`Chain` -- one neuron per layer, the seeds' network (Nielsen ch. 5):
  :math:`a_0 = x,\ z_j = w_j a_{j-1} + b_j,\ a_j = \phi(z_j)`; its parameters convert to and from
  the ``(w, b)`` arrays of :mod:`gradflow.analytic` with :func:`chain_params` /
  :func:`chain_weights`.
* :class:`MLP` -- hidden widths, a linear readout, activation and initializers by name, optional
  BatchNorm (Ioffe & Szegedy 2015) or LayerNorm, optional identity skips (He et al. 2016).
* :class:`DeepLinear` -- :math:`y = W_L \cdots W_1 x` (Saxe et al. 2014; seed 002's ``W = 2I``).
* :class:`RNN` -- a vanilla (Elman) or LSTM (Hochreiter & Schmidhuber 1997) recurrent net unrolled
  over time with :func:`flax.linen.scan` for backpropagation through time (Pascanu et al. 2013).

**The layer protocol.** Every feed-forward model is a stack of :class:`DenseBlock` s named
``"dense_0" ... "dense_{L-1}"`` in forward order, the readout last (``model.layer_names()``). Block
``l`` computes

.. math::

    z_l = h_{l-1} W_l + b_l, \qquad u_l = \mathrm{norm}(z_l) \ (\text{or } z_l),
    \qquad h_l = \phi(u_l) \ (+\, h_{l-1} \text{ with a skip}),

with kernels ``(fan_in, fan_out)`` as in :class:`flax.linen.Dense`, and exposes

* ``z_l`` through :meth:`flax.linen.Module.perturb` as ``perturbations[name]["z"]`` (so
  :math:`\partial C/\partial z_l`, Nielsen's :math:`\delta^l` up to the batch mean, is the gradient
  with respect to that zero perturbation), and
* through :meth:`flax.linen.Module.sow` in the ``"intermediates"`` collection:
  ``"preact"`` (:math:`u_l`, the argument of :math:`\phi`), ``"slope"``
  (:math:`\phi'(u_l) / \sup|\phi'|`, in closed form from :mod:`gradflow.activations`) and ``"act"``
  (:math:`h_l`, what the next layer sees).

Neither changes the outputs. Perturbations are created only when the ``"perturbations"`` collection
is mutable in ``apply`` (never by ``init``, so ``model.init`` returns only ``params`` and, with
BatchNorm, ``batch_stats``, and the variables work for any batch size); :func:`perturbations`
builds the zeros for a given batch. :mod:`gradflow.probes` reads all of this in one jitted call.

Usage::

    model = gf.models.MLP(widths=(30, 30, 30, 30), out=10, activation="sigmoid",
                          kernel_init="lecun_normal", bias_init="normal")
    variables = model.init(jax.random.key(0), x)            # {"params": ...}
    logits = model.apply(variables, x)
    model.layer_names()                                     # ("dense_0", ..., "dense_4")

Every module accepts ``train`` as a keyword of ``__call__`` (used by BatchNorm: batch statistics
and ``mutable=["batch_stats"]`` when ``True``, running averages when ``False``).

**Deep stacks compile once.** In :class:`MLP`, :class:`DeepLinear` and :class:`Chain`, a run of at
least :data:`SCAN_MIN_RUN` consecutive identical square hidden blocks is traced and compiled once,
not once per layer, so compile time stays flat as the depth grows: staged (under ``jit`` or
``eval_shape``) ``init`` draws each initializer once for the whole run, over the keys Flax gives
each layer (the same numbers as Flax's layer-by-layer init, bit for bit; run op by op it draws layer
by layer, as Flax does), and ``apply`` runs the block as the body of a :func:`jax.lax.scan` over the
layers' stacked variables. The variables keep the layout above (one ``"dense_i"`` entry per layer,
in ``params`` and ``batch_stats``), the ``"intermediates"`` are per layer, and
:mod:`gradflow.probes` reports every layer of the run on its own; with a ``"perturbations"``
collection in use the blocks run one by one.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from gradflow import _checks
from gradflow import activations as _activations
from gradflow import initializers as _initializers

if TYPE_CHECKING:
    from flax.core.scope import LazyRng

__all__ = [
    "CELLS",
    "MLP",
    "NORMS",
    "RNN",
    "SCAN_MIN_RUN",
    "Chain",
    "DeepLinear",
    "DenseBlock",
    "LSTMCell",
    "chain_params",
    "chain_weights",
    "perturbations",
]

Array = jax.Array
InitSpec = str | Callable[..., Array]
ActSpec = str | _activations.Activation

#: Normalisation layers a :class:`DenseBlock` / :class:`MLP` accepts (``None`` for none).
NORMS: tuple[str, ...] = ("batch", "layer")
#: Recurrent cells :class:`RNN` accepts.
CELLS: tuple[str, ...] = ("vanilla", "lstm")

#: BatchNorm hyperparameters (Flax defaults are momentum 0.99; 0.9 as in Ioffe & Szegedy 2015).
BATCHNORM_MOMENTUM = 0.9
BATCHNORM_EPSILON = 1e-5


# ----------------------------------------------------------------------------------- validation


def _positive_int(owner: str, field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {field} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{owner}: {field} must be a positive int, got {value}")
    return int(value)


def _activation(owner: str, spec: ActSpec) -> _activations.Activation:
    try:
        return _activations.get(spec)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{owner}: {e}") from None


def _init(owner: str, field: str, spec: InitSpec) -> Callable[..., Array]:
    if isinstance(spec, str):
        try:
            return _initializers.get(spec)
        except ValueError as e:
            raise ValueError(f"{owner}: {field}: {e}") from None
    if callable(spec):
        return spec
    raise TypeError(
        f"{owner}: {field} must be an initializer name (see gradflow.initializers.names()) or a "
        f"callable init(key, shape, dtype), got {spec!r}"
    )


def _norm(owner: str, spec: Any) -> None:
    if spec is not None and spec not in NORMS:
        raise ValueError(
            f"{owner}: unknown norm {spec!r}; valid: None, {', '.join(map(repr, NORMS))}"
        )


def _widths(owner: str, widths: Any) -> tuple[int, ...]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise TypeError(f"{owner}: widths must be a sequence of positive ints, got {widths!r}")
    if len(widths) == 0:
        raise ValueError(
            f"{owner}: widths is empty; give at least one hidden width, e.g. widths=(30,)"
        )
    return tuple(_positive_int(owner, f"widths[{i}]", w) for i, w in enumerate(widths))


# ----------------------------------------------------------------------------------- the block


class DenseBlock(nn.Module):
    r"""One layer: affine map, optional normalisation, activation, optional identity skip.

    .. math::

        z = x W + b, \quad u = \mathrm{norm}(z) \text{ (or } z), \quad
        h = \phi(u) \ (+\, x \text{ if } \texttt{residual})

    ``z`` is perturbed as ``"z"``; ``"preact"`` (:math:`u`), ``"slope"``
    (:math:`\phi'(u)/\sup|\phi'|`) and ``"act"`` (:math:`h`) are sown into ``"intermediates"``
    (see the module docstring). Parameters: ``kernel`` ``(fan_in, features)``, ``bias``
    ``(features,)`` (if ``use_bias``), and the norm's ``scale``/``bias`` under ``"norm"``.

    Attributes:
      features: output width.
      activation: a :mod:`gradflow.activations` name or :class:`~gradflow.activations.Activation`.
      kernel_init, bias_init: a :mod:`gradflow.initializers` name or ``init(key, shape, dtype)``.
      use_bias: whether the affine map has a bias :math:`b`.
      norm: ``None``, ``"batch"`` (BatchNorm, momentum 0.9, eps 1e-5) or ``"layer"`` (LayerNorm),
        applied to :math:`z` before :math:`\phi` (Ioffe & Szegedy 2015).
      residual: add the block input to its output (He et al. 2016); needs ``fan_in == features``.
    """

    features: int
    activation: ActSpec = "linear"
    kernel_init: InitSpec = "lecun_normal"
    bias_init: InitSpec = "zeros"
    use_bias: bool = True
    norm: str | None = None
    residual: bool = False

    def __post_init__(self):
        owner = type(self).__name__
        _positive_int(owner, "features", self.features)
        _activation(owner, self.activation)
        _init(owner, "kernel_init", self.kernel_init)
        _init(owner, "bias_init", self.bias_init)
        _norm(owner, self.norm)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        owner = type(self).__name__
        act = _activation(owner, self.activation)
        fan_in = x.shape[-1]
        if self.residual and fan_in != self.features:
            raise ValueError(
                f"{owner}: residual=True needs input width == features, got {fan_in} != "
                f"{self.features}"
            )
        kernel = self.param(
            "kernel", _init(owner, "kernel_init", self.kernel_init), (fan_in, self.features)
        )
        z = jnp.matmul(x, kernel)
        if self.use_bias:
            bias = self.param("bias", _init(owner, "bias_init", self.bias_init), (self.features,))
            z = z + bias
        if not self.is_initializing():
            z = self.perturb("z", z)
        if self.norm == "batch":
            u = nn.BatchNorm(
                use_running_average=not train,
                momentum=BATCHNORM_MOMENTUM,
                epsilon=BATCHNORM_EPSILON,
                name="norm",
            )(z)
        elif self.norm == "layer":
            u = nn.LayerNorm(name="norm")(z)
        else:
            u = z
        h = act.fn(u)
        if self.residual:
            h = x + h
        if self.is_mutable_collection("intermediates"):
            sup = act.sup_grad if act.sup_grad > 0 else 1.0
            self.sow("intermediates", "preact", u)
            self.sow("intermediates", "slope", act.grad(u) / sup)
            self.sow("intermediates", "act", h)
        return h


#: Runs of at least this many identical square hidden blocks run as one :func:`jax.lax.scan`
#: (shorter runs are unrolled; see :class:`_Stack`).
SCAN_MIN_RUN = 2


def _flax_key(rng: LazyRng | Array, *suffix: str | int) -> Array:
    """Flax's key for ``rng`` folded with ``suffix`` (what ``Scope.make_rng`` returns)."""
    from flax.core.scope import LazyRng

    return LazyRng.create(rng, *suffix).as_jax_rng()


def _fold_data(suffix: tuple) -> int:
    """The 32-bit word Flax folds into its root key for a static ``suffix`` (the SHA-1 of the
    names and counters, flax.core.scope._fold_in_static), so that many keys can be folded in one
    vectorised :func:`jax.random.fold_in`. Checked against Flax's own keys in the tests."""
    import hashlib

    from flax import config as flax_config

    m = hashlib.sha1()
    for x in suffix:
        if flax_config.flax_fix_rng_separator:
            m.update(b"\00")
        if isinstance(x, str):
            m.update(x.encode("utf-8"))
        else:
            m.update(int(x).to_bytes((int(x).bit_length() + 7) // 8, byteorder="big"))
    return int.from_bytes(m.digest()[:4], byteorder="big")


def _child_keys(rng: LazyRng, names: Sequence[str], counter: int) -> Array:
    """The keys ``Scope.make_rng("params")`` gives the ``counter``-th parameter of each child
    ``names[t]`` of a scope whose params RNG is ``rng`` (a ``LazyRng``): one fold per child,
    vectorised. Bit-identical to Flax's sequential derivation (:func:`_flax_key`)."""
    data = jnp.asarray([_fold_data((*rng.suffix, n, counter)) for n in names], dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng.rng, data)


def _unstack(tree: chex.ArrayTree, n: int) -> list[chex.ArrayTree]:
    """The ``n`` trees of ``tree``'s leaves along axis 0 (a run's per-layer variables), each leaf
    cut with one :func:`jax.lax.unstack` (one operation per leaf, not one per layer, which keeps
    tracing a deep run cheap)."""
    leaves, treedef = jax.tree.flatten(tree)
    if hasattr(jax.lax, "unstack"):
        cols = [jax.lax.unstack(leaf) for leaf in leaves]
    else:  # pragma: no cover - JAX without lax.unstack
        cut = jax.lax.index_in_dim
        cols = [[cut(leaf, t, keepdims=False) for t in range(n)] for leaf in leaves]
    return [treedef.unflatten([col[t] for col in cols]) for t in range(n)]


def _staged() -> bool:
    """Whether JAX is staging a program out (``jit``, ``eval_shape``, a loop body) rather than
    running it op by op: staged, even a constant is a tracer (omnistaging)."""
    return isinstance(jnp.zeros(()), jax.core.Tracer)


def _fixed(value: Array) -> Callable[..., Array]:
    """An initializer that returns ``value`` (drawn beforehand, see :class:`_Stack`)."""

    def init(key, shape, dtype=None):
        del key
        if tuple(shape) != tuple(value.shape):
            raise ValueError(f"expected shape {tuple(value.shape)}, got {tuple(shape)}")
        return value if dtype is None else value.astype(dtype)

    return init


class _Stack(nn.Module):
    """Shared behaviour of the feed-forward models: blocks ``dense_0 ... dense_{L-1}``.

    The variables are always one :class:`DenseBlock` per layer (``params["dense_i"]``, and
    ``batch_stats["dense_i"]`` with BatchNorm). A *run* of consecutive identical square hidden
    blocks (same spec, input width == ``features``) of at least :data:`SCAN_MIN_RUN` layers is
    compiled once instead of once per layer:

    * ``init`` draws the run's kernels (and biases) with one call of the initializer inside a
      loop over the keys Flax would give each layer (the same numbers, bit for bit) and runs its
      forward pass as the scan below, so neither grows the traced program with depth;
    * ``apply`` stacks the run's per-layer parameters (and BatchNorm statistics) and runs the
      block as the body of a :func:`jax.lax.scan`; updated ``batch_stats`` and the sown
      ``"intermediates"`` are written back per layer, so the collections a caller sees are those
      of the unrolled network. When a ``"perturbations"`` collection is in use (mutable, or
      passed in), the blocks run unrolled, each perturbing its own ``z``.
    """

    def _blocks(self) -> list[dict]:  # pragma: no cover - overridden
        raise NotImplementedError

    def layer_names(self) -> tuple[str, ...]:
        """Names of the Dense layers in forward order, the readout last."""
        return tuple(f"dense_{i}" for i in range(len(self._blocks())))

    def layer_activations(self) -> tuple[_activations.Activation, ...]:
        """The :class:`~gradflow.activations.Activation` of each layer, in forward order."""
        return tuple(_activations.get(b["activation"]) for b in self._blocks())

    def _segments(self, width: int) -> list[tuple[int, int, dict]]:
        """``(start, stop, spec)``: maximal runs of identical square blocks, and single blocks."""
        specs = []
        for spec in self._blocks():
            spec = dict(spec)
            if spec.pop("residual_if_match", False):
                spec["residual"] = width == spec["features"]
            specs.append((width == spec["features"], spec))
            width = spec["features"]
        segments: list[tuple[int, int, dict]] = []
        for i, (square, spec) in enumerate(specs):
            last = segments[-1] if segments else None
            if last and square and specs[i - 1][0] and last[2] == spec and last[1] == i:
                segments[-1] = (last[0], i + 1, spec)
            else:
                segments.append((i, i + 1, spec))
        return segments

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        h = x
        for start, stop, spec in self._segments(x.shape[-1]):
            names = [f"dense_{i}" for i in range(start, stop)]
            if len(names) < SCAN_MIN_RUN:
                unrolled = True
            elif self.is_initializing():
                unrolled = not _staged()
            else:
                unrolled = self._unrolled(spec, names, train)
            if unrolled:
                for name in names:
                    h = DenseBlock(**spec, name=name)(h, train=train)
            elif self.is_initializing():
                h = self._init_run(spec, names, h, train)
            else:
                h = self._scan_run(spec, names, h, train)
        return h

    def _unrolled(self, spec: dict, names: list[str], train: bool) -> bool:
        """Whether a run must be unrolled: perturbations in use, or BatchNorm in training mode
        without mutable statistics (so Flax raises its own error)."""
        if self.is_mutable_collection("perturbations") or any(
            self.has_variable("perturbations", n) for n in names
        ):
            return True
        return (
            spec.get("norm") == "batch" and train and not self.is_mutable_collection("batch_stats")
        )

    def _init_run(self, spec: dict, names: list[str], h: Array, train: bool) -> Array:
        """Create the run's blocks without tracing them once per layer: each initializer draws
        once for the whole run (:func:`jax.lax.map` over the keys Flax derives for each block;
        ``Scope.make_rng`` counts a block's parameters: kernel 1, bias 2), one block's
        :meth:`~flax.linen.Module.init` runs inside that loop to build the rest of its variables
        (the norm's constant ``scale``/``bias`` and statistics), each layer's variables are put
        under its own name, and the forward pass runs as the scan that ``apply`` uses."""
        if not self.scope.has_rng("params"):  # pragma: no cover - init always has params
            for name in names:
                h = DenseBlock(**spec, name=name)(h, train=train)
            return h
        rng = self.scope.rngs["params"]
        block = DenseBlock(**spec, parent=None)
        shape = (h.shape[-1], block.features)
        kinit = _init("DenseBlock", "kernel_init", block.kernel_init)
        binit = _init("DenseBlock", "bias_init", block.bias_init) if block.use_bias else None
        # one draw per layer inside a loop (lax.map), not a vmap: the loop's output is a
        # buffer, so each layer's parameter is a plain slice of it; a vmapped draw is fused
        # (erf_inv and all) into every layer's slice, and the program grows with depth again
        keys = {"kernel_init": _child_keys(rng, names, 1)}
        if binit is not None:
            keys["bias_init"] = _child_keys(rng, names, 2)
        mutable = ["params", *(["batch_stats"] if block.norm == "batch" else [])]

        shapes = {}

        def one(keys):
            drawn = {"kernel_init": _fixed(kinit(keys["kernel_init"], shape))}
            if binit is not None:
                drawn["bias_init"] = _fixed(binit(keys["bias_init"], shape[1:]))
            # the keys given here reach only the norm's constant initializers
            made = block.clone(**drawn).init(keys["kernel_init"], h, train=train, mutable=mutable)
            # each layer's values leave this loop flat: XLA:CPU then draws a layer's numbers in
            # one vectorised loop (a (30, 30) kernel's inner loop of 30 leaves 6 scalar steps
            # per row: the draw took twice as long)
            shapes["tree"] = jax.tree.map(lambda a: a.shape, made)
            return jax.tree.map(lambda a: a.reshape(-1), made)

        flat = jax.lax.map(one, keys)
        # back to each layer's shapes in a second loop (a copy), not by reshaping the stack:
        # under a vmap over seeds that reshape is a transpose, and the per-layer slices of it
        # no longer fold back into the stack apply builds, so the program grows with depth
        stacked = jax.lax.map(
            lambda layer: jax.tree.map(lambda a, shp: a.reshape(shp), layer, shapes["tree"]), flat
        )
        for col, tree in stacked.items():
            for name, layer in zip(names, _unstack(tree, len(names)), strict=True):
                self.put_variable(col, name, layer)
        return self._scan_run(spec, names, h, train, stacked=stacked)

    def _scan_run(
        self, spec: dict, names: list[str], h: Array, train: bool, stacked: dict | None = None
    ) -> Array:
        """Run the blocks ``names`` as one :func:`jax.lax.scan` over their stacked variables
        (``stacked``: already stacked by :meth:`_init_run`, whose statistics stay as initialised,
        as Flax's BatchNorm leaves them during ``init``)."""
        block = DenseBlock(**spec, parent=None)
        if stacked is None:
            cols = ["params"] + (["batch_stats"] if block.norm == "batch" else [])
            per_layer = {col: [self.get_variable(col, n) for n in names] for col in cols}
            if any(v is None for vs in per_layer.values() for v in vs):
                # missing variables: let the blocks raise Flax's own error
                for name in names:
                    h = DenseBlock(**spec, name=name)(h, train=train)
                return h
            stacked = {
                col: jax.tree.map(lambda *a: jnp.stack(a), *vs) for col, vs in per_layer.items()
            }
        mutable = []
        if block.norm == "batch" and train:
            mutable.append("batch_stats")  # needed to run; not written back during init
        if self.is_mutable_collection("intermediates"):
            mutable.append("intermediates")

        def body(h, variables):
            if not mutable:
                return block.apply(variables, h, train=train), {}
            return block.apply(variables, h, train=train, mutable=mutable)

        first = jax.tree.map(lambda a: jax.lax.index_in_dim(a, 0, keepdims=False), stacked)
        out = jax.eval_shape(body, h, first)[0]
        if (out.shape, out.dtype) != (h.shape, h.dtype):
            # the input's dtype changes in the first block (e.g. integer inputs): run it alone
            h = DenseBlock(**spec, name=names[0])(h, train=train)
            rest = names[1:]
            if len(rest) < SCAN_MIN_RUN:
                for name in rest:
                    h = DenseBlock(**spec, name=name)(h, train=train)
                return h
            return self._scan_run(spec, rest, h, train)
        h, updates = jax.lax.scan(body, h, stacked)
        if "batch_stats" in updates and not self.is_initializing():
            stats = _unstack(updates["batch_stats"], len(names))
            for name, layer in zip(names, stats, strict=True):
                self.put_variable("batch_stats", name, layer)
        if "intermediates" in updates:
            sown_per_layer = _unstack(updates["intermediates"], len(names))
            for name, sown in zip(names, sown_per_layer, strict=True):
                old = self.get_variable("intermediates", name) or {}
                self.put_variable(
                    "intermediates", name, {k: (*old.get(k, ()), *vs) for k, vs in sown.items()}
                )
        return h


class Chain(_Stack):
    r"""One neuron per layer (the seed notes' network; Nielsen ch. 5).

    .. math::

        a_0 = x, \quad z_j = w_j a_{j-1} + b_j, \quad a_j = \phi(z_j), \quad j = 1..L,

    output :math:`a_L` (the last neuron has the activation too, as in the seeds:
    :math:`\partial C/\partial b_1 = \phi'(z_1) w_2 \phi'(z_2) \cdots w_L \phi'(z_L)\,
    \partial C/\partial a_L`). Input and output have shape ``(..., 1)``. Layer ``j`` (1-based
    in the formula) is ``"dense_{j-1}"`` with kernel ``(1, 1)`` and bias ``(1,)``;
    :func:`chain_params` / :func:`chain_weights` convert to the ``(w, b)`` arrays of
    :mod:`gradflow.analytic`.

    Attributes:
      depth: number of neurons :math:`L`.
      activation: :math:`\phi` (default sigmoid).
      kernel_init, bias_init: default ``"normal"`` (N(0, 1), the seeds' "standard" draw).
    """

    depth: int
    activation: ActSpec = "sigmoid"
    kernel_init: InitSpec = "normal"
    bias_init: InitSpec = "normal"

    def __post_init__(self):
        owner = type(self).__name__
        _positive_int(owner, "depth", self.depth)
        _activation(owner, self.activation)
        _init(owner, "kernel_init", self.kernel_init)
        _init(owner, "bias_init", self.bias_init)
        super().__post_init__()

    def _blocks(self) -> list[dict]:
        return [
            dict(
                features=1,
                activation=self.activation,
                kernel_init=self.kernel_init,
                bias_init=self.bias_init,
            )
        ] * self.depth

    def __call__(self, x: Array, *, train: bool = False) -> Array:
        if jnp.ndim(x) == 0 or jnp.shape(x)[-1] != 1:
            raise ValueError(
                f"Chain has one neuron per layer: its input is (..., 1), got shape {jnp.shape(x)}"
                "; add the axis with x[..., None]"
            )
        return super().__call__(x, train=train)


class MLP(_Stack):
    r"""Multilayer perceptron: hidden blocks of the given widths and a linear readout.

    Layers ``"dense_0" ... "dense_{H-1}"`` are the hidden blocks (``H = len(widths)``) and
    ``"dense_H"`` is the readout :math:`z_L = h_{L-1} W_L + b_L` (no activation, no norm, no skip;
    the model returns these logits). Each hidden block is
    :math:`h_l = \phi(\mathrm{norm}(h_{l-1} W_l + b_l))`, and with ``residual=True``
    :math:`h_l = h_{l-1} + \phi(\mathrm{norm}(h_{l-1} W_l + b_l))` for every hidden block whose
    input width equals its width (so the first block has no skip when the input width differs
    from ``widths[0]``, and a change of width breaks the skip there).

    Attributes:
      widths: hidden widths, e.g. ``(30, 30, 30, 30)`` (non-empty, positive ints).
      out: readout width (e.g. 10 classes).
      activation: hidden :math:`\phi`, a :mod:`gradflow.activations` name or Activation.
      kernel_init, bias_init: :mod:`gradflow.initializers` names or callables, used by every
        layer including the readout.
      norm: ``None``, ``"batch"`` or ``"layer"`` on every hidden block, before :math:`\phi`.
        With ``"batch"``, pass ``train=True`` and ``mutable=["batch_stats"]`` while training.
        (A BatchNorm right after the affine map removes its bias: :math:`\partial C/\partial b_l`
        is zero in train mode, by construction.)
      residual: identity skips around the hidden blocks (see above).

    Example:
      >>> model = gf.models.MLP(widths=(30, 30), out=10, activation="tanh")
      >>> variables = model.init(jax.random.key(0), jnp.ones((1, 64)))
      >>> jax.tree.map(jnp.shape, variables["params"]["dense_0"])
      {'bias': (30,), 'kernel': (64, 30)}
    """

    widths: Sequence[int]
    out: int
    activation: ActSpec = "relu"
    kernel_init: InitSpec = "he_normal"
    bias_init: InitSpec = "zeros"
    norm: str | None = None
    residual: bool = False

    def __post_init__(self):
        owner = type(self).__name__
        object.__setattr__(self, "widths", _widths(owner, self.widths))
        _positive_int(owner, "out", self.out)
        _activation(owner, self.activation)
        _init(owner, "kernel_init", self.kernel_init)
        _init(owner, "bias_init", self.bias_init)
        _norm(owner, self.norm)
        if not isinstance(self.residual, bool):
            raise TypeError(f"{owner}: residual must be a bool, got {self.residual!r}")
        super().__post_init__()

    def _blocks(self) -> list[dict]:
        common = dict(kernel_init=self.kernel_init, bias_init=self.bias_init)
        hidden = [
            dict(
                features=w,
                activation=self.activation,
                norm=self.norm,
                residual_if_match=self.residual,
                **common,
            )
            for w in self.widths
        ]
        return [*hidden, dict(features=self.out, activation="linear", **common)]


class DeepLinear(_Stack):
    r"""Deep linear network :math:`y = x W_1 W_2 \cdots W_L` (Saxe et al. 2014; seed 002).

    ``depth`` linear layers ``"dense_0" ... "dense_{depth-1}"``: the first maps the input width to
    ``width``, the hidden ones are ``width x width``, the last maps to ``out`` (default
    ``width``). With ``kernel_init=gf.initializers.get("scaled_identity", gain=2.0)`` and square
    layers this is the seeds' :math:`W = 2I` net: the output is :math:`2^L x`.

    Attributes:
      width: hidden width.
      depth: number of linear layers :math:`L`.
      out: readout width (default ``width``).
      kernel_init: default ``"orthogonal"`` (every singular value of the product is 1).
      use_bias: default ``False`` (the theory's linear maps); then the probes report
        ``bias_grad_norm`` as NaN.
      bias_init: used when ``use_bias``.
    """

    width: int
    depth: int
    out: int | None = None
    kernel_init: InitSpec = "orthogonal"
    use_bias: bool = False
    bias_init: InitSpec = "zeros"

    def __post_init__(self):
        owner = type(self).__name__
        _positive_int(owner, "width", self.width)
        _positive_int(owner, "depth", self.depth)
        if self.out is not None:
            _positive_int(owner, "out", self.out)
        _init(owner, "kernel_init", self.kernel_init)
        _init(owner, "bias_init", self.bias_init)
        super().__post_init__()

    def _blocks(self) -> list[dict]:
        out = self.width if self.out is None else self.out
        return [
            dict(
                features=self.width if i < self.depth - 1 else out,
                activation="linear",
                kernel_init=self.kernel_init,
                bias_init=self.bias_init,
                use_bias=self.use_bias,
            )
            for i in range(self.depth)
        ]


# ------------------------------------------------------------------------------------ recurrent


class LSTMCell(nn.RNNCellBase):
    r"""LSTM cell (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

    .. math::

        i, f, o = \sigma(x W_{i,f,o} + h U_{i,f,o} + b_{i,f,o} [+ \beta \text{ for } f]), \quad
        g = \phi(x W_g + h U_g + b_g), \\
        c' = f \odot c + i \odot g, \quad h' = o \odot \phi(c').

    The same parameter layout as :class:`flax.linen.LSTMCell` (input Denses ``ii, if, ig, io``
    without bias, recurrent Denses ``hi, hf, hg, ho`` with bias) plus a constant ``forget_bias``
    :math:`\beta` added to the forget gate's argument (Jozefowicz et al. 2015 recommend 1), which
    Flax's cell does not offer: the additive path :math:`\partial c'/\partial c = f` is what keeps
    gradients alive over long time lags, and :math:`\beta` sets :math:`f \approx \sigma(\beta)` at
    initialisation. Carry: ``(c, h)``.
    """

    features: int
    activation_fn: Callable[[Array], Array] = jnp.tanh
    kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
    recurrent_kernel_init: Callable[..., Array] = nn.initializers.orthogonal()
    bias_init: Callable[..., Array] = nn.initializers.zeros_init()
    forget_bias: float = 1.0
    carry_init: Callable[..., Array] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, carry, inputs):
        c, h = carry

        def gate(name: str) -> Array:
            wx = nn.Dense(
                self.features, use_bias=False, kernel_init=self.kernel_init, name=f"i{name}"
            )(inputs)
            uh = nn.Dense(
                self.features,
                kernel_init=self.recurrent_kernel_init,
                bias_init=self.bias_init,
                name=f"h{name}",
            )(h)
            return wx + uh

        i = jax.nn.sigmoid(gate("i"))
        f = jax.nn.sigmoid(gate("f") + self.forget_bias)
        g = self.activation_fn(gate("g"))
        o = jax.nn.sigmoid(gate("o"))
        new_c = f * c + i * g
        new_h = o * self.activation_fn(new_c)
        return (new_c, new_h), new_h

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        batch_dims = input_shape[:-1]
        key_c, key_h = jax.random.split(rng)
        shape = (*batch_dims, self.features)
        return self.carry_init(key_c, shape), self.carry_init(key_h, shape)

    @property
    def num_feature_axes(self) -> int:
        return 1


class _Step(nn.Module):
    """One time step: the cell, then ``h_t`` perturbed as ``"h"`` and sown as ``"h"``."""

    cell: nn.Module

    @nn.compact
    def __call__(self, carry, x):
        carry, h = self.cell(carry, x)
        if not self.is_initializing():
            h = self.perturb("h", h)
        if self.is_mutable_collection("intermediates"):
            self.sow("intermediates", "h", h)
        carry = (carry[0], h) if isinstance(carry, tuple) else h
        return carry, h


class RNN(nn.Module):
    r"""Recurrent net unrolled over time (backpropagation through time), linear readout of
    :math:`h_T`.

    Vanilla (Elman) cell, :class:`flax.linen.SimpleCell`:
    :math:`h_t = \phi(x_t W + h_{t-1} U + b)`; LSTM: :class:`LSTMCell`. Zero initial state.
    Input ``(batch, T, features)``, output ``(batch, out)`` = ``dense_0`` applied to
    :math:`h_T`. Pascanu et al. (2013): :math:`\partial h_t/\partial h_k = \prod_{i=k+1}^{t}
    U^\top \mathrm{diag}\,\phi'(z_i)`, so with :math:`|\phi'| \le \gamma` the gradient vanishes
    when :math:`\lambda_1(U) < 1/\gamma`; ``recurrent_init=gf.initializers.get("orthogonal",
    gain=g)`` sets every singular value of :math:`U` to ``g``.

    Names: the scanned step is ``"rnn"`` (cell parameters under ``params["rnn"]["cell"]``,
    broadcast over time), the readout ``"readout"`` (a :class:`DenseBlock`). Every
    :math:`h_t` is perturbed as ``perturbations["rnn"]["h"]`` with shape ``(batch, T, hidden)``
    and sown as ``intermediates["rnn"]["h"]``; :func:`gradflow.probes.probe_rnn` reads
    :math:`\|\partial C/\partial h_t\|` for every ``t`` from them.

    Attributes:
      hidden: state width.
      out: readout width.
      cell: ``"vanilla"`` or ``"lstm"``.
      activation: :math:`\phi` of the vanilla cell; the LSTM's candidate and output nonlinearity.
      kernel_init: input kernels and the readout.
      recurrent_init: recurrent kernels :math:`U` (default orthogonal).
      bias_init: biases.
      forget_bias: constant added to the LSTM forget gate (ignored by the vanilla cell).
    """

    hidden: int
    out: int
    cell: str = "vanilla"
    activation: ActSpec = "tanh"
    kernel_init: InitSpec = "lecun_normal"
    recurrent_init: InitSpec = "orthogonal"
    bias_init: InitSpec = "zeros"
    forget_bias: float = 1.0

    def __post_init__(self):
        owner = type(self).__name__
        _positive_int(owner, "hidden", self.hidden)
        _positive_int(owner, "out", self.out)
        if self.cell not in CELLS:
            raise ValueError(
                f"{owner}: unknown cell {self.cell!r}; valid: {', '.join(map(repr, CELLS))}"
            )
        _activation(owner, self.activation)
        for field in ("kernel_init", "recurrent_init", "bias_init"):
            _init(owner, field, getattr(self, field))
        try:
            _checks.real("forget_bias", self.forget_bias)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{owner}: {e}") from None
        super().__post_init__()

    def layer_names(self) -> tuple[str, ...]:
        """``("rnn", "readout")``: the scanned recurrent step and the readout."""
        return ("rnn", "readout")

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        del train
        owner = type(self).__name__
        if x.ndim != 3:
            raise ValueError(f"{owner}: input must be (batch, time, features), got shape {x.shape}")
        act = _activation(owner, self.activation)
        kinit = _init(owner, "kernel_init", self.kernel_init)
        rinit = _init(owner, "recurrent_init", self.recurrent_init)
        binit = _init(owner, "bias_init", self.bias_init)
        batch = x.shape[:1]
        zeros = jnp.zeros((*batch, self.hidden), dtype=jnp.result_type(x.dtype, jnp.float32))
        if self.cell == "vanilla":
            cell = nn.SimpleCell(
                self.hidden,
                activation_fn=act.fn,
                kernel_init=kinit,
                recurrent_kernel_init=rinit,
                bias_init=binit,
                parent=None,
            )
            carry = zeros
        else:
            cell = LSTMCell(
                self.hidden,
                activation_fn=act.fn,
                kernel_init=kinit,
                recurrent_kernel_init=rinit,
                bias_init=binit,
                forget_bias=float(self.forget_bias),
                parent=None,
            )
            carry = (zeros, zeros)
        step = nn.scan(
            _Step,
            variable_broadcast="params",
            variable_axes={"perturbations": 1, "intermediates": 1},
            split_rngs={"params": False},
            in_axes=1,
            out_axes=1,
        )(cell=cell, name="rnn")
        _, hs = step(carry, x)
        return DenseBlock(
            self.out, kernel_init=self.kernel_init, bias_init=self.bias_init, name="readout"
        )(hs[:, -1])


# -------------------------------------------------------------------------------------- helpers


def perturbations(
    model: nn.Module, variables: Mapping[str, chex.ArrayTree], x: Array, **kwargs: Any
) -> dict:
    """Zero perturbations of ``model`` for the batch ``x`` (the ``"perturbations"`` collection).

    ``jax.grad`` of a loss of ``model.apply({**variables, "perturbations": p}, x)`` with respect
    to ``p`` gives :math:`\\partial C/\\partial z_l` for every layer (and
    :math:`\\partial C/\\partial h_t` for :class:`RNN`). ``kwargs`` go to ``apply`` (e.g.
    ``train=True``). Shapes come from :func:`jax.eval_shape`, so nothing is computed twice.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a flax.linen Module, got {type(model).__name__}")
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError(
            f"variables must be a dict with 'params' (model.init), got {type(variables).__name__}"
        )
    x = _checks.array("x", x, min_ndim=1)
    variables = {k: v for k, v in variables.items() if k not in ("perturbations", "intermediates")}
    mutable = ["perturbations"]
    if kwargs.get("train") and "batch_stats" in variables:
        mutable.append("batch_stats")

    def shapes(v):
        return model.apply(v, x, mutable=mutable, **kwargs)[1]["perturbations"]

    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(shapes, variables))


def chain_params(w: Array, b: Array) -> dict:
    """``{"params": ...}`` of a :class:`Chain` from the arrays ``w, b`` of shape ``(..., L)``.

    The inverse of :func:`chain_weights`; leading axes (seeds) are kept, so the result can be
    ``jax.vmap`` -ed over. ``w[..., j]`` is the kernel of ``"dense_{j}"``, ``b[..., j]`` its bias.
    """
    w = _checks.array("w", w)
    b = _checks.array("b", b)
    if w.shape != b.shape or w.ndim < 1:
        raise ValueError(f"w and b must have the same shape (..., L), got {w.shape} and {b.shape}")
    return {
        "params": {
            f"dense_{j}": {"kernel": w[..., j, None, None], "bias": b[..., j, None]}
            for j in range(w.shape[-1])
        }
    }


def chain_weights(variables: Mapping[str, chex.ArrayTree]) -> tuple[Array, Array]:
    """The arrays ``(w, b)`` of shape ``(..., L)`` of a :class:`Chain` 's variables.

    Raises:
      ValueError: the variables are not a Chain's (layers ``dense_0 .. dense_{L-1}`` with kernels
        ``(..., 1, 1)`` and biases ``(..., 1)``), e.g. an :class:`MLP`'s.
    """
    if not isinstance(variables, Mapping):
        raise TypeError(f"variables must be a Chain's variables, got {type(variables).__name__}")
    params = variables["params"] if "params" in variables else variables
    names = list(params)
    want = [f"dense_{j}" for j in range(len(names))]
    if not names or sorted(names) != sorted(want):
        raise ValueError(
            f"not a Chain's variables: layers must be dense_0 .. dense_{{L-1}}, got {names}"
        )
    for n in want:
        layer = params[n] if isinstance(params[n], Mapping) else {}
        k, b = layer.get("kernel"), layer.get("bias")
        if k is None or b is None or jnp.shape(k)[-2:] != (1, 1) or jnp.shape(b)[-1:] != (1,):
            raise ValueError(
                f"not a Chain's variables: {n} must hold kernel (..., 1, 1) and bias (..., 1), "
                f"got kernel {jnp.shape(k) if k is not None else None} and bias "
                f"{jnp.shape(b) if b is not None else None} (an MLP? use its params directly)"
            )
    w = jnp.stack([params[n]["kernel"][..., 0, 0] for n in want], axis=-1)
    b = jnp.stack([params[n]["bias"][..., 0] for n in want], axis=-1)
    return w, b
