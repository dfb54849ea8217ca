r"""layer_speed: Nielsen's "speed of learning" per hidden layer, at initialisation and in training.

Claim (seeds 000/001; Nielsen, *Neural Networks and Deep Learning*, ch. 5): in a sigmoid network
the early layers learn much more slowly than the late ones. With Nielsen's ``network2`` defaults --
sigmoid layers ``[n_in, 30, 30, 30, 30, 10]``, weights :math:`N(0, 1/n_\text{in})`
(``lecun_normal``), biases :math:`N(0, 1)` (``normal``), cross-entropy on sigmoid outputs -- the
speed of layer :math:`l`, :math:`\|\partial C/\partial b_l\|` with :math:`C` the mean cost over the
training examples, grows by a factor of several per layer toward the output, at initialisation and
throughout training. Each backward step multiplies by :math:`W^\top \mathrm{diag}\,\sigma'(z)` with
:math:`\sigma' \le 1/4`.

Setting. Nielsen used the first 1000 MNIST images (784 inputs); we use the first 1000 training
images of the scikit-learn digits (64 inputs, pixels in [0, 1]; :func:`gradflow.data.load_digits`),
the same architecture otherwise, and his training run (``generate_gradient.py``): full-batch SGD on
the 1000 images, one step per epoch for 500 epochs, :math:`\eta = 0.1`, L2 regularisation
:math:`\lambda = 5` (his update :math:`w \leftarrow (1 - \eta\lambda/n) w -
\eta\,\partial C/\partial w`, i.e. coupled L2 of strength :math:`\lambda/n` on the kernels only),
speeds measured on all 1000 images. Nielsen reports one random draw; we run many seeds in one
vmapped program (:func:`gradflow.sweep.run` over :func:`gradflow.training.train_fn`), report mean
and spread, and set his MNIST numbers beside ours (:data:`NIELSEN_MNIST_SPEEDS`).

On digits this network does not leave the class-prior plateau within the run (training accuracy
about 11%: it predicts one class; the cost sits near :math:`10 H(0.1) \approx 3.25`), and neither
with minibatches of 10 (``--set batch_size=10``) for 100 epochs, while the same net with one or two
hidden layers reaches 95% within 2000 minibatch steps: the slow early layers are the bottleneck.
The macros report the final accuracies so the paper can say so.

Outputs: the table of initial speeds (mean, sd, median per hidden layer, Nielsen's value), the
figure of speeds over training (median and 10-90% band over seeds, log scale), and the figure of
initial speeds with every seed shown.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pandas as pd

import gradflow as gf

NAME = "layer_speed"
CLAIM = (
    "In a sigmoid [n_in, 30, 30, 30, 30, 10] network with weights N(0, 1/n_in) and biases N(0, 1), "
    "the speed of learning ||dC/db_l|| increases toward the output by a factor of several per "
    "hidden layer, at initialisation (in every seed) and throughout training."
)
SOURCE = "seeds 000/001; Nielsen, Neural Networks and Deep Learning, ch. 5"

#: Nielsen's hidden-layer speeds :math:`\|\partial C/\partial b_l\|`, layers 1..4, for the
#: sigmoid network [784, 30, 30, 30, 30, 10] at initialisation on the first 1000 MNIST images
#: (one random draw). Quoted data: Nielsen, *Neural Networks and Deep Learning*, ch. 5, "Why are
#: deep neural networks hard to train?", http://neuralnetworksanddeeplearning.com/chap5.html.
NIELSEN_MNIST_SPEEDS: tuple[float, ...] = (0.003, 0.017, 0.070, 0.285)

WIDTHS = (30, 30, 30, 30)
LOSS = "sigmoid_cross_entropy"


@dataclasses.dataclass(frozen=True)
class LayerSpeedConfig(gf.experiment.Config):
    """The layer_speed sweep: Nielsen's training run, many seeds."""

    seeds: int  # random draws
    epochs: int  # passes over the n_train first training images (Nielsen: 1000)
    batch_size: int  # minibatch; n_train: full batch, one step per epoch (generate_gradient.py)
    record_every: int  # epochs between records
    n_train: int  # training images
    learning_rate: float  # eta
    lmbda: float  # Nielsen's L2 lambda (the decay strength is lmbda / n_train)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, lo in (
            ("seeds", 2), ("epochs", 1), ("batch_size", 1), ("record_every", 1), ("n_train", 10)
        ):  # fmt: skip
            if getattr(self, key) < lo:
                raise ValueError(f"{key} must be an int >= {lo}, got {getattr(self, key)!r}")
        if self.n_train % self.batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must divide n_train ({self.n_train}) so that an "
                "epoch is a whole number of steps"
            )
        if self.epochs % self.record_every:
            raise ValueError(
                f"epochs ({self.epochs}) must be a multiple of record_every ({self.record_every})"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if not self.lmbda >= 0:
            raise ValueError(f"lmbda must be >= 0, got {self.lmbda!r}")


FULL = LayerSpeedConfig(
    seeds=30, epochs=500, batch_size=1000, record_every=5, n_train=1000, learning_rate=0.1,
    lmbda=5.0,
)  # fmt: skip
QUICK = dataclasses.replace(FULL, seeds=20, epochs=20, record_every=1)


def model() -> gf.models.MLP:
    """Nielsen's network: sigmoid hidden layers, N(0, 1/n_in) weights, N(0, 1) biases."""
    return gf.models.MLP(
        widths=WIDTHS, out=10, activation="sigmoid", kernel_init="lecun_normal",
        bias_init="normal",
    )  # fmt: skip


def _make_fn(config: LayerSpeedConfig):
    data = gf.data.load_digits(scale="unit", n_train=config.n_train)
    net = model()
    steps_per_epoch = config.n_train // config.batch_size
    train_cfg = gf.training.TrainConfig(
        model=net,
        optimizer="sgd",  # with hparams learning_rate and weight_decay: coupled L2 on kernels
        loss=LOSS,
        steps=config.epochs * steps_per_epoch,
        batch_size=None if steps_per_epoch == 1 else config.batch_size,
        record_every=config.record_every * steps_per_epoch,
        probe=True,
        probe_batch=config.n_train,  # speeds on every training image
    )
    train = gf.training.train_fn(train_cfg, data)
    x, y = data.x_train, data.y_train

    def fn(hparams, key):
        # train_fn initialises with the first half of split(key); probe those same parameters.
        init_key, _ = jax.random.split(key)
        report = gf.probes.probe(net, net.init(init_key, x[:1]), x, y, LOSS)
        rec = train(hparams, key)
        return {
            "init_speed": report.bias_grad_norm,
            "init_loss": report.loss,
            "speed": rec["probe/bias_grad_norm"],
            "loss": rec["loss"],
            "accuracy": rec["accuracy"],
            "test_accuracy": rec["test_accuracy"],
            "diverged_step": rec["diverged_step"],
        }

    return fn


def run(config: LayerSpeedConfig, results_dir: Path) -> None:
    """Initial speeds and speeds over training for every seed: one sweep, one program."""
    n = config.n_train
    gf.sweep.run(
        _make_fn(config),
        grid={"learning_rate": [config.learning_rate], "weight_decay": [config.lmbda / n]},
        seeds=range(config.seeds),
        workdir=Path(results_dir) / "speeds",
        axes={
            "init_speed": ("layer",),
            "init_loss": (),
            "speed": ("step", "layer"),
            "loss": ("step",),
            "accuracy": ("step",),
            "test_accuracy": ("step",),
        },
        name=NAME,
        config=config.to_dict(),
    )


# ------------------------------------------------------------------------------ reading results


def load(results_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The saved table (diverged runs raise: none is expected here) and the run's config."""
    workdir = Path(results_dir) / "speeds"
    df = gf.sweep.load(workdir)
    config = gf.experiment.stored_config(workdir)
    if df["diverged"].any():
        bad = sorted(df.loc[df["diverged"], "seed"].unique())
        raise ValueError(f"layer_speed: seeds {bad} diverged; the setting should never diverge")
    return df, config


def init_speeds(df: pd.DataFrame) -> np.ndarray:
    """``(seeds, L)`` speeds at initialisation (hidden layers, then the readout)."""
    return gf.sweep.to_arrays(df[df["metric"] == "init_speed"], ("seed", "layer"))[0]


def training_speeds(df: pd.DataFrame, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, speeds)``: epochs ``(R + 1,)`` from 0, speeds ``(seeds, R + 1, L)``."""
    init = init_speeds(df)
    cube, at = gf.sweep.to_arrays(df[df["metric"] == "speed"], ("seed", "step", "layer"))
    epochs = np.concatenate([[0], (at["step"] + 1) * config["record_every"]])
    return epochs, np.concatenate([init[:, None, :], cube], axis=1)


def curve(df: pd.DataFrame, metric: str, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` of a per-record metric, values ``(seeds, R)``."""
    values, at = gf.sweep.to_arrays(df[df["metric"] == metric], ("seed", "step"))
    return (at["step"] + 1) * config["record_every"], values


def summary(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Statistics of the hidden-layer initial speeds over seeds.

    ``mean``, ``sd``, ``median`` ``(H,)``; ``ratio`` ``(seeds, H - 1)`` of consecutive layers
    (layer ``l + 1`` over layer ``l``); ``increasing`` ``(seeds,)`` bool, the speeds strictly
    increase toward the output in that seed.
    """
    s = init_speeds(df)[:, : len(WIDTHS)]
    ratio = s[:, 1:] / s[:, :-1]
    return {
        "speeds": s,
        "mean": s.mean(0),
        "sd": s.std(0, ddof=1),
        "median": np.median(s, 0),
        "ratio": ratio,
        "increasing": np.all(ratio > 1, axis=1),
    }


# ------------------------------------------------------------------------------ figures, tables


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Speeds over training (headline) and the initial speeds next to Nielsen's MNIST draw."""
    df, config = load(results_dir)
    H = len(WIDTHS)
    epochs, cube = training_speeds(df, config)
    cube = gf.plotting.finite_or_raise(cube[:, :, :H], "hidden-layer speeds")
    colors = gf.plotting.layer_colors(H)
    out = []
    with gf.plotting.style():
        import matplotlib.pyplot as plt  # noqa: F401  (style() must be active first)

        fig, ax = gf.plotting.figure(width="column", aspect=0.72)
        for i in range(H):
            gf.plotting.band(
                ax, epochs, cube[:, :, i], color=colors[i], label=f"hidden layer {i + 1}"
            )
        ax.set_yscale("log")
        ax.set_xlim(epochs[0], epochs[-1])
        ax.set_xlabel("epoch")
        ax.set_ylabel(r"speed of learning $\|\partial C/\partial b_l\|$")
        ax.legend(loc="upper right", ncols=2, fontsize=6.5)
        ax.set_title(
            f"sigmoid [64, 30, 30, 30, 30, 10] on digits: median, 10–90% over "
            f"{cube.shape[0]} seeds",
            fontsize=7,
        )
        out += gf.plotting.savefig(fig, Path(figures_dir) / f"{NAME}_training")

        s = summary(df)
        fig, ax = gf.plotting.figure(width="column", aspect=0.62)
        layers = np.arange(1, H + 1)
        rng = np.random.default_rng(0)  # horizontal jitter of the seed dots only
        for i in range(H):
            jitter = rng.uniform(-0.12, 0.12, s["speeds"].shape[0])
            ax.plot(layers[i] - 0.18 + jitter, s["speeds"][:, i], ".", color=colors[i], ms=2.5,
                    alpha=0.6, zorder=2)  # fmt: skip
        ax.errorbar(layers - 0.18, s["mean"], yerr=s["sd"], fmt="o", color="k", ms=3.5,
                    capsize=2, lw=1, label=f"digits (64 inputs): mean ± sd, {len(s['speeds'])} "
                    "seeds", zorder=3)  # fmt: skip
        ax.plot(layers + 0.18, NIELSEN_MNIST_SPEEDS, "D", color=gf.plotting.COLORS[1], ms=4,
                label="Nielsen, MNIST (784 inputs): one draw", zorder=3)  # fmt: skip
        ax.set_yscale("log")
        ax.set_xticks(layers, [str(i) for i in layers])
        ax.set_xlabel("hidden layer $l$ (input side → output side)")
        ax.set_ylabel(r"$\|\partial C/\partial b_l\|$ at init")
        ax.legend(loc="upper left", fontsize=6.5)
        out += gf.plotting.savefig(fig, Path(figures_dir) / f"{NAME}_init")
    return out


_ORD = ("One", "Two", "Three", "Four", "Five", "Six")


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    """Initial speeds per hidden layer (mean, sd, median, ratio, Nielsen's MNIST value); macros."""
    df, config = load(results_dir)
    s = summary(df)
    H = len(WIDTHS)
    med_ratio = np.median(s["ratio"], axis=0)
    rows = []
    for i in range(H):
        rows.append([
            i + 1,
            s["mean"][i],
            s["sd"][i],
            s["median"][i],
            med_ratio[i - 1] if i > 0 else "--",
            NIELSEN_MNIST_SPEEDS[i],
        ])  # fmt: skip
    columns = [
        "hidden layer", "mean", "sd", "median", "median ratio to layer l-1", "Nielsen (MNIST)",
    ]  # fmt: skip
    out = [gf.experiment.latex_table(rows, columns, Path(tables_dir) / f"{NAME}.tex")]

    epochs, cube = training_speeds(df, config)
    final = np.median(cube[:, -1, :H], axis=0)
    _, acc = curve(df, "accuracy", config)
    _, test_acc = curve(df, "test_accuracy", config)
    p = "layerSpeed"
    macros = {f"{p}Seeds": int(s["speeds"].shape[0]), f"{p}Epochs": int(epochs[-1])}
    for i in range(H):
        macros[f"{p}InitMean{_ORD[i]}"] = s["mean"][i]
        macros[f"{p}InitSd{_ORD[i]}"] = s["sd"][i]
        macros[f"{p}Nielsen{_ORD[i]}"] = NIELSEN_MNIST_SPEEDS[i]
        macros[f"{p}Final{_ORD[i]}"] = final[i]
    macros[f"{p}RatioMedian"] = float(np.median(s["ratio"]))
    macros[f"{p}RatioMin"] = float(s["ratio"].min())
    macros[f"{p}LastOverFirst"] = float(np.median(s["speeds"][:, -1] / s["speeds"][:, 0]))
    macros[f"{p}FracIncreasing"] = float(s["increasing"].mean())
    macros[f"{p}TrainAcc"] = float(np.median(acc[:, -1]))
    macros[f"{p}TestAcc"] = float(np.median(test_acc[:, -1]))
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
    figures=(f"{NAME}_training", f"{NAME}_init"),
    order=2,
)
