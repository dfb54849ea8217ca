r"""Train state, jitted train step, evaluation, and a training loop that survives divergence.

Two ways to train, built from the same pure pieces so they agree:

* :func:`train_fn` -- a pure function ``fn(hparams, key) -> metrics`` that trains one network with
  :func:`jax.lax.scan` over steps. It is jittable and :func:`jax.vmap` -able over seeds and over
  every hyperparameter that keeps shapes (learning rate, init scale, clip threshold, decay), so a
  sweep trains many networks in ONE compiled program; it is the ``fn`` of
  :func:`gradflow.sweep.run`. Divergence is handled by masking, never by Python control flow.
* :func:`fit` -- the interactive loop around the same step: a progress bar (tqdm), a history of
  records, a clean stop at divergence, and checkpoint/resume to a plain ``.npz`` file.

**The step.** With parameters :math:`\theta_t` and a minibatch :math:`B_t` drawn without
replacement from the training set with the state's key, one step is

.. math::
    g_t = \nabla_\theta C(\theta_t; B_t), \qquad (u_t, s_{t+1}) = \mathrm{tx}(g_t, s_t, \theta_t),
    \qquad \theta_{t+1} = \theta_t + u_t ,

with ``tx`` any optax chain (e.g. ``gradflow.optim`` clipping and decay in front of an optimizer).

**Divergence.** Step :math:`t` *diverges* when the loss :math:`C(\theta_t; B_t)`, a per-layer
gradient norm or a new parameter is non-finite, or the loss exceeds ``max_loss``. The first such
step is recorded as ``diverged_step = t`` (the number of finite updates before it; ``-1`` while
none), the state is frozen at :math:`\theta_t` from then on (every later update is masked out), and
every record from the block containing step :math:`t` on is NaN. Nothing raises: a sweep keeps its
other runs, and :func:`gradflow.sweep.run` stores ``diverged_step`` in its own column.

**Records.** Every ``record_every`` steps (``R = steps // record_every`` records, at steps
``record_every, 2 record_every, ..., steps``; :func:`record_steps`), with :math:`L` layers in the
forward order of :func:`gradflow.optim.layer_names`:

* ``loss``, ``accuracy`` ``(R,)`` -- on the whole training set, evaluation mode;
  ``test_loss``, ``test_accuracy`` ``(R,)`` when the data has a test split (accuracies only for
  integer class labels);
* ``batch_loss`` ``(R,)`` -- mean minibatch loss over the block's steps;
* ``grad_norm``, ``update_norm`` ``(R, L)`` -- block means of the per-layer norms of the raw
  gradients :math:`\|g_{t,l}\|` and of the applied updates :math:`\|u_{t,l}\|`;
  ``param_norm`` ``(R, L)`` -- :math:`\|\theta_l\|` at the record;
* ``optim/<key>`` -- block means of :func:`gradflow.optim.telemetry` of the optimizer state (e.g.
  ``optim/clip_by_global_norm/clipped`` is the fraction of the block's steps that were clipped);
* ``probe/<stat>`` ``(R, L)`` with ``probe=True`` -- every :class:`gradflow.report.LayerReport`
  statistic on the first ``probe_batch`` training examples at the record;
* ``diverged_step`` ``()`` int32.

These names and shapes are what :func:`gradflow.history.check_history` reads (``loss``,
``param_norm``, ``update_norm``, ``grad_norm``).

**Hyperparameters.** ``hparams`` is a dict; under ``vmap`` its values are traced 0-d arrays.
``hparams["init_scale"]`` (default 1) multiplies every kernel at initialisation (so
:math:`\mathrm{Var}(W)` scales by its square); the optimizer is built *inside* the traced function
from ``hparams`` by ``TrainConfig.optimizer`` (see :class:`TrainConfig`), so thresholds, decays and
learning rates may be traced.

Example -- 16 seeds x 3 learning rates x {no clipping, clipping}, one program::

    cfg = gf.training.TrainConfig(
        model=gf.models.MLP((32,) * 9, out=10, activation="tanh", kernel_init="lecun_normal"),
        optimizer="sgd", loss="mse", steps=300, batch_size=64, record_every=10)
    fn = gf.training.train_fn(cfg, gf.data.load_digits())
    df = gf.sweep.run(fn, grid={"learning_rate": [0.01, 0.1, 1.0], "clip": [float("inf"), 1.0]},
                      seeds=range(16), workdir="results/clip",
                      axes=gf.training.sweep_axes(fn, {"learning_rate": 0.1, "clip": 1.0}))
"""

from __future__ import annotations

import dataclasses
import functools
import json
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.typing import ArrayLike

from gradflow import _checks, _io
from gradflow import adapters as _adapters
from gradflow import config as _config
from gradflow import losses as _losses
from gradflow import optim as _optim
from gradflow import probes as _probes
from gradflow import report as _report
from gradflow.losses import LossFn

__all__ = [
    "CHECKPOINT_FILE",
    "History",
    "StepOutput",
    "TrainConfig",
    "TrainState",
    "build_optimizer",
    "evaluate",
    "fit",
    "init_state",
    "load_checkpoint",
    "make_train_step",
    "record_steps",
    "save_checkpoint",
    "sweep_axes",
    "train_fn",
]

Array = jax.Array
Hparams = Mapping[str, Any]
OptimizerSpec = (
    str | optax.GradientTransformation | Callable[[Hparams], optax.GradientTransformation]
)

#: File name of :func:`fit`'s checkpoint inside ``checkpoint_dir``.
CHECKPOINT_FILE = "checkpoint.npz"
_FORMAT = "gradflow.training/1"
_SKIP_COLLECTIONS = ("params", "perturbations", "intermediates")


# --------------------------------------------------------------------------------------------------
# state and configuration
# --------------------------------------------------------------------------------------------------


@struct.dataclass
class TrainState:
    """Everything one training run carries from step to step (a pytree: vmap adds leading axes).

    Attributes:
      step: ``()`` int32, number of updates applied.
      params: the model's ``params`` collection.
      model_state: the other variable collections (``{"batch_stats": ...}`` with BatchNorm, else
        ``{}``).
      opt_state: the optax state.
      key: a typed PRNG key, split once per step to draw the minibatch.
    """

    step: Array
    params: optax.Params
    model_state: chex.ArrayTree
    opt_state: optax.OptState
    key: Array

    @property
    def variables(self) -> dict:
        """``{"params": ..., **model_state}``, ready for ``model.apply``."""
        return {"params": self.params, **self.model_state}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The static part of a training run (hashable; hyperparameters that vmap go in ``hparams``).

    Attributes:
      model: the network, any of

        - a :class:`flax.linen.Module` (e.g. :class:`gradflow.models.MLP`), initialised from each
          run's key; ``train=`` is passed when its ``__call__`` takes it (BatchNorm statistics
          update while training), and dropout draws a fresh key every step;
        - a :class:`flax.nnx.Module`: its parameters (the same for every key) are trained, its
          other state (BatchNorm statistics, RNG streams) carried along, ``.train()`` while
          training and ``.eval()`` for records;
        - an Equinox module, applied per example with :func:`jax.vmap` (same parameters for every
          key);
        - a pair ``(init_fn, apply_fn)``: ``init_fn(key, x) -> params`` (any pytree, e.g. an
          Equinox model's ``eqx.partition`` -ed arrays, or ``nnx.state(Model(nnx.Rngs(key)),
          nnx.Param)``) and ``apply_fn(params, x) -> outputs``, initialised from each run's key.

        Per-layer records follow the forward order of :func:`gradflow.optim.layer_order` when the
        parameter names do not already give it.
      optimizer: one of

        - an optimizer name of :func:`gradflow.optim.optimizer_names` -- built by
          :func:`build_optimizer` from ``hparams["learning_rate"]`` (required) and the optional
          ``hparams["clip"]`` (global-norm clipping first; ``inf`` never clips),
          ``hparams["weight_decay"]`` (coupled L2, :func:`gradflow.optim.decay_mask`);
        - a callable ``hparams -> optax.GradientTransformation`` (called inside the traced
          function, so it may read traced hyperparameters);
        - a fixed :class:`optax.GradientTransformation`.
      loss: a :data:`gradflow.losses.LOSSES` name or a callable ``(outputs, y) -> scalar``.
      steps: number of training steps, a multiple of ``record_every``.
      batch_size: minibatch size (drawn without replacement each step), or None for full batch.
      record_every: steps between records.
      probe: also record every :class:`gradflow.report.LayerReport` statistic (``probe/<stat>``).
      probe_batch: number of training examples the probe sees.
      max_loss: a loss above this also counts as divergence (None: only non-finite values).
    """

    model: nn.Module
    optimizer: OptimizerSpec = "sgd"
    loss: str | LossFn = "softmax_cross_entropy"
    steps: int = 1000
    batch_size: int | None = 64
    record_every: int = 10
    probe: bool = False
    probe_batch: int = 256
    max_loss: float | None = None

    def __post_init__(self):
        _check_model(self.model)
        opt = self.optimizer
        if isinstance(opt, str):
            if opt not in _optim.optimizer_names():
                raise ValueError(
                    f"TrainConfig: unknown optimizer {opt!r}; valid names: "
                    f"{', '.join(_optim.optimizer_names())}, or pass a callable "
                    "hparams -> optax.GradientTransformation"
                )
        elif not (isinstance(opt, optax.GradientTransformation) or callable(opt)):
            raise TypeError(
                "TrainConfig: optimizer must be a name, an optax.GradientTransformation or a "
                f"callable hparams -> GradientTransformation, got {opt!r}"
            )
        _losses.get_loss(self.loss)  # raises for an unknown name
        for field, minimum in (("steps", 1), ("record_every", 1), ("probe_batch", 1)):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
                raise ValueError(f"TrainConfig: {field} must be an int >= {minimum}, got {v!r}")
        if self.steps % self.record_every:
            raise ValueError(
                f"TrainConfig: steps ({self.steps}) must be a multiple of record_every "
                f"({self.record_every})"
            )
        b = self.batch_size
        if b is not None and (isinstance(b, bool) or not isinstance(b, numbers.Integral) or b < 1):
            raise ValueError(f"TrainConfig: batch_size must be an int >= 1 or None, got {b!r}")
        if self.max_loss is not None and not (
            isinstance(self.max_loss, numbers.Real) and self.max_loss > 0
        ):
            raise ValueError(f"TrainConfig: max_loss must be a positive number or None, got "
                             f"{self.max_loss!r}")  # fmt: skip
        if not isinstance(self.probe, bool):
            raise TypeError(f"TrainConfig: probe must be a bool, got {self.probe!r}")

    @property
    def num_records(self) -> int:
        return self.steps // self.record_every

    def _key(self) -> tuple:
        return tuple(_model_key(getattr(self, f.name)) for f in dataclasses.fields(self))

    def __hash__(self) -> int:  # an Equinox module (arrays as fields) is unhashable: use its id
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainConfig) and self._key() == other._key()


def _check_config(config: Any) -> None:
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {_checks.show(config)}")


#: Hyperparameters gradflow reads for a named optimizer, and what each must be when concrete.
_HPARAM_RULES = {
    "learning_rate": (
        lambda h: np.isfinite(h) & (h > 0),
        "a finite number > 0 or an optax schedule",
    ),
    "clip": (lambda h: h > 0, "a number > 0 (inf never clips)"),
    "weight_decay": (lambda h: np.isfinite(h) & (h >= 0), "a finite number >= 0"),
}


def _check_hparams(hparams: Any, config: TrainConfig) -> dict:
    """``hparams`` (None: no hyperparameters) as a dict, its values checked where gradflow reads
    them and they are concrete (traced values pass: see the module docstring)."""
    if hparams is None:
        return {}
    if not isinstance(hparams, Mapping):
        raise TypeError(
            "hparams must be a mapping of hyperparameter names to values, e.g. "
            f"{{'learning_rate': 0.1}}, got {_checks.show(hparams)}"
        )
    bad_keys = [k for k in hparams if not isinstance(k, str)]
    if bad_keys:
        raise TypeError(f"hparams keys must be strings, got {bad_keys!r}")
    rules = dict(_HPARAM_RULES) if isinstance(config.optimizer, str) else {}
    rules["init_scale"] = (np.isfinite, "a finite number")
    for k, (ok, want) in rules.items():
        if k in hparams and not (k == "learning_rate" and callable(hparams[k])):
            _checks.values(f"hparams[{k!r}]", hparams[k], ok, f"must be {want}")
    return dict(hparams)


def record_steps(config: TrainConfig) -> np.ndarray:
    """The step of each record: ``record_every, 2 record_every, ..., steps`` (shape ``(R,)``)."""
    _check_config(config)
    return np.arange(1, config.num_records + 1) * config.record_every


def build_optimizer(
    config: TrainConfig, hparams: Hparams | None = None
) -> optax.GradientTransformation:
    """The optax transformation of ``config.optimizer`` for these hyperparameters.

    See :class:`TrainConfig` for the three forms. For a name: ``[clip_by_global_norm(clip)] ->
    gradflow.optim.make_optimizer(name, learning_rate, weight_decay=weight_decay)``.

    Raises:
      ValueError: a name without ``hparams["learning_rate"]``.
    """
    _check_config(config)
    hparams = _check_hparams(hparams, config)
    opt = config.optimizer
    if isinstance(opt, optax.GradientTransformation):
        return opt
    if not isinstance(opt, str):
        tx = opt(hparams)
        if not isinstance(tx, optax.GradientTransformation):
            raise TypeError(
                f"TrainConfig.optimizer(hparams) must return an optax.GradientTransformation, "
                f"got {type(tx).__name__}"
            )
        return tx
    if "learning_rate" not in hparams:
        raise ValueError(
            f"optimizer {opt!r} needs hparams['learning_rate'] (optional: 'clip', "
            f"'weight_decay'); got keys {sorted(hparams)}"
        )
    parts = []
    if "clip" in hparams:
        parts.append(_optim.clip_by_global_norm(hparams["clip"]))
    parts.append(
        _optim.make_optimizer(
            opt, hparams["learning_rate"], weight_decay=hparams.get("weight_decay")
        )
    )
    return optax.chain(*parts)


# --------------------------------------------------------------------------------------------------
# model plumbing: every kind of model as init / apply
# --------------------------------------------------------------------------------------------------


class _Net(NamedTuple):
    """A model as training sees it.

    init(key, x) -> (params, model_state); apply(params, model_state, x, train, rng) ->
    (outputs, new model_state); probe_args(params, model_state) -> (model, variables) for
    :func:`gradflow.probes.probe`.
    """

    kind: str
    init: Callable[[Array, Array], tuple[optax.Params, chex.ArrayTree]]
    apply: Callable[..., tuple[Array, chex.ArrayTree]]
    probe_args: Callable[[Any, Any], tuple[Any, Any]]


def _linen_net(model: nn.Module) -> _Net:
    takes_train = _adapters.accepts_train(model)

    def init(key, x):
        variables = model.init(key, x)
        return variables["params"], {
            k: v for k, v in variables.items() if k not in _SKIP_COLLECTIONS
        }

    def apply(params, model_state, x, train, rng=None):
        kw = {"train": train} if takes_train else {}
        rngs = {"dropout": rng} if (train and rng is not None) else None
        variables = {"params": params, **model_state}
        if train and model_state:
            out, new = model.apply(variables, x, mutable=list(model_state), rngs=rngs, **kw)
            return out, {**model_state, **new}
        return model.apply(variables, x, rngs=rngs, **kw), model_state

    return _Net("linen", init, apply, lambda p, s: (model, {"params": p, **s}))


def _nnx_net(model: Any) -> _Net:
    from flax import nnx

    graphdef, params0, rest0 = nnx.split(model, nnx.Param, ...)

    def merged(params, model_state, train):
        m = nnx.merge(graphdef, params, model_state, copy=True)
        m.train() if train else m.eval()
        return m

    def apply(params, model_state, x, train, rng=None):
        del rng  # an NNX module draws dropout from its own nnx.Rngs streams
        m = merged(params, model_state, train)
        out = m(x)
        return out, (nnx.split(m, nnx.Param, ...)[2] if train else model_state)

    return _Net(
        "nnx", lambda key, x: (params0, rest0), apply, lambda p, s: (merged(p, s, False), None)
    )


def _equinox_net(model: Any) -> _Net:
    import equinox as eqx

    params0, static = eqx.partition(model, eqx.is_inexact_array)

    def apply(params, model_state, x, train, rng=None):
        return jax.vmap(eqx.combine(params, static))(x), model_state

    return _Net(
        "equinox",
        lambda key, x: (params0, ()),
        apply,
        lambda p, s: (eqx.combine(p, static), None),
    )


def _pair_net(model: tuple) -> _Net:
    init_fn, apply_fn = model

    def apply(params, model_state, x, train, rng=None):
        return apply_fn(params, x), model_state

    return _Net("function", lambda key, x: (init_fn(key, x), ()), apply, lambda p, s: (apply_fn, p))


def _is_pair(model: Any) -> bool:
    return isinstance(model, tuple) and len(model) == 2 and all(callable(f) for f in model)


def _check_model(model: Any) -> None:
    if not (
        isinstance(model, nn.Module)
        or _adapters.is_nnx_module(model)
        or _adapters.is_equinox_module(model)
        or _is_pair(model)
    ):
        raise TypeError(
            "TrainConfig: model must be a flax.linen Module, a flax.nnx Module, an Equinox module "
            f"or a pair (init_fn(key, x) -> params, apply_fn(params, x) -> outputs), got {model!r}"
        )


def _model_key(obj: Any) -> Any:
    """``obj`` if it is hashable, else its identity (an Equinox module holds arrays)."""
    try:
        hash(obj)
    except TypeError:
        return ("id", id(obj))
    return obj


def _cached(cache: dict, key: Any, model: Any, make: Callable[[], Any]) -> Any:
    """``cache[key]``, made by ``make()`` on a miss; entries hold the model, so an id used as
    key cannot be reused by another object while cached (at most 64 entries)."""
    if key not in cache:
        if len(cache) >= 64:
            cache.pop(next(iter(cache)))
        cache[key] = (model, make())
    return cache[key][1]


_NETS: dict = {}
_LAYERS: dict = {}


def _net(model: Any) -> _Net:
    return _cached(_NETS, _model_key(model), model, lambda: _make_net(model))


def _make_net(model: Any) -> _Net:
    if isinstance(model, nn.Module):
        return _linen_net(model)
    if _adapters.is_nnx_module(model):
        return _nnx_net(model)
    if _adapters.is_equinox_module(model):
        return _equinox_net(model)
    return _pair_net(model)


def _scale_kernels(params: optax.Params, scale: ArrayLike) -> optax.Params:
    """Multiply every weight matrix: leaves named ``kernel``, or ``weight`` of rank >= 2."""

    def f(path, leaf):
        names = _optim._path_names(path)
        name = names[-1] if names else ""
        if name == "kernel" or (name == "weight" and jnp.ndim(leaf) >= 2):
            return leaf * jnp.asarray(scale, leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(f, params)


def _layers(model: Any, x_shape: tuple, x_dtype: Any) -> Any:
    key = (_model_key(model), x_shape, jnp.dtype(x_dtype))
    return _cached(_LAYERS, key, model, lambda: _find_layers(model, x_shape, x_dtype))


def _find_layers(model: Any, x_shape: tuple, x_dtype: Any) -> Any:
    """The ``layers=`` of gradflow.optim for this model: None when the default grouping (by
    top-level name, naturally sorted) is the forward order, as for gradflow.models; else the
    forward order from one traced call (:func:`gradflow.optim.layer_order`)."""
    net = _net(model)
    x = jax.ShapeDtypeStruct(x_shape, x_dtype)
    params, model_state = jax.eval_shape(net.init, jax.random.key(0), x)
    if _optim._partition(params, None).ordered:
        return None
    if net.kind == "linen":
        return _optim.layer_order(model, {"params": params, **model_state}, x)
    if net.kind == "function":
        return _optim.layer_order(model[1], params, x)
    return _optim.layer_order(model, None, x)


def _layers_of(config: TrainConfig, x: Array) -> Any:
    return _layers(config.model, (1, *x.shape[1:]), jnp.result_type(x))


def _tree_finite(tree: chex.ArrayTree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


@_config.wrap
def init_state(
    config: TrainConfig,
    x: Array,
    key: Array,
    hparams: Hparams | None = None,
    tx: optax.GradientTransformation | None = None,
) -> TrainState:
    """Initialise a run: ``init_key, data_key = split(key)``, the parameters from ``init_key``.

    A linen module is initialised with ``model.init(init_key, x[:1])``, an ``(init_fn,
    apply_fn)`` pair with ``init_fn(init_key, x[:1])``; an NNX or Equinox module brings its own
    parameters (the same for every key: the key then drives the minibatches only). Weight
    matrices are multiplied by ``hparams.get("init_scale", 1)``. Traceable (vmap over keys and
    hyperparameters).

    Args:
      config: the run's :class:`TrainConfig`.
      x: example inputs (only the shape of ``x[:1]`` matters).
      key: a PRNG key (``jax.random.key(seed)``).
      hparams: hyperparameters (see the module docstring).
      tx: the optimizer (default: :func:`build_optimizer` of ``config`` and ``hparams``).
    """
    _check_config(config)
    x = _checks.array("x", x, finite=False, min_ndim=1)  # only the shape of x[:1] matters
    key = _checks.prng_key("key", key)
    hparams = _check_hparams(hparams, config)
    if tx is not None and not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            f"tx must be an optax.GradientTransformation or None, got {_checks.show(tx)}"
        )
    tx = build_optimizer(config, hparams) if tx is None else tx
    init_key, data_key = jax.random.split(key)
    params, model_state = _net(config.model).init(init_key, jnp.asarray(x[:1]))
    if "init_scale" in hparams:
        params = _scale_kernels(params, hparams["init_scale"])
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        key=data_key,
    )


def _metrics(out: Array, y: ArrayLike, loss: str | LossFn) -> dict[str, Array]:
    y = jnp.asarray(y)
    result = {"loss": _losses.get_loss(loss)(out, y)}
    if jnp.issubdtype(y.dtype, jnp.integer) and out.ndim == y.ndim + 1:
        n_classes = out.shape[-1]
        _check_labels(y, n_classes)
        bad_label = jnp.any((y < 0) | (y >= n_classes))
        nan = jnp.asarray(jnp.nan, out.dtype)
        acc = jnp.mean((jnp.argmax(out, axis=-1) == y).astype(out.dtype))
        result["accuracy"] = jnp.where(jnp.all(jnp.isfinite(out)) & ~bad_label, acc, nan)
        result["loss"] = jnp.where(bad_label, nan.astype(result["loss"].dtype), result["loss"])
    return result


def _host(a: Array) -> np.ndarray | None:
    """``a`` on the host, or None when it is traced."""
    try:
        return np.asarray(a)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_eval_batch(x: Array, y: Array) -> None:
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"evaluate needs a non-empty batch: x has shape {x.shape}")
    if y.ndim == 0 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x and y must hold the same number of examples, got {x.shape} and {y.shape}"
        )
    host = _host(x)
    if host is not None and host.dtype.kind in "fc" and not np.isfinite(host).all():
        bad = np.argwhere(~np.isfinite(host))
        raise ValueError(
            f"x holds {len(bad)} non-finite value(s), the first {host[tuple(bad[0])]} at index "
            f"{tuple(int(i) for i in bad[0])}; evaluate scores finite inputs only"
        )


def _check_labels(y: Array, n_classes: int) -> None:
    host = _host(y)
    if host is None:
        return
    bad = (host < 0) | (host >= n_classes)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"y: labels must lie in [0, {n_classes}) for a model with {n_classes} outputs; "
            f"got {int(host[first])} at {first} ({int(bad.sum())} out of range)"
        )


@_config.wrap
def evaluate(
    model: Any,
    variables: chex.ArrayTree | None,
    x: Array,
    y: Array,
    *,
    loss: str | LossFn = "softmax_cross_entropy",
) -> dict[str, Array]:
    """Loss and accuracy of a model on ``(x, y)`` in evaluation mode.

    ``model, variables`` as :func:`gradflow.probes.probe` takes them (a linen module and its
    variables, an NNX or Equinox module and None, an ``apply_fn`` and its params). Returns
    ``{"loss": (), "accuracy": ()}``; ``accuracy`` (fraction of ``argmax(outputs) == y``) only
    when ``y`` holds integer class labels. Traceable.

    Bad data is never scored: concrete inputs are checked first (``ValueError`` for an empty
    batch, non-finite inputs, or integer labels outside ``[0, n_classes)``); under tracing, where
    nothing can raise, the accuracy is NaN when any output is non-finite (an ``argmax`` of NaN
    means nothing), and loss and accuracy are NaN when a label is out of range.
    """
    x = _checks.array("x", x, finite=False, nonempty=False)
    y = _checks.array("y", y, finite=False, nonempty=False)
    _check_eval_batch(x, y)
    m = _adapters.as_model(model, variables, train=False)
    return _metrics(m(m.params, x), y, loss)


def _evaluate_net(
    net: _Net, state: TrainState, x: Array, y: Array, loss: str | LossFn
) -> dict[str, Array]:
    out, _ = net.apply(state.params, state.model_state, jnp.asarray(x), False)
    return _metrics(out, y, loss)


# --------------------------------------------------------------------------------------------------
# the step
# --------------------------------------------------------------------------------------------------


class StepOutput(NamedTuple):
    """What one train step reports.

    Attributes:
      loss: ``()`` minibatch loss before the update.
      grad_norm: ``(L,)`` per-layer norms of the raw gradient.
      update_norm: ``(L,)`` per-layer norms of the applied update.
      finite: ``()`` bool: loss, gradient norms and new parameters all finite.
      probe: a :class:`gradflow.report.LayerReport` of the minibatch (``probe=True``), else None.
    """

    loss: Array
    grad_norm: Array
    update_norm: Array
    finite: Array
    probe: _report.LayerReport | None = None


def _probe_train(net: _Net, model: Any) -> bool:
    """Whether the probe of a train step runs the model in training mode."""
    if net.kind == "linen":
        return _adapters.accepts_train(model)
    return net.kind == "nnx"


def _step_fn(
    model: Any, tx: optax.GradientTransformation, loss: str | LossFn, probe: bool, layers: Any
):
    loss_fn = _losses.get_loss(loss)
    net = _net(model)

    def step(state: TrainState, x: Array, y: Array) -> tuple[TrainState, StepOutput]:
        rng = jax.random.fold_in(state.key, 1)  # dropout; the minibatch uses splits of the key

        def cost(params):
            out, new_model_state = net.apply(params, state.model_state, x, True, rng)
            return loss_fn(out, y), new_model_state

        (c, new_model_state), grads = jax.value_and_grad(cost, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        gnorm = _optim.layer_norms(grads, layers=layers)
        unorm = _optim.layer_norms(updates, layers=layers)
        finite = jnp.isfinite(c) & jnp.all(jnp.isfinite(gnorm)) & _tree_finite(params)
        report = None
        if probe:  # the batch as the step sees it (BatchNorm in train mode)
            m, v = net.probe_args(state.params, state.model_state)
            report = _probes.probe(m, v, x, y, loss, train=_probe_train(net, model))
        new_state = state.replace(
            step=state.step + 1, params=params, model_state=new_model_state, opt_state=opt_state
        )
        return new_state, StepOutput(c, gnorm, unorm, finite, report)

    return step


def make_train_step(
    model: Any,
    tx: optax.GradientTransformation,
    *,
    loss: str | LossFn = "softmax_cross_entropy",
    probe: bool = False,
    layers: Any = None,
) -> Callable[[TrainState, Array, Array], tuple[TrainState, StepOutput]]:
    """A jitted train step ``step(state, x, y) -> (new_state, StepOutput)``.

    One gradient of ``loss`` on the batch, one ``tx`` update (see the module docstring), for any
    model :class:`TrainConfig` accepts. The step itself does not mask divergence: check
    ``StepOutput.finite`` (the loops of this module do). Dropout (linen) draws from
    ``fold_in(state.key, 1)``: advance ``state.key`` between steps (:func:`fit` and
    :func:`train_fn` split it every step). With ``probe=True`` the output also holds the per-layer
    :func:`gradflow.probes.probe` report of the batch at the parameters *before* the update.
    ``layers`` groups the per-layer norms (a ``layers=`` of :mod:`gradflow.optim`).
    """
    _losses.get_loss(loss)
    _check_model(model)
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(
            "tx must be an optax.GradientTransformation (e.g. optax.sgd(0.1) or "
            f"gradflow.optim.make_optimizer(...)), got {_checks.show(tx)}"
        )
    # the policy is entered outside the jit, so the compile cache keys on it (gradflow.config)
    return _config.wrap(jax.jit(_step_fn(model, tx, loss, probe, layers)))


# --------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------


class _Data(NamedTuple):
    x: Array
    y: Array
    x_test: Array | None
    y_test: Array | None


def _as_data(data: Any) -> _Data:
    if hasattr(data, "x_train"):
        parts = (data.x_train, data.y_train, data.x_test, data.y_test)
    elif isinstance(data, tuple | list) and len(data) in (2, 4):
        parts = (*data, None, None) if len(data) == 2 else tuple(data)
    else:
        raise TypeError(
            "data must be (x_train, y_train), (x_train, y_train, x_test, y_test) or an object with "
            f"x_train/y_train/x_test/y_test (gradflow.data.Digits), got {type(data).__name__}"
        )
    x, y, xt, yt = (None if a is None else jnp.asarray(a) for a in parts)
    if x.shape[0] != y.shape[0] or (xt is not None and xt.shape[0] != yt.shape[0]):
        raise ValueError(
            "data: inputs and targets must have the same number of examples, got "
            f"{x.shape} / {y.shape}"
        )
    return _Data(x, y, xt, yt)


# --------------------------------------------------------------------------------------------------
# one block of record_every steps: shared by train_fn and fit
# --------------------------------------------------------------------------------------------------


def _nan_like(x: Array) -> Array:
    return jnp.full(x.shape, jnp.nan, jnp.result_type(x.dtype, jnp.float32))


def _make_block(config: TrainConfig, data: _Data, tx: optax.GradientTransformation):
    """``block((state, diverged_step)) -> ((state, diverged_step), record)``: pure."""
    layers = _layers_of(config, data.x)
    net = _net(config.model)
    step = _step_fn(config.model, tx, config.loss, False, layers)
    n = data.x.shape[0]
    batch = config.batch_size
    if batch is not None and batch > n:
        raise ValueError(f"batch_size {batch} exceeds the {n} training examples")
    xp, yp = data.x[: config.probe_batch], data.y[: config.probe_batch]

    def body(carry, _):
        state, dstep = carry
        key, sub = jax.random.split(state.key)
        if batch is None:
            xb, yb = data.x, data.y
        else:
            # a uniformly random batch-subset: the indices of the `batch` largest of n uniforms.
            # jax.random.choice(replace=False) sorts n keys per step; XLA's CPU top_k is ~9x
            # faster (benchmarks w3). Ties among the 2**23 float32 uniform values go to the lower
            # index; one straddling the cut has probability below 1e-3 per step.
            idx = jax.lax.top_k(jax.random.uniform(sub, (n,)), batch)[1]
            xb, yb = data.x[idx], data.y[idx]
        new, out = step(state.replace(key=key), xb, yb)
        ok = out.finite
        if config.max_loss is not None:
            ok = ok & (out.loss <= config.max_loss)
        frozen = dstep >= 0
        dstep = jnp.where(frozen | ok, dstep, state.step)
        keep = frozen | ~ok
        state = jax.tree.map(lambda old, nw: jnp.where(keep, old, nw), state, new)
        tele = {
            f"optim/{k}": jnp.asarray(v, jnp.float32)
            for k, v in _optim.telemetry(new.opt_state).items()
        }
        return (state, dstep), {
            "batch_loss": out.loss,
            "grad_norm": out.grad_norm,
            "update_norm": out.update_norm,
            **tele,
        }

    def block(carry):
        (state, dstep), traj = jax.lax.scan(body, carry, None, length=config.record_every)
        record = {k: jnp.mean(v, axis=0) for k, v in traj.items()}
        record.update(_evaluate_net(net, state, data.x, data.y, config.loss))
        if data.x_test is not None:
            test = _evaluate_net(net, state, data.x_test, data.y_test, config.loss)
            record.update({f"test_{k}": v for k, v in test.items()})
        record["param_norm"] = _optim.layer_norms(state.params, layers=layers)
        if config.probe:
            m, v = net.probe_args(state.params, state.model_state)
            rep = _probes.probe(m, v, xp, yp, config.loss)
            record.update({f"probe/{s}": getattr(rep, s) for s in _report.STATS if s != "loss"})
        dead = dstep >= 0
        record = {k: jnp.where(dead, _nan_like(v), v) for k, v in record.items()}
        return (state, dstep), record

    return block


def _fresh_carry(state: TrainState) -> tuple[TrainState, Array]:
    return state, jnp.full((), -1, jnp.int32)


# --------------------------------------------------------------------------------------------------
# the pure, vmappable training function
# --------------------------------------------------------------------------------------------------


def train_fn(
    config: TrainConfig, data: Any, *, return_state: bool = False
) -> Callable[[Hparams, Array], dict[str, Array]]:
    """A pure function ``fn(hparams, key) -> metrics`` that trains one network.

    ``lax.scan`` over ``R = steps // record_every`` blocks of ``record_every`` steps, divergence
    handled by masking (see the module docstring), so ``jax.jit(jax.vmap(fn))`` trains a whole
    grid of seeds and shape-preserving hyperparameters at once, and :func:`gradflow.sweep.run`
    accepts ``fn`` directly (pass ``axes=sweep_axes(fn, example_hparams)``). ``fn`` is traced at
    :mod:`gradflow.config`'s precision policy in force when it is traced (float32 matrix products
    unless you opt in to a backend's fast passes).

    Args:
      config: the static :class:`TrainConfig`.
      data: ``gradflow.data.Digits`` or ``(x, y)`` / ``(x, y, x_test, y_test)``; captured as
        constants of the compiled program.
      return_state: also return the final :class:`TrainState` (``(metrics, state)``).

    Returns:
      ``fn(hparams, key)``: ``hparams`` a dict (see :class:`TrainConfig` and the module docstring),
      ``key`` a PRNG key; returns the dict of records of the module docstring, arrays ``(R, ...)``,
      and ``diverged_step`` ``()``.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    d = _as_data(data)

    def fn(hparams: Hparams, key: Array):
        hparams = {} if hparams is None else dict(hparams)
        tx = build_optimizer(config, hparams)
        state = init_state(config, d.x, key, hparams, tx)
        block = _make_block(config, d, tx)
        (state, dstep), records = jax.lax.scan(
            lambda c, _: block(c), _fresh_carry(state), None, length=config.num_records
        )
        metrics = {**records, "diverged_step": dstep}
        return (metrics, state) if return_state else metrics

    # traced at the precision policy in force (gradflow.config), inside any jit or vmap around it
    return _config.wrap(fn)


def sweep_axes(fn: Callable, hparams: Hparams, key: Array | None = None) -> dict[str, tuple]:
    """The ``axes=`` of :func:`gradflow.sweep.run` for the metrics of a :func:`train_fn`.

    Every ``(R,)`` metric is ``("step",)`` and every ``(R, L)`` one ``("step", "layer")``
    (``diverged_step`` has none). Shapes come from :func:`jax.eval_shape`: nothing is trained.
    """
    key = jax.random.key(0) if key is None else key
    shapes = jax.eval_shape(fn, dict(hparams), key)
    names = {0: (), 1: ("step",), 2: ("step", "layer")}
    return {k: names[len(v.shape)] for k, v in shapes.items() if len(v.shape) in names}


# --------------------------------------------------------------------------------------------------
# the interactive loop: progress, history, divergence, checkpoints
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class History:
    """What :func:`fit` returns.

    Attributes:
      steps: ``(r,)`` the step of each record made (``r <= R``: fewer when the run diverged).
      metrics: name -> NumPy array ``(r, ...)`` (see the module docstring).
      layer_names: the ``L`` layer names, forward order.
      diverged_step: the first diverging step, or None.
      state: the final :class:`TrainState` (frozen at the last finite parameters on divergence).
    """

    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    layer_names: tuple[str, ...]
    diverged_step: int | None
    state: TrainState

    def to_frame(self):
        """A tidy :class:`pandas.DataFrame`: ``step | metric | layer | value`` (layer null for
        scalar metrics)."""
        import pandas as pd

        frames = []
        for name, v in self.metrics.items():
            v = np.asarray(v, dtype=np.float64)
            if v.ndim == 1:
                frames.append(pd.DataFrame({"step": self.steps, "metric": name, "value": v}))
            else:
                r, n = v.shape[0], int(np.prod(v.shape[1:]))
                frames.append(
                    pd.DataFrame(
                        {
                            "step": np.repeat(self.steps, n),
                            "metric": name,
                            "layer": np.tile(np.arange(n), r),
                            "value": v.reshape(-1),
                        }
                    )
                )
        df = pd.concat(frames, ignore_index=True)
        df["layer"] = df["layer"].astype("Int64")
        return df[["step", "metric", "layer", "value"]]


def _jsonable(v: Any) -> Any:
    if isinstance(v, str | bool | None):
        return v
    try:
        return np.asarray(v).tolist()
    except (TypeError, ValueError):
        return repr(v)


def _model_id(model: Any) -> str:
    """A description of the model that is the same in every process (no object addresses)."""
    if isinstance(model, nn.Module):
        return repr(model)
    if _is_pair(model):
        return "pair:" + ",".join(f"{f.__module__}.{f.__qualname__}" for f in model)
    params, _ = _net(model).init(None, None)
    shapes = jax.tree.map(lambda a: list(np.shape(a)), params)
    return f"{type(model).__module__}.{type(model).__qualname__}:{shapes}"


def _fingerprint(config: TrainConfig, data: _Data, hparams: Hparams, key: Array) -> str:
    opt = config.optimizer
    opt_id = opt if isinstance(opt, str) else getattr(opt, "__qualname__", type(opt).__name__)
    loss = config.loss if isinstance(config.loss, str) else config.loss.__qualname__
    fields = {}
    if _config.matmul_precision() != _config.DEFAULT:  # absent at the default: old checkpoints
        fields["matmul_precision"] = _config.matmul_precision()  # resume; others never mix
    return json.dumps(
        {
            **fields,
            "model": _model_id(config.model),
            "optimizer": opt_id,
            "loss": loss,
            "steps": config.steps,
            "batch_size": config.batch_size,
            "record_every": config.record_every,
            "probe": config.probe,
            "probe_batch": config.probe_batch,
            "max_loss": config.max_loss,
            "data": [None if a is None else list(a.shape) for a in data],
            "hparams": {k: _jsonable(v) for k, v in sorted(hparams.items())},
            "key": np.asarray(jax.random.key_data(key)).tolist(),
        },
        sort_keys=True,
    )


def _is_key(leaf: Any) -> bool:
    return jnp.issubdtype(getattr(leaf, "dtype", None) or np.float32, jax.dtypes.prng_key)


def _key_data(tree: chex.ArrayTree) -> chex.ArrayTree:
    """Typed PRNG keys (the run's key, an NNX module's RNG streams) as their raw key data."""
    return jax.tree.map(lambda a: jax.random.key_data(a) if _is_key(a) else a, tree)


def _flat_state(state: TrainState) -> dict[str, np.ndarray]:
    state = _key_data(state)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {"state" + jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def save_checkpoint(
    path: str | os.PathLike,
    state: TrainState,
    *,
    metrics: Mapping[str, np.ndarray] | None = None,
    diverged_step: int | None = None,
    fingerprint: str = "",
) -> Path:
    """Write ``state`` (and optional record arrays) to a plain ``.npz`` file, atomically.

    Leaves are stored under their pytree paths (``state.params['dense_0']['kernel']``), the PRNG
    key as its raw key data; loading restores every bit. The file is written to a temporary name
    in the same directory and renamed, so a crash never leaves half a checkpoint.
    """
    path = _checks.path("path", path)
    if not isinstance(state, TrainState):
        raise TypeError(f"state must be a TrainState, got {type(state).__name__}")
    if metrics is not None and not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a dict name -> array, got {metrics!r}")
    if diverged_step is not None:
        diverged_step = _checks.size("diverged_step", diverged_step, minimum=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = _flat_state(state)
    for k, v in (metrics or {}).items():
        arrays[f"metrics/{k}"] = np.asarray(v)
    arrays["__format__"] = np.array(_FORMAT)
    arrays["__fingerprint__"] = np.array(fingerprint)
    arrays["__diverged_step__"] = np.array(-1 if diverged_step is None else diverged_step)
    return _io.atomic_write(path, lambda f: np.savez(f, **arrays))


#: Largest fingerprint a checkpoint may carry (characters); a real one is a few hundred.
_MAX_FINGERPRINT = 1 << 20
# Room for an .npy header beyond the array bytes (numpy writes 128 bytes; up to 64 KiB allowed).
_NPY_HEADER = 1 << 16


def _npy_bytes(shape: tuple[int, ...], itemsize: int) -> int:
    return int(np.prod(shape, dtype=np.int64)) * itemsize + _NPY_HEADER


def _read_members(path: Path, limits: Mapping[str, int | None]) -> dict[str, np.ndarray]:
    """The members of the ``.npz`` file ``path``, each read only after its uncompressed size was
    checked against ``limits`` (name -> largest size in bytes; ``None``: any name with this
    prefix, see :func:`load_checkpoint`), so a crafted file cannot make us decompress gigabytes."""
    import zipfile

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is not a gradflow checkpoint (not an .npz file: {e})") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > len(limits) + 4096:
            raise ValueError(f"{path} holds {len(infos)} members: not a checkpoint of this run")
        out = {}
        for info in infos:
            name = info.filename.removesuffix(".npy")
            if name in limits:
                limit = limits[name]
            elif name.startswith("metrics/") and "metrics/" in limits:
                limit = limits["metrics/"]
            else:
                raise ValueError(
                    f"checkpoint {path} does not match this run's state: it holds an unexpected "
                    f"member {name!r} (a different model or optimizer?); use a fresh "
                    "checkpoint_dir"
                )
            if limit is not None and info.file_size > limit:
                raise ValueError(
                    f"checkpoint {path}: member {name!r} is {info.file_size} bytes uncompressed, "
                    f"more than the {limit} this run's state needs; refusing to read it"
                )
            with archive.open(info) as f:
                try:
                    out[name] = np.lib.format.read_array(f, allow_pickle=False)
                except (ValueError, OSError, EOFError) as e:
                    raise ValueError(
                        f"checkpoint {path}: member {name!r} is damaged ({e})"
                    ) from None
    return out


def _checkpoint_error(path: Path, what: str) -> ValueError:
    return ValueError(f"checkpoint {path} {what}; use a fresh checkpoint_dir")


def _expected_members(
    like: TrainState,
) -> tuple[dict[str, tuple[tuple, np.dtype]], jax.tree_util.PyTreeDef]:
    """The member name, shape and dtype of every state leaf of ``like`` (keys as key data), and
    the state's tree structure."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(_key_data(like))
    expected = {
        "state" + jax.tree_util.keystr(p): (np.shape(leaf), np.dtype(leaf.dtype))
        for p, leaf in with_path
    }
    return expected, treedef


def _member_limits(
    expected: Mapping[str, tuple[tuple, np.dtype]],
    records: Mapping[str, jax.ShapeDtypeStruct] | None,
    max_records: int | None,
) -> dict[str, int | None]:
    """The largest uncompressed size of every member a checkpoint of this run may hold."""
    limits: dict[str, int | None] = {
        name: _npy_bytes(shape, dtype.itemsize) for name, (shape, dtype) in expected.items()
    }
    limits.update({"__format__": 4 * 64 + _NPY_HEADER, "__diverged_step__": 64 + _NPY_HEADER})
    limits["__fingerprint__"] = 4 * _MAX_FINGERPRINT + _NPY_HEADER
    if records is None:
        limits["metrics/"] = None
    else:
        n = max_records if max_records is not None else 1
        for k, spec in records.items():
            limits[f"metrics/{k}"] = _npy_bytes((n, *spec.shape), 8)
    return limits


def _restore_state(
    path: Path,
    files: Mapping[str, np.ndarray],
    expected: Mapping,
    treedef: jax.tree_util.PyTreeDef,
    like: TrainState,
) -> TrainState:
    """The state from the checked members: each of ``like``'s shape and dtype exactly, finite
    where real; PRNG keys rewrapped with ``like``'s implementation."""
    leaves = []
    for name, (shape, dtype) in expected.items():
        arr = files.get(name)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            got = "missing" if arr is None else f"{arr.dtype}{list(arr.shape)}"
            raise _checkpoint_error(
                path,
                f"does not match this run's state at {name}: expected {dtype}{list(shape)}, got "
                f"{got} (a different model or optimizer?)",
            )
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise _checkpoint_error(path, f"holds non-finite values at {name}")
        leaves.append(jnp.asarray(arr, dtype=dtype))
    return jax.tree.map(
        lambda a, ref: (
            jax.random.wrap_key_data(a, impl=jax.random.key_impl(ref)) if _is_key(ref) else a
        ),
        jax.tree.unflatten(treedef, leaves),
        like,
    )


def _diverged_and_fingerprint(path: Path, files: Mapping, step: int) -> tuple[int, str]:
    """``(diverged_step, fingerprint)``: an integer in ``[-1, step]`` and a string."""
    if step < 0:
        raise _checkpoint_error(path, f"has step {step} < 0")
    d = files.get("__diverged_step__")
    if d is None or d.shape != () or d.dtype.kind not in "iu":
        raise _checkpoint_error(path, "has no integer __diverged_step__")
    d = int(d)
    if not -1 <= d <= step:
        raise _checkpoint_error(path, f"has diverged_step {d} outside [-1, step = {step}]")
    fp = files.get("__fingerprint__")
    if fp is None or fp.dtype.kind != "U" or fp.shape != ():
        raise _checkpoint_error(path, "has no fingerprint string")
    return d, str(fp)


def _checked_metrics(
    path: Path,
    files: Mapping[str, np.ndarray],
    records: Mapping[str, jax.ShapeDtypeStruct] | None,
    max_records: int | None,
) -> dict[str, np.ndarray]:
    """The ``metrics/*`` members: real arrays; with ``records``, exactly those names, one count
    of records (at most ``max_records``) and each record's shape."""
    metrics = {k[len("metrics/") :]: v for k, v in files.items() if k.startswith("metrics/")}
    for k, v in metrics.items():
        if v.dtype.kind not in "biuf" or v.ndim == 0:
            raise _checkpoint_error(
                path, f"holds metric {k!r} of dtype {v.dtype}{list(v.shape)}, not a real array"
            )
    if records is None:
        return metrics
    if set(metrics) != set(records) and metrics:
        missing, extra = sorted(set(records) - set(metrics)), sorted(set(metrics) - set(records))
        raise _checkpoint_error(
            path, f"holds other metrics than this run records (missing {missing}, extra {extra})"
        )
    counts = {len(v) for v in metrics.values()}
    if len(counts) > 1:
        raise _checkpoint_error(
            path, f"holds metrics with different numbers of records {sorted(counts)}"
        )
    for k, v in metrics.items():
        if v.shape[1:] != tuple(records[k].shape):
            raise _checkpoint_error(
                path, f"holds metric {k!r} of shape {v.shape}, not (n, *{records[k].shape})"
            )
        if max_records is not None and len(v) > max_records:
            raise _checkpoint_error(
                path, f"holds {len(v)} records of {k!r}; this run makes {max_records}"
            )
    return metrics


def load_checkpoint(
    path: str | os.PathLike,
    like: TrainState,
    *,
    records: Mapping[str, jax.ShapeDtypeStruct] | None = None,
    max_records: int | None = None,
) -> tuple[TrainState, dict[str, np.ndarray], int | None, str]:
    """Read a :func:`save_checkpoint` file into the structure of ``like`` (e.g. a fresh
    :func:`init_state`).

    The file is checked before anything in it is used: only the members this run's state has
    (plus ``metrics/*`` and the three ``__format__``, ``__fingerprint__``, ``__diverged_step__``
    entries) may be present; each member's uncompressed size is checked before it is read (so a
    small file cannot expand to gigabytes); every state leaf must have ``like``'s shape and dtype
    exactly (no silent cast: 1e300 does not become ``inf`` in float32), the parameters and
    optimizer state must be finite, ``step >= 0`` and ``-1 <= diverged_step <= step``. With
    ``records`` (name -> ``jax.ShapeDtypeStruct`` of one record) the metrics must be exactly
    those names, real arrays of shape ``(n, *record shape)`` with ``n <= max_records``.

    Returns:
      ``(state, metrics, diverged_step, fingerprint)``.

    Raises:
      ValueError: not a gradflow checkpoint, or its contents do not fit ``like`` (the message
        names the member and what is wrong).
    """
    path = _checks.path("path", path)
    if not isinstance(like, TrainState):
        raise TypeError(f"like must be a TrainState (from init_state), got {type(like).__name__}")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file {path}")
    expected, treedef = _expected_members(like)
    files = _read_members(path, _member_limits(expected, records, max_records))
    fmt = files.get("__format__")
    if fmt is None or fmt.dtype.kind != "U" or fmt.shape != () or str(fmt) != _FORMAT:
        raise ValueError(f"{path} is not a {_FORMAT} checkpoint")
    state = _restore_state(path, files, expected, treedef, like)
    d, fp = _diverged_and_fingerprint(path, files, int(np.asarray(state.step)))
    metrics = _checked_metrics(path, files, records, max_records)
    return state, metrics, (None if d < 0 else d), fp


@_config.wrap
def fit(
    config: TrainConfig,
    data: Any,
    hparams: Hparams | None = None,
    *,
    key: Array,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    progress: bool | None = None,
    callback: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> History:
    """Train one network, recording every ``record_every`` steps; stop cleanly on divergence.

    The same blocks as :func:`train_fn`, one jitted call per record, so the loop can show progress
    (tqdm; ``progress=None`` shows it when stderr is a terminal), stop at the first diverging step
    (``History.diverged_step``; no exception), call ``callback(record_index, record)`` and
    checkpoint. With ``checkpoint_dir``, the state and the records so far are saved to
    ``checkpoint_dir/checkpoint.npz`` every ``checkpoint_every`` records, and a call finding a
    checkpoint of the *same* run (config, data shapes, hparams, key) resumes from it: the result
    is bit-identical to an uninterrupted run. A checkpoint of another run raises ``ValueError``.
    (The fingerprint names a callable optimizer by its qualified name only: use a fresh directory
    when you change its code.) Float32 matrix products run at :mod:`gradflow.config`'s precision
    policy (``"highest"`` unless you opt in to a backend's fast passes); a checkpoint made at
    another precision does not resume.

    Args:
      config: the :class:`TrainConfig`.
      data: as for :func:`train_fn`.
      hparams: concrete hyperparameters (validated by the transforms they build).
      key: the run's PRNG key (``jax.random.key(seed)``).
      checkpoint_dir: directory of the checkpoint, or None.
      checkpoint_every: records between checkpoints.
      progress: show a progress bar (None: only on a terminal).
      callback: called after each record with its index and NumPy values.

    Returns:
      A :class:`History`.
    """
    _check_config(config)
    key = _checks.prng_key("key", key)
    if checkpoint_dir is not None:
        checkpoint_dir = _checks.path("checkpoint_dir", checkpoint_dir)
    if (
        isinstance(checkpoint_every, bool)
        or not isinstance(checkpoint_every, numbers.Integral)
        or (checkpoint_every < 1)
    ):
        raise ValueError(f"checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
    hparams = _check_hparams(hparams, config)
    d = _as_data(data)
    tx = build_optimizer(config, hparams)  # concrete values: validated here
    state = init_state(config, d.x, key, hparams, tx)
    names = _optim.layer_names(state.params, layers=_layers_of(config, d.x))
    traced, static = _split_hparams(hparams)
    block = functools.partial(_jit_block(config, static), hparams=traced, data=d)
    run = _Run(
        config=config,
        block=block,
        ckpt=None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE,
        fingerprint=_fingerprint(config, d, hparams, key),
        state=state,
    )
    if run.ckpt is not None and run.ckpt.exists():
        run.resume()
    run.loop(progress, callback, checkpoint_every)
    metrics = _stack(run.records)
    n = len(next(iter(metrics.values()))) if metrics else 0
    return History(
        steps=record_steps(config)[:n],
        metrics=metrics,
        layer_names=names,
        diverged_step=run.dstep,
        state=run.state,
    )


@dataclasses.dataclass
class _Run:
    """The state of one :func:`fit` call: what it has trained and recorded so far, and where it
    checkpoints."""

    config: TrainConfig
    block: Callable
    ckpt: Path | None
    fingerprint: str
    state: TrainState
    records: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)
    dstep: int | None = None
    done: int = 0

    def resume(self) -> None:
        """Continue from the checkpoint of this same run; refuse another run's or one whose
        counts disagree (updates made, records kept, divergence)."""
        config, ckpt = self.config, self.ckpt
        shapes = jax.eval_shape(self.block, _fresh_carry(self.state))[1]  # one record
        self.state, saved, self.dstep, saved_fp = load_checkpoint(
            ckpt, self.state, records=shapes, max_records=config.num_records
        )
        if saved_fp != self.fingerprint:
            raise ValueError(
                f"{ckpt} holds a different run (config, data, hparams or key differ); use a "
                "fresh checkpoint_dir or delete it"
            )
        self.records = {k: list(v) for k, v in saved.items()}
        self.done = len(next(iter(self.records.values()))) if self.records else 0
        step, dstep, done = int(self.state.step), self.dstep, self.done
        want = dstep if dstep is not None else done * config.record_every
        if step != want or (dstep is None and done > config.num_records):
            raise ValueError(
                f"{ckpt} is inconsistent: step {step} with {done} record(s) of "
                f"{config.record_every} steps (diverged_step {dstep}); use a fresh checkpoint_dir"
            )

    def save(self) -> None:
        if self.ckpt is not None:
            save_checkpoint(self.ckpt, self.state, metrics=_stack(self.records),
                            diverged_step=self.dstep, fingerprint=self.fingerprint)  # fmt: skip

    def loop(self, progress: bool | None, callback: Callable | None, checkpoint_every: int):
        """Run the remaining records (none after a divergence), one jitted block each, with a
        progress bar; stop after the first diverging block."""
        from tqdm.auto import tqdm

        config, total = self.config, self.config.num_records
        bar = tqdm(
            total=config.steps,
            initial=self.done * config.record_every,
            disable=(None if progress is None else not progress),
            unit="step",
            leave=False,
        )
        carry = (self.state, jnp.full((), -1 if self.dstep is None else self.dstep, jnp.int32))
        try:
            for r in range(self.done, total if self.dstep is None else self.done):
                carry, record = self.block(carry)
                self.state = carry[0]
                record = self._keep(record, int(carry[1]), bar)
                if callback is not None:
                    callback(r, record)
                if self.dstep is not None or (r + 1) % checkpoint_every == 0 or r + 1 == total:
                    self.save()
                if self.dstep is not None:
                    break
        finally:
            bar.close()

    def _keep(self, record: dict, d_now: int, bar: Any) -> dict[str, np.ndarray]:
        """Append one block's record (as NumPy), advance the bar and note a divergence."""
        record = jax.device_get(record)
        for k, v in record.items():
            self.records.setdefault(k, []).append(np.asarray(v))
        bar.update(self.config.record_every)
        if "loss" in record:
            bar.set_postfix(loss=f"{float(record['loss']):.4g}")
        if d_now >= 0:
            self.dstep = d_now
            if not bar.disable:
                bar.write(f"gradflow.training.fit: diverged at step {self.dstep}; stopping the run")
        return record


def _split_hparams(hparams: Mapping[str, Any]) -> tuple[dict[str, Array], tuple]:
    """Numeric hyperparameters (passed traced, so one compilation serves every value) and the
    others (static, part of the compilation key)."""
    traced, static = {}, []
    for k, v in hparams.items():
        if isinstance(v, numbers.Number | np.ndarray | jax.Array) and not isinstance(v, bool):
            traced[k] = jnp.asarray(v)
        else:
            static.append((k, v))
    return traced, tuple(sorted(static))


@functools.lru_cache(maxsize=64)
def _jit_block(config: TrainConfig, static: tuple) -> Callable:
    """One jitted block per (config, static hyperparameters); data and numeric hyperparameters
    are arguments, so repeated or resumed :func:`fit` calls do not recompile."""

    def run(carry, hparams, data):
        hp = {**hparams, **dict(static)}
        return _make_block(config, data, build_optimizer(config, hp))(carry)

    return jax.jit(run)


def _stack(records: Mapping[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack(v) for k, v in records.items() if len(v)}
