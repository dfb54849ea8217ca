"""Tests for gradflow.initializers: sampled variance vs theory, orthogonality, depth behaviour."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf

SHAPES = [(300, 200), (128, 512)]
PARAMS = {
    "normal": {"std": 0.7},
    "orthogonal": {"gain": 1.5},
    "scaled_identity": {"gain": 2.0},
    "constant": {"value": 0.3},
    "scaled_normal": {"scale": 1.7},
}


@pytest.mark.parametrize("name", gf.initializers.names())
@pytest.mark.parametrize("shape", SHAPES)
def test_sample_variance_matches_theory(name, shape):
    params = PARAMS.get(name, {})
    w = np.asarray(gf.initializers.get(name, **params)(jax.random.key(1), shape), dtype=np.float64)
    assert w.shape == shape and w.dtype == np.float64
    theory = gf.initializers.weight_variance(name, *shape, **params)
    m2 = np.mean(w**2)
    # tolerance from the sample size: 6 standard errors of the mean of w^2 (+ float32 rounding)
    se = np.sqrt(max(np.mean(w**4) - m2**2, 0.0) / w.size)
    assert abs(m2 - theory) <= 6 * se + 1e-6 * theory + 1e-12, (m2, theory, se)
    if name not in ("scaled_identity", "constant", "zeros", "orthogonal"):
        # every random initializer is zero-mean: |mean| within 6 standard errors
        assert abs(w.mean()) <= 6 * np.sqrt(m2 / w.size) + 1e-12


@pytest.mark.parametrize(
    "name", ["normal", "lecun_normal", "xavier_normal", "he_normal", "scaled_normal"]
)
def test_gaussians_are_untruncated(name):
    w = np.asarray(gf.initializers.get(name)(jax.random.key(2), (400, 400)))
    std = np.sqrt(gf.initializers.weight_variance(name, 400, 400))
    # jax's truncated normal stops at 2 std; 160k Gaussian draws exceed 4 std ~10 times on average
    assert np.abs(w).max() / std > 4.0


def test_uniform_bounds():
    n_in, n_out = 100, 300
    for name, bound in [
        ("xavier_uniform", np.sqrt(6 / (n_in + n_out))),
        ("fan_in_uniform", 1 / np.sqrt(n_in)),
        ("he_uniform", np.sqrt(6 / n_in)),
    ]:
        w = np.asarray(gf.initializers.get(name)(jax.random.key(3), (n_in, n_out)))
        assert np.abs(w).max() <= bound * (1 + 1e-6)
        assert np.abs(w).max() >= 0.99 * bound
    # Glorot's heuristic gives n Var(W) = 1/3
    assert gf.initializers.weight_variance("fan_in_uniform", 50, 70) * 50 == pytest.approx(1 / 3)


@pytest.mark.parametrize("shape", [(64, 64), (128, 32), (32, 128)])
def test_orthogonal(shape, x64):
    w = gf.initializers.get("orthogonal", gain=2.0)(jax.random.key(4), shape, jnp.float64)
    small = min(shape)
    gram = w.T @ w if shape[0] >= shape[1] else w @ w.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-12)


def test_scaled_identity_and_aliases():
    w = gf.initializers.get("scaled_identity", gain=0.5)(None, (4, 4))
    np.testing.assert_array_equal(w, 0.5 * np.eye(4))
    assert (
        gf.initializers.weight_variance("glorot_normal", 10, 30)
        == gf.initializers.weight_variance("xavier_normal", 10, 30)
        == pytest.approx(0.05)
    )
    assert gf.initializers.weight_variance("kaiming_normal", 10, 30) == pytest.approx(0.2)
    assert gf.initializers.weight_variance(
        "he_normal", 10, 30, negative_slope=1.0
    ) == pytest.approx(0.1)


def test_usable_in_flax():
    layer = nn.Dense(
        8, kernel_init=gf.initializers.get("he_normal"), bias_init=gf.initializers.get("normal")
    )
    v = layer.init(jax.random.key(0), jnp.ones((2, 5)))
    assert v["params"]["kernel"].shape == (5, 8) and v["params"]["bias"].shape == (8,)
    assert float(jnp.abs(v["params"]["bias"]).sum()) > 0


def _forward_second_moments(act, init, depth, width, key, n=256):
    x = jax.random.normal(key, (n, width))
    keys = jax.random.split(jax.random.fold_in(key, 1), depth)
    q = []
    h = x
    for k in keys:
        w = init(k, (width, width))
        h = act(h @ w)
        q.append(float(jnp.mean((h @ jnp.eye(width)) ** 2)))
    return np.array(q)


@pytest.mark.parametrize("seed", [0, 1])
def test_relu_he_preserves_and_xavier_halves(seed):
    relu = gf.activations.get("relu")
    key = jax.random.key(seed)
    depth, width = 50, 512
    he = _forward_second_moments(relu, gf.initializers.get("he_normal"), depth, width, key)
    xa = _forward_second_moments(relu, gf.initializers.get("xavier_normal"), depth, width, key)
    # He: the forward second moment E[a^2] stays within [1/4, 4] of layer 1 through 50 layers
    # (finite-width fluctuations grow like depth/width; see Hanin 2018)
    ratio = he[-1] / he[0]
    assert 0.25 < ratio < 4.0, ratio
    # Xavier with fan_in = fan_out: Var(W) = 1/n, so E[a^2] halves per layer: log2 slope -1 +- 0.05
    slope = np.polyfit(np.arange(depth), np.log2(xa), 1)[0]
    assert abs(slope + 1.0) < 0.05, slope


def _tanh_backward_second_moments(init_name, width=512, depth=50, n=64, seed=5):
    """E[(dC/dz_l)^2] from the output layer back to the first, C = sum(a_L), x ~ N(0, I)."""
    tanh = gf.activations.get("tanh")
    keys = jax.random.split(jax.random.key(seed), depth + 1)
    ws = [gf.initializers.get(init_name)(k, (width, width)) for k in keys[:-1]]
    x = jax.random.normal(keys[-1], (n, width))
    zs, h = [], x
    for w in ws:
        zs.append(h @ w)
        h = tanh(zs[-1])
    delta = tanh.grad(zs[-1])
    m2 = [float(jnp.mean(delta**2))]
    for layer in range(depth - 1, 0, -1):
        delta = (delta @ ws[layer].T) * tanh.grad(zs[layer - 1])
        m2.append(float(jnp.mean(delta**2)))

    def net(h):
        for w in ws:
            h = tanh(h @ w)
        return jnp.sum(h)

    # the recursion is what autodiff computes at the input (float32, 50 layers: 2e-4 of O(0.1))
    np.testing.assert_allclose(jax.grad(net)(x), delta @ ws[0].T, rtol=2e-4, atol=2e-5)
    return np.array(m2)


def test_tanh_xavier_backward_variance_band():
    # Glorot & Bengio 2010: with Var(W) = 2/(n_in + n_out) = 1/n the back-propagated gradient
    # second moment stays within a band over 50 tanh layers (it decays only where the units
    # saturate: chi1 < 1 while q is O(1), chi1 -> 1 as q -> 0), whereas their "standard" init
    # U[-1/sqrt(n), 1/sqrt(n)] (n Var(W) = 1/3) shrinks it by at least 3x per layer.
    xavier = _tanh_backward_second_moments("xavier_normal")
    ratio = xavier / xavier[0]
    assert np.all((ratio > 1e-3) & (ratio < 10.0)), ratio[[0, -1]]
    standard = _tanh_backward_second_moments("fan_in_uniform")
    assert standard[-1] / standard[0] < 3.0 ** -(len(standard) - 1), standard[[0, -1]]


def test_bad_input():
    with pytest.raises(ValueError, match="unknown initializer 'he'; valid names: normal"):
        gf.initializers.get("he")
    with pytest.raises(ValueError, match=r"std must be finite and >= 0, got -1\.0"):
        gf.initializers.get("normal", std=-1.0)
    with pytest.raises(TypeError, match="unexpected parameter 'std'"):
        gf.initializers.get("he_normal", std=1.0)
    with pytest.raises(ValueError, match="fan_in must be a positive integer, got 0"):
        gf.initializers.weight_variance("he_normal", 0, 10)
    with pytest.raises(ValueError, match="needs a kernel of rank >= 2"):
        gf.initializers.get("he_normal")(jax.random.key(0), (10,))
    with pytest.raises(ValueError, match="needs a 2-D kernel"):
        gf.initializers.get("scaled_identity")(None, (2, 3, 4))
    with pytest.raises(TypeError, match="must be a string"):
        gf.initializers.get(None)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_orthogonal_in_half_precision(dtype):
    w = gf.initializers.get("orthogonal")(jax.random.key(0), (8, 8), dtype)  # LAPACK has no f16
    assert w.dtype == dtype
    np.testing.assert_allclose(np.asarray(w.T @ w, np.float32), np.eye(8), atol=2e-2)
