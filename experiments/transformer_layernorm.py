r"""transformer_layernorm: where the LayerNorm sits decides the gradients of a Transformer at init.

Claim (Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
https://arxiv.org/abs/2002.04745). A Post-LN Transformer block normalises after the residual
sum, :math:`x_{l+1} = \mathrm{LN}(x_l' + \mathrm{FFN}(x_l'))` with
:math:`x_l' = \mathrm{LN}(x_l + \mathrm{Attn}(x_l))`; a Pre-LN block normalises the branch input,
:math:`x_l' = x_l + \mathrm{Attn}(\mathrm{LN}(x_l))`,
:math:`x_{l+1} = x_l' + \mathrm{FFN}(\mathrm{LN}(x_l'))`, with one more LN before the readout.
Theorem 1: at initialisation the gradient of the last FFN layer :math:`W^{2,L}` is
:math:`O(d\sqrt{\ln d})` for Post-LN, independent of the depth :math:`L`, and
:math:`O(d\sqrt{\ln d / L})` for Pre-LN. The mechanism: every Pre-LN block adds to the residual
stream, so :math:`\mathbb{E}\|x_l\|^2` grows linearly in :math:`l` and the final LN divides the
gradient by :math:`\|x_L\| \propto \sqrt{L}`. Their Figure 3: Post-LN gradients grow with the layer
index (largest near the output), Pre-LN gradients stay roughly level; and Post-LN needs a
learning-rate warm-up to train with Adam at the usual rates, while Pre-LN trains without one.

What it measures.

* **Gradients at initialisation.** Post-LN and Pre-LN decoder stacks (:class:`Transformer`:
  token embedding scaled by :math:`\sqrt d` plus sinusoidal positions as in Vaswani et al. 2017,
  causal multi-head self-attention, a ReLU FFN of width ``4 d``, Flax's default initialisers) of
  width ``width`` and depth ``L`` in ``depths``; next-token cross-entropy on ``probe_batch``
  sequences of :func:`gradflow.data.markov_sequences`; :func:`gradflow.probes.probe` gives
  the weight-gradient norm and the per-example error :math:`\|\delta\|` of every layer -- the
  embedding, every block's attention query/key/value/out projections, FFN layers and LayerNorms
  (rows ``blocks/attn/query[l]``, ...), the readout -- in forward order; the mean square of
  the residual stream :math:`\|x_l\|^2/d` after every block is sown in the forward pass. The
  blocks are one :func:`flax.linen.scan`, and one program per architecture serves every depth
  and seed (vmapped): the stack holds ``max(depths)`` blocks and a depth-:math:`L` network skips
  the blocks past :math:`L` (:class:`Transformer`).
* **Warm-up.** A smaller stack (``train_width``, ``train_depth``) trained with Adam (the
  Transformer's :math:`\beta_2 = 0.98`, :math:`\epsilon = 10^{-9}`) at each learning rate of
  ``learning_rates``, with a linear warm-up over ``warmup_steps`` steps and without one (constant
  rate after it), on ``n_train`` sequences (:func:`gradflow.training.train_fn`); seeds, learning
  rates and the warm-up switch are one vmapped program per architecture. A run *trains* when its
  final training loss is below half the uniform guess's :math:`\ln V`; a non-finite loss is
  recorded as divergence by :mod:`gradflow.training`.

Outputs: the headline figure (per-layer FFN gradient norms against the layer index for every
depth; the last FFN layer's gradient against depth with fitted exponents; loss curves at the
largest learning rate with seed bands; final loss against the learning rate), a per-module figure
(every attention and FFN projection against the layer index), two tables and the macros the paper
quotes. The task's loss floor (:attr:`gradflow.data.Sequences.loss_floor`) is marked on the loss
axes.

What the full config finds (the paper's macros hold the numbers): the last FFN layer's gradient
falls close to :math:`L^{-1/2}` for Pre-LN and stays nearly flat, rising slightly, for Post-LN,
while the Pre-LN stream's mean square grows in proportion to :math:`L`; Post-LN's FFN gradients
grow toward the output, Pre-LN's fall toward it (not level as in the paper's Figure 3: the first
blocks normalise a small residual stream); Post-LN's query and key gradients vanish with depth
(rank collapse, Noci et al. 2022, https://arxiv.org/abs/2206.03126). At the largest learning rate
no Post-LN run without warm-up trains -- it stays near :math:`\ln V` without diverging -- while
the runs with warm-up and every Pre-LN run do; at the smaller rates every run trains.

Cost: the init programs run one forward and backward pass per seed; training is
``len(learning_rates) * 2 * seeds`` runs per architecture of ``steps`` minibatch steps. Compile
time dominates: four programs (two probes, two training loops), and the probe's compile time
grows with the depth of the scanned stack.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import gradflow as gf

NAME = "transformer_layernorm"
CLAIM = (
    "At initialisation the gradient of the last FFN layer of a Post-LN Transformer does not "
    "shrink with depth L while a Pre-LN Transformer's falls like 1/sqrt(L) (Theorem 1: "
    "O(d sqrt(ln d)) vs O(d sqrt(ln d / L))), and Post-LN gradients grow toward the output; "
    "trained with Adam, Post-LN needs learning-rate warm-up at the larger rates and Pre-LN does "
    "not."
)
SOURCE = "Xiong et al. 2020; Vaswani et al. 2017"

#: The two placements of the LayerNorm, in display order.
ARCHS: tuple[str, ...] = ("post", "pre")
LABELS = {"post": "Post-LN", "pre": "Pre-LN"}
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu")
LOSS = "softmax_cross_entropy"
#: Adam's second-moment decay and epsilon of the Transformer (Vaswani et al. 2017, section 5.3).
ADAM_B2, ADAM_EPS = 0.98, 1e-9
#: A run "trains" when its final training loss is below this fraction of ln(vocab).
TRAINED_FRACTION = 0.5


@dataclasses.dataclass(frozen=True)
class TransformerLayernormConfig(gf.experiment.Config):
    """Post-LN vs pre-LN Transformers: gradients at initialisation, and training with Adam."""

    vocab: int  # symbols of the order-2 Markov sequences (gradflow.data.markov_sequences)
    length: int  # tokens per sequence
    n_train: int  # training sequences
    n_test: int  # test sequences
    activation: str  # the FFN's activation, one of ACTIVATIONS
    width: int  # model width at initialisation
    heads: int  # attention heads at initialisation
    depths: tuple[int, ...]  # blocks at initialisation
    seeds: int  # random draws at initialisation
    probe_batch: int  # sequences per gradient
    train_width: int  # model width in training
    train_heads: int  # attention heads in training
    train_depth: int  # blocks in training
    train_seeds: int  # random draws in training
    steps: int  # Adam steps
    batch_size: int  # sequences per step
    record_every: int  # steps between records
    learning_rates: tuple[float, ...]  # Adam's rates, each trained
    warmup_steps: int  # linear warm-up (each rate also runs without)

    def __post_init__(self) -> None:
        super().__post_init__()
        ints = (
            ("vocab", 2), ("length", 2), ("n_train", 1), ("n_test", 1), ("width", 2), ("heads", 1),
            ("seeds", 2), ("probe_batch", 1), ("train_width", 2), ("train_heads", 1),
            ("train_depth", 1), ("train_seeds", 1), ("steps", 1), ("batch_size", 1),
            ("record_every", 1), ("warmup_steps", 1),
        )  # fmt: skip
        for key, lo in ints:
            if getattr(self, key) < lo:
                raise ValueError(f"{key} must be an int >= {lo}, got {getattr(self, key)!r}")
        for w, h in (("width", "heads"), ("train_width", "train_heads")):
            wv, hv = getattr(self, w), getattr(self, h)
            if wv % hv or wv % 2:
                raise ValueError(f"{w} ({wv}) must be even and a multiple of {h} ({hv})")
        depths = list(self.depths)
        if len(depths) < 2 or any(d < 1 for d in depths) or len(set(depths)) != len(depths):
            raise ValueError(f"depths must be at least two distinct ints >= 1, got {depths!r}")
        lrs = list(self.learning_rates)
        if not lrs or not all(math.isfinite(r) and r > 0 for r in lrs):
            raise ValueError(f"learning_rates must be positive numbers, got {lrs!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}"
            )
        self._check_steps()

    def _check_steps(self) -> None:
        if self.steps % self.record_every:
            raise ValueError(
                f"steps ({self.steps}) must be a multiple of record_every ({self.record_every})"
            )
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})"
            )
        if self.probe_batch > self.n_train or self.batch_size > self.n_train:
            raise ValueError(
                f"probe_batch ({self.probe_batch}) and batch_size ({self.batch_size}) must not "
                f"exceed n_train ({self.n_train})"
            )

    def check_resources(self) -> None:
        depth = max(self.depths)
        per_net = 12 * self.width**2 + 16 * self.probe_batch * self.length * self.width
        gf.experiment.check_memory(
            f"depths up to {depth} at width={self.width} x seeds={self.seeds}",
            4 * 4 * self.seeds * depth * per_net,
        )


FULL = TransformerLayernormConfig(
    vocab=16,
    length=16,
    n_train=512,
    n_test=256,
    activation="relu",
    width=64,
    heads=4,
    depths=(6, 12, 24, 48),
    seeds=8,
    probe_batch=8,
    train_width=32,
    train_heads=2,
    train_depth=6,
    train_seeds=3,
    steps=300,
    batch_size=16,
    record_every=25,
    learning_rates=(1e-3, 3e-3, 1e-2),
    warmup_steps=75,
)
QUICK = dataclasses.replace(
    FULL,
    depths=(3, 6, 12),
    seeds=4,
    train_seeds=2,
    steps=150,
    learning_rates=(1e-2,),
    warmup_steps=50,
)


# ------------------------------------------------------------------------------------- model


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
    r"""Vaswani et al. (2017, section 3.5) positional encodings, ``(length, width)`` float32:
    :math:`PE_{t, 2i} = \sin(t / 10000^{2i/d})`, :math:`PE_{t, 2i+1} = \cos(t / 10000^{2i/d})`."""
    t = np.arange(length, dtype=np.float64)[:, None]
    i = np.arange(width // 2, dtype=np.float64)[None, :]
    angle = t / 10000.0 ** (2.0 * i / width)
    pe = np.zeros((length, width))
    pe[:, 0::2], pe[:, 1::2] = np.sin(angle), np.cos(angle)
    return pe.astype(np.float32)


class Block(nn.Module):
    """One Transformer block as a :func:`flax.linen.scan` body:
    ``(x, mask, active) -> (x', None)``.

    Causal multi-head self-attention (``attn``: query/key/value/out projections) and an FFN
    (``ffn_in`` of width ``ffn``, the activation, ``ffn_out``), each on a residual path with a
    LayerNorm (``ln_attn``, ``ln_ffn``) after the sum (``pre_ln=False``, Post-LN) or on the
    branch input (``pre_ln=True``, Pre-LN). ``active`` (a scalar bool) False makes the block the
    identity. Sows ``stream_sq``, the mean square of the block's output over the batch, positions
    and features, into ``intermediates``.
    """

    width: int
    heads: int
    ffn: int
    pre_ln: bool
    activation: str = "relu"

    @nn.compact
    def __call__(self, x, mask, active):
        x_in = x
        attn = nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attn")
        ffn_in = nn.Dense(self.ffn, name="ffn_in")
        ffn_out = nn.Dense(self.width, name="ffn_out")
        ln_attn, ln_ffn = nn.LayerNorm(name="ln_attn"), nn.LayerNorm(name="ln_ffn")
        act = getattr(nn, self.activation)

        def ffn(h):
            return ffn_out(act(ffn_in(h)))

        if self.pre_ln:
            h = ln_attn(x)
            x = x + attn(h, h, mask=mask)
            x = x + ffn(ln_ffn(x))
        else:
            x = ln_attn(x + attn(x, x, mask=mask))
            x = ln_ffn(x + ffn(x))
        x = jnp.where(active, x, x_in)
        self.sow("intermediates", "stream_sq", jnp.mean(jnp.square(x)))
        return x, None


class Transformer(nn.Module):
    """A decoder-only Transformer: ``tokens (..., T) int -> logits (..., T, vocab)``.

    The token embedding (Flax's default :math:`N(0, 1/d)`) times :math:`\\sqrt d` plus sinusoidal
    positions (:func:`sinusoidal_positions`), ``depth`` :class:`Block` s as one
    :func:`flax.linen.scan` named ``blocks`` (parameters stacked on a leading axis of length
    ``depth``), a final LayerNorm ``ln_final`` for Pre-LN, and a Dense ``readout``. Every other
    initialiser is Flax's default (LeCun normal kernels, zero biases, unit LayerNorm scales).

    ``__call__(tokens, depth=None)``: with an int ``depth`` :math:`L` (may be traced) only the
    first :math:`L` blocks run and the others are the identity, so one compiled program serves
    every depth up to ``self.depth``; as every block is initialised from its own key, the network
    it computes is distributed as a freshly initialised :math:`L`-block one (the skipped blocks'
    parameters get zero gradients).
    """

    vocab: int
    width: int
    heads: int
    depth: int
    pre_ln: bool
    activation: str = "relu"

    @nn.compact
    def __call__(self, tokens, depth=None):
        x = nn.Embed(self.vocab, self.width, name="embed")(tokens) * math.sqrt(self.width)
        x = x + sinusoidal_positions(tokens.shape[-1], self.width)
        mask = nn.make_causal_mask(tokens)
        stack = nn.scan(
            Block,
            variable_axes={"params": 0, "intermediates": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, 0),
            length=self.depth,
        )
        block = stack(self.width, self.heads, 4 * self.width, self.pre_ln, self.activation,
                      name="blocks")  # fmt: skip
        active = jnp.arange(self.depth) < (self.depth if depth is None else depth)
        x, _ = block(x, mask, active)
        if self.pre_ln:
            x = nn.LayerNorm(name="ln_final")(x)
        return nn.Dense(self.vocab, name="readout")(x)


def model(arch: str, width: int, heads: int, depth: int, vocab: int, activation: str = "relu"):
    """The :class:`Transformer` of ``arch`` (``"post"`` or ``"pre"``)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; valid: {', '.join(ARCHS)}")
    return Transformer(vocab=vocab, width=width, heads=heads, depth=depth, pre_ln=arch == "pre",
                       activation=activation)  # fmt: skip


# ------------------------------------------------------------------------------------- sweeps


@functools.cache
def task(vocab: int, length: int, n_train: int, n_test: int) -> gf.data.Sequences:
    """The next-token task: order-2 :func:`gradflow.data.markov_sequences` drawn from key 0."""
    with jax.ensure_compile_time_eval():  # a concrete key, also when first called under a trace
        key = jax.random.key(0)
    return gf.data.markov_sequences(key, n_train, n_test, length, vocab=vocab)


def _task(config: TransformerLayernormConfig) -> gf.data.Sequences:
    return task(config.vocab, config.length, config.n_train, config.n_test)


def _stored_task(config: dict) -> gf.data.Sequences:
    """The task of a stored config (:func:`load`)."""
    return task(config["vocab"], config["length"], config["n_train"], config["n_test"])


def _probe_batch(config: TransformerLayernormConfig) -> tuple[jax.Array, jax.Array]:
    data = _task(config)
    n = config.probe_batch
    return jnp.asarray(data.x_train[:n]), jnp.asarray(data.y_train[:n])


def _init_probe(config: TransformerLayernormConfig, arch: str, key: jax.Array, depth) -> tuple:
    """``(probe report, stream mean squares (max_depth,))`` of a freshly initialised network of
    ``depth`` blocks (may be traced: the stack holds ``max(depths)`` and skips the rest)."""
    x, y = _probe_batch(config)
    max_depth = max(int(d) for d in config.depths)
    net = model(arch, config.width, config.heads, max_depth, config.vocab,
                config.activation)  # fmt: skip
    params = net.init(key, x[:1])["params"]
    report = gf.probes.probe(
        lambda p, tokens: net.apply({"params": p}, tokens, depth=depth), params, x, y, LOSS
    )
    _, state = net.apply({"params": params}, x, depth=depth, mutable=["intermediates"])
    return report, state["intermediates"]["blocks"]["stream_sq"][0]


def layers(config: TransformerLayernormConfig, arch: str) -> list[tuple[str, str]]:
    """``(name, kind)`` of the probe's rows for ``arch``, forward order (``blocks/ffn_out[3]``:
    block 3's FFN output layer), from the traced program alone (nothing is computed)."""
    out = jax.eval_shape(lambda k: _init_probe(config, arch, k, 1)[0], jax.random.key(0))
    return [(str(n), str(k)) for n, k in zip(out.layer_names, out.layer_kinds)]


def _init_fn(config: TransformerLayernormConfig, rows: dict):
    def fn(hparams, key):
        report, stream_sq = _init_probe(config, hparams["arch"], key, hparams["depth"])
        # the row names are static: note them while the sweep traces fn (no second trace)
        names = zip(report.layer_names, report.layer_kinds)
        rows[hparams["arch"]] = [(str(n), str(k)) for n, k in names]
        return {
            "weight_grad_norm": report.weight_grad_norm,
            "preact_grad_norm": report.preact_grad_norm,
            "stream_sq": stream_sq,
            "loss": report.loss,
        }

    return fn


def adam_with_warmup(hparams) -> optax.GradientTransformation:
    r"""Adam (:math:`\beta_2` = :data:`ADAM_B2`, :math:`\epsilon` = :data:`ADAM_EPS`) at
    ``hparams["learning_rate"]`` :math:`\eta`, warmed up linearly over
    ``hparams["warmup_steps"]`` :math:`W` steps: step :math:`t` (from 0) uses
    :math:`\eta \min(1, (t + 1)/\max(W, 1))`, so :math:`W = 0` is a constant rate. Both may be
    traced (one program for every rate and both warm-ups)."""
    lr, warmup = hparams["learning_rate"], hparams["warmup_steps"]

    def schedule(count):
        return lr * jnp.minimum(1.0, (count + 1.0) / jnp.maximum(warmup, 1.0))

    return optax.adam(schedule, b2=ADAM_B2, eps=ADAM_EPS)


def _train_fn(config: TransformerLayernormConfig):
    data = _task(config)

    @functools.cache
    def trainer(arch: str):
        net = model(arch, config.train_width, config.train_heads, config.train_depth,
                    config.vocab, config.activation)  # fmt: skip
        cfg = gf.training.TrainConfig(
            model=net,
            optimizer=adam_with_warmup,
            loss=LOSS,
            steps=config.steps,
            batch_size=config.batch_size,
            record_every=config.record_every,
        )
        return gf.training.train_fn(cfg, data)

    def fn(hparams, key):
        out = trainer(hparams["arch"])(hparams, key)
        keep = ("loss", "test_loss", "test_accuracy", "diverged_step")
        return {k: out[k] for k in keep}

    return fn


def run(config: TransformerLayernormConfig, results_dir: Path) -> None:
    """The init sweep (architecture x depth x seeds) and the training sweep (architecture x
    learning rate x warm-up x seeds)."""
    config.check_resources()
    results_dir = Path(results_dir)
    rows: dict = {}
    gf.sweep.run(
        _init_fn(config, rows),
        grid={"arch": list(ARCHS), "depth": [int(d) for d in config.depths]},
        seeds=range(config.seeds),
        workdir=results_dir / "init",
        axes={
            "weight_grad_norm": ("layer",),
            "preact_grad_norm": ("layer",),
            "stream_sq": ("block",),
            "loss": (),
        },
        name=f"{NAME}/init",
        config=config.to_dict(),
    )
    for arch in ARCHS:  # a sweep resumed from a complete store traced nothing
        if arch not in rows:
            rows[arch] = layers(config, arch)
    gf.experiment.write_atomic(results_dir / "layers.json", json.dumps(rows))
    gf.sweep.run(
        _train_fn(config),
        grid={
            "arch": list(ARCHS),
            "learning_rate": [float(r) for r in config.learning_rates],
            "warmup_steps": [0.0, float(config.warmup_steps)],
        },
        seeds=range(config.train_seeds),
        workdir=results_dir / "training",
        axes={"loss": ("step",), "test_loss": ("step",), "test_accuracy": ("step",)},
        name=f"{NAME}/training",
        config=config.to_dict(),
    )


# ------------------------------------------------------------------------------ reading results


def load(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """``(init table, training table, config)`` as saved; the init table's ``layer`` index is
    named by the probe's rows, ``init.attrs["layers"]`` (``{arch: [(name, kind), ...]}``)."""
    results_dir = Path(results_dir)
    init = gf.sweep.load(results_dir / "init")
    init.attrs["layers"] = json.loads((results_dir / "layers.json").read_text())
    train = gf.sweep.load(results_dir / "training")
    config = gf.experiment.stored_config(results_dir / "init")
    return init, train, config


def grad_profile(init: pd.DataFrame, arch: str, depth: int, module: str,
                 metric: str = "weight_grad_norm") -> np.ndarray:  # fmt: skip
    """``(seeds, depth)``: the probe's ``metric`` (``weight_grad_norm`` or ``preact_grad_norm``)
    of ``module`` (e.g. ``"ffn_out"``, ``"attn/query"``) in each of the ``depth`` blocks, one row
    per seed."""
    names = [n for n, _ in init.attrs["layers"][arch]]
    index = [names.index(f"blocks/{module}[{b}]") for b in range(depth)]
    sub = init[(init["arch"] == arch) & (init["depth"] == depth) & (init["metric"] == metric)]
    values, at = gf.sweep.to_arrays(sub, ("seed", "layer"))
    return values[:, np.searchsorted(at["layer"], index)]


def stream_profile(init: pd.DataFrame, arch: str, depth: int) -> np.ndarray:
    """``(seeds, depth)``: the residual stream's mean square after each of the ``depth``
    blocks."""
    sub = init[(init["arch"] == arch) & (init["depth"] == depth) & (init["metric"] == "stream_sq")]
    return gf.sweep.to_arrays(sub, ("seed", "block"))[0][:, :depth]


def fit_exponent(depths: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    r"""Least-squares slope of :math:`\log v` against :math:`\log L` over every (depth, seed)
    point, and its standard error: ``values`` is ``(len(depths), seeds)``."""
    depths = np.asarray(depths, float)
    values = np.asarray(values, float)
    x = np.repeat(np.log(depths), values.shape[1])
    y = np.log(values).ravel()
    (slope, intercept), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)
    dof = max(len(x) - 2, 1)
    resid = y - (slope * x + intercept)
    se = math.sqrt(float(resid @ resid) / dof / float(np.sum((x - x.mean()) ** 2)))
    return float(slope), se


def init_summary(init: pd.DataFrame, config: dict) -> pd.DataFrame:
    """One row per (arch, depth): the last FFN layer's gradient (median, quartiles over seeds),
    the ratio of the last block's FFN gradient to the first block's (median over seeds), and the
    residual stream's mean square after the last block (median)."""
    rows = []
    for arch in ARCHS:
        for depth in config["depths"]:
            g = grad_profile(init, arch, depth, "ffn_out")
            s = stream_profile(init, arch, depth)
            q1, med, q3 = np.percentile(g[:, -1], [25, 50, 75])
            rows.append({
                "arch": arch, "depth": int(depth), "last_ffn": med, "last_ffn_q1": q1,
                "last_ffn_q3": q3, "last_over_first": float(np.median(g[:, -1] / g[:, 0])),
                "stream_sq_last": float(np.median(s[:, -1])),
            })  # fmt: skip
    return pd.DataFrame(rows)


def exponents(init: pd.DataFrame, config: dict) -> dict[str, tuple[float, float]]:
    """``{arch: (slope, se)}`` of the last FFN layer's gradient norm against depth (log-log)."""
    depths = np.asarray(config["depths"], float)
    out = {}
    for arch in ARCHS:
        vals = np.stack([grad_profile(init, arch, int(d), "ffn_out")[:, -1] for d in depths])
        out[arch] = fit_exponent(depths, vals)
    return out


def trained_threshold(config: dict) -> float:
    """Final training loss below which a run counts as trained: half of ln(vocab)."""
    return TRAINED_FRACTION * math.log(config["vocab"])


def train_summary(train: pd.DataFrame, config: dict) -> pd.DataFrame:
    """One row per (arch, learning rate, warm-up): seeds, diverged, trained (final training loss
    below :func:`trained_threshold`), median final training loss of the finite runs, mean final
    test accuracy of the finite runs."""
    last = int(train.loc[train["metric"] == "loss", "step"].max())
    fin = train[train["step"] == last]
    rows = []
    threshold = trained_threshold(config)
    for (arch, lr, warm), g in fin.groupby(["arch", "learning_rate", "warmup_steps"],
                                           sort=False):  # fmt: skip
        loss = g[g["metric"] == "loss"].sort_values("seed")
        acc = g[g["metric"] == "test_accuracy"].sort_values("seed")
        finite = ~loss["diverged"].to_numpy(bool)
        lv = loss["value"].to_numpy(float)
        rows.append({
            "arch": arch, "learning_rate": float(lr), "warmup_steps": int(warm),
            "seeds": len(lv), "diverged": int((~finite).sum()),
            "trained": int(np.sum(finite & (lv < threshold))),
            "final_loss": float(np.median(lv[finite])) if finite.any() else np.nan,
            "test_accuracy": float(np.mean(acc["value"].to_numpy(float)[finite]))
            if finite.any() else np.nan,
        })  # fmt: skip
    order = {a: i for i, a in enumerate(ARCHS)}
    df = pd.DataFrame(rows)
    df = df.sort_values(["arch", "warmup_steps", "learning_rate"],
                        key=lambda c: c.map(order) if c.name == "arch" else c)  # fmt: skip
    return df.reset_index(drop=True)


def curves(train: pd.DataFrame, config: dict, arch: str, lr: float, warmup: int,
           metric: str = "loss"):  # fmt: skip
    """``(steps, values)``: the training step of each record ``(R,)`` (record ``r`` is taken after
    step ``(r + 1) * record_every``) and the records of every seed ``(seeds, R)`` (NaN after a
    divergence)."""
    sub = train[(train["arch"] == arch) & (train["learning_rate"] == lr)
                & (train["warmup_steps"] == warmup) & (train["metric"] == metric)]  # fmt: skip
    values, at = gf.sweep.to_arrays(sub, ("seed", "step"))
    return (at["step"] + 1) * int(config["record_every"]), values


# ------------------------------------------------------------------------------ figures, tables

_ARCH_COLOR = {"post": gf.plotting.COLORS[1], "pre": gf.plotting.COLORS[0]}
_ARCH_STYLE = {"post": "-", "pre": "--"}


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    """The headline figure (a-d) and the per-module gradient profiles."""
    init, train, config = load(results_dir)
    out = _plot_headline(init, train, config, Path(figures_dir))
    out += _plot_modules(init, config, Path(figures_dir))
    return out


def _plot_headline(init, train, config, figures_dir: Path) -> list[Path]:
    """(a) gradient by block, (b) the last FFN layer against depth, (c) loss curves, (d) final
    loss against the learning rate."""
    data = _stored_task(config)
    with gf.plotting.style():
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 2, figsize=(gf.plotting.WIDTHS["text"], 4.6),
                                 layout="constrained")  # fmt: skip
        (ax_p, ax_l), (ax_c, ax_r) = axes
        _panel_by_block(ax_p, init, config)
        _panel_by_depth(ax_l, init, config)
        _panel_curves(ax_c, train, config, data.loss_floor)
        _panel_final(ax_r, train, config, data.loss_floor)
        fig.suptitle(
            f"Post-LN vs Pre-LN Transformers. (a, b) width {config['width']}, {config['seeds']} "
            f"seeds at initialisation; (c, d) width {config['train_width']}, "
            f"{config['train_depth']} blocks, {config['train_seeds']} seeds, linear warm-up over "
            f"{config['warmup_steps']} steps.\nGrey lines: dotted, the task's loss floor; "
            "dashed, ln V (a uniform guess); dash-dot, the threshold below which a run counts as "
            "trained.",
            fontsize=7,
        )
        return gf.plotting.savefig(fig, figures_dir / f"{NAME}_headline")


def _panel_by_block(ax_p, init, config: dict) -> None:
    """(a) ffn_out gradient norm against the block index (median over seeds), every depth."""
    from matplotlib.lines import Line2D

    depths = [int(d) for d in config["depths"]]
    colors = gf.plotting.layer_colors(len(depths))
    for c, depth in zip(colors, depths):
        for arch in ARCHS:
            g = gf.plotting.finite_or_raise(
                grad_profile(init, arch, depth, "ffn_out"), f"{arch} L={depth} gradients"
            )
            ax_p.plot(np.arange(1, depth + 1), np.median(g, 0), color=c,
                      ls=_ARCH_STYLE[arch], lw=1.1)  # fmt: skip
    ax_p.set_xscale("log")
    ax_p.set_yscale("log")
    ax_p.set_xlabel("block index $l$")
    ax_p.set_ylabel(r"$\|\partial C/\partial W^{2,l}\|_F$ (FFN out)")
    ax_p.set_title("(a) FFN output layer's gradient by block, at init (median)", loc="left")
    handles = [Line2D([], [], color="0.3", ls=_ARCH_STYLE[a], label=LABELS[a]) for a in ARCHS]
    handles += [Line2D([], [], color=c, label=f"L = {d}") for c, d in zip(colors, depths)]
    ax_p.legend(handles=handles, fontsize=6, ncols=2, loc="lower left")


def _panel_by_depth(ax_l, init, config: dict) -> None:
    """(b) the last FFN layer's gradient against depth, seeds and fitted power law."""
    depths = [int(d) for d in config["depths"]]
    slopes = exponents(init, config)
    ls = np.asarray(depths, float)
    for arch in ARCHS:
        vals = np.stack([grad_profile(init, arch, d, "ffn_out")[:, -1] for d in depths])
        color = _ARCH_COLOR[arch]
        for d, v in zip(depths, vals):
            ax_l.plot(np.full(v.size, d), v, "o", color=color, ms=2.2, alpha=0.5, mfc="none",
                      mew=0.6)  # fmt: skip
        ax_l.plot(ls, np.median(vals, 1), "o", color=color, ms=4)
        slope, se = slopes[arch]
        fit = np.exp(np.mean(np.log(vals)) + slope * (np.log(ls) - np.mean(np.log(ls))))
        ax_l.plot(ls, fit, color=color, ls=_ARCH_STYLE[arch],
                  label=f"{LABELS[arch]}: $L^{{{slope:.2f} \\pm {se:.2f}}}$")  # fmt: skip
    ax_l.set_xscale("log")
    ax_l.set_yscale("log")
    ax_l.set_xticks(ls, [str(d) for d in depths])
    ax_l.minorticks_off()
    ax_l.set_xlabel("depth $L$ (blocks)")
    ax_l.set_ylabel(r"$\|\partial C/\partial W^{2,L}\|_F$ (last FFN layer)")
    ax_l.set_title("(b) the last FFN layer against depth (○ a seed, ● median)", loc="left")
    ax_l.legend(fontsize=6, loc="lower left")


def _panel_curves(ax_c, train, config: dict, loss_floor: float) -> None:
    """(c) loss curves at the largest learning rate, with and without warm-up."""
    lr_max = max(float(r) for r in config["learning_rates"])
    warm = int(config["warmup_steps"])
    for arch in ARCHS:
        for w, alpha in ((0, 1.0), (warm, 0.55)):
            steps, vals = curves(train, config, arch, lr_max, w)
            ok = np.all(np.isfinite(vals), axis=1)
            label = f"{LABELS[arch]}, {'warm-up' if w else 'no warm-up'}"
            if not ok.any():
                ax_c.plot([], [], color=_ARCH_COLOR[arch], label=f"{label} (every seed diverged)")
                continue
            gf.plotting.band(ax_c, steps, vals[ok], q=(0, 100), color=_ARCH_COLOR[arch],
                             alpha=0.15 * alpha, ls="-" if w == 0 else ":", line_alpha=alpha,
                             label=label)  # fmt: skip
    ax_c.axhline(loss_floor, color="0.5", lw=0.6, ls=":")
    ax_c.axhline(math.log(config["vocab"]), color="0.5", lw=0.6, ls="--")
    ax_c.axvline(warm, color="0.7", lw=0.5)
    ax_c.set_yscale("log")
    ax_c.set_xlim(0, config["steps"])
    ax_c.set_xlabel("training step")
    ax_c.set_ylabel("training loss (nats/token)")
    ax_c.set_title(f"(c) training loss, Adam at learning rate {lr_max:g} (median, range)",
                   loc="left")  # fmt: skip
    ax_c.legend(fontsize=6, loc="lower left")


def _panel_final(ax_r, train, config: dict, loss_floor: float) -> None:
    """(d) final training loss against the learning rate (every seed; median line)."""
    s = train_summary(train, config)
    last = int(train.loc[train["metric"] == "loss", "step"].max())
    fin = train[(train["metric"] == "loss") & (train["step"] == last)]
    for arch in ARCHS:
        for w in (0, int(config["warmup_steps"])):
            rows = s[(s["arch"] == arch) & (s["warmup_steps"] == w)]
            ax_r.plot(rows["learning_rate"], rows["final_loss"], color=_ARCH_COLOR[arch],
                      ls="-" if w == 0 else ":", marker="o" if w == 0 else "s", ms=3,
                      label=f"{LABELS[arch]}, {'warm-up' if w else 'none'}")  # fmt: skip
            pts = fin[(fin["arch"] == arch) & (fin["warmup_steps"] == w) & ~fin["diverged"]]
            ax_r.plot(pts["learning_rate"], pts["value"], "o" if w == 0 else "s",
                      color=_ARCH_COLOR[arch], ms=2, alpha=0.4, mfc="none", mew=0.5)  # fmt: skip
            div = rows[rows["diverged"] > 0]
            ax_r.plot(div["learning_rate"], np.full(len(div), math.log(config["vocab"])),
                      "x", color=_ARCH_COLOR[arch], ms=5)  # fmt: skip
    ax_r.axhline(loss_floor, color="0.5", lw=0.6, ls=":")
    ax_r.axhline(trained_threshold(config), color="0.5", lw=0.6, ls="-.")
    ax_r.axhline(math.log(config["vocab"]), color="0.5", lw=0.6, ls="--")
    ax_r.set_xscale("log")
    ax_r.set_yscale("log")
    ax_r.set_xlabel("peak learning rate")
    ax_r.set_ylabel(f"training loss after {config['steps']} steps")
    ax_r.set_title("(d) final training loss by learning rate (× diverged)", loc="left")
    ax_r.legend(fontsize=6, loc="lower right")


#: The projections of the per-module figure (the key's gradient tracks the query's).
MODULES: tuple[str, ...] = ("attn/query", "attn/value", "attn/out", "ffn_in", "ffn_out")


def _plot_modules(init, config, figures_dir: Path) -> list[Path]:
    depths = [int(d) for d in config["depths"]]
    colors = gf.plotting.layer_colors(len(depths))
    with gf.plotting.style():
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, len(MODULES), figsize=(gf.plotting.WIDTHS["text"], 3.3),
                                 sharex=True, sharey=True, layout="constrained")  # fmt: skip
        for i, arch in enumerate(ARCHS):
            for j, module in enumerate(MODULES):
                ax = axes[i, j]
                for c, depth in zip(colors, depths):
                    g = gf.plotting.finite_or_raise(grad_profile(init, arch, depth, module),
                                                    f"{arch} {module}")  # fmt: skip
                    x = np.arange(1, depth + 1) / depth
                    gf.plotting.band(ax, x, g, q=(25, 75), color=c, alpha=0.2, lw=1,
                                     label=f"L = {depth}")  # fmt: skip
                ax.set_yscale("log")
                if i == 0:
                    ax.set_title(module, loc="left")
                if i == 1:
                    ax.set_xlabel("$l/L$")
                if j == 0:
                    ax.set_ylabel(f"{LABELS[arch]}\n" + r"$\|\partial C/\partial W\|_F$")
        axes[0, 0].legend(fontsize=5.5)
        fig.suptitle(
            f"Weight-gradient norm of every projection at initialisation against the relative "
            f"block index l/L (median and quartiles over {config['seeds']} seeds; width "
            f"{config['width']})",
            fontsize=7,
        )
        return gf.plotting.savefig(fig, figures_dir / f"{NAME}_modules")


def _macro_prefix() -> str:
    return "transformerLayernorm"


def summary(results_dir: Path) -> dict:
    """The numbers the paper quotes (macro name without prefix -> value)."""
    init, train, config = load(results_dir)
    s = init_summary(init, config).set_index(["arch", "depth"])
    t = train_summary(train, config)
    slopes = exponents(init, config)
    depths = [int(d) for d in config["depths"]]
    lo, hi = min(depths), max(depths)
    lr_max = max(float(r) for r in config["learning_rates"])
    m = {
        "Width": config["width"], "Heads": config["heads"], "Seeds": config["seeds"],
        "Depths": ", ".join(str(d) for d in depths), "DepthMin": lo, "DepthMax": hi,
        "ProbeBatch": config["probe_batch"], "Vocab": config["vocab"],
        "Length": config["length"], "NTrain": config["n_train"],
        "TrainWidth": config["train_width"], "TrainHeads": config["train_heads"],
        "TrainDepth": config["train_depth"], "TrainSeeds": config["train_seeds"],
        "Steps": config["steps"], "BatchSize": config["batch_size"],
        "Warmup": config["warmup_steps"],
        "LearningRates": ", ".join(f"{float(r):g}" for r in config["learning_rates"]),
        "LrMax": lr_max, "LossFloor": _stored_task(config).loss_floor,
        "LossUniform": math.log(config["vocab"]), "Threshold": trained_threshold(config),
        "AdamBetaTwo": ADAM_B2, "AdamEps": ADAM_EPS,
    }  # fmt: skip
    for arch in ARCHS:
        a = arch.capitalize()
        slope, se = slopes[arch]
        m[f"Slope{a}"] = slope
        m[f"SlopeSe{a}"] = se
        m[f"LastFfn{a}Min"] = s.loc[(arch, lo), "last_ffn"]
        m[f"LastFfn{a}Max"] = s.loc[(arch, hi), "last_ffn"]
        m[f"LastFfn{a}Ratio"] = s.loc[(arch, hi), "last_ffn"] / s.loc[(arch, lo), "last_ffn"]
        m[f"LastOverFirst{a}Min"] = s.loc[(arch, lo), "last_over_first"]
        m[f"LastOverFirst{a}Max"] = s.loc[(arch, hi), "last_over_first"]
        m[f"Stream{a}Min"] = s.loc[(arch, lo), "stream_sq_last"]
        m[f"Stream{a}Max"] = s.loc[(arch, hi), "stream_sq_last"]
        for w, wname in ((0, "NoWarmup"), (int(config["warmup_steps"]), "Warmup")):
            row = t[(t["arch"] == arch) & (t["warmup_steps"] == w)
                    & (t["learning_rate"] == lr_max)].iloc[0]  # fmt: skip
            m[f"Trained{a}{wname}"] = int(row["trained"])
            m[f"Diverged{a}{wname}"] = int(row["diverged"])
            m[f"Loss{a}{wname}"] = row["final_loss"]
            m[f"Acc{a}{wname}"] = row["test_accuracy"]
            m[f"Runs{a}{wname}"] = int(row["seeds"])
        for depth, which in ((lo, "Min"), (hi, "Max")):
            q = grad_profile(init, arch, depth, "attn/query")
            m[f"Query{a}{which}"] = float(np.median(np.mean(q, axis=1)))
    below = t[(t["arch"] == "post") & (t["warmup_steps"] == 0) & (t["learning_rate"] < lr_max)]
    m["PostNoWarmupBelowTrained"] = int(below["trained"].sum())
    m["PostNoWarmupBelowRuns"] = int(below["seeds"].sum())
    return m


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    """The init table (arch, depth, last FFN gradient, last/first, stream), the training table
    and the macros."""
    init, train, config = load(results_dir)
    tables_dir = Path(tables_dir)
    s = init_summary(init, config)
    rows = [
        [LABELS[r.arch], r.depth, r.last_ffn, f"{r.last_ffn_q1:.3g}--{r.last_ffn_q3:.3g}",
         r.last_over_first, r.stream_sq_last]
        for r in s.itertuples()
    ]  # fmt: skip
    columns = ["stack", "depth L", "last FFN |grad| (median)", "quartiles",
               "last/first block", "stream mean square"]  # fmt: skip
    out = [gf.experiment.latex_table(rows, columns, tables_dir / f"{NAME}.tex")]
    t = train_summary(train, config)
    rows = [
        [LABELS[r.arch], "yes" if r.warmup_steps else "no", r.learning_rate,
         f"{r.trained}/{r.seeds}", f"{r.diverged}/{r.seeds}", r.final_loss, r.test_accuracy]
        for r in t.itertuples()
    ]  # fmt: skip
    columns = ["stack", "warm-up", "learning rate", "trained", "diverged",
               "final loss (median)", "test accuracy"]  # fmt: skip
    out.append(gf.experiment.latex_table(rows, columns, tables_dir / f"{NAME}_training.tex"))
    macros = {_macro_prefix() + k: v for k, v in summary(results_dir).items()}
    out.append(gf.experiment.write_macros(tables_dir / f"{NAME}_macros.tex", macros))
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
    order=10,
)
