"""criticality quick config end to end; the claims checked from the saved results."""

import numpy as np
import pytest

import gradflow as gf
from experiments import criticality as exp


@pytest.fixture(scope="module")
def done(run_quick):
    return run_quick("criticality")


def test_outputs_exist(done):
    root, _, figs, tabs = done
    assert {p.name for p in figs} == {
        f"{stem}.{ext}" for stem in exp.EXPERIMENT.figures for ext in ("pdf", "png")
    }
    for p in figs + tabs:
        assert p.stat().st_size > 0
    assert r"\criticalityCriticalSwTwo" in (root / "tables" / "criticality_macros.tex").read_text()


def test_phase_diagram_sides_of_the_critical_line(done):
    root, *_ = done
    th = exp.load_theory(root / "results")
    ph, line = th["phase"], th["critical_line"]
    # the critical sw2 at each sb2 row of the phase grid, interpolated along the line
    crit = np.interp(ph["sb2"], line["sb2"], line["sw2"])
    sw2 = ph["sw2"][None, :]
    margin = 0.02  # relative distance from the line below which the sign is not asserted
    below = sw2 < crit[:, None] * (1 - margin)
    above = sw2 > crit[:, None] * (1 + margin)
    assert below.sum() > 10 and above.sum() > 10
    assert (ph["chi1"][below] < 1).all()  # ordered: gradients vanish
    assert (ph["chi1"][above] > 1).all()  # chaotic: gradients explode
    # tanh with sb2 = 0 is critical at sw2 = 1 (Poole et al. 2016); float64 bisection
    assert line["sw2"][0] == pytest.approx(1.0, rel=1e-6)
    # xi_c peaks at the critical line along the trained row sb2 = 0.05
    along = th["along_sb2"]
    assert along["sw2"][np.nanargmax(along["xi_c"])] == pytest.approx(
        along["critical_sw2"], rel=5e-3
    )


def test_training_near_criticality_beats_ordered_and_chaotic(done):
    root, cfg, *_ = done
    sm = exp.summary(root / "results")
    assert sm["deepest"] == max(cfg.depths)
    assert sm["diverged_runs"] == 0
    # quick config (depth 32, width 32, 300 SGD steps, 2 seeds): measured 0.89 vs 0.10 (ordered,
    # sw2 = 0.5) and 0.24 (chaotic, sw2 = 4); we require a margin of 0.3 in test accuracy.
    assert sm["acc_near_critical"] > max(sm["acc_ordered"], sm["acc_chaotic"]) + 0.3
    # the theory agrees: the trained depth exceeds 6 xi_c in both losing phases, not near the line
    tg = exp.load_theory(root / "results")["train_grid"]
    six_xi = dict(zip(tg["sw2"], exp.XI_FACTOR * tg["xi_c"]))
    assert six_xi[sm["ordered_sw2"]] < sm["deepest"]
    assert six_xi[sm["near_critical_sw2"]] > sm["deepest"]


def test_bad_config():
    e = gf.experiment.get("criticality")
    with pytest.raises(ValueError, match="depths must be positive integers"):
        e.run(e.config("quick", {"depths": (0,)}), None)
    with pytest.raises(ValueError, match="sw2 values must be positive"):
        e.run(e.config("quick", {"sw2": (-1.0, 1.0)}), None)
