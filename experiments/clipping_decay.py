r"""clipping_decay: gradient clipping and weight decay in an exploding regime.

Claim (seed 001; Pascanu, Mikolov & Bengio 2013; Brock et al. 2021): when large updates are
amplified through depth, plain training diverges (the loss or the weights become non-finite) in
most runs; clipping the gradient -- by value, by global norm, per layer, or adaptively per unit
(AGC) -- bounds every update and removes the divergence (AGC, which by design leaves the readout
layer unclipped, lets an occasional run through: 1 of 16 in the full config); weight decay (L1,
coupled L2, decoupled L2), which the seed notes also name as a cure, only pulls the weights back
by a small amount per step and does not stop a blow-up.

The regime. A 10-layer ReLU :class:`gradflow.models.MLP` (9 hidden layers of width 32 and the
readout) on standardised digits, He-initialised kernels scaled by ``init_scale`` (so
:math:`\sigma_w^2 = 2\,\mathrm{init\_scale}^2`: above 2 every layer amplifies the signal and the
gradient), trained with SGD + momentum 0.9 at a large learning rate. ReLU nets are positively
homogeneous, so a large step in the early layers is multiplied by every later layer: the loss and
then the parameters overflow. Divergence is :func:`gradflow.training.train_fn`'s: a non-finite
loss, gradient or parameter, or a loss above ``max_loss``; the step is recorded and the run frozen.

One program for every method. The optimizer is one chain

``[L1 decay] -> [coupled L2] -> clip_by_value -> clip_by_global_norm -> clip_by_layer_norm ->
adaptive_grad_clip -> momentum -> [decoupled L2] -> learning rate``

(:mod:`gradflow.optim`) whose thresholds and decay strengths are traced hyperparameters; a method
switches on its piece and leaves every other at its identity (threshold :math:`+\infty`, decay
0, both exact identities). So the method is a batched grid axis and :func:`gradflow.sweep.run`
trains all methods x seeds in one compiled program. Telemetry (:func:`gradflow.optim.telemetry`,
recorded by the training loop as block means): the pre-clip global gradient norm (read from the
first clipper of the chain, which sees the raw gradient plus any coupled decay) and the fraction of
steps in which the active clipper clipped each layer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import gradflow as gf

NAME = "clipping_decay"
CLAIM = (
    "In an exploding regime (10-layer ReLU MLP, large init scale and learning rate) no "
    "unclipped run trains: a third or more diverge within a few steps and the rest stall at "
    "chance; clipping by value, global norm, per layer or adaptively (AGC, which leaves the "
    "readout unclipped) removes the divergence and trains, while L1, coupled L2 and decoupled L2 "
    "weight decay do not."
)
SOURCE = "seed 001; Pascanu, Mikolov & Bengio 2013; Brock et al. 2021; Loshchilov & Hutter 2019"

#: The methods, in grid order (the ``method`` column holds the index).
METHODS: tuple[str, ...] = (
    "none", "value", "global_norm", "per_layer", "agc", "l1", "coupled_l2", "decoupled_l2",
)  # fmt: skip
LABELS: dict[str, str] = {
    "none": "no clipping",
    "value": "clip by value",
    "global_norm": "clip global norm",
    "per_layer": "clip per layer",
    "agc": "AGC",
    "l1": "L1 decay",
    "coupled_l2": "coupled L2",
    "decoupled_l2": "decoupled L2",
}
CLIPPERS = ("value", "global_norm", "per_layer", "agc")
DECAYS = ("l1", "coupled_l2", "decoupled_l2")
#: telemetry key of each clipping method (gradflow.optim.telemetry prefixes)
_TELEMETRY = {
    "value": "clip_by_value",
    "global_norm": "clip_by_global_norm",
    "per_layer": "clip_by_layer_norm",
    "agc": "adaptive_grad_clip",
}


@dataclasses.dataclass(frozen=True)
class ClippingDecayConfig(gf.experiment.Config):
    """One deep ReLU MLP trained with every clipping and decay method of the chain."""

    depth: int  # Dense layers (hidden + readout)
    width: int  # hidden width
    init_scale: float  # multiplies the He kernels
    learning_rate: float  # momentum SGD's step size
    steps: int  # SGD steps
    batch_size: int  # minibatch
    record_every: int  # steps between records
    clip_value: float  # threshold of clipping per entry
    clip_norm: float  # threshold of clipping the global norm
    clip_layer: float  # threshold of clipping per layer
    agc: float  # lambda of adaptive gradient clipping (Brock et al.)
    l1: float  # L1 decay
    l2: float  # L2 decay (coupled and decoupled use the same lambda)
    max_loss: float  # a loss above it counts as divergence
    seeds: int  # random draws per method

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("depth", "width", "steps", "batch_size", "record_every", "seeds"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive int, got {getattr(self, key)!r}")
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2 (hidden layers + readout), got {self.depth}")
        if self.steps % self.record_every:
            raise ValueError(
                f"steps ({self.steps}) must be a multiple of record_every ({self.record_every})"
            )
        for key in ("init_scale", "learning_rate", "clip_value", "clip_norm", "clip_layer", "agc",
                    "max_loss"):  # fmt: skip
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)!r}")
        for key in ("l1", "l2"):
            if not getattr(self, key) >= 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)!r}")


FULL = ClippingDecayConfig(
    depth=10,
    width=32,
    init_scale=1.2,
    learning_rate=0.1,
    steps=600,
    batch_size=32,
    record_every=20,
    clip_value=0.05,
    clip_norm=1.0,
    clip_layer=0.5,
    agc=0.05,
    l1=1e-4,
    l2=5e-4,
    max_loss=100.0,
    seeds=16,
)
QUICK = dataclasses.replace(FULL, steps=200, seeds=5)


def _hparams(config: ClippingDecayConfig, method):
    """Traced per-method thresholds and decays: the method's piece on, every other identity."""
    m = jnp.asarray(method)
    inf = jnp.inf

    def pick(name: str, value: float, off: float):
        return jnp.where(m == METHODS.index(name), value, off)

    return {
        "clip_value": pick("value", config.clip_value, inf),
        "clip_norm": pick("global_norm", config.clip_norm, inf),
        "clip_layer": pick("per_layer", config.clip_layer, inf),
        "agc": pick("agc", config.agc, inf),
        "l1": pick("l1", config.l1, 0.0),
        "coupled_l2": pick("coupled_l2", config.l2, 0.0),
        "decoupled_l2": pick("decoupled_l2", config.l2, 0.0),
    }


def optimizer(h: dict) -> optax.GradientTransformation:
    """The chain of the module docstring from traced hyperparameters ``h``."""
    o = gf.optim
    return optax.chain(
        o.add_l1_decay(h["l1"]),
        o.add_l2_decay(h["coupled_l2"]),
        o.clip_by_value(h["clip_value"]),
        o.clip_by_global_norm(h["clip_norm"]),
        o.clip_by_layer_norm(h["clip_layer"]),
        o.adaptive_grad_clip(h["agc"]),
        o.direction("momentum", momentum=0.9),
        o.add_l2_decay(h["decoupled_l2"]),
        optax.scale_by_learning_rate(h["learning_rate"]),
    )


def _make_fn(config: ClippingDecayConfig):
    data = gf.data.load_digits(scale="standardize")
    net = gf.models.MLP(
        widths=(config.width,) * (config.depth - 1), out=10, activation="relu",
        kernel_init="he_normal", bias_init="zeros",
    )  # fmt: skip
    cfg = gf.training.TrainConfig(
        model=net,
        optimizer=optimizer,
        loss="softmax_cross_entropy",
        steps=config.steps,
        batch_size=config.batch_size,
        record_every=config.record_every,
        max_loss=config.max_loss,
    )
    train = gf.training.train_fn(cfg, data)

    def fn(hparams, key):
        h = {
            **_hparams(config, hparams["method"]),
            "learning_rate": hparams["learning_rate"],
            "init_scale": hparams["init_scale"],
        }
        rec = train(h, key)
        out = {
            k: rec[k] for k in ("loss", "test_accuracy", "param_norm", "grad_norm", "diverged_step")
        }
        out["pre_clip_norm"] = rec["optim/clip_by_value/global_norm"]
        m = jnp.asarray(hparams["method"])
        clipped = jnp.zeros_like(rec["optim/clip_by_value/clipped"])
        for name in CLIPPERS:
            frac = rec[f"optim/{_TELEMETRY[name]}/clipped"]
            clipped = jnp.where(m == METHODS.index(name), frac, clipped)
        out["clipped_frac"] = clipped  # (R, L): fraction of the block's steps clipped, per layer
        return out

    return fn


def run(config: ClippingDecayConfig, results_dir: Path) -> None:
    """Every method x seed in one program."""
    gf.sweep.run(
        _make_fn(config),
        grid={
            "method": list(range(len(METHODS))),
            "learning_rate": [config.learning_rate],
            "init_scale": [config.init_scale],
        },
        seeds=range(config.seeds),
        workdir=Path(results_dir) / "train",
        axes={
            "loss": ("step",),
            "test_accuracy": ("step",),
            "pre_clip_norm": ("step",),
            "param_norm": ("step", "layer"),
            "grad_norm": ("step", "layer"),
            "clipped_frac": ("step", "layer"),
        },
        name=NAME,
        config={**config.to_dict(), "methods": list(METHODS)},
    )


# ------------------------------------------------------------------------------ reading results


def load(results_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The table with method names in ``method`` and the run's config."""
    workdir = Path(results_dir) / "train"
    df = gf.sweep.load(workdir)
    config = gf.experiment.stored_config(workdir)
    names = np.asarray(config["methods"])
    return df.assign(method=names[df["method"].to_numpy(int)]), config


def runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, seed): ``diverged``, ``diverged_step``."""
    return df.groupby(["method", "seed"])[["diverged", "diverged_step"]].first().reset_index()


def diverged_fraction(df: pd.DataFrame) -> dict[str, float]:
    r = runs(df)
    return {m: float(r[r["method"] == m]["diverged"].mean()) for m in METHODS}


def curves(
    df: pd.DataFrame, config: dict, method: str, metric: str, *, reduce: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps (R,), values (seeds, R), diverged (seeds,))`` of one metric of one method.

    Per-layer metrics are reduced over layers: ``reduce="norm"`` the root of the sum of squares
    (per-layer norms -> the whole network's norm), ``"hidden"`` the mean over every layer but the
    readout (which AGC never clips), ``"mean"`` the mean over all layers.
    """
    sub = df[(df["method"] == method) & (df["metric"] == metric)]
    if sub["layer"].notna().any():
        if reduce == "norm":
            sub = (
                sub.assign(value=sub["value"] ** 2)
                .groupby(["seed", "step"], as_index=False)["value"]
                .sum()
                .assign(value=lambda d: np.sqrt(d["value"]))
            )
        elif reduce in ("hidden", "mean"):
            if reduce == "hidden":
                sub = sub[sub["layer"] < sub["layer"].max()]
            sub = sub.groupby(["seed", "step"], as_index=False)["value"].mean()
        else:
            raise ValueError(f"{metric} is per layer: reduce must be 'norm', 'hidden' or 'mean'")
    values, at = gf.sweep.to_arrays(sub, ("seed", "step"))
    div = runs(df[df["method"] == method]).set_index("seed")["diverged"].reindex(at["seed"])
    return (at["step"] + 1) * config["record_every"], values, div.to_numpy(bool)


# ------------------------------------------------------------------------------ figures, tables


def _colors() -> dict[str, str]:
    c = gf.plotting.COLORS
    return dict(zip(METHODS, (c[7], c[0], c[1], c[2], c[3], c[4], c[5], c[6])))


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Headline: diverged fraction, loss, weight norm and clip telemetry per method."""
    df, config = load(results_dir)
    frac = diverged_fraction(df)
    colors = _colors()
    n_seeds = df["seed"].nunique()
    out = []
    with gf.plotting.style():
        fig, axes = gf.plotting.figure(2, 3, width="text", aspect=0.8)
        ax = axes[0, 0]
        y = np.arange(len(METHODS))
        ax.barh(y, [frac[m] for m in METHODS], color=[colors[m] for m in METHODS])
        for yi, m in zip(y, METHODS):
            ax.text(frac[m] + 0.02, yi, f"{round(frac[m] * n_seeds)}/{n_seeds}", va="center",
                    fontsize=6.5)  # fmt: skip
        ax.set_yticks(y, [LABELS[m] for m in METHODS])
        ax.invert_yaxis()
        ax.set_xlim(0, 1.25)
        ax.set_xlabel("fraction of seeds diverged")
        ax.set_title("(a) divergence", loc="left")

        panels = (
            (axes[0, 1], "loss", None, "training loss", "(b) loss", "log"),
            (axes[0, 2], "test_accuracy", None, "test accuracy", "(c) test accuracy", "lin"),
            (axes[1, 0], "param_norm", "norm", r"weight norm $\|\theta\|$", "(d) weight norm",
             "log"),
            (axes[1, 1], "clipped_frac", "hidden", "fraction of steps clipped\n(mean over hidden "
             "layers)", "(e) clip telemetry", "lin"),
            (axes[1, 2], "pre_clip_norm", None, r"pre-clip gradient norm $\|g\|$",
             "(f) gradient norm", "log"),
        )  # fmt: skip
        for ax, metric, reduce, ylabel, title, scale in panels:
            for m in METHODS:
                if metric == "clipped_frac" and m not in CLIPPERS:
                    continue
                steps, v, div = curves(df, config, m, metric, reduce=reduce)
                v = v[~div]
                if not len(v):
                    continue  # every seed diverged: shown in (a), nothing to draw
                v = gf.plotting.finite_or_raise(v, f"{m} {metric}")
                ls = "--" if m in DECAYS else "-"
                if len(v) > 1:
                    gf.plotting.band(ax, steps, v, color=colors[m], alpha=0.12, lw=1.1, ls=ls)
                else:
                    ax.plot(steps, np.median(v, axis=0), color=colors[m], lw=1.1, ls=ls)
            if scale == "log":
                ax.set_yscale("log")
            ax.set_xlabel("SGD step")
            ax.set_ylabel(ylabel)
            ax.set_title(title, loc="left")
        axes[0, 2].set_ylim(0, 1)
        axes[1, 1].set_ylim(-0.02, 1.02)

        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colors[m], lw=1.4,
                          ls="--" if m in DECAYS else "-")
                   for m in METHODS]  # fmt: skip
        fig.legend(handles, [LABELS[m] for m in METHODS], loc="outside upper center", ncols=4,
                   title=f"{config['depth']}-layer ReLU MLP, He x {config['init_scale']:g}, "
                   f"momentum SGD at lr {config['learning_rate']:g}: median and 10–90% over "
                   f"the seeds that did not diverge (of {n_seeds})", title_fontsize=7)  # fmt: skip
        out += gf.plotting.savefig(fig, Path(figures_dir) / f"{NAME}_headline")
    return out


_CAMEL = {
    "none": "None", "value": "Value", "global_norm": "GlobalNorm", "per_layer": "PerLayer",
    "agc": "Agc", "l1": "Lone", "coupled_l2": "CoupledLtwo", "decoupled_l2": "DecoupledLtwo",
}  # fmt: skip


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    """Per method: diverged seeds, median divergence step, final loss and test accuracy."""
    df, config = load(results_dir)
    r = runs(df)
    rows = []
    macros = {}
    p = "clippingDecay"
    for m in METHODS:
        rm = r[r["method"] == m]
        n_div = int(rm["diverged"].sum())
        dsteps = rm["diverged_step"].dropna().to_numpy(float)
        _, loss, div = curves(df, config, m, "loss")
        _, acc, _ = curves(df, config, m, "test_accuracy")
        _, wn, _ = curves(df, config, m, "param_norm", reduce="norm")
        ok = ~div
        final_loss = float(np.median(loss[ok, -1])) if ok.any() else float("nan")
        acc_mean = float(np.mean(acc[ok, -1])) if ok.any() else float("nan")
        acc_sd = float(np.std(acc[ok, -1], ddof=1)) if ok.sum() > 1 else float("nan")
        rows.append([
            LABELS[m],
            f"{n_div}/{len(rm)}",
            float(np.median(dsteps)) if len(dsteps) else "--",
            final_loss,
            f"{acc_mean:.3f} $\\pm$ {acc_sd:.3f}" if ok.sum() > 1 else "--",
            f"{np.median(wn[ok, -1]):.1f}" if ok.any() else "--",
        ])  # fmt: skip
        macros[f"{p}Diverged{_CAMEL[m]}"] = n_div
        macros[f"{p}Acc{_CAMEL[m]}"] = acc_mean
    columns = [
        "method", "diverged", "median divergence step", "final loss (median)",
        "test accuracy (mean $\\pm$ sd)", "final weight norm (median)",
    ]  # fmt: skip
    out = [gf.experiment.latex_table(rows, columns, Path(tables_dir) / f"{NAME}.tex")]
    macros[f"{p}Seeds"] = int(df["seed"].nunique())
    macros[f"{p}Steps"] = int(config["steps"])
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
    figures=(f"{NAME}_headline",),
    order=6,
)
