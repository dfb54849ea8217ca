"""Bad input over the public API: a registry of every public callable with valid arguments, and
wrong types, shapes, NaN/inf, empty and negative sizes and unknown names swapped in one argument
at a time. A call passes when it raises a ValueError or TypeError from gradflow's own checks whose
message names the argument (or the bad value); it fails when it raises anything else, raises
from inside a dependency (a traceback from deep inside), returns normally (a silent result), or
runs past :data:`LIMIT_S` (a hang).

``test_bad_input_census`` enumerates every (callable, argument, bad value) once and requires at
least :data:`TARGET` of them to pass (the measured share is printed: ``pytest -s``);
``test_bad_values_drawn_by_hypothesis`` draws further bad values (random shapes, NaN and inf at
random positions, random negative sizes and unknown names) for the cheap theory functions and
requires every one of them to be refused clearly.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradflow as gf

GRADFLOW = Path(gf.__file__).resolve().parent
#: A call running longer than this is a hang.
LIMIT_S = 30
#: The share of bad calls that must be refused clearly.
TARGET = 0.95
NAN, INF = float("nan"), float("inf")


# ------------------------------------------------------------------------------ bad values


class _Opaque:
    """An object of no supported type."""

    def __repr__(self) -> str:
        return "<opaque>"


OPAQUE = _Opaque()


def real(*, positive: bool = False, nonneg: bool = False, finite: bool = True) -> list:
    out = ["abc", None, OPAQUE, [1.0, "x"]]
    if finite:
        out += [NAN, INF]
    if positive:
        out += [-1.0, 0.0]
    elif nonneg:
        out += [-1.0]
    return out


def size(minimum: int = 1) -> list:
    out = [-1, 2.5, "3", None, True]
    if minimum >= 1:
        out.append(0)
    return out


def name() -> list:
    return ["nope", 3, None]


def array(*, finite: bool = True, ndim: int | None = None, nonempty: bool = True) -> list:
    out = ["abc", None, OPAQUE]
    if finite:
        out += [jnp.array([1.0, NAN]), jnp.array([INF, 1.0])]
    if nonempty:
        out.append(jnp.zeros((0,)))
    if ndim is not None:
        out.append(jnp.ones((2,) * (ndim + 2)))
    return out


def _but_none(values: list) -> list:
    """``values`` without None (for arguments where None is valid: a default)."""
    return [v for v in values if v is not None]


def boolean() -> list:
    return ["yes", 2, None]


def key() -> list:
    return [3, "key", None, jnp.ones(3)]


def path() -> list:
    return [3, None, OPAQUE]


def callable_() -> list:
    return [3, "f", None]


def mapping() -> list:
    return [3, "x", None, [1, 2]]


# ------------------------------------------------------------------------------ the registry


@dataclasses.dataclass
class Entry:
    """A public callable, valid arguments, and the bad values of each argument."""

    fn: Callable
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    bad: dict = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.fn.__module__.removeprefix('gradflow.')}.{self.fn.__qualname__}"


def _mlp():
    return gf.models.MLP((4,), out=3, activation="tanh")


def _mlp_vars():
    return _mlp().init(jax.random.key(0), jnp.ones((2, 5)))


def _variables():
    return _mlp().init(jax.random.key(0), jnp.ones((2, 5)))


def _report():
    g = jnp.array([1e-3, 0.5, 1.0])
    fields = {k: g for k in gf.probes.STATS if k != "loss"}
    return gf.probes.LayerReport(loss=jnp.float32(1.0), layer_names=("a", "b", "c"), **fields)


def _config():
    return gf.training.TrainConfig(model=_mlp(), optimizer="sgd", steps=2, record_every=1)


def _state():
    hp = {"learning_rate": 0.1}
    return gf.training.init_state(_config(), jnp.ones((4, 5)), jax.random.key(0), hp)


def _data():
    return (jnp.ones((8, 5)), jnp.arange(8) % 3)


def _params():
    return {"dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}


def _history():
    n = 30
    return {
        "loss": np.linspace(2, 1, n),
        "grad_norm": np.ones((n, 3)),
        "update_norm": np.full((n, 3), 0.01),
        "param_norm": np.ones((n, 3)),
    }


def registry(tmp: Path) -> list[Entry]:
    """Every public callable with valid arguments and the bad values of each argument."""
    A = gf.activations
    an, mf, sp = gf.analytic, gf.meanfield, gf.spectra
    w, b = jnp.ones(3), jnp.zeros(3)
    act = {"activation": name()}
    var = real(nonneg=True)
    pos = real(positive=True)
    mlp_params = [(jnp.ones((2, 2)), jnp.zeros(2))] * 2
    net = sp.init_network(jax.random.key(0), 4, 2)
    rnn = gf.models.RNN(4, 1)
    (tmp / "store").mkdir(exist_ok=True)
    e = [
        # activations
        Entry(A.get, ("tanh",), bad={"name": name()}),
        Entry(A.get, ("leaky_relu",), {"negative_slope": 0.1},
              bad={"negative_slope": ["x", None, NAN, INF]}),
        Entry(A.names, kwargs={"builtin_only": True}, bad={"builtin_only": boolean()}),
        Entry(A.register, ("reg_test", jnp.tanh, jnp.tanh), {"sup_grad": 1.0, "argsup": 0.0},
              bad={"name": [3, None, ""], "fn": callable_(), "grad": callable_(),
                   "sup_grad": real(nonneg=True), "argsup": ["x", NAN, INF],
                   "kinks": ["x", ("a",), (NAN,)], "overwrite": boolean()}),
        Entry(A.unregister, ("never_registered",), bad={"name": [3, None, "tanh"]}),
        # initializers
        Entry(gf.initializers.get, ("normal",), bad={"name": name()}),
        Entry(gf.initializers.get, ("normal",), {"std": 1.0}, bad={"std": real(nonneg=True)}),
        Entry(gf.initializers.weight_variance, ("he_normal", 4, 4),
              bad={"name": name(), "fan_in": size(), "fan_out": size()}),
        # analytic
        Entry(an.chain_forward, (w, b, 1.0, "tanh"),
              bad={"w": array(ndim=1), "b": array(ndim=1), "x": array(nonempty=False),
                   **act}),
        Entry(an.chain_grads, (w, b, 1.0, 1.0, "tanh"),
              bad={"w": array(ndim=1), "b": array(ndim=1), "x": array(nonempty=False),
                   "dC_daL": array(nonempty=False), **act}),
        Entry(an.chain_log_grads, (w, b, 1.0, 1.0, "tanh"),
              bad={"w": array(ndim=1), "b": array(ndim=1), "dC_daL": array(nonempty=False),
                   **act}),
        Entry(an.gradient_bound, (w, "tanh"), bad={"w": array(), **act,
                                                   "per_layer": boolean()}),
        Entry(an.log_gradient_bound, (w, "tanh"), bad={"w": array(), **act}),
        Entry(an.exploding_chain, (3, 0.5),
              bad={"depth": size(), "x": array(nonempty=False), "weight": real(),
                   "activation": name(), "dtype": ["int32", "nope", 3]}),
        Entry(an.deep_linear_gain, (2.0, 3), bad={"gain": real(), "depth": size(minimum=0)}),
        Entry(an.scaled_identity_mlp, (2, 2.0),
              bad={"depth": size(), "gain": real(), "width": size(), "dtype": ["int32", 3]}),
        Entry(an.mlp_forward, (mlp_params, jnp.ones((1, 2)), "tanh"),
              bad={"params": [3, "x", None, [], [(1,)]], "x": array(), **act,
                   "linear_readout": boolean()}),
        Entry(an.mlp_grads, (mlp_params, jnp.ones((1, 2)), jnp.ones((1, 2)), "tanh"),
              bad={"params": [3, None, []], "x": array(), "dC_daL": array(),
                   **act}),
        Entry(an.signed_log_abs_grad, (jnp.ones(3), "tanh"),
              bad={"z": array(nonempty=False), **act}),
        # meanfield
        Entry(mf.q_map, (1.0, 1.5, 0.05, "tanh"),
              bad={"q": pos, "sw2": var, "sb2": var, **act, "order": size(2)}),
        Entry(mf.c_map, (0.5, 1.0, 1.5, 0.05, "tanh"),
              bad={"c": [*real(), 1.5, -2.0], "q": pos, "sw2": var, "sb2": var, **act,
                   "order_2d": size(2)}),
        Entry(mf.q_star, (1.5, 0.05, "tanh"),
              bad={"sw2": var, "sb2": var, **act, "q0": pos, "order": size(2),
                   "num_iters": size()}),
        Entry(mf.chi1, (1.5, 0.05, "tanh"),
              bad={"sw2": var, "sb2": var, **act, "q": _but_none(pos), "q0": pos}),  # q=None: q*
        Entry(mf.c_star, (1.5, 0.05, "tanh"),
              bad={"sw2": var, "sb2": var, **act, "num_iters_c": size(),
                   "order_2d": size(2)}),
        Entry(mf.chi_c, (1.5, 0.05, "tanh"), bad={"sw2": var, "sb2": var, **act}),
        Entry(mf.depth_scales, (1.5, 0.05, "tanh"),
              bad={"sw2": var, "sb2": var, **act, "q0": pos}),
        Entry(mf.critical_sw2, (0.05, "tanh"),
              bad={"sb2": var, **act, "bracket": [(2.0, 1.0), "x", None, (0.0, 1.0)],
                   "num_bisect": size()}),
        Entry(mf.critical_point, (0.1, "tanh"), bad={"q_star": pos, **act}),
        Entry(mf.phase_diagram, (jnp.array([1.0, 2.0]), jnp.array([0.05]), "tanh"),
              bad={"sw2_grid": array(ndim=1), "sb2_grid": array(ndim=1), **act,
                   "batch_size": size()}),
        Entry(mf.propagate, (1.5, 0.05, "tanh", 3),
              bad={"sw2": var, "sb2": var, **act, "depth": size(), "q0": pos,
                   "c0": [*real(), 2.0]}),
        Entry(mf.measure_propagation, (jax.random.key(0), 1.5, 0.05, "tanh"),
              {"width": 8, "depth": 2},
              bad={"key": key(), "sw2": var, "sb2": var, **act, "width": size(),
                   "depth": size(), "weights": name(), "dtype": ["int32", "nope"]}),
        Entry(mf.gaussian_expectation, (jnp.tanh, 1.0),
              bad={"f": callable_(), "q": var, "order": size(2)}),
        Entry(mf.gaussian_rule, (8,), bad={"order": [*size(2), 10**6]}),
        Entry(mf.relu_q_star, (1.5, 0.05), bad={"sw2": var, "sb2": var,
                                                "negative_slope": real()}),
        Entry(mf.relu_chi1, (1.5,), bad={"sw2": var, "negative_slope": real()}),
        Entry(mf.relu_c_map, (0.5, 1.0, 1.5, 0.05),
              bad={"c": [*real(), 1.5], "q": pos, "sw2": var, "sb2": var}),
        # spectra
        Entry(sp.jacobian_singular_values, (jnp.tanh, jnp.ones(3)),
              bad={"fn": callable_(), "x": array()}),
        Entry(sp.init_network, (jax.random.key(0), 4, 2),
              bad={"key": key(), "width": size(), "depth": size(), "sw2": var, "sb2": var,
                   "weights": name(), "dtype": ["int32", "nope"]}),
        Entry(sp.apply_network, (net, jnp.ones(4), "tanh"),
              bad={"params": [3, None, "x"], "x": array(ndim=1), **act}),
        Entry(sp.layer_jacobian_singular_values, (net, jnp.ones(4), "tanh"),
              bad={"params": [3, None], "x": array(ndim=1), **act}),
        Entry(sp.network_input, (jax.random.key(0), 4, 1.0),
              bad={"key": key(), "width": size(), "q": var, "sw2": pos, "sb2": var}),
        Entry(sp.spectrum_moments, (jnp.ones(3),), bad={"singular_values": array(),
                                                       "axis": [5, "x", None]}),
        Entry(sp.jacobian_moments, (1.5, 0.05, "tanh", 3),
              bad={"sw2": var, "sb2": var, **act, "depth": size(), "weights": name(),
                   "q": _but_none(pos)}),  # q=None: q*
        # models
        Entry(gf.models.MLP, ((4,), 3),
              bad={"widths": [3, "x", None, (), (0,), (-1,), (2.5,)], "out": size(),
                   "activation": name(), "kernel_init": name(), "bias_init": name(),
                   "norm": ["group", 3], "residual": boolean()}),
        Entry(gf.models.Chain, (3,), bad={"depth": size(), "activation": name(),
                                          "kernel_init": name()}),
        Entry(gf.models.DeepLinear, (4, 3), bad={"width": size(), "depth": size(),
                                                 "out": [0, -1, "x"],
                                                 "kernel_init": name()}),
        Entry(gf.models.RNN, (4, 2), bad={"hidden": size(), "out": size(), "cell": name(),
                                          "activation": name(), "forget_bias": real()}),
        Entry(gf.models.DenseBlock, (3,), bad={"features": size(), "activation": name(),
                                              "norm": ["group", 3]}),
        Entry(gf.models.chain_params, (w, b), bad={"w": array(), "b": array()}),
        Entry(gf.models.chain_weights, (gf.models.chain_params(w, b),),
              bad={"variables": [3, None, "x", {"params": {"a": {}}}, _variables()]}),
        Entry(gf.models.perturbations, (_mlp(), _variables(), jnp.ones((2, 5))),
              bad={"model": [3, None], "variables": [3, None, {}], "x": array()}),
        # probes (probes.probe itself is being rewritten by the lead engineer: not counted)
        Entry(gf.probes.probe_rnn,
              (rnn, rnn.init(jax.random.key(0), jnp.ones((2, 3, 1))), jnp.ones((2, 3, 1)),
               jnp.ones((2, 1))),
              bad={"model": [3, None, _mlp()], "variables": [3, None, {}],
                   "x": array(ndim=3), "loss": name()}),
        Entry(gf.probes.verdict, (_report(),),
              bad={"report": [3, None, "x"], "vanishing": real(positive=True),
                   "exploding": real(positive=True), "stat": name()}),
        Entry(gf.probes.format_report, (_report(),),
              bad={"report": [3, None], "stat": name(), "vanishing": real(positive=True)}),
        Entry(gf.probes.to_frame, (_report(),), bad={"report": [3, None, "x"]}),
        Entry(gf.probes.plot_report, (_report(), tmp / "rep"),
              bad={"report": [3, None], "path": path(), "stat": name()}),
        Entry(gf.probes.get_loss, ("mse",), bad={"loss": name()}),
        Entry(gf.probes.time_decay_rate, (jnp.ones(4),), bad={"norms": array(),
                                                              "axis": [5, "x", None]}),
        Entry(gf.probes.check_history, (_history(),),
              bad={"history": [3, None, "x", {}, {"loss": "abc"}],
                   "update_ratio": real(positive=True), "grad_threshold": real(positive=True),
                   "window": size(), "spike_factor": real(positive=True)}),
        # optim
        Entry(gf.optim.clip_by_value, (1.0,), bad={"max_delta": real(positive=True, finite=False),
                                                   "layers": [0, "x", 2.5]}),
        Entry(gf.optim.clip_by_global_norm, (1.0,), bad={"max_norm": ["x", None, NAN, -1.0, 0.0],
                                                         "layers": [0, "x"]}),
        Entry(gf.optim.clip_by_layer_norm, (1.0,), bad={"max_norm": ["x", None, NAN, -1.0],
                                                        "layers": [-1, "x"]}),
        Entry(gf.optim.adaptive_grad_clip, (0.01,),
              bad={"clipping": ["x", None, NAN, -1.0], "eps": ["x", NAN, -1.0],
                   "unclipped": [3, OPAQUE], "layers": [0, "x"]}),
        Entry(gf.optim.add_l1_decay, (1e-4,), bad={"weight_decay": real(nonneg=True),
                                                   "mask": [3, "x"]}),
        Entry(gf.optim.add_l2_decay, (1e-4,), bad={"weight_decay": real(nonneg=True),
                                                   "mask": [3, "x"]}),
        Entry(gf.optim.coupled_l2, ("sgd", 1e-4, 0.1),
              bad={"direction_": name(), "weight_decay": real(nonneg=True),
                   "learning_rate": real(positive=True)}),
        Entry(gf.optim.decoupled_l2, ("sgd", 1e-4, 0.1),
              bad={"direction_": name(), "weight_decay": real(nonneg=True),
                   "learning_rate": real(positive=True)}),
        Entry(gf.optim.decay_mask, (_params(),), bad={"params": [3, None, "x"],
                                                     "decay": [3, "kernel"]}),
        Entry(gf.optim.direction, ("sgd",), bad={"name": name()}),
        Entry(gf.optim.layer_names, (_params(),), bad={"params": [3, None, "x"],
                                                      "layers": [0, "x"]}),
        Entry(gf.optim.layer_norms, (_params(),), bad={"tree": [None, "x", {"a": "b"}],
                                                      "layers": [0, "x"]}),
        Entry(gf.optim.make_optimizer, ("sgd", 0.1),
              bad={"name": name(), "learning_rate": real(positive=True),
                   "weight_decay": _but_none(real(nonneg=True)),
                   "l1_decay": _but_none(real(nonneg=True)),
                   "decoupled": boolean()}),  # weight_decay, l1_decay = None: no such piece
        Entry(gf.optim.monitor_grad_stats, (0.9,), bad={"decay": [*real(), -0.5, 1.0],
                                                        "layers": [0, "x"]}),
        Entry(gf.optim.telemetry, (optax.sgd(0.1).init(_params()),), bad={"opt_state": [3, "x"]}),
        # data
        Entry(gf.data.load_digits, kwargs={"n_train": 100, "n_test": 50},
              bad={"scale": name(), "test_fraction": [*real(), -0.1, 1.5],
                   "n_train": _but_none(size()), "n_test": _but_none(size()),
                   "seed": [-1, "x", 2.5]}),  # n_train=None: all
        Entry(gf.data.adding_problem, (jax.random.key(0), 4, 5),
              bad={"key": key(), "n": size(), "length": size(2), "dtype": ["int32", "nope"]}),
        Entry(gf.data.teacher_student, (jax.random.key(0), 8),
              bad={"key": key(), "n": size(), "in_dim": size(), "widths": [3, (0,), "x"],
                   "out": size(), "activation": name()}),
        Entry(gf.data.markov_sequences, (jax.random.key(0), 4, 2, 3),
              bad={"key": key(), "n_train": size(), "n_test": size(minimum=0),
                   "length": size(), "vocab": size(2), "order": size()}),
        Entry(gf.data.get, ("digits",), bad={"name": name()}),
        # config
        Entry(gf.config.canonical, ("highest",), bad={"name": name()}),
        Entry(gf.config.set_matmul_precision, ("highest",), bad={"name": name()}),
        # adapters, taps, layer_order: the probe of any model
        Entry(gf.adapters.as_model, (_mlp(), _mlp_vars()),
              bad={"model": [OPAQUE, 3, None], "variables": ["abc", None, 3],
                   "train": ["x", None], "rngs": [3, "k", OPAQUE]}),
        Entry(gf.optim.layer_order, (_mlp(), _mlp_vars(), jnp.ones((2, 5))),
              bad={"model": [OPAQUE, 3], "variables": ["abc", None],
                   "x": ["abc", None, OPAQUE, jnp.ones((0, 5)), jnp.float32(1.0)]}),
        Entry(gf.taps.trace, (lambda p, x: x @ p["w"], {"w": jnp.ones((5, 2))}, jnp.ones((2, 5))),
              bad={"x": ["abc", None, OPAQUE, jnp.ones((0, 5)), jnp.float32(1.0), ()]}),
        # rng
        Entry(gf.rng.key, (3,), bad={"seed": [-1, 2**32, "x", 2.5, None, NAN]}),
        Entry(gf.rng.threefry_key, (3,), bad={"seed": [-1, 2**32, "x", 2.5, None, NAN]}),
        Entry(gf.rng.resolve, ("native",), bad={"name": name()}),
        Entry(gf.rng.threefry2x32,
              tuple(jnp.asarray(v, jnp.uint32) for v in (1, 2, 3, 4)),
              bad={"k0": [1, "x", None, jnp.ones(2, jnp.float32)],
                   "x1": [1, "x", jnp.ones(2, jnp.int32)]}),
        # plotting
        Entry(gf.plotting.figure, (), bad={"nrows": size(), "ncols": size(),
                                           "width": ["wide", -1.0, None], "aspect": real()}),
        Entry(gf.plotting.finite_or_raise, ([1.0, 2.0], "x"),
              bad={"values": [[1.0, NAN], [INF], "abc", None]}),
        Entry(gf.plotting.layer_colors, (3,), bad={"n": size()}),
        Entry(gf.plotting.band, (gf.plotting.figure()[1], [0.0, 1.0], [[1.0, 2.0]]),
              bad={"samples": [[1.0, 2.0], [[1.0]], None], "q": [(90, 10), (1, 2, 3), (-5, 50)]}),
        Entry(gf.plotting.savefig, (gf.plotting.figure()[0], tmp / "fig"),
              bad={"path_stem": path(), "formats": ["jpeg", (), 3]}),
        # sweep
        Entry(gf.sweep.cpu_devices, (1,), bad={"n": [0, -1, "many", 2.5, None, True]}),
        Entry(gf.sweep.load, (tmp / "store",), bad={"workdir": [*path(), tmp / "nowhere"]}),
        Entry(gf.sweep.load_metadata, (tmp / "store",),
              bad={"workdir": [*path(), tmp / "nowhere"]}),
        Entry(gf.sweep.in_use, (tmp / "store",), bad={"workdir": path()}),
        Entry(gf.sweep.to_arrays, (pd.DataFrame({"seed": [0, 1], "value": [1.0, 2.0]}), ("seed",)),
              bad={"frame": [None, {"seed": [0]}, [1.0]], "dims": ["seed", (), None, ("nope",)],
                   "values": [None, 3, "nope"]}),
        Entry(gf.sweep.vmap, (lambda a: a,),
              bad={"fn": callable_(), "block_size": [0, -1, "x", 2.5, True],
                   "devices": [[], "cpu", ["cpu:0"], 3]}),
        Entry(gf.sweep.run, (lambda hp, k: {"x": hp["a"]}, {"a": [1.0]}, [0]),
              {"workdir": tmp / "runs", "progress": False},
              bad={"fn": callable_(), "grid": [3, "x", {"a": []}, {"a": "bc"}, {"seed": [1]}],
                   "seeds": [3, [-1], [0, 0], ["a"], []], "chunk_size": [0, -1, "x"],
                   "rng": name(), "block_size": [0, "x"], "workdir": [None]}),
        # training
        Entry(gf.training.TrainConfig, (_mlp(),),
              bad={"model": [3, None, "mlp"], "optimizer": name(), "loss": name(),
                   "steps": size(), "batch_size": [0, -1, "x"], "record_every": size(),
                   "max_loss": [-1.0, "x"], "probe": ["yes", 1]}),
        Entry(gf.training.init_state, (_config(), jnp.ones((4, 5)), jax.random.key(0),
                                       {"learning_rate": 0.1}),
              bad={"config": [3, None], "x": ["abc", None, jnp.ones((0, 5))], "key": key(),
                   "hparams": [3, "x", {"learning_rate": "x"}, {"learning_rate": NAN}]}),
        Entry(gf.training.evaluate, (_mlp(), _variables(), jnp.ones((2, 5)), jnp.array([0, 1])),
              bad={"model": [3, None], "variables": [3, None, {}],
                   "x": ["abc", None, jnp.full((2, 5), NAN), jnp.ones((0, 5))],
                   "y": [jnp.array([0, 7]), "abc", None], "loss": name()}),
        Entry(gf.training.build_optimizer, (_config(), {"learning_rate": 0.1}),
              bad={"config": [3, None], "hparams": [{"learning_rate": -1.0}, {},
                                                     {"learning_rate": "x"}, 3]}),
        Entry(gf.training.train_fn, (_config(), _data()),
              bad={"config": [3, None], "data": [3, None, (1,), (jnp.ones(3), jnp.ones(2))]}),
        Entry(gf.training.record_steps, (_config(),), bad={"config": [3, None]}),
        Entry(gf.training.make_train_step, (_mlp(), optax.sgd(0.1)),
              bad={"model": [3, None], "tx": [3, None], "loss": name()}),
        Entry(gf.training.save_checkpoint, (tmp / "c.npz", _state()),
              bad={"path": path(), "state": [3, None], "metrics": [3, "x"],
                   "diverged_step": ["x", 2.5]}),
        Entry(gf.training.load_checkpoint, (tmp / "nothing.npz", _state()),
              bad={"path": [*path(), tmp]}),
        Entry(gf.training.fit, (_config(), _data(), {"learning_rate": 0.1}),
              {"key": jax.random.key(0), "progress": False},
              bad={"config": [3, None], "data": [3, None],
                   "hparams": [3, {"learning_rate": -1.0}], "key": key(),
                   "checkpoint_every": size(), "checkpoint_dir": [3, OPAQUE]}),
        # experiment
        Entry(gf.experiment.get, ("layer_speed",), bad={"name": name()}),
        Entry(gf.experiment.layout, ("x", "quick"), bad={"name": [3, None], "mode": name(),
                                                        "root": [3, None]}),
        Entry(gf.experiment.parse_override, ("seeds=4",),
              bad={"text": ["seeds", "1x=2", 3, None]}),
        Entry(gf.experiment.resolve_config, (gf.experiment.get("layer_speed"), "quick"),
              bad={"experiment": [3, None], "mode": name(),
                   "overrides": [{"nope": 1}, {"seeds": "x"}, 3]}),
        Entry(gf.experiment.fmt, (1.5,), bad={"x": [None, OPAQUE, [1]], "digits": [-1, "x"]}),
        Entry(gf.experiment.write_atomic, (tmp / "w.txt", "text"),
              bad={"path": path(), "text": [b"bytes", 3, None]}),
        Entry(gf.experiment.write_macros, (tmp / "m.tex", {"a": 1.0}),
              bad={"path": path(), "macros": [3, {"a1": 1.0}, {"a": None}],
                   "digits": [-1, "x"]}),
        Entry(gf.experiment.latex_table, ([[1.0, 2.0]], ["a", "b"], tmp / "t.tex"),
              bad={"rows": [3, [[1.0]], None], "columns": [3, None, ["a"]],
                   "path": path(), "digits": [-1, "x"]}),
        Entry(gf.experiment.check_memory, ("x", 10.0), bad={"nbytes": ["x", None, -1.0]}),
        Entry(gf.experiment.stored_config, (tmp / "no_store",), bad={"workdir": path()}),
    ]  # fmt: skip
    return e


# ------------------------------------------------------------------------------ one bad call


class _Hang(Exception):
    pass


def _alarm(*_):
    raise _Hang


def _raised_in_gradflow(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(GRADFLOW)


def _names(message: str, param: str, bad: Any) -> bool:
    """The message names the argument, the bad value, or the bad key or element in it."""
    text = message.lower()
    words = {param.lower(), param.rstrip("_").lower(), param.replace("_", " ").lower()}
    if any(w and w in text for w in words):
        return True
    if isinstance(bad, jax.Array | np.ndarray):
        return False
    parts = [bad]
    if isinstance(bad, dict):
        parts += list(bad)
    elif isinstance(bad, list | tuple):
        parts += list(bad)
    return any(repr(p)[:24].lower() in text for p in parts if repr(p) not in ("0", "1"))


def classify(entry: Entry, param: str, bad: Any) -> tuple[str, str]:
    """("clear" | "unclear" | "silent" | "hang", detail) for ``entry`` with ``param`` = ``bad``."""
    sig = inspect.signature(entry.fn)
    bound = sig.bind_partial(*entry.args, **entry.kwargs)
    if param in sig.parameters:
        bound.arguments[param] = bad
    else:  # a keyword collected by **kwargs
        var_kw = next(p.name for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD)
        bound.arguments[var_kw] = {**bound.arguments.get(var_kw, {}), param: bad}
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LIMIT_S)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            entry.fn(*bound.args, **bound.kwargs)
    except _Hang:
        return "hang", f"ran past {LIMIT_S} s"
    except (ValueError, TypeError) as e:
        msg = str(e)
        if not _raised_in_gradflow(e):
            return "unclear", f"{type(e).__name__} from a dependency: {msg[:120]}"
        if not _names(msg, param, bad):
            return "unclear", f"{type(e).__name__} not naming {param!r}: {msg[:120]}"
        return "clear", msg[:120]
    except FileNotFoundError as e:  # a path that does not exist: named by the OS error
        return ("clear" if str(bad) in str(e) or param in str(e) else "unclear"), str(e)[:120]
    except Exception as e:  # every other exception is the finding
        return "unclear", f"{type(e).__name__}: {str(e)[:120]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return "silent", "returned normally"


def _calls(tmp: Path):
    for entry in registry(tmp):
        params = inspect.signature(entry.fn).parameters
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        for param, values in entry.bad.items():
            assert param in params or var_kw, f"{entry.name} has no argument {param!r}"
            for bad in values:
                yield entry, param, bad


def test_every_public_callable_is_in_the_registry(tmp_path):
    """The registry covers the public surface (minus what cannot take bad input)."""
    covered = {e.fn for e in registry(tmp_path)} | {gf.probes.probe}
    exempt = {  # no arguments, classes of results, or context managers
        "names", "registry", "optimizer_names", "usable_cores", "style", "write_index",
        "batched", "log_axis_if_spans", "Activation", "Experiment", "Layout", "LayerReport",
        "RecurrentReport", "Sign", "History", "TrainState", "StepOutput", "LSTMCell",
        "NetworkParams", "SpectralMoments", "DepthScales", "PhaseDiagram", "Propagation",
        "Digits", "TeacherStudent", "ChainForward", "ChainGrads", "LogGrads", "MLPForward",
        "MLPGrads", "Initializer", "sweep_axes",
        # predicates (True or False for anything), result classes, pytree path helpers
        "Model", "accepts_train", "is_equinox_module", "is_nnx_module", "is_nnx_state",
        "Layer", "TapPlan", "leaf_paths", "path_names",
        # the precision policy: no arguments, a context manager, a decorator
        "matmul_precision", "matmul_scope", "use_matmul_precision", "wrap",
        # the base class of typed configs; json.dumps's default (takes any object)
        "Config", "jsonable",
    }  # fmt: skip
    missing = []
    for module in gf.__all__[1:]:
        mod = getattr(gf, module)
        for n in mod.__all__:
            obj = getattr(mod, n)
            if callable(obj) and n not in exempt and obj not in covered:
                if inspect.isclass(obj) and issubclass(obj, tuple):
                    continue
                missing.append(f"{module}.{n}")
    assert not missing, f"add to the registry: {missing}"


def census(tmp: Path) -> dict[str, list[str]]:
    """Outcomes of every bad call: {"clear" | "unclear" | "silent" | "hang": [description, ...]}."""
    out = {k: [] for k in ("clear", "unclear", "silent", "hang")}
    for entry, param, bad in _calls(tmp):
        kind, detail = classify(entry, param, bad)
        out[kind].append(f"{entry.name}({param}={bad!r:.40}): {detail}")
    return out


def _summary(outcomes: dict[str, list[str]]) -> tuple[float, str]:
    total = sum(len(v) for v in outcomes.values())
    share = len(outcomes["clear"]) / total
    text = (f"{len(outcomes['clear'])} of {total} calls ({share:.1%}) refused clearly; unclear "
            f"{len(outcomes['unclear'])}, silent {len(outcomes['silent'])}, hang "
            f"{len(outcomes['hang'])}")  # fmt: skip
    return share, text


def test_bad_input_census(tmp_path, capsys):
    """Every (callable, argument, bad value): at least TARGET refused clearly, none hangs."""
    result = census(tmp_path)
    share, text = _summary(result)
    with capsys.disabled():
        print(f"\nbad-input census: {text}")
        for kind in ("hang", "silent", "unclear"):
            for line in result[kind]:
                print(f"  {kind}: {line}")
    assert not result["hang"]
    assert share >= TARGET, f"{share:.1%} refused clearly, below {TARGET:.0%}"


# The cheap theory functions: hypothesis draws the bad values.
_THEORY = {
    "q_star": (lambda v, **k: gf.meanfield.q_star(v["sw2"], v["sb2"], "tanh", **k)),
    "chain_grads": (lambda v, **k: gf.analytic.chain_grads(v["sw2"], v["sb2"], 1.0, 1.0,
                                                           "sigmoid")),
    "relu_q_star": (lambda v, **k: gf.meanfield.relu_q_star(v["sw2"], v["sb2"])),
}  # fmt: skip


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    where=st.integers(0, 50),
    value=st.sampled_from([NAN, INF, -INF]),
    which=st.sampled_from(["sw2", "sb2"]),
)
def test_non_finite_values_at_random_positions_are_refused(shape, where, value, which):
    a = np.full(shape, 1.5)
    a.flat[where % a.size] = value
    v = {"sw2": jnp.full(shape, 1.5), "sb2": jnp.full(shape, 0.5)}
    v[which] = jnp.asarray(a)
    for name_, f in _THEORY.items():
        with pytest.raises(ValueError, match=r"(must be finite|non-finite)") as info:
            f(v)
        assert _raised_in_gradflow(info.value), name_


@settings(max_examples=25, deadline=None)
@given(n=st.integers(-(2**40), 0), bad_name=st.text(min_size=1, max_size=12))
def test_negative_sizes_and_unknown_names_are_refused(n, bad_name):
    from hypothesis import assume

    assume(bad_name not in gf.activations.names() and bad_name.strip() == bad_name)
    for f in (
        lambda: gf.meanfield.propagate(1.5, 0.05, "tanh", n),
        lambda: gf.analytic.exploding_chain(n, 0.5),
        lambda: gf.initializers.weight_variance("he_normal", n, 4),
        lambda: gf.models.MLP((n,), out=2),
    ):
        with pytest.raises((ValueError, TypeError)) as info:
            f()
        assert _raised_in_gradflow(info.value)
    with pytest.raises(ValueError, match="unknown activation") as info:
        gf.meanfield.q_star(1.5, 0.05, bad_name)
    assert "valid names" in str(info.value)


def _census_main() -> int:  # pragma: no cover - `python tests/test_bad_input.py`: the census
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = census(Path(tmp))
    for kind in ("hang", "silent", "unclear"):
        for line in result[kind]:
            print(f"{kind}: {line}")
    print(_summary(result)[1])
    return 0


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("MPLBACKEND", "Agg")
    raise SystemExit(_census_main())
