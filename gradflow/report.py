r"""The probe's results and how to read them: report types, verdicts, a table, a frame, a figure.

:class:`LayerReport` holds the per-layer statistics of :func:`gradflow.probes.probe` (defined
there) and :class:`RecurrentReport` the per-time-step ones of :func:`gradflow.probes.probe_rnn`.
Everything here reads a report and computes nothing on the model:

* :func:`verdict` labels each layer ``"vanishing"``, ``"healthy"`` or ``"exploding"`` by its
  gradient's ratio to the readout's (Nielsen's "speed of learning" picture);
* :func:`format_report` prints a table for the terminal, :func:`to_frame` gives a tidy
  :class:`pandas.DataFrame`, :func:`plot_report` draws the gradient norms and the
  signal-propagation plot of Brock et al. (2021).

References:
  M. Nielsen, *Neural Networks and Deep Learning*, ch. 5 (2015),
  http://neuralnetworksanddeeplearning.com/chap5.html. A. Brock, S. De, S. L. Smith,
  "Characterizing signal propagation to close the performance gap in unnormalized ResNets",
  ICLR 2021, https://arxiv.org/abs/2101.08692.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings

import jax
import numpy as np
from flax import struct

from gradflow import _table

__all__ = [
    "EXPLODING",
    "STATS",
    "VANISHING",
    "LayerReport",
    "RecurrentReport",
    "format_report",
    "plot_report",
    "to_frame",
    "verdict",
]

Array = jax.Array


# ---------------------------------------------------------------------------------- report types


@struct.dataclass
class LayerReport:
    """Per-layer statistics from :func:`gradflow.probes.probe`; arrays ``(..., L)``, forward order,
    readout last.

    :mod:`gradflow.probes` defines each statistic. ``layer_names`` and ``layer_kinds`` are static
    (not pytree leaves).
    """

    loss: Array
    weight_grad_norm: Array
    bias_grad_norm: Array
    preact_grad_norm: Array
    preact_grad_norm_std: Array
    weight_norm: Array
    act_mean: Array
    act_var: Array
    avg_sq_channel_mean: Array
    avg_channel_var: Array
    preact_sq_mean: Array
    saturated_frac: Array
    dead_frac: Array
    layer_names: tuple[str, ...] = struct.field(pytree_node=False, default=())
    layer_kinds: tuple[str, ...] = struct.field(pytree_node=False, default=())

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)


#: The array fields of :class:`LayerReport` (``verdict(stat=...)`` takes the gradient ones).
STATS: tuple[str, ...] = tuple(
    f.name
    for f in LayerReport.__dataclass_fields__.values()
    if f.name not in ("layer_names", "layer_kinds")
)
_GRAD_STATS = ("weight_grad_norm", "bias_grad_norm", "preact_grad_norm")


@struct.dataclass
class RecurrentReport:
    r"""From :func:`gradflow.probes.probe_rnn`: arrays ``(..., T)`` over time steps ``t = 1..T``.

    ``hidden_grad_norm`` / ``_std``: mean / std over examples of
    :math:`\|\partial C_x/\partial h_t\|` (per-example, as ``preact_grad_norm`` of
    :class:`LayerReport`); ``hidden_norm``: mean :math:`\|h_t\|`; ``param_grad_norm`` (``(...)``):
    :math:`\|\partial C/\partial \theta\|` over all parameters; ``loss`` (``(...)``).
    """

    loss: Array
    hidden_grad_norm: Array
    hidden_grad_norm_std: Array
    hidden_norm: Array
    param_grad_norm: Array


# --------------------------------------------------------------------------------------- verdict


def _check_report(report: LayerReport) -> None:
    if not isinstance(report, LayerReport):
        raise TypeError(
            f"report must be a LayerReport (from gradflow.probes.probe), got "
            f"{type(report).__name__}"
        )


#: Default threshold of :func:`verdict`: a layer whose gradient statistic is below this fraction of
#: the readout layer's is 'vanishing'.
VANISHING = 1e-2
#: Default threshold of :func:`verdict`: a layer whose gradient statistic is above this multiple of
#: the readout layer's is 'exploding'.
EXPLODING = 1e2


def verdict(
    report: LayerReport,
    *,
    vanishing: float = VANISHING,
    exploding: float = EXPLODING,
    stat: str = "preact_grad_norm",
) -> np.ndarray:
    r"""Label each layer ``"vanishing"``, ``"healthy"``, ``"exploding"`` or ``"non-finite"``.

    With :math:`g_l` the gradient statistic ``stat`` of layer :math:`l` and :math:`g_L` the
    readout's, layer :math:`l` is

    * ``"vanishing"`` if :math:`g_l / g_L < ` ``vanishing`` (default :math:`10^{-2}`: the layer
      learns a hundred times slower than the readout, Nielsen's ch. 5 picture), and wherever
      :math:`g_l = g_L = 0` (no gradient reaches the layer at all: an all-zero gradient is not
      healthy);
    * ``"exploding"`` if :math:`g_l / g_L > ` ``exploding`` (default :math:`10^{2}`), including
      :math:`g_l = +\infty` with a finite loss and :math:`g_L` (overflow in the backward pass);
    * ``"non-finite"`` if :math:`g_l` is NaN, and for every layer of a report whose loss or
      readout statistic :math:`g_L` is not finite (NaN or infinite input, labels out of range,
      an empty batch): no ratio can be formed, so no layer is called healthy. A
      :class:`RuntimeWarning` names the first non-finite quantity (the loss, or ``stat`` at a
      layer);
    * ``"healthy"`` otherwise (always for a finite, nonzero readout itself).

    The default statistic is the per-example error :math:`\|\delta_l\|` (``preact_grad_norm``):
    it measures the backward signal itself, does not depend on the input scale or on a layer's
    fan-in, and stays defined with BatchNorm (which zeroes :math:`\partial C/\partial b_l`) and
    for bias-free layers. ``stat="bias_grad_norm"`` gives Nielsen's speeds,
    ``"weight_grad_norm"`` the weight gradients.

    Returns:
      NumPy string array of shape ``(..., L)``.
    """
    _check_report(report)
    if stat not in _GRAD_STATS:
        raise ValueError(f"unknown stat {stat!r}; valid: {', '.join(_GRAD_STATS)}")
    for name, v in (("vanishing", vanishing), ("exploding", exploding)):
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} threshold must be a finite float > 0, got {v!r}")
    if not vanishing < 1 < exploding:
        raise ValueError(
            f"thresholds must satisfy vanishing < 1 < exploding, got {vanishing}, {exploding}"
        )
    g = np.asarray(getattr(report, stat), dtype=np.float64)
    if g.ndim == 0 or g.shape[-1] == 0:
        raise ValueError(f"report.{stat} must have a layer axis (..., L), L >= 1; got {g.shape}")
    loss = np.broadcast_to(np.asarray(report.loss, dtype=np.float64), g.shape[:-1])
    ref = g[..., -1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = g / ref
    out = np.full(g.shape, "healthy", dtype="<U10")
    out[ratio < vanishing] = "vanishing"
    out[ratio > exploding] = "exploding"
    out[(g == 0) & (ref == 0)] = "vanishing"
    out[np.isnan(g)] = "non-finite"
    lost = ~np.isfinite(loss)[..., None] | ~np.isfinite(ref)
    out[np.broadcast_to(lost, g.shape)] = "non-finite"
    if (out == "non-finite").any():
        warnings.warn(
            f"gradflow.report.verdict: {_first_non_finite(report, stat, g, loss)}; layers "
            "without a meaningful ratio are labelled 'non-finite' (check the batch for NaN/inf "
            "inputs, labels out of range and emptiness)",
            RuntimeWarning,
            stacklevel=2,
        )
    return out


def _first_non_finite(report: LayerReport, stat: str, g: np.ndarray, loss: np.ndarray) -> str:
    """The first non-finite quantity a verdict reads, in words."""
    draw = lambda idx: f" (draw {idx})" if idx else ""
    if not np.isfinite(loss).all():
        idx = tuple(int(i) for i in np.unravel_index(np.argmin(np.isfinite(loss)), loss.shape))
        return f"the loss is {float(loss[idx])}{draw(idx)}"
    bad = np.argwhere(~np.isfinite(g))
    idx = tuple(int(i) for i in bad[0])
    names = report.layer_names or ()
    layer = names[idx[-1]] if idx[-1] < len(names) else f"layer {idx[-1]}"
    return f"{stat} of {layer} is {float(g[idx])}{draw(idx[:-1])}"


# -------------------------------------------------------------------------------------- display


def _summary(report: LayerReport) -> tuple[dict[str, np.ndarray], int]:
    """Median over leading (vmapped) axes; returns the per-layer arrays and the number of draws."""
    arrays = {k: np.asarray(getattr(report, k), dtype=np.float64) for k in STATS if k != "loss"}
    loss = np.asarray(report.loss, dtype=np.float64)
    draws = int(loss.size)
    if draws > 1:
        arrays = {k: np.median(v.reshape(-1, v.shape[-1]), axis=0) for k, v in arrays.items()}
        loss = np.median(loss.reshape(-1))
    arrays["loss"] = np.asarray(loss).reshape(())
    return arrays, draws


def to_frame(report: LayerReport):
    """A tidy :class:`pandas.DataFrame`: one row per (draw, layer), a column per statistic.

    Columns ``draw`` (flat index over leading vmapped axes; 0 for a single report), ``layer``
    (0-based, forward order), ``name``, ``kind`` (``""`` when the report has none), the
    statistics of :data:`STATS` (``loss`` repeated per layer) and ``verdict`` (default
    thresholds).
    """
    _check_report(report)
    import pandas as pd

    L = report.num_layers or np.shape(report.weight_grad_norm)[-1]
    names = report.layer_names or tuple(f"layer_{i}" for i in range(L))
    kinds = report.layer_kinds if len(report.layer_kinds) == L else ("",) * L
    cols = {k: np.asarray(getattr(report, k), dtype=np.float64) for k in STATS}
    draws = int(np.asarray(report.loss).size)
    data = {
        "draw": np.repeat(np.arange(draws), L),
        "layer": np.tile(np.arange(L), draws),
        "name": np.tile(np.asarray(names, dtype=object), draws),
        "kind": np.tile(np.asarray(kinds, dtype=object), draws),
    }
    for k, v in cols.items():
        data[k] = np.repeat(v.reshape(-1), L) if k == "loss" else v.reshape(-1)
    data["verdict"] = verdict(report).reshape(-1)
    return pd.DataFrame(data)


def _sci(v: float) -> str:
    return "-" if np.isnan(v) else f"{v:.2e}"


def _pct(v: float) -> str:
    return "-" if np.isnan(v) else f"{100 * v:.1f}"


def _table_row(arrays: dict[str, np.ndarray], i: int, ratio: np.ndarray) -> list[str]:
    """The statistic cells of layer ``i`` in :func:`format_report`'s table."""
    return [
        _sci(arrays["weight_grad_norm"][i]),
        _sci(arrays["bias_grad_norm"][i]),
        _sci(arrays["preact_grad_norm"][i]),
        _sci(arrays["preact_grad_norm_std"][i]),
        _sci(ratio[i]),
        f"{arrays['act_mean'][i]:.3f}",
        f"{arrays['act_var'][i]:.3g}",
        _pct(arrays["saturated_frac"][i]),
        _pct(arrays["dead_frac"][i]),
    ]


_TABLE_STATS = ("|dC/dW|", "|dC/db|", "|delta|", "(std)", "ratio", "act mean", "act var", "sat %",
                "dead %")  # fmt: skip


def format_report(
    report: LayerReport,
    *,
    vanishing: float = VANISHING,
    exploding: float = EXPLODING,
    stat: str = "preact_grad_norm",
) -> str:
    r"""A table for the terminal: one row per layer, forward order, readout last.

    Columns: the layer's kind (when the report has them), :math:`\|\partial C/\partial W\|`,
    :math:`\|\partial C/\partial b\|` (Nielsen's speed), :math:`\|\delta\|` mean and std
    over examples, the ratio of ``stat`` to the readout's, activation mean and variance, %
    saturated and % dead units ("-" where undefined), and the :func:`verdict`. A
    vmapped report is summarised by the median over its draws (said in the header).
    """
    _check_report(report)
    arrays, draws = _summary(report)
    L = arrays["weight_grad_norm"].shape[-1]
    names = report.layer_names or tuple(f"layer_{i}" for i in range(L))
    summary = LayerReport(**{k: v for k, v in arrays.items()}, layer_names=tuple(names))
    labels = verdict(summary, vanishing=vanishing, exploding=exploding, stat=stat)
    g = arrays[stat]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = g / g[-1]
    kinds = report.layer_kinds if len(report.layer_kinds) == L else None
    header = ["layer", *(["kind"] if kinds else []), *_TABLE_STATS, "verdict"]
    rows = [
        [names[i], *([kinds[i]] if kinds else []), *_table_row(arrays, i, ratio), str(labels[i])]
        for i in range(L)
    ]
    head, *body = _table.align([header, *rows], left={0, len(header) - 1, *([1] if kinds else [])})
    what = f"median over {draws} draws, " if draws > 1 else ""
    title = (
        f"gradflow probe: {L} layers, loss {float(arrays['loss']):.4g} ({what}ratio = {stat} / "
        f"readout; vanishing < {vanishing:g}, exploding > {exploding:g})"
    )
    return "\n".join([title, head, "-" * len(head), *body])


def _bands(report: LayerReport, L: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per statistic of :data:`STATS` but the loss: median, 10% and 90% quantiles over the
    draws, each ``(L,)``."""
    out = {}
    for k in STATS:
        if k != "loss":
            v = np.asarray(getattr(report, k), dtype=np.float64).reshape(-1, L)
            out[k] = np.median(v, 0), np.quantile(v, 0.1, 0), np.quantile(v, 0.9, 0)
    return out


def _band_line(ax, layer, band, draws: int, **kw) -> None:
    """The median of ``band`` against ``layer``, with the 10-90% range shaded over draws."""
    med, lo, hi = band
    ax.plot(layer, med, **kw)
    if draws > 1:
        ax.fill_between(layer, lo, hi, color=kw["color"], alpha=0.2, linewidth=0)


def _plot_gradients(ax, layer, bands, draws, stat, vanishing, exploding, colors) -> None:
    """Left panel of :func:`plot_report`: gradient norms per layer and the healthy band."""
    series = [
        ("weight_grad_norm", r"$\|\partial C/\partial W_l\|$", colors[0], "o"),
        ("bias_grad_norm", r"$\|\partial C/\partial b_l\|$ (speed)", colors[1], "s"),
        ("preact_grad_norm", r"$\|\delta_l\|$ per example", colors[2], "^"),
    ]
    for k, label, color, marker in series:
        if not np.any(np.isfinite(bands[k][0]) & (bands[k][0] > 0)):
            continue  # e.g. no biases
        _band_line(ax, layer, bands[k], draws, marker=marker, color=color, label=label)
    ref = bands[stat][0][-1]
    if np.isfinite(ref) and ref > 0:
        ax.axhspan(ref * vanishing, ref * exploding, color="0.5", alpha=0.12, linewidth=0,
                   zorder=0, label=f"healthy band of {stat}")  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylabel("gradient norm")


def _plot_signal(ax, layer, bands, draws, colors, log_axis_if_spans) -> None:
    """Right panel of :func:`plot_report`: the signal-propagation statistics per layer."""
    for k, label, color in (
        ("avg_channel_var", "avg. channel variance", colors[0]),
        ("avg_sq_channel_mean", "avg. squared channel mean", colors[1]),
    ):
        _band_line(ax, layer, bands[k], draws, marker="o", color=color, label=label)
    spp = np.concatenate([bands[k][0] for k in ("avg_channel_var", "avg_sq_channel_mean")])
    log_axis_if_spans(ax, spp)
    ax.set_ylabel("statistic of layer output $h_l$")
    ax.set_title("signal propagation (Brock et al. 2021)")


def plot_report(
    report: LayerReport,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    vanishing: float = VANISHING,
    exploding: float = EXPLODING,
    stat: str = "preact_grad_norm",
) -> list:
    """Figure of a report, written as ``path.pdf`` and ``path.png`` (via
    :func:`gradflow.plotting.savefig`).

    Left: per-layer gradient norms on a log scale -- :math:`\\|\\partial C/\\partial W_l\\|`,
    :math:`\\|\\partial C/\\partial b_l\\|`, :math:`\\|\\delta_l\\|` -- with the healthy band of
    :func:`verdict` for ``stat`` shaded (readout value times ``vanishing`` .. ``exploding``).
    Right: the signal-propagation statistics (Brock et al. 2021) of the layer outputs. A
    vmapped report is drawn as the median over draws with the 10-90% range shaded.

    Returns:
      The written paths.
    """
    _check_report(report)
    from gradflow import plotting

    L = np.shape(report.weight_grad_norm)[-1]
    names = report.layer_names or tuple(f"layer_{i}" for i in range(L))
    layer = np.arange(1, L + 1)
    draws = int(np.asarray(report.loss).size)
    bands = _bands(report, L)
    medians = {k: b[0] for k, b in bands.items()}
    summary = LayerReport(loss=np.zeros(()), **medians, layer_names=tuple(names))
    labels = verdict(summary, vanishing=vanishing, exploding=exploding, stat=stat)
    counts = [f"{int((labels == v).sum())} {v}" for v in ("vanishing", "exploding")]
    fig, (ax_g, ax_s) = plotting.figure(1, 2, width="text", aspect=0.7)
    with plotting.style():
        colors = plotting.COLORS
        _plot_gradients(ax_g, layer, bands, draws, stat, vanishing, exploding, colors)
        ax_g.set_title(f"gradients ({', '.join(counts)} of {L} layers)")
        _plot_signal(ax_s, layer, bands, draws, colors, plotting.log_axis_if_spans)
        for ax in (ax_g, ax_s):
            ax.set_xlabel("layer (input $\\to$ readout)")
            ax.set_xticks(layer[:: max(1, -(-L // 10))])
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        if title:
            what = f" (median and 10-90% over {draws} draws)" if draws > 1 else ""
            fig.suptitle(title + what)
    return plotting.savefig(fig, path)
