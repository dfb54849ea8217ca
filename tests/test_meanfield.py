"""Tests of gradflow.meanfield: quadrature against adaptive quadrature (scipy), fixed points and
chi1 against independent references, closed forms, the critical line, derivatives, and sampled
finite-width networks against the mean-field predictions.

Tolerances are stated at each call. float64 references use the ``x64`` fixture.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize

from gradflow import activations, meanfield

ALL = activations.names(builtin_only=True)
x64_given = settings(
    suppress_health_check=[
        *settings.default.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ]
)


# --- independent references (scipy adaptive quadrature, float64 numpy) --------------------------


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _ndtr(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


_LAM, _ALPHA = activations.SELU_LAMBDA, activations.SELU_ALPHA
#: Independent scalar float64 (phi, phi') written with the math module, for the quad references.
REF = {
    "linear": (lambda x: x, lambda x: 1.0),
    "sigmoid": (_sig, lambda x: _sig(x) * (1 - _sig(x))),
    "tanh": (math.tanh, lambda x: 1.0 / math.cosh(x) ** 2 if abs(x) < 300 else 0.0),
    "relu": (lambda x: max(x, 0.0), lambda x: float(x > 0)),
    "leaky_relu": (lambda x: x if x > 0 else 0.01 * x, lambda x: 1.0 if x > 0 else 0.01),
    "elu": (lambda x: x if x > 0 else math.expm1(x), lambda x: 1.0 if x > 0 else math.exp(x)),
    "selu": (
        lambda x: _LAM * (x if x > 0 else _ALPHA * math.expm1(x)),
        lambda x: _LAM * (1.0 if x > 0 else _ALPHA * math.exp(x)),
    ),
    "gelu": (
        lambda x: x * _ndtr(x),
        lambda x: _ndtr(x) + x * math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi),
    ),
    "silu": (lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * (1 - _sig(x)))),
    "softplus": (lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x))), _sig),
}


def test_references_cover_the_registry():
    assert set(REF) == set(ALL)


def _ref_expect(f, q):
    """E[f(sqrt(q) z)] by scipy.integrate.quad, split at the kink 0."""
    s = math.sqrt(q)

    def g(z):
        return f(s * z) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    pieces = [(-40.0, -1.0), (-1.0, 0.0), (0.0, 1.0), (1.0, 40.0)]
    return sum(integrate.quad(g, a, b, epsabs=1e-15, epsrel=1e-13, limit=400)[0] for a, b in pieces)


def _ref_q_star_chi1(name, sw2, sb2):
    fn, grad = REF[name]

    def h(q):
        return sw2 * _ref_expect(lambda x: fn(x) ** 2, q) + sb2 - q

    q = optimize.brentq(h, 1e-8, 50.0, xtol=1e-15, rtol=1e-14)
    return q, sw2 * _ref_expect(lambda x: grad(x) ** 2, q)


# --- quadrature ---------------------------------------------------------------------------------


def test_gaussian_rule_is_symmetric_normalised_and_exact_for_moments():
    z, w = meanfield.gaussian_rule(16)
    assert z.shape == w.shape == (32,)
    np.testing.assert_allclose(z, -z[::-1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-14)
    assert np.all(z != 0) and np.all(w > 0)
    # E[z^2k] = (2k-1)!!; E[|z|^k] on each half-line too (exact below degree 32 per half-line).
    for k in range(1, 12):
        np.testing.assert_allclose(
            (w * z ** (2 * k)).sum(), math.prod(range(1, 2 * k, 2)), rtol=1e-12
        )
    for k in range(1, 20, 3):
        exact = 2 ** (k / 2) * math.gamma((k + 1) / 2) / math.sqrt(math.pi)
        np.testing.assert_allclose((w * np.abs(z) ** k).sum(), exact, rtol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_expectations_match_adaptive_quadrature(name, x64):
    act = activations.get(name)
    fn, grad = REF[name]
    for q in (0.1, 1.0, 4.0):
        got = meanfield.gaussian_expectation(lambda u: act.fn(u) ** 2, jnp.float64(q))
        ref = _ref_expect(lambda x: fn(x) ** 2, q)
        np.testing.assert_allclose(got, ref, rtol=1e-10, err_msg=f"E[phi^2] {name} q={q}")
        got = meanfield.gaussian_expectation(lambda u: act.grad(u) ** 2, jnp.float64(q))
        ref = _ref_expect(lambda x: grad(x) ** 2, q)
        np.testing.assert_allclose(got, ref, rtol=1e-10, err_msg=f"E[phi'^2] {name} q={q}")


def _ref_expect_2d(f, g, q, c):
    s, sc = math.sqrt(q), math.sqrt(1 - c * c)

    def inner(z1):
        def h(z2):
            return f(s * z1) * g(s * (c * z1 + sc * z2)) * math.exp(-0.5 * z2 * z2)

        k = -c * z1 / sc  # the kink line u2 = 0
        val = sum(
            integrate.quad(h, a, b, epsabs=1e-14, epsrel=1e-12, limit=200)[0]
            for a, b in ((-12.0, k), (k, 12.0))
        )
        return val * math.exp(-0.5 * z1 * z1) / (2 * math.pi)

    return sum(
        integrate.quad(inner, a, b, epsabs=1e-13, epsrel=1e-11, limit=200)[0]
        for a, b in ((-12.0, 0.0), (0.0, 12.0))
    )


@pytest.mark.parametrize("name", ["tanh", "elu"])
def test_c_map_matches_2d_adaptive_quadrature(name, x64):
    fn = REF[name][0]
    sw2, sb2 = 1.7, 0.1
    c = jnp.array([0.3, -0.6, 0.95])
    q = jnp.array([1.0, 2.5, 2.0])
    got = meanfield.c_map(c, q, sw2, sb2, name)
    for i in range(3):
        qi, ci = float(q[i]), float(c[i])
        e_pp = _ref_expect_2d(fn, fn, qi, ci)
        q_next = sw2 * _ref_expect(lambda x: fn(x) ** 2, qi) + sb2
        ref = (sw2 * e_pp + sb2) / q_next
        # the default polar rule (order_2d=6): measured error below 5e-9 at these q
        np.testing.assert_allclose(got[i], ref, rtol=1e-8, err_msg=f"{name} q={qi} c={ci}")
    # identical inputs stay identical
    np.testing.assert_allclose(meanfield.c_map(jnp.ones(3), q, sw2, sb2, name), 1.0, rtol=1e-15)


def test_relu_closed_forms(x64):
    sw2 = jnp.array([0.5, 1.0, 1.5, 1.9])
    sb2 = jnp.array([0.3, 0.1, 0.05, 0.01])
    np.testing.assert_allclose(
        meanfield.q_star(sw2, sb2, "relu"), meanfield.relu_q_star(sw2, sb2), rtol=1e-12
    )
    np.testing.assert_allclose(meanfield.chi1(sw2, sb2, "relu"), sw2 / 2, rtol=1e-12)
    c = jnp.array([-0.9, -0.2, 0.4, 0.99])
    np.testing.assert_allclose(
        meanfield.c_map(c, 1.3, sw2, sb2, "relu"),
        meanfield.relu_c_map(c, 1.3, sw2, sb2),
        rtol=1e-12,
    )
    leaky = activations.get("leaky_relu", negative_slope=0.2)
    np.testing.assert_allclose(
        meanfield.c_map(c, 1.3, sw2, sb2, leaky),
        meanfield.relu_c_map(c, 1.3, sw2, sb2, negative_slope=0.2),
        rtol=1e-12,
    )
    # Above the critical point the length grows without bound: q* = inf, and chi1 = sw2/2 as at
    # any q (it used to be NaN); the depth scales are inf, c* = 1 (correlations approach 1).
    above = jnp.array([2.5, 3.0, 2.1, 4.0])
    assert np.all(meanfield.q_star(above, sb2, "relu") == np.inf)
    np.testing.assert_allclose(meanfield.chi1(above, sb2, "relu"), above / 2, rtol=1e-12)
    np.testing.assert_allclose(meanfield.chi1(above, 0.0, "relu"), above / 2, rtol=1e-12)
    pd = meanfield.phase_diagram(above, jnp.array([0.0, 0.1]), "relu")
    np.testing.assert_allclose(pd.chi1, np.broadcast_to(above / 2, (2, 4)), rtol=1e-12)
    assert np.all(pd.q_star == np.inf) and np.all(pd.c_star == 1.0)
    assert np.all(pd.xi_c == np.inf) and np.all(pd.xi_q == np.inf)
    # other unbounded activations: the q -> inf limit sw2 (phi'(+inf)^2 + phi'(-inf)^2) / 2
    for name, slope2 in (("elu", 0.5), ("gelu", 0.5), ("softplus", 0.5),
                         ("selu", activations.SELU_LAMBDA**2 / 2)):  # fmt: skip
        np.testing.assert_allclose(meanfield.chi1(4.0, 0.1, name), 4.0 * slope2, rtol=1e-12)


# --- fixed points and chi1 against independent references ---------------------------------------

#: Three points per activation in the ordered phase (chi1 < 1), sb2 > 0, a unique finite q*.
POINTS = {
    "linear": ((0.5, 0.1), (0.9, 0.3), (0.2, 1.0)),
    "sigmoid": ((4.0, 0.1), (20.0, 0.5), (1.0, 1.0)),
    "tanh": ((1.5, 0.05), (1.2, 0.1), (0.8, 0.3)),
    "relu": ((0.5, 0.3), (1.0, 0.1), (1.9, 0.01)),
    "leaky_relu": ((1.5, 0.1), (0.5, 0.5), (1.9, 0.2)),
    "elu": ((1.2, 0.1), (0.5, 0.5), (1.5, 0.05)),
    "selu": ((0.9, 0.05), (0.5, 0.5), (0.3, 1.0)),
    "gelu": ((1.5, 0.2), (0.5, 0.5), (1.8, 0.05)),
    "silu": ((2.0, 0.1), (0.5, 0.5), (1.0, 1.0)),
    "softplus": ((1.0, 0.1), (0.5, 0.5), (1.5, 0.2)),
}


@pytest.mark.parametrize("name", ALL)
def test_q_star_and_chi1_match_adaptive_quadrature(name, x64):
    sw2 = jnp.array([p[0] for p in POINTS[name]])
    sb2 = jnp.array([p[1] for p in POINTS[name]])
    q = meanfield.q_star(sw2, sb2, name)
    chi = meanfield.chi1(sw2, sb2, name)
    for i, (s, b) in enumerate(POINTS[name]):
        q_ref, chi_ref = _ref_q_star_chi1(name, s, b)
        np.testing.assert_allclose(q[i], q_ref, rtol=1e-6, err_msg=f"q* {name} {s} {b}")
        np.testing.assert_allclose(chi[i], chi_ref, rtol=1e-6, err_msg=f"chi1 {name} {s} {b}")
    assert np.all(chi < 1)  # the points are in the ordered phase


@pytest.mark.parametrize("name", ["tanh", "relu", "elu"])
def test_depth_scales_in_the_ordered_phase(name, x64):
    # xi_c = -1/log(chi1) there (c* = 1); xi_q finite and positive. The 2-D code is shared by
    # every activation; these three cover smooth, kinked and unbounded ones.
    sw2 = jnp.array([p[0] for p in POINTS[name]])
    sb2 = jnp.array([p[1] for p in POINTS[name]])
    chi = np.array([_ref_q_star_chi1(name, s, b)[1] for s, b in POINTS[name]])
    xi_q, xi_c = meanfield.depth_scales(sw2, sb2, name)
    assert np.all(np.isfinite(xi_q) & (xi_q > 0))
    np.testing.assert_allclose(xi_c, -1.0 / np.log(chi), rtol=1e-6)
    if name == "relu":  # chi_q = chi1 for relu: xi_q = xi_c
        np.testing.assert_allclose(xi_q, xi_c, rtol=1e-10)


@x64_given
@given(sw2=st.floats(0.1, 4.0), sb2=st.floats(0.01, 1.0))
def test_q_star_is_a_fixed_point_tanh(x64, sw2, sb2):
    q = meanfield.q_star(jnp.float64(sw2), sb2, "tanh")
    assert q > 0
    np.testing.assert_allclose(meanfield.q_map(q, sw2, sb2, "tanh"), q, rtol=1e-12)


def test_vmap_agrees_with_broadcasting():
    sw2 = jnp.array([0.5, 1.5, 3.0])
    sb2 = jnp.array([0.05, 0.1, 0.2])
    direct = meanfield.q_star(sw2, sb2, "tanh")
    assert direct.dtype == jnp.float32
    vm = jax.vmap(lambda s, b: meanfield.q_star(s, b, "tanh"))(sw2, sb2)
    np.testing.assert_allclose(vm, direct, rtol=1e-6)
    # broadcasting: a column of sw2 against a row of sb2
    grid = meanfield.q_star(sw2[:, None], sb2[None, :], "tanh")
    assert grid.shape == (3, 3)
    np.testing.assert_allclose(jnp.diag(grid), direct, rtol=1e-6)


# --- the critical line --------------------------------------------------------------------------

SB2_LINE = np.array([0.0, 0.02, 0.05, 0.3])  # float64 under x64


def test_critical_points_tanh_and_relu(x64):
    crit = meanfield.critical_sw2(SB2_LINE, "tanh")
    # chi1 of tanh touches 1 quadratically on the chaotic side at sb2 = 0
    # (chi1 - 1 ~ (sw2 - 1)^2 / 3), so there the crossing is resolved to ~sqrt(eps).
    np.testing.assert_allclose(crit[0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(meanfield.chi1(crit[1:], SB2_LINE[1:], "tanh"), 1.0, rtol=1e-10)
    assert np.all(np.diff(crit) > 0)  # the line rises with sb2
    np.testing.assert_allclose(meanfield.critical_sw2(SB2_LINE, "relu"), 2.0, rtol=1e-10)
    leaky = activations.get("leaky_relu", negative_slope=0.3)
    np.testing.assert_allclose(meanfield.critical_sw2(SB2_LINE, leaky), 2 / 1.09, rtol=1e-10)


def test_critical_point_from_q_star(x64):
    q = jnp.array([1e-2, 0.1, 1.0])
    sw2, sb2 = meanfield.critical_point(q, "tanh")
    assert np.all(sb2 > 0)
    np.testing.assert_allclose(meanfield.q_star(sw2, sb2, "tanh"), q, rtol=1e-8)
    np.testing.assert_allclose(meanfield.chi1(sw2, sb2, "tanh"), 1.0, rtol=1e-10)
    sw2, sb2 = meanfield.critical_point(q, "relu")
    np.testing.assert_allclose(sw2, 2.0, rtol=1e-12)
    np.testing.assert_allclose(sb2, 0.0, atol=1e-12)


def test_chi1_below_and_above_the_critical_line_on_a_grid():
    # float32, one vectorised call over a 5 x 12 grid
    pd = meanfield.phase_diagram(
        jnp.linspace(0.5, 4.0, 12), jnp.linspace(0.0, 0.4, 5), "tanh", order_2d=3
    )
    assert pd.chi1.shape == pd.xi_c.shape == pd.c_star.shape == pd.q_star.shape == (5, 12)
    crit = meanfield.critical_sw2(pd.sb2, "tanh")[:, None]
    sw2 = pd.sw2[None, :]
    below, above = sw2 < crit * 0.99, sw2 > crit * 1.01
    assert below.sum() > 10 and above.sum() > 10
    assert np.all(np.where(below, pd.chi1 < 1, True))
    assert np.all(np.where(above, pd.chi1 > 1, True))
    # ordered phase: c* = 1 and chi_c = chi1; chaotic phase: c* < 1 and chi_c < 1
    assert np.all(np.where(below, (pd.c_star == 1) & (pd.chi_c == pd.chi1), True))
    assert np.all(np.where(above, (pd.c_star < 1) & (pd.chi_c < 1), True))
    assert np.all(np.isfinite(pd.xi_c) & (pd.xi_c > 0))
    assert np.all(np.isfinite(pd.xi_q) & (pd.xi_q > 0))
    # the grid agrees with pointwise calls
    np.testing.assert_allclose(pd.chi1[2], meanfield.chi1(pd.sw2, pd.sb2[2], "tanh"), rtol=1e-5)


def test_xi_c_diverges_at_the_critical_line(x64):
    crit = meanfield.critical_sw2(SB2_LINE, "tanh")[2]  # sb2 = 0.05
    eps = jnp.array([1e-1, 1e-2, 1e-3, 1e-4])
    sb2 = jnp.full(4, 0.05)
    below = meanfield.depth_scales(crit * (1 - eps), sb2, "tanh").xi_c
    above = meanfield.depth_scales(crit * (1 + eps), sb2, "tanh").xi_c
    for xi in (below, above):
        assert np.all(np.diff(xi) > 0), xi  # grows as the line is approached
        assert xi[0] < 50 and xi[-1] > 1e3, xi
    # below the line xi_c = -1/log(chi1) ~ 1/(1 - chi1): the divergence is a pole
    chi_below = meanfield.chi1(crit * (1 - eps), sb2, "tanh")
    np.testing.assert_allclose(below, -1 / np.log(chi_below), rtol=1e-12)
    np.testing.assert_allclose(below[-1] * (1 - chi_below[-1]), 1.0, rtol=1e-3)


# --- derivatives --------------------------------------------------------------------------------


def _fd(f, x, h=1e-6):
    return (f(x + h) - f(x - h)) / (2 * h)


def test_derivatives_are_implicit_function_derivatives(x64):
    sb2 = 0.05
    fns = {
        "q_star": lambda s: meanfield.q_star(s, sb2, "tanh"),
        "xi_c": lambda s: meanfield.depth_scales(s, sb2, "tanh").xi_c,  # chaotic at 2.5: via c*
    }
    for name, f in fns.items():
        np.testing.assert_allclose(
            jax.grad(f)(jnp.float64(2.5)), _fd(f, 2.5), rtol=1e-6, err_msg=name
        )
    crit = lambda b: meanfield.critical_sw2(b, "tanh")
    np.testing.assert_allclose(jax.grad(crit)(jnp.float64(0.1)), _fd(crit, 0.1), rtol=1e-6)
    # d q*/d sb2 for relu: 1 / (1 - sw2/2)
    g = jax.grad(lambda b: meanfield.q_star(1.5, b, "relu"))(jnp.float64(0.1))
    np.testing.assert_allclose(g, 1 / (1 - 0.75), rtol=1e-12)


# --- theory against sampled networks ------------------------------------------------------------


DEPTH = 12


def _measure(sw2, sb2, q0, n_nets=4, width=1000, c0=0.5):
    """Per-layer statistics of ``n_nets`` sampled nets, averaged (one compile for all calls)."""
    runs = [
        meanfield.measure_propagation(
            jax.random.key(seed), sw2, sb2, "tanh", width=width, depth=DEPTH, q0=q0, c0=c0
        )
        for seed in range(n_nets)
    ]
    return jax.tree.map(lambda *a: np.mean(np.stack(a), axis=0), *runs)


@pytest.mark.parametrize("sw2,sb2", [(0.8, 0.1), (3.0, 0.3)])
def test_wide_tanh_nets_follow_the_q_and_c_maps(sw2, sb2):
    th = meanfield.propagate(sw2, sb2, "tanh", DEPTH, q0=2.0, c0=0.5)
    ms = _measure(sw2, sb2, 2.0)
    # 4 nets x 1000 units: sampling error ~ sqrt(2/4000) ~ 2% per layer, so each layer within
    # 10% and on average over the layers within 3%.
    np.testing.assert_allclose(ms.q, th.q, rtol=0.1)
    assert np.mean(np.abs(np.log(ms.q / th.q))) < 0.03
    np.testing.assert_allclose(ms.c, th.c, atol=0.03)


@pytest.mark.parametrize("sw2,sb2", [(0.7, 0.1), (3.0, 0.05)])
def test_gradient_variance_changes_by_chi1_per_layer(sw2, sb2):
    q = float(meanfield.q_star(sw2, sb2, "tanh"))
    chi = float(meanfield.chi1(sw2, sb2, "tanh"))
    q0 = (q - sb2) / sw2  # inputs at q* from the first layer on
    ms = _measure(sw2, sb2, q0)
    # log grad_var_l = const + (L - l) log chi1: least-squares slope over the layers.
    layers = np.arange(1, DEPTH + 1)
    slope = np.polyfit(layers, np.log(ms.grad_var), 1)[0]
    assert (chi < 1) == (slope > 0)  # vanishing towards the input iff chi1 < 1
    np.testing.assert_allclose(math.exp(-slope), chi, rtol=0.03)
    th = meanfield.propagate(sw2, sb2, "tanh", DEPTH, q0=q0)
    np.testing.assert_allclose(th.grad_var, chi ** (DEPTH - layers), rtol=1e-4)
    # the output layer's gradient variance is E[g^2] = 1 (4 x 1000 samples: ~2%); the profile
    # itself compounds per-layer noise (~2.5% per layer per net), so the slope is the test
    np.testing.assert_allclose(ms.grad_var[-1], 1.0, rtol=0.1)


# --- validation ---------------------------------------------------------------------------------


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"sw2 .* must be finite and >= 0, got -1\.0"):
        meanfield.q_star(-1.0, 0.1, "tanh")
    with pytest.raises(ValueError, match=r"sb2 .* >= 0, got -0\.5"):
        meanfield.chi1(1.0, jnp.array([0.1, -0.5]), "tanh")
    with pytest.raises(ValueError, match=r"sb2 .* >= 0"):
        meanfield.critical_sw2(-0.1, "tanh")
    with pytest.raises(ValueError, match=r"sw2 .* got nan"):
        meanfield.depth_scales(float("nan"), 0.1, "tanh")
    with pytest.raises(ValueError, match=r"q \(a pre-activation variance\) must be finite and > 0"):
        meanfield.q_map(0.0, 1.0, 0.1, "tanh")
    with pytest.raises(ValueError, match=r"q .* > 0, got -2\.0"):
        meanfield.c_map(0.5, -2.0, 1.0, 0.1, "tanh")
    with pytest.raises(ValueError, match=r"c \(a correlation\) must lie in \[-1, 1\], got 1\.5"):
        meanfield.c_map(1.5, 1.0, 1.0, 0.1, "tanh")
    with pytest.raises(ValueError, match=r"q_star .* > 0"):
        meanfield.critical_point(0.0, "tanh")
    with pytest.raises(ValueError, match=r"unknown activation 'tanhh'.*valid names"):
        meanfield.q_star(1.0, 0.1, "tanhh")
    with pytest.raises(TypeError, match="activation must be a name"):
        meanfield.q_star(1.0, 0.1, np.tanh)
    with pytest.raises(ValueError, match="order must be an integer >= 2"):
        meanfield.q_star(1.0, 0.1, "tanh", order=1)
    with pytest.raises(ValueError, match="bracket must be"):
        meanfield.critical_sw2(0.1, "tanh", bracket=(2.0, 1.0))
    with pytest.raises(ValueError, match="weights must be one of"):
        meanfield.measure_propagation(
            jax.random.key(0), 1.0, 0.1, "tanh", width=8, depth=2, weights="uniform"
        )
    with pytest.raises(ValueError, match="width must be an integer >= 1"):
        meanfield.measure_propagation(jax.random.key(0), 1.0, 0.1, "tanh", width=0, depth=2)
    with pytest.raises(ValueError, match="depth must be an integer >= 1"):
        meanfield.propagate(1.0, 0.1, "tanh", 0)
    with pytest.raises(ValueError, match="sw2_grid must be a non-empty 1-D array"):
        meanfield.phase_diagram(jnp.ones((2, 2)), jnp.ones(3), "tanh")
    shifted = activations.Activation(
        name="shifted_relu",
        fn=lambda x: jnp.maximum(x - 1, 0),
        grad=lambda x: (x > 1).astype(jnp.result_type(x)),
        grad2=jnp.zeros_like,
        sup_grad=1.0,
        argsup=2.0,
        kinks=(1.0,),
    )
    with pytest.raises(ValueError, match=r"splits its Gaussian integrals at 0 only.*\(1\.0,\)"):
        meanfield.q_star(1.0, 0.1, shifted)


def test_traced_inputs_skip_value_checks():
    # Under jit a negative variance cannot raise (documented); the function traces and runs.
    out = jax.jit(lambda s: meanfield.q_star(s, 0.1, "tanh"))(-1.0)
    assert out.shape == ()


# --- the edges, against tests/data/meanfield_reference.json -------------------------------------
# Written by tests/make_meanfield_reference.py: scipy.integrate.quad + brentq (and mpmath at 30
# digits for the one-dimensional integrals: the two agree to 4e-16), independent of gradflow.

REFERENCE = json.loads((Path(__file__).parent / "data" / "meanfield_reference.json").read_text())
_FP = REFERENCE["fixed_points"]
_SW2 = np.array([r["sw2"] for r in _FP])  # 1e-8 ... 1e6, sb2 = 0.05


@pytest.mark.parametrize("x64_on", [True, False], ids=["float64", "float32"])
def test_tanh_fixed_points_and_chi1_from_1e_8_to_1e6_match_the_reference(x64_on):
    """q* and chi1 of tanh (sb2 = 0.05) at sw2 = 1e-8 ... 1e6: the Gaussian rule follows the
    integrand's scale 1/sqrt(q), so sech^4(sqrt(q) z) is resolved at q ~ 1e6 (it used to give
    NaN at 1e4, inf at 1e5 and 0.060 instead of 532 at 1e6). Measured: float64 q* 5e-13, chi1
    5e-9 relative; float32 2e-7; the bar is 1e-4."""
    with jax.enable_x64(x64_on):
        dtype = jnp.float64 if x64_on else jnp.float32
        tol = 1e-8 if x64_on else 1e-6
        sw2 = jnp.asarray(_SW2, dtype)
        np.testing.assert_allclose(
            meanfield.q_star(sw2, dtype(0.05), "tanh"), [r["q_star"] for r in _FP], rtol=tol
        )
        np.testing.assert_allclose(
            meanfield.chi1(sw2, dtype(0.05), "tanh"), [r["chi1"] for r in _FP], rtol=tol
        )
        for r in REFERENCE["chi1_at_q"]:
            got = meanfield.chi1(dtype(r["sw2"]), dtype(0.05), "tanh", q=dtype(r["q"]))
            np.testing.assert_allclose(got, r["chi1"], rtol=tol)
        np.testing.assert_allclose(
            meanfield.critical_sw2(dtype(0.05), "tanh"), REFERENCE["critical_sw2"], rtol=tol
        )


def test_large_sw2_propagation_and_phase_diagram_are_finite_and_right(x64):
    """At sw2 = 1e6 gradients explode by chi1 ~ 532 per layer (a measured width-256 net explodes
    too; the old rule said they vanish); phase-diagram columns at 1e4 are finite."""
    r = next(r for r in _FP if r["sw2"] == 1e6)
    q0 = (r["q_star"] - 0.05) / 1e6  # inputs at q* from the first layer on
    g = meanfield.propagate(1e6, 0.05, "tanh", 6, q0=q0).grad_var
    np.testing.assert_allclose(g[:-1] / g[1:], r["chi1"], rtol=1e-7)
    pd = meanfield.phase_diagram(jnp.array([1e2, 1e4, 1e6]), jnp.array([0.05]), "tanh")
    for field in pd._fields[2:]:
        assert np.all(np.isfinite(getattr(pd, field))), field
    want = [next(x["chi1"] for x in _FP if x["sw2"] == s) for s in (1e2, 1e4, 1e6)]
    np.testing.assert_allclose(pd.chi1[0], want, rtol=1e-8)
    assert np.all(pd.chi_c < 1) and np.all(pd.c_star < 1)  # chaotic: c* < 1, chi_c < 1


def test_c_map_at_large_q_matches_the_reference(x64):
    """The polar rule is graded towards the kink rays and towards r = 0, so the c-map holds at
    q = 1e4 (the old rule erred by 8%). Measured: 1 - c_{l+1} within 1.4e-5 (q = 1e4, c =
    0.9999), 3e-9 at q = 1."""
    cm = REFERENCE["c_map"]
    for r in cm["rows"]:
        got = 1 - meanfield.c_map(r["c"], r["q"], cm["sw2"], cm["sb2"], "tanh")
        tol = 1e-8 if r["q"] <= 1 else 5e-5
        np.testing.assert_allclose(got, r["gap"], rtol=tol, err_msg=f"q={r['q']} c={r['c']}")


def test_depth_scale_near_the_critical_line_float64_and_float32():
    """xi_c just above the critical line (chaotic side) agrees with the reference in float64
    (4e-5 at 1e-4 from the line) and in float32 to 1% wherever float32 resolves the distance to
    the line (it used to give 19065 for 26643 at 1e-4); closer than float32 can resolve it is
    inf with a warning, never a wrong finite number."""
    for r in REFERENCE["near_critical"]:
        with jax.enable_x64(True):
            xi = np.asarray(meanfield.depth_scales(jnp.float64(r["sw2"]), 0.05, "tanh").xi_c)
            c = np.asarray(meanfield.c_star(jnp.float64(r["sw2"]), 0.05, "tanh"))
        np.testing.assert_allclose(xi, r["xi_c"], rtol=1e-4)
        np.testing.assert_allclose(1 - c, r["one_minus_c_star"], rtol=1e-4)
        xi32 = meanfield.depth_scales(jnp.float32(r["sw2"]), jnp.float32(0.05), "tanh").xi_c
        assert xi32.dtype == jnp.float32
        np.testing.assert_allclose(xi32, r["xi_c"], rtol=1e-2)
    crit = REFERENCE["critical_sw2"]
    sw2 = jnp.asarray(crit * (1 + np.array([1e-6, -1e-6])), jnp.float32)
    with pytest.warns(RuntimeWarning, match=r"2 point\(s\) lie within float32 rounding of the"):
        ds = meanfield.depth_scales(sw2, jnp.float32(0.05), "tanh")
    assert np.all(ds.xi_c == np.inf)
    with pytest.warns(RuntimeWarning, match="within float32 rounding"):
        assert np.all(meanfield.c_star(sw2, jnp.float32(0.05), "tanh") == 1.0)


def test_sizes_are_bounded():
    with pytest.raises(ValueError, match=r"order must be <= 256, got 5000"):
        meanfield.gaussian_rule(5000)  # used to run for minutes
    with pytest.raises(ValueError, match=r"order must be <= 64, got 1000"):
        meanfield.q_star(1.0, 0.1, "tanh", order=1000)
