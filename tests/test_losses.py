"""Tests for gradflow.losses: each cost's output error is Nielsen's delta^L, targets are checked."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradflow import losses


@given(
    logits=st.lists(st.floats(-20, 20), min_size=12, max_size=12),
    labels=st.lists(st.integers(0, 3), min_size=3, max_size=3),
)
def test_losses_give_nielsen_output_deltas(logits, labels):
    """Per-example B dC/dz^L: sigmoid CE -> sigma(z) - y, softmax CE -> softmax(z) - y,
    quadratic -> z - y (one-hot y for integer labels)."""
    z = jnp.asarray(logits, jnp.float32).reshape(3, 4)
    y = jnp.asarray(labels, jnp.int32)
    onehot = jax.nn.one_hot(y, 4)
    expected = {
        "sigmoid_cross_entropy": jax.nn.sigmoid(z) - onehot,
        "softmax_cross_entropy": jax.nn.softmax(z) - onehot,
        "mse": z - onehot,
    }
    for name, want in expected.items():
        got = 3 * _loss_grad(name, z, y)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@jax.jit
def _all_loss_grads(z, y):
    return {n: jax.grad(losses.get_loss(n))(z, y) for n in losses.LOSSES}


def _loss_grad(name, z, y):
    return _all_loss_grads(z, y)[name]


def test_loss_targets_and_errors():
    z = jnp.array([[0.0, 1.0], [2.0, -1.0]])
    # real targets of the logits' shape; (B,) real targets for a single output
    assert float(losses.mse(z, jnp.zeros((2, 2)))) == pytest.approx(0.5 * (1 + 4 + 1) / 2)
    assert float(losses.mse(z[:, :1], jnp.array([1.0, 2.0]))) == pytest.approx(0.25)
    soft = losses.softmax_cross_entropy(z, jax.nn.one_hot(jnp.array([1, 0]), 2))
    hard = losses.softmax_cross_entropy(z, jnp.array([1, 0]))
    np.testing.assert_allclose(soft, hard, rtol=1e-6)

    def custom(out, y):
        return jnp.mean(out)

    assert losses.get_loss(custom) is custom
    with pytest.raises(ValueError, match="unknown loss 'hinge'; valid: softmax_cross_entropy"):
        losses.get_loss("hinge")
    with pytest.raises(TypeError, match="loss must be a name"):
        losses.get_loss(3)
    with pytest.raises(ValueError, match=r"integer labels must have shape \(2,\)"):
        losses.sigmoid_cross_entropy(z, jnp.array([[1], [0]]))
    with pytest.raises(ValueError, match=r"real targets must have the logits' shape \(2, 2\)"):
        losses.mse(z, jnp.zeros((2, 3)))
