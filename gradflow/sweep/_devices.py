"""Devices and hosts of a sweep: CPU devices, the mesh, and what every process must agree on."""

from __future__ import annotations

import numbers
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from gradflow import _io

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


def _global_array(sharding: NamedSharding, host: np.ndarray) -> jax.Array:
    """The global array of which every process holds the full copy ``host``."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _agree(status: np.ndarray) -> np.ndarray:
    """Process 0's ``status`` on every process (identity on one process)."""
    if jax.process_count() == 1:
        return status
    return np.asarray(multihost_utils.broadcast_one_to_all(status))


def _gather(out: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """Every process's share of the sharded outputs, on every host."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(out, tiled=True)
    return jax.device_get(out)


def _agree_with_process_0(
    config_hash: str, done: np.ndarray | None, *, failed: bool, shape: tuple[int, int]
) -> tuple[bool, bool, np.ndarray]:
    """Process 0's verdict on the store, broadcast in one collective.

    Process 0 packs whether it failed, the first 16 bytes of its config hash (4 int32 words) and
    its done mask (``shape``: groups x chunks) into one int32 status vector; every process
    receives it and compares the hash with its own. Returns (process 0 failed, this process has
    process 0's config, the done mask).
    """
    words = np.frombuffer(bytes.fromhex(config_hash)[:16], dtype=np.int32)
    status = np.zeros(1 + 4 + shape[0] * shape[1], dtype=np.int32)
    if _io.is_writer():
        status[0] = failed
        status[1:5] = words
        if done is not None:
            status[5:] = done.ravel()
    status = _agree(status)
    same_config = bool(np.array_equal(status[1:5], words))
    return bool(status[0]), same_config, status[5:].astype(bool).reshape(shape)
