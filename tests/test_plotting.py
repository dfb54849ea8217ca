"""Tests for gradflow.plotting: the house style writes PDF + PNG and refuses NaN."""

import numpy as np
import pytest

import gradflow as gf


def test_savefig_writes_pdf_and_png(tmp_path):
    fig, ax = gf.plotting.figure(width="column")
    ax.semilogy([1, 2, 3], [1e-3, 1e-1, 1e1], color=gf.plotting.COLORS[0])
    ax.set_xlabel("layer")
    ax.set_ylabel(r"$\|\partial C/\partial b_l\|$")
    paths = gf.plotting.savefig(fig, tmp_path / "sub" / "demo")
    assert [p.name for p in paths] == ["demo.pdf", "demo.png"]
    assert paths[0].read_bytes()[:4] == b"%PDF"
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "sub").glob(".*tmp*"))


def test_pdf_is_deterministic(tmp_path):
    out = []
    for i in range(2):
        fig, ax = gf.plotting.figure()
        ax.plot([0, 1], [0, 1])
        out.append(gf.plotting.savefig(fig, tmp_path / f"d{i}", formats=("pdf",))[0].read_bytes())
    assert out[0] == out[1]


def test_helpers():
    assert len(gf.plotting.layer_colors(5)) == 5
    fig, ax = gf.plotting.figure(1, 2, width="text")
    assert fig.get_figwidth() == pytest.approx(7.0)
    assert gf.plotting.log_axis_if_spans(ax[0], [1e-5, 1.0, np.nan])
    assert ax[0].get_yscale() == "log"
    assert not gf.plotting.log_axis_if_spans(ax[1], [1.0, 5.0])
    np.testing.assert_array_equal(gf.plotting.finite_or_raise([1, 2], "x"), [1.0, 2.0])


def test_bad_input():
    with pytest.raises(ValueError, match="2 non-finite value"):
        gf.plotting.finite_or_raise([1.0, np.nan, np.inf], "loss")
    with pytest.raises(ValueError, match="unknown figure width 'wide'; valid: column, text"):
        gf.plotting.figure(width="wide")
    with pytest.raises(ValueError, match="n must be an int >= 1, got 0"):
        gf.plotting.layer_colors(0)


def test_savefig_formats(tmp_path):
    fig, ax = gf.plotting.figure()
    ax.plot([0, 1], [0, 1])
    # one name is one format, not its letters ("p", "n", "g")
    paths = gf.plotting.savefig(fig, tmp_path / "one", formats="png")
    assert [p.name for p in paths] == ["one.png"]
    for bad, err, pattern in (
        (("png", "jpeg"), ValueError, r"unknown figure format\(s\) \['jpeg'\]; valid: pdf, png"),
        ((), ValueError, "formats is empty"),
        (3, TypeError, "formats must be a format name or a sequence"),
    ):
        fig, _ = gf.plotting.figure()
        with pytest.raises(err, match=pattern):
            gf.plotting.savefig(fig, tmp_path / "bad", formats=bad)
    assert not list(tmp_path.glob("bad*"))


def _band_polygon(ax) -> np.ndarray:
    (coll,) = ax.collections
    return coll.get_paths()[0].vertices


def test_band_draws_the_median_and_the_percentile_band():
    rng = np.random.default_rng(0)
    x = np.arange(6.0)
    samples = rng.normal(size=(11, 6))
    _, ax = gf.plotting.figure()
    line = gf.plotting.band(ax, x, samples, q=(10, 90), color="#0072B2", label="m", ls="--")
    np.testing.assert_allclose(line.get_ydata(), np.median(samples, 0), rtol=0, atol=0)
    assert line.get_label() == "m" and line.get_linestyle() == "--"
    ys = _band_polygon(ax)[:, 1]
    lo, hi = np.percentile(samples, [10, 90], axis=0)
    assert ys.min() == pytest.approx(lo.min(), abs=1e-12)
    assert ys.max() == pytest.approx(hi.max(), abs=1e-12)
    _, ax2 = gf.plotting.figure()
    # log10 samples drawn as values, the band clipped, a step line, its own band colour
    line = gf.plotting.band(ax2, x, samples, q=(0, 100), transform=lambda v: 10.0**v,
                            clip=(0.5, 2.0), step="pre", fill_color="0.3",
                            line_alpha=0.5)  # fmt: skip
    np.testing.assert_allclose(line.get_ydata(), 10.0 ** np.median(samples, 0), rtol=1e-15)
    assert line.get_drawstyle() == "steps-pre" and line.get_alpha() == 0.5
    ys = _band_polygon(ax2)[:, 1]
    assert ys.min() >= 0.5 and ys.max() <= 2.0


def test_band_refuses_bad_shapes_and_percentiles():
    _, ax = gf.plotting.figure()
    with pytest.raises(ValueError, match=r"samples must have shape \(seeds, len\(x\)\) = "):
        gf.plotting.band(ax, [0.0, 1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"q must be two percentiles 0 <= lo < hi <= 100, got"):
        gf.plotting.band(ax, [0.0, 1.0], [[1.0, 2.0]], q=(90, 10))
