"""Tests of gradflow.spectra: exact Jacobian singular values, deep random nets, and measured
spectra against the free-probability moments (Pennington, Schoenholz, Ganguli 2017, 2018).

Networks are width 128 and depth 8 throughout, so each (weights, activation) compiles once.
Sampling tolerances are stated at each call: they allow for the finite width (the variance of
m2 estimates grows with depth) and for the few seeds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import meanfield, spectra

WIDTH, DEPTH = 128, 8
SEEDS = range(3)


def _spectra(activation, sw2, sb2, weights, q, seeds=SEEDS):
    """Per-depth singular values (seeds, depth, width) of sampled nets with first-layer q."""
    out = []
    for seed in seeds:
        k_net, k_x = jax.random.split(jax.random.key(seed))
        params = spectra.init_network(k_net, WIDTH, DEPTH, sw2=sw2, sb2=sb2, weights=weights)
        x = spectra.network_input(k_x, WIDTH, q, sw2=sw2, sb2=sb2)
        out.append(np.asarray(spectra.layer_jacobian_singular_values(params, x, activation)))
    return np.stack(out)


def _measured_moments(svals):
    m = spectra.spectrum_moments(svals)  # (seeds, depth)
    return spectra.SpectralMoments(*(np.asarray(a).mean(0) for a in m))


def test_jacobian_singular_values_of_linear_maps(x64):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 3))
    # forward mode (3 inputs <= 5 outputs)
    got = spectra.jacobian_singular_values(lambda x: a @ x, jnp.ones(3))
    np.testing.assert_allclose(got, np.linalg.svd(a, compute_uv=False), rtol=1e-12)
    # reverse mode (6 inputs > 4 outputs), matrix-shaped input and output
    b = rng.normal(size=(4, 6))
    got = spectra.jacobian_singular_values(
        lambda x: (b @ x.ravel()).reshape(2, 2), jnp.ones((2, 3))
    )
    assert got.shape == (4,)
    np.testing.assert_allclose(got, np.linalg.svd(b, compute_uv=False), rtol=1e-12)
    # a tanh layer: J = diag(1 - tanh^2(W^T x)) W^T
    x = jnp.asarray(rng.normal(size=3))
    want = np.linalg.svd((1 - np.tanh(a @ x) ** 2)[:, None] * a, compute_uv=False)
    got = spectra.jacobian_singular_values(lambda x: jnp.tanh(a @ x), x)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_per_depth_spectra_agree_with_autodiff():
    sw2, sb2 = 1.5, 0.1
    params = spectra.init_network(jax.random.key(0), WIDTH, DEPTH, sw2=sw2, sb2=sb2)
    x = spectra.network_input(jax.random.key(1), WIDTH, 1.0, sw2=sw2, sb2=sb2)
    np.testing.assert_allclose(jnp.sum(x**2) / WIDTH, (1.0 - sb2) / sw2, rtol=1e-5)
    per_depth = spectra.layer_jacobian_singular_values(params, x, "tanh")
    assert per_depth.shape == (DEPTH, WIDTH)
    autodiff = spectra.jacobian_singular_values(
        lambda x: spectra.apply_network(params, x, "tanh"), x
    )
    # float32: singular values of an 8-layer product to ~1e-5 relative of the largest
    np.testing.assert_allclose(per_depth[-1], autodiff, rtol=0, atol=1e-5 * float(autodiff[0]))


def test_deep_linear_orthogonal_is_exactly_isometric():
    for sw2 in (1.0, 1.21):  # gain 1 and 1.1: every singular value is gain^l
        s = _spectra("linear", sw2, 0.0, "orthogonal", 1.0, seeds=[0])[0]
        gain = np.sqrt(sw2) ** np.arange(1, DEPTH + 1)
        np.testing.assert_allclose(s, np.broadcast_to(gain[:, None], s.shape), rtol=1e-5)
    pred = spectra.jacobian_moments(1.0, 0.0, "linear", DEPTH, weights="orthogonal")
    np.testing.assert_allclose(pred.variance, 0.0, atol=1e-6)  # float32 quadrature rounding
    np.testing.assert_allclose(pred.mean, 1.0, rtol=1e-6)


def test_deep_linear_gaussian_keeps_the_mean_and_spreads_with_depth():
    s = _spectra("linear", 1.0, 0.0, "gaussian", 1.0, seeds=range(4))
    meas = _measured_moments(s)
    pred = spectra.jacobian_moments(1.0, 0.0, "linear", DEPTH, weights="gaussian")
    layers = np.arange(1, DEPTH + 1)
    # float32 predictions: 1e-5
    np.testing.assert_allclose(pred.mean, 1.0, rtol=1e-5)
    np.testing.assert_allclose(pred.second_moment, layers + 1, rtol=1e-5)  # Fuss-Catalan
    np.testing.assert_allclose(pred.variance, layers, rtol=1e-5)
    # mean squared singular value stays 1 (E = 1 exactly; 4 nets x 128 units: ~5%)
    np.testing.assert_allclose(meas.mean, 1.0, rtol=0.1)
    # the spread grows with depth and matches free probability where the finite-width estimate
    # of m2 is still reliable (depth <= 4: within 15%)
    assert np.all(np.diff(meas.variance) > 0)
    np.testing.assert_allclose(meas.variance[:4], pred.variance[:4], rtol=0.15)


@pytest.mark.parametrize("weights,spread", [("orthogonal", 1.0), ("gaussian", 2.0)])
def test_relu_at_its_critical_point_cannot_be_isometric(weights, spread):
    sw2 = float(meanfield.critical_sw2(0.0, "relu"))
    np.testing.assert_allclose(sw2, 2.0, rtol=1e-6)
    s = _spectra("relu", sw2, 0.0, weights, 1.0)
    meas = _measured_moments(s)
    pred = spectra.jacobian_moments(sw2, 0.0, "relu", DEPTH, weights=weights, q=1.0)
    layers = np.arange(1, DEPTH + 1)
    np.testing.assert_allclose(pred.mean, 1.0, rtol=1e-5)  # critical: mean 1 ...
    np.testing.assert_allclose(pred.variance, spread * layers, rtol=1e-5)  # ... spread ~ L
    # Each layer's active fraction fluctuates by ~1/sqrt(N) ~ 9%, so m1 of one 8-layer net
    # by ~25% (3 nets: ~15%); the normalised spread m2/m1^2 - 1 = spread * l does not.
    np.testing.assert_allclose(meas.mean, 1.0, rtol=0.3)
    normalised = meas.second_moment / meas.mean**2 - 1
    np.testing.assert_allclose(normalised[:4], spread * layers[:4], rtol=0.15)
    # about half of the singular values vanish (D_l zeroes the inactive units): far from 1
    assert np.mean(s[:, -1] < 1e-3) > 0.3


def test_tanh_orthogonal_near_zero_q_star_is_nearly_isometric():
    # On the critical line at q* = 0.01 (Pennington et al. 2017): orthogonal weights keep the
    # spectrum near 1, Gaussian ones spread it like a linear Gaussian net.
    q = 0.01
    sw2, sb2 = (float(a) for a in meanfield.critical_point(q, "tanh"))
    results = {}
    for weights in ("orthogonal", "gaussian"):
        meas = _measured_moments(_spectra("tanh", sw2, sb2, weights, q))
        pred = spectra.jacobian_moments(sw2, sb2, "tanh", DEPTH, weights=weights)
        np.testing.assert_allclose(pred.mean, 1.0, rtol=1e-4)
        np.testing.assert_allclose(meas.mean, 1.0, rtol=0.1)
        results[weights] = meas, pred
    meas_o, pred_o = results["orthogonal"]
    meas_g, pred_g = results["gaussian"]
    assert np.all(pred_o.variance < 0.02) and np.all(meas_o.variance < 0.02)
    np.testing.assert_allclose(meas_o.variance, pred_o.variance, rtol=0.3, atol=2e-3)
    np.testing.assert_allclose(meas_g.variance[:4], pred_g.variance[:4], rtol=0.15)
    assert np.all(meas_g.variance > 20 * meas_o.variance)


def test_jacobian_moments_closed_forms(x64):
    layers = np.arange(1, 6)
    lin = spectra.jacobian_moments(1.5, 0.0, "linear", 5, weights="gaussian", q=1.0)
    np.testing.assert_allclose(lin.mean, 1.5**layers, rtol=1e-12)
    np.testing.assert_allclose(lin.variance, layers * 1.5 ** (2 * layers), rtol=1e-12)
    # q given at the fixed point equals q=None
    q = meanfield.q_star(1.5, 0.05, "tanh")
    a = spectra.jacobian_moments(1.5, 0.05, "tanh", 5, weights="orthogonal")
    b = spectra.jacobian_moments(1.5, 0.05, "tanh", 5, weights="orthogonal", q=q)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-8)
    # away from q*, layers follow the q-map: m1 = prod_l chi(q_l)
    c = spectra.jacobian_moments(1.5, 0.05, "tanh", 5, weights="orthogonal", q=2.0)
    th = meanfield.propagate(1.5, 0.05, "tanh", 5, q0=(2.0 - 0.05) / 1.5)
    chis = meanfield.chi1(1.5, 0.05, "tanh", q=th.q)
    np.testing.assert_allclose(c.mean, np.cumprod(chis), rtol=1e-10)


def test_bad_input_raises():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"weights must be one of \('gaussian', 'orthogonal'\)"):
        spectra.init_network(key, 8, 2, weights="uniform")
    with pytest.raises(ValueError, match="width must be a positive integer, got 0"):
        spectra.init_network(key, 0, 2)
    with pytest.raises(ValueError, match=r"sw2 .* must be finite and >= 0, got -1\.0"):
        spectra.init_network(key, 8, 2, sw2=-1.0)
    with pytest.raises(TypeError, match="fn must be callable"):
        spectra.jacobian_singular_values("tanh", jnp.ones(3))
    with pytest.raises(TypeError, match="x must be a floating array"):
        spectra.jacobian_singular_values(jnp.tanh, jnp.ones(3, jnp.int32))
    with pytest.raises(TypeError, match="fn must return a single array"):
        spectra.jacobian_singular_values(lambda x: (x, x), jnp.ones(3))
    params = spectra.init_network(key, 8, 2)
    with pytest.raises(ValueError, match=r"x must be one input of shape \(8,\)"):
        spectra.apply_network(params, jnp.ones((4, 8)), "tanh")
    with pytest.raises(TypeError, match="params must be a NetworkParams"):
        spectra.layer_jacobian_singular_values((params.weights,), jnp.ones(8), "tanh")
    with pytest.raises(ValueError, match="unknown activation 'tan'"):
        spectra.apply_network(params, jnp.ones(8), "tan")
    with pytest.raises(ValueError, match="q must be >= sb2"):
        spectra.network_input(key, 8, 0.1, sb2=0.2)
    with pytest.raises(ValueError, match="sw2 and sb2 must be scalars"):
        spectra.jacobian_moments(jnp.ones(2), 0.0, "tanh", 3)
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        spectra.jacobian_moments(1.0, 0.0, "tanh", 0)


def test_network_input_needs_a_positive_weight_variance():
    with pytest.raises(ValueError, match=r"sw2 must be > 0 here .* got sw2=0"):
        spectra.network_input(jax.random.key(0), 8, 1.0, sw2=0.0)  # used to return inf
    with pytest.raises(ValueError, match=r"q \(the first layer's .*\) must be finite and >= 0"):
        spectra.network_input(jax.random.key(0), 8, float("nan"))
