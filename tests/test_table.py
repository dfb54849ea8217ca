"""The plain-text column aligner."""

from __future__ import annotations

import pytest

from gradflow import _table


def test_align_pads_columns_to_the_widest_cell():
    lines = _table.align(
        [["name", "x", "status"], ["a", "10.5", "ok"], ["longer", "2", ""]], {0, 2}
    )
    assert lines == [
        "name       x  status",
        "a       10.5  ok",
        "longer     2",
    ]


def test_align_of_nothing_is_nothing():
    assert _table.align([]) == []


def test_align_refuses_ragged_rows():
    with pytest.raises(ValueError, match=r"every row needs 2 cells, got \[1, 2\]"):
        _table.align([["a", "b"], ["c"]])
