r"""chain_anatomy: closed-form chain gradients vs autodiff, layer by layer; where float32 fails.

Claim (seeds 001, 002; Nielsen ch. 5; Saxe et al. 2014): in a one-neuron-per-layer chain
:math:`z_j = w_j a_{j-1} + b_j`, :math:`a_j = \phi(z_j)`, the gradient is the product

.. math::

    \frac{\partial C}{\partial b_j}
      = \phi'(z_j) \prod_{k=j+1}^{L} w_k \phi'(z_k)\, \frac{\partial C}{\partial a_L},

so it shrinks or grows geometrically with the number of factors :math:`L - j + 1`:

(a) sigmoid chains with :math:`w, b \sim N(0, 1)` vanish (each factor is :math:`|w|\sigma'(z)`,
    typically far below 1; :math:`\sigma' \le 1/4`);
(b) the exploding chain :math:`w_j = 100`, :math:`b_j = -100 a_{j-1}` keeps every :math:`z_j = 0`,
    so every factor is exactly :math:`100 \cdot \sigma'(0) = 25`;
(c) a deep linear net with :math:`W_l = gI` multiplies signals by :math:`g^L` forward and
    gradients by :math:`g^{L-l}` backward: :math:`2^{100} \approx 1.3\times10^{30}` for
    :math:`g = 2` over 100 layers, :math:`0.5^{100} \approx 7.9\times10^{-31}` for :math:`g = 0.5`.

What it measures, per layer: the closed form (:func:`gradflow.analytic.chain_grads`,
:func:`gradflow.analytic.mlp_grads`) and ``jax.grad`` in float32, the log-domain gradient
(:func:`gradflow.analytic.chain_log_grads`) in float32 and float64, and the analytic gains
(:func:`gradflow.analytic.deep_linear_gain`). float32 autodiff underflows to exactly 0 once the
product falls below the smallest normal float32, :math:`2^{-126} \approx 1.2\times10^{-38}` (XLA
on CPU flushes subnormals to zero), and overflows to ``inf`` above
:math:`\approx 3.4\times10^{38}`; the log-domain values stay finite and accurate at every depth. A
gradient that under- or overflowed is stored with its state (``-1`` underflow to 0, ``+1``
overflow to inf, ``0`` finite and nonzero) and a log value of 0, never as NaN or inf, so the sweep
store keeps every run.

Three sweeps through :func:`gradflow.sweep.run`: ``sigmoid`` (seeds vmapped), ``exploding``
(weight static: the construction is built in float64 NumPy), ``linear`` (gain, depth static).
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

NAME = "chain_anatomy"
CLAIM = (
    "Closed-form chain gradients equal autodiff layer by layer; sigmoid chains with N(0, 1) "
    "weights vanish geometrically, the w = 100 chain explodes by exactly 25 per layer, W = 2I and "
    "0.5I over 100 layers scale gradients by 2^100 and 0.5^100; float32 autodiff underflows to 0 "
    "or overflows to inf at a finite depth where the log-domain values stay finite."
)
SOURCE = (
    "seeds 001, 002; Nielsen, Neural Networks and Deep Learning, ch. 5; Saxe, McClelland & "
    "Ganguli 2014"
)


@dataclasses.dataclass(frozen=True)
class ChainAnatomyConfig(gf.experiment.Config):
    """The three chains: sigmoid (underflow), exploding (overflow), deep linear (both)."""

    sigmoid_depth: int  # layers of the sigmoid chains
    sigmoid_seeds: int  # random sigmoid chains
    exploding_depth: int  # layers of the exploding chains
    exploding_weights: tuple[float, ...]  # the exploding chains' weight w
    exploding_x: float  # their input (dyadic: exactly representable in float32)
    linear_depths: tuple[int, ...]  # depths of the deep linear networks
    linear_gains: tuple[float, ...]  # their orthogonal weights' gains
    linear_width: int  # their width

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("sigmoid_depth", "exploding_depth", "sigmoid_seeds", "linear_width"):
            if getattr(self, key) < 2:
                raise ValueError(f"{key} must be >= 2, got {getattr(self, key)}")
        if not self.linear_depths or not all(d >= 2 for d in self.linear_depths):
            raise ValueError(f"linear_depths must all be >= 2, got {self.linear_depths}")
        for key in ("exploding_weights", "linear_gains"):
            v = getattr(self, key)
            if not v or not all(w > 0 for w in v):
                raise ValueError(f"{key} must be non-empty and positive, got {v!r}")
        x = float(self.exploding_x)
        if np.float32(x) * np.float32(100.0) != np.float64(x) * 100.0:
            raise ValueError(
                f"exploding_x must be exactly representable (a dyadic rational such as 0.5), got "
                f"{x}; see gradflow.analytic.exploding_chain"
            )

    def check_resources(self) -> None:
        # float64 arrays of every (seed, layer) and (depth, width, width) of the three sweeps
        gf.experiment.check_memory(
            "chain_anatomy",
            64 * self.sigmoid_seeds * self.sigmoid_depth
            + 64 * len(self.exploding_weights) * self.exploding_depth
            + 32 * max(self.linear_depths) * self.linear_width**2,
        )


FULL = ChainAnatomyConfig(
    sigmoid_depth=120,
    sigmoid_seeds=256,
    exploding_depth=60,
    exploding_weights=(4.0, 100.0),
    exploding_x=0.5,
    linear_depths=(100, 200),
    linear_gains=(0.5, 2.0),
    linear_width=8,
)
QUICK = dataclasses.replace(
    FULL, sigmoid_depth=80, sigmoid_seeds=16, exploding_depth=40, linear_width=4
)

#: float32 limits as XLA on CPU sees them (subnormals are flushed to zero).
F32_TINY = float(np.finfo(np.float32).tiny)  # 2^-126
F32_MAX = float(np.finfo(np.float32).max)

UNDERFLOW, FINITE, OVERFLOW = -1, 0, 1


def _state_and_log10(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(state, log10|g|) of a float32 gradient: state -1 for 0, +1 for inf/nan, else 0; the log is
    computed in float64 and set to 0 where the state is not 0."""
    a = jnp.abs(g).astype(jnp.float64)
    state = jnp.where(a == 0, UNDERFLOW, jnp.where(jnp.isfinite(a), FINITE, OVERFLOW))
    ok = state == FINITE
    return state.astype(jnp.int32), jnp.where(ok, jnp.log10(jnp.where(ok, a, 1.0)), 0.0)


def _norm(x: jax.Array, axis: int = -1) -> jax.Array:
    """Euclidean norm without spurious over/underflow of the squares (scaled by max|x|): a float32
    norm of 2^65 is 2^65, not inf as with ``sqrt(sum(x**2))``."""
    m = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    safe = jnp.where(m > 0, m, 1)
    return (m * jnp.sqrt(jnp.sum((x / safe) ** 2, axis=axis, keepdims=True))).squeeze(axis)


def _relerr(a: jax.Array, ref: jax.Array) -> jax.Array:
    """|a - ref| / |ref| in float64 where both are finite and nonzero, else 0."""
    a, ref = a.astype(jnp.float64), ref.astype(jnp.float64)
    ok = jnp.isfinite(a) & jnp.isfinite(ref) & (ref != 0) & (a != 0)
    return jnp.where(ok, jnp.abs(a - ref) / jnp.where(ok, jnp.abs(ref), 1.0), 0.0)


def _output(w, b, x, activation: str) -> jax.Array:
    """a_L of the chain by the plain forward recursion: what autodiff differentiates."""
    phi = gf.activations.get(activation).fn

    def step(a, wb):
        return phi(wb[0] * a + wb[1]), None

    return jax.lax.scan(step, x, (w, b))[0]


def _chain_metrics(w64, b64, x64, activation: str) -> dict:
    """Every per-layer comparison of one chain; inputs float64, C = a_L (dC/da_L = 1)."""
    ln10 = math.log(10.0)
    ref = gf.analytic.chain_log_grads(w64, b64, x64, 1.0, activation)
    w, b, x = (v.astype(jnp.float32) for v in (w64, b64, x64))
    log32 = gf.analytic.chain_log_grads(w, b, x, jnp.float32(1.0), activation)
    closed = gf.analytic.chain_grads(w, b, x, jnp.float32(1.0), activation).bias
    autodiff = jax.grad(_output, argnums=1)(w, b, x, activation)
    state, log10_ad = _state_and_log10(autodiff)
    closed_state, _ = _state_and_log10(closed)
    bound = gf.analytic.log_gradient_bound(w64, activation, per_layer=True)
    return {
        "log10_ref": ref.log_abs / ln10,
        "log10_log32": log32.log_abs.astype(jnp.float64) / ln10,
        "log10_autodiff": log10_ad,
        "autodiff_state": state,
        "closed_state": closed_state,
        "closed_vs_autodiff": _relerr(closed, autodiff),
        "log32_vs_ref": jnp.abs(log32.log_abs.astype(jnp.float64) - ref.log_abs)
        / jnp.maximum(jnp.abs(ref.log_abs), 1.0),
        "log10_bound": bound / ln10,
    }


def _sigmoid_fn(hparams, key):
    depth = hparams["depth"]
    kw, kb, kx = jax.random.split(key, 3)
    w = jax.random.normal(kw, (depth,), jnp.float64)
    b = jax.random.normal(kb, (depth,), jnp.float64)
    x = jax.random.normal(kx, (), jnp.float64)
    return _chain_metrics(w, b, x, "sigmoid")


def _exploding_fn(x: float, weights: np.ndarray, w_table: np.ndarray, b_table: np.ndarray):
    """The chains are built outside the trace (exploding_chain works in float64 NumPy), one row
    of ``w_table``/``b_table`` per weight; ``fn`` picks the row of its (traced) weight."""

    def fn(hparams, key):
        del key  # deterministic construction
        row = jnp.argmax(jnp.asarray(weights) == hparams["weight"])
        w64, b64 = jnp.asarray(w_table)[row], jnp.asarray(b_table)[row]
        out = _chain_metrics(w64, b64, jnp.asarray(x, jnp.float64), "sigmoid")
        # the per-layer factor |dC/db_j| / |dC/db_{j+1}| (layer index j = 0..L-2)
        out["ratio_log32"] = 10.0 ** (out["log10_log32"][:-1] - out["log10_log32"][1:])
        out["ratio_ref"] = 10.0 ** (out["log10_ref"][:-1] - out["log10_ref"][1:])
        fin = (out["autodiff_state"][:-1] == FINITE) & (out["autodiff_state"][1:] == FINITE)
        r = 10.0 ** (out["log10_autodiff"][:-1] - out["log10_autodiff"][1:])
        out["ratio_autodiff"] = jnp.where(fin, r, 0.0)
        return out

    return fn


def _linear_fn(width: int):
    def fn(hparams, key):
        # deterministic: W_l = g I, b_l = 0, x = v = ones / sqrt(width), C = <v, a_L>, so
        # ||a_l|| = g^l and dC/db_l = g^{L-l} v, ||dC/db_l|| = g^{L-l}
        del key
        depth, gain = hparams["depth"], hparams["gain"]
        g32 = jnp.asarray(gain, jnp.float32)
        kernels = jnp.broadcast_to(g32 * jnp.eye(width, dtype=jnp.float32), (depth, width, width))
        biases = jnp.zeros((depth, width), jnp.float32)
        v = jnp.ones((width,), jnp.float32) / math.sqrt(width)

        def forward(bs):
            def step(a, kb):
                a = a @ kb[0] + kb[1]
                return a, _norm(a)

            return jax.lax.scan(step, v, (kernels, bs))

        a_out, fwd = forward(biases)
        g_auto = _norm(jax.grad(lambda bs: jnp.dot(v, forward(bs)[0]))(biases))
        # closed form: W = gI decouples the coordinates into one-neuron linear chains w_k = g
        chain = gf.analytic.chain_grads(
            jnp.full((depth,), g32), jnp.zeros((depth,), jnp.float32),
            jnp.float32(1.0), jnp.float32(1.0), "linear",
        )  # fmt: skip
        g_closed = jnp.abs(chain.bias)
        layers = np.arange(1, depth + 1)
        g64 = jnp.asarray(gain, jnp.float64)
        state, log10_ad = _state_and_log10(g_auto)
        fstate, log10_fwd = _state_and_log10(fwd)
        ostate, log10_out = _state_and_log10(jnp.dot(v, a_out))
        return {
            "log10_autodiff": log10_ad,
            "autodiff_state": state,
            "closed_vs_autodiff": _relerr(g_closed, g_auto),
            "log10_forward": log10_fwd,
            "forward_state": fstate,
            # theory in float64: backward g^{L-l}, forward g^l, output gain g^L
            "log10_theory": (depth - layers) * jnp.log10(g64),
            "log10_forward_theory": layers * jnp.log10(g64),
            "autodiff_vs_theory": _relerr(g_auto, g64 ** (depth - layers)),
            "log10_output": log10_out,
            "output_state": ostate,
            "log10_output_theory": jnp.log10(gf.analytic.deep_linear_gain(g64, depth)),
        }

    return fn


def run(config: ChainAnatomyConfig, results_dir: Path) -> None:
    """The three sweeps (sigmoid, exploding, linear), float64 enabled for the references."""
    config.check_resources()
    x = float(config.exploding_x)
    results_dir = Path(results_dir)
    with jax.enable_x64(True):
        gf.sweep.run(
            _sigmoid_fn,
            grid={"depth": [config.sigmoid_depth]},
            seeds=range(config.sigmoid_seeds),
            static=("depth",),
            workdir=results_dir / "sigmoid",
            name=f"{NAME}/sigmoid",
            config=config.to_dict(),
        )
        weights = np.asarray(config.exploding_weights, np.float64)
        w_table, b_table = (
            np.asarray(v)
            for v in gf.analytic.exploding_chain(
                config.exploding_depth, np.full(weights.shape, x), weights[:, None],
                dtype=jnp.float64,
            )
        )  # fmt: skip
        gf.sweep.run(
            _exploding_fn(x, weights, w_table, b_table),
            grid={"depth": [config.exploding_depth], "weight": list(weights)},
            seeds=[0],
            static=("depth",),
            workdir=results_dir / "exploding",
            name=f"{NAME}/exploding",
            config=config.to_dict(),
        )
        gf.sweep.run(
            _linear_fn(config.linear_width),
            grid={"depth": list(config.linear_depths), "gain": list(config.linear_gains)},
            seeds=[0],
            static=("depth",),
            workdir=results_dir / "linear",
            name=f"{NAME}/linear",
            config=config.to_dict(),
        )
    limits = {"f32_tiny": F32_TINY, "f32_max": F32_MAX, "config": config.to_dict()}
    gf.experiment.write_atomic(results_dir / "limits.json", json.dumps(limits, indent=1))


# --- reading the store --------------------------------------------------------------------------


def per_layer(df, metric: str, **where) -> np.ndarray:
    """``metric`` as an array (runs, layers) ordered by (grid keys, seed) and layer."""
    sub = df[df["metric"] == metric]
    for k, v in where.items():
        sub = sub[sub[k] == v]
    if sub.empty:
        raise ValueError(f"no rows for metric {metric!r} with {where}")
    if sub["layer"].isna().all():  # a scalar per run: (runs, 1)
        return sub.sort_values("seed")["value"].to_numpy(float)[:, None]
    return gf.sweep.to_arrays(sub, ("seed", "layer"))[0]


def _load(results_dir: Path):
    results_dir = Path(results_dir)
    out = {name: gf.sweep.load(results_dir / name) for name in ("sigmoid", "exploding", "linear")}
    for name, df in out.items():
        if df["diverged"].any():  # states are stored explicitly; nothing should be non-finite
            raise ValueError(f"sweep {name!r} holds non-finite values: a bug in the experiment")
    limits = json.loads((results_dir / "limits.json").read_text())
    return out, limits


def underflow_factors(df) -> np.ndarray:
    """Per sigmoid seed: the number of factors L - j + 1 at the first layer (from the output) where
    float32 autodiff is exactly 0, or 0 if it never underflows."""
    state = per_layer(df, "autodiff_state")
    depth = state.shape[1]
    out = np.zeros(len(state), int)
    for i, s in enumerate(state):
        zero = np.flatnonzero(s == UNDERFLOW)
        if zero.size:
            out[i] = depth - zero.max()  # layer index j-1 = zero.max(); factors = L - j + 1
    return out


def overflow_factors(state_row: np.ndarray) -> int:
    """Number of factors at the first layer (from the output) where float32 autodiff is inf, or
    0 if it never overflows."""
    hit = np.flatnonzero(state_row == OVERFLOW)
    return int(len(state_row) - hit.max()) if hit.size else 0


def summary(results_dir: Path) -> dict:
    """The numbers the figures and tables quote, from the saved results."""
    dfs, limits = _load(results_dir)
    return {
        "sigmoid": _sigmoid_summary(dfs["sigmoid"]),
        "exploding": _exploding_summary(dfs["exploding"]),
        "linear": _linear_summary(dfs["linear"]),
        "limits": limits,
    }


def _sigmoid_summary(s) -> dict:
    """Decay per layer, underflow and accuracy of the sigmoid chains."""
    ref = per_layer(s, "log10_ref")
    depth = ref.shape[1]
    # slope of log10|dC/db_j| in the number of factors, per seed (least squares)
    n = depth - np.arange(depth)  # factors L - j + 1 for j = 1..L
    slopes = np.polyfit(n, ref.T, 1)[0]
    uf = underflow_factors(s)
    # the last finite autodiff value before underflow, and the float64 truth where it hit 0
    ad, st = per_layer(s, "log10_autodiff"), per_layer(s, "autodiff_state")
    last_finite = [row[(srow == FINITE)].min() for row, srow in zip(ad, st) if (srow == 0).any()]
    at_zero = [r[srow == UNDERFLOW].max() for r, srow in zip(ref, st) if (srow == -1).any()]
    return {
        "depth": depth,
        "seeds": len(ref),
        "decades_per_layer_median": float(np.median(slopes)),
        "underflow_fraction": float(np.mean(uf > 0)),
        "underflow_factors": uf.tolist(),
        "log10_ref_layer1_median": float(np.median(ref[:, 0])),
        "log10_ref_layer1_min": float(ref[:, 0].min()),
        "closed_vs_autodiff_max": float(per_layer(s, "closed_vs_autodiff").max()),
        "log32_vs_ref_max": float(per_layer(s, "log32_vs_ref").max()),
        "log32_finite_all": bool(np.isfinite(per_layer(s, "log10_log32")).all()),
        "closed_state_equals_autodiff_state": bool(
            (per_layer(s, "closed_state") == per_layer(s, "autodiff_state")).all()
        ),
        "smallest_finite_log10": float(min(last_finite)) if last_finite else None,
        "largest_ref_at_zero_log10": float(max(at_zero)) if at_zero else None,
    }


def _exploding_summary(e) -> dict:
    """Per weight w: the ratio per layer (exact w/4), overflow, accuracy."""
    out = {}
    for w in sorted(e["weight"].unique()):
        st = per_layer(e, "autodiff_state", weight=w)[0]
        r32 = per_layer(e, "ratio_log32", weight=w)[0]
        rref = per_layer(e, "ratio_ref", weight=w)[0]
        rad = per_layer(e, "ratio_autodiff", weight=w)[0]
        rad = rad[rad > 0]
        ref = per_layer(e, "log10_ref", weight=w)[0]
        out[float(w)] = {
            "depth": len(st),
            "ratio_ref_mean": float(rref.mean()),
            "ratio_ref_maxdev": float(np.abs(rref - rref.mean()).max()),
            "ratio_log32_mean": float(r32.mean()),
            "ratio_log32_maxdev": float(np.abs(r32 / (w / 4) - 1).max()),
            "ratio_autodiff_mean": float(rad.mean()) if rad.size else None,
            "ratio_autodiff_maxdev": float(np.abs(rad / (w / 4) - 1).max()) if rad.size else None,
            "overflow_factors": overflow_factors(st),
            # the true (float64) value at the overflowing layer nearest the output
            "ref_at_failure_log10": (
                float(ref[st == OVERFLOW].min()) if (st == OVERFLOW).any() else None
            ),
            "log10_ref_layer1": float(ref[0]),
            "closed_vs_autodiff_max": float(per_layer(e, "closed_vs_autodiff", weight=w).max()),
        }
    return out


def _linear_summary(lin) -> dict:
    """Per (depth, gain): the gradient and output gains against g^{L-1}, g^L, and failures."""
    out = {}
    for (d, g), _ in lin.groupby(["depth", "gain"]):
        sel = {"depth": d, "gain": g}
        st = per_layer(lin, "autodiff_state", **sel)[0]
        ad = per_layer(lin, "log10_autodiff", **sel)[0]
        fst = per_layer(lin, "forward_state", **sel)[0]
        th = per_layer(lin, "log10_theory", **sel)[0]
        out_ = per_layer(lin, "log10_output", **sel)[0, 0]
        ost = int(per_layer(lin, "output_state", **sel)[0, 0])
        bad = st != FINITE
        out[f"{int(d)}:{float(g)}"] = {
            "depth": int(d),
            "gain": float(g),
            # ||dC/db_1|| = g^{L-1}; the forward output ||a_L|| = g^L
            "grad_layer1": float(10 ** ad[0]) if st[0] == FINITE else None,
            "grad_layer1_state": int(st[0]),
            "output_gain": float(10**out_) if ost == FINITE else None,
            "output_gain_theory": float(10 ** per_layer(lin, "log10_output_theory", **sel)[0, 0]),
            "output_state": ost,
            "first_forward_nonfinite_layer": (
                int(np.flatnonzero(fst != FINITE).min() + 1) if (fst != FINITE).any() else None
            ),
            "backward_failure_factors": (
                int(len(st) - np.flatnonzero(bad).max()) if bad.any() else None
            ),
            "ref_at_failure_log10": (
                float(th[bad].min() if g > 1 else th[bad].max()) if bad.any() else None
            ),
            "autodiff_vs_theory_max": float(per_layer(lin, "autodiff_vs_theory", **sel)[0].max()),
            "closed_vs_autodiff_max": float(per_layer(lin, "closed_vs_autodiff", **sel).max()),
        }
    return out


# --- figures ------------------------------------------------------------------------------------


def _failure_points(dfs) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, log10 of the true |gradient|, 1 where float32 autodiff gave 0 or inf else 0) per
    chain family, over every layer (and seed)."""
    s, e, lin = dfs["sigmoid"], dfs["exploding"], dfs["linear"]
    out = [(
        "sigmoid $N(0,1)$",
        per_layer(s, "log10_ref").ravel(),
        (per_layer(s, "autodiff_state") != FINITE).ravel().astype(float),
    )]  # fmt: skip
    ref, bad = [], []
    for w in sorted(e["weight"].unique()):
        ref.append(per_layer(e, "log10_ref", weight=w).ravel())
        bad.append((per_layer(e, "autodiff_state", weight=w) != FINITE).ravel())
    out.append(("exploding", np.concatenate(ref), np.concatenate(bad).astype(float)))
    ref, bad = [], []
    for (d, g), _ in lin.groupby(["depth", "gain"]):
        ref.append(per_layer(lin, "log10_theory", depth=d, gain=g).ravel())
        bad.append((per_layer(lin, "autodiff_state", depth=d, gain=g) != FINITE).ravel())
    out.append(("deep linear", np.concatenate(ref), np.concatenate(bad).astype(float)))
    return out


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    """Gradients per layer for (a) sigmoid N(0,1), (b) exploding, (c) deep linear, (d) where
    float32 autodiff fails against the true magnitude; and the closed-form-vs-autodiff errors."""
    dfs, limits = _load(results_dir)
    f32 = (math.log10(limits["f32_tiny"]), math.log10(limits["f32_max"]))
    out = []
    with gf.plotting.style():
        fig, axes = gf.plotting.figure(2, 2, width="text", aspect=0.62)
        (ax_a, ax_b), (ax_c, ax_d) = axes
        _panel_sigmoid(ax_a, dfs["sigmoid"], f32)
        _panel_exploding(ax_b, dfs["exploding"], f32, limits["config"]["exploding_x"])
        _panel_linear(ax_c, dfs["linear"], f32)
        _panel_failures(ax_d, dfs, f32)
        out += gf.plotting.savefig(fig, Path(figures_dir) / f"{NAME}_gradients")
        out += _plot_errors(dfs, Path(figures_dir) / f"{NAME}_errors")
    return out


_YLABEL = r"$\log_{10}|\partial C/\partial b_j|$"
#: autodiff markers: open circles where finite, crosses where 0 or inf
_OPEN = {"ms": 2.4, "mfc": "none", "mew": 0.7}
_CROSS = {"ms": 3, "mew": 0.7}


def _panel_sigmoid(ax, s, f32: tuple[float, float]) -> None:
    """(a) sigmoid chains with N(0, 1) weights and biases: log domain, bound, autodiff."""
    C = gf.plotting.COLORS
    ref = gf.plotting.finite_or_raise(per_layer(s, "log10_ref"), "sigmoid log10_ref")
    log32 = gf.plotting.finite_or_raise(per_layer(s, "log10_log32"), "sigmoid log10_log32")
    ad, st = per_layer(s, "log10_autodiff"), per_layer(s, "autodiff_state")
    depth = ref.shape[1]
    j = np.arange(1, depth + 1)
    gf.plotting.band(ax, j, log32, color=C[0], label="log domain, float32: median, 10-90%")
    bound = np.median(per_layer(s, "log10_bound"), axis=0)
    ax.plot(j, bound, color="k", lw=0.9, ls="--",
            label=r"bound $4^{-(L-j+1)}\prod_{k>j}|w_k|$ (median)")  # fmt: skip
    ok = st == FINITE
    half = ok.mean(axis=0) >= 0.5  # a median of the finite autodiff values exists
    ad_med = np.array([np.median(ad[ok[:, i], i]) if half[i] else 0.0 for i in range(depth)])
    ax.plot(j[half][::2], ad_med[half][::2], "o", color=C[1], **_OPEN,
            label="autodiff, float32 (median of nonzero)")  # fmt: skip
    zero = (st == UNDERFLOW).mean(axis=0) >= 0.5
    if zero.any():
        ax.axvspan(0.5, j[zero].max() + 0.5, color=C[4], alpha=0.12, lw=0,
                   label="autodiff = 0 for most seeds")  # fmt: skip
    ax.axhline(f32[0], color="0.35", lw=0.7, ls=":")
    ax.text(depth, f32[0] - 2, r"float32 $2^{-126}$", ha="right", va="top", fontsize=6,
            color="0.35")  # fmt: skip
    ax.set_xlim(0.5, depth + 0.5)
    ax.set_xlabel(r"layer $j$")
    ax.set_ylabel(_YLABEL)
    ax.set_title(rf"(a) sigmoid chain, $w_j, b_j \sim N(0,1)$, $L={depth}$, {len(ref)} seeds")
    y0, y1 = ax.get_ylim()
    ax.set_ylim(y0 - 0.45 * (y1 - y0), y1)  # room for the legend below the data
    ax.legend(loc="lower right", fontsize=6)


def _panel_exploding(ax, e, f32: tuple[float, float], x0: float) -> None:
    """(b) the exploding chains: the exact factor w/4 per layer until float32 overflows."""
    C, hi32 = gf.plotting.COLORS, f32[1]
    for w in sorted(e["weight"].unique()):
        ref_w = per_layer(e, "log10_ref", weight=w)[0]
        ad_w = per_layer(e, "log10_autodiff", weight=w)[0]
        st_w = per_layer(e, "autodiff_state", weight=w)[0]
        jj = np.arange(1, len(ref_w) + 1)
        col = C[1] if w == max(e["weight"]) else C[2]
        ax.plot(jj, ref_w, color=col, label=rf"$w={w:g}$: log domain, factor {w / 4:g}")
        fin = st_w == FINITE
        ax.plot(jj[fin], ad_w[fin], "o", color=col, **_OPEN)
        inf = st_w == OVERFLOW
        ax.plot(jj[inf], np.full(inf.sum(), hi32 + 3), "x", color=col, **_CROSS)
    ax.plot([], [], "o", color="0.3", **_OPEN, label="autodiff, float32")
    ax.plot([], [], "x", color="0.3", **_CROSS, label="autodiff = inf")
    ax.axhline(hi32, color="0.35", lw=0.7, ls=":")
    ax.set_xlabel(r"layer $j$")
    ax.set_ylabel(_YLABEL)
    ax.set_title(rf"(b) exploding chain, $w_j = w$, $z_j = 0$, $x = {x0:g}$")
    ax.text(1, hi32 - 2, "largest float32", ha="left", va="top", fontsize=6, color="0.35")
    ax.set_ylim(-4, max(ax.get_ylim()[1], hi32) + 30)  # room for the legend above the line
    ax.legend(loc="upper right", fontsize=6)


def _panel_linear(ax, lin, f32: tuple[float, float]) -> None:
    """(c) deep linear W = g I: g^{L-l} exactly, until float32 over- or underflows."""
    C, (lo32, hi32) = gf.plotting.COLORS, f32
    depths = sorted(lin["depth"].unique())
    for (d, g), _ in lin.groupby(["depth", "gain"]):
        th = per_layer(lin, "log10_theory", depth=d, gain=g)[0]
        ad_l = per_layer(lin, "log10_autodiff", depth=d, gain=g)[0]
        st_l = per_layer(lin, "autodiff_state", depth=d, gain=g)[0]
        ll = np.arange(1, len(th) + 1)
        col = C[1] if g > 1 else C[0]
        ax.plot(ll, th, color=col, ls="-" if d == depths[0] else "--", lw=1.0)
        fin = st_l == FINITE
        step = max(1, len(th) // 25)
        ax.plot(ll[fin][::step], ad_l[fin][::step], "o", color=col, ms=2.2, mfc="none", mew=0.7)
        bad = ~fin
        y = hi32 + 3 if g > 1 else lo32 - 3
        ax.plot(ll[bad][::step], np.full(bad.sum(), y)[::step], "x", color=col, **_CROSS)
    for g in sorted(lin["gain"].unique()):
        ax.plot([], [], color=C[1] if g > 1 else C[0], label=rf"$W = {g:g}I$: $g^{{L-l}}$")
    for d in depths:
        ax.plot([], [], color="0.3", ls="-" if d == depths[0] else "--", lw=1.0,
                label=f"$L = {d}$")  # fmt: skip
    ax.plot([], [], "o", color="0.3", **_OPEN, label="autodiff, float32")
    ax.plot([], [], "x", color="0.3", **_CROSS, label="autodiff = inf / 0")
    for yy in (lo32, hi32):
        ax.axhline(yy, color="0.35", lw=0.7, ls=":")
    ax.set_xlabel(r"layer $l$")
    ax.set_ylabel(r"$\log_{10}\|\partial C/\partial b_l\|$")
    ax.set_title(r"(c) deep linear net, $W_l = gI$, $b_l = 0$")
    ax.legend(loc="lower left", fontsize=5.5, ncols=3, columnspacing=0.8, handlelength=1.6)
    ax.set_ylim(min(lo32 - 3, ax.get_ylim()[0]) - 28, None)


def _panel_failures(ax, dfs, f32: tuple[float, float]) -> None:
    """(d) where float32 autodiff fails: the fraction 0/inf against the true magnitude."""
    C, (lo32, hi32) = gf.plotting.COLORS, f32
    edges = np.arange(-90.0, 91.0, 1.0)
    mid = 0.5 * (edges[1:] + edges[:-1])
    for (label, truth, bad), col, mk in zip(_failure_points(dfs), C[:3], "os^"):
        idx = np.digitize(truth, edges) - 1
        keep = (idx >= 0) & (idx < len(mid))
        cnt = np.bincount(idx[keep], minlength=len(mid))
        hit = np.bincount(idx[keep], weights=bad[keep], minlength=len(mid))
        m = cnt > 0
        ax.plot(mid[m], hit[m] / cnt[m], mk, color=col, ms=2.6, mfc="none", mew=0.7,
                label=label)  # fmt: skip
    ax.axvline(lo32, color="0.35", lw=0.7, ls=":")
    ax.axvline(hi32, color="0.35", lw=0.7, ls=":")
    ax.text(lo32 - 2, 0.5, "smallest normal\nfloat32 $2^{-126}$", ha="right", va="center",
            fontsize=6, color="0.35")  # fmt: skip
    ax.text(hi32 + 2, 0.5, "largest\nfloat32", ha="left", va="center", fontsize=6,
            color="0.35")  # fmt: skip
    ax.set_xlabel(r"true $\log_{10}|\partial C/\partial b_j|$ (float64 log domain)")
    ax.set_ylabel("fraction: autodiff = 0 or inf")
    ax.set_title("(d) float32 autodiff fails exactly outside its range")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="center", fontsize=6)


def _plot_errors(dfs, stem: Path) -> list[Path]:
    """Closed form vs autodiff, in units of float32 eps, where both are finite and nonzero."""
    C = gf.plotting.COLORS
    s, e, lin = dfs["sigmoid"], dfs["exploding"], dfs["linear"]
    eps = float(np.finfo(np.float32).eps)
    fig, ax = gf.plotting.figure(width="column", aspect=0.72)
    err = per_layer(s, "closed_vs_autodiff") / eps
    both = (per_layer(s, "autodiff_state") == FINITE) & (per_layer(s, "closed_state") == FINITE)
    depth = err.shape[1]
    n = depth - np.arange(depth)  # factors in dC/db_j
    valid = both.mean(axis=0) >= 0.5
    med = np.array([np.median(err[both[:, i], i]) if valid[i] else 0 for i in range(depth)])
    mx = np.array([err[both[:, i], i].max() if valid[i] else 0 for i in range(depth)])
    ax.plot(n[valid], med[valid], color=C[0], label="sigmoid $N(0,1)$: median over seeds")
    ax.plot(n[valid], mx[valid], color=C[0], lw=0.8, ls="--", label="sigmoid: max")
    for w in sorted(e["weight"].unique()):
        ee = per_layer(e, "closed_vs_autodiff", weight=w)[0] / eps
        fin = per_layer(e, "autodiff_state", weight=w)[0] == FINITE
        nn = len(ee) - np.arange(len(ee))
        ax.plot(nn[fin], ee[fin], "o-" if w == max(e["weight"]) else "s-", lw=0.8, ms=2,
                color=C[1] if w == max(e["weight"]) else C[2],
                label=rf"exploding $w = {w:g}$")  # fmt: skip
    lerr = per_layer(s, "log32_vs_ref") / eps
    ax.plot(n, np.median(lerr, axis=0), color=C[3], lw=1.0,
            label=r"log domain f32 vs f64, $|\Delta\log|/|\log|$")  # fmt: skip
    ax.set_xlabel(r"factors in the product, $n = L - j + 1$")
    ax.set_ylabel(r"relative error / float32 $\epsilon$")
    ax.set_ylim(bottom=-0.3)
    lin_err = max(float(per_layer(lin, "closed_vs_autodiff", depth=d, gain=g).max())
                  for (d, g), _ in lin.groupby(["depth", "gain"]))  # fmt: skip
    lin_txt = "exact" if lin_err == 0 else f"max {lin_err / eps:.2g}$\\epsilon$"
    ax.set_title(f"closed form vs autodiff, float32 (deep linear: {lin_txt})")
    ax.legend(loc="upper left", fontsize=5.5)
    return gf.plotting.savefig(fig, stem)


# --- tables -------------------------------------------------------------------------------------


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    """One row per chain: what float32 autodiff does, the log-domain value, the exact factor."""
    sm = summary(results_dir)
    columns = [
        "chain", "size", "factor per layer", "float32 autodiff", "true value there",
        r"$|\partial C/\partial b_1|$", "closed vs autodiff",
    ]  # fmt: skip
    rows = [_sigmoid_row(sm["sigmoid"]), *_exploding_rows(sm), *_linear_rows(sm)]
    return [
        gf.experiment.latex_table(rows, columns, Path(tables_dir) / f"{NAME}.tex"),
        gf.experiment.write_macros(Path(tables_dir) / f"{NAME}_macros.tex", _macros(sm)),
    ]


def _at(v) -> str:
    return "--" if v is None else f"$10^{{{v:.1f}}}$"


def _underflow_hits(sg: dict) -> np.ndarray:
    """Underflow factors of the sigmoid seeds that underflow."""
    uf = np.asarray(sg["underflow_factors"])
    return uf[uf > 0]


def _sigmoid_row(sg: dict) -> list:
    uf_hit = _underflow_hits(sg)
    return [
        r"sigmoid, $N(0,1)$",
        f"{sg['seeds']} seeds, $L={sg['depth']}$",
        f"$10^{{{sg['decades_per_layer_median']:.2f}}}$ (median)",
        (f"0 from {int(np.median(uf_hit))} [{int(uf_hit.min())}, {int(uf_hit.max())}] layers"
         if uf_hit.size else "finite"),
        _at(sg["largest_ref_at_zero_log10"]) + " (max)" if uf_hit.size else "--",
        f"$10^{{{sg['log10_ref_layer1_median']:.1f}}}$ (median)",
        sg["closed_vs_autodiff_max"],
    ]  # fmt: skip


def _exploding_rows(sm: dict) -> list[list]:
    return [
        [
            rf"exploding, $w={w:g}$",
            f"$L={r['depth']}$",
            f"{r['ratio_log32_mean']:.6g}",
            f"inf from {r['overflow_factors']} layers" if r["overflow_factors"] else "finite",
            _at(r["ref_at_failure_log10"]),
            f"$10^{{{r['log10_ref_layer1']:.1f}}}$",
            r["closed_vs_autodiff_max"],
        ]
        for w, r in sm["exploding"].items()
    ]


def _linear_rows(sm: dict) -> list[list]:
    rows = []
    for r in sm["linear"].values():
        g, d, fail = r["gain"], r["depth"], r["backward_failure_factors"]
        rows.append([
            rf"linear, $W={g:g}I$",
            f"$L={d}$",
            f"{g:g}",
            f"{'inf' if g > 1 else '0'} from {fail} layers" if fail else "finite",
            _at(r["ref_at_failure_log10"]),
            f"${g:g}^{{{d - 1}}}$",
            r["closed_vs_autodiff_max"],
        ])  # fmt: skip
    return rows


def _macros(sm: dict) -> dict:
    """The numbers the paper quotes, ``\\chainAnatomy*``."""
    p, sg = "chainAnatomy", sm["sigmoid"]
    macros = {
        f"{p}SigmoidDecadesPerLayer": -sg["decades_per_layer_median"],
        f"{p}SigmoidSeeds": sg["seeds"],
        f"{p}SigmoidDepth": sg["depth"],
        f"{p}SigmoidUnderflowFraction": sg["underflow_fraction"],
        f"{p}SigmoidLayerOneLogTen": sg["log10_ref_layer1_median"],
        f"{p}SigmoidClosedVsAutodiff": sg["closed_vs_autodiff_max"],
        f"{p}LogDomainRelErr": sg["log32_vs_ref_max"],
    }
    uf_hit = _underflow_hits(sg)
    if uf_hit.size:
        macros[f"{p}SigmoidUnderflowFactorsMedian"] = int(np.median(uf_hit))
        macros[f"{p}SigmoidUnderflowFactorsMin"] = int(uf_hit.min())
        macros[f"{p}SigmoidUnderflowFactorsMax"] = int(uf_hit.max())
    e100 = sm["exploding"].get(100.0)
    if e100 is not None:
        macros[f"{p}ExplodingRatio"] = e100["ratio_log32_mean"]
        macros[f"{p}ExplodingRatioAutodiff"] = e100["ratio_autodiff_mean"]
        macros[f"{p}ExplodingRatioMaxRelDev"] = max(
            e100["ratio_log32_maxdev"], e100["ratio_autodiff_maxdev"]
        )
        macros[f"{p}ExplodingOverflowFactors"] = e100["overflow_factors"]
        macros[f"{p}ExplodingDepth"] = e100["depth"]
        macros[f"{p}ExplodingLayerOneLogTen"] = e100["log10_ref_layer1"]
    return {**macros, **_linear_macros(sm, p)}


def _linear_macros(sm: dict, p: str) -> dict:
    """Gains at depth 100 and failure factors at the largest depth, for W = 2I and I/2."""
    lin = {(r["depth"], r["gain"]): r for r in sm["linear"].values()}
    tags = {2.0: "Two", 0.5: "Half"}
    macros = {}
    for (d, g), r in lin.items():
        if g not in tags or d != 100:
            continue
        if r["output_gain"] is not None:
            macros[f"{p}Linear{tags[g]}OutputGain"] = r["output_gain"]
        if r["grad_layer1"] is not None:
            macros[f"{p}Linear{tags[g]}LayerOneGrad"] = r["grad_layer1"]
    for (d, g), r in lin.items():
        if d == max(dd for dd, _ in lin) and r["backward_failure_factors"] and g in tags:
            macros[f"{p}Linear{tags[g]}FailureFactors"] = r["backward_failure_factors"]
    return macros


EXPERIMENT = gf.experiment.Experiment(
    name=NAME,
    claim=CLAIM,
    source=SOURCE,
    configs={"quick": QUICK, "full": FULL},
    run=run,
    plot=plot,
    tables=tables,
    figures=(f"{NAME}_gradients", f"{NAME}_errors"),
    order=3,
)
