"""Tests of gradflow.analytic: closed forms against autodiff and float64 references, bounds,
seed constructions, and input validation.

Every random quantity comes from a hypothesis-drawn seed; shapes are fixed per test so that the
jitted functions compile once per (activation, dtype) and not per example.
"""

from __future__ import annotations

import functools
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import special

from gradflow import activations, analytic

ALL = activations.names(builtin_only=True)
SEEDS = st.integers(0, 2**32 - 1)
BATCH = 8
# A depth-64 chain holds every depth 1..64: dC/db_j is the first-layer gradient of the chain of
# its last L - j + 1 layers with input a_{j-1}. One depth: one compile per activation.
DEPTHS = (64,)
# The x64 fixture only switches float64 on around the test; sharing it between examples is intended.
x64_given = settings(
    suppress_health_check=[
        *settings.default.suppress_health_check,
        HealthCheck.function_scoped_fixture,
    ]
)


def _chain(seed, depth, *, w_scale=1.0, batch=BATCH, dtype=np.float64):
    """A batch of random chains: w ~ N(0, w_scale^2), b, x ~ N(0, 1), dC/da_L ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    w = w_scale * rng.normal(size=(batch, depth))
    b = rng.normal(size=(batch, depth))
    x = rng.normal(size=batch)
    g = rng.normal(size=batch)
    return tuple(np.asarray(v, dtype) for v in (w, b, x, g))


@jax.custom_jvp
def _expm1(x):
    return jnp.expm1(x)


@_expm1.defjvp
def _expm1_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.expm1(x), jnp.exp(x) * t


def _reference_fn(act):
    """``act.fn`` for autodiff references, except elu/selu with an accurate derivative of expm1.

    JAX differentiates ``expm1`` as ``expm1(x) + 1``, which keeps only an absolute precision eps
    of e^x (relative error eps e^{-x}: 3e-10 at x = -15, and 0 for x < -37 in float64); writing
    exp(x) - 1 instead would lose the forward value near 0. The closed form ``alpha e^x`` is exact;
    this reference differentiates expm1 as exp.
    """
    if act.name not in ("elu", "selu"):
        return act.fn
    if act.name == "selu":
        scale, alpha = activations.SELU_LAMBDA, activations.SELU_ALPHA
    else:
        scale, alpha = 1.0, act.kwargs["alpha"]
    return lambda x: scale * jnp.where(x > 0, x, alpha * _expm1(jnp.minimum(x, 0)))


def _autodiff_grads(w, b, x, g, act):
    """Reference: jax.grad of C = g * a_L through an independent scan forward pass, per chain."""
    fn = _reference_fn(act)

    def cost(w, b, x, g):
        def step(a, wb):
            return fn(wb[0] * a + wb[1]), None

        a_last, _ = jax.lax.scan(step, x, (w, b))
        return g * a_last

    return jax.vmap(jax.grad(cost, argnums=(0, 1, 2)))(w, b, x, g)


# --- one compiled suite per activation, shared by the property tests below -------------------


@functools.partial(jax.jit, static_argnums=1)
def _suite(chains, name):
    """Closed form, autodiff, log domain and bounds for chains of depths DEPTHS (float64)."""
    act = activations.get(name)
    out = []
    for w, b, x, g in chains:
        out.append(
            {
                "z": analytic.chain_forward(w, b, x, act).z,
                "closed": analytic.chain_grads(w, b, x, g, act),
                "autodiff": _autodiff_grads(w, b, x, g, act),
                "log": analytic.chain_log_grads(w, b, x, g, act),
                "bound": analytic.gradient_bound(w, act, per_layer=True),
                "log_bound": analytic.log_gradient_bound(w, act, per_layer=True),
            }
        )
    return out


def _run_suite(name, seed, w_scale):
    chains = [_chain(seed + d, d, w_scale=w_scale) for d in DEPTHS]
    return chains, _suite(chains, name)


@pytest.mark.parametrize("name", ALL)
@given(seed=SEEDS, w_scale=st.floats(0.1, 3.0))
@x64_given
def test_chain_grads_match_autodiff_every_activation(x64, name, seed, w_scale):
    # float64, every depth 1..64 (see DEPTHS). The closed form and autodiff multiply the same
    # factors in a different order (relative error ~ 2 L eps), and each evaluates phi'(z_k) with
    # an absolute error of a few eps (e.g. 1 - tanh^2 in saturation), a relative error of
    # ~eps / |phi'(z_k)|. The tolerance of dC/db_j is the sum of these over k >= j.
    chains, results = _run_suite(name, seed, w_scale)
    for (w, *_), res in zip(chains, results):
        got, (ref_w, ref_b, ref_x) = res["closed"], res["autodiff"]
        chex.assert_shape([got.bias, got.weight], w.shape)
        chex.assert_shape(got.input, w.shape[:-1])
        dphi = np.abs(np.asarray(activations.get(name).grad(res["z"])))
        every, first = np.arange(w.shape[-1]), np.array([0])  # dC/dx: the layers from j = 1
        for value, ref, layers in (
            (got.bias, ref_b, every),
            (got.weight, ref_w, every),
            (got.input, np.asarray(ref_x)[:, None], first),
        ):
            ref = np.asarray(ref)
            err = np.abs(np.asarray(value).reshape(ref.shape) - ref)
            # atol: XLA on CPU flushes subnormals, so values near 1e-308 may be 0 on one side
            tol = _product_tolerance(ref, dphi, layers) + 1e-290
            assert np.all(err <= tol), np.max(err - tol)


def _product_tolerance(ref, dphi, layers):
    """Absolute error bound of ``ref[:, i]``, a product of the factors phi'(z_k), k >= j =
    ``layers[i]``, and the weights:
    ``(1e-12 + 8 L eps) |ref_j| + 8 eps sum_{k >= j, phi'_k != 0} |ref_j| / phi'_k``.

    Each phi'(z_k) carries an absolute error of a few eps, so the product an error of
    ``|ref_j| eps / phi'_k`` per factor. ``|ref_j| / phi'_k`` is the product of the other factors:
    computed as that quotient it stays finite where phi'_k is subnormal, whereas ``1 / phi'_k``
    overflows there (GPUs keep float64 subnormals; XLA's CPU flushes them to zero). A quotient
    that still overflows is an infinite bound, which is what the model says there.
    """
    eps = np.finfo(np.float64).eps
    depth = dphi.shape[-1]
    k = np.arange(depth)
    use = (k[None, :] >= layers[:, None])[None] & (dphi[:, None, :] > 0)  # (batch, J, L)
    quotient = np.zeros(use.shape)
    with np.errstate(over="ignore"):
        np.divide(np.abs(ref)[:, :, None], dphi[:, None, :], out=quotient, where=use)
        spread = quotient.sum(axis=-1)
    return (1e-12 + 8 * depth * eps) * np.abs(ref) + 8 * eps * spread


@pytest.mark.parametrize("name", ALL)
@given(seed=SEEDS, w_scale=st.floats(0.1, 3.0))
@x64_given
def test_log_grads_match_float64_reference_every_activation(x64, name, seed, w_scale):
    # sign * exp(log_abs) == the float64 product phi'(z_j) prod_{k>j} w_k phi'(z_k) dC/da_L with
    # phi' from independent SciPy formulas (_grad64), wherever that product is a normal float64;
    # where it is below 1e-280 (underflow, or exactly 0) the log domain agrees.
    chains, results = _run_suite(name, seed, w_scale)
    tiny = 1e-280
    for (w, _, _, g), res in zip(chains, results):
        dphi = _grad64(name, res["z"])
        suffix = np.cumprod((w * dphi)[:, ::-1], axis=-1)[:, ::-1]
        ref = dphi * np.concatenate([suffix[:, 1:], np.ones((len(w), 1))], axis=-1) * g[:, None]
        sign, log_abs = (np.asarray(v) for v in res["log"])
        big = np.abs(ref) > tiny
        np.testing.assert_array_equal(sign[big], np.sign(ref[big]))
        np.testing.assert_allclose(log_abs[big], np.log(np.abs(ref[big])), rtol=1e-12, atol=1e-10)
        assert np.all(log_abs[~big] <= math.log(tiny) + 1e-6)
        assert np.all((sign == 0) == np.isneginf(log_abs))


@pytest.mark.parametrize("name", ALL)
@given(seed=SEEDS, w_scale=st.floats(0.1, 10.0))
@x64_given
def test_gradient_bound_holds_every_draw(x64, name, seed, w_scale):
    # |dC/db_j| <= sup|phi'|^(L-j+1) prod_{k>j} |w_k| |dC/da_L| for every layer j; for the
    # sigmoid and j = 1 this is the seed's 0.25^L prod_{k>=2} |w_k| |dC/da_L|.
    chains, results = _run_suite(name, seed, w_scale)
    sup = activations.get(name).sup_grad
    for (w, _, _, g), res in zip(chains, results):
        bias, bound = np.asarray(res["closed"].bias), np.asarray(res["bound"])
        assert np.all(np.abs(bias) <= bound * np.abs(g)[:, None] * (1 + 1e-12))
        # the log bound is the log of the bound (error ~ L eps, absolute in the log)
        np.testing.assert_allclose(np.log(bound), res["log_bound"], rtol=1e-12, atol=1e-12)
        depth = w.shape[-1]
        np.testing.assert_allclose(
            bound[:, 0], sup**depth * np.prod(np.abs(w[:, 1:]), axis=-1), rtol=1e-12
        )
    np.testing.assert_allclose(analytic.gradient_bound(w, name), bound[:, 0], rtol=1e-15)


@pytest.mark.parametrize("name", ["sigmoid", "relu"])
def test_depth_one_chain(x64, name):
    # L = 1: empty suffix product, dC/db_1 = phi'(w x + b) dC/da_1.
    w, b, x, g = _chain(11, 1)
    act = activations.get(name)
    z = w[:, 0] * x + b[:, 0]
    grads = analytic.chain_grads(w, b, x, g, name)
    np.testing.assert_allclose(grads.bias[:, 0], act.grad(z) * g, rtol=1e-15)
    np.testing.assert_allclose(grads.weight[:, 0], x * act.grad(z) * g, rtol=1e-15)
    chex.assert_trees_all_close(_autodiff_grads(w, b, x, g, act), grads[1::-1] + grads[2:])
    sign, log_abs = analytic.chain_log_grads(w, b, x, g, name)
    np.testing.assert_array_equal(sign[:, 0], np.sign(act.grad(z) * g))
    np.testing.assert_allclose(np.exp(log_abs[:, 0]), np.abs(act.grad(z) * g), rtol=1e-14)
    np.testing.assert_allclose(analytic.gradient_bound(w, name), act.sup_grad)


def test_chain_forward_matches_definition(x64):
    w, b, x, _ = _chain(0, 5)
    z, a = analytic.chain_forward(w, b, x, "tanh")
    a_prev = x
    for j in range(5):
        # (a fused multiply-add may round w a + b once instead of twice)
        np.testing.assert_allclose(z[:, j], w[:, j] * a_prev + b[:, j], rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(a[:, j], np.tanh(z[:, j]), rtol=1e-14)
        a_prev = a[:, j]


# --- log domain ---------------------------------------------------------------------------------


def _grad64(name, z):
    """phi'(z) in float64 by independent NumPy/SciPy formulas, accurate for |z| <= 30."""
    z = np.asarray(z, np.float64)
    if name == "linear":
        return np.ones_like(z)
    if name == "sigmoid":
        return special.expit(z) * special.expit(-z)
    if name == "tanh":
        return 4.0 / (np.exp(z) + np.exp(-z)) ** 2
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z > 0, 1.0, 0.01)
    if name in ("elu", "selu"):
        scale, alpha = (
            (activations.SELU_LAMBDA, activations.SELU_ALPHA) if name == "selu" else (1.0, 1.0)
        )
        return scale * np.where(z > 0, 1.0, alpha * np.exp(np.minimum(z, 0)))
    if name == "gelu":
        return special.ndtr(z) + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    if name == "silu":
        return special.expit(z) * (1 + z * special.expit(-z))
    if name == "softplus":
        return special.expit(z)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ALL)
@given(z=st.lists(st.floats(-30, 30, width=32, allow_subnormal=False), min_size=32, max_size=32))
def test_signed_log_abs_grad_float32_matches_float64(name, z):
    # float32 log|phi'| stays accurate where phi' itself underflows in float32 (sigmoid at
    # z = -30 is 9e-14, gelu's pdf at -30 is 1e-196); reference: float64 SciPy formulas.
    z = np.asarray(z, np.float32)
    sign, log_abs = analytic.signed_log_abs_grad(z, name)
    assert sign.dtype == log_abs.dtype == jnp.float32
    ref = _grad64(name, z)
    np.testing.assert_array_equal(np.asarray(sign), np.sign(ref))
    nz = ref != 0
    assert np.all(np.isneginf(np.asarray(log_abs)[~nz]))
    # Near a zero of phi' (silu at -2.40, gelu at -0.75) float32 cancellation costs accuracy in
    # proportion to the condition number |phi''/phi'| / |phi'|; elsewhere it is ~1e-6 relative.
    # (No subnormal z: XLA on CPU flushes them to zero, so relu'(1e-39) would read as relu'(0).)
    err = np.abs(np.asarray(log_abs)[nz] - np.log(np.abs(ref[nz])))
    tol = 2e-6 * np.maximum(1.0, np.abs(np.log(np.abs(ref[nz])))) + 4e-7 / np.abs(ref[nz])
    assert np.all(err <= tol), (z[nz][err > tol], err[err > tol])


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softplus", "elu", "selu", "gelu", "silu"])
def test_signed_log_abs_grad_extreme_tails_float32(x64, name):
    # In float32 phi'(z) underflows for |z| >~ 90, the log does not: it matches the float64
    # value of the same closed form, and the exact tails below.
    z = np.array([-1e4, -500.0, -90.0, 90.0, 500.0, 1e4])
    s64, l64 = analytic.signed_log_abs_grad(z, name)
    with jax.enable_x64(False):
        s32, l32 = analytic.signed_log_abs_grad(z.astype(np.float32), name)
    assert np.all(np.isfinite(l32))
    np.testing.assert_array_equal(s32, s64)
    np.testing.assert_allclose(l32, l64, rtol=1e-6, atol=1e-6)
    tails = {  # log phi'(z) as z -> -inf, up to a relative O(e^{-|z|}) or O(1/z^2)
        "sigmoid": z,
        "tanh": math.log(4) + 2 * z,
        "softplus": z,
        "elu": z,
        "selu": math.log(activations.SELU_LAMBDA * activations.SELU_ALPHA) + z,
        "silu": z + np.log(np.abs(z) - 1),
        "gelu": -0.5 * z * z - 0.5 * math.log(2 * math.pi) + np.log(np.abs(z)),
    }
    neg = z < 0
    np.testing.assert_allclose(np.asarray(l64)[neg], tails[name][neg], rtol=1e-5)


_log_and_plain = jax.jit(
    lambda w, b, x, g, name: (
        analytic.chain_log_grads(w, b, x, g, name),
        analytic.chain_grads(w, b, x, g, name),
    ),
    static_argnums=4,
)


@given(seed=SEEDS)
@x64_given
def test_log_grads_float32_match_float64_depth_200(x64, seed):
    w, b, x, g = _chain(seed, 200)
    sign64, log64 = _log_and_plain(w, b, x, g, "sigmoid")[0]
    with jax.enable_x64(False):
        f32 = tuple(v.astype(np.float32) for v in (w, b, x, g))
        (sign32, log32), plain32 = _log_and_plain(*f32, "sigmoid")
    assert log32.dtype == jnp.float32
    np.testing.assert_array_equal(sign32, sign64)
    np.testing.assert_allclose(log32, log64, rtol=2e-6)
    # ... while the float32 product has underflowed to zero in the first layers
    assert np.all(np.asarray(plain32.bias)[:, 0] == 0)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_log_grads_finite_monotone_depth_10000_float32(x64, name):
    # |w| <= 0.9 makes every factor |w_{j+1}| phi'(z_j) < 1, so log|dC/db_j| strictly increases
    # with j; in float32 the plain product is 0 there, the log domain is finite and accurate.
    depth = 10_000
    rng = np.random.default_rng(2024)
    w = rng.uniform(-0.9, 0.9, size=(4, depth))
    b = rng.normal(size=(4, depth))
    x, g = rng.normal(size=4), rng.normal(size=4)
    with jax.enable_x64(False):
        f32 = tuple(v.astype(np.float32) for v in (w, b, x, g))
        (sign32, log32), plain32 = _log_and_plain(*f32, name)
    log32 = np.asarray(log32)
    assert np.all(np.isfinite(log32)) and np.all(sign32 != 0)
    assert np.all(np.diff(log32, axis=-1) > 0)
    assert np.all(np.asarray(plain32.bias)[:, 0] == 0)  # the plain product underflowed
    if name == "sigmoid":
        # float64 reference: exact sum of float64 logs (math.fsum) over the float64 forward pass.
        z = np.asarray(analytic.chain_forward(w, b, x, name).z)
        log_dphi = -np.logaddexp(0, z) - np.logaddexp(0, -z)
        log_f = np.log(np.abs(w)) + log_dphi
        ref = np.array(
            [log_dphi[i, 0] + math.fsum(log_f[i, 1:]) + math.log(abs(g[i])) for i in range(4)]
        )
        assert np.all(ref < -15_000)  # ~1e-6500: far below even float64's smallest number
        np.testing.assert_allclose(log32[:, 0], ref, rtol=1e-6)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "linear"])
@given(seed=SEEDS, w_scale=st.floats(0.1, 10.0))
@x64_given
def test_gradient_bound_equality_at_argsup_zero(x64, name, seed, w_scale):
    # With b_j = -w_j a_{j-1} every z_j = 0 = argsup, so the bound is attained exactly.
    assert activations.get(name).argsup == 0.0
    rng = np.random.default_rng(seed)
    # Dyadic w and x (<= 13 and 7 significant bits): w_1 x is exact in float64, so z_1 = 0 even
    # with a fused multiply-add; see exploding_chain's docstring for other x.
    w_rand = np.round(64 * w_scale * rng.normal(size=(BATCH, 30))) / 64
    x = rng.integers(-64, 64, size=BATCH) / 8.0
    w, b = analytic.exploding_chain(30, x, weight=w_rand, activation=name)
    g = rng.normal(size=BATCH)
    grads = analytic.chain_grads(w, b, x, g, name)
    bound = analytic.gradient_bound(w, name, per_layer=True)
    np.testing.assert_allclose(np.abs(grads.bias), bound * np.abs(g)[:, None], rtol=1e-12)


# --- seed constructions -------------------------------------------------------------------------

_forward_and_grads = jax.jit(
    lambda w, b, x, g: (
        analytic.chain_forward(w, b, x, "sigmoid"),
        analytic.chain_grads(w, b, x, g, "sigmoid"),
        analytic.chain_log_grads(w, b, x, g, "sigmoid"),
    )
)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x", [0.5, 1.0, -0.75, 3.25])
def test_exploding_chain_factor_25(x64, dtype, x):
    # Nielsen ch. 5: w_j = 100, z_j = 0, every factor 100 * sigma'(0) = 25, so
    # dC/db_1 = (1/4) 25^(L-1) dC/da_L. Depth 20 keeps 25^19 ~ 4e26 inside float32.
    depth, g = 20, -1.5
    with jax.enable_x64(dtype == np.float64):
        w, b = analytic.exploding_chain(depth, x)
        assert w.dtype == b.dtype == dtype
        np.testing.assert_array_equal(w, np.full(depth, 100.0))
        np.testing.assert_array_equal(b, np.r_[-100.0 * x, np.full(depth - 1, -50.0)])
        (z, a), grads, (sign, log_abs) = _forward_and_grads(w, b, jnp.asarray(x, dtype), g)
    # exact: 100 x is representable, so z_j = 0 even with a fused multiply-add (jit on CPU)
    np.testing.assert_array_equal(z, np.zeros(depth))
    np.testing.assert_array_equal(a, np.full(depth, 0.5))
    rtol = 3e-6 if dtype == np.float32 else 1e-14
    bias = np.asarray(grads.bias, np.float64)
    np.testing.assert_allclose(bias[:-1] / bias[1:], 25.0, rtol=rtol)  # each factor is 25
    expected = 0.25 * 25.0 ** (depth - 1 - np.arange(depth)) * g
    np.testing.assert_allclose(bias, expected, rtol=rtol)
    np.testing.assert_allclose(grads.weight, np.r_[x, np.full(depth - 1, 0.5)] * bias, rtol=rtol)
    np.testing.assert_array_equal(sign, np.sign(expected))
    np.testing.assert_allclose(log_abs, np.log(np.abs(expected)), rtol=rtol)


def test_exploding_chain_log_domain_past_overflow():
    # float32: the plain product overflows past depth ~28 (25^28 > 3.4e38); the log domain gives
    # log|dC/db_1| = log(1/4) + (L-1) log 25 at depth 1000.
    depth = 1000
    w, b = analytic.exploding_chain(depth, 1.0)
    (_, _), grads, (sign, log_abs) = _forward_and_grads(w, b, jnp.float32(1.0), 1.0)
    assert np.isinf(grads.bias[0])
    assert sign[0] == 1
    np.testing.assert_allclose(log_abs[0], math.log(0.25) + 999 * math.log(25.0), rtol=1e-6)


def test_exploding_chain_is_unstable(x64):
    # The docstring's claim: an error delta in z_1 grows by w sigma'(0) = 25 per layer (to first
    # order) until the neurons saturate. Perturb b_1 by delta in float64.
    delta = 2.0**-43  # ~1.1e-13, exact as an offset of b_1 = -50
    w, b = analytic.exploding_chain(16, 0.5)
    b = b.at[0].add(delta)
    z = np.asarray(analytic.chain_forward(w, b, 0.5, "sigmoid").z)
    assert z[0] == delta
    np.testing.assert_allclose(z[1:8] / z[:7], 25.0, rtol=1e-4)  # linear regime, |z| < 1e-3
    assert abs(z[-1]) > 10  # left z = 0 for good: saturated


def test_exploding_chain_inexact_x_rounding_bound():
    # x = 0.3: 100 x is not a float32, so z_1 is 0 or (with a fused multiply-add) the rounding
    # error of 100 x: never more than half an ulp of 30, then amplified ~25x per layer.
    w, b = analytic.exploding_chain(3, 0.3)
    z = jax.jit(lambda w, b: analytic.chain_forward(w, b, jnp.float32(0.3), "sigmoid").z)(w, b)
    assert abs(float(z[0])) <= 0.5 * np.spacing(np.float32(30.0))
    if z[0] != 0:
        np.testing.assert_allclose(z[1] / z[0], 25.0, rtol=1e-3)


@pytest.mark.parametrize("gain", [2.0, 0.5])
def test_deep_linear_scaled_identity_gain(gain):
    # Seed 002: W = 2I (0.5I) over 100 layers gives 2^100 x (0.5^100 x) forward and the same
    # factor on the gradient; powers of two are exact in float32 (2^100 ~ 1.3e30 < 3.4e38).
    depth, width = 100, 3
    params = analytic.scaled_identity_mlp(depth, gain, width)
    x = jnp.array([[1.0, -2.0, 0.75]])
    g = jnp.array([[0.5, 1.0, -3.0]])
    out = analytic.mlp_forward(params, x, "linear")
    grads = analytic.mlp_grads(params, x, g, "linear")
    factor = float(analytic.deep_linear_gain(gain, depth))
    assert factor == gain**depth
    np.testing.assert_array_equal(out.a[-1], factor * x)
    np.testing.assert_array_equal(grads.input, factor * g)
    for layer in range(depth):  # delta^l = g^(L-l) dC/da_L for layer l = layer + 1
        np.testing.assert_array_equal(grads.delta[layer], gain ** (depth - layer - 1) * g)
    # the one-neuron chain with w = g, b = 0 is the same net with width 1
    chain = analytic.chain_grads(jnp.full(depth, gain), jnp.zeros(depth), 1.0, 1.0, "linear")
    assert float(chain.input) == factor
    np.testing.assert_array_equal(chain.bias, gain ** (depth - 1 - np.arange(depth)))


# --- the MLP ------------------------------------------------------------------------------------

# (5, 6), four (6, 6) layers (a run long enough to go through one lax.scan), then (6, 3): both the
# scanned and the unrolled code paths (test_mlp_widths_run_a_scan checks the scan is there).
WIDTHS = (5, 6, 6, 6, 6, 6, 3)


def _mlp(seed, batch=4, dtype=np.float64):
    rng = np.random.default_rng(seed)
    params = [
        (
            jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), dtype),
            jnp.asarray(rng.normal(size=n), dtype),
        )
        for m, n in itertools.pairwise(WIDTHS)
    ]
    x = jnp.asarray(rng.normal(size=(batch, WIDTHS[0])), dtype)
    g = jnp.asarray(rng.normal(size=(batch, WIDTHS[-1])), dtype)
    return params, x, g


def _mlp_closed_and_autodiff(params, x, g, act, linear_readout):
    closed = analytic.mlp_grads(params, x, g, act, linear_readout=linear_readout)

    fn = _reference_fn(act)

    def cost(params, x, g):  # independent forward pass
        a = x
        for i, (kernel, bias) in enumerate(params):
            a = a @ kernel + bias
            if not (linear_readout and i == len(params) - 1):
                a = fn(a)
        return jnp.dot(g, a)

    return closed, jax.vmap(jax.grad(cost, argnums=(0, 1)), in_axes=(None, 0, 0))(params, x, g)


@functools.partial(jax.jit, static_argnums=3)
def _mlp_suite(params, x, g, name):
    act = activations.get(name)
    return {r: _mlp_closed_and_autodiff(params, x, g, act, r) for r in (False, True)}


def test_mlp_widths_run_a_scan():
    """WIDTHS holds a run of identical layers long enough for mlp_grads to scan over it (the
    property test below then covers the scanned path), and the program has a loop, not one
    copy per layer."""
    params, x, g = _mlp(0, dtype=np.float32)
    jaxpr = str(jax.make_jaxpr(lambda p: analytic.mlp_grads(p, x, g, "tanh"))(params))
    assert "scan[" in jaxpr


# The activation enters the MLP only through act.fn and act.grad, tested for every activation above;
# here the matrix recursion, for a saturating, a zero-centred, a kinked and a non-monotone one.
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "gelu"])
@given(seed=SEEDS, linear_readout=st.booleans())
@x64_given
def test_mlp_grads_match_autodiff(x64, name, seed, linear_readout):
    # delta^l = Sigma'(z^l) W^{l+1} delta^{l+1} against jax.vmap(jax.grad) of an independent
    # forward pass, widths WIDTHS, with and without a linear readout (one compile for both).
    params, x, g = _mlp(seed)
    closed, (ref_params, ref_x) = _mlp_suite(params, x, g, name)[linear_readout]
    for layer, (ref_kernel, ref_bias) in enumerate(ref_params):
        chex.assert_shape(closed.kernel[layer], (4, *params[layer][0].shape))
        np.testing.assert_allclose(closed.kernel[layer], ref_kernel, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(closed.bias[layer], ref_bias, rtol=1e-10, atol=1e-14)
        np.testing.assert_array_equal(closed.delta[layer], closed.bias[layer])  # delta = dC/db
    np.testing.assert_allclose(closed.input, ref_x, rtol=1e-10, atol=1e-14)


def test_mlp_forward_and_dict_params(x64):
    params, x, g = _mlp(3)
    fwd = analytic.mlp_forward(params, x, "tanh")
    a = x
    for (kernel, bias), z_l, a_l in zip(params, fwd.z, fwd.a):
        np.testing.assert_allclose(z_l, a @ kernel + bias, rtol=1e-14, atol=1e-14)
        a = np.tanh(z_l)
        np.testing.assert_allclose(a_l, a, rtol=1e-14)
    as_dicts = [{"kernel": k, "bias": bb} for k, bb in params]
    chex.assert_trees_all_close(
        analytic.mlp_grads(as_dicts, x, g, "tanh"), analytic.mlp_grads(params, x, g, "tanh")
    )


# --- batching, jit, vmap, dtypes --------------------------------------------------------------


def test_batching_vmap_and_jit_agree():
    w, b, x, g = _chain(7, 12, dtype=np.float32)
    batched = analytic.chain_grads(w, b, x, g, "sigmoid")
    mapped = jax.vmap(lambda *a: analytic.chain_grads(*a, "sigmoid"))(w, b, x, g)
    chex.assert_trees_all_close(batched, mapped, rtol=1e-6)
    # two leading axes; x broadcast as a scalar, dC/da_L along the first axis
    w2, b2 = w.reshape(2, 4, 12), b.reshape(2, 4, 12)
    grads2 = analytic.chain_grads(w2, b2, 0.3, jnp.array([[1.0], [2.0]]), "tanh")
    chex.assert_shape([grads2.bias, grads2.weight], (2, 4, 12))
    chex.assert_shape(grads2.input, (2, 4))
    ref = analytic.chain_grads(w2[1, 2], b2[1, 2], 0.3, 2.0, "tanh")
    chex.assert_trees_all_close(jax.tree.map(lambda v: v[1, 2], grads2), ref, rtol=1e-6)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def log_grads(w, b, x, g):
        return analytic.chain_log_grads(w, b, x, g, "sigmoid")

    for seed in range(3):  # same shapes: traced once
        w, b, x, g = _chain(seed, 12, dtype=np.float32)
        sign, log_abs = log_grads(w, b, x, g)
        assert log_abs.dtype == jnp.float32
        np.testing.assert_allclose(
            sign * np.exp(log_abs), analytic.chain_grads(w, b, x, g, "sigmoid").bias, rtol=1e-5
        )


def test_mlp_grads_under_jit_and_vmap():
    params, x, g = _mlp(4, dtype=np.float32)
    eager = analytic.mlp_grads(params, x, g, "tanh")
    # one compile for both transforms: jit of vmap over examples, params closed over as arrays
    mapped = jax.jit(jax.vmap(lambda p, x, g: analytic.mlp_grads(p, x, g, "tanh"), (None, 0, 0)))
    chex.assert_trees_all_close(mapped(params, x, g), eager, rtol=1e-6)
    assert eager.input.dtype == jnp.float32


def test_dtypes_preserved_and_promoted(x64):
    w, b, x, g = _chain(1, 6)
    assert analytic.chain_grads(w, b, x, g, "tanh").bias.dtype == jnp.float64
    with jax.enable_x64(False):
        f32 = [v.astype(np.float32) for v in (w, b, x, g)]
        assert analytic.chain_grads(*f32, "tanh").bias.dtype == jnp.float32
    # integer input is promoted to the default float dtype
    assert analytic.chain_forward(np.ones(3, int), np.zeros(3, int), 1, "relu").z.dtype == (
        jnp.float64
    )


def test_activation_object_accepted():
    act = activations.get("leaky_relu", negative_slope=0.2)
    w, b, x, g = _chain(5, 4, dtype=np.float32)
    by_object = analytic.chain_grads(w, b, x, g, act)
    dphi = np.where(np.asarray(analytic.chain_forward(w, b, x, act).z) > 0, 1.0, 0.2)
    np.testing.assert_allclose(by_object.bias[:, -1], dphi[:, -1] * g, rtol=1e-6)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((np.ones(3), np.ones(4), 0.0, 1.0), ValueError, r"same depth.*\(3,\).*\(4,\)"),
        ((np.ones(0), np.ones(0), 0.0, 1.0), ValueError, r"depth must be at least 1.*depth 0"),
        ((np.float32(1.0), np.float32(1.0), 0.0, 1.0), ValueError, r"trailing layer axis"),
        ((np.ones(3), np.ones(3), np.nan, 1.0), ValueError, r"x must be finite.*nan"),
        ((np.r_[1.0, np.inf], np.ones(2), 0.0, 1.0), ValueError, r"w must be finite.*index \(1,\)"),
        ((np.ones(3), np.ones(3), 0.0, -np.inf), ValueError, r"dC_daL must be finite"),
        ((np.ones((2, 3)), np.ones((2, 3)), np.ones(4), 1.0), ValueError, r"broadcast"),
    ],
)
def test_chain_bad_input_raises(args, error, match):
    with pytest.raises(error, match=match):
        analytic.chain_grads(*args, "sigmoid")
    with pytest.raises(error, match=match):
        analytic.chain_log_grads(*args, "sigmoid")


def test_bad_activation_raises():
    with pytest.raises(ValueError, match=r"unknown activation 'sigmoidd'; valid names: .*sigmoid"):
        analytic.chain_forward(np.ones(2), np.ones(2), 0.0, "sigmoidd")
    with pytest.raises(TypeError, match=r"activation must be a name .* got function"):
        analytic.chain_forward(np.ones(2), np.ones(2), 0.0, lambda z: z)
    with pytest.raises(ValueError, match=r"unknown activation"):
        analytic.gradient_bound(np.ones(2), "nope")


def test_bound_and_constructions_bad_input_raise():
    with pytest.raises(ValueError, match=r"depth must be at least 1"):
        analytic.gradient_bound(np.ones((2, 0)), "sigmoid")
    with pytest.raises(ValueError, match=r"trailing layer axis"):
        analytic.log_gradient_bound(1.0, "sigmoid")
    with pytest.raises(ValueError, match=r"depth must be at least 1, got 0"):
        analytic.exploding_chain(0, 0.5)
    with pytest.raises(TypeError, match=r"depth must be an int, got float"):
        analytic.exploding_chain(2.0, 0.5)
    with pytest.raises(ValueError, match=r"x must be finite"):
        analytic.exploding_chain(3, np.inf)
    with pytest.raises(ValueError, match=r"does not broadcast"):
        analytic.exploding_chain(3, np.ones(2), weight=np.ones(4))
    with pytest.raises(ValueError, match=r"width must be at least 1, got 0"):
        analytic.scaled_identity_mlp(3, 2.0, width=0)
    with pytest.raises(ValueError, match=r"gain must be finite"):
        analytic.scaled_identity_mlp(3, np.nan)
    with pytest.raises(ValueError, match=r"depth must be >= 0"):
        analytic.deep_linear_gain(2.0, -1)


def test_mlp_bad_input_raises():
    params, x, g = _mlp(0, dtype=np.float32)
    with pytest.raises(ValueError, match=r"params is empty.*depth 0"):
        analytic.mlp_grads([], x, g, "relu")
    with pytest.raises(TypeError, match=r"list of \(kernel, bias\) pairs"):
        analytic.mlp_forward({"kernel": 1}, x, "relu")
    with pytest.raises(ValueError, match=r"layer 1: fan_in 6 does not match fan_out 3 of layer 0"):
        analytic.mlp_forward([params[-1], params[-1]], x, "relu")
    with pytest.raises(ValueError, match=r"layer 0: need kernel \(fan_in, fan_out\)"):
        analytic.mlp_forward([(params[0][0], params[-1][1])], x, "relu")
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., fan_in\) with fan_in=5"):
        analytic.mlp_forward(params, x[:, :4], "relu")
    with pytest.raises(ValueError, match=r"dC_daL must be \(\.\.\., fan_out\) with fan_out=3"):
        analytic.mlp_grads(params, x, g[:, :2], "relu")
    with pytest.raises(ValueError, match=r"x must be finite"):
        analytic.mlp_grads(params, x.at[0, 0].set(jnp.nan), g, "relu")
    with pytest.raises(ValueError, match=r"unknown activation 'rlu'"):
        analytic.mlp_grads(params, x, g, "rlu")


def test_traced_input_skips_finiteness_check():
    # Documented: under jit a non-finite value cannot raise; it propagates as nan instead.
    grads = jax.jit(lambda x: analytic.chain_grads(jnp.ones(2), jnp.ones(2), x, 1.0, "tanh"))
    assert np.all(np.isnan(grads(jnp.nan).weight))


def test_exploding_chain_under_jit_names_the_fix():
    # a host-side constructor: a traced input fails early with a message saying what to do
    with pytest.raises(TypeError, match="call it outside jit"):
        jax.jit(lambda x: analytic.exploding_chain(5, x))(0.5)
    w, b = analytic.exploding_chain(5, 0.5)
    assert w.shape == b.shape == (5,)


def test_complex_sizes_and_non_finite_gains_are_refused():
    w, b = jnp.array([1 + 2j, 0.5 + 0j]), jnp.zeros(2)
    for f in (
        lambda: analytic.chain_forward(w, b, 1.0, "tanh"),
        lambda: analytic.chain_grads(w, b, 1.0, 1.0, "tanh"),
        lambda: analytic.gradient_bound(w, "tanh"),
    ):
        with pytest.raises(TypeError, match="w must be real; got complex64"):
            f()  # used to drop the imaginary part with a warning
    with pytest.raises(TypeError, match="weight must be real; got complex"):
        analytic.exploding_chain(3, 0.5, weight=1 + 1j)
    with pytest.raises(ValueError, match=r"gain must be finite; got 1 non-finite value\(s\)"):
        analytic.deep_linear_gain(float("nan"), 3)  # chain_* reject NaN: so does this
    with pytest.raises(ValueError, match=r"dtype must be a floating dtype .* got int32"):
        analytic.scaled_identity_mlp(2, 2.0, dtype=jnp.int32)  # used to mix int and float
    with pytest.raises(TypeError, match="gain must be a real number, got"):
        analytic.scaled_identity_mlp(2, 1 + 1j)
    # a size that cannot fit is refused at once (it used to run 26 s into a MemoryError)
    with pytest.raises(ValueError, match=r"exploding_chain\(depth=1000000000000\).* of memory"):
        analytic.exploding_chain(10**12, 0.5)
