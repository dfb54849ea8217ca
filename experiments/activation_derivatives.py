r"""activation_derivatives: :math:`\phi`, :math:`\phi'` and :math:`\sup|\phi'|` of every activation.

Claim (seeds 000, 003; Nielsen ch. 5): the factor an activation contributes to every backpropagated
gradient is :math:`\phi'(z)`, and it is bounded: :math:`\sigma' \le 1/4` (attained at
:math:`z = 0`), :math:`\tanh' \le 1` (at 0), ReLU's :math:`\phi' \in \{0, 1\}`; so a chain of
:math:`L` sigmoid layers with :math:`|w| \le 1` shrinks gradients by at least :math:`4^L`.

What it measures, for every activation of :func:`gradflow.activations.names`:

* :math:`\phi` and the closed-form :math:`\phi'` on a plotting grid, and :math:`\phi'` by autodiff
  (``jax.grad`` of :math:`\phi`) on the same grid away from kinks: the largest disagreement;
* the maximum of :math:`|\phi'|` over a fine grid on :math:`[-R, R]` and where it occurs, next to
  the registry's ``sup_grad`` and ``argsup`` (the grid maximum can only approach the supremum).

One sweep over activation names (static, one seed: nothing here is random) through
:func:`gradflow.sweep.run`. Figures: the seeds' sigmoid/tanh figure (headline) and small multiples
of all activations. Table: sup, argsup, grid maximum, kinks, autodiff error per activation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf

NAME = "activation_derivatives"
CLAIM = (
    "phi' is bounded: sup sigmoid' = 1/4 at z = 0, sup tanh' = 1 at z = 0, relu' in {0, 1}; "
    "the closed-form phi' of every registered activation matches autodiff, and its registry "
    "sup|phi'| is the maximum of |phi'| on a fine grid."
)
SOURCE = "seeds 000, 003; Nielsen, Neural Networks and Deep Learning, ch. 5"


@dataclasses.dataclass(frozen=True)
class ActivationDerivativesConfig(gf.experiment.Config):
    """The grids on which phi, phi' and max|phi'| are evaluated."""

    x_range: float  # half-width of the plotting grid
    n_plot: int  # points on the plotting grid (odd: contains 0)
    sup_range: float  # half-width of the fine grid for max |phi'|
    n_sup: int  # points on the fine grid (odd)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("n_plot", "n_sup"):
            v = getattr(self, key)
            if v < 3 or v % 2 == 0:
                raise ValueError(
                    f"{key} must be an odd integer >= 3 (so the grid holds 0), got {v}"
                )
        for key in ("x_range", "sup_range"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")

    def check_resources(self) -> None:
        # Peak: ~12 float64 arrays of n_sup per activation in the compiled program (phi' and its
        # masks), ~10 of n_plot, and the table's ~3 curves x 10 activations x ~100 bytes a row.
        gf.experiment.check_memory(
            f"n_sup={self.n_sup}, n_plot={self.n_plot}",
            8 * 12 * self.n_sup + (80 + 3000) * self.n_plot,
        )


FULL = ActivationDerivativesConfig(x_range=5.0, n_plot=2001, sup_range=20.0, n_sup=400_001)
QUICK = dataclasses.replace(FULL, n_plot=401, n_sup=40_001)

#: Activations of the seeds' figure (the headline).
SEED_ACTIVATIONS = ("sigmoid", "tanh")
# where the sup label sits in the seeds' figure (data coordinates, clear of both curves)
_LABEL_AT = {"sigmoid": (-4.8, 0.72), "tanh": (-4.8, -0.45)}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _grids(config: ActivationDerivativesConfig) -> tuple[np.ndarray, np.ndarray]:
    config.check_resources()
    x = np.linspace(-config.x_range, config.x_range, config.n_plot)
    xs = np.linspace(-config.sup_range, config.sup_range, config.n_sup)
    return x, xs


def _make_fn(x_plot: np.ndarray, x_sup: np.ndarray):
    # The grids are unit grids scaled by the (traced) ranges, so XLA computes rather than
    # constant-folds them at compile time. Runs under float64 (see run()).
    unit_plot = x_plot / x_plot[-1]
    unit_sup = x_sup / x_sup[-1]

    def fn(hparams, key):
        del key  # deterministic
        act = gf.activations.get(hparams["activation"])
        x = hparams["x_range"] * jnp.asarray(unit_plot, jnp.float64)
        xs = hparams["sup_range"] * jnp.asarray(unit_sup, jnp.float64)
        away = np.ones(x_plot.shape, bool)
        for k in act.kinks:  # phi' jumps at a kink: autodiff picks one side, the registry another
            away &= np.abs(x_plot - k) > 1e-9
        out = {"phi": act.fn(x), "grad": act.grad(x)}
        for tag, dtype in (("f64", jnp.float64), ("f32", jnp.float32)):
            xd = x.astype(dtype)
            autodiff = jax.vmap(jax.grad(lambda t: act.fn(t)))(xd)
            if dtype == jnp.float32:
                out["grad_autodiff"] = autodiff.astype(jnp.float64)
            err = jnp.abs(act.grad(xd) - autodiff).astype(jnp.float64)
            out[f"autodiff_err_{tag}"] = jnp.max(jnp.where(away, err, 0.0))
        g = jnp.abs(act.grad(xs))
        top = g.max()
        at_top = g >= top * (1 - 1e-12)  # the (possibly flat) set where the maximum is reached
        out["grid_sup"] = top
        out["grid_argsup_lo"] = jnp.min(jnp.where(at_top, xs, jnp.inf))
        out["grid_argsup_hi"] = jnp.max(jnp.where(at_top, xs, -jnp.inf))
        return out

    return fn


def run(config: ActivationDerivativesConfig, results_dir: Path) -> None:
    """Evaluate phi, phi' (closed form and autodiff) and max|phi'| for every activation."""
    x_plot, x_sup = _grids(config)
    results_dir = Path(results_dir)
    names = list(gf.activations.names(builtin_only=True))
    curve_axes = {m: ("x",) for m in ("phi", "grad", "grad_autodiff")}
    with jax.enable_x64(True):  # float64 reference; float32 autodiff is checked beside it
        gf.sweep.run(
            _make_fn(x_plot, x_sup),
            grid={
                "activation": names,
                "x_range": [config.x_range],
                "sup_range": [config.sup_range],
            },
            seeds=[0],
            workdir=results_dir / "curves",
            axes=curve_axes,
            name=NAME,
            config=config.to_dict(),
        )
    registry = {}
    for n in names:
        act = gf.activations.get(n)
        registry[n] = {
            "sup_grad": act.sup_grad,
            "argsup": act.argsup,
            "kinks": list(act.kinks),
            "params": act.kwargs,
        }
    meta = {"x": x_plot.tolist(), "activations": registry}
    gf.experiment.write_atomic(results_dir / "theory.json", json.dumps(meta, indent=1))


def _load(results_dir: Path):
    results_dir = Path(results_dir)
    df = gf.sweep.load(results_dir / "curves")
    meta = json.loads((results_dir / "theory.json").read_text())
    if df["diverged"].any():
        bad = sorted(df.loc[df["diverged"], "activation"].unique())
        raise ValueError(f"non-finite phi or phi' for {bad}: the registry is broken")
    return df, meta


def curves(df, name: str) -> dict[str, np.ndarray]:
    """The saved curves (phi, grad, grad_autodiff) of one activation, ordered along x."""
    sub = df[(df["activation"] == name) & df["x"].notna()]
    out = {}
    for metric, rows in sub.groupby("metric"):
        rows = rows.sort_values("x")
        out[str(metric)] = rows["value"].to_numpy(float)
    return out


def scalars(df) -> dict[str, dict[str, float]]:
    """Per activation: autodiff_err_f32/_f64, grid_sup, grid_argsup_lo/_hi."""
    sub = df[df["x"].isna()]
    out: dict[str, dict[str, float]] = {}
    for row in sub.itertuples():
        out.setdefault(str(row.activation), {})[str(row.metric)] = float(row.value)
    return out


def _panel(ax, x, c, info, *, colors, legend: bool, title: str):
    sup, argsup = info["sup_grad"], info["argsup"]
    ax.plot(x, c["phi"], color=colors[0], label=r"$\phi(z)$")
    ax.plot(x, c["grad"], color=colors[1], label=r"$\phi'(z)$")
    ax.axhline(sup, color="k", ls="--", lw=0.8, label=r"$\sup|\phi'|$")
    if argsup is not None and x[0] <= argsup <= x[-1]:
        ax.plot([argsup], [sup], "o", color="k", ms=3.5, zorder=5)
    for k in info["kinks"]:
        ax.axvline(k, color="0.6", lw=0.6, ls=":")
    ax.set_title(title)
    ax.set_xlim(x[0], x[-1])
    if legend:
        ax.legend(loc="upper left")


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    """The seeds' sigmoid/tanh figure and small multiples of every activation."""
    df, meta = _load(results_dir)
    x = np.asarray(meta["x"])
    acts = meta["activations"]
    C = gf.plotting.COLORS
    fmt = gf.experiment.fmt
    out = []
    with gf.plotting.style():
        fig, axes = gf.plotting.figure(1, 2, width="column", aspect=0.95)
        for ax, n in zip(axes, SEED_ACTIVATIONS):
            c = {k: gf.plotting.finite_or_raise(v, n) for k, v in curves(df, n).items()}
            info = acts[n]
            _panel(ax, x, c, info, colors=C, legend=False, title=n)
            sup = info["sup_grad"]
            ax.annotate(
                rf"$\sup\,\phi' = {fmt(sup)}$" "\n" rf"at $z = {info['argsup']:g}$",
                xy=(info["argsup"], sup), xytext=_LABEL_AT[n], ha="left", va="center",
                fontsize=6.5,
            )  # fmt: skip
            ax.set_xlabel(r"pre-activation $z$")
        axes[0].set_ylim(-0.05, 1.15)
        axes[1].set_ylim(-1.15, 1.45)
        axes[0].set_ylabel(r"$\phi(z)$, $\phi'(z)$")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=3)
        out += gf.plotting.savefig(fig, Path(figures_dir) / f"{NAME}_sigmoid_tanh")

        names = list(acts)
        ncols = 5
        nrows = math.ceil(len(names) / ncols)
        fig, axes = gf.plotting.figure(nrows, ncols, width="text", aspect=0.85, sharex=True)
        axes = np.atleast_1d(axes).ravel()
        for ax, n in zip(axes, names):
            c = {k: gf.plotting.finite_or_raise(v, n) for k, v in curves(df, n).items()}
            info = acts[n]
            _panel(
                ax,
                x,
                c,
                info,
                colors=C,
                legend=False,
                title=rf"{n.replace('_', ' ')}: $\sup|\phi'| = {fmt(info['sup_grad'])}$",
            )
            lo = min(c["phi"].min(), c["grad"].min(), 0.0)
            hi = max(min(c["phi"].max(), 3.0), info["sup_grad"])
            ax.set_ylim(lo - 0.12 * (hi - lo), hi + 0.12 * (hi - lo))
        for ax in axes[len(names) :]:
            ax.set_visible(False)
        for ax in axes[(nrows - 1) * ncols :]:
            ax.set_xlabel(r"$z$")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside upper center", ncols=3)
        out += gf.plotting.savefig(fig, Path(figures_dir) / f"{NAME}_all")
    return out


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    """sup|phi'|, argsup, grid maximum and autodiff error per activation; macros."""
    df, meta = _load(results_dir)
    sc = scalars(df)
    rows = []
    for n, info in meta["activations"].items():
        s = sc[n]
        argsup = info["argsup"]
        lo, hi = s["grid_argsup_lo"], s["grid_argsup_hi"]
        where = gf.experiment.fmt(lo, 4) if lo == hi else f"[{lo:.4g}, {hi:.4g}]"
        rows.append([
            n,
            info["sup_grad"],
            "not attained" if argsup is None else argsup,
            s["grid_sup"],
            where,
            ", ".join(gf.experiment.fmt(k) for k in info["kinks"]) or "none",
            s["autodiff_err_f32"],
            s["autodiff_err_f64"],
        ])  # fmt: skip
    columns = [
        "activation", r"$\sup|\phi'|$", "argsup", r"grid $\max|\phi'|$", "grid argmax",
        "kinks", "autodiff err. (f32)", "autodiff err. (f64)",
    ]  # fmt: skip
    out = [gf.experiment.latex_table(rows, columns, Path(tables_dir) / f"{NAME}.tex", digits=4)]
    macros = {}
    prefix = "activationDerivatives"
    for n, info in meta["activations"].items():
        macros[f"{prefix}Sup{_camel(n)}"] = info["sup_grad"]
        if info["argsup"] is not None:
            macros[f"{prefix}Argsup{_camel(n)}"] = info["argsup"]
    macros[f"{prefix}MaxAutodiffErrFloat"] = max(s["autodiff_err_f32"] for s in sc.values())
    macros[f"{prefix}MaxAutodiffErrDouble"] = max(s["autodiff_err_f64"] for s in sc.values())
    out.append(
        gf.experiment.write_macros(Path(tables_dir) / f"{NAME}_macros.tex", macros, digits=4)
    )
    return out


EXPERIMENT = gf.experiment.Experiment(
    name=NAME,
    claim=CLAIM,
    source=SOURCE,
    configs={"quick": QUICK, "full": FULL},
    run=run,
    plot=plot,
    tables=tables,
    figures=(f"{NAME}_sigmoid_tanh", f"{NAME}_all"),
    order=1,
)
