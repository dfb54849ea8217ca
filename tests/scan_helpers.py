"""Test helper shared by test_models and test_probes: run code with gradflow.models' runs of
identical blocks unrolled (Flax's own per-layer init and apply, as before runs were scanned)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from gradflow import models

T = TypeVar("T")


def unrolled(fn: Callable[[], T]) -> T:
    """``fn()`` with every block unrolled (``models.SCAN_MIN_RUN`` out of reach), then restored."""
    saved = models.SCAN_MIN_RUN
    models.SCAN_MIN_RUN = 10**9
    try:
        return fn()
    finally:
        models.SCAN_MIN_RUN = saved
