"""variance_propagation quick config end to end; the claims checked from the saved results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from experiments import variance_propagation as exp


@pytest.fixture(scope="module")
def done(run_quick):
    return run_quick("variance_propagation")


def test_outputs_exist(done):
    _, _, figs, tabs = done
    assert {p.name for p in figs} == {
        f"{stem}.{ext}" for stem in exp.EXPERIMENT.figures for ext in ("pdf", "png")
    }
    for p in [*figs, *tabs]:
        assert p.stat().st_size > 0
    assert {p.name for p in tabs} == {
        "variance_propagation.tex",
        "variance_propagation_macros.tex",
    }


def _rates(root, activation, init):
    df, theory, _ = exp.load_profiles(root / "results")
    th = theory[f"{activation}/{init}"]
    fwd = np.median(exp.log_rate(exp.profile(df, activation, init, "q"), forward=True))
    bwd = np.median(exp.log_rate(exp.profile(df, activation, init, "grad_var"), forward=False))
    return (
        fwd,
        bwd,
        float(exp.log_rate(np.asarray(th["q"]), forward=True)),
        float(exp.log_rate(np.asarray(th["grad_var"]), forward=False)),
    )


def test_measured_rates_follow_mean_field(done):
    root, cfg, _, _ = done
    for a in exp.ACTIVATIONS:
        for i in cfg.inits:
            fwd, bwd, t_fwd, t_bwd = _rates(root, a, i)
            # log10 change per layer; finite width (64) and 5 seeds: 0.06 + 10% of the rate
            assert abs(fwd - t_fwd) <= 0.06 + 0.1 * abs(t_fwd), (a, i, fwd, t_fwd)
            assert abs(bwd - t_bwd) <= 0.06 + 0.1 * abs(t_bwd), (a, i, bwd, t_bwd)


def test_the_classic_conditions(done):
    root, _, _, _ = done
    # He preserves ReLU's variance both ways (up to the finite-width drift of the median, Hanin
    # 2018: about -0.04 decades per layer at width 64); Xavier/LeCun (sw2 = 1) halve it per layer
    fwd, bwd, _, _ = _rates(root, "relu", "he_normal")
    assert abs(fwd) < 0.06 and abs(bwd) < 0.06
    for init in ("xavier_uniform", "lecun_normal"):
        fwd, bwd, _, _ = _rates(root, "relu", init)
        assert fwd == pytest.approx(np.log10(0.5), abs=0.06)
        assert -bwd == pytest.approx(np.log10(0.5), abs=0.06)  # backward: shrinks toward input
    # N(0, 1) weights: gradients explode toward the input for relu, tanh and selu
    for a in ("relu", "tanh", "selu"):
        assert _rates(root, a, "normal")[1] < -0.5
    # U[-1/sqrt(n), 1/sqrt(n)] (sw2 = 1/3): gradients vanish toward the input for every one
    for a in exp.ACTIVATIONS:
        assert _rates(root, a, "fan_in_uniform")[1] > 0.15


def test_he_trains_where_xavier_stalls(done):
    root, _, _, _ = done
    df, cfg = exp.load_training(root / "results")
    assert cfg["train_depth"] == 30
    _, x_loss, x_div = exp.training_curves(df, cfg, "Xavier", "loss")
    _, h_loss, h_div = exp.training_curves(df, cfg, "He", "loss")
    _, x_acc, _ = exp.training_curves(df, cfg, "Xavier", "test_accuracy")
    _, h_acc, _ = exp.training_curves(df, cfg, "He", "test_accuracy")
    assert x_loss.shape[0] >= 5 and not x_div.any() and not h_div.any()
    # Xavier: every seed still at chance (ln 10) at the end; He: well below it
    assert np.all(x_loss[:, -1] > 0.97 * exp.LN10)
    assert np.median(h_loss[:, -1]) < 0.8 * exp.LN10
    assert np.median(h_acc[:, -1]) > np.median(x_acc[:, -1]) + 0.15


def test_backward_recursion_is_autodiff(x64):
    key = jax.random.key(0)
    kx, kg, kw = jax.random.split(key, 3)
    x = jax.random.normal(kx, (3, 8), jnp.float64)
    g = jax.random.normal(kg, (3, 8), jnp.float64)
    ws = jax.random.normal(kw, (5, 8, 8), jnp.float64) / np.sqrt(8)
    for name in exp.ACTIVATIONS:
        act = gf.activations.get(name)
        _, grad_var = exp.measure(act, x, g, ws)

        def forward(perturb, act=act):
            h = x @ ws[0] + perturb[0]
            hs = [h]
            for layer in range(1, 5):
                h = act.fn(h) @ ws[layer] + perturb[layer]
                hs.append(h)
            return jnp.sum(g * h), hs

        deltas = jax.grad(lambda p: forward(p)[0])(jnp.zeros((5, 3, 8)))
        # float64 reference: the recursion and autodiff agree to rounding
        np.testing.assert_allclose(grad_var, jnp.mean(deltas**2, axis=(1, 2)), rtol=1e-12)


def test_bad_config():
    e = gf.experiment.get("variance_propagation")
    with pytest.raises(ValueError, match="inits must be a non-empty subset"):
        e.run(e.config("quick", {"inits": ["glorot_magic"]}), None)
    with pytest.raises(ValueError, match="must be a multiple of record_every"):
        e.run(e.config("quick", {"steps": 210}), None)
