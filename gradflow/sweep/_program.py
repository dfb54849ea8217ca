"""The sharded, jitted program of one static group: ``fn`` of one run -> every run of a chunk."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradflow import config as _config
from gradflow.sweep._devices import _gather, _global_array
from gradflow.sweep._plan import _DIVERGED_STEP, DEFAULT_AXES, _Plan

MESH_AXIS = "sweep"
# ----------------------------------------------------------------------------- fn wrapper


class _OutputError(TypeError):
    """fn returned something that is not a dict of numeric arrays."""


def _flatten_metrics(out: object, prefix: str = "") -> dict[str, jax.Array]:
    if not isinstance(out, Mapping):
        what = "an array" if isinstance(out, jax.Array) else type(out).__name__
        raise _OutputError(
            "fn must return a dict mapping metric names to arrays, e.g. "
            f"{{'loss': losses}}; got {what}"
        )
    flat = {}
    for k, v in out.items():
        if not isinstance(k, str) or not k:
            raise _OutputError(f"fn's metric names must be non-empty strings, got {k!r}")
        name = prefix + k
        if isinstance(v, Mapping):
            flat.update(_flatten_metrics(v, name + "/"))
            continue
        ok = isinstance(v, jax.Array | np.ndarray | np.generic | int | float | bool)
        if ok:
            dtype = np.asarray(v).dtype if not isinstance(v, jax.Array) else v.dtype
            ok = not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and (
                jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)
            )
            ok = ok and not jnp.issubdtype(dtype, jnp.complexfloating)
        if not ok:
            what = f"an array of dtype {v.dtype}" if isinstance(v, jax.Array) else repr(v)
            raise _OutputError(
                f"fn returned metric {name!r} = {what} of type {type(v).__name__}; every metric "
                "must be a real numeric array (jax.Array, numpy array or Python number)"
            )
        flat[name] = jnp.asarray(v)
    return flat


_TRACER_ERRORS = (
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerBoolConversionError,
    jax.errors.TracerIntegerConversionError,
)


# block_size="auto" on CPU: the bytes one block's working set may take on one device (about half
# of a server CPU's shared L3 cache; a constant, so the block, and the rounding, never depend on
# the machine's caches)
_AUTO_BLOCK_BYTES = 16 * 2**20


def _check_block_size(block_size: object) -> None:
    if isinstance(block_size, str):
        if block_size == "auto":
            return
        raise ValueError(
            f"block_size must be a positive integer, 'auto' or None, got {block_size!r}"
        )
    if block_size is not None and (
        isinstance(block_size, bool)
        or not isinstance(block_size, numbers.Integral)
        or block_size < 1
    ):
        raise ValueError(
            f"block_size must be a positive integer, 'auto' or None, got {block_size!r}"
        )


def _subjaxprs(eqn) -> list:
    """The jaxprs inside an equation's parameters (scan, while, cond, pjit, custom rules)."""
    found = []
    for p in eqn.params.values():
        for sub in p if isinstance(p, list | tuple) else [p]:
            inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
            if hasattr(inner, "eqns"):
                found.append(inner)
    return found


def _largest_output(jaxpr) -> int:
    """The most bytes one equation of ``jaxpr`` (or of a jaxpr inside it) produces, all of its
    outputs together: e.g. a forward scan's stacked per-layer values kept for the backward pass."""
    most = 0
    for eqn in jaxpr.eqns:
        avals = [v.aval for v in eqn.outvars if hasattr(v.aval, "shape")]
        out = sum(
            math.prod(a.shape) * a.dtype.itemsize
            for a in avals
            if not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)  # keys: a few words
        )
        most = max(most, out, *(_largest_output(j) for j in _subjaxprs(eqn)))
    return most


def _auto_block(jaxpr, n: int, platform: str) -> int | None:
    """``block_size="auto"`` for ``n`` runs of ``jaxpr`` (one run). On CPU: how many runs' working
    sets fit 16 MiB (the largest set of values one operation of a run produces estimates it);
    all ``n`` if they fit, else the largest divisor of ``n`` that fits (no remainder block, which
    ``lax.map`` would compile as a second body) unless it is under half of what fits, then the
    largest power of two that fits. Elsewhere ``None`` (all at once: an accelerator wants the
    largest batch)."""
    if platform != "cpu" or n <= 1:
        return None
    fits = max(1, _AUTO_BLOCK_BYTES // max(_largest_output(jaxpr), 1))
    if fits >= n:
        return None
    divisor = max(d for d in range(1, fits + 1) if n % d == 0)
    return divisor if 2 * divisor > fits else 1 << (fits.bit_length() - 1)


def _traced_once(one: Callable, args: tuple) -> tuple[Callable, object]:
    """``one`` traced once for a single run (``args`` have the run axis first): a function that
    evaluates its jaxpr (vmapped or mapped like ``one``, without tracing ``one`` again), and the
    jaxpr."""
    single = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), args)
    closed, shapes = jax.make_jaxpr(one, return_shape=True)(*single)
    out_tree = jax.tree.structure(shapes)
    run_jaxpr = jax_core.jaxpr_as_fun(closed)

    def traced(*a):
        return jax.tree.unflatten(out_tree, run_jaxpr(*jax.tree.leaves(a)))

    return traced, closed.jaxpr


def batched(one: Callable, mesh: Mesh, block_size: int | str | None = None) -> Callable:
    """The per-chunk program of :func:`run`: ``one(*args)`` of one run -> all runs of a chunk.

    Every argument of the returned function has the run axis first (sharded on ``mesh``'s axis
    :data:`MESH_AXIS` when jitted with ``NamedSharding(mesh, P(MESH_AXIS))``). Each device runs its
    own runs under :func:`jax.shard_map`: ``block_size=None`` vmaps ``one`` over them, otherwise
    it maps over them ``block_size`` at a time (``lax.map`` with ``batch_size``, vmapped within a
    block), so only one block's working set is live; ``block_size="auto"`` chooses the block from
    ``one``'s working set (on CPU about as many runs as fit 16 MiB; elsewhere all at once). Under
    ``shard_map`` no op is partitioned by XLA's SPMD partitioner, which would replicate ops it has
    no sharding rule for (LAPACK's QR and SVD custom calls) and gather their inputs across
    devices. It is traced at :mod:`gradflow.config`'s precision policy in force when it is
    traced. Not jitted: wrap it in ``jax.jit`` with the shardings.
    """
    if not callable(one):
        raise TypeError(f"one must be callable as one(*args) for one run, got {one!r}")
    if not isinstance(mesh, Mesh) or MESH_AXIS not in mesh.axis_names:
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh with an axis {MESH_AXIS!r}, got {mesh!r}"
        )
    _check_block_size(block_size)
    spec = PartitionSpec(MESH_AXIS)
    platform = mesh.devices.flat[0].platform

    def per_device(*args):
        leaves = jax.tree.leaves(args)  # every leaf has the (per-device) run axis first
        n = leaves[0].shape[0] if leaves else 0
        run, block = one, block_size
        if block_size == "auto":  # one trace of one run: its jaxpr sizes the block and runs
            run, jaxpr = _traced_once(one, args)
            block = _auto_block(jaxpr, n, platform)
        if block is None or block >= n:
            return jax.vmap(run)(*args)
        return jax.lax.map(lambda a: run(*a), args, batch_size=max(1, block))

    def program(*args):
        # check_vma=False: fn may start scans from constants (train_fn's carries), which the
        # varying-manual-axes check rejects although every device runs its own, independent runs
        with _config.matmul_scope():  # float32 matmuls unless asked (gradflow.config)
            return jax.shard_map(
                per_device,
                mesh=mesh,
                in_specs=(spec,) * len(args),
                out_specs=spec,
                check_vma=False,
            )(*args)

    return program


def vmap(
    fn: Callable, *, block_size: int | str | None = "auto", devices: Sequence | None = None
) -> Callable:
    """``jax.jit(jax.vmap(fn))``, run as :func:`run` runs a sweep: sharded over every device.

    The returned function takes arrays (or pytrees of arrays) whose leading axis is the run
    axis, ``n`` runs (seeds, keys, hyperparameters), and returns ``fn``'s outputs stacked on a
    leading axis of size ``n``: the values of ``jax.jit(jax.vmap(fn))(*args)`` (equal up to
    float32 rounding: XLA may fuse the blocked program differently). The runs are padded to a
    multiple of the device count by repeating the last run (the copies are dropped), sharded
    over a 1-D mesh of ``devices`` (default: this process's ``jax.local_devices()``), and each
    device maps ``fn`` over its own runs ``block_size`` at a time under :func:`jax.shard_map`
    (:func:`batched`; ``"auto"``: as many runs as fit 16 MiB on CPU, all at once on an
    accelerator; ``None``: all at once). Compiled once per input shape and dtype, like
    ``jax.jit``. On a CPU-only machine call :func:`cpu_devices` first thing (one device per
    core), or every run shares one device.

    Example -- 1024 seeds of a probe, one compiled call::

        import gradflow as gf
        gf.sweep.cpu_devices("auto")            # before the first JAX computation
        probe_seeds = gf.sweep.vmap(
            lambda s: gf.probes.probe(model, model.init(gf.rng.threefry_key(s), x), x, y))
        reports = probe_seeds(jnp.arange(1024, dtype=jnp.uint32))  # LayerReport, (1024, L)

    Raises:
      TypeError: ``fn`` is not callable; ``devices`` is not a sequence of JAX devices; at call
        time, an argument leaf is not an array with a leading axis.
      ValueError: ``block_size`` is not a positive integer, ``"auto"`` or ``None``; ``devices``
        is empty or mixes platforms; at call time, no argument, or leading axes of different
        sizes, or zero runs.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(*args) for one run, got {fn!r}")
    _check_block_size(block_size)
    if devices is None:
        devices = jax.local_devices()
    if isinstance(devices, str | bytes) or not isinstance(devices, Sequence):
        raise TypeError(f"devices must be a sequence of JAX devices, got {devices!r}")
    devices = list(devices)
    bad = [d for d in devices if not isinstance(d, jax.Device)]
    if bad:
        raise TypeError(f"devices must be JAX devices (jax.devices()), got {bad[0]!r}")
    if not devices:
        raise ValueError("devices must name at least one device, got an empty sequence")
    if len({d.platform for d in devices}) > 1:
        raise ValueError(
            f"devices must share one platform, got {sorted({d.platform for d in devices})}"
        )
    mesh = Mesh(np.asarray(devices), (MESH_AXIS,))
    sharding = NamedSharding(mesh, PartitionSpec(MESH_AXIS))
    program = jax.jit(batched(fn, mesh, block_size), in_shardings=sharding, out_shardings=sharding)

    def padded(args: tuple) -> tuple[tuple, int, int]:
        leaves, tree = jax.tree.flatten(args)
        if not leaves:
            raise ValueError("gradflow.sweep.vmap: pass at least one array with a run axis")
        leaves = [
            a if hasattr(a, "shape") and hasattr(a, "dtype") else np.asarray(a) for a in leaves
        ]
        scalars = [a for a in leaves if a.ndim == 0]
        if scalars:
            raise TypeError(
                "gradflow.sweep.vmap: every argument needs a leading run axis, got a scalar "
                f"{scalars[0]!r} (close over constants in fn instead)"
            )
        sizes = [a.shape[0] for a in leaves]
        if len(set(sizes)) != 1:
            raise ValueError(
                f"gradflow.sweep.vmap: the arguments' leading (run) axes differ: {sizes}"
            )
        n = sizes[0]
        if n == 0:
            raise ValueError("gradflow.sweep.vmap: zero runs (the leading axes have size 0)")
        pad = -n % mesh.size
        if pad:
            cat = [jnp if isinstance(a, jax.Array) else np for a in leaves]
            leaves = [
                xp.concatenate([a, xp.repeat(a[-1:], pad, axis=0)])
                for xp, a in zip(cat, leaves, strict=True)
            ]
        # placed on the mesh here: jit refuses an argument already committed elsewhere
        return jax.device_put(tuple(jax.tree.unflatten(tree, leaves)), sharding), n, pad

    @functools.wraps(fn)
    def call(*args):
        args, n, pad = padded(args)
        out = program(*args)
        return jax.tree.map(lambda a: a[:n], out) if pad else out

    def lower(*args):
        """The program lowered for ``args`` as :meth:`jax.jit(...).lower <jax.stages.Wrapped.lower>`
        does (ahead-of-time compilation); its compiled form takes ``args`` padded to a multiple
        of the device count."""
        return program.lower(*padded(args)[0])

    call.lower = lower
    return call


def _compile_group(
    fn, plan: _Plan, g: int, sharding: NamedSharding, padded: int, block_size: int | str | None
):
    """Trace and compile group ``g`` once; return (compiled, {metric: per-run shape}).

    ``block_size=None``: ``jit(vmap(one))`` over the padded chunk, sharded on the run axis.
    Otherwise every device maps over its own runs ``block_size`` at a time (``lax.map`` with
    ``batch_size``, vmapped inside a block) under :func:`jax.shard_map`: still one program, but
    only one block's working set is live at a time.
    """
    static_values = plan.groups[g]

    def one(hp: dict, seed):
        hparams = {k: static_values[k] if k in static_values else hp[k] for k in plan.grid}
        return _flatten_metrics(fn(hparams, plan.make_key(seed)))

    program = batched(one, sharding.mesh, block_size)
    jitted = jax.jit(program, in_shardings=(sharding, sharding), out_shardings=sharding)
    hp_spec = {
        k: jax.ShapeDtypeStruct((padded,), plan.batched_dtype(k), sharding=sharding)
        for k in plan.batched
    }
    seed_spec = jax.ShapeDtypeStruct((padded,), np.uint32, sharding=sharding)
    try:
        lowered = jitted.lower(hp_spec, seed_spec)
    except _OutputError:
        raise
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        # e.g. jnp.ones(hparams["n"]) or `if hparams["a"] > 0` with a batched "n" / "a"
        concrete = isinstance(e, (jax.errors.ConcretizationTypeError, *_TRACER_ERRORS))
        if not plan.batched or not (concrete or "Tracer" in str(e)):
            raise
        raise TypeError(
            f"fn needs a concrete value of a batched hyperparameter (batched, i.e. traced: "
            f"{list(plan.batched)}; static: {list(plan.static)}). List the hyperparameters that "
            f"set shapes or control flow in static=. Original error: {e}"
        ) from e
    shapes = {name: tuple(info.shape[1:]) for name, info in lowered.out_info.items()}
    return lowered.compile(), shapes


def _metric_axes(plan: _Plan, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple]:
    unknown = sorted(set(plan.axes) - set(shapes))
    if unknown:
        raise ValueError(
            f"axes names metrics {unknown} that fn does not return; fn returns {sorted(shapes)}"
        )
    out = {}
    for name, shape in shapes.items():
        if name == _DIVERGED_STEP:
            if shape != ():
                raise ValueError(
                    f"fn's metric 'diverged_step' must be a scalar per run, got shape {shape}"
                )
            continue
        if name in plan.axes:
            names = plan.axes[name]
            if len(names) != len(shape):
                raise ValueError(
                    f"axes[{name!r}] = {names} names {len(names)} axes, but fn returns "
                    f"{name!r} with per-run shape {shape}"
                )
        elif len(shape) in DEFAULT_AXES:
            names = DEFAULT_AXES[len(shape)]
        else:
            raise ValueError(
                f"fn returns {name!r} with per-run shape {shape} ({len(shape)}-d); name its axes "
                f"with axes={{{name!r}: (...)}} (defaults exist for 0-, 1- and 2-d: {DEFAULT_AXES})"
            )
        out[name] = names
    return out


def _sweep_sharding() -> NamedSharding:
    """The run axis sharded over a 1-D mesh of every (global) device."""
    mesh = Mesh(np.asarray(jax.devices()), (MESH_AXIS,))
    return NamedSharding(mesh, PartitionSpec(MESH_AXIS))


def _call_chunk(
    compiled: Callable, plan: _Plan, runs: np.ndarray, sharding: NamedSharding
) -> dict[str, np.ndarray]:
    """Run the compiled group program on the runs ``runs`` of a chunk; each metric's outputs on
    the host, shape (len(runs), *per-run shape). The chunk is padded to the program's size by
    repeating its last run; the copies are dropped."""
    padded = plan.padded_size(sharding.mesh.size)
    take = np.concatenate([runs, np.full(padded - len(runs), runs[-1])])
    idx = plan.run_index[:, take]
    host = {
        k: np.asarray(plan.grid[k], dtype=plan.batched_dtype(k))[idx[i]]
        for i, k in enumerate(plan.batched)
    }
    seed_ids = np.asarray(plan.seeds, dtype=np.uint32)[idx[-1]]
    inputs = jax.tree.map(functools.partial(_global_array, sharding), (host, seed_ids))
    out = _gather(compiled(*inputs))
    return {k: np.asarray(v)[: len(runs)] for k, v in out.items()}
