"""One writer per sweep store: an exclusive :func:`fcntl.flock` on ``workdir/.lock``."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from gradflow import _checks, _io

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
