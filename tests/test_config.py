"""gradflow.config: the precision policy reaches every matrix product gradflow traces, is recorded
with the results, and opting in to the backend's fast passes works."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.extend import core as jcore

import gradflow as gf
from gradflow import config

HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
DEFAULT = (jax.lax.Precision.DEFAULT, jax.lax.Precision.DEFAULT)
KEY = jax.random.key(0)


def _dot_precisions(fn, *args) -> list:
    """The ``precision`` of every dot_general / convolution in ``fn``'s jaxpr, sub-jaxprs
    included (jit, scan, shard_map, custom_jvp bodies)."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found.append(eqn.params["precision"])
            for sub in jcore.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def _all(precisions, want) -> bool:
    return bool(precisions) and all(p == want for p in precisions)


# ------------------------------------------------------------------------------------ the API


def test_default_names_and_aliases():
    assert config.DEFAULT == "highest" == config.matmul_precision()
    assert config.PRECISIONS == ("highest", "high", "default")
    aliases = {"float32": "highest", "tensorfloat32": "high", "bfloat16_3x": "high",
               "bfloat16": "default", " HIGHEST ": "highest"}  # fmt: skip
    for alias, name in aliases.items():
        assert config.canonical(alias) == name
    with pytest.raises(ValueError, match=r"unknown matmul precision 'fast'; valid: 'highest'"):
        config.canonical("fast")
    with pytest.raises(ValueError, match="unknown matmul precision None"):
        config.set_matmul_precision(None)


def test_set_and_scoped_override_restore():
    previous = config.set_matmul_precision("tensorfloat32")
    try:
        assert previous == "highest" and config.matmul_precision() == "high"
        with config.use_matmul_precision("default") as name:
            assert name == "default" == config.matmul_precision()
            with config.use_matmul_precision("float32"):
                assert config.matmul_precision() == "highest"
            assert config.matmul_precision() == "default"
        assert config.matmul_precision() == "high"
        with pytest.raises(RuntimeError), config.use_matmul_precision("default"):
            raise RuntimeError  # an exception inside the block restores the policy too
        assert config.matmul_precision() == "high"
    finally:
        config.set_matmul_precision(previous)
    assert config.matmul_precision() == "highest"
    with pytest.raises(ValueError, match="unknown matmul precision 'tf32'"):
        with config.use_matmul_precision("tf32"):
            pytest.fail("the block must not run")


def test_environment_variable(monkeypatch):
    monkeypatch.setenv(config.ENV_VAR, "tensorfloat32")
    assert config._from_env() == "high"
    monkeypatch.setenv(config.ENV_VAR, "")
    assert config._from_env() == "highest"
    monkeypatch.setenv(config.ENV_VAR, "tf32")
    with pytest.raises(ValueError, match=r"GRADFLOW_MATMUL_PRECISION: unknown matmul precision"):
        config._from_env()


def test_scope_and_wrap_set_jax_precision_without_leaking():
    a = jnp.ones((3, 3))
    assert _dot_precisions(lambda x: x @ x, a) == [None]  # JAX's own default, untouched
    with config.matmul_scope():
        assert _dot_precisions(lambda x: x @ x, a) == [HIGHEST]
    wrapped = config.wrap(lambda x: x @ x)
    assert _dot_precisions(wrapped, a) == [HIGHEST]
    with config.use_matmul_precision("default"):
        assert _dot_precisions(wrapped, a) == [DEFAULT]  # read at each call
    assert _dot_precisions(lambda x: x @ x, a) == [None]


# -------------------------------------------------------------- every entry point traces at it

MODEL = gf.models.MLP(widths=(4, 4), out=3, activation="tanh")
X = jax.random.normal(KEY, (6, 2))
Y = jnp.arange(6) % 3


def _train_config():
    return gf.training.TrainConfig(
        model=MODEL, optimizer="sgd", loss="softmax_cross_entropy", steps=2, batch_size=None,
        record_every=1,
    )  # fmt: skip


ENTRY_POINTS = (
    "probe", "vmap(probe)", "train_fn", "make_train_step", "evaluate", "sweep.batched",
    "analytic.mlp_grads", "spectra.layer_jacobian_singular_values",
    "spectra.jacobian_singular_values", "meanfield.measure_propagation",
)  # fmt: skip


@functools.cache
def _entry_points():
    variables = MODEL.init(KEY, X)
    fn = gf.training.train_fn(_train_config(), (X, Y))
    tx = gf.training.build_optimizer(_train_config(), {"learning_rate": 0.1})
    step = gf.training.make_train_step(MODEL, tx)
    state = gf.training.init_state(_train_config(), X, KEY, {"learning_rate": 0.1})
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), (gf.sweep.MESH_AXIS,))
    layers = [(jnp.eye(2), jnp.zeros(2))] * 2
    net = gf.spectra.init_network(KEY, 4, 3, sw2=1.0, sb2=0.0)
    return {
        "probe": (lambda v: gf.probes.probe(MODEL, v, X, Y), variables),
        "vmap(probe)": (
            jax.vmap(lambda v: gf.probes.probe(MODEL, v, X, Y)),
            jax.tree.map(lambda a: jnp.stack([a, a]), variables),
        ),
        "train_fn": (lambda k: fn({"learning_rate": 0.1}, k), KEY),
        "make_train_step": (lambda s: step(s, X, Y), state),
        "evaluate": (lambda v: gf.training.evaluate(MODEL, v, X, Y), variables),
        "sweep.batched": (
            gf.sweep.batched(lambda k: fn({"learning_rate": 0.1}, k), mesh),
            jax.random.split(KEY, 1),
        ),
        "analytic.mlp_grads": (
            lambda x: gf.analytic.mlp_grads(layers, x, jnp.ones(2), "tanh"),
            jnp.ones(2),
        ),
        "spectra.layer_jacobian_singular_values": (
            lambda x: gf.spectra.layer_jacobian_singular_values(net, x, "tanh"),
            jnp.ones(4),
        ),
        "spectra.jacobian_singular_values": (
            lambda x: gf.spectra.jacobian_singular_values(
                lambda u: gf.spectra.apply_network(net, u, "tanh"), x
            ),
            jnp.ones(4),
        ),
        "meanfield.measure_propagation": (
            lambda k: gf.meanfield.measure_propagation(k, 1.5, 0.05, "tanh", width=4, depth=2),
            KEY,
        ),
    }


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_entry_points_trace_their_dots_at_the_policy(name):
    assert set(_entry_points()) == set(ENTRY_POINTS)
    fn, arg = _entry_points()[name]
    assert _all(_dot_precisions(fn, arg), HIGHEST), name
    with config.use_matmul_precision("default"):  # the opt-in, and no stale compile cache
        assert _all(_dot_precisions(fn, arg), DEFAULT), name
    assert _all(_dot_precisions(fn, arg), HIGHEST), name


def test_sweep_compiles_at_the_policy_and_records_it(tmp_path):
    def fn(hparams, key):
        w = jax.random.normal(key, (3, 3))
        return {"out": jnp.sum(w @ w) * hparams["s"]}

    gf.sweep.run(fn, grid={"s": [1.0]}, seeds=range(2), workdir=tmp_path / "a", progress=False)
    meta = gf.sweep.load_metadata(tmp_path / "a")
    assert meta["sessions"][-1]["matmul_precision"] == "highest"
    assert "matmul_precision" not in meta["config"]  # the default: stores made before resume
    # the compiled program carries it (HLO), as traced by gradflow.sweep.run
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), (gf.sweep.MESH_AXIS,))
    hlo = jax.jit(gf.sweep.batched(lambda k: fn({"s": 1.0}, k), mesh)).lower(
        jax.random.split(KEY, len(jax.devices()))
    )
    assert "precision = [HIGHEST, HIGHEST]" in hlo.as_text()

    with config.use_matmul_precision("tensorfloat32"):
        gf.sweep.run(fn, grid={"s": [1.0]}, seeds=range(2), workdir=tmp_path / "b",
                     progress=False)  # fmt: skip
        with pytest.raises(ValueError, match="holds a different sweep"):  # never mixed
            gf.sweep.run(fn, grid={"s": [1.0]}, seeds=range(2), workdir=tmp_path / "a",
                         progress=False)  # fmt: skip
    meta = gf.sweep.load_metadata(tmp_path / "b")
    assert meta["config"]["matmul_precision"] == "high"
    assert meta["sessions"][-1]["matmul_precision"] == "high"
    with config.use_matmul_precision("tensorfloat32"):  # resumes: the store checks its own plan
        again = gf.sweep.run(fn, grid={"s": [1.0]}, seeds=range(2), workdir=tmp_path / "b",
                             progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(again, gf.sweep.load(tmp_path / "b"))


def test_fit_checkpoint_does_not_resume_at_another_precision(tmp_path):
    cfg = _train_config()
    hist = gf.training.fit(cfg, (X, Y), {"learning_rate": 0.1}, key=KEY, checkpoint_dir=tmp_path)
    assert len(hist.steps) == 2
    again = gf.training.fit(cfg, (X, Y), {"learning_rate": 0.1}, key=KEY, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(again.metrics["loss"], hist.metrics["loss"])  # resumed
    with config.use_matmul_precision("default"), pytest.raises(ValueError, match="different run"):
        gf.training.fit(cfg, (X, Y), {"learning_rate": 0.1}, key=KEY, checkpoint_dir=tmp_path)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the settings coincide only on CPU")
def test_cpu_results_identical_at_every_precision():
    """XLA:CPU multiplies float32 in float32 whatever the setting: the policy changes no bit."""
    keys = jax.random.split(KEY, 3)
    tx = gf.training.build_optimizer(_train_config(), {"learning_rate": 0.1})
    state = gf.training.init_state(_train_config(), X, KEY, {"learning_rate": 0.1})
    out = {}
    for name in ("highest", "default"):
        with config.use_matmul_precision(name):  # fresh jits: traced at this precision
            probes = jax.jit(jax.vmap(lambda k: gf.probes.probe(MODEL, MODEL.init(k, X), X, Y)))
            step = gf.training.make_train_step(MODEL, tx)
            new_state, stats = step(state, X, Y)
            out[name] = jax.tree.leaves((probes(keys), new_state.params, stats))
    for a, b in zip(out["highest"], out["default"], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cli_records_the_precision(tmp_path):
    """run.json and runtimes.json name the precision (the experiments index reads them)."""
    from gradflow import runner

    runtimes = tmp_path / "results" / "runtimes.json"
    out = runner.Outcome(name="x")
    out.seconds = {"run": 1.0}
    runner.record_runtime(tmp_path, "quick", out)
    assert json.loads(runtimes.read_text())["quick"]["x"]["matmul_precision"] == "highest"
    md = gf.experiment.index_markdown(json.loads(runtimes.read_text()))
    assert "Float32 matrix products at precision: `highest`" in md
