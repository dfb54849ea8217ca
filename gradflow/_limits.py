"""Memory available to this process, for the size checks that refuse what cannot fit.

A size that would not fit (``gradflow run activation_derivatives --set n_sup=1000000001``,
``gf.analytic.exploding_chain(10**9)``) must fail at once with a message naming it, not swap for
minutes and die to the OOM killer without a word.
"""

from __future__ import annotations

import os

__all__ = ["available_memory", "check_bytes", "fmt_bytes"]


def available_memory() -> int | None:
    """Bytes of memory available now (``MemAvailable`` on Linux, else free physical pages);
    None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def fmt_bytes(n: float) -> str:
    """``n`` bytes for a message: ``"24.0 GB"``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def check_bytes(what: str, nbytes: float) -> None:
    """``ValueError`` when ``what`` needs more than the memory available now."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ValueError(
            f"{what} needs about {fmt_bytes(nbytes)} of memory, but {fmt_bytes(avail)} is "
            "available; choose a smaller size"
        )
