"""rnn_through_time quick config end to end; Pascanu et al.'s claims checked from saved results."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from experiments import rnn_through_time as exp


@pytest.fixture(scope="module")
def done(run_quick):
    return run_quick("rnn_through_time")


@pytest.fixture(scope="module")
def decay(done):
    root, *_ = done
    return exp.decay_summary(exp.load(root / "results"))


def test_outputs_exist(done):
    root, cfg, figs, tabs = done
    assert {p.name for p in figs} == {
        f"{stem}.{ext}" for stem in exp.EXPERIMENT.figures for ext in ("pdf", "png")
    }
    assert {p.name for p in tabs} == {
        "rnn_through_time.tex", "rnn_through_time_adding.tex", "rnn_through_time_macros.tex",
    }  # fmt: skip
    for p in [*figs, *tabs]:
        assert p.stat().st_size > 0
    macros = (root / "tables" / "rnn_through_time_macros.tex").read_text()
    for name in ("RateZeroNine", "RateOneFive", "LstmRateBiasOne", "AddingDivergedNoClip",
                 "AddingDivergedClip", "AddingLossClip", "AddingClippedFrac"):  # fmt: skip
        assert f"\\newcommand{{\\rnnThroughTime{name}}}" in macros
    assert r"\newcommand{\rnnThroughTimeAddingDivergedClip}{0}" in macros
    assert r"\newcommand{\rnnThroughTimeGamma}{1}" in macros
    df = gf.sweep.load(root / "results" / "vanilla")
    assert df["seed"].nunique() == cfg.seeds >= 8
    assert sorted(df["lambda1"].unique()) == sorted(cfg.lambda1)


def test_measured_norms_obey_the_bound(done):
    """||dC/dh_t|| <= (gamma lambda_1)^(T-t) ||dC/dh_T|| in every run and at every step (the
    bound is saved in log10 at run time, gamma from gradflow.activations)."""
    root, cfg, *_ = done
    data = exp.load(root / "results")
    assert data["theory"]["gamma"] == gf.activations.get("tanh").sup_grad == 1.0
    lam, cube = exp.curves(data["vanilla"], "lambda1")
    _, log_bound = exp.curves(data["vanilla"], "lambda1", "log10_bound")
    assert cube.shape == (len(cfg.lambda1), cfg.seeds, cfg.length)
    pos = cube > 0
    with np.errstate(divide="ignore"):
        log_measured = np.log10(np.where(pos, cube, 1.0))
    # float32 products over T steps: 1e-3 in log10 (0.2% relative) is ample
    assert np.all(log_measured[pos] <= log_bound[pos] + 1e-3)
    # and step by step: each factor is at most gamma lambda_1 (the same float32 slack)
    ratios = exp.step_ratios(cube)
    assert np.all(np.nan_to_num(ratios) <= lam[:, None, None] * (1 + 2e-3))


def test_vanishing_below_one_growth_only_above(decay):
    lam, rate = decay["lambda1"], decay["rate"]
    med = np.median(rate, axis=1)
    for i, v in enumerate(lam):
        if v <= 1.0:  # geometric decay at a rate below 1 and at most gamma lambda_1
            assert np.all(rate[i] < 1.0), (v, rate[i])
            assert np.all(rate[i] <= v * (1 + 1e-3)), (v, rate[i])
            assert np.all(decay["span"][i] < 1e-2), (v, decay["span"][i])
    # the rate grows with lambda_1
    assert np.all(np.diff(med) > 0), med
    # lambda_1 > 1 is necessary, not sufficient: at 1.1 the tanh slopes still make it vanish ...
    assert med[list(lam).index(1.1)] < 1.0
    # ... while a large lambda_1 makes it explode through time
    big = list(lam).index(3.0)
    assert np.all(rate[big] > 1.2)
    assert np.median(decay["span"][big]) > 1e3
    assert decay["max_step_ratio"][list(lam).index(1.5)] > 1.0  # growth at some steps


def test_lstm_decays_far_more_slowly(decay):
    lam = list(decay["lambda1"])
    fb = list(decay["forget_bias"])
    vanilla_09 = np.median(decay["rate"][lam.index(0.9)])
    vanilla_1 = np.median(decay["rate"][lam.index(1.0)])
    lstm_1 = np.median(decay["lstm_rate"][fb.index(1.0)])
    lstm_5 = np.median(decay["lstm_rate"][fb.index(5.0)])
    # per-step log-decay of the LSTM (forget bias 1) is less than half the vanilla one, at the
    # vanilla lambda_1 = 0.9 and at the same recurrent gain 1
    assert -math.log(lstm_1) < 0.5 * -math.log(vanilla_09)
    assert -math.log(lstm_1) < 0.6 * -math.log(vanilla_1)
    # with f ~ sigma(5) = 0.993 (close to the constant error carousel) there is no decay at all
    assert lstm_5 > 0.97
    span_09 = np.median(decay["span"][lam.index(0.9)])
    assert np.median(decay["lstm_span"][fb.index(5.0)]) > 1e2 * span_09


def test_clipping_removes_divergence(done):
    root, cfg, *_ = done
    data = exp.load(root / "results")
    summary = exp.adding_summary(data)
    no, yes = summary[math.inf], summary[cfg.clip]
    assert no["n"] == yes["n"] == cfg.seeds
    assert no["diverged_frac"] >= 0.5  # the large learning rate blows up without clipping ...
    assert yes["diverged_frac"] == 0.0  # ... and never with it
    assert no["median_diverged_step"] <= 20  # early: within the first few SGD steps
    # the clipped runs learn: below the loss of using the recent marked number only
    assert yes["final_loss"] < exp.RECENT_ONLY_LOSS
    # the clip telemetry: active in the first steps, rare afterwards
    assert yes["clipped_first"] >= 0.5
    assert yes["clipped_frac"] < yes["clipped_first"]
    runs = exp.adding_runs(data["adding"])
    assert runs.loc[runs["diverged"], "final_loss"].isna().all()


@pytest.mark.parametrize("cell", ["vanilla", "lstm"])
def test_init_params(cell):
    """All singular values of every recurrent kernel are lambda_1 (so is the spectral radius);
    the LSTM's forget-gate bias in hf/bias is the same net as RNN(forget_bias=beta)."""
    net = exp.model(cell, 8)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 5, 2)), jnp.float32)
    lam, beta = 1.7, 2.5
    params = exp.init_params(cell, net, x, jax.random.key(1), lam, beta)
    shapes = jax.eval_shape(lambda k: net.init(k, x[:1])["params"], jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(shapes)
    for name in exp.recurrent_paths(cell):
        u = np.asarray(params["rnn"]["cell"][name]["kernel"], np.float64)
        np.testing.assert_allclose(np.linalg.svd(u, compute_uv=False), lam, rtol=1e-5)
        np.testing.assert_allclose(np.abs(np.linalg.eigvals(u)), lam, rtol=1e-5)
    out = net.apply({"params": params}, x)
    if cell == "lstm":
        np.testing.assert_array_equal(params["rnn"]["cell"]["hf"]["bias"], beta)
        ref_net = gf.models.RNN(8, 1, cell="lstm", activation="tanh", forget_bias=beta)
        cellp = dict(params["rnn"]["cell"])
        cellp["hf"] = {**cellp["hf"], "bias": jnp.zeros(8)}
        ref = {**params, "rnn": {"cell": cellp}}
        np.testing.assert_allclose(ref_net.apply({"params": ref}, x), out, rtol=1e-6)
    # vmappable over keys and lambda_1 (how the sweep calls it)
    batch = jax.vmap(lambda k, g: exp.init_params(cell, net, x, k, g))(
        jax.random.split(jax.random.key(2), 3), jnp.array([0.5, 1.0, 3.0])
    )
    u = np.asarray(batch["rnn"]["cell"][exp.recurrent_paths(cell)[0]]["kernel"], np.float64)
    np.testing.assert_allclose(np.linalg.svd(u, compute_uv=False)[:, 0], [0.5, 1.0, 3.0],
                               rtol=1e-5)  # fmt: skip


def test_value_word():
    assert exp.value_word(0.9) == "ZeroNine"
    assert exp.value_word(1.5) == "OneFive"
    assert exp.value_word(5.0) == "Five"
    with pytest.raises(ValueError, match="cannot name"):
        exp.value_word(-1.0)


def test_bad_config():
    e = gf.experiment.get("rnn_through_time")
    with pytest.raises(ValueError, match="seeds must be an int >= 2"):
        e.run(e.config("quick", {"seeds": 1}), None)
    with pytest.raises(ValueError, match="lambda1 values must be positive"):
        e.run(e.config("quick", {"lambda1": (0.0, 1.0)}), None)
    with pytest.raises(ValueError, match="forget_bias must be a non-empty tuple"):
        e.run(e.config("quick", {"forget_bias": ()}), None)
    with pytest.raises(ValueError, match="config key 'clip' takes a finite number"):
        e.run(e.config("quick", {"clip": math.inf}), None)
    with pytest.raises(ValueError, match="must be a multiple of record_every"):
        e.run(e.config("quick", {"adding_steps": 7}), None)
    with pytest.raises(ValueError, match="exceeds adding_train"):
        e.run(e.config("quick", {"adding_batch": 1000}), None)


def test_unknown_cell():
    with pytest.raises(ValueError, match="unknown cell 'gru'; valid: vanilla, lstm"):
        exp.recurrent_paths("gru")
