"""What a sweep session records about where it ran: versions, git commit, host, devices."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path

import jax

from gradflow import _io
from gradflow._io import Json


@functools.cache
def _git_commit() -> dict[str, Json]:
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


def _environment() -> dict[str, Json]:
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


def _session(precision: str, block_size: int | str | None) -> dict[str, Json]:
    """A new entry of ``metadata.json``'s ``"sessions"``: where and how this call runs; its
    ``"groups"`` (compile and run timings) fill in as it goes, ``"finished"`` at the end."""
    return {
        **_environment(),
        "started": _io.timestamp(),
        "finished": None,
        "matmul_precision": precision,
        "block_size": block_size,
        "groups": [],
    }
