"""A sweep run in a fresh process, for the subprocess tests of gradflow.sweep (not collected).

    python tests/sweep_worker.py WORKDIR [--devices N] [--sleep S]
        [--process-id I --num-processes P --port PORT] [--out TABLE.parquet] [--block B]

Sets ``jax_num_cpu_devices`` (and, for several processes, the gloo CPU collectives and
``jax.distributed.initialize`` on loopback) before JAX starts, runs :data:`GRID` x :data:`SEEDS`
through :func:`fn` with :data:`CHUNK_SIZE`, and writes the table ``run`` returned to ``--out``.
``--sleep`` makes every compiled call sleep (an identity host callback) so a test can kill the
process between chunks; it does not change any value.

The test module imports this file for :func:`fn` and the grid, to compute the reference table
in-process.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp

# sw2 = 1e30 makes every layer's gain ~1e15: the cumulative gain overflows float32 at depth 3.
GRID = {"sw2": [0.5, 2.0, 1e30], "depth": [2, 3]}
SEEDS = range(3)
STATIC = ("depth",)
CHUNK_SIZE = 2  # 9 runs per group -> chunks of 2, 2, 2, 2, 1; padded to 4 on 4 devices
WIDTH = 4
SLEEP_S = 0.0


def _sleep(x):
    time.sleep(SLEEP_S)
    return x


def fn(hparams, key):
    """A depth-``depth`` tanh net of width 4 with weights N(0, sw2/width): per-layer norms."""
    depth = hparams["depth"]
    w = jax.random.normal(key, (depth, WIDTH, WIDTH)) * jnp.sqrt(hparams["sw2"] / WIDTH)
    h = jnp.linspace(-1.0, 1.0, WIDTH)
    if SLEEP_S > 0:
        h = jax.pure_callback(
            _sleep, jax.ShapeDtypeStruct(h.shape, h.dtype), h, vmap_method="broadcast_all"
        )
    pre, gain = [], []
    for layer in range(depth):
        z = w[layer] @ h
        gain.append(jnp.linalg.norm(z) / jnp.linalg.norm(h))
        h = jnp.tanh(z)
        pre.append(jnp.linalg.norm(z))
    return {
        "preact_norm": jnp.stack(pre),
        "gain": jnp.cumprod(jnp.stack(gain)),
        "out_norm": jnp.linalg.norm(h),
        "weight_sum": w.sum(0)[None],
    }


AXES = {"weight_sum": ("t", "i", "j")}


def sweep_kwargs() -> dict:
    return dict(static=STATIC, chunk_size=CHUNK_SIZE, axes=AXES, name="worker", progress=False)


def main(argv=None) -> None:
    global SLEEP_S
    p = argparse.ArgumentParser()
    p.add_argument("workdir")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--num-processes", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--block", type=int, default=None)
    args = p.parse_args(argv)
    SLEEP_S = args.sleep

    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", args.devices)
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            f"127.0.0.1:{args.port}",
            num_processes=args.num_processes,
            process_id=args.process_id,
            initialization_timeout=60,
        )
    from gradflow import sweep  # after the device configuration

    df = sweep.run(fn, GRID, SEEDS, workdir=args.workdir, block_size=args.block, **sweep_kwargs())
    if args.out:
        df.to_parquet(args.out)
    print(f"process {jax.process_index()}: {len(df)} rows on {jax.device_count()} devices")


if __name__ == "__main__":
    main(sys.argv[1:])
