"""The one place gradflow reaches into JAX internals, guarded and version-checked.

JAX has no public way to ask whether its backends have started (which decides whether a change
to ``XLA_FLAGS`` can still take effect). :func:`backends_are_initialized` asks
``jax._src.xla_bridge.backends_are_initialized`` on the JAX versions it was checked with
(:data:`CHECKED_JAX`: 0.10 and 0.11) and, where that private function is missing or another
version runs, answers ``None`` ("unknown") instead of raising, so that a JAX release that moves
it degrades one warning, not the command.
"""

from __future__ import annotations

import jax

__all__ = ["CHECKED_JAX", "backends_are_initialized"]

#: ``(major, minor)`` versions of JAX on which the private call below was checked.
CHECKED_JAX: tuple[tuple[int, int], ...] = ((0, 10), (0, 11))


def _jax_version() -> tuple[int, int]:
    return tuple(int(p) for p in jax.__version_info__[:2])  # type: ignore[return-value]


def backends_are_initialized() -> bool | None:
    """Whether JAX's backends (CPU, GPU, ...) have started; ``None`` when this JAX cannot say.

    True once any computation, device query or ``jax.devices()`` ran in this process; after that,
    XLA has read ``XLA_FLAGS`` and changes to it have no effect.
    """
    if _jax_version() not in CHECKED_JAX:
        return None
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return None
