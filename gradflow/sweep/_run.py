"""The sweep itself: :func:`run` checks its arguments, opens the store, agrees with the other
processes and runs every chunk that is not stored yet."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import chex
import jax
import numpy as np
import pandas as pd
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from gradflow import _checks, _io
from gradflow import config as _config
from gradflow import rng as _rng
from gradflow._io import Json
from gradflow.sweep import _devices, _provenance
from gradflow.sweep._frame import _chunk_frame, _table
from gradflow.sweep._lock import _StoreLock
from gradflow.sweep._plan import GridValue, _checked_config, _Plan
from gradflow.sweep._program import (
    _call_chunk,
    _check_block_size,
    _compile_group,
    _metric_axes,
    _sweep_sharding,
)
from gradflow.sweep._store import (
    _Metadata,
    _open_store,
    _prepare_workdir,
    _read_chunk,
    _write_chunk,
)

if TYPE_CHECKING:
    from tqdm.auto import tqdm


def run(
    fn: Callable[[dict[str, GridValue | jax.Array], jax.Array], Mapping[str, chex.ArrayTree]],
    grid: Mapping[str, Sequence[GridValue]],
    seeds: Iterable[int],
    *,
    static: Sequence[str] = (),
    workdir: str | os.PathLike,
    chunk_size: int | None = None,
    axes: Mapping[str, Sequence[str]] | None = None,
    name: str | None = None,
    config: Mapping[str, Json] | None = None,
    progress: bool | None = None,
    rng: str = "threefry",
    block_size: int | str | None = "auto",
) -> pd.DataFrame:
    """Evaluate ``fn(hparams, key)`` on every point of ``grid`` x ``seeds``; store a tidy table.

    Numeric grid keys not in ``static`` are vmapped together with the seeds (one batch axis,
    sharded over all devices); every other key splits the grid into groups, each compiled once.
    See the module docstring for the layout of the table and of the store, resuming, divergence
    and several hosts.

    Args:
      fn: ``fn(hparams, key) -> dict`` of metric arrays for one run. ``hparams`` maps every grid key
        to its value (a traced 0-d array for batched keys, the Python value for static ones);
        ``key`` draws ``jax.random.key(seed)``'s numbers (:func:`gradflow.rng.threefry_key`;
        ``rng="native"``: :func:`gradflow.rng.key`). Nested dicts
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
      rng: ``"threefry"`` (default): :func:`gradflow.rng.threefry_key(seed)
        <gradflow.rng.threefry_key>`, ``jax.random.key(seed)``'s numbers bit for bit; ``"native"``:
        :func:`gradflow.rng.key(seed) <gradflow.rng.key>`, ThreeFry fused on CPU (faster random
        initialisation, another stream; recorded in the config, so the two never mix in a store).
      block_size: runs evaluated together under ``vmap``; each device maps over its share of a
        chunk this many at a time (``lax.map`` inside ``jax.shard_map``, one program); ``None``:
        all at once. ``"auto"`` (default): on CPU blocks of about as many runs as have working
        sets (the most bytes one operation of a run produces, read off ``fn``'s jaxpr) that fit
        16 MiB -- a divisor of the runs per device when one is close, else a power of two -- so
        a block's values stay in cache; on a GPU or TPU all at once. Measured on a
        2-core CPU (benchmarks/RESULTS.md): 1024 depth-10, width-30 probes 413 -> 194 ms
        (block 16), 32 depth-50, width-256 ones 3.23 -> 1.63 s (block 1). A block changes how
        XLA orders the batched sums, so numbers may move by float32 rounding (at most 1e-6
        relative there; long training runs can amplify it, as any change of summation order
        would); the block depends on ``fn``, the runs per device and the platform, never on the
        cache sizes; the setting is recorded in the store's ``sessions``.

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
    grid, seeds, static, axes, chunk_size, user_config = _checked_config(
        fn, grid, seeds, static, chunk_size, axes, name, config
    )
    if workdir is None:
        raise TypeError("workdir is required: the directory of the results store")
    workdir = _checks.path("workdir", workdir)
    _check_block_size(block_size)
    block_size = block_size if block_size is None or block_size == "auto" else int(block_size)
    if rng not in _rng.NAMES:
        raise ValueError(f"unknown rng {rng!r}; valid names: {', '.join(_rng.NAMES)}")
    precision = _config.matmul_precision()  # read once: every group of this call uses it
    plan = _Plan(grid, seeds, static, chunk_size, axes, name, user_config, fn, rng, precision)

    opened = _open_as_writer(workdir, plan) if _io.is_writer() else _Opened()
    try:
        return _run_locked(fn, plan, workdir, opened, name, progress, block_size)
    finally:
        if opened.lock is not None:
            opened.lock.__exit__(None, None, None)


@dataclasses.dataclass
class _Opened:
    """What process 0 found when it opened the store (other processes hold the defaults)."""

    meta: dict[str, Json] | None = None
    done: np.ndarray | None = None
    error: str | None = None  # why the sweep cannot run, for every process to raise
    failure: Exception | None = None  # process 0's own exception, raised there as is
    lock: _StoreLock | None = None


def _open_as_writer(workdir: Path, plan: _Plan) -> _Opened:
    """Process 0: create, lock and check the store. An exception is kept, not raised, so the
    other processes learn of it (:func:`_agree_on_store`) instead of waiting forever."""
    opened = _Opened()
    try:
        _prepare_workdir(workdir)
        opened.lock = _StoreLock(workdir).__enter__()
        opened.meta, opened.done, opened.error = _open_store(workdir, plan)
    except Exception as e:
        opened.failure, opened.error = e, f"{type(e).__name__}: {e}"
    return opened


def _agree_on_store(plan: _Plan, workdir: Path, opened: _Opened) -> np.ndarray:
    """Process 0 decides; every process learns its verdict and the done mask, and checks that it
    was called with the same config. Returns the done mask, (groups, chunks) booleans."""
    failed, same_config, done = _devices._agree_with_process_0(
        plan.config_hash,
        opened.done,
        failed=opened.error is not None,
        shape=(len(plan.groups), plan.chunks_per_group),
    )
    if opened.failure is not None:
        raise opened.failure
    if failed:
        raise ValueError(
            opened.error or f"the sweep store {workdir} holds a different sweep (process 0)"
        )
    if not same_config:
        raise ValueError(
            f"process {jax.process_index()} was called with a different sweep config than "
            "process 0; every process must make the same gradflow.sweep.run call"
        )
    return done


def _progress_bar(plan: _Plan, done: np.ndarray, name: str | None, progress: bool | None):
    """A tqdm bar over chunks, on process 0 only (``progress=None``: when stderr is a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=done.size,
        initial=int(done.sum()),
        # tqdm's disable=None hides the bar when stderr is not a terminal
        disable=True if not _io.is_writer() else (None if progress is None else not progress),
        desc=name or "sweep",
        unit="chunk",
        dynamic_ncols=True,
    )


@dataclasses.dataclass
class _Session:
    """One call of :func:`run` at work: what every chunk needs, and what the chunks leave."""

    fn: Callable
    plan: _Plan
    workdir: Path
    block_size: int | str | None
    done: np.ndarray
    sharding: NamedSharding
    metadata: _Metadata
    bar: tqdm
    frames: dict[tuple[int, int], pd.DataFrame] = dataclasses.field(default_factory=dict)

    def run_group(self, g: int, todo: Sequence[int]) -> None:
        """Compile group ``g`` once, then run its chunks ``todo``; timings into the session."""
        t0 = time.perf_counter()
        padded = self.plan.padded_size(self.sharding.mesh.size)
        with _config.use_matmul_precision(self.plan.matmul_precision):
            compiled, shapes = _compile_group(
                self.fn, self.plan, g, self.sharding, padded, self.block_size
            )
        metric_axes = _metric_axes(self.plan, shapes)
        timing = {"group": g, "compile_s": time.perf_counter() - t0, "chunks": 0, "run_s": 0.0,
                  "write_s": 0.0}  # fmt: skip
        self.metadata.session["groups"].append(timing)
        for c in todo:
            self.run_chunk(g, c, compiled, metric_axes, timing)

    def run_chunk(
        self,
        g: int,
        c: int,
        compiled: jax.stages.Compiled,
        metric_axes: Mapping[str, tuple[str, ...]],
        timing: dict[str, float],
    ) -> None:
        """Chunk ``c`` of group ``g``: compute, tidy, store (process 0), count."""
        t0 = time.perf_counter()
        runs = self.plan.chunk_runs(c)
        outputs = _call_chunk(compiled, self.plan, runs, self.sharding)
        frame = _chunk_frame(self.plan, g, runs, outputs, metric_axes)
        t1 = time.perf_counter()
        if _io.is_writer():
            path = self.workdir / "rows" / self.plan.chunk_file(g, c)
            _write_chunk(path, frame, self.plan, g, c)
        self.frames[g, c] = frame
        timing["chunks"] += 1
        timing["run_s"] += t1 - t0
        timing["write_s"] += time.perf_counter() - t1
        self.done[g, c] = True
        self.bar.update()
        self.metadata.save_every()


def _run_locked(
    fn: Callable,
    plan: _Plan,
    workdir: Path,
    opened: _Opened,
    name: str | None,
    progress: bool | None,
    block_size: int | str | None,
) -> pd.DataFrame:
    """The body of :func:`run` after process 0 opened (and locked) the store."""
    done = _agree_on_store(plan, workdir, opened)
    session = _provenance._session(plan.matmul_precision, block_size)
    metadata = _Metadata(workdir / "metadata.json", opened.meta, session)
    bar = _progress_bar(plan, done, name, progress)
    sweep = _Session(fn, plan, workdir, block_size, done, _sweep_sharding(), metadata, bar)
    try:
        for g in range(len(plan.groups)):
            todo = [c for c in range(plan.chunks_per_group) if not done[g, c]]
            if todo:
                bar.set_postfix_str(plan.group_label(g), refresh=False)
                sweep.run_group(g, todo)
    finally:
        bar.close()
        metadata.close(complete=bool(done.all()))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"gradflow.sweep {plan.config_hash}")
    return _reassemble(plan, workdir, sweep.frames)


def _reassemble(
    plan: _Plan, workdir: Path, frames: Mapping[tuple[int, int], pd.DataFrame]
) -> pd.DataFrame:
    """The whole table: this call's chunks, and those of earlier sessions read from the store."""
    parts = []
    for g in range(len(plan.groups)):
        for c in range(plan.chunks_per_group):
            if (g, c) in frames:
                parts.append(frames[g, c])
            else:
                path = workdir / "rows" / plan.chunk_file(g, c)
                if path.exists():
                    parts.append(_read_chunk(plan, g, c, path))
    return _table(plan, parts)
