"""Seeds x hyperparameter grids as one compiled program per static group, sharded over every device.

A gradient-flow study is a sweep: seeds x activations x initializers x depths x scales.
:func:`run` evaluates ``fn(hparams, key)`` on every point of ``grid`` x ``seeds`` and stores the
results as a tidy table that :func:`load` (or plain pandas) reads back in one call::

    import gradflow as gf

    def fn(hparams, key):                      # one run: a dict of metric arrays
        ...                                    # hparams["sw2"] is a traced scalar,
        return {"loss": loss_per_step,         # hparams["depth"] a Python int (static)
                "grad_norm": norms_per_step_per_layer}

    df = gf.sweep.run(fn, grid={"sw2": [0.5, 1.0, 2.0], "depth": [10, 20]}, seeds=range(16),
                      static=("depth",), workdir="results/my_sweep")
    df = gf.sweep.load("results/my_sweep")     # or pd.read_parquet("results/my_sweep/rows")

How the grid becomes programs
-----------------------------
* **Batched** hyperparameters (numeric values that keep shapes, e.g. ``sw2``, a learning rate) are
  flattened with the seeds into one batch axis of size ``prod(len(values)) * len(seeds)`` and
  evaluated with :func:`jax.vmap`; ``fn`` sees them as traced 0-d arrays.
* **Static** hyperparameters (anything named in ``static``, plus every key with a non-numeric
  value: ``str``, ``bool``, ``None``) split the grid into groups, the cartesian product of their
  values; ``fn`` sees them as Python values, so they may set shapes (depth, width) or choose code
  paths (activation name). Each group is traced and compiled exactly once.
* The batch axis is sharded over a 1-D mesh of every device, ``Mesh(jax.devices(), ("sweep",))``,
  by ``jax.jit`` with ``NamedSharding(mesh, P("sweep"))`` input and output shardings.
* It is cut into chunks of ``chunk_size`` runs (default: the whole group) to bound memory; each
  chunk is padded (by repeating its last run, then dropping the copies) to a multiple of the device
  count. Chunk boundaries do not depend on the device count, so a store started on one machine
  resumes on another.
* Run ``i`` of a group is ``(batched values..., seed)`` in row-major order over the grid's keys,
  seeds innermost; its key is ``jax.random.key(seed)``: exactly the key a single-run script would
  use, independent of grid, chunking and devices. Seeds are integers in ``[0, 2**32)``. With
  ``rng="native"`` it is :func:`gradflow.rng.key` instead (ThreeFry fused into one loop, laid out
  as XLA's ``RngBitGenerator``; equally batch-independent, faster to initialise many networks on
  CPU, another random stream).

The table
---------
One row per (hyperparameters, seed, metric, array index), columns::

    <grid keys> | seed | metric | step | layer | <other axes> | value | diverged | diverged_step

A metric's per-run array is named by its shape: 0-d -> one row; 1-d -> ``("layer",)``; 2-d ->
``("step", "layer")``; anything else, or another naming, via ``axes={"loss": ("step",), ...}``.
Axis columns a metric does not use are null (pandas nullable ``Int64``). Grid columns keep the
values you passed (``float64``, ``Int64``, ``boolean`` or ``string`` per key), not float32 casts.

Divergence: a run whose metrics hold any non-finite value is ``diverged`` (every row of that run);
its values stay NaN/inf in the table, so a plot drops them explicitly
(``df[~df.diverged]``). ``diverged_step`` is the metric ``diverged_step`` when ``fn`` returns one
(the training loop's convention: ``-1`` while finite, stored as null), otherwise the first index
along a ``"step"`` axis where any metric is non-finite, otherwise null. A metric named
``diverged_step`` becomes that column, not rows; a value ``>= 0`` also marks the run diverged.

The store
---------
``workdir/metadata.json`` holds the full config (grid, seeds, static, chunk_size, axes, name and
your ``config``) with its hash, the groups, the column dtypes, whether the sweep is complete, and
one entry per session (start/end time, gradflow version and git commit, Python and package
versions, host, device list, process count, the float32 ``matmul_precision`` of
:mod:`gradflow.config`, compile and run timings per group). ``fn`` is traced at that precision
(``"highest"``, float32 products on every backend, unless you opt in to a backend's fast passes);
a precision other than the default is part of the config, so a store never mixes two.
``workdir/rows/g<group>-c<chunk>-<hash>.parquet`` holds one chunk's rows; the hash covers the
config, the group's static values and the chunk index, and the file also carries that identity
(config hash, group, chunk, static values) in its parquet metadata. Every file is written to an
exclusively created hidden temp file in the same directory, fsynced and renamed with
:func:`os.replace`, so a sweep killed at any moment (``kill -9`` included) and rerun skips its
completed chunks and loses or duplicates nothing. Rerunning with a *different* config in the same
workdir raises ``ValueError`` naming the fields that differ (choose a fresh workdir, or delete the
old one): one workdir is one sweep. The store cannot see inside ``fn``: when you change its code,
use a fresh workdir or record the change in ``config``/``name``.

**Nothing is mixed.** :func:`load` and a resuming :func:`run` check ``metadata.json`` against its
own config (hash, columns, dtypes, groups: an edited file is refused) and every chunk against the
store: a parquet file whose name is not one of this sweep's chunks (copied from another sweep),
a chunk whose carried identity or key columns (static values, hyperparameters, seeds, rows per
run) are not those of its name (swapped or overwritten) is refused with a ``ValueError`` naming
the file, never loaded.

**One writer.** The writing process holds an exclusive lock on ``workdir/.lock``
(:func:`fcntl.flock`, released by the kernel when the process ends however it ends, so a killed
run leaves no stale lock), which names its pid, host, start time and command; a second
:func:`run` on the same workdir raises ``RuntimeError("... is in use by pid N on host H ...")``
before touching anything (:func:`in_use` asks without waiting). A damaged store (``metadata.json``
not valid JSON or missing fields, ``rows`` not a directory, an unwritable workdir) is a clear
error naming the path.

Several hosts
-------------
After ``jax.distributed.initialize()`` the same call uses every host's devices: the mesh spans the
global ``jax.devices()``, inputs are built with :func:`jax.make_array_from_callback`, outputs are
gathered with :func:`jax.experimental.multihost_utils.process_allgather`, resume state is broadcast
from process 0 and **only process 0 writes** the store. Every process returns the full table
(processes other than 0 read chunks skipped on resume from ``workdir`` when it is on a shared file
system; otherwise they return only the chunks computed in this call). Every process must make the
same call (same grid, seeds, chunk_size); a mismatch raises.

On a cluster (SLURM, Cloud TPU, multi-GPU hosts) ``jax.distributed.initialize()`` takes its
arguments from the environment. On one machine, two processes on loopback with 2 CPU devices each
(the gloo CPU collectives) simulate two hosts; save as ``sweep2.py``::

    import sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize("127.0.0.1:12355", num_processes=2, process_id=int(sys.argv[1]))
    import jax.numpy as jnp
    import gradflow as gf

    def fn(hparams, key):
        w = jax.random.normal(key, (hparams["depth"], 8, 8)) * jnp.sqrt(hparams["sw2"] / 8)
        h, norms = jnp.ones(8), []
        for l in range(hparams["depth"]):
            h = jnp.tanh(w[l] @ h)
            norms.append(jnp.linalg.norm(h))
        return {"act_norm": jnp.stack(norms)}

    df = gf.sweep.run(fn, grid={"sw2": [0.5, 1.0, 2.0], "depth": [4, 8]}, seeds=range(8),
                      static=("depth",), workdir="sweep2_out")
    print(jax.process_index(), len(df))

and start both processes::

    JAX_PLATFORMS=cpu python sweep2.py 0 & JAX_PLATFORMS=cpu python sweep2.py 1; wait

Several CPU devices in one process (to try the sharding without accelerators):
``jax.config.update("jax_num_cpu_devices", 4)`` before the first JAX computation, or
:func:`cpu_devices` (``"auto"``: one device per usable core). On a CPU-only machine this is also
the fastest setting: each device runs its share of the batch on its own core, while one device
runs most small ops (batched 30x30 matmuls, elementwise statistics) on one core; ``make bench``
measures both (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import itertools
import json
import math
import numbers
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradflow import _checks, _io
from gradflow import config as _config
from gradflow import rng as _rng

__all__ = [
    "DEFAULT_AXES",
    "MESH_AXIS",
    "batched",
    "cpu_devices",
    "in_use",
    "load",
    "load_metadata",
    "run",
    "usable_cores",
]

FORMAT = "gradflow.sweep/1"
MESH_AXIS = "sweep"

#: Axis names of a metric's per-run array by its number of dimensions (override with ``axes=``).
DEFAULT_AXES: dict[int, tuple[str, ...]] = {0: (), 1: ("layer",), 2: ("step", "layer")}

_DEFAULT_AXIS_COLUMNS = ("step", "layer")
_RESERVED = ("seed", "metric", "value", "diverged", "diverged_step")
_DIVERGED_STEP = "diverged_step"
_KIND_DTYPES = {"bool": "boolean", "int": "Int64", "float": "float64", "str": "string"}
_MAX_SEED = 2**32
_METADATA_EVERY_S = 10.0


# -------------------------------------------------------------------------------- devices


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_devices(n: int | str = "auto") -> int:
    """Give JAX's CPU backend ``n`` devices (``"auto"``: :func:`usable_cores`); returns ``n``.

    Sets ``jax_num_cpu_devices``, so it must run before the first JAX computation (JAX raises
    ``RuntimeError`` afterwards). Sweeps then shard their batch over the CPU devices, one core
    each; accelerator backends are unaffected (``jax.devices()`` still lists the GPUs/TPUs).
    """
    if isinstance(n, str):
        if n != "auto":
            raise ValueError(f"cpu_devices: n must be an int >= 1 or 'auto', got {n!r}")
        n = usable_cores()
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"cpu_devices: n must be an int >= 1 or 'auto', got {n!r}")
    jax.config.update("jax_num_cpu_devices", int(n))
    return int(n)


# ----------------------------------------------------------------------------- validation


def _python_value(key: str, v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, bool | int | float | str):
        return v
    raise TypeError(
        f"grid[{key!r}] holds {v!r} of type {type(v).__name__}; grid values must be "
        "int, float, str, bool or None (encode anything else as a string, e.g. '30x30', "
        "and decode it in fn)"
    )


def _validate_grid(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a dict of hyperparameter -> list of values, got {grid!r}")
    out = {}
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"grid keys must be non-empty strings, got {key!r}")
        if isinstance(values, str | bytes) or not isinstance(values, Iterable | np.ndarray):
            raise TypeError(
                f"grid[{key!r}] must be a list of values, got {values!r}; "
                f"for a single value write [{values!r}]"
            )
        if isinstance(values, np.ndarray) and values.ndim != 1:
            raise TypeError(f"grid[{key!r}] must be 1-d, got an array of shape {values.shape}")
        vals = [_python_value(key, v) for v in values]
        if not vals:
            raise ValueError(f"grid[{key!r}] is empty; give at least one value")
        seen = set()
        for v in vals:
            marker = (type(v), v) if not (isinstance(v, float) and math.isnan(v)) else "nan"
            if marker in seen:
                raise ValueError(f"grid[{key!r}] has the duplicate value {v!r}: {vals}")
            seen.add(marker)
        _kind(key, vals)  # raises on mixed types
        out[key] = vals
    return out


def _kind(key: str, values: Sequence[Any]) -> str:
    """Column kind of one grid key: "bool", "int", "float" or "str" (None allowed in all)."""
    present = [v for v in values if v is not None]
    if not present or all(isinstance(v, str) for v in present):
        return "str"
    if all(isinstance(v, bool) for v in present):
        return "bool"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "float"
    types = sorted({type(v).__name__ for v in values})
    raise TypeError(
        f"grid[{key!r}] mixes value types {types}: {list(values)}; use one type per key"
    )


def _is_batchable(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _validate_seeds(seeds: Any) -> list[int]:
    if isinstance(seeds, int | np.integer) and not isinstance(seeds, bool):
        raise TypeError(f"seeds must be a list of integers, e.g. range({seeds}), got {seeds!r}")
    try:
        items = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be a list of integers, got {seeds!r}") from None
    out = []
    for s in items:
        if isinstance(s, bool | np.bool_) or not isinstance(s, numbers.Integral):
            raise TypeError(
                f"seeds must be integers, got {s!r} of type {type(s).__name__} in {items}"
            )
        s = int(s)
        if not 0 <= s < _MAX_SEED:
            raise ValueError(f"seeds must lie in [0, 2**32), got {s}")
        out.append(s)
    if not out:
        raise ValueError("seeds is empty; give at least one seed, e.g. range(4)")
    if len(set(out)) != len(out):
        dup = sorted({s for s in out if out.count(s) > 1})
        raise ValueError(f"seeds has duplicates {dup}; every seed must appear once")
    return out


def _validate_static(static: Any, grid: Mapping[str, Sequence[Any]]) -> tuple[str, ...]:
    if isinstance(static, str):
        static = (static,)
    static = tuple(static)
    for k in static:
        if k not in grid:
            raise ValueError(f"static key {k!r} is not a grid key; valid choices: {sorted(grid)}")
    auto = tuple(k for k, v in grid.items() if not _is_batchable(v))
    return tuple(k for k in grid if k in static or k in auto)


def _validate_axes(
    axes: Mapping[str, Sequence[str]] | None, grid_keys: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    if axes is None:
        return {}
    if not isinstance(axes, Mapping):
        raise TypeError(f"axes must be a dict metric -> tuple of axis names, got {axes!r}")
    out = {}
    for metric, names in axes.items():
        if isinstance(names, str):
            raise TypeError(
                f"axes[{metric!r}] must be a tuple of axis names, got the string {names!r}; "
                f"write ({names!r},)"
            )
        names = tuple(names)
        for n in names:
            if not isinstance(n, str) or not n:
                raise TypeError(f"axes[{metric!r}] must hold non-empty strings, got {names!r}")
            if n in _RESERVED or n in grid_keys:
                raise ValueError(
                    f"axes[{metric!r}] uses the name {n!r}, which is already a column "
                    f"(reserved: {list(_RESERVED)}, grid keys: {list(grid_keys)})"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"axes[{metric!r}] repeats an axis name: {names}")
        out[str(metric)] = names
    return out


# ----------------------------------------------------------------------------- plan


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _Plan:
    """Everything derived from the config: groups, runs, chunks, columns, file names."""

    def __init__(
        self, grid, seeds, static, chunk_size, axes, name, user_config, fn, rng, precision
    ):
        self.grid = grid
        self.rng = rng
        self.matmul_precision = precision
        self.make_key = _rng.resolve(rng)
        self.seeds = seeds
        self.static = static
        self.batched = tuple(k for k in grid if k not in static)
        self.axes = axes
        self.kinds = {k: _kind(k, v) for k, v in grid.items()}
        extra = [n for names in axes.values() for n in names if n not in _DEFAULT_AXIS_COLUMNS]
        self.axis_columns = (*_DEFAULT_AXIS_COLUMNS, *dict.fromkeys(extra))
        self.columns = (
            *grid,
            "seed",
            "metric",
            *self.axis_columns,
            "value",
            "diverged",
            _DIVERGED_STEP,
        )
        self.dtypes = {
            **{k: _KIND_DTYPES[self.kinds[k]] for k in grid},
            "seed": "int64",
            "metric": "string",
            **dict.fromkeys(self.axis_columns, "Int64"),
            "value": "float64",
            "diverged": "bool",
            _DIVERGED_STEP: "Int64",
        }
        self.config = {
            "format": FORMAT,
            "name": name,
            "grid": [[k, v] for k, v in grid.items()],
            "seeds": seeds,
            "static": list(static),
            "batched": list(self.batched),
            "chunk_size": chunk_size,
            "axes": [[k, list(v)] for k, v in axes.items()],
            "config": user_config,
        }
        if rng != "threefry":  # the default is left out: stores made before the option resume
            self.config["rng"] = rng
        if precision != _config.DEFAULT:  # likewise; a store never mixes two precisions
            self.config["matmul_precision"] = precision
        self.config_hash = _hash(_canonical(self.config))
        self.fn_name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        self.grid_keys = tuple(grid)

        self.groups = [
            dict(zip(static, values)) for values in itertools.product(*(grid[k] for k in static))
        ]
        self.batched_shape = (*(len(grid[k]) for k in self.batched), len(seeds))
        self.runs_per_group = math.prod(self.batched_shape)
        self.chunk_size = min(chunk_size or self.runs_per_group, self.runs_per_group)
        self.chunks_per_group = -(-self.runs_per_group // self.chunk_size)
        # run index -> (index into each batched key's values..., index into seeds)
        self.run_index = np.indices(self.batched_shape).reshape(len(self.batched_shape), -1)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: Path) -> _Plan:
        """The plan of a stored config (``metadata.json``'s ``"config"``), to check a store
        against what its config implies. ``where`` names the file in error messages."""
        try:
            grid = _validate_grid({str(k): v for k, v in config["grid"]})
            seeds = _validate_seeds(config["seeds"])
            static = _validate_static(config["static"], grid)
            axes = _validate_axes({str(k): v for k, v in config["axes"]}, tuple(grid))
            plan = cls(grid, seeds, static, config["chunk_size"], axes, config["name"],
                       dict(config["config"]), None, config.get("rng", "threefry"),
                       config.get("matmul_precision", _config.DEFAULT))  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(
                f"{where} holds a damaged sweep config ({type(e).__name__}: {e}); restore the "
                "file or delete the store to start over"
            ) from None
        return plan

    def group_label(self, g: int) -> str:
        return ",".join(f"{k}={v}" for k, v in self.groups[g].items()) or "all"

    def chunk_file(self, g: int, c: int) -> str:
        ident = _hash(_canonical([self.config_hash, g, self.groups[g], c]))[:12]
        return f"g{g:04d}-c{c:05d}-{ident}.parquet"

    def chunk_keys(self, g: int, c: int) -> pd.DataFrame:
        """The grid-key and seed columns of chunk ``c`` of group ``g``, one row per run."""
        runs = self.chunk_runs(c)
        idx = self.run_index[:, runs]
        cols = {}
        for k in self.grid:
            if k in self.groups[g]:
                cols[k] = pd.array([self.groups[g][k]] * len(runs), dtype=self.dtypes[k])
            else:
                values = pd.array(self.grid[k], dtype=self.dtypes[k])
                cols[k] = values.take(idx[self.batched.index(k)])
        cols["seed"] = np.asarray(self.seeds, dtype=np.int64)[idx[-1]]
        return pd.DataFrame(cols)

    def chunk_runs(self, c: int) -> np.ndarray:
        start = c * self.chunk_size
        return np.arange(start, min(start + self.chunk_size, self.runs_per_group))

    def padded_size(self, n_devices: int) -> int:
        return -(-self.chunk_size // n_devices) * n_devices

    def batched_dtype(self, key: str) -> np.dtype:
        wide = np.int64 if self.kinds[key] == "int" else np.float64
        return np.dtype(jax.dtypes.canonicalize_dtype(wide))


# ----------------------------------------------------------------------------- fn wrapper


class _OutputError(TypeError):
    """fn returned something that is not a dict of numeric arrays."""


def _flatten_metrics(out: Any, prefix: str = "") -> dict[str, Any]:
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


def _check_block_size(block_size: Any) -> None:
    if block_size is not None and (
        isinstance(block_size, bool)
        or not isinstance(block_size, numbers.Integral)
        or block_size < 1
    ):
        raise ValueError(f"block_size must be a positive integer or None, got {block_size!r}")


def batched(one: Callable, mesh: Mesh, block_size: int | None = None) -> Callable:
    """The per-chunk program of :func:`run`: ``one(*args)`` of one run -> all runs of a chunk.

    Every argument of the returned function has the run axis first (sharded on ``mesh``'s axis
    :data:`MESH_AXIS` when jitted with ``NamedSharding(mesh, P(MESH_AXIS))``). Each device runs its
    own runs under :func:`jax.shard_map`: ``block_size=None`` vmaps ``one`` over them, otherwise
    it maps over them ``block_size`` at a time (``lax.map`` with ``batch_size``, vmapped within a
    block), so only one block's working set is live. Under ``shard_map`` no op is partitioned by
    XLA's SPMD partitioner, which would replicate ops it has no sharding rule for (LAPACK's QR and
    SVD custom calls) and gather their inputs across devices. It is traced at
    :mod:`gradflow.config`'s precision policy in force when it is traced. Not jitted: wrap it in
    ``jax.jit`` with the shardings.
    """
    if not callable(one):
        raise TypeError(f"one must be callable as one(*args) for one run, got {one!r}")
    if not isinstance(mesh, Mesh) or MESH_AXIS not in mesh.axis_names:
        raise ValueError(
            f"mesh must be a jax.sharding.Mesh with an axis {MESH_AXIS!r}, got {mesh!r}"
        )
    _check_block_size(block_size)
    spec = PartitionSpec(MESH_AXIS)

    def per_device(*args):
        if block_size is None:
            return jax.vmap(one)(*args)
        leaves = jax.tree.leaves(args)  # every leaf has the (per-device) run axis first
        n = leaves[0].shape[0] if leaves else 0
        return jax.lax.map(lambda a: one(*a), args, batch_size=max(1, min(block_size, n)))

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


def _compile_group(
    fn, plan: _Plan, g: int, sharding: NamedSharding, padded: int, block_size: int | None
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


# ----------------------------------------------------------------------------- rows


def _divergence(outputs: Mapping[str, np.ndarray], metric_axes, n: int):
    diverged = np.zeros(n, dtype=bool)
    first_step = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    for name, names in metric_axes.items():
        arr = outputs[name]
        bad = ~np.isfinite(arr.astype(np.float64, copy=False))
        diverged |= bad.reshape(n, -1).any(axis=1)
        if "step" in names:
            p = names.index("step") + 1
            per_step = np.moveaxis(bad, p, 1).reshape(n, arr.shape[p], -1).any(axis=2)
            hit = per_step.any(axis=1)
            first_step = np.where(hit, np.minimum(first_step, per_step.argmax(axis=1)), first_step)
    step = first_step
    if _DIVERGED_STEP in outputs:
        reported = outputs[_DIVERGED_STEP].astype(np.int64).reshape(n)
        diverged |= reported >= 0
        step = np.where(reported >= 0, reported, first_step)
    mask = step == np.iinfo(np.int64).max
    return diverged, pd.arrays.IntegerArray(np.where(mask, 0, step), mask)


def _chunk_frame(plan: _Plan, g: int, runs: np.ndarray, outputs, metric_axes) -> pd.DataFrame:
    """Tidy rows of one chunk: ``outputs[name]`` has shape (len(runs), *per-run shape)."""
    n = len(runs)
    idx = plan.run_index[:, runs]
    per_run = {}
    for k in plan.grid:
        dtype = plan.dtypes[k]
        if k in plan.groups[g]:
            per_run[k] = pd.array([plan.groups[g][k]] * n, dtype=dtype)
        else:
            values = pd.array(plan.grid[k], dtype=dtype)
            per_run[k] = values.take(idx[plan.batched.index(k)])
    per_run["seed"] = np.asarray(plan.seeds, dtype=np.int64)[idx[-1]]
    diverged, diverged_step = _divergence(outputs, metric_axes, n)

    pieces, run_of = [], []
    for name in sorted(metric_axes):
        names = metric_axes[name]
        arr = outputs[name]
        shape = arr.shape[1:]
        size = math.prod(shape)
        run_of_row = np.repeat(np.arange(n), size)
        cols = {k: v.take(run_of_row) if hasattr(v, "take") else v for k, v in per_run.items()}
        cols["seed"] = per_run["seed"][run_of_row]
        cols["metric"] = pd.array([name] * (n * size), dtype="string")
        position = np.indices(shape).reshape(len(shape), size) if shape else np.zeros((0, 1))
        for col in plan.axis_columns:
            if col in names:
                v = np.tile(position[names.index(col)].astype(np.int64), n)
                cols[col] = pd.arrays.IntegerArray(v, np.zeros(n * size, dtype=bool))
            else:
                cols[col] = pd.array([pd.NA] * (n * size), dtype="Int64")
        cols["value"] = arr.reshape(n * size).astype(np.float64)
        cols["diverged"] = diverged[run_of_row]
        cols[_DIVERGED_STEP] = diverged_step.take(run_of_row)
        pieces.append(pd.DataFrame(cols, columns=list(plan.columns)))
        run_of.append(run_of_row)
    if not pieces:
        return _empty(plan.columns, plan.dtypes)
    # rows run-major (run, metric, index), so the table does not depend on the chunking
    order = np.argsort(np.concatenate(run_of), kind="stable")
    frame = pd.concat(pieces, ignore_index=True).take(order).reset_index(drop=True)
    return _coerce(frame, plan.dtypes)


def _empty(columns: Sequence[str], dtypes: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=dtypes[c]) for c in columns})


def _coerce(df: pd.DataFrame, dtypes: Mapping[str, str]) -> pd.DataFrame:
    return df.astype({c: d for c, d in dtypes.items() if str(df[c].dtype) != d})


# ----------------------------------------------------------------------------- store


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """Write via ``write(file)`` to an exclusively created hidden temp file beside ``path``,
    fsync, :func:`os.replace` (:func:`gradflow._io.atomic_write`)."""
    _io.atomic_write(path, write)


def _write_json(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=1, default=str).encode()
    _atomic_write(path, lambda f: f.write(data))


def _read_metadata(path: Path) -> dict:
    """``metadata.json`` parsed, with a clear error for a damaged file."""
    try:
        meta = json.loads(path.read_text())
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file ({e}); {_DAMAGED}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); {_DAMAGED}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a {type(meta).__name__}, not a JSON object; {_DAMAGED}")
    config = meta.get("config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} store (no config of that format)")
    missing = [k for k in _METADATA_KEYS if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks the field(s) {missing}; {_DAMAGED}")
    return meta


def _check_metadata(meta: Mapping, path: Path) -> _Plan:
    """The plan implied by the stored config; raises if the rest of ``metadata.json`` (hash,
    columns, dtypes, groups) disagrees with it, i.e. the file was edited or damaged."""
    plan = _Plan.from_config(meta["config"], path)
    expected = {
        "config_hash": plan.config_hash,
        "columns": list(plan.columns),
        "dtypes": plan.dtypes,
        "groups": [
            {"static": plan.groups[g], "chunks": plan.chunks_per_group}
            for g in range(len(plan.groups))
        ],
    }
    stored = {
        "config_hash": meta["config_hash"],
        "columns": meta["columns"],
        "dtypes": meta["dtypes"],
        "groups": [
            {"static": grp.get("static"), "chunks": grp.get("chunks")}
            if isinstance(grp, Mapping) else grp
            for grp in (meta["groups"] if isinstance(meta["groups"], list) else [meta["groups"]])
        ],
    }  # fmt: skip
    bad = [k for k in expected if _canonical(expected[k]) != _canonical(stored[k])]
    if bad:
        raise ValueError(
            f"{path} does not match its own config: {', '.join(bad)} differ from what the "
            f"config implies (e.g. {bad[0]}: stored {_short(stored[bad[0]])} vs implied "
            f"{_short(expected[bad[0]])}); the file was edited or damaged. {_DAMAGED_FIX}"
        )
    return plan


def load_metadata(workdir: str | os.PathLike) -> dict:
    """The ``metadata.json`` of a sweep store (config, groups, dtypes, sessions), checked: its
    hash, columns, dtypes and groups must be those its config implies.

    Raises:
      FileNotFoundError: ``workdir`` holds no ``metadata.json``.
      ValueError: the file is not valid JSON, not a gradflow sweep store, or was edited.
    """
    path = _checks.path("workdir", workdir) / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} is not a gradflow sweep store: no metadata.json")
    meta = _read_metadata(path)
    _check_metadata(meta, path)
    return meta


def load(workdir: str | os.PathLike) -> pd.DataFrame:
    """The tidy table of a sweep store, in (group, run, metric, index) order.

    Works on a partial store (a sweep still running or killed): it holds the completed chunks;
    ``load_metadata(workdir)["complete"]`` says whether the sweep finished.
    ``pd.read_parquet(Path(workdir) / "rows")`` reads the same rows, unchecked.

    Every chunk is checked before use: its file name, the sweep identity it carries (config
    hash, group, chunk) and its key columns (the group's static values, the chunk's
    hyperparameters and seeds, the same number of rows per run) must be those of this store, so
    a chunk copied from another sweep or swapped with another chunk is refused, never mixed in.

    Raises:
      FileNotFoundError: no ``metadata.json``.
      ValueError: damaged or edited metadata, ``rows`` not a directory, or a chunk that does
        not belong to this store (the message names the file).
    """
    workdir = _checks.path("workdir", workdir)
    path = workdir / "metadata.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} is not a gradflow sweep store: no metadata.json")
    plan = _check_metadata(_read_metadata(path), path)
    rows = workdir / "rows"
    if rows.exists() and not rows.is_dir():
        raise ValueError(f"{rows} is not a directory; {_DAMAGED}")
    names = _foreign_chunks(plan, rows)
    parts = []
    for g in range(len(plan.groups)):
        for c in range(plan.chunks_per_group):
            name = plan.chunk_file(g, c)
            if name in names:
                parts.append(_read_chunk(plan, g, c, rows / name))
    if not parts:
        return _empty(plan.columns, plan.dtypes)
    return _coerce(pd.concat(parts, ignore_index=True)[list(plan.columns)], plan.dtypes)


# ----------------------------------------------------------------------------- chunk checks

_CHUNK_KEY = b"gradflow.sweep"
_METADATA_KEYS = ("config_hash", "config", "columns", "dtypes", "groups", "complete", "sessions")
_DAMAGED_FIX = "Restore it, or delete the store (or use another workdir) to start over."
_DAMAGED = "the store is damaged. " + _DAMAGED_FIX


def _chunk_identity(plan: _Plan, g: int, c: int) -> dict:
    return {
        "format": FORMAT,
        "config_hash": plan.config_hash,
        "group": g,
        "chunk": c,
        "static": plan.groups[g],
    }


def _write_chunk(path: Path, frame: pd.DataFrame, plan: _Plan, g: int, c: int) -> None:
    """One chunk's rows as parquet, carrying its identity in the schema's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_CHUNK_KEY] = _canonical(_chunk_identity(plan, g, c)).encode()
    table = table.replace_schema_metadata(meta)
    _atomic_write(path, lambda f: pq.write_table(table, f))


def _foreign_chunks(plan: _Plan, rows: Path) -> set[str]:
    """The chunk files in ``rows`` (names), after refusing any parquet file that is not a chunk
    of this plan (another sweep's chunk copied in, or a renamed file)."""
    if not rows.is_dir():
        return set()
    expected = {
        plan.chunk_file(g, c) for g in range(len(plan.groups)) for c in range(plan.chunks_per_group)
    }
    present = {p.name for p in rows.glob("*.parquet")}
    foreign = sorted(present - expected)
    if foreign:
        raise ValueError(
            f"{rows / foreign[0]} is not a chunk of this sweep (config hash "
            f"{plan.config_hash[:12]}; {len(foreign)} such file(s)): it comes from another sweep "
            "or was renamed. Move it out of the store; results are never mixed."
        )
    return present


def _check_chunk(plan: _Plan, g: int, c: int, path: Path, table) -> None:
    """Raise unless the pyarrow ``table`` read from ``path`` is chunk ``c`` of group ``g``."""
    where = f"{path} (named as group {g}, chunk {c})"
    raw = (table.schema.metadata or {}).get(_CHUNK_KEY)
    if raw is not None:  # stores written before chunks carried their identity have none
        try:
            ident = json.loads(raw)
        except ValueError:
            ident = None
        want = _chunk_identity(plan, g, c)
        if not isinstance(ident, dict) or _canonical(ident) != _canonical(want):
            got = ident if isinstance(ident, dict) else {}
            raise ValueError(
                f"{where} belongs elsewhere: it carries config hash "
                f"{str(got.get('config_hash'))[:12]}, group {got.get('group')}, chunk "
                f"{got.get('chunk')} (this store: {plan.config_hash[:12]}, group {g}, chunk "
                f"{c}). Delete it and rerun the sweep to recompute it; results are never mixed."
            )
    keys = [*plan.grid_keys, "seed"]
    missing = [k for k in keys if k not in table.column_names]
    if missing:
        raise ValueError(f"{where} lacks the column(s) {missing}; delete it and rerun the sweep")
    frame = _coerce(table.select(keys).to_pandas(), {k: plan.dtypes[k] for k in keys})
    runs = frame.drop_duplicates(ignore_index=True)
    want = plan.chunk_keys(g, c)

    def rows(df):
        return sorted(
            (tuple(_plain(v) for v in r) for r in df.itertuples(index=False)),
            key=repr,
        )

    if len(runs) != len(want) or rows(runs) != rows(want):
        raise ValueError(
            f"{where} holds other runs than that chunk: its hyperparameters and seeds "
            f"{_short(rows(runs)[:4], 160)} vs expected {_short(rows(want)[:4], 160)}. Delete "
            "it and rerun the sweep to recompute it; results are never mixed."
        )
    sizes = frame.groupby(keys, dropna=False, sort=False).size()
    if sizes.nunique() != 1:
        raise ValueError(
            f"{where} holds {sizes.min()} to {sizes.max()} rows per run (duplicated or missing "
            "rows). Delete it and rerun the sweep to recompute it."
        )


def _plain(v: Any) -> Any:
    """A table cell as a plain Python value (``None`` for a missing one)."""
    if pd.isna(v):
        return None
    return v.item() if isinstance(v, np.generic) else v


def _read_chunk(plan: _Plan, g: int, c: int, path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(
            f"{path} is not a readable parquet file ({e}); delete it and rerun the sweep"
        ) from None
    _check_chunk(plan, g, c, path, table)
    if list(table.column_names) != list(plan.columns):
        raise ValueError(
            f"{path} has the columns {table.column_names}, not {list(plan.columns)}; delete it "
            "and rerun the sweep"
        )
    return _coerce(table.to_pandas(), plan.dtypes)


def _diff(stored: Mapping, current: Mapping) -> list[str]:
    lines = []
    for k in sorted(set(stored) | set(current)):
        a, b = stored.get(k, "<absent>"), current.get(k, "<absent>")
        if _canonical(a) != _canonical(b):
            lines.append(f"  {k}: stored {_short(a)} vs now {_short(b)}")
    return lines


def _short(obj: Any, limit: int = 200) -> str:
    text = _canonical(obj)
    return text if len(text) <= limit else text[:limit] + "..."


@functools.cache
def _git_commit() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": head.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _environment() -> dict[str, Any]:
    packages = ("jax", "jaxlib", "numpy", "pandas", "pyarrow", "flax", "optax", "chex")
    return {
        "gradflow_version": _version("gradflow"),
        "git": _git_commit(),
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in packages},
        "platform": platform.platform(),
        "host": platform.node(),
        "argv": list(sys.argv),
        "process_count": jax.process_count(),
        "devices": [
            {
                "id": d.id,
                "platform": d.platform,
                "kind": d.device_kind,
                "process_index": d.process_index,
            }
            for d in jax.devices()
        ],
    }


def _open_store(workdir: Path, plan: _Plan) -> tuple[dict | None, np.ndarray, str | None]:
    """Process 0, holding the store's lock: create or check the store; return (metadata, done
    mask, error). Every existing chunk is checked against this sweep (:func:`_check_chunk`)."""
    rows = workdir / "rows"
    meta_path = workdir / "metadata.json"
    n_groups, n_chunks = len(plan.groups), plan.chunks_per_group
    done = np.zeros((n_groups, n_chunks), dtype=bool)
    if rows.exists() and not rows.is_dir():
        raise ValueError(f"{rows} is not a directory; {_DAMAGED}")
    if meta_path.exists():
        meta = _read_metadata(meta_path)
        if meta["config_hash"] != plan.config_hash:
            diff = _diff(meta["config"], plan.config) or ["  (same fields, different hash)"]
            return (
                None,
                done,
                (
                    f"the sweep store {workdir} holds a different sweep; changed fields:\n"
                    + "\n".join(diff)
                    + "\nUse a fresh workdir for a new sweep (or delete this one to start over)."
                ),
            )
        _check_metadata(meta, meta_path)
    else:
        if rows.is_dir() and any(rows.glob("*.parquet")):
            return None, done, f"{rows} holds parquet files but {meta_path} is missing"
        meta = {
            "config_hash": plan.config_hash,
            "config": plan.config,
            "fn": plan.fn_name,
            "columns": list(plan.columns),
            "dtypes": plan.dtypes,
            "groups": [
                {
                    "group": g,
                    "label": plan.group_label(g),
                    "static": plan.groups[g],
                    "runs": plan.runs_per_group,
                    "chunks": n_chunks,
                }
                for g in range(n_groups)
            ],
            "complete": False,
            "sessions": [],
        }
    rows.mkdir(exist_ok=True)
    # Left by a killed writer; never renamed, never counted. Safe: we hold the store's lock.
    for stale in itertools.chain(rows.glob(".*.tmp"), workdir.glob(".*.tmp")):
        stale.unlink(missing_ok=True)
    existing = _foreign_chunks(plan, rows)
    import pyarrow.parquet as pq

    for g in range(n_groups):
        for c in range(n_chunks):
            path = rows / plan.chunk_file(g, c)
            if path.name in existing:
                try:
                    table = pq.read_table(path, columns=[*plan.grid_keys, "seed"])
                except (OSError, ValueError) as e:
                    raise ValueError(
                        f"{path} is not a readable parquet file ({e}); delete it and rerun the "
                        "sweep to recompute it"
                    ) from None
                _check_chunk(plan, g, c, path, table)
                done[g, c] = True
    return meta, done, None


# ----------------------------------------------------------------------------- the lock

#: The lock file of a store (its content names the holder: pid, host, start time, command).
LOCK_FILE = ".lock"


class _StoreLock:
    """An exclusive lock on a sweep store, held by the writing process for the whole run.

    ``workdir/.lock`` is locked with :func:`fcntl.flock` (the kernel releases it when the holder
    exits, however it exits: ``kill -9`` and power loss leave no stale lock to clear) and holds
    the holder's pid, host, start time and command, so a second writer is refused with "in use
    by pid ... on host ...". The file itself stays (deleting it would let two processes lock two
    different files). Where the file system cannot lock (some network mounts), the store is used
    unlocked with a warning.
    """

    def __init__(self, workdir: Path):
        self.path = workdir / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> _StoreLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.read(fd, 4096))
            os.close(fd)
            raise RuntimeError(
                f"the sweep store {self.path.parent} is in use by {holder}; wait for that run to "
                "finish (or stop it), or use another workdir"
            ) from None
        except OSError as e:  # no flock on this file system
            import warnings

            warnings.warn(
                f"gradflow.sweep: cannot lock {self.path} ({e.strerror}); two writers on this "
                "store would not be detected",
                RuntimeWarning,
                stacklevel=3,
            )
        info = {
            "pid": os.getpid(),
            "host": platform.node(),
            "started": _io.timestamp(),
            "argv": list(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # the lock is free: no holder to name
            os.close(self.fd)  # releases the flock
            self.fd = None


def _describe_holder(raw: bytes) -> str:
    try:
        info = json.loads(raw)
        return (
            f"pid {info['pid']} on host {info['host']} (since {info['started']}, "
            f"command {' '.join(map(str, info.get('argv', [])))!r})"
        )
    except (ValueError, KeyError, TypeError):
        return "another process"


def in_use(workdir: str | os.PathLike) -> str | None:
    """Who holds the lock of the sweep store ``workdir`` (``"pid N on host H (since ...)"``), or
    None when no process is writing it (or it is not a store)."""
    path = _checks.path("workdir", workdir) / LOCK_FILE
    if not path.is_file():
        return None
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe_holder(os.read(fd, 4096))
        except OSError:
            return None
        return None
    finally:
        os.close(fd)


def _prepare_workdir(workdir: Path) -> None:
    """Create ``workdir``; say clearly what is wrong when it cannot be a store."""
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir {workdir} exists and is not a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise type(e)(
            e.errno, f"cannot create the sweep store {workdir}: {e.strerror}", e.filename
        ) from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise PermissionError(
            13, f"cannot write the sweep store {workdir}: permission denied", str(workdir)
        )


def _global_array(sharding: NamedSharding, host: np.ndarray) -> jax.Array:
    """The global array of which every process holds the full copy ``host``."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _agree(status: np.ndarray) -> np.ndarray:
    """Process 0's ``status`` on every process (identity on one process)."""
    if jax.process_count() == 1:
        return status
    return np.asarray(multihost_utils.broadcast_one_to_all(status))


# ----------------------------------------------------------------------------- run


def run(
    fn: Callable[[dict[str, Any], jax.Array], Mapping[str, Any]],
    grid: Mapping[str, Sequence[Any]],
    seeds: Iterable[int],
    *,
    static: Sequence[str] = (),
    workdir: str | os.PathLike,
    chunk_size: int | None = None,
    axes: Mapping[str, Sequence[str]] | None = None,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    rng: str = "threefry",
    block_size: int | None = None,
) -> pd.DataFrame:
    """Evaluate ``fn(hparams, key)`` on every point of ``grid`` x ``seeds``; store a tidy table.

    Numeric grid keys not in ``static`` are vmapped together with the seeds (one batch axis,
    sharded over all devices); every other key splits the grid into groups, each compiled once.
    See the module docstring for the layout of the table and of the store, resuming, divergence
    and several hosts.

    Args:
      fn: ``fn(hparams, key) -> dict`` of metric arrays for one run. ``hparams`` maps every grid key
        to its value (a traced 0-d array for batched keys, the Python value for static ones);
        ``key = jax.random.key(seed)`` (``rng="native"``: :func:`gradflow.rng.key`). Nested dicts
        are flattened to ``"outer/inner"`` names.
      grid: hyperparameter name -> non-empty list of values (int, float, str, bool or None).
      seeds: distinct integers in ``[0, 2**32)``, e.g. ``range(16)``.
      static: grid keys that must be Python values inside ``fn`` (shapes, control flow); keys
        with non-numeric values are static automatically.
      workdir: directory of the store (created); rerunning the same sweep there resumes it.
      chunk_size: runs per compiled call (bounds memory; the resume granularity); ``None``: one
        chunk per group. Each chunk is padded to a multiple of the device count.
      axes: metric name -> axis names of its per-run array, overriding :data:`DEFAULT_AXES`.
      name: a name for the sweep, recorded in the metadata (part of the config).
      config: any JSON-serialisable settings fn depends on (part of the config, so a changed
        setting is never mixed into an old store).
      progress: show a progress bar over chunks (process 0 only): ``True`` always, ``False``
        never, ``None`` (default) only when stderr is a terminal (no redraws in logs and CI).
      rng: ``"threefry"`` (default): keys ``jax.random.key(seed)``; ``"native"``:
        :func:`gradflow.rng.key(seed) <gradflow.rng.key>`, ThreeFry fused on CPU (faster random
        initialisation, another stream; recorded in the config, so the two never mix in a store).
      block_size: runs evaluated together under ``vmap``; each device maps over its share of a
        chunk this many at a time (``lax.map`` inside ``jax.shard_map``, one program). ``None``
        (default): all at once. Smaller blocks keep one block's parameters and activations in
        cache and bound memory without more compiled calls: for 32 depth-50, width-256 MLPs
        (benchmarks w2) ``block_size=1`` is faster than vmapping all 32, for 1024 tiny ones (w1)
        vmapping all is. The results do not depend on it (not part of the config).

    Returns:
      The table of the whole sweep (completed chunks of earlier sessions included), as
      :func:`load` returns it.

    Raises:
      ValueError: empty grid values or seeds, unknown static keys, duplicate seeds or values,
        column name clashes, axes that do not fit fn's output, or a store holding another sweep.
      TypeError: non-integer seeds, unsupported grid values, fn returning something other than a
        dict of numeric arrays, or fn needing a concrete value of a batched hyperparameter.

    Example:
      Three seeds of two scales, one compiled program, into a resumable store:

      >>> import tempfile
      >>> def fn(hparams, key):
      ...     return {"value": hparams["scale"] * jax.random.normal(key, ())}
      >>> with tempfile.TemporaryDirectory() as workdir:
      ...     df = gf.sweep.run(fn, {"scale": [1.0, 2.0]}, seeds=range(3), workdir=workdir,
      ...                       progress=False)
      >>> len(df), sorted(df.seed.unique().tolist())
      (6, [0, 1, 2])
      >>> by_seed = df.pivot(index="seed", columns="scale", values="value")
      >>> bool(((by_seed[2.0] / by_seed[1.0]).round(5) == 2.0).all())   # one key per seed
      True
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(hparams, key), got {fn!r}")
    grid = _validate_grid(grid)
    for k in grid:
        if k in _RESERVED or k in _DEFAULT_AXIS_COLUMNS:
            raise ValueError(
                f"grid key {k!r} clashes with a table column; reserved names: "
                f"{[*_RESERVED, *_DEFAULT_AXIS_COLUMNS]}"
            )
    seeds = _validate_seeds(seeds)
    static = _validate_static(static, grid)
    axes = _validate_axes(axes, tuple(grid))
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string or None, got {name!r}")
    user_config = dict(config) if config is not None else {}
    try:
        json.loads(json.dumps(user_config, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"config must be JSON-serialisable (str, numbers, lists, dicts): {e}"
        ) from e
    if workdir is None:
        raise TypeError("workdir is required: the directory of the results store")
    workdir = _checks.path("workdir", workdir)
    chunk_size = None if chunk_size is None else int(chunk_size)
    _check_block_size(block_size)
    block_size = None if block_size is None else int(block_size)
    if rng not in _rng.NAMES:
        raise ValueError(f"unknown rng {rng!r}; valid names: {', '.join(_rng.NAMES)}")
    precision = _config.matmul_precision()  # read once: every group of this call uses it
    plan = _Plan(grid, seeds, static, chunk_size, axes, name, user_config, fn, rng, precision)

    lead = jax.process_index() == 0
    meta, done, error, failure, lock = None, None, None, None, None
    if lead:
        try:
            _prepare_workdir(workdir)
            lock = _StoreLock(workdir).__enter__()
            meta, done, error = _open_store(workdir, plan)
        except Exception as e:  # tell the other processes before raising, or they would hang
            failure, error = e, f"{type(e).__name__}: {e}"
    try:
        return _run_locked(fn, plan, workdir, lead, meta, done, error, failure, name, progress,
                           block_size, precision)  # fmt: skip
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _run_locked(
    fn, plan, workdir, lead, meta, done, error, failure, name, progress, block_size, precision
):
    """The body of :func:`run` after process 0 opened (and locked) the store."""
    # process 0 decides; everyone learns the verdict, the done mask and checks the config hash
    n_groups, n_chunks = len(plan.groups), plan.chunks_per_group
    words = np.frombuffer(bytes.fromhex(plan.config_hash)[:16], dtype=np.int32)
    status = np.zeros(1 + 4 + n_groups * n_chunks, dtype=np.int32)
    if lead:
        status[0] = error is not None
        status[1:5] = words
        if done is not None:
            status[5:] = done.ravel()
    status = _agree(status)
    if failure is not None:
        raise failure
    if status[0]:
        raise ValueError(error or f"the sweep store {workdir} holds a different sweep (process 0)")
    if not np.array_equal(status[1:5], words):
        raise ValueError(
            f"process {jax.process_index()} was called with a different sweep config than "
            "process 0; every process must make the same gradflow.sweep.run call"
        )
    done = status[5:].astype(bool).reshape(n_groups, n_chunks)

    devices = jax.devices()
    mesh = Mesh(np.asarray(devices), (MESH_AXIS,))
    sharding = NamedSharding(mesh, PartitionSpec(MESH_AXIS))
    padded = plan.padded_size(len(devices))
    session = {
        **_environment(),
        "started": _io.timestamp(),
        "finished": None,
        "matmul_precision": precision,
        "block_size": block_size,
        "groups": [],
    }
    if lead:
        meta["sessions"].append(session)
        _write_json(workdir / "metadata.json", meta)
    last_meta_write = time.monotonic()

    from tqdm.auto import tqdm

    bar = tqdm(
        total=n_groups * n_chunks,
        initial=int(done.sum()),
        # tqdm's disable=None hides the bar when stderr is not a terminal
        disable=True if not lead else (None if progress is None else not progress),
        desc=name or "sweep",
        unit="chunk",
        dynamic_ncols=True,
    )
    frames: dict[tuple[int, int], pd.DataFrame] = {}
    try:
        for g in range(n_groups):
            todo = [c for c in range(n_chunks) if not done[g, c]]
            if not todo:
                continue
            bar.set_postfix_str(plan.group_label(g), refresh=False)
            t0 = time.perf_counter()
            with _config.use_matmul_precision(precision):
                compiled, shapes = _compile_group(fn, plan, g, sharding, padded, block_size)
            metric_axes = _metric_axes(plan, shapes)
            timing = {
                "group": g,
                "compile_s": time.perf_counter() - t0,
                "chunks": 0,
                "run_s": 0.0,
                "write_s": 0.0,
            }
            session["groups"].append(timing)
            for c in todo:
                t0 = time.perf_counter()
                runs = plan.chunk_runs(c)
                take = np.concatenate([runs, np.full(padded - len(runs), runs[-1])])
                idx = plan.run_index[:, take]
                host = {
                    k: np.asarray(plan.grid[k], dtype=plan.batched_dtype(k))[idx[i]]
                    for i, k in enumerate(plan.batched)
                }
                seed_ids = np.asarray(plan.seeds, dtype=np.uint32)[idx[-1]]
                inputs = jax.tree.map(functools.partial(_global_array, sharding), (host, seed_ids))
                out = compiled(*inputs)
                if jax.process_count() > 1:
                    out = multihost_utils.process_allgather(out, tiled=True)
                else:
                    out = jax.device_get(out)
                outputs = {k: np.asarray(v)[: len(runs)] for k, v in out.items()}
                frame = _chunk_frame(plan, g, runs, outputs, metric_axes)
                t1 = time.perf_counter()
                if lead:
                    path = workdir / "rows" / plan.chunk_file(g, c)
                    _write_chunk(path, frame, plan, g, c)
                frames[g, c] = frame
                timing["chunks"] += 1
                timing["run_s"] += t1 - t0
                timing["write_s"] += time.perf_counter() - t1
                done[g, c] = True
                bar.update()
                if lead and time.monotonic() - last_meta_write > _METADATA_EVERY_S:
                    _write_json(workdir / "metadata.json", meta)
                    last_meta_write = time.monotonic()
    finally:
        bar.close()
        if lead:
            session["finished"] = _io.timestamp()
            meta["complete"] = bool(done.all())
            _write_json(workdir / "metadata.json", meta)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"gradflow.sweep {plan.config_hash}")

    parts = []
    for g in range(n_groups):
        for c in range(n_chunks):
            if (g, c) in frames:
                parts.append(frames[g, c])
            else:
                path = workdir / "rows" / plan.chunk_file(g, c)
                if path.exists():
                    parts.append(_read_chunk(plan, g, c, path))
    if not parts:
        return _empty(plan.columns, plan.dtypes)
    return _coerce(pd.concat(parts, ignore_index=True)[list(plan.columns)], plan.dtypes)


from gradflow._frames import to_arrays  # noqa: E402, F401
