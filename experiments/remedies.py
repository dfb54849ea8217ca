r"""remedies: what the seed notes prescribe against vanishing gradients, on one depth-20 network.

Claim (seeds 000, 001, 003; Ioffe & Szegedy 2015; He et al. 2016; Klambauer et al. 2017): in a
depth-20 sigmoid network the gradient reaching the first layer is many orders of magnitude smaller
than at the readout, and plain SGD cannot train it; the remedies the notes list -- ReLU-family
activations (seed 000: ReLU, leaky ReLU, ELU; SELU), BatchNorm (seeds 000, 002), residual
connections (seed 000), zero-centred inputs and activations (seed 003: tanh, input
standardisation), an adaptive optimizer and a learning-rate schedule (seed 003's "gradient descent
optimisation" and "learning-rate scheduling" classes) -- each change either the gradient ratio at
initialisation or how the optimizer uses a small gradient, and the network then trains.

What it measures. Every variant is an :class:`gradflow.models.MLP` of ``depth - 1`` hidden layers of
``width`` units and a linear readout (``depth`` Dense layers, the readout included), zero biases,
softmax cross-entropy on the scikit-learn digits (:func:`gradflow.data.load_digits`; pixels in
[0, 1] unless the variant standardises them). The base network is sigmoid with LeCun weights
:math:`N(0, 1/n_\text{in})` (Nielsen's ``network2`` scale) trained with plain SGD; each variant
changes one thing (:data:`VARIANTS`): the activation (with its customary initializer: LeCun for
sigmoid, tanh and SELU, He for the ReLU family), BatchNorm or LayerNorm before the sigmoid,
identity skips around the sigmoid blocks, standardised inputs, Adam instead of SGD, or a
warmup-cosine learning-rate schedule.

* **Gradient ratio at initialisation**: :func:`gradflow.probes.probe` of the initial network on
  ``probe_batch`` training images; the ratio of the mean per-example error norm
  :math:`\|\delta_1\| = \|\partial C_x/\partial z_1\|` of the first layer to the readout's
  :math:`\|\delta_L\|` (``preact_grad_norm[0] / preact_grad_norm[-1]``). BatchNorm nets are probed
  in train mode (batch statistics: the gradients a training step sees).
* **Training**: :func:`gradflow.training.train_fn` for ``steps`` minibatch steps, records of the
  training loss and test accuracy every ``record_every`` steps.
* **A fair learning rate**: every variant is trained at ``lr_factors`` times its optimizer's base
  rate (:data:`BASE_LR`: 0.1 for SGD, 1e-3 for Adam; the schedule's peak rate for the scheduled
  variant), all in the same vmapped program as the seeds; the table and figure report each variant
  at the factor with the lowest median final *training* loss over seeds (no run of that factor
  diverged), so the test set plays no part in the choice.

One :func:`gradflow.sweep.run` over the static ``variant`` (one compiled program per variant) with
learning-rate factors and seeds batched. Outputs: the table (variant, remedy class, chosen learning
rate, median ratio at init, final test accuracy mean +- sd), the macros the paper quotes, and one
four-panel figure (ratio per seed, accuracy, training-loss curves of the activations and of the
sigmoid remedies).

What the full config finds (5 seeds, 300 steps; the macros hold the numbers). The plain sigmoid
net's ratio is ~1e-12 in every seed -- below :math:`(1/4)^{19} \approx 3.6 \times 10^{-12}`, as
LeCun weights keep the norm on average and the pre-activations sit away from 0 where
:math:`\sigma' < 1/4` -- and its training loss stays at ln 10 (it learns the class prior and
nothing else). Nothing that keeps the sigmoid stack and its scale helps: standardised inputs
(the sigmoid's outputs are not zero-centred, so only layer 1 sees centred data), Adam (the weight
gradients of the first several layers, of norm 1e-12 to 1e-9, are below its ``eps = 1e-8``, so it
cannot rescale them; learning rates 3e-4 to 1e-2 all fail), a warmup-cosine schedule, and
LayerNorm (ratio ~1e-8: it normalises each layer's pre-activations but the backward factor stays
near 0.4 per layer). BatchNorm (ratio ~1) and identity skips (~0.3, the sum path carries the
gradient) train to 84-89% mean test accuracy -- at the factor with the lowest median training
loss one BatchNorm seed of five can end near 50%, as the largest rates amplify float32 rounding
-- ELU and SELU (ratios 3-6) to about 93%, and tanh (~0.3) to about 82%, 91% on standardised
inputs (seed 003's zero-centred data). ReLU and leaky ReLU with He init have
healthy ratios (~0.7), yet these depth-20, width-32 nets train slowly and erratically: ~55% within
the budget, with a large spread over seeds. A healthy ratio at init is not sufficient for fast
training.

Cost: each variant is a separately compiled depth-20 program (4-7 s of XLA compile on this
2-core CPU, recorded in the store's metadata; about 15 s before the sweep's keys fused the
random initialisation's cipher), so the full config's 13 variants dominate its runtime; ``--set
variants=[...]`` runs a subset.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import jax
import numpy as np
import optax
import pandas as pd

import gradflow as gf

NAME = "remedies"
CLAIM = (
    "A depth-20 sigmoid MLP has a first-layer/readout gradient ratio of ~1e-12 at initialisation "
    "and stays at chance on digits with SGD, Adam, a learning-rate schedule or standardised "
    "inputs; LayerNorm leaves the ratio at ~1e-8 and fails too; tanh, ReLU-family activations, "
    "BatchNorm and residual connections give ratios of order 0.1-10 and train far above chance."
)
SOURCE = "seeds 000, 001, 003; Ioffe & Szegedy 2015; He et al. 2016; Klambauer et al. 2017"

#: Base learning rate of each optimizer; the sweep multiplies it by the config's ``lr_factors``.
BASE_LR: dict[str, float] = {"sgd": 0.1, "adam": 1e-3}
#: Remedy classes (the seeds' categories), in the order the figure and table list them.
CLASSES: tuple[str, ...] = ("baseline", "activation", "architecture", "data", "optimizer")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One network and training recipe.

    Attributes:
      label: name in figures and tables.
      kind: remedy class (one of :data:`CLASSES`).
      activation: hidden :mod:`gradflow.activations` name.
      kernel_init: :mod:`gradflow.initializers` name of every kernel.
      norm: ``None``, ``"batch"`` or ``"layer"`` before every hidden activation.
      residual: identity skips around the hidden blocks of equal width.
      scale: input scaling of :func:`gradflow.data.load_digits` (``"standardize"``: zero-centred,
        unit-variance pixels).
      optimizer: ``"sgd"`` or ``"adam"``.
      schedule: SGD with linear warmup over the first 10% of the steps to the peak rate, then
        cosine decay to 0 (:func:`optax.warmup_cosine_decay_schedule`).
    """

    label: str
    kind: str
    activation: str = "sigmoid"
    kernel_init: str = "lecun_normal"
    norm: str | None = None
    residual: bool = False
    scale: str = "unit"
    optimizer: str = "sgd"
    schedule: bool = False


#: The variants, in display order: the baseline, then one change each.
VARIANTS: dict[str, Variant] = {
    "sigmoid": Variant("sigmoid", "baseline"),
    "tanh": Variant("tanh", "activation", activation="tanh"),
    "relu": Variant("ReLU", "activation", activation="relu", kernel_init="he_normal"),
    "leaky_relu": Variant(
        "leaky ReLU", "activation", activation="leaky_relu", kernel_init="he_normal"
    ),
    "elu": Variant("ELU", "activation", activation="elu", kernel_init="he_normal"),
    "selu": Variant("SELU", "activation", activation="selu"),
    "sigmoid_batchnorm": Variant("sigmoid + BatchNorm", "architecture", norm="batch"),
    "sigmoid_layernorm": Variant("sigmoid + LayerNorm", "architecture", norm="layer"),
    "sigmoid_residual": Variant("sigmoid + residual", "architecture", residual=True),
    "sigmoid_standardized": Variant("sigmoid, std. inputs", "data", scale="standardize"),
    "tanh_standardized": Variant(
        "tanh, std. inputs", "data", activation="tanh", scale="standardize"
    ),
    "sigmoid_adam": Variant("sigmoid, Adam", "optimizer", optimizer="adam"),
    "sigmoid_schedule": Variant("sigmoid, LR schedule", "optimizer", schedule=True),
}

#: Loss-curve panels of the figure: the activations, and the remedies applied to the sigmoid net.
CURVE_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("activations (SGD)", ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu")),
    (
        "remedies on the sigmoid net",
        (
            "sigmoid",
            "sigmoid_batchnorm",
            "sigmoid_layernorm",
            "sigmoid_residual",
            "sigmoid_standardized",
            "tanh_standardized",
            "sigmoid_adam",
            "sigmoid_schedule",
        ),
    ),
)

LOSS = "softmax_cross_entropy"


@dataclasses.dataclass(frozen=True)
class RemediesConfig(gf.experiment.Config):
    """Every remedy of the sigmoid net, each at its best of several learning rates."""

    variants: tuple[str, ...]  # names of VARIANTS
    seeds: int  # random draws per (variant, learning rate)
    depth: int  # Dense layers including the readout
    width: int  # hidden width
    steps: int  # minibatch training steps
    batch_size: int  # minibatch
    record_every: int  # steps between records
    lr_factors: tuple[float, ...]  # multiples of each optimizer's BASE_LR, tried for every variant
    probe_batch: int  # training images the gradient ratio at init is measured on

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, lo in (
            ("seeds", 5), ("depth", 3), ("width", 1), ("steps", 1), ("batch_size", 1),
            ("record_every", 1), ("probe_batch", 1),
        ):  # fmt: skip
            if getattr(self, key) < lo:
                raise ValueError(f"{key} must be an int >= {lo}, got {getattr(self, key)!r}")
        if self.steps % self.record_every:
            raise ValueError(
                f"steps ({self.steps}) must be a multiple of record_every ({self.record_every})"
            )
        variants = list(self.variants)
        unknown = [v for v in variants if v not in VARIANTS]
        if not variants or unknown:
            raise ValueError(
                f"unknown variants {unknown or variants}; valid: {', '.join(VARIANTS)}"
            )
        if len(set(variants)) != len(variants):
            raise ValueError(f"variants must be distinct, got {variants}")
        factors = list(self.lr_factors)
        if not factors or not all(np.isfinite(f) and f > 0 for f in factors):
            raise ValueError(f"lr_factors must be positive numbers, got {factors!r}")


FULL = RemediesConfig(
    variants=tuple(VARIANTS),
    seeds=5,
    depth=20,
    width=32,
    steps=300,
    batch_size=64,
    record_every=20,
    lr_factors=(0.3, 1.0, 3.0, 10.0),
    probe_batch=256,
)
QUICK = dataclasses.replace(
    FULL, variants=("sigmoid", "elu", "sigmoid_batchnorm"), lr_factors=(0.3, 3.0)
)


def model(name: str, depth: int, width: int) -> gf.models.MLP:
    """The network of variant ``name``: ``depth - 1`` hidden layers of ``width`` and a readout."""
    v = VARIANTS[name]
    return gf.models.MLP(
        widths=(width,) * (depth - 1), out=10, activation=v.activation,
        kernel_init=v.kernel_init, bias_init="zeros", norm=v.norm, residual=v.residual,
    )  # fmt: skip


def optimizer(name: str, steps: int):
    """``hparams -> optax transformation`` of variant ``name``: its optimizer at
    ``hparams["lr_factor"] * BASE_LR[optimizer]`` (the schedule's peak rate when scheduled)."""
    v = VARIANTS[name]

    def make(hparams):
        peak = hparams["lr_factor"] * BASE_LR[v.optimizer]  # traced under the sweep's vmap
        if not v.schedule:
            return gf.optim.make_optimizer(v.optimizer, peak)
        # the schedule's shape at peak 1, times the (traced) peak: optax's schedules branch on
        # the peak value in Python, so it cannot be passed to them directly
        shape = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=1.0, warmup_steps=max(1, steps // 10),
            decay_steps=steps, end_value=0.0,
        )  # fmt: skip
        return gf.optim.make_optimizer(v.optimizer, lambda count: peak * shape(count))

    return make


@functools.cache
def _data(scale: str) -> gf.data.Digits:
    return gf.data.load_digits(scale=scale)


def _make_fn(config: RemediesConfig):
    depth, width, steps = config.depth, config.width, config.steps

    @functools.cache
    def parts(name: str):
        net = model(name, depth, width)
        data = _data(VARIANTS[name].scale)
        train_cfg = gf.training.TrainConfig(
            model=net,
            optimizer=optimizer(name, steps),
            loss=LOSS,
            steps=steps,
            batch_size=config.batch_size,
            record_every=config.record_every,
        )
        return net, data, gf.training.train_fn(train_cfg, data)

    def fn(hparams, key):
        name = hparams["variant"]
        net, data, train = parts(name)
        x = data.x_train[: config.probe_batch]
        y = data.y_train[: config.probe_batch]
        # train_fn initialises with the first half of split(key): probe those same parameters,
        # BatchNorm in train mode (batch statistics, as a training step sees them).
        init_key, _ = jax.random.split(key)
        report = gf.probes.probe(
            net, net.init(init_key, x[:1]), x, y, LOSS, train=VARIANTS[name].norm == "batch"
        )
        rec = train(hparams, key)
        return {
            "init_preact_grad": report.preact_grad_norm,
            "init_ratio": report.preact_grad_norm[0] / report.preact_grad_norm[-1],
            "loss": rec["loss"],
            "test_accuracy": rec["test_accuracy"],
            "diverged_step": rec["diverged_step"],
        }

    return fn


def run(config: RemediesConfig, results_dir: Path) -> None:
    """Every variant x learning-rate factor x seed: one sweep, one compiled program per variant."""
    gf.sweep.run(
        _make_fn(config),
        grid={"variant": list(config.variants), "lr_factor": list(config.lr_factors)},
        seeds=range(config.seeds),
        workdir=Path(results_dir) / "variants",
        axes={
            "init_preact_grad": ("layer",),
            "init_ratio": (),
            "loss": ("step",),
            "test_accuracy": ("step",),
        },
        name=NAME,
        config=config.to_dict(),
    )


# ------------------------------------------------------------------------------ reading results


def load(results_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The saved table and the run's config."""
    workdir = Path(results_dir) / "variants"
    df = gf.sweep.load(workdir)
    return df, gf.experiment.stored_config(workdir)


def learning_rate(name: str, factor: float) -> float:
    """The (peak) learning rate of variant ``name`` at ``factor``."""
    return float(factor) * BASE_LR[VARIANTS[name].optimizer]


def summary(df: pd.DataFrame, config: dict) -> pd.DataFrame:
    """One row per variant (config order), at its chosen learning-rate factor.

    Columns: ``variant``, ``label``, ``kind``, ``lr_factor``, ``learning_rate``, ``seeds``,
    ``diverged`` (runs of the chosen factor that diverged; the choice prefers none),
    ``ratio_median``, ``ratio_min``, ``ratio_max`` (gradient ratio at init over seeds),
    ``final_loss`` (median final training loss), ``acc_mean``, ``acc_sd`` (final test accuracy
    over the finite seeds), ``tried`` (factors whose every seed stayed finite).
    """
    rows = []
    last = int(df.loc[df["metric"] == "loss", "step"].max())
    for name in config["variants"]:
        sub = df[df["variant"] == name]
        ratio = ratios(df, name)
        final = sub[(sub["metric"] == "loss") & (sub["step"] == last)]
        acc = sub[(sub["metric"] == "test_accuracy") & (sub["step"] == last)]
        stats = []
        for f, g in final.groupby("lr_factor"):
            ok = not g["diverged"].any()
            stats.append((not ok, float(np.median(g["value"])) if ok else np.inf, f))
        _, loss, factor = min(stats, key=lambda t: (t[0], t[1], t[2]))
        chosen = acc[acc["lr_factor"] == factor]
        a = chosen[~chosen["diverged"]]["value"].to_numpy(float)
        v = VARIANTS[name]
        rows.append({
            "variant": name,
            "label": v.label,
            "kind": v.kind,
            "lr_factor": float(factor),
            "learning_rate": learning_rate(name, factor),
            "seeds": int(chosen["seed"].nunique()),
            "diverged": int(chosen["diverged"].sum()),
            "ratio_median": float(np.median(ratio)),
            "ratio_min": float(np.min(ratio)),
            "ratio_max": float(np.max(ratio)),
            "final_loss": loss,
            "acc_mean": float(np.mean(a)) if a.size else np.nan,
            "acc_sd": float(np.std(a, ddof=1)) if a.size > 1 else np.nan,
            "tried": sum(not s[0] for s in stats),
        })  # fmt: skip
    return pd.DataFrame(rows)


def ratios(df: pd.DataFrame, name: str) -> np.ndarray:
    """Gradient ratio at init of variant ``name``, one value per seed (it does not depend on the
    learning rate: every factor of a seed starts from the same parameters)."""
    sub = df[(df["variant"] == name) & (df["metric"] == "init_ratio")]
    return sub.drop_duplicates("seed").sort_values("seed")["value"].to_numpy(float)


def curves(df: pd.DataFrame, name: str, factor: float, metric: str = "loss"):
    """``(records, values)`` of a per-record metric at ``factor``: record indices ``(R,)``,
    values ``(finite seeds, R)`` (diverged seeds dropped)."""
    sub = df[
        (df["variant"] == name) & (df["metric"] == metric) & (df["lr_factor"] == factor)
        & ~df["diverged"]
    ]  # fmt: skip
    values, at = gf.sweep.to_arrays(sub, ("seed", "step"))
    return at["step"], values


# ------------------------------------------------------------------------------ figures, tables

_KIND_COLOR = dict(zip(CLASSES, (7, 0, 2, 4, 3)))
#: Cross-entropy of the uniform prediction over the 10 digit classes.
CHANCE_LOSS = float(np.log(10.0))


def _at_chance(df: pd.DataFrame, name: str, s: pd.DataFrame, tol: float = 0.1) -> bool:
    """Whether every median record of the training loss (chosen factor) is within ``tol`` of
    ln 10."""
    factor = float(s.loc[s["variant"] == name, "lr_factor"].iloc[0])
    _, vals = curves(df, name, factor)
    return vals.size > 0 and bool(np.all(np.abs(np.median(vals, 0) - CHANCE_LOSS) < tol))


def _color(name: str) -> str:
    return gf.plotting.COLORS[_KIND_COLOR[VARIANTS[name].kind]]


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    """The headline figure: (a) gradient ratio at init, (b) final test accuracy, (c, d) training
    loss curves of the activations and of the sigmoid remedies."""
    df, config = load(results_dir)
    s = summary(df, config)
    names = list(s["variant"])
    ypos = np.arange(len(names))[::-1]
    with gf.plotting.style():
        import matplotlib.pyplot as plt

        top_h = 0.55 + 0.17 * len(names)
        fig = plt.figure(figsize=(gf.plotting.WIDTHS["text"], top_h + 2.3), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[top_h, 2.3])
        ax_r, ax_a = top.subplots(1, 2, sharey=True, width_ratios=[1.3, 1])
        _panel_ratios(ax_r, df, s, ypos)
        _panel_accuracy(ax_a, s, ypos)
        panels = [(t, [n for n in ns if n in names]) for t, ns in CURVE_PANELS]
        panels = [(t, ns) for t, ns in panels if ns]
        axes = np.atleast_1d(bottom.subplots(1, len(panels), sharey=True))
        all_losses = []
        for i, (ax, (title, ns)) in enumerate(zip(axes, panels)):
            all_losses += _panel_losses(ax, df, s, ns, config)
            ax.set_title(f"({'cd'[i]}) training loss, {title}", loc="left")
        axes[0].set_ylabel("training loss (full training set)\nmedian and 10–90% over seeds")
        if all_losses:
            gf.plotting.log_axis_if_spans(axes[0], np.concatenate([v.ravel() for v in all_losses]),
                                          decades=1.0)  # fmt: skip
        fig.suptitle(
            f"depth-{config['depth']} MLPs (width {config['width']}) on digits: "
            f"{config['steps']} steps, batch {config['batch_size']}; each variant at the best of "
            f"its {len(config['lr_factors'])} learning rates (lowest final training loss)",
            fontsize=8,
        )
        return gf.plotting.savefig(fig, Path(figures_dir) / f"{NAME}_headline")


def _panel_ratios(ax, df: pd.DataFrame, s: pd.DataFrame, ypos: np.ndarray) -> None:
    """(a) the gradient ratio per seed, its median as a bar; colours by remedy class."""
    from matplotlib.lines import Line2D

    names = list(s["variant"])
    rng = np.random.default_rng(0)  # vertical jitter of the seed dots only
    for y, name in zip(ypos, names):
        r = gf.plotting.finite_or_raise(ratios(df, name), f"gradient ratio of {name}")
        c = _color(name)
        ax.plot(r, y + rng.uniform(-0.2, 0.2, r.size), "o", color=c, ms=2.6, alpha=0.8,
                mfc="none", mew=0.8)  # fmt: skip
        ax.plot([np.median(r)] * 2, [y - 0.32, y + 0.32], color=c, lw=1.8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="0.5", lw=0.6, ls=":")
    ax.set_yticks(ypos, list(s["label"]))
    for tick, name in zip(ax.get_yticklabels(), names):
        tick.set_color(_color(name))
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel(r"$\|\delta_1\| / \|\delta_L\|$ at initialisation (first layer / readout)")
    ax.set_title("(a) gradient ratio at init (○ a seed, | median)", loc="left")
    handles = [Line2D([], [], color=gf.plotting.COLORS[_KIND_COLOR[k]], marker="s", lw=0,
                      label=k) for k in CLASSES if k in set(s["kind"])]  # fmt: skip
    tall = len(names) >= 6  # room for a titled legend between the clusters of dots
    ax.legend(handles=handles, loc="lower center", fontsize=6, handletextpad=0.2,
              title="remedy class" if tall else None, title_fontsize=6,
              ncols=2 if tall else len(handles), columnspacing=1.0)  # fmt: skip


def _panel_accuracy(ax, s: pd.DataFrame, ypos: np.ndarray) -> None:
    """(b) final test accuracy at the chosen learning rate, numbers in a column at the right."""
    from matplotlib.transforms import blended_transform_factory

    seeds = int(s["seeds"].max())
    right = blended_transform_factory(ax.transAxes, ax.transData)
    for y, row in zip(ypos, s.itertuples()):
        c = _color(row.variant)
        if not np.isfinite(row.acc_mean):
            text = "every learning rate diverged"
        else:
            sd = 0.0 if np.isnan(row.acc_sd) else row.acc_sd
            ax.errorbar(row.acc_mean, y, xerr=sd, fmt="o", color=c, ms=3.5, capsize=2, lw=1)
            text = f"{row.acc_mean:.2f} ± {sd:.2f}   lr {row.learning_rate:g}"
        ax.text(1.03, y, text, transform=right, va="center", fontsize=6, color=c)
    ax.axvline(0.1, color="0.5", lw=0.6, ls=":")
    ax.set_xlim(0, 1)
    ax.set_xticks([0.1, 0.25, 0.5, 0.75, 1.0], ["chance", ".25", ".5", ".75", "1"])
    ax.set_xlabel("test accuracy after training")
    ax.set_title(f"(b) test accuracy (mean ± sd, {seeds} seeds)", loc="left")


def _panel_losses(ax, df: pd.DataFrame, s: pd.DataFrame, ns: list[str], config: dict) -> list:
    """(c, d) training-loss curves of ``ns`` at each one's chosen learning rate; returns them."""
    losses = []
    others = iter(zip(gf.plotting.COLORS[:7], ["--", "-.", ":", (0, (5, 1))] * 2))
    for n in ns:
        c, ls = (gf.plotting.COLORS[-1], "-") if n == "sigmoid" else next(others)
        factor = float(s.loc[s["variant"] == n, "lr_factor"].iloc[0])
        records, vals = curves(df, n, factor)
        if vals.size == 0:  # every seed diverged: said in panel (b)
            continue
        vals = gf.plotting.finite_or_raise(vals, f"training loss of {n}")
        steps = (records + 1) * config["record_every"]  # record i: after step (i + 1) * rec
        gf.plotting.band(ax, steps, vals, color=c, alpha=0.18, ls=ls, label=VARIANTS[n].label)
        losses.append(vals)
    _chance_note(ax, [n for n in ns if _at_chance(df, n, s)])
    ax.set_xlim(0, config["steps"])
    ax.set_xlabel("training step")
    ax.legend(loc="lower left", fontsize=5.8, ncols=2)
    return losses


def _chance_note(ax, flat: list[str]) -> None:
    """Coinciding curves at the chance loss: a line at ln 10 and which variants lie under it."""
    if len(flat) <= 1:
        return
    ax.axhline(CHANCE_LOSS, color="0.5", lw=0.6, ls=":", zorder=0)
    labels = [VARIANTS[n].label for n in flat]
    half = (len(labels) + 1) // 2
    text = "at chance (ln 10) throughout:\n" + ",\n".join(
        ", ".join(part) for part in (labels[:half], labels[half:]) if part
    )
    ax.text(0.99, CHANCE_LOSS * 1.08, text, transform=ax.get_yaxis_transform(),
            ha="right", va="bottom", fontsize=5.5, color="0.3")  # fmt: skip


def _macro(name: str) -> str:
    return "".join(p.capitalize() for p in re.split(r"[^a-z]+", name) if p)


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    """The table (variant, learning rate, ratio at init, final test accuracy) and macros."""
    df, config = load(results_dir)
    s = summary(df, config)
    rows = []
    for row in s.itertuples():
        acc = (
            "diverged" if not np.isfinite(row.acc_mean)
            else f"{row.acc_mean:.3f} ± {row.acc_sd:.3f}"
        )  # fmt: skip
        rows.append([row.label, row.kind, row.learning_rate, row.ratio_median, acc])
    columns = [
        "variant", "remedy class", "learning rate", "ratio at init (median)",
        "test accuracy (mean ± sd)",
    ]  # fmt: skip
    out = [gf.experiment.latex_table(rows, columns, Path(tables_dir) / f"{NAME}.tex")]

    p = "remedies"
    macros = {
        f"{p}Seeds": int(s["seeds"].min()),
        f"{p}Depth": int(config["depth"]),
        f"{p}Width": int(config["width"]),
        f"{p}Steps": int(config["steps"]),
        f"{p}BatchSize": int(config["batch_size"]),
        f"{p}LrCount": len(config["lr_factors"]),
        f"{p}SgdBaseLr": BASE_LR["sgd"],
        f"{p}AdamBaseLr": BASE_LR["adam"],
    }
    macros[f"{p}LrFactors"] = ", ".join(f"{f:g}" for f in config["lr_factors"])
    for row in s.itertuples():
        m = _macro(row.variant)
        macros[f"{p}Ratio{m}"] = row.ratio_median
        macros[f"{p}RatioMin{m}"] = row.ratio_min
        macros[f"{p}RatioMax{m}"] = row.ratio_max
        macros[f"{p}Acc{m}"] = row.acc_mean
        macros[f"{p}AccSd{m}"] = row.acc_sd
        macros[f"{p}Lr{m}"] = row.learning_rate
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
    order=5,
)
