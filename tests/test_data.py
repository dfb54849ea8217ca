"""Tests for gradflow.data: digits split and scaling, adding problem, teacher-student, Markov
sequences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import gradflow as gf
from gradflow import data


def test_digits_shapes_dtypes_and_unit_scale():
    d = data.load_digits()
    assert len(d.y_train) + len(d.y_test) == data.N_DIGITS == 1797
    assert d.x_train.shape == (len(d.y_train), 64) and d.x_test.shape == (len(d.y_test), 64)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    assert len(d.y_test) == pytest.approx(0.2 * 1797, abs=1)
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0  # pixels 0..16 divided by 16
    np.testing.assert_array_equal(np.unique(d.y_train), np.arange(10))
    # stratified: class proportions in the test split match the full set within one example
    full = np.bincount(np.concatenate([d.y_train, d.y_test]), minlength=10)
    np.testing.assert_allclose(np.bincount(d.y_test, minlength=10), 0.2 * full, atol=1.0)


def test_digits_split_is_deterministic_and_seeded():
    a, b = data.load_digits(seed=3), data.load_digits(seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    c = data.load_digits(seed=4)
    assert not np.array_equal(a.y_train, c.y_train)
    # the union of the two splits is the whole data set, whatever the seed
    sk = np.sort(np.concatenate([c.x_train, c.x_test]).sum(1))
    np.testing.assert_allclose(np.sort(np.concatenate([a.x_train, a.x_test]).sum(1)), sk)


def test_digits_standardize_uses_training_statistics():
    unit = data.load_digits(n_train=1000)
    std = data.load_digits(scale="standardize", n_train=1000)
    mu = unit.x_train.astype(np.float64).mean(0)
    sd = unit.x_train.astype(np.float64).std(0)
    live = sd > 0
    np.testing.assert_allclose(std.x_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(std.x_train[:, live].std(0), 1.0, rtol=1e-4)
    # the test split is transformed with the training mean and std, not its own
    sd = np.where(live, sd, 1.0)
    np.testing.assert_allclose(std.x_test, (unit.x_test - mu) / sd, rtol=1e-4, atol=1e-4)
    assert np.all(std.x_train[:, ~live] == 0.0)  # constant pixels are only centred


def test_digits_subsets_keep_the_first_examples():
    full = data.load_digits()
    sub = data.load_digits(n_train=1000, n_test=50)
    np.testing.assert_array_equal(sub.x_train, full.x_train[:1000])
    np.testing.assert_array_equal(sub.y_test, full.y_test[:50])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"scale": "minmax"}, ValueError, "unknown scale 'minmax'; valid: unit, standardize"),
        ({"n_train": 5000}, ValueError, "n_train=5000 exceeds the 1437 examples"),
        ({"n_test": 400}, ValueError, "n_test=400 exceeds the 360"),
        ({"n_train": 0}, ValueError, "n_train must be >= 1"),
        ({"test_fraction": 1.0}, ValueError, r"test_fraction must be in \(0, 1\)"),
        ({"test_fraction": "0.2"}, TypeError, "test_fraction must be a float"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
    ],
)
def test_digits_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        data.load_digits(**kwargs)


def test_get_dispatches_and_rejects_unknown_names():
    assert data.names() == ("digits", "adding", "teacher_student", "markov")
    d = data.get("digits", n_train=10)
    assert d.x_train.shape == (10, 64)
    x, y = data.get("adding", jax.random.key(0), 4, 10)
    assert x.shape == (4, 10, 2) and y.shape == (4, 1)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid names: digits, adding"):
        data.get("mnist")


@given(seed=st.integers(0, 2**31 - 1), length=st.sampled_from([3, 50]))
def test_adding_problem_structure(seed, length):
    x, y = data.adding_problem(jax.random.key(seed), 8, length)
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == (8, length, 2) and y.shape == (8, 1) and x.dtype == np.float32
    values, markers = x[..., 0], x[..., 1]
    assert np.all((values >= 0) & (values < 1))
    np.testing.assert_array_equal(markers.sum(1), 2.0)  # exactly two marked numbers
    half = length // 2
    np.testing.assert_array_equal(markers[:, :half].sum(1), 1.0)  # one in each half
    np.testing.assert_allclose(y[:, 0], (values * markers).sum(1), rtol=1e-6)


def test_adding_problem_is_keyed_and_has_the_one_sixth_baseline():
    a = data.adding_problem(jax.random.key(1), 4000, 20)
    b = data.adding_problem(jax.random.key(1), 4000, 20)
    np.testing.assert_array_equal(a[0], b[0])
    # y = U1 + U2: predicting 1 gives mean squared error Var(y) = 2/12 = 1/6
    mse = float(np.mean((np.asarray(a[1]) - 1.0) ** 2))
    assert mse == pytest.approx(1 / 6, abs=0.01)  # std of the estimate ~ 0.003 at n = 4000
    with pytest.raises(ValueError, match="length must be >= 2"):
        data.adding_problem(jax.random.key(0), 4, 1)
    with pytest.raises(TypeError, match="n must be an int"):
        data.adding_problem(jax.random.key(0), 4.0, 10)


def test_teacher_student_targets_come_from_the_teacher():
    ts = data.teacher_student(jax.random.key(2), 32, in_dim=5, widths=(8, 8), out=2)
    assert ts.x.shape == (32, 5) and ts.y.shape == (32, 2)
    assert isinstance(ts.teacher, gf.models.MLP) and ts.teacher.activation == "tanh"
    np.testing.assert_allclose(ts.y, ts.teacher.apply(ts.teacher_variables, ts.x), rtol=1e-6)
    noisy = data.teacher_student(
        jax.random.key(2), 32, in_dim=5, widths=(8, 8), out=2, noise_std=0.1
    )
    np.testing.assert_array_equal(noisy.x, ts.x)  # same key: same inputs and teacher
    resid = np.asarray(noisy.y - ts.y)
    assert 0.05 < resid.std() < 0.2
    assert float(jnp.abs(resid).max()) > 0
    with pytest.raises(ValueError, match="noise_std must be a finite float >= 0"):
        data.teacher_student(jax.random.key(0), 4, noise_std=-1.0)
    with pytest.raises(ValueError, match="widths is empty"):
        data.teacher_student(jax.random.key(0), 4, widths=())


@given(seed=st.integers(0, 2**31 - 1), order=st.sampled_from([1, 2, 3]))
def test_markov_sequences_follow_their_table(seed, order):
    d = data.markov_sequences(jax.random.key(seed), 6, 3, 10, vocab=5, order=order)
    assert d.table.shape == (5,) * order and d.table.dtype == np.int32
    assert (d.vocab, d.order) == (5, order)
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert x.shape == y.shape and x.dtype == y.dtype == np.int32
        assert x.min() >= 0 and x.max() < 5
        np.testing.assert_array_equal(y[:, :-1], x[:, 1:])  # y is x shifted by one token
        s = np.concatenate([x, y[:, -1:]], axis=1)  # s_0 .. s_T
        for t in range(order, s.shape[1]):
            ctx = tuple(s[:, t - order + i] for i in range(order))
            np.testing.assert_array_equal(s[:, t], d.table[ctx])  # every later token determined


def test_markov_sequences_keyed_split_and_floor():
    a = data.markov_sequences(jax.random.key(3), 200, 100, 15)
    b = data.get("markov", jax.random.key(3), 200, 100, 15)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    c = data.markov_sequences(jax.random.key(4), 200, 100, 15)
    assert not np.array_equal(a.table, c.table)
    assert not np.array_equal(a.x_train[:, :2], a.x_test[:100, :2])  # independent start tokens
    # order 2: only the first target is uniform, so the floor is ln(16) / 15 nats per token
    assert a.loss_floor == pytest.approx(np.log(16) / 15, rel=1e-12)
    assert data.markov_sequences(jax.random.key(0), 2, 0, 4, order=1).loss_floor == 0.0
    # the same arrays when called while JAX traces a function (e.g. under jax.eval_shape); a
    # traced key is refused
    seen, key = [], jax.random.key(3)
    jax.eval_shape(lambda: seen.append(data.markov_sequences(key, 200, 100, 15)))
    for u, v in zip(seen[0], a):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(TypeError, match="key is traced"):
        jax.eval_shape(lambda k: data.markov_sequences(k, 2, 2, 4), key)
    with pytest.raises(ValueError, match="length must be >= 3"):
        data.markov_sequences(jax.random.key(0), 2, 2, 2, order=3)
    with pytest.raises(ValueError, match=r"vocab\*\*order = 64\*\*4 entries, more than 2\*\*20"):
        data.markov_sequences(jax.random.key(0), 2, 2, 8, vocab=64, order=4)
    with pytest.raises(TypeError, match="n_train must be an int"):
        data.markov_sequences(jax.random.key(0), 2.0, 2, 8)
