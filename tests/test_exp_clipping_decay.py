"""clipping_decay quick config end to end; 'clipping removes divergence' from the saved results."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf
from experiments import clipping_decay as exp


@pytest.fixture(scope="module")
def done(run_quick):
    return run_quick("clipping_decay")


def test_outputs_exist(done):
    _, _, figs, tabs = done
    assert {p.name for p in figs} == {"clipping_decay_headline.pdf", "clipping_decay_headline.png"}
    assert {p.name for p in tabs} == {"clipping_decay.tex", "clipping_decay_macros.tex"}
    for p in [*figs, *tabs]:
        assert p.stat().st_size > 0


def test_clipping_removes_divergence(done):
    root, cfg, _, _ = done
    df, config = exp.load(root / "results")
    frac = exp.diverged_fraction(df)
    assert set(frac) == set(exp.METHODS)
    # the regime explodes: many unclipped runs diverge, early (quick 3 of 5, full 6 of 16) ...
    assert frac["none"] >= 0.3
    runs = exp.runs(df)
    none = runs[(runs["method"] == "none") & runs["diverged"]]
    assert (none["diverged_step"] < cfg.steps // 4).all()
    # ... and the others stall at chance (10 classes: 0.1)
    _, acc, div = exp.curves(df, config, "none", "test_accuracy")
    assert (~div).any() and np.median(acc[~div, -1]) < 0.2
    # every clipping method: no seed diverges, and the survivors learn
    for m in exp.CLIPPERS:
        assert frac[m] == 0.0, m
        _, acc, _ = exp.curves(df, config, m, "test_accuracy")
        assert np.median(acc[:, -1]) > 0.6, m
        # the clipper was active: it clipped in most steps of the first block
        _, clipped, _ = exp.curves(df, config, m, "clipped_frac", reduce="hidden")
        assert np.median(clipped[:, 0]) > 0.5, m
    # weight decay is no cure for this explosion
    for m in exp.DECAYS:
        assert frac[m] > 0.0, m


def test_inactive_pieces_are_identities():
    # the shared chain with every threshold at inf and every decay at 0 is plain momentum SGD
    params = {"dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
              "dense_1": {"kernel": -jnp.ones((2, 2)), "bias": jnp.ones(2)}}  # fmt: skip
    grads = jax.tree.map(lambda p: 3.0 * jnp.ones_like(p) + p, params)
    cfg = exp.QUICK
    h = {**exp._hparams(cfg, exp.METHODS.index("none")), "learning_rate": 0.1}
    tx = exp.optimizer(h)
    ref = optax.sgd(0.1, momentum=0.9)
    u, _ = tx.update(grads, tx.init(params), params)
    r, _ = ref.update(grads, ref.init(params), params)
    # float32: the same operations up to rounding
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u, r)


def test_bad_config():
    e = gf.experiment.get("clipping_decay")
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        e.run(e.config("quick", {"clip_norm": 0.0}), None)
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        e.run(e.config("quick", {"l2": -1.0}), None)
    with pytest.raises(ValueError, match="must be a multiple of record_every"):
        e.run(e.config("quick", {"steps": 210}), None)
