r"""dynamical_isometry: singular values of the input-output Jacobian, by depth, at criticality.

Claim (Saxe et al. 2014; Pennington, Schoenholz & Ganguli 2017): at a critical point the mean
squared singular value of the input-output Jacobian :math:`J = \prod_l D_l W_l^\top` is 1 at every
depth, but its *spread* depends on the weights and the nonlinearity. Free probability gives the
variance of the eigenvalues of :math:`JJ^\top` at depth :math:`L`,

.. math::

    \sigma^2_{JJ^\top} = L\Bigl(\frac{\mu_2}{\mu_1^2} - 1 - s_1\Bigr), \qquad
    \mu_k = E[\phi'(\sqrt{q^*}z)^{2k}],

with :math:`-s_1 = 1` for Gaussian and 0 for orthogonal weights: linear nets with orthogonal
weights are exactly isometric (every singular value is 1), Gaussian weights spread the spectrum
linearly in depth (:math:`\sigma^2 = L` for linear nets), ReLU is never isometric
(:math:`\mu_1 = \mu_2 = 1/2`: :math:`\sigma^2 = L` orthogonal, :math:`2L` Gaussian, and half the
singular values vanish), and tanh with orthogonal weights near :math:`q^* \to 0` approaches
isometry.

What it measures: for {linear, tanh, relu} x {gaussian, orthogonal} at their critical points
(linear :math:`\sigma_w^2 = 1`; ReLU :math:`\sigma_w^2 = 2`; tanh on the critical line at a small
fixed point :math:`q^*`, :func:`gradflow.meanfield.critical_point`), nets of ``width`` units are
sampled by :func:`gradflow.spectra.init_network` (biases :math:`N(0, \sigma_b^2)`) and fed an input
at the fixed point (:func:`gradflow.spectra.network_input`); the singular values of
:math:`J_l = \partial a^l/\partial x` at every depth :math:`l \le` ``depth`` come from one pass of
:func:`gradflow.spectra.layer_jacobian_singular_values` in float64 (products of 64 Gaussian
matrices span hundreds of decades), vmapped over seeds by :func:`gradflow.sweep.run`. The
moments are compared with :func:`gradflow.spectra.jacobian_moments`.

Figures: the distributions of singular values at several depths (headline) and the mean and
variance of :math:`JJ^\top`'s eigenvalues against depth with the free-probability lines.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

import gradflow as gf

NAME = "dynamical_isometry"
CLAIM = (
    "At criticality the input-output Jacobian has mean squared singular value 1, but only "
    "orthogonal weights with a linear (or near-linear tanh) network keep every singular value "
    "near 1: Gaussian weights spread the spectrum linearly in depth and ReLU is never isometric, "
    "as the free-probability variance L (mu2/mu1^2 - 1 - s1) predicts."
)
SOURCE = "Saxe, McClelland & Ganguli 2014; Pennington, Schoenholz & Ganguli 2017"


@dataclasses.dataclass(frozen=True)
class DynamicalIsometryConfig(gf.experiment.Config):
    """Input-output Jacobian spectra of deep networks at their critical points."""

    width: int  # hidden width
    depth: int  # layers
    record_depths: tuple[int, ...]  # depths whose Jacobian spectrum is recorded
    seeds: int  # random networks per (activation, weights)
    tanh_q: float  # tanh's fixed-point pre-activation variance q*

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.width < 2 or self.depth < 1 or self.seeds < 1:
            raise ValueError(
                f"width must be >= 2, depth and seeds >= 1; got width={self.width}, "
                f"depth={self.depth}, seeds={self.seeds}"
            )
        rec = self.record_depths
        if not rec or any(not 1 <= d <= self.depth for d in rec):
            raise ValueError(f"record_depths must lie in [1, depth={self.depth}], got {rec!r}")
        if not self.tanh_q > 0:
            raise ValueError(f"tanh_q must be positive, got {self.tanh_q}")

    def check_resources(self) -> None:
        # every seed's depth x width x width float64 weights, twice (Gaussian and orthogonal)
        gf.experiment.check_memory(
            f"width={self.width}, depth={self.depth}, seeds={self.seeds}",
            16 * self.seeds * self.depth * self.width**2,
        )


FULL = DynamicalIsometryConfig(
    width=128, depth=64, record_depths=(1, 2, 4, 8, 16, 32, 64), seeds=8, tanh_q=1 / 64
)
QUICK = dataclasses.replace(FULL, width=48, depth=16, record_depths=(1, 4, 16), seeds=4)

ACTIVATIONS = ("linear", "tanh", "relu")
WEIGHTS = ("gaussian", "orthogonal")
#: singular values below this are drawn in the first histogram bin (ReLU's exact zeros)
S_FLOOR = 1e-4


def critical_points(tanh_q: float) -> dict[str, dict[str, float]]:
    """(sw2, sb2, q) of each activation's critical point used here.

    linear: sw2 = 1, sb2 = 0 (chi1 = 1 for any q; q = 1); relu: sw2 = 2, sb2 = 0 (chi1 =
    sw2/2 = 1, every q is a fixed point; q = 1); tanh: the point of the critical line whose
    fixed point is ``tanh_q`` (:func:`gradflow.meanfield.critical_point`).
    """
    with jax.enable_x64(True):
        sw2, sb2 = gf.meanfield.critical_point(jnp.float64(tanh_q), "tanh")
    return {
        "linear": {"sw2": 1.0, "sb2": 0.0, "q": 1.0},
        "tanh": {"sw2": float(sw2), "sb2": float(sb2), "q": float(tanh_q)},
        "relu": {"sw2": 2.0, "sb2": 0.0, "q": 1.0},
    }


def _make_fn(config: DynamicalIsometryConfig, points: dict):
    width, depth = config.width, config.depth
    rec = [int(d) for d in config.record_depths]

    def fn(hparams, key):
        act, weights = hparams["activation"], hparams["weights"]
        p = points[act]
        k_net, k_x = jax.random.split(key)
        params = gf.spectra.init_network(k_net, width, depth, sw2=p["sw2"], sb2=p["sb2"],
                                         weights=weights, dtype=jnp.float64)  # fmt: skip
        x = gf.spectra.network_input(k_x, width, p["q"], sw2=p["sw2"], sb2=p["sb2"])
        x = x.astype(jnp.float64)
        # the first d layers of the same net, for each recorded depth d: an SVD only there
        # (layer_jacobian_singular_values would take one at every layer)
        sv = jnp.stack([
            gf.spectra.jacobian_singular_values(
                lambda x, d=d: gf.spectra.apply_network(
                    gf.spectra.NetworkParams(params.weights[:d], params.biases[:d]), x, act
                ),
                x,
            )
            for d in rec
        ])  # fmt: skip
        m = gf.spectra.spectrum_moments(sv)
        return {"sv": sv, "mean": m.mean, "second_moment": m.second_moment,
                "variance": m.variance}  # fmt: skip

    return fn


#: Why the sweep refuses several CPU devices in one process (see :func:`run`).
MULTI_CPU_DEADLOCK = (
    "dynamical_isometry: with several CPU devices in one process, XLA's CPU runtime deadlocks "
    "when a LAPACK custom call (the QR of the orthogonal init, the SVD) runs on one device while "
    "a while loop (JAX's threefry on CPU) runs on another (reproduced with a batched jnp.linalg.qr "
    "next to a lax.fori_loop on 2 CPU devices; jax/jaxlib 0.10.2; not a gradflow bug); rerun "
    "this experiment with one CPU device (without --cpu-devices)"
)


def run(config: DynamicalIsometryConfig, results_dir: Path) -> None:
    """Theory moments (JSON) and the activation x weights x seeds sweep of Jacobian spectra.

    Raises ``RuntimeError`` (:data:`MULTI_CPU_DEADLOCK`) instead of hanging when the process has
    several CPU devices.
    """
    config.check_resources()
    if jax.default_backend() == "cpu" and jax.device_count() > 1:
        raise RuntimeError(MULTI_CPU_DEADLOCK)
    results_dir = Path(results_dir)
    # JAX's CPU QR and SVD call scipy's OpenBLAS, whose worker threads oversubscribe a busy
    # machine: on 2 shared cores one thread was 30-90x faster (512 QRs of 128 x 128: 27 s -> 0.9 s)
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        _run(config, results_dir)


def _run(config: DynamicalIsometryConfig, results_dir: Path) -> None:
    points = critical_points(config.tanh_q)
    theory = {"points": points, "config": config.to_dict(), "moments": {}}
    with jax.enable_x64(True):
        for act in ACTIVATIONS:
            p = points[act]
            for w in WEIGHTS:
                mom = gf.spectra.jacobian_moments(
                    jnp.float64(p["sw2"]), jnp.float64(p["sb2"]), act, config.depth,
                    weights=w, q=jnp.float64(p["q"]),
                )  # fmt: skip
                theory["moments"][f"{act}/{w}"] = {k: np.asarray(v).tolist()
                                                   for k, v in mom._asdict().items()}  # fmt: skip
        gf.sweep.run(
            _make_fn(config, points),
            grid={"activation": list(ACTIVATIONS), "weights": list(WEIGHTS)},
            seeds=range(config.seeds),
            workdir=results_dir / "spectra",
            axes={
                "sv": ("depth_index", "index"),
                "mean": ("depth_index",),
                "second_moment": ("depth_index",),
                "variance": ("depth_index",),
            },
            name=f"{NAME}/spectra",
            config=config.to_dict(),
        )
    gf.experiment.write_atomic(results_dir / "theory.json", json.dumps(theory))


# --- reading the results -----------------------------------------------------------------------


def load(results_dir: Path):
    """(store, theory): the sweep table (finite: raises otherwise) and theory.json."""
    results_dir = Path(results_dir)
    df = gf.sweep.load(results_dir / "spectra")
    if df["diverged"].any():
        bad = df.loc[df["diverged"], ["activation", "weights"]].drop_duplicates()
        raise ValueError(f"non-finite Jacobian spectra for {bad.values.tolist()}")
    theory = json.loads((results_dir / "theory.json").read_text())
    return df, theory


def split(df) -> dict:
    """The store as ``{(activation, weights, metric): array}``: ``sv`` is (depth_index, seed,
    width) singular values at the recorded depths; ``mean``, ``second_moment``, ``variance`` are
    (seed, depth) measured moments of the eigenvalues of JJ^T."""
    out = {}
    for (act, w, metric), g in df.groupby(["activation", "weights", "metric"], observed=True):
        if metric == "sv":
            g = g.sort_values(["depth_index", "seed", "index"])
            n_d, n_s = g["depth_index"].nunique(), g["seed"].nunique()
            out[act, w, metric] = g["value"].to_numpy(float).reshape(n_d, n_s, -1)
        else:
            g = g.sort_values(["seed", "depth_index"])
            out[act, w, metric] = g["value"].to_numpy(float).reshape(g["seed"].nunique(), -1)
    return out


# --- figures -----------------------------------------------------------------------------------


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Singular-value distributions per depth; moments against depth with theory."""
    df, th = load(results_dir)
    data = split(df)
    with gf.plotting.style():
        return [
            *_plot_spectra(data, th, Path(figures_dir) / f"{NAME}_spectra"),
            *_plot_moments(data, th, Path(figures_dir) / f"{NAME}_moments"),
        ]


def _plot_spectra(data: dict, th: dict, stem: Path) -> list[Path]:
    """Histograms of log10 s per (activation, weights) at up to four recorded depths."""
    cfg = th["config"]
    rec = list(cfg["record_depths"])
    # at most four depths in the histograms (every other recorded depth, the last included)
    shown = list(range(len(rec) - 1, -1, -2 if len(rec) > 4 else -1))[::-1]
    colors = gf.plotting.layer_colors(len(shown))
    fig, axes = gf.plotting.figure(2, 3, width="text", aspect=0.8, sharex=True)
    lo, hi = math.log10(S_FLOOR), 1.5
    edges = np.linspace(lo, hi, 56)
    for j, act in enumerate(ACTIVATIONS):
        for i, w in enumerate(WEIGHTS):
            ax = axes[i, j]
            for k, col in zip(shown, colors):
                s = gf.plotting.finite_or_raise(data[act, w, "sv"][k], "sv").ravel()
                logs = np.clip(np.log10(np.maximum(s, 1e-300)), lo, hi - 1e-9)
                dens, _ = np.histogram(logs, bins=edges, density=True)
                ax.stairs(dens, edges, color=col, lw=1.1, label=f"$L = {rec[k]}$")
            _spectrum_axes(ax, act, w, th["points"][act])
            if i == 1:
                ax.set_xlabel(rf"$\log_{{10}} s$ (first bin: $s \leq 10^{{{int(lo)}}}$, incl. 0)")
            if j == 0:
                ax.set_ylabel("density")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=len(shown) + 1,
               title=f"depth (width {cfg['width']}, {cfg['seeds']} seeds)",
               title_fontsize=7)  # fmt: skip
    return gf.plotting.savefig(fig, stem)


def _spectrum_axes(ax, act: str, w: str, p: dict) -> None:
    """A histogram panel's title (the critical point), the s = 1 line and the log density."""
    fmt = gf.experiment.fmt
    ax.axvline(0.0, color="k", lw=0.6, ls=":")
    ax.set_title(
        f"{act}, {w}\n"
        rf"$\sigma_w^2={fmt(p['sw2'])}$, $\sigma_b^2={fmt(p['sb2'], 2)}$, "
        rf"$q^*={fmt(p['q'])}$",
        fontsize=7,
    )  # fmt: skip
    ax.set_yscale("log")
    ax.set_ylim(1e-3, None)


_WEIGHT_STYLES = {"gaussian": ("o", "-"), "orthogonal": ("s", "--")}


def _plot_moments(data: dict, th: dict, stem: Path) -> list[Path]:
    """(a) mean and (b) variance of s^2 against depth, measured and free probability."""
    cfg = th["config"]
    rec = list(cfg["record_depths"])
    fig, axes = gf.plotting.figure(1, 2, width="text", aspect=0.7)
    depth = np.arange(1, cfg["depth"] + 1)
    for act, col in zip(ACTIVATIONS, gf.plotting.COLORS):
        for w in WEIGHTS:
            mk, ls = _WEIGHT_STYLES[w]
            th_m = th["moments"][f"{act}/{w}"]
            for ax, metric in zip(axes, ("mean", "variance")):
                meas = gf.plotting.finite_or_raise(data[act, w, metric], metric)
                mu, sd = meas.mean(axis=0), meas.std(axis=0)
                ax.errorbar(rec, mu, yerr=sd, fmt=mk, ms=2.8, mfc="none", mew=0.8,
                            color=col, elinewidth=0.6, capsize=0)  # fmt: skip
                ax.plot(depth, th_m[metric], ls=ls, color=col, lw=1.0)
    _moments_axes(axes)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=6)
    return gf.plotting.savefig(fig, stem)


def _moments_axes(axes) -> None:
    """The moments figure's legend entries, scales, labels and titles."""
    for act, col in zip(ACTIVATIONS, gf.plotting.COLORS):
        axes[1].plot([], [], color=col, lw=3, label=act)
    for w in WEIGHTS:
        mk, ls = _WEIGHT_STYLES[w]
        axes[1].plot([], [], ls=ls, marker=mk, color="0.3", mfc="none", ms=3, label=w)
    axes[1].plot([], [], color="0.3", lw=1.0, label="free probability (lines)")
    axes[0].set_ylabel(r"mean $s^2$ of $J$ ($\pm$ sd over seeds)")
    axes[0].set_ylim(0, 2)
    axes[1].set_ylabel(r"variance of $s^2$ ($\pm$ sd over seeds)")
    axes[1].set_yscale("symlog", linthresh=1e-2)
    axes[1].set_ylim(-1e-3, None)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("depth $L$")
    axes[0].set_title("(a) criticality: mean squared singular value 1")
    axes[1].set_title(r"(b) spread $L(\mu_2/\mu_1^2 - 1 - s_1)$")


# --- tables ------------------------------------------------------------------------------------


def summary(results_dir: Path) -> dict:
    """Per (activation, weights) at the largest depth: measured and predicted moments, the
    fraction of singular values in [1/2, 2] and below S_FLOOR, max |s - 1|."""
    df, th = load(results_dir)
    data = split(df)
    cfg = th["config"]
    out = {"depth": cfg["depth"], "record_depth": cfg["record_depths"][-1],
           "width": cfg["width"], "seeds": cfg["seeds"], "rows": {}}  # fmt: skip
    for act in ACTIVATIONS:
        for w in WEIGHTS:
            s = data[act, w, "sv"][-1]
            var = data[act, w, "variance"][:, -1]
            mean = data[act, w, "mean"][:, -1]
            tm = th["moments"][f"{act}/{w}"]
            out["rows"][f"{act}/{w}"] = {
                "mean": float(mean.mean()),
                "mean_sd": float(mean.std()),
                "mean_theory": float(tm["mean"][-1]),
                "variance": float(var.mean()),
                "variance_sd": float(var.std()),
                "variance_theory": float(tm["variance"][-1]),
                "variance_first": float(data[act, w, "variance"][:, 0].mean()),
                "frac_near_one": float(np.mean((s >= 0.5) & (s <= 2.0))),
                "frac_zero": float(np.mean(s < S_FLOOR)),
                "max_dev_from_one": float(np.abs(s - 1).max()),
            }
    return out


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    """Measured vs predicted moments at the largest depth; macros."""
    sm = summary(results_dir)
    fmt = gf.experiment.fmt

    def theory(v: float) -> float:
        # the float64 free-probability formulas leave rounding residue (~1e-14) where the exact
        # value is 0 (orthogonal linear: every singular value is 1, the variance 0)
        return 0.0 if abs(v) < 1e-10 else v

    rows = []
    for key, r in sm["rows"].items():
        act, w = key.split("/")
        rows.append([
            act, w,
            f"${r['mean']:.3f} \\pm {r['mean_sd']:.3f}$", theory(r["mean_theory"]),
            f"${fmt(r['variance'])} \\pm {fmt(r['variance_sd'], 2)}$",
            theory(r["variance_theory"]),
            r["frac_near_one"], r["frac_zero"],
        ])  # fmt: skip
    L = sm["depth"]
    columns = [
        "activation", "weights", f"mean $s^2$ ($L={L}$)", "theory",
        f"var $s^2$ ($L={L}$)", "theory", r"$s\in[\frac12, 2]$", r"$s < 10^{-4}$",
    ]  # fmt: skip
    out = [gf.experiment.latex_table(rows, columns, Path(tables_dir) / f"{NAME}.tex")]
    p = "dynamicalIsometry"
    cap = {"linear": "Linear", "tanh": "Tanh", "relu": "Relu"}
    capw = {"gaussian": "Gaussian", "orthogonal": "Orthogonal"}
    macros = {f"{p}Depth": L, f"{p}Width": sm["width"], f"{p}Seeds": sm["seeds"]}
    for key, r in sm["rows"].items():
        act, w = key.split("/")
        tag = cap[act] + capw[w]
        macros[f"{p}Var{tag}"] = r["variance"]
        macros[f"{p}VarTheory{tag}"] = r["variance_theory"]
        macros[f"{p}NearOne{tag}"] = r["frac_near_one"]
    macros[f"{p}LinearOrthogonalMaxDev"] = sm["rows"]["linear/orthogonal"]["max_dev_from_one"]
    macros[f"{p}ReluZeroFraction"] = sm["rows"]["relu/orthogonal"]["frac_zero"]
    out.append(gf.experiment.write_macros(Path(tables_dir) / f"{NAME}_macros.tex", macros))
    return out


EXPERIMENT = gf.experiment.Experiment(
    name=NAME,
    claim=CLAIM,
    source=SOURCE,
    configs={"quick": QUICK, "full": FULL},
    run=run,
    plot=plot,
    tables=tables,
    figures=(f"{NAME}_spectra", f"{NAME}_moments"),
    order=9,
)
