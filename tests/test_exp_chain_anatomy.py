"""chain_anatomy quick config end to end; the claims checked from the saved results."""

import math

import numpy as np
import pytest

import gradflow as gf
from experiments import chain_anatomy as exp


@pytest.fixture(scope="module")
def done(run_quick):
    root, _, figs, tabs = run_quick("chain_anatomy")
    stores = {n: gf.sweep.load(root / "results" / n) for n in ("sigmoid", "exploding", "linear")}
    return root, figs, tabs, stores


def test_outputs_exist(done):
    root, figs, tabs, _ = done
    assert {p.name for p in figs} == {
        f"{stem}.{ext}" for stem in exp.EXPERIMENT.figures for ext in ("pdf", "png")
    }
    for p in figs + tabs:
        assert p.stat().st_size > 0
    macros = (root / "tables" / "chain_anatomy_macros.tex").read_text()
    assert r"\newcommand{\chainAnatomyExplodingRatio}{25}" in macros
    assert (
        r"\newcommand{\chainAnatomyLinearTwoOutputGain}{\ensuremath{1.27\times10^{30}}}" in macros
    )


def test_exploding_chain_ratio_is_25(done):
    *_, stores = done
    e = stores["exploding"]
    assert not e["diverged"].any()
    r_ref = exp.per_layer(e, "ratio_ref", weight=100.0)[0]
    np.testing.assert_allclose(r_ref, 25.0, rtol=1e-12)  # float64 log domain
    r32 = exp.per_layer(e, "ratio_log32", weight=100.0)[0]
    np.testing.assert_allclose(r32, 25.0, rtol=1e-4)  # float32 sums of logs, depth 40
    rad = exp.per_layer(e, "ratio_autodiff", weight=100.0)[0]
    assert (rad > 0).sum() >= 20  # autodiff finite over >= 20 consecutive layers
    np.testing.assert_allclose(rad[rad > 0], 25.0, rtol=1e-5)  # float32 products
    # w = 4: every factor is 4 * sigma'(0) = 1, the gradient is sigma'(0) = 1/4 at every layer
    np.testing.assert_allclose(exp.per_layer(e, "ratio_ref", weight=4.0)[0], 1.0, rtol=1e-12)
    np.testing.assert_allclose(
        exp.per_layer(e, "log10_ref", weight=4.0)[0], math.log10(0.25), rtol=1e-12
    )


def test_float32_fails_exactly_outside_its_range(done):
    *_, stores = done
    hi, lo = math.log10(exp.F32_MAX), math.log10(exp.F32_TINY)
    e, s = stores["exploding"], stores["sigmoid"]
    ref = exp.per_layer(e, "log10_ref", weight=100.0)[0]
    st = exp.per_layer(e, "autodiff_state", weight=100.0)[0]
    assert (st[ref > hi + 0.1] == exp.OVERFLOW).all() and (st[ref > hi + 0.1]).size > 0
    assert (st[ref < hi - 0.1] == exp.FINITE).all()
    ref, st = exp.per_layer(s, "log10_ref"), exp.per_layer(s, "autodiff_state")
    assert (st[ref < lo - 0.1] == exp.UNDERFLOW).all() and (ref < lo - 0.1).any()
    assert (st[ref > lo + 0.1] == exp.FINITE).all()
    # ...while the float32 log domain is finite everywhere and within 1e-5 of float64
    assert np.isfinite(exp.per_layer(s, "log10_log32")).all()
    assert exp.per_layer(s, "log32_vs_ref").max() < 1e-5


def test_closed_form_equals_autodiff(done):
    *_, stores = done
    s = stores["sigmoid"]
    # relative error where both are finite and nonzero: float32 rounding of <= 80 products
    assert exp.per_layer(s, "closed_vs_autodiff").max() < 80 * np.finfo(np.float32).eps
    assert (exp.per_layer(s, "closed_state") == exp.per_layer(s, "autodiff_state")).all()
    lin = stores["linear"]
    assert lin.loc[lin.metric == "closed_vs_autodiff", "value"].max() == 0.0  # powers of 2


def test_deep_linear_gains(done):
    *_, stores = done
    lin = stores["linear"]
    for g in (2.0, 0.5):
        out = exp.per_layer(lin, "log10_output", depth=100, gain=g)[0, 0]
        # powers of two are exact in float32: 2^100 forward, 2^99 at the first bias
        assert 10**out == pytest.approx(g**100, rel=1e-12)
        grad1 = exp.per_layer(lin, "log10_autodiff", depth=100, gain=g)[0, 0]
        assert 10**grad1 == pytest.approx(g**99, rel=1e-12)
        assert exp.per_layer(lin, "autodiff_vs_theory", depth=100, gain=g).max() == 0.0
    # at depth 200 float32 gives inf (2I) and 0 (0.5I) near the output's far end
    assert (exp.per_layer(lin, "autodiff_state", depth=200, gain=2.0) == exp.OVERFLOW).any()
    assert (exp.per_layer(lin, "autodiff_state", depth=200, gain=0.5) == exp.UNDERFLOW).any()


def test_bad_config():
    e = gf.experiment.get("chain_anatomy")
    with pytest.raises(ValueError, match="exploding_x must be exactly representable"):
        e.run(e.config("quick", {"exploding_x": 0.3}), None)
    with pytest.raises(ValueError, match="sigmoid_depth must be >= 2"):
        e.run(e.config("quick", {"sigmoid_depth": 1}), None)
