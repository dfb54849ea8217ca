"""Plain-text tables: the one column aligner behind gradflow's terminal reports."""

from __future__ import annotations

from collections.abc import Collection, Sequence

__all__ = ["align"]


def align(rows: Sequence[Sequence[str]], left: Collection[int] = (0,)) -> list[str]:
    """``rows`` of string cells as text lines, one per row.

    Every column is as wide as its widest cell; columns are two spaces apart; the columns whose
    index is in ``left`` are left-aligned, the others right-aligned (numbers); trailing spaces are
    stripped. Every row has the same number of cells (ValueError otherwise).
    """
    if not rows:
        return []
    n = len(rows[0])
    if any(len(r) != n for r in rows):
        raise ValueError(f"every row needs {n} cells, got {sorted({len(r) for r in rows})}")
    widths = [max(len(r[j]) for r in rows) for j in range(n)]
    return [
        "  ".join(
            c.ljust(w) if j in left else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        for r in rows
    ]
