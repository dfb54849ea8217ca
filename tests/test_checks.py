"""The shared value checks of gradflow._checks used by optim, meanfield and spectra."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import _checks


def test_real_host_is_float64_on_the_host_or_none_when_traced():
    host = _checks.real_host("x", [1, 2])
    assert host.dtype == np.float64 and host.tolist() == [1.0, 2.0]
    assert _checks.real_host("x", jnp.float32(0.5)) == 0.5
    seen = []
    jax.jit(lambda v: seen.append(_checks.real_host("x", v)) or v)(1.0)
    assert seen == [None]


@pytest.mark.parametrize("bad", [None, "1.0", True, 1 + 2j, object(), [1.0, "x"]])
def test_real_host_refuses_non_numbers(bad):
    with pytest.raises(TypeError, match="x must be a real number or array, got"):
        _checks.real_host("x", bad)


def test_values_names_the_first_bad_element():
    _checks.values("v", [1.0, 2.0], lambda h: h > 0, "must be > 0")  # passes
    with pytest.raises(ValueError, match=r"^v must be > 0, got -2\.0$"):
        _checks.values("v", [1.0, -2.0, -3.0], lambda h: h > 0, "must be > 0")
    jax.jit(lambda v: _checks.values("v", v, lambda h: h > 0, "must be > 0") or v)(-1.0)


def test_nonneg_positive_correlation():
    _checks.nonneg("q", 0.0)
    _checks.positive("q", 1e-30)
    _checks.correlation("c", [-1.0, 1.0])
    with pytest.raises(ValueError, match=r"^q \(a variance\) must be finite and >= 0, got -1\.0$"):
        _checks.nonneg("q", -1.0, "a variance")
    with pytest.raises(ValueError, match=r"^q must be finite and >= 0, got inf$"):
        _checks.nonneg("q", float("inf"))
    with pytest.raises(ValueError, match=r"^q must be finite and > 0, got 0\.0$"):
        _checks.positive("q", 0)
    with pytest.raises(ValueError, match=r"^c \(a correlation\) must lie in \[-1, 1\], got nan$"):
        _checks.correlation("c", [0.0, float("nan")])
