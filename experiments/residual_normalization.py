r"""residual_normalization: why normalised residual networks train deep, and two ways without.

Claims.

* De & Smith 2020, "Batch normalization biases residual blocks towards the identity function in
  deep networks" (https://arxiv.org/abs/2002.10444). In a residual network
  :math:`x_{l+1} = x_l + f_l(x_l)` whose branch ends in a He-initialised ReLU convolution, the
  branch preserves the variance of its input, so
  :math:`\mathrm{Var}(x_{l+1}) = 2\,\mathrm{Var}(x_l)`: without normalisation the variance
  *doubles* on every block. With BatchNorm on the branch the branch has unit variance, so
  :math:`\mathrm{Var}(x_{l+1}) = \mathrm{Var}(x_l) + 1` grows *linearly* and block :math:`l`'s
  branch is downscaled by :math:`\approx 1/\sqrt l` relative to the skip path: deep normalised
  blocks start close to the identity. SkipInit -- a learnable scalar :math:`\alpha` on the branch,
  initialised to 0 -- makes every block the identity at initialisation and trains deep residual
  networks without normalisation.
* Zhang, Dauphin & Ma 2019, "Fixup initialization: residual learning without normalization"
  (https://arxiv.org/abs/1901.09321): zero-initialise the classifier and the last layer of every
  branch, scale the other branch layers by :math:`L^{-1/(2m-2)}` (:math:`m` layers per branch,
  :math:`L` branches), add scalar biases and a scalar multiplier; such networks train without
  normalisation.
* Brock, De & Smith 2021, "Characterizing signal propagation to close the performance gap in
  unnormalized ResNets" (https://arxiv.org/abs/2101.08692): signal-propagation plots (SPPs) --
  the average squared channel mean, the average channel variance and the residual branch's
  variance at the end of every block, at initialisation on a batch of inputs -- show these
  mechanisms directly.

What it measures. :class:`ResNet`: the 8x8x1 digits (:func:`gradflow.data.load_digits`,
standardised pixels) folded into 4x4x4 (space to depth), a 3x3 stem convolution to ``width``
channels, ``depth`` pre-activation residual blocks (ReLU-conv-ReLU-conv, with BatchNorm before
each ReLU in the ``batchnorm`` variant), a final ReLU and a linear classifier of the flattened
map. Every convolution is a 3x3 :class:`Conv3x3` with circular padding, so each output sees a full
neighbourhood and He initialisation preserves the second moment exactly, as the papers' analysis
assumes (Xiao et al. 2018, https://arxiv.org/abs/1806.05393, use circular padding for the same
reason); kernels are He normal (:func:`gradflow.initializers.get`), untruncated. The blocks are one
:func:`flax.linen.scan`, so compile time does not grow with depth. Variants (:data:`VARIANTS`):
``none``, ``batchnorm`` (on the branch), ``skipinit`` (:math:`\alpha = 0`), ``fixup`` (the recipe
above, :math:`m = 2`).

* **At initialisation**, on ``probe_batch`` training images (BatchNorm with batch statistics, as a
  training step sees it): the SPP statistics of every block (sown in the forward pass, in the log
  domain: an unnormalised depth-128 network reaches variances near float32's limit), and
  :func:`gradflow.probes.probe`'s weight-gradient norm and per-example error of every layer
  (rows ``stem``, ``blocks/conv_0[l]``, ..., ``readout`` in forward order; the probe lists a
  :class:`Conv3x3` as kind ``dense``, the matrix product it computes).
* **Trainability**: SGD with momentum 0.9 (the papers' optimiser) for ``steps`` steps of
  ``batch_size`` images at each rate of ``learning_rates`` (vmapped with the seeds in the same
  program, :func:`gradflow.training.train_fn`); the test accuracy of each (variant, depth) at the
  rate with the lowest median final *training* loss (test data play no part in the choice), a
  diverged run recorded as such.

One :func:`gradflow.sweep.run` over the static (variant, depth) groups, one compiled program each
that measures the initial network and trains it.

What the full config finds (the paper's macros hold the numbers). Without normalisation the
average channel variance grows geometrically, a little slower than doubling per block at width 8
(the median over seeds of a product of random per-block factors grows more slowly than their
mean), the initial loss is huge, and every run diverges or stays at chance beyond the shallowest
depth; with BatchNorm the variance grows linearly by about :math:`1 - 1/\pi` per block (a He
convolution of a unit-variance ReLU; the other :math:`1/\pi` goes into the channel means) and the
branch-to-input ratio falls close to :math:`1/l`; SkipInit and Fixup are exactly the identity at
initialisation (no gradient reaches a branch's convolutions) and train to high accuracy at every
depth, as does BatchNorm.

Cost: twelve programs (variant x depth) dominated by XLA compilation; the depth-128 training runs
dominate the rest.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import gradflow as gf

NAME = "residual_normalization"
CLAIM = (
    "At initialisation an unnormalised He-initialised ResNet doubles its activations' variance on "
    "every residual block, while BatchNorm on the branch makes the variance grow linearly and "
    "downscales block l's branch by about 1/sqrt(l) (blocks near the identity); SkipInit and "
    "Fixup start every block at the identity and train deep networks without normalisation, "
    "where the unnormalised network does not."
)
SOURCE = "De & Smith 2020; Zhang, Dauphin & Ma 2019; Brock, De & Smith 2021"

#: The variants, in display order.
VARIANTS: tuple[str, ...] = ("none", "batchnorm", "skipinit", "fixup")
LABELS = {
    "none": "no normalisation",
    "batchnorm": "BatchNorm",
    "skipinit": "SkipInit",
    "fixup": "Fixup",
}
LOSS = "softmax_cross_entropy"
#: SGD's momentum (Nesterov-free heavy ball, optax.trace).
MOMENTUM = 0.9
#: Layers per residual branch (Fixup's m).
BRANCH_LAYERS = 2


@dataclasses.dataclass(frozen=True)
class ResidualNormalizationConfig(gf.experiment.Config):
    """Residual networks with and without normalization: initial statistics and training."""

    variants: tuple[str, ...]  # names of VARIANTS
    depths: tuple[int, ...]  # residual blocks
    width: int  # channels
    seeds: int  # random draws per (variant, depth, learning rate)
    probe_batch: int  # images for the statistics at initialisation
    steps: int  # SGD + momentum steps
    batch_size: int  # images per step
    learning_rates: tuple[float, ...]  # step sizes, each trained

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, lo in (("width", 1), ("seeds", 1), ("probe_batch", 2), ("steps", 1),
                        ("batch_size", 2)):  # fmt: skip
            if getattr(self, key) < lo:
                raise ValueError(f"{key} must be an int >= {lo}, got {getattr(self, key)!r}")
        variants = list(self.variants)
        unknown = [v for v in variants if v not in VARIANTS]
        if not variants or unknown or len(set(variants)) != len(variants):
            raise ValueError(
                f"variants must be distinct names of {', '.join(VARIANTS)}, got {variants!r}"
            )
        depths = list(self.depths)
        if not depths or any(d < 2 for d in depths):
            raise ValueError(f"depths must be ints >= 2 (residual blocks), got {depths!r}")
        lrs = list(self.learning_rates)
        if not lrs or not all(math.isfinite(r) and r > 0 for r in lrs):
            raise ValueError(f"learning_rates must be positive numbers, got {lrs!r}")

    def check_resources(self) -> None:
        depth = max(self.depths)
        per_net = 18 * self.width**2 + 12 * self.probe_batch * 64 * self.width
        gf.experiment.check_memory(
            f"depths up to {depth} at width={self.width} x seeds={self.seeds}",
            4 * 4 * self.seeds * len(self.variants) * depth * per_net,
        )


FULL = ResidualNormalizationConfig(
    variants=tuple(VARIANTS),
    depths=(8, 32, 128),
    width=8,
    seeds=2,
    probe_batch=128,
    steps=150,
    batch_size=16,
    learning_rates=(0.003, 0.01, 0.03),
)
QUICK = dataclasses.replace(
    FULL, depths=(16,), probe_batch=64, steps=120, learning_rates=(0.01, 0.03)
)

_he = gf.initializers.get("he_normal")
_lecun = gf.initializers.get("lecun_normal")


# ------------------------------------------------------------------------------------- model


class Conv3x3(nn.Module):
    """A 3x3 convolution, stride 1, circular padding: the function of
    ``nn.Conv(features, (3, 3), padding="CIRCULAR")`` with the same ``(3, 3, in, out)`` kernel,
    computed as one matrix product over the nine shifted copies of the input (several times
    faster than XLA's CPU convolution at a few channels, and under ``vmap``)."""

    features: int
    use_bias: bool = True
    kernel_init: Callable = _he

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features))
        taps = [jnp.roll(x, (1 - i, 1 - j), axis=(-3, -2)) for i in range(3) for j in range(3)]
        y = jnp.concatenate(taps, axis=-1) @ kernel.reshape(-1, self.features)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


def _scaled(init: Callable, scale: float) -> Callable:
    def f(key, shape, dtype=jnp.float32):
        return init(key, shape, dtype) * jnp.asarray(scale, dtype)

    return f


def _log10_channel_stats(x):
    r"""``(log10 avg squared channel mean, log10 avg channel variance)`` of ``x (B, H, W, C)``
    over the batch and positions (Brock et al. 2021), computed from ``x / max|x|`` so that no
    square overflows float32."""
    s = jax.lax.stop_gradient(jnp.max(jnp.abs(x)))
    s = jnp.where(s > 0, s, 1.0)
    y = x / s
    mean = jnp.mean(y, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(y - mean), axis=(0, 1, 2))
    two_log_s = 2.0 * jnp.log10(s)
    return jnp.log10(jnp.mean(jnp.square(mean))) + two_log_s, jnp.log10(jnp.mean(var)) + two_log_s


def _branch_ratio(h, x):
    """Average channel variance of the branch output ``h`` over that of the block input ``x``
    (0 when the branch is 0), from both scaled by ``max|x|``."""
    s = jax.lax.stop_gradient(jnp.max(jnp.abs(x)))
    s = jnp.where(s > 0, s, 1.0)
    return jnp.mean(jnp.var(h / s, axis=(0, 1, 2))) / jnp.mean(jnp.var(x / s, axis=(0, 1, 2)))


class ResidualBlock(nn.Module):
    """One pre-activation residual block as a :func:`flax.linen.scan` body:
    ``(x, train) -> (x + f(x), None)``.

    ``f`` is ReLU -> :class:`Conv3x3` -> ReLU -> :class:`Conv3x3` (``conv_0``, ``conv_1``), with
    per variant: ``batchnorm`` a BatchNorm (``bn_0``, ``bn_1``) before each ReLU and no conv
    biases; ``skipinit`` the branch times a scalar ``alpha`` initialised to 0 (De & Smith 2020);
    ``fixup`` no conv biases, ``conv_0`` He-initialised times :math:`L^{-1/(2m-2)}`, ``conv_1``
    zero, scalar biases (``bias_0..3``) before each conv and activation and after the branch, a
    scalar multiplier ``scale`` initialised to 1 (Zhang et al. 2019). Sows the block output's SPP
    statistics (``sq_mean``, ``var``, log10) and the branch-to-input variance ratio (``ratio``)
    into ``intermediates``.
    """

    width: int
    variant: str
    depth: int

    @nn.compact
    def __call__(self, x, train):
        v = self.variant

        def scalar(name, value):
            return self.param(name, nn.initializers.constant(value), ())

        def bn(name):
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)

        plain = v in ("none", "skipinit")
        init_0 = _he
        init_1 = _he
        if v == "fixup":
            init_0 = _scaled(_he, self.depth ** (-1.0 / (2 * BRANCH_LAYERS - 2)))
            init_1 = nn.initializers.zeros
        h = bn("bn_0")(x) if v == "batchnorm" else x
        h = nn.relu(h)
        if v == "fixup":
            h = h + scalar("bias_0", 0.0)
        h = Conv3x3(self.width, use_bias=plain, kernel_init=init_0, name="conv_0")(h)
        if v == "batchnorm":
            h = bn("bn_1")(h)
        if v == "fixup":
            h = h + scalar("bias_1", 0.0)
        h = nn.relu(h)
        if v == "fixup":
            h = h + scalar("bias_2", 0.0)
        h = Conv3x3(self.width, use_bias=plain, kernel_init=init_1, name="conv_1")(h)
        if v == "skipinit":
            h = h * scalar("alpha", 0.0)
        if v == "fixup":
            h = h * scalar("scale", 1.0) + scalar("bias_3", 0.0)
        self.sow("intermediates", "ratio", _branch_ratio(h, x))
        x = x + h
        sq_mean, var = _log10_channel_stats(x)
        self.sow("intermediates", "sq_mean", sq_mean)
        self.sow("intermediates", "var", var)
        return x, None


class ResNet(nn.Module):
    """``x (..., 64) -> logits (..., 10)``: the 8x8 digit folded to 4x4x4, a :class:`Conv3x3`
    stem, ``depth`` :class:`ResidualBlock` s (one :func:`flax.linen.scan` named ``blocks``), a
    BatchNorm (``batchnorm`` only) and ReLU, and a Dense ``readout`` of the flattened 4x4 map
    (LeCun normal; zero for ``fixup``; global average pooling would leave the classifier only
    ``width`` features). ``train`` selects BatchNorm's batch statistics."""

    width: int
    depth: int
    variant: str

    @nn.compact
    def __call__(self, x, train: bool = True):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        lead = x.shape[:-1]
        x = x.reshape(*lead, 4, 2, 4, 2).swapaxes(-3, -2).reshape(*lead, 4, 4, 4)
        x = Conv3x3(self.width, name="stem")(x)
        stack = nn.scan(
            ResidualBlock,
            variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
            split_rngs={"params": True},
            in_axes=nn.broadcast,
            length=self.depth,
        )
        x, _ = stack(self.width, self.variant, self.depth, name="blocks")(x, train)
        if self.variant == "batchnorm":
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn_final")(x)
        x = nn.relu(x).reshape(*lead, -1)
        init = nn.initializers.zeros if self.variant == "fixup" else _lecun
        return nn.Dense(10, kernel_init=init, name="readout")(x)


# ------------------------------------------------------------------------------------- sweeps


@functools.cache
def _data() -> gf.data.Digits:
    return gf.data.load_digits(scale="standardize")


def _probe_batch(config: ResidualNormalizationConfig) -> tuple[jax.Array, jax.Array]:
    data = _data()
    n = config.probe_batch
    return jnp.asarray(data.x_train[:n]), jnp.asarray(data.y_train[:n])


def _init_probe(
    config: ResidualNormalizationConfig, variant: str, depth: int, key: jax.Array
) -> tuple:
    """``(probe report, SPP intermediates)`` of the network ``train_fn`` initialises from
    ``key`` (the first half of ``split(key)``), BatchNorm with batch statistics."""
    x, y = _probe_batch(config)
    net = ResNet(width=config.width, depth=depth, variant=variant)
    variables = net.init(jax.random.split(key)[0], x[:1])
    report = gf.probes.probe(net, variables, x, y, LOSS, train=True)
    _, state = net.apply(variables, x, train=True, mutable=["intermediates", "batch_stats"])
    return report, state["intermediates"]["blocks"]


def layers(config: ResidualNormalizationConfig, variant: str, depth: int) -> list[tuple[str, str]]:
    """``(name, kind)`` of the probe's rows, forward order (``blocks/conv_0[3]``: block 3's first
    convolution; ``blocks[3]``: its scalar multiplier), from the traced program alone."""
    out = jax.eval_shape(lambda k: _init_probe(config, variant, depth, k)[0], jax.random.key(0))
    return [(str(n), str(k)) for n, k in zip(out.layer_names, out.layer_kinds)]


def _make_fn(config: ResidualNormalizationConfig, rows: dict):
    steps = config.steps

    @functools.cache
    def trainer(variant: str, depth: int):
        net = ResNet(width=config.width, depth=depth, variant=variant)
        cfg = gf.training.TrainConfig(
            model=net, optimizer="momentum", loss=LOSS, steps=steps,
            batch_size=config.batch_size, record_every=steps,
        )  # fmt: skip
        return gf.training.train_fn(cfg, _data())

    def fn(hparams, key):
        variant, depth = hparams["variant"], int(hparams["depth"])
        report, spp = _init_probe(config, variant, depth, key)
        # the row names are static: note them while the sweep traces fn (no second trace)
        names = zip(report.layer_names, report.layer_kinds)
        rows[f"{variant}/{depth}"] = [(str(n), str(k)) for n, k in names]
        rec = trainer(variant, depth)({"learning_rate": hparams["learning_rate"]}, key)
        return {
            "init_loss": report.loss,
            "init_log10_sq_mean": spp["sq_mean"][0],
            "init_log10_var": spp["var"][0],
            "init_branch_ratio": spp["ratio"][0],
            "init_weight_grad_norm": report.weight_grad_norm,
            "init_preact_grad_norm": report.preact_grad_norm,
            "loss": rec["loss"][-1],
            "test_accuracy": rec["test_accuracy"][-1],
            "diverged_step": rec["diverged_step"],
        }

    return fn


def run(config: ResidualNormalizationConfig, results_dir: Path) -> None:
    """Every (variant, depth) group: the initial network's statistics and its training at every
    learning rate x seed, one compiled program per group."""
    config.check_resources()
    rows: dict = {}
    gf.sweep.run(
        _make_fn(config, rows),
        grid={
            "variant": list(config.variants),
            "depth": [int(d) for d in config.depths],
            "learning_rate": [float(r) for r in config.learning_rates],
        },
        seeds=range(config.seeds),
        static=("depth",),
        workdir=Path(results_dir) / "resnets",
        axes={
            "init_log10_sq_mean": ("block",),
            "init_log10_var": ("block",),
            "init_branch_ratio": ("block",),
            "init_weight_grad_norm": ("layer",),
            "init_preact_grad_norm": ("layer",),
        },
        name=NAME,
        config=config.to_dict(),
    )
    for v in config.variants:  # groups of a resumed sweep were not traced
        for d in config.depths:
            if f"{v}/{d}" not in rows:
                rows[f"{v}/{d}"] = layers(config, v, int(d))
    gf.experiment.write_atomic(Path(results_dir) / "layers.json", json.dumps(rows))


# ------------------------------------------------------------------------------ reading results


def load(results_dir: Path) -> tuple[pd.DataFrame, dict]:
    """The saved table and the run's config; the table's ``layer`` index is named by the probe's
    rows, ``df.attrs["layers"]`` (``{"variant/depth": [(name, kind), ...]}``)."""
    workdir = Path(results_dir) / "resnets"
    df = gf.sweep.load(workdir)
    df.attrs["layers"] = json.loads((Path(results_dir) / "layers.json").read_text())
    return df, gf.experiment.stored_config(workdir)


def init_profile(df: pd.DataFrame, variant: str, depth: int, metric: str) -> np.ndarray:
    """``(seeds, n)`` of a per-block (``init_log10_*``, ``init_branch_ratio``) or per-layer
    (``init_weight_grad_norm``, ``init_preact_grad_norm``: the probe's rows) statistic at
    initialisation. Every learning rate of a seed starts
    from the same network, so the first is read."""
    sub = df[(df["variant"] == variant) & (df["depth"] == depth) & (df["metric"] == metric)]
    sub = sub[sub["learning_rate"] == sub["learning_rate"].min()]
    axis = "layer" if metric.endswith("grad_norm") else "block"
    return gf.sweep.to_arrays(sub, ("seed", axis))[0]


def row_names(df: pd.DataFrame, variant: str, depth: int) -> list[str]:
    """The probe's row names of ``(variant, depth)``, forward order."""
    return [n for n, _ in df.attrs["layers"][f"{variant}/{depth}"]]


def conv_grads(df: pd.DataFrame, variant: str, depth: int, conv: str = "conv_0",
               metric: str = "init_weight_grad_norm") -> np.ndarray:  # fmt: skip
    """``(seeds, depth)``: the probe's ``metric`` at initialisation of every block's ``conv``."""
    names = row_names(df, variant, depth)
    index = [names.index(f"blocks/{conv}[{b}]") for b in range(depth)]
    return init_profile(df, variant, depth, metric)[:, index]


def growth_rate(log10_var: np.ndarray, skip: int = 1) -> float:
    r"""Fitted :math:`\log_2` growth of the variance per block: the least-squares slope of
    :math:`\log_2 \mathrm{Var}(x_l)` against :math:`l` (median over seeds), from block ``skip``
    on."""
    v = np.median(np.asarray(log10_var, float), axis=0)[skip:] / np.log10(2.0)
    blocks = np.arange(skip, skip + v.size, dtype=float)
    return float(np.polyfit(blocks, v, 1)[0])


def ratio_exponent(ratio: np.ndarray, skip: int = 1) -> float:
    r"""Least-squares slope of :math:`\log` (branch / input variance) against :math:`\log l`
    (block index from 1, median over seeds), from block ``skip`` on: :math:`-1` when the branch is
    downscaled by :math:`1/\sqrt l`."""
    r = np.median(np.asarray(ratio, float), axis=0)[skip:]
    blocks = np.arange(skip + 1, skip + 1 + r.size, dtype=float)
    return float(np.polyfit(np.log(blocks), np.log(r), 1)[0])


def _zero_if_tiny(x: float) -> float:
    """A fitted slope of a constant profile is float rounding (~1e-16): report it as 0."""
    return 0.0 if abs(x) < 1e-9 else x


def summary(df: pd.DataFrame, config: dict) -> pd.DataFrame:
    """One row per (variant, depth): the learning rate with the lowest median final training loss
    among those where no seed diverged (else the lowest), its runs, diverged runs, median final
    training loss, test accuracy mean and sd over the finite runs; at initialisation the fitted
    variance growth (log2 per block, :func:`growth_rate`), the least-squares slope of the average
    channel variance against the block index (``var_slope``; a linear growth's increment per
    block), the variance after the last block (``var_last``), the branch-ratio exponent
    (:func:`ratio_exponent`), the median gradient norm of the blocks' first convolutions
    (``conv_grad``) and the initial loss (median)."""
    rows = []
    for variant in config["variants"]:
        for depth in config["depths"]:
            sub = df[(df["variant"] == variant) & (df["depth"] == depth)]
            loss = sub[sub["metric"] == "loss"]
            acc = sub[sub["metric"] == "test_accuracy"]
            stats = []
            for lr, g in loss.groupby("learning_rate"):
                ok = ~g["diverged"].to_numpy(bool)
                med = float(np.median(g["value"][ok])) if ok.all() else np.inf
                stats.append((not ok.all(), med, float(lr)))
            *_, lr = min(stats)
            chosen_loss = loss[loss["learning_rate"] == lr]
            chosen = acc[acc["learning_rate"] == lr]
            finite = ~chosen["diverged"].to_numpy(bool)
            a = chosen["value"].to_numpy(float)[finite]
            init_loss = sub[(sub["metric"] == "init_loss")
                            & (sub["learning_rate"] == sub["learning_rate"].min())]  # fmt: skip
            ratio = init_profile(df, variant, depth, "init_branch_ratio")
            var = 10.0 ** np.median(init_profile(df, variant, depth, "init_log10_var"), axis=0)
            rows.append({
                "variant": variant, "depth": int(depth), "learning_rate": lr,
                "runs": len(chosen), "diverged": int((~finite).sum()),
                "diverged_all": int(loss["diverged"].sum()), "runs_all": len(loss),
                "final_loss": float(np.median(chosen_loss["value"].to_numpy(float)[finite]))
                if finite.any() else np.nan,
                "acc_mean": float(a.mean()) if a.size else np.nan,
                "acc_sd": float(a.std(ddof=1)) if a.size > 1 else np.nan,
                "growth": _zero_if_tiny(
                    growth_rate(init_profile(df, variant, depth, "init_log10_var"))
                ),
                "var_slope": _zero_if_tiny(float(np.polyfit(np.arange(1, depth + 1), var, 1)[0])),
                "var_last": float(var[-1]),
                "conv_grad": float(np.median(conv_grads(df, variant, depth))),
                "ratio_exponent": ratio_exponent(ratio) if np.all(ratio > 0) else np.nan,
                "init_loss": float(np.median(init_loss["value"])),
            })  # fmt: skip
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ figures, tables

_COLOR = {v: gf.plotting.COLORS[i] for v, i in zip(VARIANTS, (1, 0, 2, 3))}
_STYLE = {"none": "-", "batchnorm": "--", "skipinit": "-.", "fixup": ":"}


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    """The headline: (a) average channel variance, (b) average squared channel mean, (c) branch
    to input variance ratio against the block index at init (deepest network), (d) the first
    conv's gradient norm per block at init, (e) test accuracy against depth."""
    df, config = load(results_dir)
    depth = max(int(d) for d in config["depths"])
    variants = list(config["variants"])
    with gf.plotting.style():
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(gf.plotting.WIDTHS["text"], 4.6), layout="constrained")
        top, bottom = fig.subfigures(2, 1)
        ax_v, ax_m, ax_r = top.subplots(1, 3)
        ax_g, ax_a = bottom.subplots(1, 2, width_ratios=[1.5, 1])
        zero_branch, zero_grad = [], []
        for v in variants:
            _draw_init(ax_v, ax_m, ax_r, ax_g, df, v, depth, zero_branch, zero_grad)
        _style_signal(ax_v, ax_m, ax_r, df, variants, depth, zero_branch)
        _style_grads(ax_g, depth, zero_grad)
        _panel_accuracy(ax_a, summary(df, config), variants, config)
        fig.suptitle(
            f"Residual networks on digits (width {config['width']}): signal propagation and "
            f"gradients at initialisation on {config['probe_batch']} images (median, range over "
            f"{config['seeds']} seeds); SGD + momentum for {config['steps']} steps",
            fontsize=7,
        )
        return gf.plotting.savefig(fig, Path(figures_dir) / f"{NAME}_headline")


def _draw_init(ax_v, ax_m, ax_r, ax_g, df, v: str, depth: int, zero_branch, zero_grad) -> None:
    """Variant ``v`` at init in panels (a)-(d); a variant exactly 0 everywhere is noted in
    ``zero_branch`` / ``zero_grad`` instead (nothing to draw on a log axis)."""
    blocks = np.arange(1, depth + 1)
    kw = {"color": _COLOR[v], "ls": _STYLE[v], "label": LABELS[v]}
    for ax, metric in ((ax_v, "init_log10_var"), (ax_m, "init_log10_sq_mean")):
        p = gf.plotting.finite_or_raise(init_profile(df, v, depth, metric), metric)
        gf.plotting.band(ax, blocks, p, q=(0, 100), alpha=0.2, transform=_exp10, **kw)
    r = gf.plotting.finite_or_raise(init_profile(df, v, depth, "init_branch_ratio"),
                                    "branch ratio")  # fmt: skip
    if np.all(r == 0):
        zero_branch.append(LABELS[v])
    else:
        ax_r.plot(blocks, np.median(r, 0), **kw)
    g = gf.plotting.finite_or_raise(conv_grads(df, v, depth), "conv gradients")
    if np.all(g == 0):
        zero_grad.append(LABELS[v])
    else:
        ax_g.plot(blocks, np.median(g, 0), **kw)


def _exp10(x: np.ndarray) -> np.ndarray:
    return 10.0**x


def _style_signal(ax_v, ax_m, ax_r, df, variants: list[str], depth: int, zero_branch) -> None:
    """Panels (a)-(c): the theory lines, log axes, titles and legends."""
    blocks = np.arange(1, depth + 1)
    ax_r.plot(blocks, 1.0 / blocks, color="k", lw=0.8, ls=(0, (1, 2)),
              label="$1/l$ (theory, BatchNorm)")  # fmt: skip
    if "none" in variants:  # Var(x_l) = 2^(l-1) Var(x_1) without normalisation
        v1 = 10.0 ** np.median(init_profile(df, "none", depth, "init_log10_var")[:, 0])
        ax_v.plot(blocks, v1 * 2.0 ** (blocks - 1.0), color="k", lw=0.8, ls=(0, (1, 2)),
                  label="$\\propto 2^l$ (theory, none)")  # fmt: skip
    for ax, title in (
        (ax_v, "(a) average channel variance"),
        (ax_m, "(b) average squared channel mean"),
        (ax_r, "(c) branch / input variance"),
    ):
        ax.set_yscale("log")
        ax.set_xlabel("block $l$")
        ax.set_title(title, loc="left")
    ax_r.set_xscale("log")
    ax_v.set_ylabel("at the end of block $l$ (init)")
    ax_v.legend(fontsize=5.5, loc="upper left")
    if zero_branch:  # nothing to draw on a log axis: say so in the legend
        ax_r.plot([], [], color="none", label=f"{', '.join(zero_branch)}: exactly 0")
    ax_r.legend(fontsize=5.5, loc="lower left")


def _style_grads(ax_g, depth: int, zero_grad: list[str]) -> None:
    """Panel (d): log axes, labels and the legend (naming variants whose gradient is 0)."""
    ax_g.set_yscale("log")
    ax_g.set_xscale("log")
    ax_g.set_xlabel("block $l$")
    ax_g.set_ylabel(r"$\|\partial C/\partial W\|_F$, first conv of block $l$")
    ax_g.set_title(f"(d) gradients at init, depth {depth}", loc="left")
    if zero_grad:
        label = f"{', '.join(zero_grad)}: exactly 0 at every block"
        ax_g.plot([], [], color="none", label=label)
    ax_g.legend(fontsize=5.5, loc="center left")


def _panel_accuracy(ax_a, s: pd.DataFrame, variants: list[str], config: dict) -> None:
    """(e) test accuracy against depth at the best learning rate (x: every seed diverged)."""
    depths = sorted(int(d) for d in config["depths"])
    for v in variants:
        rows = s[s["variant"] == v].set_index("depth").loc[depths]
        ax_a.errorbar(depths, rows["acc_mean"], yerr=rows["acc_sd"].fillna(0.0),
                      color=_COLOR[v], ls=_STYLE[v], marker="o", ms=3, capsize=2,
                      label=LABELS[v])  # fmt: skip
        dead = rows[~np.isfinite(rows["acc_mean"].to_numpy(float))]
        ax_a.plot(dead.index, np.full(len(dead), 0.1), "x", color=_COLOR[v], ms=6)
    ax_a.axhline(0.1, color="0.5", lw=0.6, ls=":")
    ax_a.set_xscale("log")
    ax_a.set_xticks(depths, [str(d) for d in depths])
    ax_a.minorticks_off()
    ax_a.set_ylim(0, 1)
    ax_a.set_xlabel("residual blocks")
    ax_a.set_ylabel("test accuracy (best learning rate)")
    ax_a.set_title("(e) trainability (× every seed diverged)", loc="left")
    ax_a.legend(fontsize=5.5, loc="lower left")


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    """The table (variant, depth, growth, ratio exponent, initial loss, learning rate, accuracy)
    and the macros."""
    df, config = load(results_dir)
    s = summary(df, config)
    rows = []
    for r in s.itertuples():
        acc = "diverged" if not np.isfinite(r.acc_mean) else (
            f"{r.acc_mean:.3f} ± {0.0 if np.isnan(r.acc_sd) else r.acc_sd:.3f}")  # fmt: skip
        rows.append([LABELS[r.variant], r.depth, r.growth,
                     "--" if np.isnan(r.ratio_exponent) else r.ratio_exponent, r.init_loss,
                     r.learning_rate, f"{r.diverged_all}/{r.runs_all}", acc])  # fmt: skip
    columns = ["variant", "blocks", "log2 variance growth / block", "branch ratio exponent",
               "initial loss", "learning rate", "diverged (all rates)",
               "test accuracy"]  # fmt: skip
    out = [gf.experiment.latex_table(rows, columns, Path(tables_dir) / f"{NAME}.tex")]
    p = "residualNormalization"
    depths = sorted(int(d) for d in config["depths"])
    macros = {
        f"{p}Width": config["width"], f"{p}Seeds": config["seeds"],
        f"{p}ProbeBatch": config["probe_batch"], f"{p}Steps": config["steps"],
        f"{p}BatchSize": config["batch_size"], f"{p}Momentum": MOMENTUM,
        f"{p}Depths": ", ".join(str(d) for d in depths), f"{p}DepthMin": depths[0],
        f"{p}DepthMax": depths[-1],
        f"{p}LearningRates": ", ".join(f"{float(r):g}" for r in config["learning_rates"]),
    }  # fmt: skip
    for r in s.itertuples():
        v = r.variant.capitalize()
        for d in [w for w, depth in (("Min", depths[0]), ("Max", depths[-1])) if depth == r.depth]:
            macros[f"{p}Acc{v}{d}"] = r.acc_mean
            macros[f"{p}AccSd{v}{d}"] = r.acc_sd
            macros[f"{p}Lr{v}{d}"] = r.learning_rate
            macros[f"{p}Diverged{v}{d}"] = r.diverged_all
            macros[f"{p}Runs{v}{d}"] = r.runs_all
            macros[f"{p}Growth{v}{d}"] = r.growth
            macros[f"{p}RatioExp{v}{d}"] = r.ratio_exponent
            macros[f"{p}InitLoss{v}{d}"] = r.init_loss
            macros[f"{p}VarSlope{v}{d}"] = r.var_slope
            macros[f"{p}VarLast{v}{d}"] = r.var_last
            macros[f"{p}ConvGrad{v}{d}"] = r.conv_grad
    macros[f"{p}VarSlopeTheory"] = 1.0 - 1.0 / math.pi
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
    order=11,
)
