"""remedies quick config end to end; the vanishing-gradient claims checked from saved results."""

import numpy as np
import pytest

import gradflow as gf
from experiments import remedies as exp


@pytest.fixture(scope="module")
def done(run_quick):
    return run_quick("remedies")


def test_outputs_exist(done):
    root, cfg, figs, tabs = done
    assert {p.name for p in figs} == {
        f"{stem}.{ext}" for stem in exp.EXPERIMENT.figures for ext in ("pdf", "png")
    }
    for p in [*figs, *tabs]:
        assert p.stat().st_size > 0
    assert {p.name for p in tabs} == {"remedies.tex", "remedies_macros.tex"}
    table = (root / "tables" / "remedies.tex").read_text()
    assert table.count(r"\\") == 1 + len(cfg.variants)  # header + one row per variant
    macros = (root / "tables" / "remedies_macros.tex").read_text()
    for name in cfg.variants:
        m = exp._macro(name)
        for what in ("Ratio", "Acc", "AccSd", "Lr"):
            assert f"\\remedies{what}{m}}}" in macros
    assert r"\newcommand{\remediesDepth}{20}" in macros


def test_every_run_finite_and_every_seed_present(done):
    root, cfg, _, _ = done
    df = gf.sweep.load(root / "results" / "variants")
    assert cfg.seeds >= 5
    runs = df.drop_duplicates(["variant", "lr_factor", "seed"])
    assert len(runs) == len(cfg.variants) * len(cfg.lr_factors) * cfg.seeds
    # the probe sees depth Dense layers (the readout last)
    layers = df[df["metric"] == "init_preact_grad"]["layer"]
    assert int(layers.max()) == cfg.depth - 1


def test_plain_sigmoid_vanishes_and_does_not_train(done):
    root, cfg, _, _ = done
    df, config = exp.load(root / "results")
    r = exp.ratios(df, "sigmoid")
    assert r.shape == (cfg.seeds,)
    # at most sigma' = 1/4 per layer over 19 sigmoid layers: measured ~1e-12 in every seed
    assert np.all(r < 1e-9)
    s = exp.summary(df, config).set_index("variant")
    assert s.loc["sigmoid", "acc_mean"] < 0.2  # chance is 0.1
    # the worst of all variants
    assert s["acc_mean"].idxmin() == "sigmoid"
    assert s["final_loss"].idxmax() == "sigmoid"


#: Remedies whose effect the claims name: a ReLU-family activation, BatchNorm, identity skips.
REMEDIES = ("relu", "leaky_relu", "elu", "selu", "sigmoid_batchnorm", "sigmoid_residual")


def test_remedies_lift_the_ratio_by_orders_of_magnitude(done):
    root, cfg, _, _ = done
    df, _ = exp.load(root / "results")
    plain = exp.ratios(df, "sigmoid")
    checked = [r for r in REMEDIES if r in cfg.variants]
    assert len(checked) >= 2
    for remedy in checked:
        fixed = exp.ratios(df, remedy)
        # every seed: more than 1e8 times the plain sigmoid net's ratio, and within 100x of 1
        assert np.all(fixed > 1e8 * plain.max()), (remedy, fixed, plain)
        assert np.all((fixed > 1e-2) & (fixed < 1e2)), (remedy, fixed)


def _final_accuracy(df, s, name):
    """Final test accuracy of each finite seed of ``name`` at its chosen learning-rate factor."""
    last = df.loc[df["metric"] == "test_accuracy", "step"].max()
    acc = df[(df["variant"] == name) & (df["metric"] == "test_accuracy") & (df["step"] == last)]
    acc = acc[(acc["lr_factor"] == s.loc[name, "lr_factor"]) & ~acc["diverged"]]
    return acc["value"].to_numpy(float)


def test_remedies_train_clearly_better(done):
    root, cfg, _, _ = done
    df, config = exp.load(root / "results")
    s = exp.summary(df, config).set_index("variant")
    assert (s["diverged"] == 0).all()
    plain = _final_accuracy(df, s, "sigmoid")
    for remedy in ("elu", "selu", "sigmoid_batchnorm", "sigmoid_residual"):
        if remedy in cfg.variants:
            acc = _final_accuracy(df, s, remedy)
            # far from chance, and many (robust) standard deviations above the plain sigmoid
            # net: median and 1.4826 * MAD, because 300 SGD steps at the largest factors amplify
            # float32 rounding, and one seed of five may end in a worse basin (seen: 0.47 where
            # an ulp-different run of the same seed reached 0.92); every seed still beats chance
            spread = 1.4826 * np.median(np.abs(acc - np.median(acc)))
            assert np.median(acc) > 0.75, (remedy, acc)
            assert np.median(acc) - np.median(plain) > 5 * max(spread, 0.01), (remedy, acc, plain)
            assert acc.min() > plain.max() + 0.2, (remedy, acc, plain)


def test_chosen_learning_rate_is_from_the_grid_and_training_loss(done):
    root, cfg, _, _ = done
    df, config = exp.load(root / "results")
    s = exp.summary(df, config)
    last = df[(df["metric"] == "loss") & (df["step"] == df["step"].max())]
    for row in s.itertuples():
        assert row.lr_factor in cfg.lr_factors
        runs = last[last["variant"] == row.variant]
        finite = runs.groupby("lr_factor").filter(lambda g: not g["diverged"].any())
        # the lowest median final training loss among the factors where no seed diverged
        med = finite.groupby("lr_factor")["value"].median()
        assert row.tried == len(med) >= 1
        assert row.final_loss == pytest.approx(med.min(), rel=1e-12)
        assert row.lr_factor == med.idxmin()
        assert row.learning_rate == pytest.approx(
            row.lr_factor * exp.BASE_LR[exp.VARIANTS[row.variant].optimizer]
        )


def test_bad_config():
    e = gf.experiment.get("remedies")
    with pytest.raises(ValueError, match="unknown variants"):
        e.run(e.config("quick", {"variants": ["sigmoid", "swish_magic"]}), None)
    with pytest.raises(ValueError, match="must be a multiple of record_every"):
        e.run(e.config("quick", {"steps": 30, "record_every": 20}), None)
    with pytest.raises(ValueError, match="seeds must be an int >= 5"):
        e.run(e.config("quick", {"seeds": 3}), None)
    with pytest.raises(ValueError, match="lr_factors must be positive"):
        e.run(e.config("quick", {"lr_factors": [1.0, -1.0]}), None)
    with pytest.raises(ValueError, match="variants must be distinct"):
        e.run(e.config("quick", {"variants": ["sigmoid", "sigmoid"]}), None)
