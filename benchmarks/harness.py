"""Timing, machine facts and the float32 matmul peak: the measuring half of the benchmarks.

Protocol (the same for every way of computing a workload):

* **compile** -- for a JAX program, tracing + lowering + XLA compilation, timed on its own
  (:func:`compile_jax`); never inside the timed repeats. For a loop of jitted calls (naive JAX) it
  is the first call minus one steady-state call. PyTorch has no compile step (eager).
* **repeats** -- the whole computation, from inputs on the host to results on the host as NumPy
  arrays (so asynchronous dispatch cannot hide work), run ``repeats`` times after one warm-up
  (which counts as a repeat when it alone takes over a tenth of the budget: a long computation);
  the reported time is the **median** (:class:`Measurement`). A time budget ends the
  repeats early (never below ``min_repeats``); the number actually run is reported.
* **subsets** -- a Python loop whose full length would take minutes (the PyTorch and naive-JAX
  training loops) may time a prefix of ``timed`` of its ``total`` runs; the median is then scaled
  by ``total / timed`` (loop cost is linear in its length) and the scaling is reported.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf

__all__ = [
    "Measurement",
    "batched_matmul_rate",
    "compile_jax",
    "load_average",
    "machine_info",
    "matmul_peak",
    "measure",
    "to_host",
]


@dataclasses.dataclass
class Measurement:
    """Timings of one way of computing one workload.

    Attributes:
      method: short id (``"gradflow"``, ``"pytorch"``, ``"naive_jax"``, ...).
      label: what was run, in words.
      times_s: wall-clock seconds of each timed repeat (of ``timed`` runs).
      compile_s: compile time (None: nothing compiled, e.g. PyTorch).
      timed: runs (seeds, networks, chains) per timed repeat.
      total: runs in the workload; the median is scaled by ``total / timed``.
      notes: anything a reader needs to interpret the number.
      extra: further numbers (e.g. a timing breakdown), JSON-serialisable.
    """

    method: str
    label: str
    times_s: list[float]
    compile_s: float | None
    timed: int
    total: int
    notes: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.total / self.timed

    @property
    def median_s(self) -> float:
        """Median seconds for the whole workload (scaled from a subset if ``timed < total``)."""
        return statistics.median(self.times_s) * self.scale

    @property
    def min_s(self) -> float:
        return min(self.times_s) * self.scale

    @property
    def e2e_s(self) -> float:
        """End to end, as a one-shot run sees it: compile time (0 if none) + the median."""
        return (self.compile_s or 0.0) + self.median_s

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "label": self.label,
            "median_s": self.median_s,
            "min_s": self.min_s,
            "times_s": self.times_s,
            "repeats": len(self.times_s),
            "compile_s": self.compile_s,
            "e2e_s": self.e2e_s,
            "timed_runs": self.timed,
            "total_runs": self.total,
            "scale": self.scale,
            "notes": self.notes,
            "extra": self.extra,
        }


def to_host(tree: Any) -> Any:
    """Every array of ``tree`` as a NumPy array on the host (waits for the device)."""
    return jax.tree.map(np.asarray, jax.device_get(tree))


def measure(
    fn: Callable[[], Any],
    *,
    repeats: int,
    budget_s: float = float("inf"),
    min_repeats: int = 3,
    warmup: bool | None = None,
) -> tuple[list[float], Any]:
    """Time ``fn()`` (which must return host results) ``repeats`` times after one warm-up.

    Stops early once the timed repeats have used ``budget_s`` seconds, but never before
    ``min(min_repeats, repeats)`` repeats. ``warmup=None`` (auto): the warm-up call is timed and,
    if it took more than a tenth of ``budget_s`` (a long computation, whose one-time costs are
    negligible), it counts as the first repeat. Returns ``(times, last_result)``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times: list[float] = []
    result = None
    if warmup or warmup is None:
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        if warmup is None and dt > budget_s / 10:
            times.append(dt)
    spent = sum(times)
    while len(times) < repeats:
        if spent > budget_s and len(times) >= min(min_repeats, repeats):
            break
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
    return times, result


def compile_jax(jitted: Any, *args: Any) -> tuple[Any, float]:
    """Ahead-of-time ``jitted.lower(*args).compile()``; returns ``(compiled, seconds)``."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - Windows
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, load, JAX devices and the versions of everything measured."""
    usable = gf.sweep.usable_cores()
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "load_average": load_average(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "matmul_precision": gf.config.matmul_precision(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "gradflow_commit": _git_commit(),
    }
    for pkg in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
        info[pkg] = _version(pkg)
    info["gpu"] = _gpu_name()
    return info


def _gpu_name() -> str | None:
    """The accelerator's name (``nvidia-smi``), or None on a CPU-only host."""
    if jax.default_backend() == "cpu":
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return jax.devices()[0].device_kind
    return (
        out.stdout.strip().splitlines()[0]
        if out.returncode == 0 and out.stdout.strip()
        else (jax.devices()[0].device_kind)
    )


def matmul_peak(
    n: int = 2048, *, repeats: int = 10, dtype: Any = jnp.float32, precision: str = "highest"
) -> dict[str, Any]:
    """The machine's dense matmul rate: median GFLOP/s of a jitted ``(n, n) @ (n, n)``.

    :math:`2 n^3` FLOPs per product; inputs are random (not constants XLA could fold) and stay on
    the device; the output is waited for, not copied back. ``precision``: JAX's matmul precision
    (``"highest"``: float32 products on every backend; ``"default"``: TF32 on an NVIDIA GPU).
    """
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), dtype)
    b = jax.random.normal(kb, (n, n), dtype)
    with jax.default_matmul_precision(precision):
        compiled, compile_s = compile_jax(jax.jit(jnp.matmul), a, b)
    times, _ = measure(lambda: compiled(a, b).block_until_ready(), repeats=repeats)
    flops = 2.0 * n**3
    return {
        "n": n,
        "dtype": str(np.dtype(dtype)),
        "precision": precision,
        "flops": flops,
        "median_s": statistics.median(times),
        "gflops": flops / statistics.median(times) / 1e9,
        "best_gflops": flops / min(times) / 1e9,
        "repeats": len(times),
        "compile_s": compile_s,
    }


def batched_matmul_rate(
    runs: int, m: int, k: int, n: int, *, repeats: int = 10, dtype: Any = jnp.float32
) -> dict[str, Any]:
    r"""GFLOP/s of one jitted batched matmul ``(runs, m, k) @ (runs, k, n)`` at a workload's layer
    shape, the run axis sharded over every device as gradflow's sweeps shard it.

    :math:`2\,\mathrm{runs}\,m k n` FLOPs. Every FLOP the probe workloads count is a matmul of
    this shape (forward, and backward for activations and weights), and so is every training-step
    FLOP of the training workload (its evaluations multiply bigger batches), so this is the rate
    their matmuls alone reach here, with no activation, statistic or random number.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()
    runs_padded = runs + (-runs % len(devices))
    sharding = NamedSharding(Mesh(np.asarray(devices), ("r",)), PartitionSpec("r"))
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(ka, (runs_padded, m, k), dtype), sharding)
    b = jax.device_put(jax.random.normal(kb, (runs_padded, k, n), dtype), sharding)
    program = jax.jit(jnp.matmul, in_shardings=(sharding, sharding), out_shardings=sharding)
    compiled, compile_s = compile_jax(program, a, b)
    times, _ = measure(lambda: compiled(a, b).block_until_ready(), repeats=repeats)
    flops = 2.0 * runs_padded * m * k * n
    return {
        "shape": f"{runs_padded} x ({m}x{k} @ {k}x{n})",
        "flops": flops,
        "median_s": statistics.median(times),
        "gflops": flops / statistics.median(times) / 1e9,
        "devices": len(devices),
        "repeats": len(times),
        "compile_s": compile_s,
    }
