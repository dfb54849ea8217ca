"""The guarded private-JAX call: a real answer on the checked versions, ``None`` elsewhere."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from gradflow import _jax_compat


def test_backends_started_after_a_computation():
    jnp.zeros(1).block_until_ready()
    if jax.__version_info__[:2] not in _jax_compat.CHECKED_JAX:
        pytest.skip(f"jax {jax.__version__} is not a checked version")
    assert _jax_compat.backends_are_initialized() is True


def test_unchecked_version_is_unknown(monkeypatch):
    monkeypatch.setattr(_jax_compat, "_jax_version", lambda: (9, 99))
    assert _jax_compat.backends_are_initialized() is None


def test_moved_private_function_is_unknown(monkeypatch):
    from jax._src import xla_bridge

    monkeypatch.delattr(xla_bridge, "backends_are_initialized")
    monkeypatch.setattr(_jax_compat, "_jax_version", lambda: _jax_compat.CHECKED_JAX[0])
    assert _jax_compat.backends_are_initialized() is None
