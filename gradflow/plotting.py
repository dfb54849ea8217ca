"""One house style for every gradflow figure.

Figures are drawn only from saved results (never from inside a training loop) and written twice by
:func:`savefig`: a PDF for the paper and a PNG for the README. Colours are the Okabe-Ito palette
(Okabe & Ito 2008), distinguishable under the common colour-vision deficiencies; sequential data
(layers, depths) use the perceptually uniform, colour-blind-safe ``cividis`` map. Axes carry labels
with units; values that span decades go on log axes (:func:`log_axis_if_spans`).

Usage::

    with gf.plotting.style():
        fig, ax = gf.plotting.figure(width="column")
        ax.semilogy(steps, grad_norm, color=gf.plotting.layer_colors(4)[0])
        gf.plotting.savefig(fig, "paper/figures/layer_speed")   # .pdf and .png
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence

import matplotlib as mpl
import numpy as np

from gradflow import _checks, _io

__all__ = [
    "COLORS",
    "FORMATS",
    "WIDTHS",
    "band",
    "figure",
    "finite_or_raise",
    "layer_colors",
    "log_axis_if_spans",
    "savefig",
    "style",
]

# fontTools (used by matplotlib's PDF backend to subset fonts) logs a warning about the font
# files' old 'created' timestamps on every save: noise, not a problem with the figure.
logging.getLogger("fontTools").setLevel(logging.ERROR)

#: Okabe-Ito colour-blind-safe palette (black last: reserved for theory overlays).
COLORS: tuple[str, ...] = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)

#: Figure widths in inches: a single column of a two-column paper, and the full text width.
WIDTHS = {"column": 3.4, "text": 7.0}

_RC = {
    "figure.dpi": 100,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.5,
    "legend.frameon": False,
    "axes.prop_cycle": mpl.cycler(color=list(COLORS[:-1])),
    "image.cmap": "cividis",
    "pdf.fonttype": 42,  # embed TrueType: editable text, no Type 3 fonts in the paper
    "ps.fonttype": 42,
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Context manager applying the house rcParams (restored on exit)."""
    with mpl.rc_context(_RC):
        yield


def figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    width: str | float = "column",
    aspect: float = 0.72,
    **kwargs,
):
    """A ``(fig, axes)`` pair sized for the paper.

    Args:
      nrows, ncols: subplot grid.
      width: ``"column"`` (3.4 in), ``"text"`` (7 in) or a width in inches.
      aspect: height of one row divided by the width of one column of panels.
      **kwargs: passed to :func:`matplotlib.pyplot.subplots` (e.g. ``sharey=True``).
    """
    import matplotlib.pyplot as plt

    nrows, ncols = _checks.size("nrows", nrows), _checks.size("ncols", ncols)
    aspect = _checks.real("aspect", aspect, positive=True)
    if isinstance(width, str):
        if width not in WIDTHS:
            raise ValueError(
                f"unknown figure width {width!r}; valid: {', '.join(WIDTHS)} or inches"
            )
        w = WIDTHS[width]
    else:
        w = _checks.real("width", width, finite=False) if width is not None else -1.0
        if not (w > 0 and math.isfinite(w)):
            raise ValueError(f"figure width must be positive inches, got {width!r}")
    h = w / ncols * aspect * nrows
    kwargs.setdefault("layout", "constrained")
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), **kwargs)
    return fig, axes


def layer_colors(n: int) -> list:
    """``n`` colours from the colour-blind-safe sequential ``cividis`` map (first layer darkest)."""
    n = _checks.size("n", n)
    cmap = mpl.colormaps["cividis"]
    return [cmap(x) for x in np.linspace(0.0, 0.9, n)]


def log_axis_if_spans(ax, values, *, axis: str = "y", decades: float = 2.0) -> bool:
    """Switch ``ax`` to a log scale when the positive finite ``values`` span >= ``decades``."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and np.log10(v.max() / v.min()) >= decades:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        return True
    return False


def finite_or_raise(values, what: str) -> np.ndarray:
    """Return ``values`` as an array, raising if any is non-finite.

    Plots never draw NaN silently: callers drop or mark diverged runs explicitly before plotting
    and call this on what is left.
    """
    v = np.asarray(values, dtype=float)
    bad = ~np.isfinite(v)
    if bad.any():
        raise ValueError(
            f"{what}: {int(bad.sum())} non-finite values; drop or mark diverged runs before "
            "plotting"
        )
    return v


#: Figure formats :func:`savefig` writes.
FORMATS: tuple[str, ...] = ("pdf", "png", "svg")
# Metadata that would otherwise hold the wall clock or the library version: fixed, so the bytes
# of a figure depend only on its content.
_FIXED_METADATA = {"pdf": {"CreationDate": None}, "png": {"Software": None}, "svg": {"Date": None}}


def band(
    ax,
    x,
    samples,
    *,
    q: tuple[float, float] = (10, 90),
    color=None,
    label: str | None = None,
    alpha: float = 0.25,
    line_alpha: float | None = None,
    fill_color=None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    clip: tuple[float, float] | None = None,
    step: str | None = None,
    **line_kw,
):
    """Draw the median of ``samples`` over seeds as a line and a percentile band around it.

    Args:
      ax: the matplotlib axes.
      x: ``(n,)`` positions (steps, layers, ...).
      samples: ``(seeds, n)`` values; the line is their median over axis 0, the band spans the
        ``q = (lo, hi)`` percentiles (``(10, 90)`` by default; ``(0, 100)`` is the range).
      color: of line and band (default: the axes' next colour).
      label: the line's legend label.
      alpha: the band's opacity.
      line_alpha: the line's opacity (default: opaque).
      fill_color: the band's colour (default: the line's).
      transform: applied to the median and the percentiles before drawing (e.g.
        ``lambda v: 10.0**v`` for samples stored as ``log10``).
      clip: ``(lo, hi)`` to which the band (not the line) is clipped, e.g. a panel's y limits.
      step: ``"pre"``/``"post"``/``"mid"`` draws a step line and band (``where=step``).
      **line_kw: passed to :meth:`~matplotlib.axes.Axes.plot` (``ls``, ``lw``, ...).

    Returns:
      the median line (a :class:`~matplotlib.lines.Line2D`).
    """
    samples = np.asarray(samples, dtype=float)
    if samples.ndim != 2 or samples.shape[1] != np.shape(x)[0]:
        raise ValueError(
            f"band: samples must have shape (seeds, len(x)) = (seeds, {np.shape(x)[0]}), got "
            f"{samples.shape}"
        )
    if len(q) != 2 or not 0 <= q[0] < q[1] <= 100:
        raise ValueError(f"band: q must be two percentiles 0 <= lo < hi <= 100, got {q!r}")
    lo, med, hi = np.percentile(samples, [q[0], 50, q[1]], axis=0)
    if transform is not None:
        lo, med, hi = transform(lo), transform(med), transform(hi)
    if clip is not None:
        lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
    if step is not None:
        line_kw["drawstyle"] = f"steps-{step}"
    if line_alpha is not None:
        line_kw["alpha"] = line_alpha
    (line,) = ax.plot(x, med, color=color, label=label, **line_kw)
    fill = line.get_color() if fill_color is None else fill_color
    ax.fill_between(x, lo, hi, color=fill, alpha=alpha, lw=0, step=step)
    return line


def _check_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = (formats,)
    try:
        formats = tuple(formats)
    except TypeError:
        raise TypeError(
            f"formats must be a format name or a sequence of them ({', '.join(FORMATS)}), "
            f"got {formats!r}"
        ) from None
    if not formats:
        raise ValueError(f"formats is empty; give at least one of {', '.join(FORMATS)}")
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown figure format(s) {bad}; valid: {', '.join(FORMATS)}")
    return formats


def savefig(fig, path_stem: str | os.PathLike, *, formats: Sequence[str] = ("pdf", "png")):
    """Save ``fig`` as ``path_stem.pdf`` (paper) and ``path_stem.png`` (README), atomically.

    ``formats``: any of :data:`FORMATS`, a sequence or one name (``formats="png"``). Returns the
    list of written paths. The figure is closed afterwards.
    """
    import matplotlib.pyplot as plt

    formats = _check_formats(formats)
    stem = _checks.path("path_stem", path_stem)
    if not _io.is_writer():  # several hosts: process 0 alone writes
        plt.close(fig)
        return []
    if stem.suffix in (".pdf", ".png"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    with style():
        for fmt in formats:
            final = stem.parent / f"{stem.name}.{fmt}"
            # Fixed metadata so the PDF bytes do not depend on the wall clock.
            meta = _FIXED_METADATA[fmt]
            _io.atomic_write(
                final, lambda f, fmt=fmt, meta=meta: fig.savefig(f, format=fmt, metadata=meta)
            )
            written.append(final)
    plt.close(fig)
    return written
