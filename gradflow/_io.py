"""Atomic file writes: the one helper behind every file gradflow writes.

``atomic_write(path, data)`` writes ``data`` (bytes, or a callable that writes to a binary file
object) to a temporary file created *exclusively* (:func:`tempfile.mkstemp`: ``O_CREAT | O_EXCL``,
mode 0600, an unpredictable name) in the target directory, flushes and fsyncs it, renames it over
``path`` with :func:`os.replace` (atomic on POSIX) and fsyncs the directory. A reader sees the old
file or the new one, never half of either; a crash leaves at most a hidden ``.<name>.*.tmp`` file;
and a file or symlink planted at a guessable temporary name is never followed or overwritten,
because the temporary name is chosen and created by the kernel in one step.

Used by :func:`gradflow.experiment.write_atomic` (tables, macros, JSON records),
:mod:`gradflow.sweep` (chunks and ``metadata.json``), :func:`gradflow.plotting.savefig` (figures)
and :func:`gradflow.training.save_checkpoint` (checkpoints). :func:`timestamp` is the time stamp
of the records written (run records, runtimes, sweep metadata). :func:`is_writer` says whether
this process writes at all: with several processes, only process 0 does.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from gradflow import _checks

__all__ = ["TMP_SUFFIX", "Json", "atomic_write", "is_writer", "timestamp", "write_text"]

#: A JSON value as :func:`json.loads` returns it (the records gradflow writes).
Json = dict[str, "Json"] | list["Json"] | str | int | float | bool | None

#: Suffix of the temporary files (``.<name>.<random>.tmp``), so stale ones can be recognised.
TMP_SUFFIX = ".tmp"


def is_writer() -> bool:
    """Whether this process writes files. Under :func:`jax.distributed.initialize` every process
    computes (sweeps shard over every host's devices) and process 0 alone writes results,
    figures, tables and records: ``jax.process_index() == 0``, always true in one process."""
    import jax

    return jax.process_index() == 0


def timestamp() -> str:
    """The current UTC time in ISO 8601 to the second, e.g. ``"2026-12-04T21:22:00+00:00"``."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def atomic_write(
    path: str | os.PathLike, data: bytes | str | Callable[[IO[bytes]], object]
) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a :class:`~pathlib.Path`.

    Args:
      path: the destination; its directory must exist (the caller creates it).
      data: ``bytes``, ``str`` (UTF-8) or ``write(file)`` writing to a binary file object.

    The temporary file is removed if writing fails; the destination is then untouched.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with contextlib.suppress(OSError, AttributeError):  # mkstemp's 0600 -> the usual mode
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes | bytearray | memoryview):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`, creating its directory; under
    :func:`jax.distributed.initialize` only process 0 writes (every process runs an experiment's
    sweeps; one writes its outputs). Returns ``path`` either way. Public as
    :func:`gradflow.experiment.write_atomic`."""
    if not isinstance(text, str):
        raise TypeError(f"write_atomic writes text: got {type(text).__name__}, not str")
    path = _checks.path("path", path)
    if not is_writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, text)


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it: set, then restore
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; not possible on every platform or file system."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
