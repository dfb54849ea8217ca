r"""criticality: the order-to-chaos phase diagram of tanh nets and where deep ones train.

Claim (seed 003; Poole et al. 2016; Schoenholz et al. 2017): in a wide tanh net with
:math:`W_{ij} \sim N(0, \sigma_w^2/N)` and :math:`b_i \sim N(0, \sigma_b^2)`, gradients scale by
:math:`\chi_1 = \sigma_w^2 E[\phi'(\sqrt{q^*}z)^2]` per layer: they vanish in the ordered phase
(:math:`\chi_1 < 1`, below the critical line) and explode in the chaotic phase (:math:`\chi_1 > 1`,
above it). Correlations between inputs relax over :math:`\xi_c = -1/\log\chi_c` layers, which
diverges on the critical line, and a net of depth :math:`L` trains only when
:math:`L \lesssim 6\xi_c` (Schoenholz et al. 2017, fig. 5).

What it computes and measures:

* theory (:mod:`gradflow.meanfield`, float64): :func:`~gradflow.meanfield.phase_diagram` of
  :math:`\chi_1` and :math:`\xi_c` over a grid of :math:`(\sigma_w^2, \sigma_b^2)`, the critical
  line :func:`~gradflow.meanfield.critical_sw2`, and :math:`\xi_c` along :math:`\sigma_b^2 =`
  ``sb2`` (:func:`~gradflow.meanfield.depth_scales`) for the :math:`6\xi_c` curve;
* trainability: tanh MLPs of ``width`` units and ``depth`` hidden layers on scikit-learn digits
  (standardised pixels, so the input length is 1), weights :math:`N(0, \sigma_w^2/\text{fan-in})`
  (LeCun normal scaled by :math:`\sqrt{\sigma_w^2}` through ``init_scale``), biases
  :math:`N(0, \sigma_b^2)`, trained for a fixed budget of ``steps`` minibatches by
  :func:`gradflow.training.train_fn`, vmapped over :math:`\sigma_w^2` and seeds by
  :func:`gradflow.sweep.run` (one compiled program per depth). The hidden layers are one
  :func:`flax.linen.scan` over identical :class:`gradflow.models.DenseBlock` s, so compile time
  does not grow with depth.

Budget. Schoenholz et al. trained with SGD (and RMSProp) for far more steps and wider nets; here
the budget is a few hundred SGD steps at width 48 (two CPU cores). Measured with it: near-critical
nets reach about 0.9 test accuracy up to depth 32 but only 0.74 at depth 48 and 0.26 at depth 64
(so the full config stops at 48), and on the chaotic side nets fail somewhat before
:math:`6\xi_c` (e.g. :math:`\sigma_w^2 = 2.5`, :math:`6\xi_c \approx 71`, fails at depth 48):
a fixed short budget is a stricter test than the trainability of the paper. Adam (tried at
``5e-4``) instead trained ordered nets beyond :math:`6\xi_c` (:math:`\sigma_w^2 = 1`, depth 32:
0.83), since it rescales the vanishing gradients; SGD is the optimizer of the claim.

Figures: the phase diagram (:math:`\chi_1`, :math:`\xi_c`, critical line) and the test accuracy
over depth x :math:`\sigma_w^2` with :math:`6\xi_c` overlaid.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import warnings
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf

NAME = "criticality"
CLAIM = (
    "tanh nets are ordered (chi1 < 1, gradients vanish) below the critical line and chaotic "
    "(chi1 > 1, gradients explode) above it; the correlation depth scale xi_c diverges on the "
    "line, and deep nets train only near it, for depth below about 6 xi_c."
)
SOURCE = "seed 003; Poole et al. 2016; Schoenholz, Gilmer, Ganguli & Sohl-Dickstein 2017"


@dataclasses.dataclass(frozen=True)
class CriticalityConfig(gf.experiment.Config):
    """The mean-field phase diagram and the trainability sweep of deep tanh networks."""

    phase_sw2_max: float  # the phase diagram's sigma_w^2 range (0, phase_sw2_max]
    phase_sb2_max: float  # its sigma_b^2 range [0, phase_sb2_max]
    phase_n_sw2: int  # grid points along sigma_w^2
    phase_n_sb2: int  # grid points along sigma_b^2
    sb2: float  # the trained networks' bias variance sigma_b^2
    depths: tuple[int, ...]  # trained depths
    sw2: tuple[float, ...]  # trained weight variances sigma_w^2
    width: int  # hidden width
    steps: int  # training steps
    batch_size: int  # minibatch
    optimizer: str  # a name of gradflow.optim.optimizer_names()
    learning_rate: float  # step size
    seeds: int  # random draws per (depth, sigma_w^2)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("depths", "sw2"):
            if not getattr(self, key):
                raise ValueError(f"{key} must be a non-empty tuple, got {getattr(self, key)!r}")
        if any(d < 1 for d in self.depths):
            raise ValueError(f"depths must be positive integers, got {self.depths!r}")
        if any(s <= 0 for s in self.sw2):
            raise ValueError(f"sw2 values must be positive, got {self.sw2!r}")
        if self.sb2 < 0:
            raise ValueError(f"sb2 must be >= 0, got {self.sb2}")
        for key in ("width", "steps", "batch_size", "seeds", "phase_n_sw2", "phase_n_sb2"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        for key in ("phase_sw2_max", "learning_rate"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if not self.phase_sb2_max >= 0:
            raise ValueError(f"phase_sb2_max must be >= 0, got {self.phase_sb2_max}")
        if self.optimizer not in gf.optim.optimizer_names():
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; valid: "
                f"{', '.join(gf.optim.optimizer_names())}"
            )


FULL = CriticalityConfig(
    phase_sw2_max=4.0,
    phase_sb2_max=0.3,
    phase_n_sw2=96,
    phase_n_sb2=48,
    sb2=0.05,
    depths=(8, 16, 32, 48),
    sw2=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0),
    width=48,
    steps=300,
    batch_size=64,
    optimizer="sgd",
    learning_rate=0.03,
    seeds=3,
)
QUICK = dataclasses.replace(
    FULL, phase_n_sw2=24, phase_n_sb2=12, depths=(32,), sw2=(0.5, 1.75, 4.0), width=32, seeds=2
)

ACTIVATION = "tanh"
#: the Schoenholz et al. 2017 trainability bound: depth <~ 6 xi_c
XI_FACTOR = 6.0
#: top of the xi_c colour scale (xi_c is infinite on the critical line)
XI_MAX = 1e3
METRICS = ("accuracy", "test_accuracy", "loss", "test_loss")


class _Hidden(nn.Module):
    """One hidden tanh layer as a scan body: ``(h, None) -> (DenseBlock(h), None)``."""

    width: int
    sb2: float

    @nn.compact
    def __call__(self, h, _):
        block = gf.models.DenseBlock(
            self.width,
            activation=ACTIVATION,
            kernel_init="lecun_normal",
            bias_init=gf.initializers.get("normal", std=math.sqrt(self.sb2)),
            name="dense",
        )
        return block(h), None


class ScannedTanhMLP(nn.Module):
    """``depth`` hidden tanh layers of ``width`` units and a linear readout.

    The first hidden layer maps the input width to ``width``; the other ``depth - 1`` are one
    :func:`flax.linen.scan` over identical :class:`gradflow.models.DenseBlock` s (parameters
    stacked on a leading axis), so the compiled program does not grow with depth. Kernels are
    LeCun normal (:math:`\\mathrm{Var} = 1/\\text{fan-in}`; the training scales them by
    :math:`\\sqrt{\\sigma_w^2}`), biases :math:`N(0, \\sigma_b^2)`.
    """

    depth: int
    width: int
    sb2: float
    out: int = 10

    @nn.compact
    def __call__(self, x):
        bias_init = gf.initializers.get("normal", std=math.sqrt(self.sb2))
        h = gf.models.DenseBlock(
            self.width, activation=ACTIVATION, kernel_init="lecun_normal", bias_init=bias_init,
            name="dense_in",
        )(x)  # fmt: skip
        if self.depth > 1:
            stack = nn.scan(
                _Hidden,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=self.depth - 1,
            )
            h, _ = stack(self.width, self.sb2, name="hidden")(h, None)
        return gf.models.DenseBlock(
            self.out, activation="linear", kernel_init="lecun_normal", bias_init=bias_init,
            name="readout",
        )(h)  # fmt: skip


def _theory(config: CriticalityConfig) -> dict:
    """Phase diagram, critical line and xi_c along sb2, all float64 (gradflow.meanfield).

    Two compiled calls: :func:`~gradflow.meanfield.critical_sw2` on the line's sb2 values plus
    ``sb2``, then one :func:`~gradflow.meanfield.phase_diagram` whose grid holds the uniform
    phase grid, the trained sw2 values, points clustered at the critical sw2 (where xi_c peaks)
    and the row sb2 = ``sb2``.
    """
    mf = gf.meanfield
    n_sw2, n_sb2 = config.phase_n_sw2, config.phase_n_sb2
    sw2_max, sb2_max = config.phase_sw2_max, config.phase_sb2_max
    with jax.enable_x64(True):
        # the line rises steeply from (1, 0): sample sb2 geometrically near 0
        sb2_line = np.concatenate([[0.0], np.geomspace(1e-6 * sb2_max, sb2_max, 4 * n_sb2)])
        line = np.asarray(mf.critical_sw2(jnp.asarray(np.append(sb2_line, config.sb2)),
                                          ACTIVATION))  # fmt: skip
        crit, line = float(line[-1]), line[:-1]
        phase_sw2 = np.linspace(sw2_max / n_sw2, sw2_max, n_sw2)
        g = np.geomspace(1e-3, 0.3, 12)
        near = crit * np.concatenate([1 - g, 1 + g])
        sw2 = np.unique(np.concatenate([phase_sw2, near, config.sw2]))
        sb2 = np.unique(np.append(np.linspace(0.0, sb2_max, n_sb2), config.sb2))
        with warnings.catch_warnings():
            # the grid holds (sw2, sb2) = (1, 0) up to rounding: on the critical line, where
            # xi_c = inf and gradflow.meanfield says it cannot resolve the distance to the line
            warnings.filterwarnings(
                "ignore", "gradflow.meanfield: .* within float64 rounding", RuntimeWarning
            )
            pd = mf.phase_diagram(jnp.asarray(sw2), jnp.asarray(sb2), ACTIVATION)
    chi1, xi_c = np.asarray(pd.chi1), np.asarray(pd.xi_c)
    row = int(np.flatnonzero(sb2 == config.sb2)[0])
    cols = np.searchsorted(sw2, np.asarray(config.sw2, float))

    def lst(a):  # JSON: NaN and inf become null
        a = np.asarray(a, np.float64)
        return np.where(np.isfinite(a), a, None).tolist()

    return {
        "activation": ACTIVATION,
        "phase": {"sw2": lst(sw2), "sb2": lst(sb2), "chi1": lst(chi1), "xi_c": lst(xi_c)},
        "critical_line": {"sb2": lst(sb2_line), "sw2": lst(line)},
        "along_sb2": {
            "sb2": config.sb2,
            "critical_sw2": crit,
            "sw2": lst(sw2),
            "xi_c": lst(xi_c[row]),
            "chi1": lst(chi1[row]),
        },
        "train_grid": {
            "sw2": lst(sw2[cols]),
            "xi_c": lst(xi_c[row, cols]),
            "chi1": lst(chi1[row, cols]),
        },
    }


@functools.cache
def _trainer(depth: int, width: int, sb2: float, steps: int, batch_size: int, optimizer: str):
    data = gf.data.load_digits(scale="standardize")
    model = ScannedTanhMLP(depth=depth, width=width, sb2=sb2)
    cfg = gf.training.TrainConfig(
        model=model,
        optimizer=optimizer,
        loss="softmax_cross_entropy",
        steps=steps,
        batch_size=batch_size,
        record_every=steps,  # one record: the final accuracy (evaluations are costly)
    )
    return gf.training.train_fn(cfg, data)


def _train_fn(config: CriticalityConfig):
    def fn(hparams, key):
        train = _trainer(int(hparams["depth"]), config.width, float(config.sb2),
                         config.steps, config.batch_size, config.optimizer)  # fmt: skip
        out = train(
            {"learning_rate": config.learning_rate, "init_scale": jnp.sqrt(hparams["sw2"])},
            key,
        )
        return {**{k: out[k][-1] for k in METRICS}, "diverged_step": out["diverged_step"]}

    return fn


def run(config: CriticalityConfig, results_dir: Path) -> None:
    """Mean-field theory (JSON) and the depth x sw2 x seeds training sweep."""
    results_dir = Path(results_dir)
    theory = _theory(config)
    gf.experiment.write_atomic(results_dir / "theory.json", json.dumps(theory))
    gf.sweep.run(
        _train_fn(config),
        grid={
            "depth": [int(d) for d in config.depths],
            "sw2": [float(s) for s in config.sw2],
        },
        seeds=range(config.seeds),
        static=("depth",),
        workdir=results_dir / "trainability",
        name=f"{NAME}/trainability",
        config=config.to_dict(),
    )


# --- reading the results -----------------------------------------------------------------------


def _arr(v) -> np.ndarray:
    return np.array(v, dtype=float)  # null -> NaN


def load_theory(results_dir: Path) -> dict:
    """theory.json with lists as float arrays (null -> NaN)."""
    raw = json.loads((Path(results_dir) / "theory.json").read_text())

    def conv(d):
        return {k: conv(v) if isinstance(v, dict) else (_arr(v) if isinstance(v, list) else v)
                for k, v in d.items()}  # fmt: skip

    return conv(raw)


def accuracy_table(results_dir: Path, metric: str = "test_accuracy"):
    """Per (depth, sw2): mean and sd of ``metric`` over non-diverged seeds, seeds, diverged.

    Returns a DataFrame indexed by (depth, sw2) with columns mean, sd, n, diverged.
    """
    df = gf.sweep.load(Path(results_dir) / "trainability")
    sub = df[df["metric"] == metric]
    ok = sub[~sub["diverged"]]
    g = ok.groupby(["depth", "sw2"])["value"]
    out = g.agg(mean="mean", sd="std", n="count")
    div = sub.groupby(["depth", "sw2"])["diverged"].sum().rename("diverged")
    return out.join(div, how="outer").fillna({"n": 0}).sort_index()


# --- figures -----------------------------------------------------------------------------------


def _edges(values: np.ndarray, *, log: bool = False) -> np.ndarray:
    v = np.log(values) if log else np.asarray(values, float)
    if len(v) == 1:
        half = 0.5 if not log else 0.25
        e = np.array([v[0] - half, v[0] + half])
    else:
        mid = 0.5 * (v[1:] + v[:-1])
        e = np.concatenate([[v[0] - (mid[0] - v[0])], mid, [v[-1] + (v[-1] - mid[-1])]])
    return np.exp(e) if log else e


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Phase diagram (chi1, xi_c, critical line); trainability heatmap with 6 xi_c."""
    th = load_theory(results_dir)
    with gf.plotting.style():
        return [
            *_plot_phase(th, Path(figures_dir) / f"{NAME}_phase"),
            *_plot_trainability(results_dir, th, Path(figures_dir) / f"{NAME}_trainability"),
        ]


def _halo():
    import matplotlib.patheffects as pe

    return [pe.withStroke(linewidth=2.6, foreground="w")]


def _plot_phase(th: dict, stem: Path) -> list[Path]:
    """(a) chi1 and (b) xi_c over (sigma_w^2, sigma_b^2), the critical line on both."""
    import matplotlib.colors as mcolors

    ph, along = th["phase"], th["along_sb2"]
    fig, axes = gf.plotting.figure(1, 2, width="text", aspect=0.72)
    sw2, sb2 = ph["sw2"], ph["sb2"]
    chi1 = gf.plotting.finite_or_raise(ph["chi1"], "chi1")
    norm = mcolors.TwoSlopeNorm(vmin=chi1.min(), vcenter=1.0, vmax=chi1.max())
    m = axes[0].pcolormesh(_edges(sw2), _edges(sb2), chi1, cmap="RdBu_r", norm=norm,
                           shading="flat", rasterized=True)  # fmt: skip
    fig.colorbar(m, ax=axes[0], label=r"$\chi_1$ (per-layer gradient factor)")
    axes[0].set_title(r"(a) $\chi_1 = \sigma_w^2\,E[\phi'(\sqrt{q^*}z)^2]$, tanh")
    # xi_c is infinite on the critical line (gradflow.meanfield reports inf there, stored
    # as null): shown at the top of the colour scale, which stops at XI_MAX layers
    xi_raw = np.asarray(ph["xi_c"], dtype=float)
    on_line = np.isnan(xi_raw) & np.isfinite(chi1) & (np.abs(chi1 - 1.0) < 1e-12)
    xi_c = gf.plotting.finite_or_raise(np.where(on_line, XI_MAX, xi_raw), "xi_c")
    m = axes[1].pcolormesh(_edges(sw2), _edges(sb2), xi_c,
                           norm=mcolors.LogNorm(vmin=max(xi_c.min(), 0.1), vmax=XI_MAX),
                           cmap="cividis", shading="flat", rasterized=True)  # fmt: skip
    fig.colorbar(m, ax=axes[1], label=r"$\xi_c$ (layers)", extend="max")
    axes[1].set_title(r"(b) correlation depth scale $\xi_c = -1/\log\chi_c$")
    for a in axes:
        _critical_line(a, th)
    axes[0].text(0.3 * sw2.max(), 0.75 * sb2.max(), "ordered\n(vanishing)", ha="center",
                 fontsize=7)  # fmt: skip
    axes[0].text(0.8 * sw2.max(), 0.2 * sb2.max(), "chaotic\n(exploding)", ha="center",
                 fontsize=7)  # fmt: skip
    axes[1].text(sw2.max(), along["sb2"] + 0.004, rf"trained: $\sigma_b^2 = {along['sb2']:g}$",
                 ha="right", va="bottom", fontsize=6, color="w")  # fmt: skip
    return gf.plotting.savefig(fig, stem)


def _critical_line(a, th: dict) -> None:
    """The critical line chi1 = 1 and the trained sigma_b^2 on a phase panel."""
    ph, line, along = th["phase"], th["critical_line"], th["along_sb2"]
    ok = np.isfinite(line["sw2"])
    a.plot(line["sw2"][ok], line["sb2"][ok], color="k", lw=1.3, path_effects=_halo())
    a.axhline(along["sb2"], color="k", lw=0.7, ls=":")
    top = line["sb2"][ok][-1]
    a.text(line["sw2"][ok][-1] + 0.08, top, r"$\chi_1 = 1$", va="top", fontsize=7,
           path_effects=_halo())  # fmt: skip
    a.set_xlabel(r"$\sigma_w^2$")
    a.set_ylabel(r"$\sigma_b^2$")
    a.set_xlim(_edges(ph["sw2"])[0], _edges(ph["sw2"])[-1])
    a.set_ylim(_edges(ph["sb2"])[0], _edges(ph["sb2"])[-1])
    a.grid(False)


def _accuracy_grid(results_dir: Path) -> tuple[np.ndarray, ...]:
    """``(depths, sw2s, acc, div)``: mean test accuracy (NaN where every seed diverged) and the
    diverged seeds, ``(depths, sw2s)``."""
    tab = accuracy_table(results_dir)
    depths = np.array(sorted(tab.index.get_level_values("depth").unique()), float)
    sw2s = np.array(sorted(tab.index.get_level_values("sw2").unique()), float)
    acc = np.full((len(depths), len(sw2s)), np.nan)
    div = np.zeros_like(acc)
    for (d, s), row in tab.iterrows():
        i, j = int(np.searchsorted(depths, d)), int(np.searchsorted(sw2s, s))
        acc[i, j] = row["mean"] if row["n"] > 0 else np.nan
        div[i, j] = row["diverged"]
    return depths, sw2s, acc, div


def _plot_trainability(results_dir: Path, th: dict, stem: Path) -> list[Path]:
    """Test accuracy over (sigma_w^2, depth) with 6 xi_c and the critical sigma_w^2."""
    along = th["along_sb2"]
    depths, sw2s, acc, div = _accuracy_grid(results_dir)
    fig, ax = gf.plotting.figure(width="column", aspect=0.85)
    shown = np.ma.masked_invalid(acc)  # all seeds diverged: left blank (grey) and marked
    ax.set_facecolor("0.8")
    x_edges, y_edges = _edges(sw2s, log=True), _edges(depths, log=True)
    m = ax.pcolormesh(x_edges, y_edges, shown, vmin=0.0, vmax=1.0, cmap="cividis",
                      shading="flat", rasterized=True)  # fmt: skip
    fig.colorbar(m, ax=ax, label="test accuracy (mean over seeds)")
    if len(sw2s) <= 5:  # cell values fit; otherwise they are in the table
        for (i, j), a in np.ndenumerate(acc):
            if np.isfinite(a):
                ax.text(sw2s[j], depths[i], f"{a:.2f}", ha="center", va="center",
                        fontsize=5.5, color="k" if a > 0.6 else "w")  # fmt: skip
    if (div > 0).any():
        jj, ii = np.nonzero((div > 0).T)
        ax.plot(sw2s[jj], depths[ii] * 1.15, "x", color="C3", ms=4, mew=1.0,
                label="diverged seed(s)")  # fmt: skip
    keep = np.isfinite(along["xi_c"])
    ax.plot(along["sw2"][keep], XI_FACTOR * along["xi_c"][keep], color=gf.plotting.COLORS[1],
            lw=1.3, path_effects=_halo(), label=r"$6\xi_c$ (Schoenholz et al. 2017)")  # fmt: skip
    ax.axvline(along["critical_sw2"], color="k", lw=0.9, ls="--", path_effects=_halo(),
               label=rf"critical $\sigma_w^2 = {along['critical_sw2']:.2f}$")  # fmt: skip
    _trainability_axes(ax, depths, x_edges, y_edges, along["sb2"])
    return gf.plotting.savefig(fig, stem)


def _trainability_axes(ax, depths, x_edges, y_edges, sb2: float) -> None:
    """Log axes with the trained depths and sigma_w^2 ticks; the legend above."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_edges[0], x_edges[-1])
    ax.set_ylim(y_edges[0], y_edges[-1])
    ax.set_yticks(depths, [f"{int(d)}" for d in depths])
    ax.set_yticks([], minor=True)
    ticks = [t for t in (0.5, 1, 2, 4) if x_edges[0] <= t <= x_edges[-1]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xticks([], minor=True)
    ax.set_xlabel(rf"$\sigma_w^2$ ($\sigma_b^2 = {sb2:g}$)")
    ax.set_ylabel(r"depth $L$ (hidden tanh layers)")
    ax.grid(False)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, fontsize=6)


# --- tables ------------------------------------------------------------------------------------


def summary(results_dir: Path) -> dict:
    """Key numbers from the saved results (theory and training)."""
    th = load_theory(results_dir)
    tab = accuracy_table(results_dir)
    crit = th["along_sb2"]["critical_sw2"]
    deepest = max(tab.index.get_level_values("depth"))
    at = tab.xs(deepest, level="depth")
    sw2s = at.index.to_numpy(float)
    near = sw2s[np.argmin(np.abs(np.log(sw2s / crit)))]
    return {
        "critical_sw2": crit,
        "sb2": th["along_sb2"]["sb2"],
        "deepest": int(deepest),
        "near_critical_sw2": float(near),
        "acc_near_critical": float(at.loc[near, "mean"]),
        "acc_ordered": float(at.loc[sw2s.min(), "mean"]),
        "acc_chaotic": float(at.loc[sw2s.max(), "mean"]),
        "ordered_sw2": float(sw2s.min()),
        "chaotic_sw2": float(sw2s.max()),
        "diverged_runs": int(tab["diverged"].sum()),
        "critical_sw2_sb2_zero": float(th["critical_line"]["sw2"][0]),
    }


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    """Test accuracy (mean +- sd) per depth and sw2, with chi1 and 6 xi_c per sw2; macros."""
    th = load_theory(results_dir)
    tab = accuracy_table(results_dir)
    grid = th["train_grid"]
    depths = sorted(tab.index.get_level_values("depth").unique())
    rows = []
    for s, chi, xi in zip(grid["sw2"], grid["chi1"], grid["xi_c"]):
        row = [f"{s:g}", chi, XI_FACTOR * xi]
        for d in depths:
            r = tab.loc[(d, s)] if (d, s) in tab.index else None
            if r is None or r["n"] == 0:
                row.append("diverged")
            else:
                sd = 0.0 if not np.isfinite(r["sd"]) else r["sd"]
                row.append(f"{r['mean']:.2f} $\\pm$ {sd:.2f}")
        rows.append(row)
    columns = [r"$\sigma_w^2$", r"$\chi_1$", r"$6\xi_c$", *(f"$L={int(d)}$" for d in depths)]
    out = [gf.experiment.latex_table(rows, columns, Path(tables_dir) / f"{NAME}.tex")]
    sm = summary(results_dir)
    p = "criticality"
    macros = {
        f"{p}CriticalSwTwo": sm["critical_sw2"],
        f"{p}SbTwo": sm["sb2"],
        f"{p}CriticalSwTwoAtZeroBias": sm["critical_sw2_sb2_zero"],
        f"{p}DeepestDepth": sm["deepest"],
        f"{p}NearCriticalSwTwo": sm["near_critical_sw2"],
        f"{p}AccNearCritical": sm["acc_near_critical"],
        f"{p}AccOrdered": sm["acc_ordered"],
        f"{p}AccChaotic": sm["acc_chaotic"],
        f"{p}OrderedSwTwo": sm["ordered_sw2"],
        f"{p}ChaoticSwTwo": sm["chaotic_sw2"],
        f"{p}DivergedRuns": sm["diverged_runs"],
    }
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
    figures=(f"{NAME}_trainability", f"{NAME}_phase"),
    order=8,
)
