"""Tests for gradflow.report: verdicts on the textbook regimes, zero and non-finite statistics,
the terminal table, the tidy frame and the figure, on reports of known numbers (the probe's own
reports go through the same functions in tests/test_probes.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow.report import STATS, LayerReport, format_report, plot_report, to_frame, verdict


@pytest.fixture(scope="module")
def nielsen():
    """A report shaped like the probe's of Nielsen's sigmoid [64, 30, 30, 30, 30, 10] over 20
    seeds (layers dense_0 .. dense_4, readout last): gradient norms growing about fivefold per
    layer toward the readout, his ch. 5 speeds 0.003, 0.017, 0.070, 0.285, with a lognormal
    spread over the seeds. Built from numbers, so the report functions are tested alone."""
    rng = np.random.default_rng(0)
    speeds = np.array([0.003, 0.017, 0.070, 0.285, 1.0])

    def draws(centre, spread=0.2):
        return jnp.asarray(centre * np.exp(spread * rng.normal(size=(20, 5))), jnp.float32)

    fields = dict(
        weight_grad_norm=draws(2 * speeds),
        bias_grad_norm=draws(speeds),
        preact_grad_norm=draws(3 * speeds),
        preact_grad_norm_std=draws(speeds),
        weight_norm=draws(np.full(5, 3.0)),
        act_mean=draws(np.full(5, 0.5)),
        act_var=draws(np.full(5, 0.05)),
        avg_sq_channel_mean=draws(np.full(5, 0.25)),
        avg_channel_var=draws(np.full(5, 0.05)),
        preact_sq_mean=draws(np.full(5, 1.0)),
        saturated_frac=draws(np.full(5, 0.05)),
        dead_frac=jnp.zeros((20, 5), jnp.float32),
    )
    assert set(fields) | {"loss"} == set(STATS)
    return LayerReport(
        loss=jnp.asarray(3.5 + 0.1 * rng.normal(size=20), jnp.float32),
        layer_names=tuple(f"dense_{i}" for i in range(5)),
        layer_kinds=("dense",) * 5,
        **fields,
    )


# ------------------------------------------------------------------------------ verdict


def _report(g, **extra):
    g = jnp.asarray(g, jnp.float32)
    fields = {k: g for k in STATS if k != "loss"}
    fields.update(extra)
    return LayerReport(loss=jnp.float32(1.0), layer_names=(), **fields)


def test_verdict_thresholds_are_configurable():
    r = _report([1e-4, 5e-3, 0.5, 50.0, 500.0, jnp.inf, 1.0])
    assert list(verdict(r)) == [
        "vanishing", "vanishing", "healthy", "healthy", "exploding", "exploding", "healthy",
    ]  # fmt: skip
    assert list(verdict(r, vanishing=1e-3, exploding=1e3)) == [
        "vanishing", "healthy", "healthy", "healthy", "healthy", "exploding", "healthy",
    ]  # fmt: skip
    nan = _report([1.0, 1.0], bias_grad_norm=jnp.array([jnp.nan, 1.0]))
    with pytest.warns(RuntimeWarning, match="bias_grad_norm of layer 0 is nan"):
        assert list(verdict(nan, stat="bias_grad_norm")) == ["non-finite", "healthy"]
    with pytest.raises(ValueError, match="unknown stat 'act_mean'"):
        verdict(r, stat="act_mean")
    with pytest.raises(ValueError, match="vanishing < 1 < exploding"):
        verdict(r, vanishing=2.0)
    with pytest.raises(ValueError, match="exploding threshold must be a finite float > 0"):
        verdict(r, exploding=-1.0)


def test_verdict_on_zero_and_non_finite_statistics():
    """All-zero gradients are "vanishing", not "healthy"; a NaN statistic, or a non-finite loss or
    readout statistic (which makes every ratio meaningless), is "non-finite", with a warning that
    names the first non-finite quantity; +inf with a finite loss is overflow: "exploding"."""
    zero = _report([0.0, 0.0, 0.0])
    assert list(verdict(zero)) == ["vanishing"] * 3
    assert list(verdict(_report([0.0, 1e-3, 1.0]))) == [
        "vanishing",
        "vanishing",
        "healthy",
    ]
    assert list(verdict(_report([jnp.inf, 1.0, 1.0]))) == [
        "exploding",
        "healthy",
        "healthy",
    ]
    names = ("dense_0", "dense_1", "dense_2")
    r = _report([1.0, jnp.nan, 1.0]).replace(layer_names=names)
    with pytest.warns(RuntimeWarning, match="preact_grad_norm of dense_1 is nan"):
        assert list(verdict(r)) == ["healthy", "non-finite", "healthy"]
    for readout in (jnp.nan, jnp.inf):
        r = _report([1.0, 1.0, readout]).replace(layer_names=names)
        with pytest.warns(RuntimeWarning, match=f"preact_grad_norm of dense_2 is {readout}"):
            assert list(verdict(r)) == ["non-finite"] * 3
    bad_loss = _report([1e-5, 1.0, 1.0]).replace(loss=jnp.float32(jnp.nan))
    with pytest.warns(RuntimeWarning, match="the loss is nan; layers without a meaningful"):
        assert list(verdict(bad_loss)) == ["non-finite"] * 3
    # vmapped reports: per draw, and the warning names the draw
    g = jnp.array([[1e-5, 1.0, 1.0], [1.0, 1.0, 1.0]], jnp.float32)
    two = _report(g).replace(loss=jnp.array([1.0, jnp.inf], jnp.float32))
    with pytest.warns(RuntimeWarning, match=r"the loss is inf \(draw \(1,\)\)"):
        v = verdict(two)
    assert v.tolist() == [["vanishing", "healthy", "healthy"], ["non-finite"] * 3]


# ------------------------------------------------------------------------------- display


def test_format_report_and_frame(nielsen):
    batched = nielsen
    r = jax.tree.map(lambda a: a[0], batched)
    table = format_report(r)
    lines = table.splitlines()
    assert len(lines) == 3 + 5
    assert "|dC/db|" in lines[1] and "verdict" in lines[1]
    assert lines[3].startswith("dense_0") and lines[3].endswith("vanishing")
    assert lines[-1].startswith("dense_4") and lines[-1].endswith("healthy")
    assert f"{float(r.bias_grad_norm[0]):.2e}" in lines[3]
    assert "median over 20 draws" in format_report(batched)
    df = to_frame(batched)
    assert len(df) == 20 * 5 and set(df["verdict"]) <= {"vanishing", "healthy", "exploding"}
    np.testing.assert_allclose(
        df.loc[(df.draw == 2) & (df.layer == 1), "bias_grad_norm"], batched.bias_grad_norm[2, 1]
    )


def test_plot_report_writes_pdf_and_png(nielsen, tmp_path):
    r = nielsen
    paths = plot_report(r, tmp_path / "report", title="sigmoid [64, 30, 30, 30, 30, 10]")
    assert sorted(p.suffix for p in paths) == [".pdf", ".png"]
    assert all(p.stat().st_size > 1000 for p in paths)
