"""Tests for gradflow.activations: one invariant test over the whole registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gradflow as gf

ALL = [gf.activations.get(n) for n in gf.activations.names(builtin_only=True)] + [
    gf.activations.get("leaky_relu", negative_slope=0.2),
    gf.activations.get("elu", alpha=2.0),
]
IDS = [f"{a.name}{a.params or ''}" for a in ALL]

# 512 points avoiding the kink at 0 by at least 1e-3 (float64 grid).
X = np.concatenate([np.linspace(-12.0, -1e-3, 256), np.linspace(1e-3, 12.0, 256)])


@pytest.mark.parametrize("act", ALL, ids=IDS)
def test_grad_matches_autodiff(act, x64):
    x = jnp.asarray(X, dtype=jnp.float64)
    auto = jax.vmap(jax.grad(act.fn))(x)
    # closed form vs autodiff in float64: agree to 1e-12 absolute (values are O(1))
    np.testing.assert_allclose(act.grad(x), auto, rtol=0, atol=1e-12)
    auto2 = jax.vmap(jax.grad(act.grad))(x)
    np.testing.assert_allclose(act.grad2(x), auto2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("act", ALL, ids=IDS)
@given(x=st.floats(-60.0, 60.0, allow_nan=False))
def test_grad_bounded_by_sup(act, x):
    g = float(act.grad(jnp.float32(x)))
    assert abs(g) <= act.sup_grad * (1 + 1e-6)


@pytest.mark.parametrize("act", ALL, ids=IDS)
def test_sup_attained_or_approached(act, x64):
    # The grid is built on the host, so every backend evaluates phi' at the same points (XLA's
    # linspace puts its midpoint at 2e-15 on CPU and at exactly 0 on a GPU). The kinks are checked
    # on their own: there phi' is a convention (elu: the left limit scale * alpha), not a
    # derivative, so "only approached" is a statement about the points off the kinks.
    grid = np.linspace(-20.0, 20.0, 400_001)
    grid = grid[~np.isin(grid, act.kinks)]
    gmax = float(jnp.max(jnp.abs(act.grad(jnp.asarray(grid)))))
    # the grid maximum never exceeds the stated sup and comes within 1e-6 of it (or of its limit)
    assert gmax <= act.sup_grad * (1 + 1e-12)
    if act.kinks:
        at_kinks = jnp.abs(act.grad(jnp.asarray(act.kinks, jnp.float64)))
        assert float(jnp.max(at_kinks)) <= act.sup_grad * (1 + 1e-12)
    if act.argsup is not None:
        assert float(abs(act.grad(jnp.float64(act.argsup)))) == pytest.approx(
            act.sup_grad, rel=1e-12
        )
    else:
        # only approached: at 0- for elu/selu with alpha > 1, as x -> infinity for softplus
        probe = 40.0 if act.name == "softplus" else -1e-12
        assert float(abs(act.grad(jnp.float64(probe)))) == pytest.approx(act.sup_grad, rel=1e-9)
        assert gmax < act.sup_grad


def test_known_constants():
    get = gf.activations.get
    assert get("sigmoid").sup_grad == 0.25 and get("sigmoid").argsup == 0.0
    assert get("tanh").sup_grad == 1.0 and get("tanh").argsup == 0.0
    selu = get("selu")
    assert selu.argsup is None
    assert selu.sup_grad == pytest.approx(gf.activations.SELU_LAMBDA * gf.activations.SELU_ALPHA)
    assert get("gelu").sup_grad == pytest.approx(1.1289, abs=1e-4)
    assert get("silu").sup_grad == pytest.approx(1.0998, abs=1e-4)
    assert get("swish") is get("silu")


@pytest.mark.parametrize("act", ALL, ids=IDS)
def test_dtype_jit_vmap(act):
    x = jnp.linspace(-3, 3, 7, dtype=jnp.float32)
    for f in (act.fn, act.grad, act.grad2):
        y = jax.jit(f)(x)
        assert y.dtype == jnp.float32 and y.shape == x.shape
        np.testing.assert_allclose(jax.vmap(f)(x), y, rtol=1e-6, atol=1e-7)
    # integers are promoted to the default float dtype
    assert jnp.issubdtype(act.fn(jnp.arange(3)).dtype, jnp.floating)


def test_hashable_and_cached():
    a = gf.activations.get("leaky_relu", negative_slope=0.2)
    assert a is gf.activations.get("leaky_relu", negative_slope=0.2)
    assert a != gf.activations.get("leaky_relu")
    assert a.kwargs == {"negative_slope": 0.2}
    assert jax.jit(lambda x, act: act(x), static_argnums=1)(jnp.float32(-1.0), a) == pytest.approx(
        -0.2
    )
    assert gf.activations.get(a) is a


def test_register_custom():
    act = gf.activations.register(
        "test_cube_tanh",
        lambda x: jnp.tanh(x) ** 3,
        lambda x: 3 * jnp.tanh(x) ** 2 * (1 - jnp.tanh(x) ** 2),
        sup_grad=4 / 3**1.5 * 1.0,
        argsup=None,
        overwrite=True,
    )
    try:
        assert "test_cube_tanh" in gf.activations.names()
        assert "test_cube_tanh" not in gf.activations.names(builtin_only=True)
        assert gf.activations.get("test_cube_tanh") is act
        np.testing.assert_allclose(act.grad2(jnp.array([0.5])), jax.grad(act.grad)(0.5), rtol=1e-5)
        with pytest.raises(ValueError, match="already registered"):
            gf.activations.register("sigmoid", jnp.tanh, jnp.tanh, sup_grad=1.0, argsup=0.0)
    finally:
        gf.activations.unregister("test_cube_tanh")
    assert "test_cube_tanh" not in gf.activations.names()
    with pytest.raises(ValueError, match="unknown activation 'test_cube_tanh'"):
        gf.activations.get("test_cube_tanh")
    with pytest.raises(ValueError, match="built in"):
        gf.activations.unregister("sigmoid")
    with pytest.raises(ValueError, match="not registered"):
        gf.activations.unregister("test_cube_tanh")


def test_bad_input():
    with pytest.raises(
        ValueError, match=r"unknown activation 'sigmoidd'; valid names: linear, sigmoid"
    ):
        gf.activations.get("sigmoidd")
    with pytest.raises(TypeError, match=r"unexpected parameter 'alpha'.*negative_slope"):
        gf.activations.get("leaky_relu", alpha=0.1)
    with pytest.raises(TypeError, match="accepts no parameters"):
        gf.activations.get("tanh", slope=1.0)
    with pytest.raises(ValueError, match="must be finite"):
        gf.activations.get("leaky_relu", negative_slope=float("nan"))
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        gf.activations.get("elu", alpha=-1.0)
    with pytest.raises(TypeError, match="must be a name or an Activation"):
        gf.activations.get(3)


@pytest.mark.parametrize("name", ["elu", "selu"])
def test_autodiff_of_fn_exact_in_the_far_tail(name):
    # d/dx expm1 must be exp(x), not expm1(x) + 1 (which is 0 below x ~ -17 in float32)
    act = gf.activations.get(name)
    x = jnp.array([-16.0, -30.0, -80.0], dtype=jnp.float32)
    np.testing.assert_allclose(jax.vmap(jax.grad(act.fn))(x), act.grad(x), rtol=1e-6)


def test_tanh_grad_precise_in_saturation(x64):
    z = jnp.float64(8.0)
    exact = 1.0 / np.cosh(8.0) ** 2
    assert float(gf.activations.get("tanh").grad(z)) == pytest.approx(exact, rel=1e-13)


def test_register_checks_its_arguments():
    ok = dict(sup_grad=1.0, argsup=0.0)
    with pytest.raises(TypeError, match="fn must be a callable x -> array, got None"):
        gf.activations.register("bad_none", None, None, **ok)
    with pytest.raises(TypeError, match="grad must be a callable x -> array, got 3"):
        gf.activations.register("bad_grad", jnp.tanh, 3, **ok)
    with pytest.raises(TypeError, match="sup_grad must be a real number, got '1'"):
        gf.activations.register("bad_sup", jnp.tanh, jnp.tanh, sup_grad="1", argsup=0.0)
    with pytest.raises(TypeError, match="argsup must be a finite real number or None, got nan"):
        gf.activations.register("bad_arg", jnp.tanh, jnp.tanh, sup_grad=1.0, argsup=float("nan"))
    with pytest.raises(TypeError, match=r"kinks must be a tuple of finite real numbers"):
        gf.activations.register("bad_kinks", jnp.tanh, jnp.tanh, **ok, kinks=("0",))
    assert "bad_none" not in gf.activations.names()
