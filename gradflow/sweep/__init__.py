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
  seeds innermost; its key is :func:`gradflow.rng.threefry_key(seed) <gradflow.rng.threefry_key>`:
  every number it draws is ``jax.random.key(seed)``'s, bit for bit (the cipher fused into its
  consumer, which compiles and runs faster than JAX's rolled loop on CPU), so exactly what a
  single-run script would draw, independent of grid, chunking and devices. Seeds are integers in
  ``[0, 2**32)``. With ``rng="native"`` it is :func:`gradflow.rng.key` instead (laid out as XLA's
  ``RngBitGenerator``; equally batch-independent, another random stream).

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

The package
-----------
One concept per module, all re-exported here: ``_plan`` (validation, the plan: groups, runs,
chunks, columns), ``_program`` (the sharded jitted program of a group), ``_frame`` (tidy rows),
``_store`` (``metadata.json``, chunk files and their checks, resuming), ``_lock`` (one writer),
``_provenance`` (what a session records), ``_devices`` (CPU devices, the mesh, multi-host
agreement), ``_run`` (:func:`run`) and ``_arrays`` (:func:`to_arrays`: a tidy table as arrays
by dims).
"""

from __future__ import annotations

from gradflow.sweep import _plan, _program
from gradflow.sweep._arrays import to_arrays
from gradflow.sweep._devices import cpu_devices, usable_cores
from gradflow.sweep._lock import LOCK_FILE as LOCK_FILE
from gradflow.sweep._lock import _StoreLock as _StoreLock  # tests hold it to play a 2nd writer
from gradflow.sweep._lock import in_use
from gradflow.sweep._plan import FORMAT as FORMAT
from gradflow.sweep._program import batched, vmap
from gradflow.sweep._run import run
from gradflow.sweep._store import _write_json as _write_json
from gradflow.sweep._store import load, load_metadata

#: Axis names of a metric's per-run array by its number of dimensions (override with ``axes=``).
DEFAULT_AXES: dict[int, tuple[str, ...]] = _plan.DEFAULT_AXES
#: Name of the one-dimensional device mesh axis the runs of a sweep are sharded over.
MESH_AXIS: str = _program.MESH_AXIS

__all__ = [
    "DEFAULT_AXES",
    "MESH_AXIS",
    "batched",
    "cpu_devices",
    "in_use",
    "load",
    "load_metadata",
    "run",
    "to_arrays",
    "usable_cores",
    "vmap",
]

# The public functions live in private modules; their home is this package: documented here,
# found here by doctest (their examples run as gradflow.sweep's), and shown so in reprs.
for _public in (
    batched, cpu_devices, in_use, load, load_metadata, run, to_arrays, usable_cores, vmap
):
    _public.__module__ = __name__
del _public
