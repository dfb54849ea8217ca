r"""variance_propagation: signal and gradient variance through depth, by activation and initializer.

Claims (seeds 002, 003; Glorot & Bengio 2010; He et al. 2015; Poole et al. 2016; Schoenholz et al.
2017):

1. In a deep net of equal widths :math:`N` with zero biases, the pre-activation variance
   :math:`q^l = \frac1N\sum_i (h^l_i)^2` and the backpropagated gradient variance
   :math:`\tilde q^l = \frac1N \sum_i (\partial C/\partial h^l_i)^2` change geometrically with
   depth at rates set by :math:`\sigma_w^2 = N\,\mathrm{Var}(W)` and the activation, as the
   mean-field maps of :mod:`gradflow.meanfield` predict: per layer, :math:`q^{l+1} =
   \sigma_w^2 E[\phi(\sqrt{q^l} z)^2]` forward and :math:`\tilde q^l = \tilde q^{l+1} \sigma_w^2
   E[\phi'(\sqrt{q^l} z)^2]` backward. :math:`N(0, 1)` weights (:math:`\sigma_w^2 = N`) explode;
   the old :math:`U[-1/\sqrt n, 1/\sqrt n]` heuristic (:math:`\sigma_w^2 = 1/3`) vanishes; Xavier
   and LeCun (:math:`\sigma_w^2 = 1`; the two coincide for equal widths) keep tanh near its critical
   point and halve ReLU's variance every layer; He (:math:`\sigma_w^2 = 2`) preserves ReLU's.
2. He et al. (2015, Fig. 3): a 30-layer ReLU net initialised with Xavier's variance stalls, while
   He's trains.

What it measures. Part 1: for every initializer, ``seeds`` networks of ``depth`` square
``width x width`` layers (weights drawn by the real :mod:`gradflow.initializers`, zero biases), fed
``batch`` Gaussian inputs of unit mean square; the same weights are run with each of the four
activations (a paired comparison). Forward :math:`h^1 = x W^1`, :math:`h^{l+1} = \phi(h^l)
W^{l+1}`; backward by the explicit recursion :math:`\delta^l = \phi'(h^l) \odot (\delta^{l+1}
W^{l+1\top})` with the closed-form :math:`\phi'` of :mod:`gradflow.activations`, from
:math:`\delta^L = g`, :math:`g \sim N(0, I)` (the cost :math:`C = g\cdot h^L` of
:func:`gradflow.meanfield.measure_propagation`). In float64, so that 100 layers of
:math:`N(0, 1)` or :math:`U[\pm 1/\sqrt n]` weights neither overflow nor underflow. The theory
curve of each (activation, initializer) is :func:`gradflow.meanfield.propagate` at
:math:`\sigma_w^2 = N \cdot` :func:`gradflow.initializers.weight_variance`, :math:`\sigma_b^2 = 0`,
:math:`q^0 = 1`. Part 2: :func:`gradflow.training.train_fn` trains the 30-layer ReLU
:class:`gradflow.models.MLP` on standardised digits with SGD, Xavier vs He, over seeds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

import gradflow as gf

NAME = "variance_propagation"
CLAIM = (
    "Forward and backward variances change geometrically with depth at the mean-field rates set "
    "by N Var(W) and the activation (N(0,1) explodes, U[+-1/sqrt n] vanishes, He preserves ReLU's "
    "variance, Xavier/LeCun keep tanh near-critical); a 30-layer ReLU net with Xavier init stalls "
    "on digits while He init trains."
)
SOURCE = "seeds 002, 003; Glorot & Bengio 2010; He et al. 2015; Poole et al. 2016"

ACTIVATIONS: tuple[str, ...] = ("sigmoid", "tanh", "relu", "selu")
#: Initializers of part 1 (gradflow.initializers names) and their labels in figures and tables.
INITS: dict[str, str] = {
    "normal": r"$N(0,1)$",
    "fan_in_uniform": r"$U[\pm 1/\sqrt{n}]$",
    "xavier_uniform": "Xavier",
    "lecun_normal": "LeCun",
    "he_normal": "He",
    "orthogonal": "orthogonal",
}
#: Part 2 (He et al. 2015, Fig. 3): ``lecun_normal`` kernels times ``init_scale``: Var 1/n_in,
#: the "Xavier" of He et al. (Caffe's xavier filler; Glorot's 2/(n_in + n_out) on square layers),
#: and Var 2/n_in, He's.
TRAIN_SCALES: dict[float, str] = {1.0: "Xavier", float(np.sqrt(2.0)): "He"}
#: Seeds per compiled call of part 1 (bounds memory: the kernels of every initializer are held).
PROFILE_CHUNK = 5
LN10 = float(np.log(10.0))


@dataclasses.dataclass(frozen=True)
class VariancePropagationConfig(gf.experiment.Config):
    """Part 1: variance profiles through depth per initializer; part 2: Xavier vs He training."""

    width: int  # part 1: width N
    depth: int  # part 1: depth L
    batch: int  # part 1: inputs per network
    inits: tuple[str, ...]  # part 1: names of INITS
    seeds: int  # part 1: random networks
    train_depth: int  # part 2: ReLU layers
    train_width: int  # part 2: their width
    learning_rate: float  # part 2: SGD's step size
    steps: int  # part 2: SGD steps
    batch_size: int  # part 2: minibatch
    record_every: int  # part 2: steps between records
    train_seeds: int  # part 2: random draws per initializer

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("width", "depth", "batch", "seeds", "train_depth", "train_width", "steps",
                    "batch_size", "record_every", "train_seeds"):  # fmt: skip
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be a positive int, got {getattr(self, key)!r}")
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2, got {self.depth}")
        bad = [i for i in self.inits if i not in INITS]
        if bad or not self.inits:
            raise ValueError(
                f"inits must be a non-empty subset of {list(INITS)}, got {bad or '[]'}"
            )
        if self.steps % self.record_every:
            raise ValueError(
                f"steps ({self.steps}) must be a multiple of record_every ({self.record_every})"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")


FULL = VariancePropagationConfig(
    width=128,
    depth=100,
    batch=16,
    inits=tuple(INITS),
    seeds=10,
    train_depth=30,
    train_width=64,
    learning_rate=0.01,
    steps=800,
    batch_size=64,
    record_every=40,
    train_seeds=8,
)
QUICK = dataclasses.replace(
    FULL, width=64, batch=8, seeds=5, steps=200, record_every=20, train_seeds=5
)


def sw2_of(init: str, width: int) -> float:
    r""":math:`\sigma_w^2 = N\,\mathrm{Var}(W)` of a square ``width x width`` layer."""
    return width * gf.initializers.weight_variance(init, width, width)


# ------------------------------------------------------------------------------------- part 1


def measure(activation, x, g, ws) -> tuple[jax.Array, jax.Array]:
    r"""Measured :math:`(q^l, \tilde q^l)`, ``l = 1..depth``, of one network.

    Forward :math:`h^1 = x W^1`, :math:`h^{l+1} = \phi(h^l) W^{l+1}`; backward
    :math:`\delta^L = g`, :math:`\delta^l = \phi'(h^l) \odot (\delta^{l+1} W^{l+1\top})` with
    the closed-form :math:`\phi'` (``activation.grad``), i.e. :math:`\delta^l = \partial C/\partial
    h^l` for :math:`C = \sum_b g_b \cdot h^L_b`. :math:`q^l` and :math:`\tilde q^l` are the mean
    squares of :math:`h^l` and :math:`\delta^l` over the batch and the units.

    Args:
      activation: a :class:`gradflow.activations.Activation`.
      x: inputs ``(batch, width)``; g: ``(batch, width)``; ws: kernels ``(depth, width, width)``.

    Returns:
      ``(q, grad_var)``, each ``(depth,)``.
    """

    def fwd(h, w):
        h = activation.fn(h) @ w
        return h, h

    h1 = x @ ws[0]
    _, hs = jax.lax.scan(fwd, h1, ws[1:])
    hs = jnp.concatenate([h1[None], hs])  # (depth, batch, width): h^1 .. h^L

    def bwd(delta, inputs):
        h, w_next = inputs
        delta = activation.grad(h) * (delta @ w_next.T)
        return delta, delta

    _, deltas = jax.lax.scan(bwd, g, (hs[:-1], ws[1:]), reverse=True)
    deltas = jnp.concatenate([deltas, g[None]])
    return jnp.mean(hs**2, axis=(1, 2)), jnp.mean(deltas**2, axis=(1, 2))


def _profile_fn(config: VariancePropagationConfig):
    acts = [gf.activations.get(a) for a in ACTIVATIONS]
    inits = [gf.initializers.get(i) for i in config.inits]
    width, depth, batch = config.width, config.depth, config.batch

    def fn(hparams, key):
        del hparams  # width and depth are static grid entries, read from config
        k_x, k_w, k_g = jax.random.split(key, 3)
        x = jax.random.normal(k_x, (batch, width), jnp.float64)
        x = x / jnp.sqrt(jnp.mean(x**2))  # q^0 = 1 exactly
        g = jax.random.normal(k_g, (batch, width), jnp.float64)
        layer_keys = jax.random.split(k_w, depth)
        # every initializer from the same layer keys: (inits, depth, width, width)
        ws = jnp.stack([
            jax.vmap(lambda k, init=init: init(k, (width, width), jnp.float64))(layer_keys)
            for init in inits
        ])  # fmt: skip
        q, gv = [], []
        for act in acts:  # the same weights under each activation: a paired comparison
            qa, ga = jax.vmap(lambda w, act=act: measure(act, x, g, w))(ws)
            q.append(qa)
            gv.append(ga)
        return {"q": jnp.stack(q), "grad_var": jnp.stack(gv)}  # (activations, inits, depth)

    return fn


def _theory(config: VariancePropagationConfig) -> dict:
    """Mean-field q^l and grad-var^l for every (activation, initializer), float64."""
    out = {}
    inits = config.inits
    sw2 = np.array([sw2_of(i, config.width) for i in inits])
    with jax.enable_x64(True):
        for a in ACTIVATIONS:
            p = gf.meanfield.propagate(jnp.asarray(sw2), 0.0, a, config.depth, q0=1.0)
            for j, i in enumerate(inits):
                out[f"{a}/{i}"] = {
                    "sw2": float(sw2[j]),
                    "q": np.asarray(p.q[j], float).tolist(),
                    "grad_var": np.asarray(p.grad_var[j], float).tolist(),
                }
    return out


# ------------------------------------------------------------------------------------- part 2


def _train_fn(config: VariancePropagationConfig):
    data = gf.data.load_digits(scale="standardize")
    net = gf.models.MLP(
        widths=(config.train_width,) * config.train_depth, out=10, activation="relu",
        kernel_init="lecun_normal", bias_init="zeros",
    )  # fmt: skip
    cfg = gf.training.TrainConfig(
        model=net,
        optimizer="sgd",
        loss="softmax_cross_entropy",
        steps=config.steps,
        batch_size=config.batch_size,
        record_every=config.record_every,
    )
    train = gf.training.train_fn(cfg, data)
    keep = ("loss", "test_loss", "test_accuracy", "grad_norm", "diverged_step")

    def fn(hparams, key):
        # init_scale multiplies every kernel: 1 -> Var 1/n_in ("Xavier" of He et al.), sqrt(2)
        # -> Var 2/n_in (He), on every layer, the readout included.
        rec = train(hparams, key)
        return {k: rec[k] for k in keep}

    return fn


def run(config: VariancePropagationConfig, results_dir: Path) -> None:
    """Part 1 (depth profiles, one program vmapped over seeds) and part 2 (Xavier vs He)."""
    results_dir = Path(results_dir)
    # Small LAPACK calls (the QR of the orthogonal initializer) are far faster single-threaded
    # than with OpenBLAS threads competing for two cores.
    with threadpool_limits(limits=1, user_api="blas"):
        with jax.enable_x64(True):
            gf.sweep.run(
                _profile_fn(config),
                grid={"width": [config.width], "depth": [config.depth]},
                seeds=range(config.seeds),
                static=("width", "depth"),
                workdir=results_dir / "profiles",
                chunk_size=PROFILE_CHUNK,
                axes={
                    "q": ("activation", "init", "layer"),
                    "grad_var": ("activation", "init", "layer"),
                },
                name=f"{NAME}/profiles",
                config={**config.to_dict(), "activations": list(ACTIVATIONS)},
            )
        theory = {
            "activations": list(ACTIVATIONS),
            "inits": list(config.inits),
            "curves": _theory(config),
        }
        gf.experiment.write_atomic(results_dir / "theory.json", json.dumps(theory))
        gf.sweep.run(
            _train_fn(config),
            grid={"learning_rate": [config.learning_rate], "init_scale": list(TRAIN_SCALES)},
            seeds=range(config.train_seeds),
            workdir=results_dir / "train",
            axes={
                "loss": ("step",),
                "test_loss": ("step",),
                "test_accuracy": ("step",),
                "grad_norm": ("step", "layer"),
            },
            name=f"{NAME}/train",
            config=config.to_dict(),
        )


# ------------------------------------------------------------------------------ reading results


def load_profiles(results_dir: Path) -> tuple[pd.DataFrame, dict, dict]:
    """``(df, theory, config)``: measured rows with activation names, theory curves, config."""
    results_dir = Path(results_dir)
    df = gf.sweep.load(results_dir / "profiles")
    config = gf.experiment.stored_config(results_dir / "profiles")
    theory = json.loads((results_dir / "theory.json").read_text())
    if df["diverged"].any():
        raise ValueError("variance_propagation: non-finite variances (float64 should hold them)")
    acts, inits = np.asarray(theory["activations"]), np.asarray(theory["inits"])
    df = df.assign(
        activation=acts[df["activation"].to_numpy(int)], init=inits[df["init"].to_numpy(int)]
    )
    return df, theory["curves"], config


def profile(df: pd.DataFrame, activation: str, init: str, metric: str) -> np.ndarray:
    """``(seeds, depth)`` of ``q`` or ``grad_var`` for one (activation, initializer)."""
    sub = df[(df["activation"] == activation) & (df["init"] == init) & (df["metric"] == metric)]
    return gf.sweep.to_arrays(sub, ("seed", "layer"))[0]


def log_rate(values: np.ndarray, *, forward: bool) -> np.ndarray:
    """Per-seed mean log10 change per layer over the last half of the depth (forward) or the
    first half (backward: gradients flow from the last layer to the first)."""
    logv = np.log10(values)
    d = logv.shape[-1]
    part = logv[..., d // 2 :] if forward else logv[..., : d // 2 + 1]
    return (part[..., -1] - part[..., 0]) / (part.shape[-1] - 1)


def load_training(results_dir: Path) -> tuple[pd.DataFrame, dict]:
    """Part 2: the table (with a column ``init``: "Xavier" / "He") and the run's config."""
    workdir = Path(results_dir) / "train"
    df = gf.sweep.load(workdir)
    config = gf.experiment.stored_config(workdir)
    scales = np.array(list(TRAIN_SCALES))
    labels = np.array(list(TRAIN_SCALES.values()))
    nearest = np.abs(df["init_scale"].to_numpy(float)[:, None] - scales[None]).argmin(1)
    return df.assign(init=labels[nearest]), config


def training_curves(
    df: pd.DataFrame, config: dict, init: str, metric: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(steps (R,), values (seeds, R), diverged (seeds,))`` of one per-record metric."""
    df = df[df["init"] == init]
    sub = df[df["metric"] == metric]
    values, at = gf.sweep.to_arrays(sub, ("seed", "step"))
    div = df.groupby("seed")["diverged"].any().reindex(at["seed"]).to_numpy(bool)
    return (at["step"] + 1) * config["record_every"], values, div


# ------------------------------------------------------------------------------ figures, tables


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Depth profiles vs mean field (headline) and Xavier vs He training curves."""
    with gf.plotting.style():
        return [
            *_plot_depth(results_dir, Path(figures_dir) / f"{NAME}_depth"),
            *_plot_training(results_dir, Path(figures_dir) / f"{NAME}_xavier_he"),
        ]


#: The depth figure's y range (the profiles span decades; clipped bands stay inside).
_DEPTH_LIM = (1e-24, 1e24)
_MEAN_FIELD = {"color": "k", "lw": 0.7, "ls": (0, (2, 2))}


def _plot_depth(results_dir: Path, stem: Path) -> list[Path]:
    """Forward and backward variance profiles per activation, every initializer, mean field."""
    from matplotlib.lines import Line2D

    df, theory, config = load_profiles(results_dir)
    fig, axes = gf.plotting.figure(2, len(ACTIVATIONS), width="text", aspect=0.95,
                                   sharex=True, sharey=True)  # fmt: skip
    for col, a in enumerate(ACTIVATIONS):
        for row, metric in enumerate(("q", "grad_var")):
            _depth_panel(axes[row, col], df, theory, config, a, metric)
            if row == 0:
                axes[row, col].set_title(a)
            else:
                axes[row, col].set_xlabel("layer $l$")
    axes[0, 0].set_ylabel(r"forward $q^l = \overline{(h^l_i)^2}$")
    axes[1, 0].set_ylabel(r"backward $\overline{(\partial C/\partial h^l_i)^2}$")
    for ax in axes.ravel():
        ax.set_yticks([1e-20, 1e-10, 1e0, 1e10, 1e20])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    handles.append(Line2D([], [], **_MEAN_FIELD))
    labels.append("mean field")
    fig.legend(handles, labels, loc="outside upper center", ncols=4,
               title=f"width {config['width']}, zero biases: median and 10–90% over "
               f"{config['seeds']} seeds; Xavier, LeCun and orthogonal share "
               r"$\sigma_w^2 = 1$ and overlap", title_fontsize=7)  # fmt: skip
    return gf.plotting.savefig(fig, stem)


_INIT_COLORS = dict(zip(INITS, [gf.plotting.COLORS[k] for k in (0, 1, 5, 3, 4, 2)]))


def _depth_panel(ax, df, theory: dict, config: dict, a: str, metric: str) -> None:
    """``metric`` of activation ``a`` through depth: every initializer and its mean field."""
    layers = np.arange(1, config["depth"] + 1)
    for i in config["inits"]:
        v = gf.plotting.finite_or_raise(profile(df, a, i, metric), f"{a}/{i} {metric}")
        sw2 = theory[f"{a}/{i}"]["sw2"]
        gf.plotting.band(ax, layers, v, color=_INIT_COLORS[i], clip=_DEPTH_LIM, lw=1.2,
                         label=rf"{INITS[i]} ($\sigma_w^2 = {sw2:.3g}$)")  # fmt: skip
        ax.plot(layers, np.asarray(theory[f"{a}/{i}"][metric]), **_MEAN_FIELD)
    ax.set_yscale("log")
    ax.set_ylim(*_DEPTH_LIM)
    ax.set_xlim(1, config["depth"])


_TRAIN_COLORS = {"Xavier": gf.plotting.COLORS[0], "He": gf.plotting.COLORS[1]}
_TRAIN_LABELS = {"Xavier": r"Xavier, Var $1/n_\mathrm{in}$", "He": r"He, Var $2/n_\mathrm{in}$"}


def _plot_training(results_dir: Path, stem: Path) -> list[Path]:
    """Part 2: training loss and test accuracy of the ReLU MLP, Xavier vs He."""
    tdf, tcfg = load_training(results_dir)
    fig, axes = gf.plotting.figure(1, 2, width="column", aspect=1.05)
    for ax, metric, ylabel in (
        (axes[0], "loss", "training loss"),
        (axes[1], "test_accuracy", "test accuracy"),
    ):
        for i in TRAIN_SCALES.values():
            label = _TRAIN_LABELS[i]
            steps, v, div = training_curves(tdf, tcfg, i, metric)
            if div.any():  # marked, not silently dropped
                label = f"{label} ({int(div.sum())} diverged, not shown)"
            v = gf.plotting.finite_or_raise(v[~div], f"{i} {metric}")
            gf.plotting.band(ax, steps, v, color=_TRAIN_COLORS[i], label=label)
        ax.set_xlabel("SGD step")
        ax.set_ylabel(ylabel)
    axes[0].axhline(LN10, **_MEAN_FIELD)
    axes[0].annotate(r"$\ln 10$ (chance)", xy=(0.98, LN10), xycoords=("axes fraction", "data"),
                     ha="right", va="bottom", fontsize=6.5)  # fmt: skip
    axes[1].axhline(0.1, **_MEAN_FIELD)
    axes[1].set_ylim(0, 1)
    axes[0].set_ylim(0, None)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=2,
               title=f"{tcfg['train_depth']}-layer ReLU MLP, width {tcfg['train_width']}, "
               f"SGD: median, 10–90% over {tdf['seed'].nunique()} seeds",
               title_fontsize=6.5)  # fmt: skip
    return gf.plotting.savefig(fig, stem)


_CAMEL = {
    "sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "selu": "Selu",
    "normal": "Normal", "fan_in_uniform": "FanInUniform", "xavier_uniform": "Xavier",
    "lecun_normal": "Lecun", "he_normal": "He", "orthogonal": "Orthogonal",
    "Xavier": "Xavier", "He": "He",
}  # fmt: skip


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    """Per-layer log10 rates (measured vs mean field) and the training outcome; macros."""
    df, theory, config = load_profiles(results_dir)
    rows = []
    macros = {}
    p = "varianceProp"
    for a in ACTIVATIONS:
        for i in config["inits"]:
            th = theory[f"{a}/{i}"]
            q, gv = profile(df, a, i, "q"), profile(df, a, i, "grad_var")
            fq = np.median(log_rate(q, forward=True))
            bq = np.median(log_rate(gv, forward=False))
            tq = float(log_rate(np.asarray(th["q"]), forward=True))
            tg = float(log_rate(np.asarray(th["grad_var"]), forward=False))
            rows.append([a, INITS[i], th["sw2"], fq, tq, bq, tg])
            macros[f"{p}Fwd{_CAMEL[a]}{_CAMEL[i]}"] = fq
            macros[f"{p}Bwd{_CAMEL[a]}{_CAMEL[i]}"] = bq
    columns = [
        "activation", "init", r"$\sigma_w^2$", "fwd rate (meas.)", "fwd rate (MF)",
        "bwd rate (meas.)", "bwd rate (MF)",
    ]  # fmt: skip
    out = [gf.experiment.latex_table(rows, columns, Path(tables_dir) / f"{NAME}.tex")]
    tdf, tcfg = load_training(results_dir)
    for i in TRAIN_SCALES.values():
        _, loss, div = training_curves(tdf, tcfg, i, "loss")
        _, acc, _ = training_curves(tdf, tcfg, i, "test_accuracy")
        macros[f"{p}Final{_CAMEL[i]}Loss"] = float(np.median(loss[~div, -1]))
        macros[f"{p}Final{_CAMEL[i]}Acc"] = float(np.mean(acc[~div, -1]))
        macros[f"{p}Final{_CAMEL[i]}AccSd"] = float(np.std(acc[~div, -1], ddof=1))
        macros[f"{p}Diverged{_CAMEL[i]}"] = int(div.sum())
    macros[f"{p}Width"] = int(config["width"])
    macros[f"{p}Depth"] = int(config["depth"])
    macros[f"{p}Seeds"] = int(config["seeds"])
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
    figures=(f"{NAME}_depth", f"{NAME}_xavier_he"),
    order=4,
)
