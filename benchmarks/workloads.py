"""The workloads, their configurations (full and quick, CPU and GPU), and how each way is measured.

Every workload function takes its configuration and an :class:`Options` and returns a plain dict
(see :func:`result`): the configuration, the :class:`~benchmarks.harness.Measurement` of each way
(median, compile time, end to end = compile + median), the correctness checks run before timing,
and the measured ratios the targets of :data:`TARGETS` are scored on.

Ways (``method`` ids):

* ``gradflow`` -- the program :func:`gradflow.sweep.run` compiles by default: ``jax.jit`` over a
  1-D mesh of every device, each device running its own runs under ``jax.shard_map`` in blocks
  sized by ``block_size="auto"`` (vmapped within a block), ``one`` the gradflow call a user
  writes (:func:`gradflow.probes.probe` of ``model.init(key, x)``, or
  :func:`gradflow.training.train_fn`), ``key`` made as ``sweep.run`` makes it:
  :func:`gradflow.rng.threefry_key(seed) <gradflow.rng.threefry_key>`, the numbers of
  ``jax.random.key(seed)`` bit for bit.
  ``gradflow_fast`` (GPU suite, w2big): the same at ``gradflow.config``'s ``"default"`` precision
  (TF32 on an NVIDIA GPU) instead of ``"highest"``.
* ``gradflow_readme`` -- the README's way, as typed there: ``gf.sweep.vmap(lambda s:
  probe(model, model.init(gf.rng.threefry_key(s), x), x, y))(seeds)`` (:func:`gradflow.sweep.vmap`:
  the program of ``gradflow``, padded and placed by the call). ``jax_vmap``: the plain JAX way,
  ``jax.jit(jax.vmap(...))(seeds)`` of the same function, on one device. ``jax_bare``: plain JAX
  computing only what ``torch_func`` computes (the three gradient norms, a hand-written forward
  pass) in gradflow's sharded program: the price of the probe's other statistics, and a floor
  on what any JAX way compiles in.
* ``gradflow_native`` / ``gradflow_blocked`` -- proposed changes measured beside it:
  :func:`gradflow.sweep.run` with ``rng="native"`` (:func:`gradflow.rng.key`, ThreeFry fused on
  CPU, another random stream) and with a fixed ``block_size`` (each device maps over its runs
  ``block`` at a time). ``gradflow_vmap_all``: ``block_size=None``, every run of a device vmapped
  at once (the default before ``"auto"``).
* ``gradflow_sweep_run`` -- :func:`gradflow.sweep.run` end to end, once (it compiles on every call
  and writes its parquet store); compile, run and write times from its metadata.
* ``naive_jax`` -- ``jax.jit(one)`` called once per seed (and learning rate) in a Python loop,
  with ``jax.random.key(seed)`` as a script would write it.
* ``pytorch`` -- the common PyTorch loop; ``torch_func`` -- the expert PyTorch way,
  ``torch.func.functional_call`` + ``vmap(grad(...))`` over stacked parameters
  (:mod:`benchmarks.torch_baselines`; ``torch_func_fast``: at TF32, GPU suite).
* ``compile`` workload: the compile time of the init + probe program (the README's way) at
  several depths, with the report checked against ``jax.grad`` at each depth.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import gradflow as gf
from benchmarks import harness
from benchmarks.harness import Measurement

__all__ = [
    "FULL",
    "GPU_FULL",
    "GPU_QUICK",
    "QUICK",
    "TARGETS",
    "ChainSweep",
    "CompileSweep",
    "Options",
    "ProbeSweep",
    "TrainSweep",
    "run_workload",
    "torch_available",
]

#: Digits-shaped inputs: 64 features, 10 classes.
IN_FEATURES, CLASSES = 64, 10
_GRAD_STATS = ("weight_grad_norm", "bias_grad_norm", "preact_grad_norm")


def torch_available() -> bool:
    """Whether ``import torch`` works (the ``bench`` extra)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------ configurations


@dataclasses.dataclass(frozen=True)
class ProbeSweep:
    """Per-layer gradient report at init for many seeds of one MLP (workloads 1 and 2).

    ``depth`` hidden layers of ``width`` units (``phi``), a linear readout to 10 classes, batch
    ``batch`` of digits, kernels ``lecun_normal``, biases ``bias_init``. ``block``: seeds per
    block of the ``gradflow_blocked`` way (None: not measured). ``naive_timed`` /
    ``torch_timed``: seeds the loops time (None: all; 0: not measured). ``precisions``: the
    ``gradflow.config`` precisions the gradflow way is measured at (the first is ``gradflow``, a
    second ``gradflow_fast``; PyTorch's ``torch_func`` at the matching
    ``torch.set_float32_matmul_precision``). ``extra_ways``: also the README's way, the proposed
    paths and naive JAX (the GPU suite's big workload leaves them out to fit its time). FLOPs per
    network: ``6 * batch * width**2 * depth`` (forward, and backward for activations and weights).
    """

    title: str
    seeds: int
    depth: int
    width: int
    batch: int
    activation: str = "sigmoid"
    bias_init: str = "normal"
    block: int | None = None
    naive_timed: int | None = None
    torch_timed: int | None = None
    sweep_run: bool = False
    precisions: tuple[str, ...] = ("highest",)
    extra_ways: bool = True

    @property
    def widths(self) -> tuple[int, ...]:
        return (IN_FEATURES, *(self.width,) * self.depth, CLASSES)

    @property
    def flops_per_run(self) -> float:
        return 6.0 * self.batch * self.width**2 * self.depth

    def model(self) -> gf.models.MLP:
        return gf.models.MLP(
            widths=(self.width,) * self.depth,
            out=CLASSES,
            activation=self.activation,
            kernel_init="lecun_normal",
            bias_init=self.bias_init,
        )


@dataclasses.dataclass(frozen=True)
class TrainSweep:
    """``seeds x learning_rates`` networks trained with SGD on digits (workload 3).

    ``depth`` hidden ``tanh`` layers of ``width``, ``lecun_normal`` kernels, zero biases; minibatch
    ``batch``; every ``record_every`` steps the records of :func:`gradflow.training.train_fn`
    (per-layer gradient, update and parameter norms; train and test loss and accuracy).
    """

    title: str
    seeds: int
    learning_rates: tuple[float, ...]
    depth: int
    width: int
    steps: int
    record_every: int
    batch: int
    activation: str = "tanh"
    naive_timed: int | None = None
    torch_timed: int | None = None
    sweep_run: bool = False

    @property
    def widths(self) -> tuple[int, ...]:
        return (IN_FEATURES, *(self.width,) * self.depth, CLASSES)

    @property
    def runs(self) -> list[tuple[float, int]]:
        """``(learning_rate, seed)`` in :func:`gradflow.sweep.run` order (seeds innermost)."""
        return [(lr, s) for lr in self.learning_rates for s in range(self.seeds)]

    @property
    def flops_per_run(self) -> float:
        """Training only: ``6 * batch * width**2 * depth * steps`` (see :meth:`flops_with_eval`)."""
        return 6.0 * self.batch * self.width**2 * self.depth * self.steps

    def flops_with_eval(self, eval_examples: int) -> float:
        """Training plus the records' forward passes over ``eval_examples`` (train + test) every
        ``record_every`` steps: ``+ 2 * eval_examples * width**2 * depth * steps / record_every``
        (both the PyTorch loop and gradflow do this work)."""
        records = self.steps // self.record_every
        return self.flops_per_run + 2.0 * eval_examples * self.width**2 * self.depth * records

    def config(self, *, batch_size: int | str | None = "default", steps: int | None = None):
        return gf.training.TrainConfig(
            model=gf.models.MLP(
                widths=(self.width,) * self.depth,
                out=CLASSES,
                activation=self.activation,
                kernel_init="lecun_normal",
                bias_init="zeros",
            ),
            optimizer="sgd",
            loss="softmax_cross_entropy",
            steps=self.steps if steps is None else steps,
            batch_size=self.batch if batch_size == "default" else batch_size,
            record_every=self.record_every,
        )


@dataclasses.dataclass(frozen=True)
class CompileSweep:
    """Compile time of the init + probe program at several depths (the README's way).

    ``jax.jit(jax.vmap(lambda k: probe(model, model.init(k, x), x, y)))`` for ``seeds`` keys of a
    ``tanh`` MLP of ``width`` units and each depth in ``depths``, batch ``batch`` of digits;
    compiled ahead of time (``.lower().compile()``), run once, and its report checked against
    ``jax.grad`` of the same loss (per-layer kernel gradient norms of the first seed).
    """

    title: str
    depths: tuple[int, ...]
    width: int = 64
    seeds: int = 8
    batch: int = 64
    activation: str = "tanh"

    def model(self, depth: int) -> gf.models.MLP:
        return gf.models.MLP(
            widths=(self.width,) * depth,
            out=CLASSES,
            activation=self.activation,
            kernel_init="lecun_normal",
            bias_init="zeros",
        )


@dataclasses.dataclass(frozen=True)
class ChainSweep:
    """Gradients of ``chains`` one-neuron chains of depth ``depth`` (workload 4).

    :math:`w, b \\sim N(0, 1)` (the seeds' draw), :math:`x \\sim U(0, 1)`,
    :math:`\\partial C/\\partial a_L \\sim N(0, 1)`, all float32.
    """

    title: str
    chains: int
    depth: int
    activation: str = "sigmoid"
    naive_timed: int | None = None


FULL: dict[str, Any] = {
    "w1": ProbeSweep(
        "probe sweep, research size", seeds=1024, depth=10, width=30, batch=64, block=64,
        sweep_run=True,
    ),
    "w2": ProbeSweep(
        "probe sweep, large", seeds=32, depth=50, width=256, batch=256, activation="tanh",
        bias_init="zeros", block=1,
    ),
    "w3": TrainSweep(
        "training sweep", seeds=16, learning_rates=(0.01, 0.03, 0.1, 0.3), depth=20, width=64,
        steps=200, record_every=10, batch=64, naive_timed=8, torch_timed=8,
    ),
    "w4": ChainSweep("analytic chain gradients", chains=10_000, depth=100),
    "compile": CompileSweep("compile time of init + probe vs depth", depths=(10, 50, 200)),
}  # fmt: skip

QUICK: dict[str, Any] = {
    "w1": ProbeSweep(
        "probe sweep, research size (quick)", seeds=64, depth=3, width=8, batch=16, block=16,
        sweep_run=True,
    ),
    "w2": ProbeSweep(
        "probe sweep, large (quick)", seeds=4, depth=4, width=32, batch=32, activation="tanh",
        bias_init="zeros", block=1,
    ),
    "w3": TrainSweep(
        "training sweep (quick)", seeds=2, learning_rates=(0.03, 0.3), depth=3, width=8,
        steps=20, record_every=10, batch=16, naive_timed=2, torch_timed=2,
    ),
    "w4": ChainSweep("analytic chain gradients (quick)", chains=200, depth=10),
    "compile": CompileSweep(
        "compile time of init + probe vs depth (quick)", depths=(2, 4), width=8, seeds=2, batch=8
    ),
}  # fmt: skip

#: The GPU suite (``--suite gpu``): JAX on the GPU, PyTorch on CUDA, sized to fit one prepared
#: session (``benchmarks/gpu_session.sh``). The PyTorch loops time a prefix of their runs.
GPU_FULL: dict[str, Any] = {
    "w2big": ProbeSweep(
        "probe sweep, big (float32 vs fast precision)", seeds=16, depth=50, width=1024,
        batch=1024, activation="tanh", bias_init="zeros", torch_timed=4,
        precisions=("highest", "default"), extra_ways=False,
    ),
    "w1": ProbeSweep(
        "probe sweep, research size", seeds=1024, depth=10, width=30, batch=64, torch_timed=64,
        naive_timed=64, sweep_run=True,
    ),
    "w2": ProbeSweep(
        "probe sweep, large", seeds=32, depth=50, width=256, batch=256, activation="tanh",
        bias_init="zeros", torch_timed=8, naive_timed=8,
    ),
    "w3": TrainSweep(
        "training sweep", seeds=16, learning_rates=(0.01, 0.03, 0.1, 0.3), depth=20, width=64,
        steps=200, record_every=10, batch=64, naive_timed=4, torch_timed=4,
    ),
    "compile": CompileSweep("compile time of init + probe vs depth", depths=(10, 50, 200)),
    "w4": ChainSweep("analytic chain gradients", chains=10_000, depth=100),
}  # fmt: skip

GPU_QUICK: dict[str, Any] = {
    "w2big": ProbeSweep(
        "probe sweep, big (quick)", seeds=2, depth=3, width=32, batch=32, activation="tanh",
        bias_init="zeros", torch_timed=2, precisions=("highest", "default"), extra_ways=False,
    ),
    **{k: v for k, v in QUICK.items()},
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Target:
    """One speed target, scored on one run's results.

    ``what``: ``"speedup:<base>"`` (the base way's median / ``method``'s median),
    ``"e2e:<base>"`` (the base's median / ``method``'s compile + median: a one-shot run),
    ``"peak_fraction"`` (``method``'s FLOP/s over the float32 matmul peak),
    ``"compile_s"`` (``method``'s compile seconds, at most ``threshold``) or
    ``"compile_ratio"`` (compile at the deepest over the shallowest depth, at most).
    """

    suite: str  # "cpu" or "gpu"
    issue: int
    workload: str
    method: str
    what: str
    threshold: float

    @property
    def lower_is_better(self) -> bool:
        return self.what in ("compile_s", "compile_ratio")


#: Issue 9's CPU targets and issue 14's CPU and GPU targets.
TARGETS: tuple[Target, ...] = (
    Target("cpu", 9, "w1", "gradflow", "speedup:pytorch", 20.0),
    Target("cpu", 9, "w1", "gradflow", "speedup:naive_jax", 5.0),
    Target("cpu", 9, "w2", "gradflow", "speedup:pytorch", 1.5),
    Target("cpu", 9, "w2", "gradflow", "peak_fraction", 0.5),
    Target("cpu", 9, "w3", "gradflow", "speedup:pytorch", 10.0),
    Target("cpu", 14, "compile", "gradflow_readme", "compile_ratio", 1.5),
    Target("cpu", 14, "w2", "gradflow", "compile_s", 3.0),
    Target("cpu", 14, "w1", "gradflow_readme", "speedup:torch_func", 1.0),
    Target("cpu", 14, "w1", "gradflow", "speedup:torch_func", 1.0),
    Target("cpu", 14, "w2", "gradflow_readme", "speedup:torch_func", 1.0),
    Target("cpu", 14, "w2", "gradflow", "speedup:torch_func", 1.0),
    *(
        Target("cpu", 14, w, "gradflow", f"e2e:{base}", 1.0)
        for w in ("w1", "w2", "w3", "w4")
        for base in ("torch_func", "pytorch")
    ),
    Target("gpu", 14, "w1", "gradflow", "speedup:torch_func", 10.0),
    Target("gpu", 14, "w2", "gradflow", "speedup:torch_func", 5.0),
    Target("gpu", 14, "w3", "gradflow", "speedup:torch_func", 24.0),
    Target("gpu", 14, "w2big", "gradflow", "speedup:torch_func", 1.0),
    Target("gpu", 14, "w2big", "gradflow", "peak_fraction", 0.85),
    *(
        Target("gpu", 14, w, "gradflow", "e2e:torch_func", 1.0)
        for w in ("w1", "w2", "w2big", "w3", "w4")
    ),
)


@dataclasses.dataclass
class Options:
    """How to measure: repeats (median of), a per-way time budget, torch threads, profiling."""

    repeats: int = 5
    budget_s: float = 60.0
    min_repeats: int = 3
    torch_threads: int | None = None  # None: the faster of 1 and every core (calibrated)
    torch: bool = True
    profile: bool = False
    peak_gflops: float | None = None
    deadline: float | None = None  # time.perf_counter() after which no further way starts


# ------------------------------------------------------------------------------------ helpers


def _mesh() -> tuple[Mesh, NamedSharding]:
    mesh = Mesh(np.asarray(jax.devices()), (gf.sweep.MESH_AXIS,))
    return mesh, NamedSharding(mesh, PartitionSpec(gf.sweep.MESH_AXIS))


def _padded(values: np.ndarray, n_devices: int) -> np.ndarray:
    """Pad the run axis to a multiple of the device count by repeating the last run."""
    pad = -len(values) % n_devices
    return np.concatenate([values, np.repeat(values[-1:], pad, axis=0)]) if pad else values


def _sharded_program(
    one: Callable, n_args: int, block_size: int | str | None = "auto"
) -> tuple[Callable, NamedSharding]:
    """gradflow.sweep.run's program (``block_size="auto"``, its default; ``None``:
    ``jit(vmap(one))`` of every run of a device at once), sharded on the run axis."""
    mesh, sharding = _mesh()
    program = gf.sweep.batched(one, mesh, block_size)
    return jax.jit(program, in_shardings=(sharding,) * n_args, out_shardings=sharding), sharding


def _blocked_program(one: Callable, block: int, n_args: int) -> Callable:
    """gradflow.sweep's program with ``block_size=block``: each device maps ``one`` over its
    runs ``block`` at a time (vmapped within a block), one compiled program."""
    mesh, sharding = _mesh()
    program = gf.sweep.batched(one, mesh, block)
    return jax.jit(program, in_shardings=(sharding,) * n_args, out_shardings=sharding)


def _jax_way(
    method: str,
    label: str,
    jitted: Callable,
    args: Sequence[np.ndarray],
    total: int,
    options: Options,
    *,
    notes: str = "",
) -> tuple[Measurement, Any]:
    """Compile ahead of time, then time ``to_host(compiled(*args))[:total]``."""
    n_dev = len(jax.devices())
    padded = [_padded(np.asarray(a), n_dev) for a in args]
    compiled, compile_s = harness.compile_jax(jitted, *padded)

    def go():
        return jax.tree.map(lambda v: v[:total], harness.to_host(compiled(*padded)))

    times, out = harness.measure(
        go, repeats=options.repeats, budget_s=options.budget_s, min_repeats=options.min_repeats
    )
    return Measurement(method, label, times, compile_s, total, total, notes), (out, compiled)


def _loop_way(
    method: str,
    label: str,
    run_all: Callable[[], Any],
    first_call: Callable[[], Any] | None,
    timed: int,
    total: int,
    options: Options,
    *,
    notes: str = "",
    calls: int | None = None,
) -> tuple[Measurement, Any]:
    """Time a Python loop over ``timed`` runs (``first_call`` compiles, if anything does).

    ``calls``: calls per repeat (default ``timed``); compile time = first call - one call.
    """
    first_s = None
    if first_call is not None:
        t0 = time.perf_counter()
        first_call()
        first_s = time.perf_counter() - t0
    times, out = harness.measure(
        run_all,
        repeats=options.repeats,
        budget_s=options.budget_s,
        min_repeats=options.min_repeats,
        warmup=None if first_call is None else False,
    )
    compile_s = None
    if first_s is not None:
        compile_s = max(first_s - statistics.median(times) / (calls or timed), 0.0)
    if timed < total:
        sub = f"timed on {timed} of {total} runs, scaled x{total / timed:g}"
        notes = f"{notes}; {sub}" if notes else sub
    return Measurement(method, label, times, compile_s, timed, total, notes), out


def _rel_err(a: Any, b: Any) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b)) if b.size else 0.0
    if not np.all(np.isfinite(a) == np.isfinite(b)):
        return float("inf")
    ok = np.isfinite(b)
    diff = np.max(np.abs(a[ok] - b[ok])) if ok.any() else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def _check(name: str, err: float, tol: float, note: str = "") -> dict[str, Any]:
    return {"check": name, "max_rel_err": err, "tol": tol, "ok": bool(err <= tol), "note": note}


def _expired(options: Options) -> bool:
    """Whether the run's deadline (``--deadline``) has passed: no further way starts."""
    return options.deadline is not None and time.perf_counter() > options.deadline


def _torch_way(
    label: str,
    run: Callable[[], Any],
    calibrate: Callable[[], Any],
    timed: int,
    total: int,
    options: Options,
    *,
    calls: int | None = None,
    method: str = "pytorch",
) -> tuple[Measurement, Any]:
    """The PyTorch way at its best intra-op thread count.

    ``options.torch_threads`` if given; otherwise 1 and every core are each timed on a short
    ``calibrate()`` run (after one warm-up call), and every count within 3x of the fastest is
    measured in full; the fastest full measurement is reported, the others in its notes. (Loops
    of small ops usually run fastest on one thread, large matmuls on all cores, and on a loaded
    machine OpenMP's spinning threads can make "all cores" many times slower, so neither default
    is fair everywhere.)
    """
    from benchmarks import torch_baselines as tb

    if tb.DEVICE != "cpu":  # on a GPU the host threads only launch kernels
        counts, calibration = [options.torch_threads or 1], {}
    elif options.torch_threads is not None:
        counts, calibration = [options.torch_threads], {}
    else:
        calibration = {}
        for n in sorted({1, os.cpu_count() or 1}):
            tb.set_threads(n)
            calibrate()
            t0 = time.perf_counter()
            calibrate()
            calibration[n] = time.perf_counter() - t0
        fastest = min(calibration.values())
        counts = sorted(
            (n for n, t in calibration.items() if t <= 3 * fastest), key=calibration.get
        )
    results = {}
    for n in counts:
        tb.set_threads(n)
        results[n] = _loop_way(method, label, run, None, timed, total, options, calls=calls)
    best = min(results, key=lambda n: results[n][0].median_s)
    m, out = results[best]
    parts = [f"torch threads {best}" if tb.DEVICE == "cpu" else f"torch on {tb.DEVICE}"]
    if calibration:
        parts.append("calibration " + ", ".join(f"{n}: {t:.3g} s" for n, t in calibration.items()))
    others = [f"{n} threads: {results[n][0].median_s:.3g} s" for n in results if n != best]
    if others:
        parts.append("also measured " + ", ".join(others))
    m.notes = "; ".join([*parts, m.notes] if m.notes else parts)
    m.extra["torch_threads"] = best
    m.extra["calibration_s"] = {str(n): t for n, t in calibration.items()}
    m.extra["medians_by_threads"] = {str(n): r[0].median_s for n, r in results.items()}
    return m, out


@functools.cache
def _digits():
    return gf.data.load_digits()


# ------------------------------------------------------------------------------ probe sweeps


def _probe_one(model: gf.models.MLP, x: jax.Array, y: jax.Array, make_key=jax.random.key):
    def one(seed):
        return gf.probes.probe(model, model.init(make_key(seed), x), x, y)

    return one


def _bare_one(model: gf.models.MLP, x: jax.Array, y: jax.Array) -> Callable:
    """What ``torch_func`` computes, in plain JAX, for one seed: gradflow's init (the same
    keys), a hand-written forward pass (hidden layers as one ``lax.scan``) with a zero
    perturbation on every pre-activation, one ``jax.value_and_grad`` and the three gradient
    norms per layer -- none of the probe's other statistics and no layer discovery."""
    act = gf.activations.get(model.activation).fn
    loss_fn = gf.probes.get_loss("softmax_cross_entropy")
    names = [f"dense_{i}" for i in range(len(model.widths) + 1)]
    batch = x.shape[0]

    def forward(p, e):
        first, hidden, last = p[0], p[1], p[2]
        h = act(x @ first["kernel"] + first["bias"] + e[0])

        def layer(h, pe):
            q, d = pe
            return act(h @ q["kernel"] + q["bias"] + d), None

        if hidden is not None:
            h, _ = jax.lax.scan(layer, h, (hidden, e[1]))
        return loss_fn(h @ last["kernel"] + last["bias"] + e[2], y)

    def one(seed):
        params = model.init(gf.rng.threefry_key(seed), x)["params"]
        layers = [params[n] for n in names]
        mid = layers[1:-1]  # the hidden layers after the first, stacked for the scan
        p = (layers[0], jax.tree.map(lambda *a: jnp.stack(a), *mid) if mid else None, layers[-1])
        e = jax.tree.map(lambda q: jnp.zeros((*q["bias"].shape[:-1], batch, q["bias"].shape[-1])),
                         p, is_leaf=lambda q: isinstance(q, dict) and "bias" in q)  # fmt: skip
        c, (gp, ge) = jax.value_and_grad(forward, argnums=(0, 1))(p, e)

        def per_layer(f, tree):  # f of one layer, over (first, the stacked hidden, readout)
            first, hidden, last = tree
            middle = [] if hidden is None else [jax.vmap(f)(hidden)]
            return jnp.concatenate([f(first)[None], *middle, f(last)[None]])

        return {
            "loss": c,
            "weight_grad_norm": per_layer(lambda g: jnp.linalg.norm(g["kernel"]), gp),
            "bias_grad_norm": per_layer(lambda g: jnp.linalg.norm(g["bias"]), gp),
            "preact_grad_norm": per_layer(
                lambda d: jnp.mean(jnp.linalg.norm(d * batch, axis=-1), axis=-1), ge
            ),
        }

    return one


def _readme_program(model, x, y) -> Callable:
    """The README's way: ``gf.sweep.vmap(lambda s: probe(model, model.init(k, x), x, y))`` with
    ``k = gf.rng.threefry_key(s)`` (``jax.random.key(s)``'s numbers), from the seeds (its
    ``.lower`` compiles ahead of time, as ``jax.jit``'s does)."""
    return gf.sweep.vmap(_probe_one(model, x, y, gf.rng.threefry_key))


def _jax_vmap_program(model, x, y) -> Callable:
    """Plain JAX: ``jax.jit(jax.vmap(lambda s: probe(model, model.init(k, x), x, y)))``, one
    device, from the seeds."""
    one = _probe_one(model, x, y, gf.rng.threefry_key)
    return jax.jit(lambda seeds: jax.vmap(one)(seeds))


def probe_sweep(cfg: ProbeSweep, options: Options) -> dict[str, Any]:
    """Workloads 1 and 2 (and the GPU suite's w2big): see :class:`ProbeSweep`."""
    data = _digits()
    x, y = jnp.asarray(data.x_train[: cfg.batch]), jnp.asarray(data.y_train[: cfg.batch])
    model = cfg.model()
    one = _probe_one(model, x, y, gf.rng.threefry_key)  # sweep.run's keys: jax.random.key's numbers
    seeds = np.arange(cfg.seeds, dtype=np.uint32)
    measurements: list[Measurement] = []
    checks: list[dict[str, Any]] = []
    skipped: list[str] = []
    notes = "all 13 LayerReport statistics (the PyTorch ways compute only the 3 gradient norms)"

    # gradflow: the program gradflow.sweep.run(fn, grid={}, seeds) compiles by default, at each
    # precision of cfg.precisions ("highest" first: gradflow.config's default)
    program, _ = _sharded_program(one, 1)
    ref = None
    for i, precision in enumerate(cfg.precisions):
        method = "gradflow" if i == 0 else "gradflow_fast"
        if _expired(options):
            skipped.append(method)
            continue
        with gf.config.use_matmul_precision(precision):
            m, (out, _) = _jax_way(
                method,
                "as gradflow.sweep.run's default: jit(vmap(probe(init(gf.rng.threefry_key(seed)))"
                ")) sharded over devices (jax.random.key's numbers), matmul precision "
                f"{precision!r}",
                _sharded_program(one, 1)[0],
                [seeds],
                cfg.seeds,
                options,
                notes=notes,
            )
        m.extra["matmul_precision"] = precision
        measurements.append(m)
        if ref is None:
            ref = out
        else:  # the fast passes move the numbers: by how much, relative to float32
            err = max(_rel_err(getattr(out, s), getattr(ref, s)) for s in _GRAD_STATS)
            checks.append(
                _check(
                    f"gradflow at {precision!r} vs at {cfg.precisions[0]!r} (same seeds)",
                    err,
                    1e-3,
                    "informative: what the fast passes change",
                )
            )
    if ref is None:
        return result(cfg, measurements, checks, {"skipped": skipped})

    # the PyTorch ways next (under a --deadline the ratios matter most), torch.func first
    if options.torch and torch_available():
        for i, precision in enumerate(cfg.precisions):
            method = "torch_func" if i == 0 else "torch_func_fast"
            if _expired(options):
                skipped.append(method)
                continue
            measurements.append(
                _probe_torch_func(cfg, model, x, y, ref, checks, options, method, precision)
            )

        if cfg.torch_timed != 0:
            if _expired(options):
                skipped.append("pytorch")
            else:
                measurements.append(_probe_torch(cfg, model, x, y, ref, checks, options))

    if cfg.extra_ways:
        if _expired(options):
            skipped.extend(["gradflow_readme", "jax_vmap", "jax_bare"])
        else:
            ways = (
                ("gradflow_readme", "the README's way: gf.sweep.vmap(lambda s: probe(model, "
                 "model.init(gf.rng.threefry_key(s), x), x, y))(seeds)",
                 _readme_program(model, x, y)),
                ("jax_vmap", "plain JAX: jax.jit(jax.vmap(lambda s: probe(model, model.init("
                 "gf.rng.threefry_key(s), x), x, y)))(seeds), one device",
                 _jax_vmap_program(model, x, y)),
                ("jax_bare", "plain JAX doing what torch_func does: gradflow's init, a "
                 "hand-written forward (lax.scan), value_and_grad, the 3 gradient norms; "
                 "gradflow's sharded blocked program", _sharded_program(_bare_one(model, x, y),
                                                                         1)[0]),
            )  # fmt: skip
            for method, label, program in ways:
                m, (out, _) = _jax_way(
                    method, label, program, [seeds], cfg.seeds, options,
                    notes="" if method == "jax_bare" else notes,
                )  # fmt: skip
                measurements.append(m)
                get = (lambda o, k: o[k]) if method == "jax_bare" else getattr
                err = max(_rel_err(get(out, s), getattr(ref, s)) for s in _GRAD_STATS)
                checks.append(_check(f"{method} == gradflow (same seeds)", err, 1e-3))
        # the proposed default paths (another stream; blocks): measured beside the default
        proposed = [
            ("gradflow_native", 'gradflow.sweep.run(rng="native"): gf.rng.key seeds',
             _sharded_program(_probe_one(model, x, y, gf.rng.key), 1)[0]),
            ("gradflow_vmap_all", "gradflow.sweep.run(block_size=None): each device vmaps all "
             'its seeds at once (the default before block_size="auto")',
             _sharded_program(one, 1, None)[0]),
        ]  # fmt: skip
        if cfg.block:
            proposed.append(
                ("gradflow_blocked",
                 f"gradflow.sweep.run(block_size={cfg.block}): each device maps over its seeds "
                 f"{cfg.block} at a time", _blocked_program(one, cfg.block, 1)),
            )  # fmt: skip
        for method, label, prog in proposed:
            if _expired(options):
                skipped.append(method)
                continue
            m, (out, _) = _jax_way(method, label, prog, [seeds], cfg.seeds, options)
            measurements.append(m)
            if method == "gradflow_native":
                med = {k: np.median(getattr(out, k), 0) for k in _GRAD_STATS}
                ref_med = {k: np.median(getattr(ref, k), 0) for k in _GRAD_STATS}
                spread = max(_rel_err(np.log(med[k]), np.log(ref_med[k])) for k in _GRAD_STATS)
                checks.append(
                    _check(
                        "gradflow_native vs gradflow: per-layer median over seeds (log scale, "
                        "two random streams)",
                        spread,
                        0.25,
                        "informative: differs by sampling noise",
                    )
                )
            else:
                err = max(_rel_err(getattr(out, s), getattr(ref, s)) for s in _GRAD_STATS)
                checks.append(_check(f"{method} == gradflow (same seeds)", err, 1e-3))

    if cfg.sweep_run:
        if _expired(options):
            skipped.append("gradflow_sweep_run")
        else:
            measurements.append(_probe_sweep_run(cfg, model, x, y))

    timed = min(cfg.naive_timed or cfg.seeds, cfg.seeds)
    if cfg.extra_ways and cfg.naive_timed != 0:
        if _expired(options):
            skipped.append("naive_jax")
        else:
            jitted = jax.jit(_probe_one(model, x, y))  # jax.random.key, as a script writes it

            def naive():
                outs = jax.device_get([jitted(s) for s in seeds[:timed]])
                return {s: np.stack([getattr(o, s) for o in outs]) for s in ("loss", *_GRAD_STATS)}

            with gf.config.use_matmul_precision(cfg.precisions[0]):
                m, out = _loop_way(
                    "naive_jax",
                    "jax.jit(probe) called once per seed in a Python loop",
                    naive,
                    lambda: jax.block_until_ready(jitted(seeds[0])),
                    timed,
                    cfg.seeds,
                    options,
                )
            measurements.append(m)
            err = max(_rel_err(out[s], getattr(ref, s)[:timed]) for s in _GRAD_STATS)
            checks.append(_check("naive_jax == gradflow (same seeds)", err, 1e-3))

    extra: dict[str, Any] = {"skipped": skipped}
    if not _expired(options):
        with gf.config.matmul_scope():
            extra["layer_matmul"] = harness.batched_matmul_rate(
                cfg.seeds, cfg.batch, cfg.width, cfg.width
            )
    if options.profile:
        extra["breakdown"] = _probe_breakdown(cfg, model, x, y, options)
        extra["profile"] = _profile(program, [seeds], _PROBE_CATEGORIES)
    return result(cfg, measurements, checks, extra)


def _torch_precision(precision: str) -> str:
    """torch.set_float32_matmul_precision's name for a gradflow.config precision."""
    return {"highest": "highest", "high": "high", "default": "high"}[gf.config.canonical(precision)]


def _probe_torch(cfg, model, x, y, ref, checks, options) -> Measurement:
    import torch

    from benchmarks import torch_baselines as tb

    # Same numbers as gradflow for the same parameters (seeds 0 and 1)?
    errs = []
    xt = np.array(x, np.float32)
    yt = torch.from_numpy(np.asarray(y, np.int64)).to(tb.DEVICE)
    for s in range(min(2, cfg.seeds)):
        params = model.init(jax.random.key(np.uint32(s)), x)["params"]
        rep = tb.probe(tb.from_jax(params), torch.from_numpy(xt).to(tb.DEVICE), yt, cfg.activation)
        errs += [_rel_err(rep[k], getattr(ref, k)[s]) for k in ("loss", *_GRAD_STATS)]
    checks.append(_check("pytorch == gradflow (same parameters, 2 seeds)", max(errs), 1e-3))
    timed = min(cfg.torch_timed or cfg.seeds, cfg.seeds)

    def sweep(n):
        return tb.probe_sweep(
            range(n), cfg.widths, xt, np.asarray(y), cfg.activation, bias_init=cfg.bias_init
        )

    m, out = _torch_way(
        "Python loop over seeds: nn.Linear + nn.init, backward(), .grad, tensor hooks",
        lambda: sweep(timed),
        lambda: sweep(min(2, timed)),
        timed,
        cfg.seeds,
        options,
    )
    # Same distribution over seeds (different random streams): per-layer medians.
    med = {k: np.median(out[k], 0) for k in _GRAD_STATS}
    ref_med = {k: np.median(getattr(ref, k)[:timed], 0) for k in _GRAD_STATS}
    spread = max(_rel_err(np.log(med[k]), np.log(ref_med[k])) for k in _GRAD_STATS)
    checks.append(
        _check(
            "pytorch vs gradflow: per-layer median over seeds (log scale, own random streams)",
            spread,
            0.25,
            "informative: differs by sampling noise",
        )
    )
    return m


def _probe_torch_func(cfg, model, x, y, ref, checks, options, method, precision) -> Measurement:
    import torch

    from benchmarks import torch_baselines as tb

    tb.set_matmul_precision(_torch_precision(precision))
    try:
        xt = np.array(x, np.float32)
        yt = np.asarray(y, np.int64)
        if method == "torch_func":  # same numbers as gradflow for the same parameters
            n = min(4, cfg.seeds)
            params = jax.vmap(lambda s: model.init(jax.random.key(s), x)["params"])(
                jnp.arange(n, dtype=jnp.uint32)
            )
            got = tb.probe_func(
                tb.stack_from_jax(params),
                torch.from_numpy(xt).to(tb.DEVICE),
                torch.from_numpy(yt).to(tb.DEVICE),
                cfg.activation,
                cfg.widths,
            )
            err = max(
                _rel_err(got[k].detach().cpu().numpy(), getattr(ref, k)[:n])
                for k in ("loss", *_GRAD_STATS)
            )
            checks.append(_check(f"torch_func == gradflow (same parameters, {n} seeds)", err, 1e-3))

        def sweep(n):
            return tb.probe_func_sweep(
                n, cfg.widths, xt, yt, cfg.activation, bias_init=cfg.bias_init
            )

        m, out = _torch_way(
            "torch.func: stacked parameters (one randn per tensor), functional_call, vmap(grad) "
            f"over all seeds at once; float32 matmul precision {_torch_precision(precision)!r}",
            lambda: sweep(cfg.seeds),
            lambda: sweep(min(2, cfg.seeds)),
            cfg.seeds,
            cfg.seeds,
            options,
            calls=1,
            method=method,
        )
    finally:
        tb.set_matmul_precision("highest")
    if method == "torch_func":
        med = {k: np.median(out[k], 0) for k in _GRAD_STATS}
        ref_med = {k: np.median(getattr(ref, k), 0) for k in _GRAD_STATS}
        spread = max(_rel_err(np.log(med[k]), np.log(ref_med[k])) for k in _GRAD_STATS)
        checks.append(
            _check(
                "torch_func vs gradflow: per-layer median over seeds (log scale, own random "
                "streams)",
                spread,
                0.25,
                "informative: differs by sampling noise",
            )
        )
    return m


def _probe_sweep_run(cfg: ProbeSweep, model, x, y) -> Measurement:
    """gradflow.sweep.run end to end, once: compile + run + tidy table + parquet store."""

    def fn(hparams, key):
        rep = gf.probes.probe(model, model.init(key, x), x, y)
        return {s: getattr(rep, s) for s in gf.probes.STATS}

    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        gf.sweep.run(fn, grid={}, seeds=range(cfg.seeds), workdir=workdir, progress=False)
        wall = time.perf_counter() - t0
        meta = gf.sweep.load_metadata(workdir)
    groups = meta["sessions"][-1]["groups"]
    compile_s = sum(g["compile_s"] for g in groups)
    run_s = sum(g["run_s"] for g in groups)
    write_s = sum(g["write_s"] for g in groups)
    return Measurement(
        "gradflow_sweep_run",
        "gradflow.sweep.run(fn, grid={}, seeds=range(n)) end to end, one call",
        [run_s + write_s],
        compile_s,
        cfg.seeds,
        cfg.seeds,
        notes=(
            f"one call (it compiles every time): wall {wall:.2f} s = compile {compile_s:.2f} + "
            f"run and tidy table {run_s:.2f} + parquet write {write_s:.2f} + setup; "
            "time = run + write"
        ),
        extra={"wall_s": wall, "run_s": run_s, "write_s": write_s},
    )


def _probe_breakdown(cfg, model, x, y, options) -> dict[str, Any]:
    """Where the gradflow program's time goes: init (random numbers) vs probe, threefry mode."""
    seeds = np.arange(cfg.seeds, dtype=np.uint32)
    out: dict[str, Any] = {}

    def timed(f, *args):
        compiled, compile_s = harness.compile_jax(jax.jit(f), *args)
        times, res = harness.measure(
            lambda: harness.to_host(compiled(*args)), repeats=options.repeats, min_repeats=3
        )
        return {"median_s": statistics.median(times), "compile_s": compile_s}, res

    init = jax.vmap(lambda s: model.init(jax.random.key(s), x))
    out["init_only"], params = timed(init, seeds)
    fused = jax.vmap(lambda s: model.init(gf.rng.threefry_key(s), x))  # the same numbers
    out["init_only_gf_rng_threefry_key"], _ = timed(fused, seeds)
    native = jax.vmap(lambda s: model.init(gf.rng.key(s), x))
    out["init_only_gf_rng_key"], _ = timed(native, seeds)
    out["probe_only"], _ = timed(jax.vmap(lambda v: gf.probes.probe(model, v, x, y)), params)
    one = _probe_one(model, x, y)
    with jax.threefry_partitionable(False):
        out["gradflow_threefry_partitionable_false"], _ = timed(jax.vmap(one), seeds)
        if cfg.block:
            out["blocked_threefry_partitionable_false"], _ = timed(
                lambda s: jax.lax.map(one, s, batch_size=cfg.block), seeds
            )
    return out


# ----------------------------------------------------------------------------- training sweep


def train_sweep(cfg: TrainSweep, options: Options) -> dict[str, Any]:
    """Workload 3: see :class:`TrainSweep`."""
    data = _digits()
    fn = gf.training.train_fn(cfg.config(), data)
    runs = cfg.runs
    lrs = np.asarray([r[0] for r in runs], np.float32)
    seeds = np.asarray([r[1] for r in runs], np.uint32)
    n = len(runs)

    def one(lr, seed, make_key=gf.rng.threefry_key):  # sweep.run's keys (jax.random.key's numbers)
        return fn({"learning_rate": lr}, make_key(seed))

    measurements: list[Measurement] = []
    checks: list[dict[str, Any]] = []
    skipped: list[str] = []
    program, _ = _sharded_program(one, 2)
    m, (ref, _) = _jax_way(
        "gradflow",
        "jit(vmap(train_fn)) over (learning rate, seed), sharded over devices",
        program,
        [lrs, seeds],
        n,
        options,
        notes="records also train/test loss and accuracy on the full sets and parameter norms",
    )
    measurements.append(m)

    if options.torch and torch_available():
        if _expired(options):
            skipped.append("torch_func")
        else:
            measurements.append(_train_torch_func(cfg, data, ref, checks, options))
        if _expired(options):
            skipped.append("pytorch")
        else:
            measurements.append(_train_torch(cfg, data, ref, checks, options))

    if cfg.sweep_run:
        if _expired(options):
            skipped.append("gradflow_sweep_run")
        else:
            measurements.append(_train_sweep_run(cfg, fn))

    if _expired(options):
        skipped.append("naive_jax")
    else:
        jitted = jax.jit(functools.partial(one, make_key=jax.random.key))  # as a script writes it
        timed_runs = _subset(cfg, cfg.naive_timed)

        def naive():
            outs = jax.device_get([jitted(np.float32(lr), np.uint32(s)) for lr, s in timed_runs])
            return {k: np.stack([o[k] for o in outs]) for k in outs[0]}

        m, out = _loop_way(
            "naive_jax",
            "jax.jit(train_fn) called once per (learning rate, seed) in a Python loop",
            naive,
            lambda: jax.block_until_ready(jitted(lrs[0], seeds[0])),
            len(timed_runs),
            n,
            options,
        )
        measurements.append(m)
        idx = [runs.index(r) for r in timed_runs]
        err = _rel_err(out["grad_norm"][:, 0], ref["grad_norm"][idx, 0])
        checks.append(_check("naive_jax == gradflow: first record of grad_norm", err, 1e-3))

    extra = {
        "flops_per_run": cfg.flops_with_eval(len(data.x_train) + len(data.x_test)),
        "flops_counted": "6 B W^2 D per step + 2 (train + test examples) W^2 D per record",
        "skipped": skipped,
    }
    if not _expired(options):
        with gf.config.matmul_scope():
            extra["layer_matmul"] = harness.batched_matmul_rate(n, cfg.batch, cfg.width, cfg.width)
    if options.profile:
        extra["profile"] = _profile(program, [lrs, seeds], _TRAIN_CATEGORIES)
    return result(cfg, measurements, checks, extra)


def _train_torch_func(cfg: TrainSweep, data, ref, checks, options) -> Measurement:
    from benchmarks import torch_baselines as tb

    # Same records as gradflow for the same parameters, full batch, 2 records, 4 networks.
    steps = 2 * cfg.record_every
    check_cfg = cfg.config(batch_size=None, steps=steps)
    picks = cfg.runs[: min(4, len(cfg.runs))]
    states = [
        gf.training.init_state(check_cfg, data.x_train, jax.random.key(np.uint32(s)),
                               {"learning_rate": lr})
        for lr, s in picks
    ]  # fmt: skip
    check_fn = jax.jit(gf.training.train_fn(check_cfg, data))
    want = [check_fn({"learning_rate": lr}, jax.random.key(np.uint32(s))) for lr, s in picks]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[st.params for st in states])
    got = tb.train_func(
        tb.stack_from_jax(stacked),
        [lr for lr, _ in picks],
        data,
        activation=cfg.activation,
        widths=cfg.widths,
        steps=steps,
        batch_size=None,
        record_every=cfg.record_every,
    )
    keys = ("grad_norm", "update_norm", "param_norm", "loss", "test_accuracy", "batch_loss")
    err = max(_rel_err(got[k], np.stack([np.asarray(w[k]) for w in want])) for k in keys)
    checks.append(
        _check(
            f"torch_func == gradflow (same parameters, full batch, {steps} steps, "
            f"{len(picks)} networks)",
            err,
            1e-3,
        )
    )
    lrs = [lr for lr, _ in cfg.runs]

    def sweep(steps):
        params = tb.stacked_mlp(cfg.widths, len(lrs), 0, bias_init="zeros")
        return tb.train_func(
            params,
            lrs,
            data,
            activation=cfg.activation,
            widths=cfg.widths,
            steps=steps,
            batch_size=cfg.batch,
            record_every=cfg.record_every,
        )

    m, out = _torch_way(
        "torch.func: every network's parameters stacked, vmap(grad) of the minibatch loss, one "
        "SGD update of the stack per step, records as gradflow's",
        lambda: sweep(cfg.steps),
        lambda: sweep(min(cfg.steps, 2 * cfg.record_every)),
        len(lrs),
        len(lrs),
        options,
        calls=1,
        method="torch_func",
    )
    acc = np.median(out["test_accuracy"][:, -1])
    acc_ref = np.nanmedian(ref["test_accuracy"][:, -1])
    checks.append(
        _check(
            "torch_func vs gradflow: median final test accuracy (own random streams)",
            abs(float(acc) - float(acc_ref)),
            0.1,
            f"{acc:.3f} vs {acc_ref:.3f}; informative",
        )
    )
    return m


def _subset(cfg: TrainSweep, timed: int | None) -> list[tuple[float, int]]:
    """The first seeds of every learning rate: ``timed`` runs covering each learning rate."""
    if timed is None or timed >= len(cfg.runs):
        return cfg.runs
    per_lr = max(1, timed // len(cfg.learning_rates))
    return [(lr, s) for lr in cfg.learning_rates for s in range(min(per_lr, cfg.seeds))]


def _train_torch(cfg: TrainSweep, data, ref, checks, options) -> Measurement:
    from benchmarks import torch_baselines as tb

    # Same records as gradflow for the same parameters, full batch (no sampling), 2 records.
    steps = 2 * cfg.record_every
    check_cfg = cfg.config(batch_size=None, steps=steps)
    lr, key = 0.1, jax.random.key(np.uint32(0))
    state = gf.training.init_state(check_cfg, data.x_train, key, {"learning_rate": lr})
    want = jax.jit(gf.training.train_fn(check_cfg, data))({"learning_rate": lr}, key)
    got = tb.train(
        tb.from_jax(state.params),
        lr,
        data,
        activation=cfg.activation,
        steps=steps,
        batch_size=None,
        record_every=cfg.record_every,
    )
    keys = ("grad_norm", "update_norm", "param_norm", "loss", "test_accuracy", "batch_loss")
    err = max(_rel_err(got[k], np.asarray(want[k])) for k in keys)
    checks.append(
        _check(f"pytorch == gradflow (same parameters, full batch, {steps} steps)", err, 1e-3)
    )
    timed_runs = _subset(cfg, cfg.torch_timed)

    def sweep(runs, steps):
        return tb.train_sweep(
            runs,
            cfg.widths,
            data,
            activation=cfg.activation,
            steps=steps,
            batch_size=cfg.batch,
            record_every=cfg.record_every,
        )

    m, out = _torch_way(
        "Python loop over (learning rate, seed): SGD, backward(), per-layer .grad norms",
        lambda: sweep(timed_runs, cfg.steps),
        lambda: sweep(timed_runs[:1], min(cfg.steps, 2 * cfg.record_every)),
        len(timed_runs),
        len(cfg.runs),
        options,
    )
    acc = np.median([o["test_accuracy"][-1] for o in out])
    idx = [cfg.runs.index(r) for r in timed_runs]
    acc_ref = np.nanmedian(ref["test_accuracy"][idx, -1])
    checks.append(
        _check(
            "pytorch vs gradflow: median final test accuracy (own random streams)",
            abs(float(acc) - float(acc_ref)),
            0.1,
            f"{acc:.3f} vs {acc_ref:.3f}; informative",
        )
    )
    return m


def _train_sweep_run(cfg: TrainSweep, fn) -> Measurement:
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        gf.sweep.run(
            fn,
            grid={"learning_rate": list(cfg.learning_rates)},
            seeds=range(cfg.seeds),
            workdir=workdir,
            axes=gf.training.sweep_axes(fn, {"learning_rate": 0.1}),
            progress=False,
        )
        wall = time.perf_counter() - t0
        groups = gf.sweep.load_metadata(workdir)["sessions"][-1]["groups"]
    compile_s = sum(g["compile_s"] for g in groups)
    run_s = sum(g["run_s"] for g in groups)
    write_s = sum(g["write_s"] for g in groups)
    return Measurement(
        "gradflow_sweep_run",
        "gradflow.sweep.run(train_fn, grid={learning_rate}, seeds) end to end, one call",
        [run_s + write_s],
        compile_s,
        len(cfg.runs),
        len(cfg.runs),
        notes=f"one call: wall {wall:.2f} s, compile {compile_s:.2f} s; time = run + write",
        extra={"wall_s": wall, "run_s": run_s, "write_s": write_s},
    )


# ------------------------------------------------------------------------------ analytic chain


def _chain_inputs(cfg: ChainSweep) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    shape = (cfg.chains, cfg.depth)
    w = rng.standard_normal(shape, dtype=np.float32)
    b = rng.standard_normal(shape, dtype=np.float32)
    x = rng.uniform(size=cfg.chains).astype(np.float32)
    g = rng.standard_normal(cfg.chains, dtype=np.float32)
    return w, b, x, g


def _chain_output(act: gf.activations.Activation):
    def output(w, b, x):
        def step(a, wb):
            a = act.fn(wb[0] * a + wb[1])
            return a, None

        return jax.lax.scan(step, x, (w, b))[0]

    return output


def chain_sweep(cfg: ChainSweep, options: Options) -> dict[str, Any]:
    """Workload 4: see :class:`ChainSweep`."""
    w, b, x, g = _chain_inputs(cfg)
    act = gf.activations.get(cfg.activation)
    out_fn = _chain_output(act)
    measurements: list[Measurement] = []
    checks: list[dict[str, Any]] = []

    def closed():
        return harness.to_host(gf.analytic.chain_grads(w, b, x, g, cfg.activation))

    m, ref = _loop_way(
        "gradflow",
        "gradflow.analytic.chain_grads (closed form, one call on the (N, L) batch)",
        closed,
        closed,
        cfg.chains,
        cfg.chains,
        options,
        calls=1,
    )
    measurements.append(m)

    def closed_log():
        return harness.to_host(gf.analytic.chain_log_grads(w, b, x, g, cfg.activation))

    m, _ = _loop_way(
        "gradflow_log",
        "gradflow.analytic.chain_log_grads (closed form in the log domain)",
        closed_log,
        closed_log,
        cfg.chains,
        cfg.chains,
        options,
        calls=1,
    )
    measurements.append(m)

    def grads_one(w_, b_, x_, g_):
        return jax.grad(lambda ww, bb: g_ * out_fn(ww, bb, x_), argnums=(0, 1))(w_, b_)

    program = jax.jit(jax.vmap(grads_one))
    m, (auto, _) = _jax_way(
        "jax_grad",
        "jit(vmap(jax.grad)) through the chain (lax.scan)",
        program,
        [w, b, x, g],
        cfg.chains,
        options,
    )
    measurements.append(m)
    scale = np.max(np.abs(auto[1]), axis=-1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    err = max(
        _rel_err(ref.bias / scale, auto[1] / scale),
        _rel_err(ref.weight / scale, auto[0] / scale),
    )
    checks.append(_check("chain_grads == jax.grad (relative to each chain's largest)", err, 1e-4))

    jitted = jax.jit(grads_one)
    timed = min(cfg.naive_timed or cfg.chains, cfg.chains)

    def naive():
        outs = jax.device_get([jitted(w[i], b[i], x[i], g[i]) for i in range(timed)])
        return np.stack([o[1] for o in outs])

    m, _ = _loop_way(
        "naive_jax",
        "jax.jit(jax.grad) called once per chain in a Python loop",
        naive,
        lambda: jax.block_until_ready(jitted(w[0], b[0], x[0], g[0])),
        timed,
        cfg.chains,
        options,
    )
    measurements.append(m)

    if options.torch and torch_available():
        from benchmarks import torch_baselines as tb

        m, out = _torch_way(
            "torch autograd through the batched chain (N, L) tensors, loop over layers",
            lambda: tb.chain_grads(w, b, x, g, cfg.activation),
            lambda: tb.chain_grads(w, b, x, g, cfg.activation),
            cfg.chains,
            cfg.chains,
            options,
            calls=1,
        )
        measurements.append(m)
        err = _rel_err(out[0] / scale, auto[1] / scale)
        checks.append(_check("pytorch autograd == jax.grad", err, 1e-4))
        m, out = _torch_way(
            "torch.func: vmap(grad) of one chain over the N chains",
            lambda: tb.chain_grads_func(w, b, x, g, cfg.activation),
            lambda: tb.chain_grads_func(w, b, x, g, cfg.activation),
            cfg.chains,
            cfg.chains,
            options,
            calls=1,
            method="torch_func",
        )
        measurements.append(m)
        err = _rel_err(out[0] / scale, auto[1] / scale)
        checks.append(_check("torch_func == jax.grad", err, 1e-4))
    return result(cfg, measurements, checks, {})


# ---------------------------------------------------------------------- compile time vs depth


def compile_sweep(cfg: CompileSweep, options: Options) -> dict[str, Any]:
    """The compile-time workload: see :class:`CompileSweep`."""
    data = _digits()
    x, y = jnp.asarray(data.x_train[: cfg.batch]), jnp.asarray(data.y_train[: cfg.batch])
    seeds = np.arange(cfg.seeds, dtype=np.uint32)
    loss = gf.probes.get_loss("softmax_cross_entropy")
    measurements: list[Measurement] = []
    checks: list[dict[str, Any]] = []
    skipped: list[str] = []
    per_depth = []
    for depth in cfg.depths:
        method = f"gradflow_readme_depth{depth}"
        if _expired(options):
            skipped.append(method)
            continue
        model = cfg.model(depth)
        padded = _padded(seeds, len(jax.devices()))
        compiled, compile_s = harness.compile_jax(_readme_program(model, x, y), padded)
        t0 = time.perf_counter()
        rep = harness.to_host(compiled(padded))
        run_s = time.perf_counter() - t0
        measurements.append(
            Measurement(
                method,
                f"the README's way at depth {depth}: compile, then one run",
                [run_s],
                compile_s,
                cfg.seeds,
                cfg.seeds,
            )
        )
        per_depth.append({"depth": depth, "compile_s": compile_s, "run_s": run_s})
        # the report still equals jax.grad (kernel gradient norms of seed 0, every layer)
        params = model.init(jax.random.key(np.uint32(0)), x)["params"]
        with gf.config.matmul_scope():
            grads = jax.jit(
                jax.grad(lambda p, model=model: loss(model.apply({"params": p}, x), y))
            )(params)
        want = [float(jnp.linalg.norm(grads[n]["kernel"])) for n in rep.layer_names]
        err = _rel_err(rep.weight_grad_norm[0], np.asarray(want))
        checks.append(_check(f"probe == jax.grad at depth {depth} (kernel norms, seed 0)", err,
                             1e-4))  # fmt: skip
    extra: dict[str, Any] = {"per_depth": per_depth, "skipped": skipped}
    if len(per_depth) >= 2:
        extra["compile_ratio"] = per_depth[-1]["compile_s"] / per_depth[0]["compile_s"]
    return result(cfg, measurements, checks, extra)


# ---------------------------------------------------------------------------------- profiling

_PROBE_CATEGORIES = (
    ("random numbers (init)", r"random|threefry|erf_inv|_normal|_uniform|fold_in|init"),
    ("backward pass", r"transpose\(jvp"),
    ("forward pass", r"jvp\("),
    ("statistics", r"."),
)
_TRAIN_CATEGORIES = (
    ("minibatch sampling (threefry + permutation sort)", r"_shuffle|sort|random|threefry|choice"),
    ("divergence masking", r"_where|select_n"),
    ("records: evaluate train+test, norms", r"^(?!.*while/body.*while/body)"),
    ("train step: backward", r"transpose\(jvp"),
    ("train step: forward", r"jvp\("),
    ("train step: optimizer, norms, gather", r"."),
)


def _profile(program, args, categories) -> dict[str, Any]:
    """Per-category device time of one call of the gradflow program (jax.profiler trace).

    XLA op names are mapped to their JAX source through the compiled HLO's ``op_name``
    metadata, then to the first matching category regex; only outermost op events count (a
    loop's time includes its body's).
    """
    import glob
    import gzip
    import json
    import re

    n_dev = len(jax.devices())
    padded = [_padded(np.asarray(a), n_dev) for a in args]
    compiled = program.lower(*padded).compile()
    source = {}
    for line in compiled.as_text().splitlines():
        hit = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*op_name=\"([^\"]+)\"", line)
        if hit:
            source[hit.group(1)] = hit.group(2)
    jax.block_until_ready(compiled(*padded))
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            jax.block_until_ready(compiled(*padded))
        files = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
        if not files:
            return {"error": "the profiler wrote no trace.json.gz"}
        with gzip.open(files[0]) as f:
            events = json.load(f)["traceEvents"]
    # Only outermost op events count: a loop's event contains the events of the ops it runs.
    ops = sorted(
        (e for e in events if e.get("ph") == "X" and e["name"] in source),
        key=lambda e: (e.get("pid"), e.get("tid"), e["ts"]),
    )
    outer, end = [], {}
    for e in ops:
        lane = (e.get("pid"), e.get("tid"))
        if e["ts"] >= end.get(lane, -1.0):
            outer.append(e)
            end[lane] = e["ts"] + e["dur"]
    totals: dict[str, float] = {}
    by_source: dict[str, float] = {}
    for e in outer:
        src = source[e["name"]]
        label = next(lbl for lbl, rx in categories if re.search(rx, src))
        totals[label] = totals.get(label, 0.0) + e["dur"] / 1e6
        short = re.sub(r"dense_\d+", "dense_*", src)
        by_source[short] = by_source.get(short, 0.0) + e["dur"] / 1e6
    total = sum(totals.values())
    top = sorted(by_source.items(), key=lambda kv: -kv[1])[:8]
    return {
        "op_time_s": total,
        "top_sources": {k: v for k, v in top},
        "categories": {
            k: {"s": v, "share": v / total if total else 0.0}
            for k, v in sorted(totals.items(), key=lambda kv: -kv[1])
        },
    }


# --------------------------------------------------------------------------------- the results


def result(cfg, measurements: list[Measurement], checks, extra) -> dict[str, Any]:
    """The workload's results: config, measurements, speed-ups of every gradflow way."""
    by = {m.method: m for m in measurements}
    bases = ("pytorch", "torch_func", "torch_func_fast", "naive_jax", "jax_grad")
    speedups: dict[str, dict[str, float]] = {}
    e2e: dict[str, dict[str, float]] = {}
    for m in measurements:
        if not m.method.startswith("gradflow"):
            continue
        speedups[m.method] = {
            base: by[base].median_s / m.median_s for base in bases if base in by and m.median_s > 0
        }
        # one-shot use: the other way's time over this way's compile + run
        e2e[m.method] = {
            base: by[base].median_s / m.e2e_s for base in bases if base in by and m.e2e_s > 0
        }
    out = {
        "title": cfg.title,
        "kind": type(cfg).__name__,
        "config": dataclasses.asdict(cfg),
        "measurements": [m.to_json() for m in measurements],
        "speedups": speedups,
        "e2e_speedups": e2e,
        "checks": checks,
        **extra,
    }
    flops = extra.get("flops_per_run", getattr(cfg, "flops_per_run", None))
    if flops is not None:
        runs = cfg.seeds if isinstance(cfg, ProbeSweep) else len(cfg.runs)
        out["flops_per_run"] = flops
        out["runs"] = runs
        out.setdefault("flops_counted", "6 B W^2 D")
        out["gflops"] = {m.method: flops * runs / m.median_s / 1e9 for m in measurements}
    return out


_RUNNERS = {
    ProbeSweep: probe_sweep,
    TrainSweep: train_sweep,
    ChainSweep: chain_sweep,
    CompileSweep: compile_sweep,
}


def run_workload(cfg: Any, options: Options) -> dict[str, Any]:
    """Measure one workload configuration (any of :data:`FULL` / :data:`QUICK`)."""
    try:
        runner = _RUNNERS[type(cfg)]
    except KeyError:
        raise TypeError(f"unknown workload configuration {cfg!r}") from None
    return runner(cfg, options)
