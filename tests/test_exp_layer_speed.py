"""layer_speed quick config end to end; Nielsen's claim checked from the saved results."""

import numpy as np
import pytest

import gradflow as gf
from experiments import layer_speed as exp


@pytest.fixture(scope="module")
def done(run_quick):
    return run_quick("layer_speed")


def test_outputs_exist(done):
    root, _, figs, tabs = done
    assert {p.name for p in figs} == {
        f"{stem}.{ext}" for stem in exp.EXPERIMENT.figures for ext in ("pdf", "png")
    }
    for p in [*figs, *tabs]:
        assert p.stat().st_size > 0
    assert {p.name for p in tabs} == {"layer_speed.tex", "layer_speed_macros.tex"}
    macros = (root / "tables" / "layer_speed_macros.tex").read_text()
    assert r"\newcommand{\layerSpeedNielsenOne}{0.003}" in macros
    assert r"\newcommand{\layerSpeedFracIncreasing}{1}" in macros


def test_speeds_increase_toward_output_at_init(done):
    root, cfg, _, _ = done
    df = gf.sweep.load(root / "results" / "speeds")
    assert not df["diverged"].any()
    s = exp.summary(df)
    assert s["speeds"].shape == (cfg.seeds, len(exp.WIDTHS))
    assert cfg.seeds >= 20
    # every seed: each hidden layer learns faster than the one before it, by a factor of several
    assert s["increasing"].all()
    assert np.median(s["ratio"]) > 3.0
    assert s["ratio"].min() > 1.5
    # the same order of magnitude as Nielsen's MNIST draw (784 vs 64 inputs: not the same net)
    ratio_to_nielsen = s["mean"] / np.asarray(exp.NIELSEN_MNIST_SPEEDS)
    assert np.all((ratio_to_nielsen > 0.3) & (ratio_to_nielsen < 3.0))


def test_speeds_stay_ordered_during_training(done):
    root, cfg, _, _ = done
    df, config = exp.load(root / "results")
    epochs, cube = exp.training_speeds(df, config)
    assert epochs[0] == 0 and epochs[-1] == cfg.epochs
    med = np.median(cube[:, :, : len(exp.WIDTHS)], axis=0)  # (records, hidden layers)
    assert np.all(np.diff(np.log(med), axis=1) > 0)


def test_bad_config():
    e = gf.experiment.get("layer_speed")
    with pytest.raises(ValueError, match="must be a multiple of record_every"):
        e.run(e.config("quick", {"epochs": 7, "record_every": 2}), None)
    with pytest.raises(ValueError, match="must divide n_train"):
        e.run(e.config("quick", {"batch_size": 7}), None)
    with pytest.raises(ValueError, match="seeds must be an int >= 2"):
        e.run(e.config("quick", {"seeds": 1}), None)
