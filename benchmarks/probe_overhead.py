"""``python -m benchmarks.probe_overhead``: what :func:`gradflow.probes.probe` costs on a user's
model, against a bare :func:`jax.value_and_grad` of the same model, loss and batch.

The peer is the least any per-layer gradient measurement must do: one forward and one backward
pass (``jax.jit(jax.value_and_grad(loss_of_params))``). The probe does that pass with a zero
perturbation on every layer output, and adds the per-layer statistics (norms of the weight and
bias gradients, of the per-example errors over every position, signal statistics). Both are
jitted, compiled ahead of time (compile times reported apart) and timed from host inputs to host
results, medians of the repeats, in one process (``benchmarks.harness.measure``). Target: the
probe within 1.5x the bare gradient.

Models (batch 64): the linen CNN (3 conv layers + BatchNorm in training mode + Dense head on
8x8x1 digits) and the linen Transformer (pre-LN, 4 blocks, width 64, 4 heads, sequences of 32
tokens) defined below, written as a researcher would, not with gradflow.models.

Usage::

    python -m benchmarks.probe_overhead            # -> benchmarks/PROBE_OVERHEAD.md and .json
    python -m benchmarks.probe_overhead --quick    # smaller models, printed only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

import gradflow as gf
from benchmarks import harness

HERE = Path(__file__).resolve().parent
TARGET = 1.5


class CNN(nn.Module):
    width: int = 32

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i in range(3):
            x = nn.Conv(self.width, (3, 3), name=f"conv_{i}")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, name=f"bn_{i}")(x))
        return nn.Dense(10, name="head")(x.mean((1, 2)))


class Block(nn.Module):
    d: int
    heads: int

    @nn.compact
    def __call__(self, x):
        x = x + nn.MultiHeadDotProductAttention(self.heads, name="attn")(
            nn.LayerNorm(name="ln1")(x)
        )
        h = nn.gelu(nn.Dense(4 * self.d, name="fc1")(nn.LayerNorm(name="ln2")(x)))
        return x + nn.Dense(self.d, name="fc2")(h)


class Transformer(nn.Module):
    vocab: int = 128
    d: int = 64
    heads: int = 4
    depth: int = 4

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, self.d, name="embed")(tokens)
        x = x + self.param("pos", nn.initializers.normal(0.02), (tokens.shape[1], self.d))
        for i in range(self.depth):
            x = Block(self.d, self.heads, name=f"block_{i}")(x)
        return nn.Dense(self.vocab, name="head")(nn.LayerNorm(name="ln_f")(x))


def _cases(quick: bool):
    key = jax.random.key(0)
    batch = 64
    digits = gf.data.load_digits()
    x = jnp.asarray(digits.x_train[:batch]).reshape(batch, 8, 8, 1)
    y = jnp.asarray(digits.y_train[:batch])
    cnn = CNN(width=8 if quick else 32)
    yield "linen CNN (3 conv + BatchNorm train mode + Dense), batch 64", cnn, x, y, True
    tf = Transformer(d=16, depth=2) if quick else Transformer()
    tokens = jax.random.randint(key, (batch, 8 if quick else 32), 0, tf.vocab)
    yield "linen Transformer (pre-LN, embed + blocks + head), batch 64", tf, tokens, tokens, False


def run(quick: bool = False, repeats: int = 20) -> list[dict]:
    rows = []
    loss = gf.probes.get_loss("softmax_cross_entropy")
    for label, model, x, y, train in _cases(quick):
        variables = model.init(jax.random.key(1), x)
        params = variables["params"]
        rest = {k: v for k, v in variables.items() if k != "params"}
        kw = {"train": True, "mutable": ["batch_stats"]} if train else {}

        def bare(params, rest, x, y, kw=kw, model=model):
            def cost(p):
                out = model.apply({"params": p, **rest}, x, **kw)
                return loss(out[0] if kw else out, y)

            return jax.value_and_grad(cost)(params)

        def probed(params, rest, x, y, model=model, train=train):
            return gf.probes.probe(model, {"params": params, **rest}, x, y, train=train)

        out = {}
        for name, fn in (("bare_value_and_grad", bare), ("probe", probed)):
            compiled, compile_s = harness.compile_jax(jax.jit(fn), params, rest, x, y)
            times, _ = harness.measure(
                lambda c=compiled, a=(params, rest, x, y): harness.to_host(c(*a)), repeats=repeats
            )
            out[name] = {"median_s": sorted(times)[len(times) // 2], "compile_s": compile_s,
                         "repeats": len(times)}  # fmt: skip
        report = probed(params, rest, x, y)
        ratio = out["probe"]["median_s"] / out["bare_value_and_grad"]["median_s"]
        rows.append(
            {
                "workload": label,
                "layers": report.num_layers,
                **out,
                "ratio": ratio,
                "meets_target": ratio <= TARGET,
            }
        )
    return rows


def markdown(rows: list[dict], info: dict) -> str:
    lines = [
        "# The probe's cost on a user's model",
        "",
        "Generated by `python -m benchmarks.probe_overhead` (do not edit). "
        f"{info['cpu_model']}, {info['cpu_usable']} usable cores, JAX {info['jax']} on "
        f"{info['jax_backend']}, load average {info['load_average']}, commit "
        f"{info['gradflow_commit']}.",
        "",
        "| model | layers | bare value_and_grad | probe | probe / bare | target | compile bare | "
        "compile probe |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        b, p = r["bare_value_and_grad"], r["probe"]
        lines.append(
            f"| {r['workload']} | {r['layers']} | {1e3 * b['median_s']:.2f} ms | "
            f"{1e3 * p['median_s']:.2f} ms | {r['ratio']:.2f}x | <= {TARGET}x "
            f"({'met' if r['meets_target'] else 'missed'}) | {b['compile_s']:.2f} s | "
            f"{p['compile_s']:.2f} s |"
        )
    lines += [
        "",
        "Both jitted, compiled ahead of time, medians of the timed repeats from host inputs to "
        "host results. The probe runs the same forward and backward pass with a zero "
        "perturbation on every layer output and computes the per-layer statistics.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probe_overhead", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small models; print only")
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    rows = run(args.quick, args.repeats)
    info = harness.machine_info()
    text = markdown(rows, info)
    print(text)
    if not args.quick:
        (HERE / "PROBE_OVERHEAD.md").write_text(text)
        (HERE / "probe_overhead.json").write_text(
            json.dumps({"machine": info, "rows": rows}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
