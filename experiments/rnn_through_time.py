r"""rnn_through_time: gradients through time in a vanilla tanh RNN across :math:`\lambda_1(U)`, an
LSTM, and gradient clipping on the adding problem.

Claim (seed 001; Pascanu, Mikolov & Bengio 2013; Hochreiter & Schmidhuber 1997). For a vanilla RNN
:math:`h_t = \phi(x_t W + h_{t-1} U + b)` with the loss on the last output only,

.. math::

    \frac{\partial C}{\partial h_t} = \Big(\prod_{i=t+1}^{T} U\,\mathrm{diag}\,\phi'(z_i)\Big)
    \frac{\partial C}{\partial h_T}, \qquad
    \Big\|\frac{\partial C}{\partial h_t}\Big\| \le (\gamma\,\lambda_1)^{T-t}
    \Big\|\frac{\partial C}{\partial h_T}\Big\|,

with :math:`\gamma = \sup|\phi'|` (1 for tanh, from :mod:`gradflow.activations`) and
:math:`\lambda_1` the **largest singular value** of the recurrent matrix :math:`U` (Pascanu et
al.'s :math:`\lambda_1`: :math:`\lambda_1 < 1/\gamma` is sufficient for vanishing gradients,
:math:`\lambda_1 > 1/\gamma` necessary for exploding ones). Here :math:`U = g\,Q` with :math:`Q`
a Haar-random orthogonal matrix, so *every* singular value of :math:`U` is :math:`g` and its
spectral radius is :math:`g` too: :math:`\lambda_1 = g` in both senses, and :math:`g` is a
shape-preserving hyperparameter that :func:`gradflow.sweep.run` vmaps together with the seeds.
We measure (a) :math:`\|\partial C/\partial h_t\|` for every :math:`t` with
:func:`gradflow.probes.probe_rnn` at initialisation for :math:`\lambda_1 \in \{0.5, 0.9, 1.0,
1.1, 1.5, 3\}`, and its per-step factor with :func:`gradflow.probes.time_decay_rate` against the
bound :math:`\gamma\lambda_1`; (b) the same for an LSTM (recurrent kernels orthogonal, gain 1: the
same :math:`U` as the vanilla :math:`\lambda_1 = 1`), whose additive cell path
:math:`\partial c_t/\partial c_{t-1} = \mathrm{diag}(f_t)` carries the gradient: with forget-gate
bias :math:`\beta`, :math:`f \approx \sigma(\beta)` at initialisation (:math:`\beta = 1`, the
modern default of Jozefowicz et al. 2015; :math:`\beta = 5`, :math:`f \approx 0.993`, close to
the constant error carousel :math:`f = 1` of Hochreiter & Schmidhuber 1997); (c) a vanilla tanh
RNN trained on the adding problem (:func:`gradflow.data.adding_problem`) by SGD at a large learning
rate, with and without global-norm clipping (:func:`gradflow.optim.clip_by_global_norm`, the rule
of Pascanu et al. 2013).

What the saved results show (quick and full configs): the bound holds in every run and at every
step; the gradient vanishes geometrically for :math:`\lambda_1 \le 1` (also at 1, since
:math:`\tanh' < 1` away from 0) and still for :math:`\lambda_1 = 1.1`; at 1.5 it stays of order
one (per-step factor :math:`\approx 1`: the saturating :math:`\tanh'` cancels the gain), and at 3
it explodes (factor :math:`\approx 1.3`). :math:`\lambda_1 > 1` is necessary for growth, not
sufficient, as Pascanu et al. state; the bound :math:`(\gamma\lambda_1)^{T-t}` is far from tight
above 1. The LSTM's per-step factor (0.89--0.91 with :math:`\beta = 1`, :math:`\approx 1` with
:math:`\beta = 5`) is much closer to 1 than the vanilla one at the same :math:`U`. Without clipping
almost every SGD run at :math:`\eta = 0.3` diverges within about ten steps (in a spot check of
three seeds the first update alone took :math:`\lambda_1(U)` from 1 to 2.5--4.4, and the gradients
then exploded through time); clipped at
:math:`\|g\| \le 1`, none does, clipping acts mostly in the first few steps, and the nets learn
beyond the recent-number-only loss. The few unclipped runs that survive reach a similar loss.

Inputs of the probe are a fixed batch of adding-problem sequences (the same for every seed and
:math:`\lambda_1`; the seeds draw the weights), the loss the squared error of the last output.
The adding problem's two reference losses are :math:`1/6` (predicting the constant 1, its mean)
and :math:`1/12` (using only the recent, second marked number: :math:`E[y \mid v_2] = v_2 + 1/2`
leaves :math:`\mathrm{Var}(v_1) = 1/12`); a loss below :math:`1/12` means the net carries
information across at least :math:`T/2` steps. A run *diverges* when its loss is non-finite or a
minibatch loss exceeds ``max_loss`` (:class:`gradflow.training.TrainConfig`).

Numerics. The probe's norm :math:`\|\cdot\|_2` squares the entries, and float32 on CPU flushes
results below :math:`2^{-126} \approx 1.2\times10^{-38}` to zero, so a gradient norm below about
:math:`10^{-17}` reads as exactly 0 (only :math:`\lambda_1 = 0.5` at :math:`T = 100`); such steps
are left out of the rate fit (:func:`gradflow.probes.time_decay_rate`) and marked in the figure,
never plotted as NaN. The bound is saved in log10, so :math:`3^{99}` does not overflow.

Workaround (jaxlib 0.10, CPU). A program that runs several *batched* LAPACK QR decompositions side
by side (the LSTM's four orthogonal recurrent kernels from ``RNN.init`` under ``vmap``) can
deadlock XLA's CPU thread pool: each QR blocks a worker in ``ParallelBatchMap`` waiting for
sub-tasks that only the other, equally blocked, worker would run. :func:`init_params` therefore
builds the parameters itself: one Gaussian draw, one batched QR for all recurrent kernels
(:func:`haar_orthogonal`). This also keeps compilation short (every random call costs about half
a second of XLA compile time on CPU).

Sweeps (:func:`gradflow.sweep.run`, seeds vmapped): ``vanilla`` (``lambda1`` batched), ``lstm``
(``forget_bias`` batched), ``adding`` (:func:`gradflow.training.train_fn`, ``learning_rate`` and
``clip`` batched; ``clip = inf`` never clips). ``theory.json`` holds :math:`\gamma`, the bound
rates, :math:`\sigma(\beta)` and the reference losses; the per-run bound curve is in the
``vanilla`` store (``log10_bound``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import gradflow as gf

NAME = "rnn_through_time"
CLAIM = (
    "In a vanilla tanh RNN, ||dC/dh_t|| shrinks back in time by a per-step factor below the bound "
    "gamma * lambda_1 (gamma = sup|tanh'| = 1, lambda_1 the largest singular value of the "
    "recurrent matrix), so it vanishes geometrically for lambda_1 <= 1 and can grow only for "
    "lambda_1 > 1; an LSTM's additive cell path decays far more slowly; on the adding problem, SGD "
    "at a large learning rate diverges without gradient clipping and trains with it."
)
SOURCE = "seed 001; Pascanu, Mikolov & Bengio 2013; Hochreiter & Schmidhuber 1997"

ACTIVATION = "tanh"
#: Reference losses of the adding problem: predict the constant 1 (1/6), use only the recent
#: marked number (1/12); see the module docstring.
CONSTANT_LOSS = 1.0 / 6.0
RECENT_ONLY_LOSS = 1.0 / 12.0
#: Key of the adding-problem sequences (training set and probe inputs).
DATA_KEY = 20130101


@dataclasses.dataclass(frozen=True)
class RnnThroughTimeConfig(gf.experiment.Config):
    """(a, b) the probe through time at initialisation; (c) the adding problem, clipped or not."""

    seeds: int  # random draws
    hidden: int  # hidden width
    length: int  # the probe's sequence length T
    probe_batch: int  # sequences per probe
    lambda1: tuple[float, ...]  # largest singular value of the vanilla RNN's recurrent weights
    forget_bias: tuple[float, ...]  # the LSTM's forget-gate biases
    adding_length: int  # the adding problem's sequence length
    adding_train: int  # its training set size
    adding_steps: int  # SGD steps
    adding_batch: int  # minibatch
    learning_rate: float  # step size
    clip: float  # global-norm clip threshold
    record_every: int  # steps between records
    max_loss: float  # a loss above it counts as divergence
    adding_lambda1: float  # lambda1 of the adding problem's recurrent init

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, lo in (
            ("seeds", 2), ("hidden", 1), ("length", 2), ("probe_batch", 1), ("adding_length", 2),
            ("adding_train", 1), ("adding_steps", 1), ("adding_batch", 1), ("record_every", 1),
        ):  # fmt: skip
            if getattr(self, key) < lo:
                raise ValueError(f"{key} must be an int >= {lo}, got {getattr(self, key)!r}")
        for key in ("lambda1", "forget_bias"):
            v = getattr(self, key)
            if not v or not all(math.isfinite(x) for x in v):
                raise ValueError(f"{key} must be a non-empty tuple of finite numbers, got {v!r}")
        if min(self.lambda1) <= 0:
            raise ValueError(f"lambda1 values must be positive, got {self.lambda1!r}")
        for key in ("learning_rate", "clip", "max_loss", "adding_lambda1"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{key} must be a positive finite number, got {v!r}")
        if self.adding_steps % self.record_every:
            raise ValueError(
                f"adding_steps ({self.adding_steps}) must be a multiple of record_every "
                f"({self.record_every})"
            )
        if self.adding_batch > self.adding_train:
            raise ValueError(
                f"adding_batch ({self.adding_batch}) exceeds adding_train ({self.adding_train})"
            )


FULL = RnnThroughTimeConfig(
    seeds=16,
    hidden=32,
    length=100,
    probe_batch=128,
    lambda1=(0.5, 0.9, 1.0, 1.1, 1.5, 3.0),
    forget_bias=(1.0, 5.0),
    adding_length=50,
    adding_train=512,
    adding_steps=600,
    adding_batch=32,
    learning_rate=0.3,
    clip=1.0,
    record_every=10,
    max_loss=10.0,
    adding_lambda1=1.0,
)
QUICK = dataclasses.replace(
    FULL,
    seeds=8,
    length=30,
    probe_batch=64,
    adding_length=30,
    adding_train=256,
    adding_steps=100,
    record_every=5,
)

_CLIP_KEY = "optim/clip_by_global_norm"
_ADDING_METRICS = (
    "loss", "batch_loss", f"{_CLIP_KEY}/clipped", f"{_CLIP_KEY}/global_norm",
    "param_norm",
)  # fmt: skip


# ------------------------------------------------------------------------------------ models


def recurrent_paths(cell: str) -> tuple[str, ...]:
    """Names of the recurrent Dense layers under ``params["rnn"]["cell"]`` of a
    :class:`gradflow.models.RNN`: ``"h"`` (:math:`U`) of the vanilla cell, ``"hi", "hf", "hg",
    "ho"`` (:math:`U_{i,f,g,o}`) of the LSTM."""
    if cell not in gf.models.CELLS:
        raise ValueError(f"unknown cell {cell!r}; valid: {', '.join(gf.models.CELLS)}")
    return ("h",) if cell == "vanilla" else ("hi", "hf", "hg", "ho")


def model(cell: str, hidden: int) -> gf.models.RNN:
    """The probed net: tanh cell, linear readout of :math:`h_T` (parameters from
    :func:`init_params`)."""
    return gf.models.RNN(hidden, 1, cell=cell, activation=ACTIVATION, forget_bias=0.0)


def haar_orthogonal(z: jax.Array) -> jax.Array:
    r"""Haar-random orthogonal matrices from i.i.d. :math:`N(0, 1)` blocks ``z`` ``(..., n, n)``:
    :math:`Q` of :math:`z = QR` with the signs of :math:`\mathrm{diag}\,R` moved into :math:`Q`
    (Mezzadri 2007), what ``jax.nn.initializers.orthogonal`` does after its own draw. One batched
    QR for all blocks (see the module docstring)."""
    q, r = jnp.linalg.qr(z)
    return q * jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))[..., None, :]


def init_params(cell: str, net: gf.models.RNN, x, key, lambda1, forget_bias=0.0) -> dict:
    r"""Parameters of ``net`` for inputs like ``x``, from ONE Gaussian draw.

    Every recurrent kernel is :math:`\lambda_1 Q` with :math:`Q` Haar orthogonal
    (:func:`haar_orthogonal`: all singular values of the kernel are :math:`\lambda_1`, and so is
    its spectral radius); every other kernel (input, readout) is lecun-normal,
    :math:`N(0, 1/\text{fan}_\text{in})` (variance from
    :func:`gradflow.initializers.weight_variance`), the default of :class:`gradflow.models.RNN`;
    biases are zero except the LSTM forget gate's, :math:`\beta` (the same net as
    ``RNN(forget_bias=beta)``). The structure comes from :func:`jax.eval_shape` of ``net.init``.
    Traceable (vmap) in ``key``, ``lambda1`` and ``forget_bias``. One random call and one batched
    QR instead of one per kernel in ``net.init`` keep compilation short (each random call costs
    about 0.5 s of XLA compile time on CPU) and avoid the QR deadlock of the module docstring.
    """
    shapes = jax.eval_shape(lambda k: net.init(k, x[:1])["params"], jax.random.key(0))
    recurrent = recurrent_paths(cell)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    names = [tuple(str(getattr(p, "key", p)) for p in path) for path, _ in flat]
    kernels = [(n, s.shape) for n, (_, s) in zip(names, flat, strict=True) if n[-1] == "kernel"]
    z = jax.random.normal(key, (sum(math.prod(shape) for _, shape in kernels),), jnp.float32)
    values, blocks, offset = {}, [], 0
    for n, shape in kernels:
        size = math.prod(shape)
        block = z[offset : offset + size].reshape(shape)
        offset += size
        if n[-2] in recurrent:
            blocks.append((n, block))
        else:
            values[n] = math.sqrt(gf.initializers.weight_variance("lecun_normal", *shape)) * block
    qs = haar_orthogonal(jnp.stack([b for _, b in blocks]))
    for (n, _), q in zip(blocks, qs, strict=True):
        values[n] = lambda1 * q
    if cell == "lstm":
        values[("rnn", "cell", "hf", "bias")] = jnp.full((net.hidden,), forget_bias, jnp.float32)
    leaves = [
        values.get(n, jnp.zeros(s.shape, s.dtype)) for n, (_, s) in zip(names, flat, strict=True)
    ]
    return jax.tree.unflatten(treedef, leaves)


def adding_data(config: RnnThroughTimeConfig) -> tuple[jax.Array, jax.Array]:
    """The adding-problem training set: ``adding_train`` sequences of length ``adding_length``."""
    n, length = config.adding_train, config.adding_length
    return gf.data.adding_problem(jax.random.key(DATA_KEY), n, length)


def probe_data(config: RnnThroughTimeConfig) -> tuple[jax.Array, jax.Array]:
    r"""The probe's inputs: a fixed batch of ``probe_batch`` adding-problem sequences of length
    ``length``, the same for every seed and every :math:`\lambda_1` (the seeds draw the weights).
    When the lengths agree these are the first sequences of :func:`adding_data` (one data
    program to compile instead of two)."""
    n, length = config.probe_batch, config.length
    if length == config.adding_length and n <= config.adding_train:
        x, y = adding_data(config)
        return x[:n], y[:n]
    return gf.data.adding_problem(jax.random.fold_in(jax.random.key(DATA_KEY), 1), n, length)


def _probe_fn(cell: str, config: RnnThroughTimeConfig):
    net = model(cell, config.hidden)
    gamma = gf.activations.get(ACTIVATION).sup_grad
    length = config.length
    x, y = probe_data(config)

    def fn(hparams, key):
        lam = hparams.get("lambda1", 1.0)
        params = init_params(cell, net, x, key, lam, hparams.get("forget_bias", 0.0))
        rep = gf.probes.probe_rnn(net, {"params": params}, x, y, "mse")
        g = rep.hidden_grad_norm  # (T,), t = 1..T
        out = {
            "grad_norm": g,
            "hidden_norm": rep.hidden_norm,
            "rate": gf.probes.time_decay_rate(g),
            "loss": rep.loss,
        }
        if cell == "vanilla":  # Pascanu et al.'s bound, anchored at the last step, log10
            lag = jnp.arange(length - 1, -1, -1, dtype=g.dtype)
            out["log10_bound"] = jnp.log10(g[-1]) + lag * jnp.log10(gamma * lam)
        return out

    return fn


def _adding_fn(config: RnnThroughTimeConfig):
    net = gf.models.RNN(
        config.hidden, 1, cell="vanilla", activation=ACTIVATION,
        recurrent_init=gf.initializers.get("orthogonal", gain=config.adding_lambda1),
    )  # fmt: skip
    data = adding_data(config)
    train_cfg = gf.training.TrainConfig(
        model=net,
        optimizer="sgd",  # hparams learning_rate and clip: clip_by_global_norm(clip) -> sgd
        loss="mse",
        steps=config.adding_steps,
        batch_size=config.adding_batch,
        record_every=config.record_every,
        max_loss=config.max_loss,
    )
    train = gf.training.train_fn(train_cfg, data)

    def fn(hparams, key):
        rec = train(hparams, key)
        return {**{k: rec[k] for k in _ADDING_METRICS}, "diverged_step": rec["diverged_step"]}

    return fn, train_cfg


# ------------------------------------------------------------------------------------ run


def run(config: RnnThroughTimeConfig, results_dir: Path) -> None:
    """Three sweeps (vanilla over lambda1, LSTM over forget-gate bias, adding problem with and
    without clipping) and the theory overlay (``theory.json``)."""
    results_dir = Path(results_dir)
    seeds = range(config.seeds)
    time_axes = {"grad_norm": ("time",), "hidden_norm": ("time",), "log10_bound": ("time",),
                 "rate": (), "loss": ()}  # fmt: skip
    gf.sweep.run(
        _probe_fn("vanilla", config),
        grid={"lambda1": [float(v) for v in config.lambda1]},
        seeds=seeds,
        workdir=results_dir / "vanilla",
        axes=time_axes,
        name=f"{NAME}/vanilla",
        config=config.to_dict(),
    )
    lstm_axes = {k: v for k, v in time_axes.items() if k != "log10_bound"}
    gf.sweep.run(
        _probe_fn("lstm", config),
        grid={"forget_bias": [float(v) for v in config.forget_bias]},
        seeds=seeds,
        workdir=results_dir / "lstm",
        axes=lstm_axes,
        name=f"{NAME}/lstm",
        config=config.to_dict(),
    )
    fn, train_cfg = _adding_fn(config)
    example = {"learning_rate": config.learning_rate, "clip": config.clip}
    gf.sweep.run(
        fn,
        grid={
            "learning_rate": [float(config.learning_rate)],
            "clip": [math.inf, float(config.clip)],  # inf: never clips
        },
        seeds=seeds,
        workdir=results_dir / "adding",
        axes=gf.training.sweep_axes(fn, example),
        name=f"{NAME}/adding",
        config=config.to_dict(),
    )
    gamma = gf.activations.get(ACTIVATION).sup_grad
    theory = {
        "activation": ACTIVATION,
        "gamma": gamma,
        "lambda1": [float(v) for v in config.lambda1],
        "bound_rate": [gamma * float(v) for v in config.lambda1],
        "lstm_forget_gate": [1.0 / (1.0 + math.exp(-b)) for b in config.forget_bias],
        "constant_loss": CONSTANT_LOSS,
        "recent_only_loss": RECENT_ONLY_LOSS,
        "record_steps": gf.training.record_steps(train_cfg).tolist(),
    }
    gf.experiment.write_atomic(results_dir / "theory.json", json.dumps(theory, indent=1))


# ------------------------------------------------------------------------------ reading results


def load(results_dir: Path) -> dict:
    """The three saved tables, the config and the theory."""
    results_dir = Path(results_dir)
    out = {k: gf.sweep.load(results_dir / k) for k in ("vanilla", "lstm", "adding")}
    out["config"] = gf.experiment.stored_config(results_dir / "vanilla")
    out["theory"] = json.loads((results_dir / "theory.json").read_text())
    for k in ("vanilla", "lstm"):
        if out[k]["diverged"].any():
            bad = out[k].loc[out[k]["diverged"], ["seed"]].drop_duplicates()["seed"].tolist()
            raise ValueError(f"{NAME}: the {k} probe is non-finite in seeds {bad}")
    return out


def curves(df: pd.DataFrame, key: str, metric: str = "grad_norm") -> tuple[np.ndarray, np.ndarray]:
    """``(values, cube)``: the grid values of ``key`` and ``cube`` ``(values, seeds, T)``."""
    cube, at = gf.sweep.to_arrays(df[df["metric"] == metric], (key, "seed", "time"))
    return at[key], cube


def scalars(df: pd.DataFrame, key: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values, table)``: a scalar metric ``(values, seeds)``."""
    table, at = gf.sweep.to_arrays(df[df["metric"] == metric], (key, "seed"))
    return at[key].astype(float), table


def step_ratios(cube: np.ndarray) -> np.ndarray:
    r"""One-step factors :math:`\|\partial C/\partial h_t\| / \|\partial C/\partial h_{t+1}\|`,
    ``(..., T - 1)``; NaN where the later norm underflowed to 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cube[..., :-1] / cube[..., 1:]
    return np.where(cube[..., 1:] > 0, r, np.nan)


def decay_summary(data: dict) -> dict:
    """Per-lambda1 and per-forget-bias summaries of the decay through time (medians over seeds)."""
    lam, vcube = curves(data["vanilla"], "lambda1")
    _, vrate = scalars(data["vanilla"], "lambda1", "rate")
    fb, lcube = curves(data["lstm"], "forget_bias")
    _, lrate = scalars(data["lstm"], "forget_bias", "rate")
    with np.errstate(divide="ignore"):
        vspan = vcube[..., 0] / vcube[..., -1]
        lspan = lcube[..., 0] / lcube[..., -1]
    gamma = data["theory"]["gamma"]
    return {
        "lambda1": lam,
        "bound_rate": gamma * lam,
        "rate": vrate,  # (lambdas, seeds)
        "max_step_ratio": np.nanmax(step_ratios(vcube), axis=(1, 2)),
        "span": vspan,  # ||dC/dh_1|| / ||dC/dh_T||, (lambdas, seeds)
        "forget_bias": fb,
        "lstm_rate": lrate,
        "lstm_max_step_ratio": np.nanmax(step_ratios(lcube), axis=(1, 2)),
        "lstm_span": lspan,
        "length": vcube.shape[-1],
    }


def adding_runs(df: pd.DataFrame) -> pd.DataFrame:
    """One row per adding-problem run: ``learning_rate``, ``clip``, ``seed``, ``diverged``,
    ``diverged_step``, ``final_loss`` (training-set MSE at the last record; NaN when diverged),
    ``clipped_frac`` (fraction of the steps before divergence that were clipped) and
    ``clipped_first`` (the same over the first record block)."""
    keys = ["learning_rate", "clip", "seed"]
    runs = df.groupby(keys, as_index=False).agg(
        diverged=("diverged", "first"), diverged_step=("diverged_step", "first")
    )
    last = df["step"] == df["step"].max()

    def per_run(metric, how, where=None):
        sub = df[(df["metric"] == metric) & (True if where is None else where)]
        return sub.groupby(keys)["value"].agg(how).rename(metric)

    runs = runs.join(per_run("loss", "first", last).rename("final_loss"), on=keys)
    runs = runs.join(per_run(f"{_CLIP_KEY}/clipped", "mean").rename("clipped_frac"), on=keys)
    first = per_run(f"{_CLIP_KEY}/clipped", "first", df["step"] == 0)
    return runs.join(first.rename("clipped_first"), on=keys)


def adding_curves(df: pd.DataFrame, metric: str, clip: float) -> np.ndarray:
    """``(seeds, R)`` of a per-record metric for one clip threshold (NaN after divergence); of
    the first layer for per-layer metrics."""
    sub = df[(df["metric"] == metric) & (df["clip"] == clip)]
    sub = sub[sub["layer"].isna() | (sub["layer"] == 0)]  # "clipped" is the same in every layer
    return gf.sweep.to_arrays(sub, ("seed", "step"))[0]


def adding_summary(data: dict) -> dict:
    """Per clip threshold (``inf``: none): number of runs, fraction diverged, median step of
    divergence (1-based: the step whose loss diverged), and over the finished runs the median
    final loss and clipped fractions."""
    runs = adding_runs(data["adding"])
    out = {}
    for clip, sub in runs.groupby("clip"):
        ok = sub[~sub["diverged"]]
        out[float(clip)] = {
            "n": len(sub),
            "diverged_frac": float(sub["diverged"].mean()),
            # diverged_step counts the updates applied before it: the (d + 1)-th step diverged
            "median_diverged_step": float(sub.loc[sub["diverged"], "diverged_step"].median()) + 1
            if sub["diverged"].any()
            else math.nan,
            "final_loss": float(ok["final_loss"].median()) if len(ok) else math.nan,
            "clipped_frac": float(ok["clipped_frac"].median()) if len(ok) else math.nan,
            "clipped_first": float(ok["clipped_first"].median()) if len(ok) else math.nan,
        }
    return out


# ------------------------------------------------------------------------------ figures


def _lam_label(v: float) -> str:
    return rf"$\lambda_1 = {v:g}$"


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    """(a) ||dC/dh_t|| vs t per lambda_1 with the bound, and the LSTM (headline); (b) the adding
    problem with and without clipping: loss, pre-clip gradient norm, fraction of clipped steps."""
    data = load(results_dir)
    cfg = data["config"]
    lam, vcube = curves(data["vanilla"], "lambda1")
    _, log_bound = curves(data["vanilla"], "lambda1", "log10_bound")
    fb, lcube = curves(data["lstm"], "forget_bias")
    T = vcube.shape[-1]
    t = np.arange(1, T + 1)
    out = []
    with gf.plotting.style():
        fig, ax = gf.plotting.figure(width="column", aspect=1.05)
        colors = [gf.plotting.COLORS[i % 7] for i in range(len(lam))]
        finite = [gf.plotting.finite_or_raise(vcube, "vanilla ||dC/dh_t||"),
                  gf.plotting.finite_or_raise(lcube, "LSTM ||dC/dh_t||")]  # fmt: skip
        pos = np.concatenate([c[c > 0] for c in finite])
        lo_y, hi_y = pos.min() / 10, pos.max() * 10
        underflow = False
        for i, v in enumerate(lam):
            c = vcube[i]
            with np.errstate(divide="ignore"):
                logc = np.where(c > 0, np.log10(np.where(c > 0, c, 1)), np.nan)
            # median / band over seeds of the positive values; steps where any seed underflowed
            # to 0 are drawn only where every seed is positive, and marked below
            ok = np.all(c > 0, axis=0)
            underflow |= not ok.all()
            line = gf.plotting.band(ax, t, np.where(ok, logc, 0.0), color=colors[i],
                                    transform=lambda q, ok=ok: 10 ** np.where(ok, q, np.nan),
                                    label=_lam_label(v))  # fmt: skip
            ax.plot(t, 10 ** np.median(log_bound[i], axis=0), color=colors[i], ls=":", lw=1.0)
            if not ok.all():
                first_ok = int(np.argmax(ok))
                ax.plot(t[first_ok], line.get_ydata()[first_ok], marker="|", color=colors[i], ms=7)
        lstyles = ("--", "-.")
        for j, b in enumerate(fb):
            gf.plotting.band(
                ax,
                t,
                lcube[j],
                color="k",
                fill_color="0.3",
                alpha=0.2,
                ls=lstyles[j % 2],
                lw=1.3,
                label=rf"LSTM, $\beta_f = {b:g}$",
            )
        ax.plot([], [], color="0.4", ls=":", lw=1.0,
                label=r"bound $(\gamma\lambda_1)^{T-t}$")  # fmt: skip
        ax.set_yscale("log")
        ax.set_ylim(lo_y, hi_y)
        ax.set_xlim(1, T)
        ax.set_xlabel("time step $t$")
        ax.set_ylabel(r"$\|\partial C/\partial h_t\|$ (per sequence)")
        title = (f"tanh RNN ($\\gamma = 1$), $N = {cfg['hidden']}$, $T = {T}$: "
                 f"median, 10–90% of {vcube.shape[1]} seeds")  # fmt: skip
        if underflow:
            title += "\n|: before it the float32 norm underflows to 0 (squares < $2^{-126}$)"
        ax.set_title(title, fontsize=6.5)
        fig.legend(loc="outside lower center", fontsize=6, ncols=3, handlelength=2.2,
                   columnspacing=1.0)  # fmt: skip
        out += gf.plotting.savefig(fig, Path(figures_dir) / f"{NAME}_headline")

        out += _plot_adding(data, figures_dir)
    return out


def _plot_adding(data: dict, figures_dir: Path) -> list[Path]:
    import matplotlib.ticker as mticker

    cfg, theory = data["config"], data["theory"]
    df = data["adding"]
    steps = np.asarray(theory["record_steps"], float)
    runs = adding_runs(df)
    clips = (math.inf, float(cfg["clip"]))
    colors = {math.inf: gf.plotting.COLORS[1], clips[1]: gf.plotting.COLORS[0]}
    names = {math.inf: "no clipping", clips[1]: f"clip $\\|g\\| \\leq {clips[1]:g}$"}
    top = cfg["max_loss"]
    fig, axes = gf.plotting.figure(3, 1, width="column", aspect=0.42, sharex=True)
    ax_loss, ax_g, ax_c = axes
    for clip in clips:
        loss = adding_curves(df, "loss", clip)
        gnorm = adding_curves(df, f"{_CLIP_KEY}/global_norm", clip)
        sub = runs[runs["clip"] == clip].sort_values("seed")
        div = sub["diverged"].to_numpy()
        n_div = int(div.sum())
        label = f"{names[clip]}: {n_div}/{len(div)} diverged"
        if 0 < n_div < len(div):
            label += f", {len(div) - n_div} shown"
        col = colors[clip]
        if (~div).any():
            ok = gf.plotting.finite_or_raise(loss[~div], "adding loss of finished runs")
            gf.plotting.band(ax_loss, steps, ok, color=col, label=label)
            g = gf.plotting.finite_or_raise(gnorm[~div], "gradient norms of finished runs")
            gf.plotting.band(ax_g, steps, g, color=col)
        else:
            ax_loss.plot([], [], color=col, label=label)
        # diverged runs: their finite records, then a cross at the step of divergence
        for row, d in enumerate(sub["diverged_step"]):  # rows of loss: seeds in order
            if pd.isna(d):
                continue
            fin = np.isfinite(loss[row])
            ax_loss.plot(steps[fin], np.minimum(loss[row][fin], top), color=col, lw=0.6,
                         alpha=0.6)  # fmt: skip
            # diverged_step d = updates applied before it: the (d + 1)-th step diverged
            ax_loss.plot(float(d) + 1, top, marker="x", color=col, ms=4, mew=1.0, clip_on=False)
            fg = np.isfinite(gnorm[row])
            ax_g.plot(steps[fg], gnorm[row][fg], color=col, lw=0.6, alpha=0.6)
        clipped = adding_curves(df, f"{_CLIP_KEY}/clipped", clip)
        if clip != math.inf and (~div).any():
            c = gf.plotting.finite_or_raise(clipped[~div], "clipped fraction")
            gf.plotting.band(ax_c, steps, c, color=col, step="pre", label=names[clip])
    ax_loss.axhline(theory["constant_loss"], color="k", ls=":", lw=0.8, label="predict 1: 1/6")
    ax_loss.axhline(theory["recent_only_loss"], color="k", ls="--", lw=0.8,
                    label="recent number only: 1/12")  # fmt: skip
    ax_loss.axhline(top, color="0.5", lw=0.6)
    ax_loss.text(steps[-1], top * 1.1, f"diverged: loss > {top:g}", ha="right",
                 va="bottom", fontsize=6, color="0.3")  # fmt: skip
    ax_loss.set_yscale("log")
    ax_loss.set_ylim(top=top * 2.5)
    ax_loss.set_ylabel("training MSE")
    ax_loss.legend(loc="center right", fontsize=6)
    ax_loss.set_title(
        f"adding problem, $T = {cfg['adding_length']}$: tanh RNN, SGD "
        f"$\\eta = {cfg['learning_rate']:g}$, {len(runs) // 2} seeds (×: diverged)",
        fontsize=6.5,
    )
    ax_g.set_yscale("log")
    ax_g.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax_g.yaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
    ax_g.yaxis.set_minor_formatter(mticker.NullFormatter())
    ax_g.set_ylabel(r"pre-clip $\|g\|$")
    ax_g.axhline(clips[1], color=colors[clips[1]], ls=":", lw=0.8)
    ax_c.set_ylabel("clipped steps")
    ax_c.set_ylim(0, 1)
    ax_c.set_xlabel("SGD step")
    ax_c.set_xscale("log")  # divergence and clipping happen in the first few steps
    ax_c.set_xlim(1, steps[-1])
    ax_c.legend(loc="upper right", fontsize=6)
    return gf.plotting.savefig(fig, Path(figures_dir) / f"{NAME}_adding")


# ------------------------------------------------------------------------------ tables


_WORDS = {
    "0": "Zero", "1": "One", "2": "Two", "3": "Three", "4": "Four", "5": "Five", "6": "Six",
    "7": "Seven", "8": "Eight", "9": "Nine",
}  # fmt: skip


def value_word(v: float) -> str:
    """A number as letters for macro names: 0.9 -> ``ZeroNine``, 1.5 -> ``OneFive``, 5 ->
    ``Five``."""
    text = f"{v:g}".replace(".", "")
    if not text.isdigit():
        raise ValueError(f"cannot name {v!r} in letters")
    return "".join(_WORDS[c] for c in text)


def _span(span: np.ndarray) -> float | str:
    """Median over seeds of ``||dC/dh_1|| / ||dC/dh_T||``; ``"underflow"`` when it reads 0."""
    med = float(np.median(span))
    if med == 0:
        return "underflow"
    return round(med) if 1e3 <= med < 1e5 else med  # fmt() writes 5710 as 5.71e+03


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    """Decay rates per lambda_1 (measured vs bound) and of the LSTM; the adding problem with and
    without clipping; macros."""
    data = load(results_dir)
    cfg = data["config"]
    s = decay_summary(data)
    rows = []
    for i, v in enumerate(s["lambda1"]):
        r = s["rate"][i]
        rows.append([
            "vanilla", v, "--", s["bound_rate"][i], np.median(r), np.percentile(r, 10),
            np.percentile(r, 90), s["max_step_ratio"][i], _span(s["span"][i]),
        ])  # fmt: skip
    for j, b in enumerate(s["forget_bias"]):
        r = s["lstm_rate"][j]
        rows.append([
            "LSTM", 1.0, b, "--", np.median(r), np.percentile(r, 10), np.percentile(r, 90),
            s["lstm_max_step_ratio"][j], _span(s["lstm_span"][j]),
        ])  # fmt: skip
    columns = [
        "net", r"$\lambda_1$", r"$\beta_f$", r"$\gamma\lambda_1$", "rate", "rate, 10%",
        "rate, 90%", "max step", r"$\|\delta_1\| / \|\delta_T\|$",
    ]  # fmt: skip
    out = [gf.experiment.latex_table(rows, columns, Path(tables_dir) / f"{NAME}.tex")]

    a = adding_summary(data)
    clips = (math.inf, float(cfg["clip"]))
    arows = []
    for clip in clips:
        x = a[clip]
        arows.append([
            "none" if clip == math.inf else f"global norm, {clip:g}", x["diverged_frac"],
            x["median_diverged_step"] if math.isfinite(x["median_diverged_step"]) else "--",
            x["final_loss"],
            x["clipped_first"] if clip != math.inf else "--",
            x["clipped_frac"] if clip != math.inf else "--",
        ])  # fmt: skip
    acols = ["clipping", "diverged", "median step diverged", "final train MSE",
             f"clipped, first {cfg['record_every']} steps", "clipped, all steps"]  # fmt: skip
    out.append(gf.experiment.latex_table(arows, acols, Path(tables_dir) / f"{NAME}_adding.tex"))

    p = "rnnThroughTime"
    m = {
        f"{p}Seeds": int(cfg["seeds"]), f"{p}Hidden": int(cfg["hidden"]),
        f"{p}Length": int(s["length"]), f"{p}Gamma": data["theory"]["gamma"],
    }  # fmt: skip
    for i, v in enumerate(s["lambda1"]):
        w = value_word(v)
        m[f"{p}Rate{w}"] = float(np.median(s["rate"][i]))
        m[f"{p}MaxStep{w}"] = float(s["max_step_ratio"][i])
        m[f"{p}Span{w}"] = _span(s["span"][i])
    for j, b in enumerate(s["forget_bias"]):
        w = value_word(b)
        m[f"{p}LstmRateBias{w}"] = float(np.median(s["lstm_rate"][j]))
        m[f"{p}LstmSpanBias{w}"] = _span(s["lstm_span"][j])
        m[f"{p}LstmForgetBias{w}"] = data["theory"]["lstm_forget_gate"][j]
    no, yes = a[math.inf], a[clips[1]]
    m.update({
        f"{p}AddingLength": int(cfg["adding_length"]),
        f"{p}AddingSteps": int(cfg["adding_steps"]),
        f"{p}AddingLearningRate": float(cfg["learning_rate"]),
        f"{p}AddingClip": float(cfg["clip"]),
        f"{p}AddingMaxLoss": float(cfg["max_loss"]),
        f"{p}AddingDivergedNoClip": no["diverged_frac"],
        f"{p}AddingDivergedClip": yes["diverged_frac"],
        f"{p}AddingDivergedStepNoClip": no["median_diverged_step"],
        f"{p}AddingLossNoClip": no["final_loss"],
        f"{p}AddingLossClip": yes["final_loss"],
        f"{p}AddingClippedFrac": yes["clipped_frac"],
        f"{p}AddingClippedFirst": yes["clipped_first"],
        f"{p}AddingRecordEvery": int(cfg["record_every"]),
    })  # fmt: skip
    out.append(gf.experiment.write_macros(Path(tables_dir) / f"{NAME}_macros.tex", m))
    return out


EXPERIMENT = gf.experiment.Experiment(
    name=NAME,
    claim=CLAIM,
    source=SOURCE,
    configs={"quick": QUICK, "full": FULL},
    run=run,
    plot=plot,
    tables=tables,
    figures=(f"{NAME}_headline", f"{NAME}_adding"),
    order=7,
)
