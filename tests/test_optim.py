"""Tests for gradflow.optim: clipping with telemetry, weight decay, monitor, optimizer factory."""

from __future__ import annotations

import functools

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradflow import optim

# A few fixed tree layouts (so jit does not recompile per example); hypothesis draws the layout,
# the values and an overall scale spanning "far below" to "far above" the clipping thresholds.
LAYOUTS = (
    {"dense_0": {"kernel": (3, 4), "bias": (4,)}, "dense_1": {"kernel": (4, 2), "bias": (2,)}},
    {
        "dense_0": {"kernel": (5, 5), "bias": (5,)},
        "dense_1": {"kernel": (5, 5), "bias": (5,)},
        "dense_2": {"scale": (5,), "bias": (5,)},  # a norm layer between two Dense layers
        "dense_3": {"kernel": (5, 3), "bias": (3,)},
    },
    {"block": {"inner": {"kernel": (2, 3)}, "bias": (3,)}, "readout": {"kernel": (3, 1)}},
)
_is_shape = lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x)
x64_given = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def trees(draw, layout=None):
    """A pytree of float64 arrays of one of LAYOUTS with random values and scale."""
    shapes = draw(st.sampled_from(LAYOUTS)) if layout is None else layout
    scale = draw(st.sampled_from([1e-3, 0.3, 1.0, 30.0, 1e3]))
    # no subnormals: XLA on CPU flushes them to zero, which is not what these properties test
    elements = st.floats(-1.0, 1.0, allow_nan=False, width=64).map(
        lambda x: x if abs(x) > 1e-100 else 0.0
    )

    def leaf(shape):
        return jnp.asarray(draw(hnp.arrays(np.float64, shape, elements=elements)) * scale)

    return jax.tree.map(leaf, shapes, is_leaf=_is_shape)


@st.composite
def tree_pairs(draw):
    """(grads, params): two independent trees of the same layout."""
    layout = draw(st.sampled_from(LAYOUTS))
    return draw(trees(layout)), draw(trees(layout))


def _np_layer_norms(tree):
    """Reference per-layer norms (top-level keys, natural order) in NumPy float64."""
    names = optim.layer_names(tree)
    return np.array(
        [np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(tree[n]))) for n in names]
    )


def _global_norm(tree):
    return np.sqrt(sum(np.sum(np.asarray(x) ** 2) for x in jax.tree.leaves(tree)))


@functools.partial(jax.jit, static_argnums=0)
def _jit_apply(factory, hyper, grads, params):
    """One update of ``factory(hyper)`` from its init state; ``hyper`` is traced, so hypothesis
    examples of one layout share one compilation."""
    tx = factory(hyper)
    return tx.update(grads, tx.init(params), params)


def _apply(tx, grads, params=None):
    params = grads if params is None else params
    state = tx.init(params)
    return tx.update(grads, state, params)


AGC_ALL = functools.partial(optim.adaptive_grad_clip, unclipped=None)
L1_ALL = functools.partial(optim.add_l1_decay, mask=None)


# --------------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------------


def test_layer_names_natural_forward_order_and_depths():
    tree = {f"dense_{i}": {"kernel": jnp.ones((1, 1)), "bias": jnp.ones(1)} for i in (10, 2, 0, 1)}
    assert optim.layer_names(tree) == ("dense_0", "dense_1", "dense_2", "dense_10")
    rnn = {"rnn": {"cell": {"w": jnp.ones(2)}}, "readout": {"kernel": jnp.ones((2, 1))}}
    assert optim.layer_names(rnn) == ("rnn", "readout")  # the readout is last whatever its name
    assert optim.layer_names(tree, layers=2)[:2] == ("dense_0/bias", "dense_0/kernel")
    by_kind = optim.layer_names(tree, layers=lambda path: path[-1])
    assert by_kind == ("bias", "kernel")
    np.testing.assert_allclose(optim.layer_norms(tree, layers=lambda p: p[-1]), [2.0, 2.0], rtol=0)


def test_bad_layer_spec_raises():
    with pytest.raises(ValueError, match=r"layers .* must be >= 1"):
        optim.clip_by_layer_norm(1.0, layers=0)
    with pytest.raises(TypeError, match="static_args"):
        optim.clip_by_layer_norm(1.0, layers="top")


# --------------------------------------------------------------------------------------------------
# clipping
# --------------------------------------------------------------------------------------------------


@x64_given
@given(grads=trees(), c=st.sampled_from([0.1, 1.0, 10.0]))
def test_clip_by_global_norm_bounds_norm_keeps_direction(x64, grads, c):
    out, _ = _jit_apply(optim.clip_by_global_norm, c, grads, grads)
    norm_in, norm_out = _global_norm(grads), _global_norm(out)
    assert norm_out <= c * (1 + 1e-6)
    if norm_in <= c:  # below the threshold: the identity, bit for bit
        chex.assert_trees_all_equal(out, grads)
    else:  # out = (c / |g|) g: same direction (tolerance: float64 rounding of one division)
        chex.assert_trees_all_close(
            out, jax.tree.map(lambda g: g * (c / norm_in), grads), rtol=1e-12
        )


@x64_given
@given(grads=trees(), c=st.sampled_from([0.1, 1.0, 10.0]))
def test_clip_by_layer_norm_bounds_every_layer(x64, grads, c):
    out, state = _jit_apply(optim.clip_by_layer_norm, c, grads, grads)
    before, after = _np_layer_norms(grads), _np_layer_norms(out)
    assert np.all(after <= c * (1 + 1e-6))
    for name, n_in in zip(optim.layer_names(grads), before):
        if n_in <= c:  # this layer is below the threshold: untouched
            chex.assert_trees_all_equal(out[name], grads[name])
        else:  # rescaled to norm c, direction kept (float64 tolerance)
            expect = jax.tree.map(lambda g, s=c / n_in: g * s, grads[name])
            chex.assert_trees_all_close(out[name], expect, rtol=1e-12)
    np.testing.assert_array_equal(state.clipped, before > c)


@x64_given
@given(grads=trees(), delta=st.sampled_from([0.01, 0.5, 2.0]))
def test_clip_by_value_is_elementwise(x64, grads, delta):
    out, state = _jit_apply(optim.clip_by_value, delta, grads, grads)
    chex.assert_trees_all_equal(out, jax.tree.map(lambda g: np.clip(g, -delta, delta), grads))
    names = optim.layer_names(grads)
    expect_clipped = [
        any(np.any(np.abs(x) > delta) for x in jax.tree.leaves(grads[n])) for n in names
    ]
    np.testing.assert_array_equal(state.clipped, expect_clipped)
    if max(float(np.max(np.abs(x))) for x in jax.tree.leaves(grads)) <= delta:
        chex.assert_trees_all_equal(out, grads)


def _np_agc(g, w, lam, eps):
    """NumPy AGC of one leaf (Brock et al. 2021), units = columns of a kernel, whole vector else."""
    g, w = np.asarray(g), np.asarray(w)
    axis = 0 if g.ndim == 2 else None
    gn = np.sqrt(np.sum(g**2, axis=axis, keepdims=True))
    wn = np.maximum(np.sqrt(np.sum(w**2, axis=axis, keepdims=True)), eps)
    return np.where(gn / wn > lam, lam * wn * g / np.maximum(gn, 1e-300), g), np.any(gn / wn > lam)


@x64_given
@given(pair=tree_pairs(), lam=st.sampled_from([0.01, 0.1, 1.0]))
def test_adaptive_grad_clip_matches_paper_rule_and_spares_readout(x64, pair, lam):
    grads, params = pair
    out, state = _jit_apply(optim.adaptive_grad_clip, lam, grads, params)
    names = optim.layer_names(grads)
    readout = names[-1]
    chex.assert_trees_all_equal(out[readout], grads[readout])  # the last layer is never clipped
    for n in names[:-1]:
        flags = []
        for path_g, gp in zip(
            jax.tree_util.tree_leaves_with_path(grads[n]), jax.tree.leaves(params[n])
        ):
            expect, hit = _np_agc(path_g[1], gp, lam, 1e-3)
            got = jax.tree_util.tree_leaves_with_path(out[n])
            got = dict((jax.tree_util.keystr(p), v) for p, v in got)[
                jax.tree_util.keystr(path_g[0])
            ]
            np.testing.assert_allclose(got, expect, rtol=1e-12, atol=0)  # float64 rounding
            flags.append(hit)
        assert bool(state.clipped[names.index(n)]) == any(flags)
    assert not bool(state.clipped[-1])
    # unclipped=None is exactly optax's AGC on every layer
    out_all, _ = _jit_apply(AGC_ALL, lam, grads, params)
    ref, _ = _jit_apply(optax.adaptive_grad_clip, lam, grads, params)
    chex.assert_trees_all_close(out_all, ref, rtol=1e-12)


def test_adaptive_grad_clip_names_and_params_errors():
    p = {"dense_0": {"kernel": jnp.ones((2, 2))}, "dense_1": {"kernel": jnp.ones((2, 1))}}
    with pytest.raises(ValueError, match=r"unclipped layers \['head'\] are not layers"):
        optim.adaptive_grad_clip(0.1, unclipped="head").init(p)
    tx = optim.adaptive_grad_clip(0.1, unclipped=["dense_0"])
    out, state = tx.update(jax.tree.map(lambda x: 100 * x, p), tx.init(p), p)
    np.testing.assert_array_equal(out["dense_0"]["kernel"], 100 * np.ones((2, 2)))
    np.testing.assert_array_equal(state.clipped, [False, True])
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(p, tx.init(p))


CLIPPERS = {
    "clip_by_value": lambda c: optim.clip_by_value(c),
    "clip_by_global_norm": lambda c: optim.clip_by_global_norm(c),
    "clip_by_layer_norm": lambda c: optim.clip_by_layer_norm(c),
    "adaptive_grad_clip": lambda c: optim.adaptive_grad_clip(c, unclipped=None),
}


TELEMETRY_CHAINS = {
    k: functools.partial(
        lambda c, f: optax.chain(optim.monitor_grad_stats(), f(c), optax.sgd(0.1)), f=f
    )
    for k, f in CLIPPERS.items()
}


@x64_given
@given(grads=trees(), c=st.sampled_from([0.05, 1.0]))
@pytest.mark.parametrize("kind", sorted(CLIPPERS))
def test_telemetry_equals_direct_norms(x64, kind, grads, c):
    _, state = _jit_apply(TELEMETRY_CHAINS[kind], c, grads, jax.tree.map(lambda g: g + 1.0, grads))
    tele = optim.telemetry(state)
    expect = _np_layer_norms(grads)
    # float64 sums of squares in a different order: rtol 1e-12
    np.testing.assert_allclose(tele[f"{kind}/layer_norms"], expect, rtol=1e-12)
    np.testing.assert_allclose(tele[f"{kind}/global_norm"], _global_norm(grads), rtol=1e-12)
    np.testing.assert_allclose(tele["grad_stats/layer_norms"], expect, rtol=1e-12)
    assert tele[f"{kind}/clipped"].shape == expect.shape
    assert tele[f"{kind}/clipped"].dtype == jnp.bool_
    if kind == "clip_by_global_norm":
        assert np.all(np.asarray(tele[f"{kind}/clipped"]) == (_global_norm(grads) > c))
    if kind == "clip_by_layer_norm":
        np.testing.assert_array_equal(tele[f"{kind}/clipped"], expect > c)


@pytest.mark.parametrize("kind", sorted(CLIPPERS))
def test_every_clipper_jits_keeps_structure_and_is_finite(kind):
    params = {"dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    grads = jax.tree.map(lambda x: 7.0 * jnp.ones_like(x), params)
    tx = CLIPPERS[kind](0.5)
    state = tx.init(params)
    out, new_state = jax.jit(tx.update)(grads, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, grads)
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    chex.assert_tree_all_finite(out)
    assert bool(new_state.clipped.all())


@pytest.mark.parametrize("kind", sorted(CLIPPERS))
@pytest.mark.parametrize("bad", [jnp.inf, -jnp.inf, jnp.nan], ids=["inf", "-inf", "nan"])
def test_a_non_finite_gradient_gives_a_zero_update_counted_in_the_telemetry(kind, bad):
    """The rule of every clipping transform: the update of a layer holding a NaN or an infinity
    is zero (clip_by_global_norm: the whole update; clip_by_value clips +-inf to +-delta), the
    other layers are clipped as usual, and nonfinite_count counts such updates."""
    params = {
        "dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)},
        "dense_1": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)},
    }
    grads = jax.tree.map(lambda x: 7.0 * jnp.ones_like(x), params)
    grads["dense_0"]["kernel"] = grads["dense_0"]["kernel"].at[1, 0].set(bad)
    tx = CLIPPERS[kind](0.5)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step in (1, 2):
        out, state = update(grads, state, params)
        chex.assert_tree_all_finite(out)
        value_clips_inf = kind == "clip_by_value" and not jnp.isnan(bad)
        if value_clips_inf:  # the rule itself makes +-inf finite: nothing to count
            np.testing.assert_array_equal(out["dense_0"]["kernel"][1, 0], np.sign(bad) * 0.5)
            assert int(optim.telemetry(state)[f"{kind}/nonfinite_count"]) == 0
            continue
        np.testing.assert_array_equal(out["dense_0"]["kernel"], 0.0)
        np.testing.assert_array_equal(out["dense_0"]["bias"], 0.0)  # the whole layer
        healthy = np.asarray(out["dense_1"]["kernel"])
        if kind == "clip_by_global_norm":
            np.testing.assert_array_equal(healthy, 0.0)  # no direction: the step is skipped
        else:
            assert np.all(healthy != 0) and np.all(np.abs(healthy) <= 7.0)
        assert int(optim.telemetry(state)[f"{kind}/nonfinite_count"]) == step
    # optax's own clipping makes the update NaN (inf * c / inf): what the rule replaces
    if kind == "clip_by_global_norm":
        raw, _ = optax.clip_by_global_norm(0.5).update(grads, optax.EmptyState())
        assert bool(jnp.isnan(raw["dense_0"]["kernel"][1, 0]))


def test_clip_thresholds_can_be_traced_and_vmapped():
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])}  # layer norms 5, 12; global 13

    def run(c):
        tx = optax.chain(optim.clip_by_layer_norm(c), optim.clip_by_global_norm(2 * c))
        out, state = _apply(tx, grads)
        return out, optim.telemetry(state)

    cs = jnp.array([1.0, 6.0, 100.0])
    out, tele = jax.jit(jax.vmap(run))(cs)
    for i, c in enumerate([1.0, 6.0, 100.0]):
        single, single_tele = run(c)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], out), single, rtol=1e-6)
        np.testing.assert_array_equal(tele["clip_by_layer_norm/clipped"][i], np.array([5, 12]) > c)
        chex.assert_trees_all_close(jax.tree.map(lambda x, i=i: x[i], tele), single_tele, rtol=1e-6)
    np.testing.assert_allclose(out["b"][0], [1.0], rtol=1e-6)  # float32


def test_telemetry_walks_wrappers_and_numbers_repeats():
    params = {"dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    tx = optax.chain(
        optax.masked(optim.clip_by_layer_norm(1.0), {"dense_0": {"kernel": True, "bias": False}}),
        optax.apply_if_finite(optim.clip_by_value(0.5), max_consecutive_errors=3),
        optax.inject_hyperparams(optim.clip_by_global_norm)(max_norm=0.25),
        optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
    )
    state = tx.init(params)
    _, state = jax.jit(tx.update)(jax.tree.map(lambda x: 2 * x, params), state, params)
    tele = optim.telemetry(state)
    np.testing.assert_allclose(tele["clip_by_layer_norm/layer_norms"], [4.0], rtol=1e-6)
    # kernel clipped to norm 1 by the masked clipper, bias (norm sqrt(8)) passed through: 3
    np.testing.assert_allclose(tele["clip_by_value/global_norm"], 3.0, rtol=1e-6)
    np.testing.assert_allclose(tele["hyperparams/max_norm"], 0.25)
    np.testing.assert_allclose(tele["hyperparams_1/learning_rate"], 0.1)
    assert int(tele["apply_if_finite/total_notfinite"]) == 0
    # a NaN gradient is zeroed by the first clipper (the rule of every gradflow clipping
    # transform) and counted there, so the guard behind it sees finite updates
    _, state = tx.update(
        {"dense_0": {"kernel": jnp.full((2, 2), jnp.nan), "bias": jnp.ones(2)}}, state, params
    )
    tele = optim.telemetry(state)
    assert int(tele["clip_by_layer_norm/nonfinite_count"]) == 1
    assert int(tele["apply_if_finite/total_notfinite"]) == 0
    assert optim.telemetry(optax.sgd(0.1).init(params)) == {}


# --------------------------------------------------------------------------------------------------
# weight decay
# --------------------------------------------------------------------------------------------------


@x64_given
@given(pair=tree_pairs(), lam=st.sampled_from([0.0, 1e-3, 0.5]))
def test_l1_decay_adds_sign_on_masked_leaves_only(x64, pair, lam):
    grads, params = pair
    out, _ = _jit_apply(optim.add_l1_decay, lam, grads, params)
    mask = optim.decay_mask(params)
    expect = jax.tree.map(lambda g, w, m: g + lam * np.sign(w) if m else g, grads, params, mask)
    chex.assert_trees_all_close(out, expect, rtol=1e-15, atol=0)  # one float64 add
    out_all, _ = _jit_apply(L1_ALL, lam, grads, params)
    chex.assert_trees_all_close(
        out_all, jax.tree.map(lambda g, w: g + lam * np.sign(w), grads, params), rtol=1e-15
    )


def _one_step(tx, grads, params):
    updates, _ = _apply(tx, grads, params)
    return updates


def test_coupled_and_decoupled_l2_agree_for_sgd_differ_for_adam(x64):
    key = jax.random.key(0)
    params = {
        "dense_0": {"kernel": jax.random.normal(key, (4, 3), jnp.float64), "bias": jnp.ones(3)},
        "dense_1": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.full((2,), -1.0)},
    }
    grads = jax.tree.map(lambda p: 0.1 * jnp.cos(p), params)
    wd, lr = 0.1, 0.05
    sgd_c = _one_step(optim.coupled_l2("sgd", wd, lr), grads, params)
    sgd_d = _one_step(optim.decoupled_l2("sgd", wd, lr), grads, params)
    chex.assert_trees_all_close(sgd_c, sgd_d, rtol=1e-14)  # P = I: same update up to rounding
    expect = jax.tree.map(
        lambda g, p, m: -lr * (g + wd * p * m), grads, params, optim.decay_mask(params)
    )
    chex.assert_trees_all_close(sgd_c, expect, rtol=1e-14)
    adam_c = _one_step(optim.coupled_l2("adam", wd, lr), grads, params)
    adam_d = _one_step(optim.decoupled_l2(optax.scale_by_adam(), wd, lr), grads, params)
    diff = np.abs(np.asarray(adam_c["dense_1"]["kernel"] - adam_d["dense_1"]["kernel"]))
    assert np.all(diff > 1e-3)
    # decoupled Adam is AdamW
    adamw = optax.adamw(lr, weight_decay=wd, mask=optim.decay_mask)
    chex.assert_trees_all_close(adam_d, _one_step(adamw, grads, params), rtol=1e-14)
    chex.assert_trees_all_equal(adam_c["dense_0"]["bias"], adam_d["dense_0"]["bias"])


def test_decay_mask_spares_biases_and_norm_scales():
    params = {
        "dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
        "LayerNorm_0": {"scale": jnp.ones(3), "bias": jnp.ones(3)},
        "BatchNorm_0": {"scale": jnp.ones(3), "bias": jnp.ones(3)},
        "lstm": {
            "hi": {"kernel": jnp.ones((3, 3))},
            "w_rec": jnp.ones((3, 3)),
            "gain": jnp.ones(3),
        },
    }
    assert optim.decay_mask(params) == {
        "dense_0": {"kernel": True, "bias": False},
        "LayerNorm_0": {"scale": False, "bias": False},
        "BatchNorm_0": {"scale": False, "bias": False},
        "lstm": {"hi": {"kernel": True}, "w_rec": True, "gain": False},
    }
    custom = functools.partial(optim.decay_mask, decay=("kernel", "gain"), no_decay=("w_rec",))
    assert custom(params)["lstm"] == {"hi": {"kernel": True}, "w_rec": False, "gain": True}
    out, _ = _apply(optim.add_l2_decay(1.0), jax.tree.map(jnp.zeros_like, params), params)
    np.testing.assert_array_equal(out["LayerNorm_0"]["scale"], np.zeros(3))
    np.testing.assert_array_equal(out["dense_0"]["kernel"], np.ones((2, 3)))
    with pytest.raises(TypeError, match="sequences of leaf names"):
        optim.decay_mask(params, no_decay="bias")


def test_weight_decay_can_be_traced():
    params = {"dense_0": {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([3.0, 3.0])}}
    grads = jax.tree.map(jnp.zeros_like, params)

    def step(lam):
        tx = optax.chain(optim.add_l1_decay(lam), optim.add_l2_decay(lam))
        return _one_step(tx, grads, params)

    out = jax.vmap(step)(jnp.array([0.0, 0.5]))
    np.testing.assert_allclose(out["dense_0"]["kernel"][1], [[1.0, -1.5]], rtol=1e-6)
    np.testing.assert_array_equal(out["dense_0"]["bias"], np.zeros((2, 2)))


# --------------------------------------------------------------------------------------------------
# monitor and optimizers
# --------------------------------------------------------------------------------------------------


def test_monitor_is_identity_and_tracks_ema(x64):
    tx = optim.monitor_grad_stats(decay=0.5)
    params = {"dense_0": {"kernel": jnp.zeros((1, 2))}, "dense_1": {"kernel": jnp.zeros((2, 1))}}
    state = tx.init(params)
    seq = [(3.0, 1.0), (1.0, 5.0), (2.0, 2.0)]
    ema = None
    for a, b in seq:
        g = {
            "dense_0": {"kernel": jnp.array([[a, 0.0]])},
            "dense_1": {"kernel": jnp.array([[b], [0]])},
        }
        out, state = jax.jit(tx.update)(g, state)
        chex.assert_trees_all_equal(out, g)
        ema = np.array([a, b]) if ema is None else 0.5 * ema + 0.5 * np.array([a, b])
        np.testing.assert_allclose(state.layer_norms, [a, b], rtol=1e-15)
        np.testing.assert_allclose(state.ema_layer_norms, ema, rtol=1e-15)
    assert int(state.count) == 3


def test_make_optimizer_matches_optax_and_names():
    params = {"dense_0": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones(3)}}
    grads = jax.tree.map(lambda p: jnp.sin(p) + 0.5, params)
    pairs = {
        "sgd": optax.sgd(0.1),
        "momentum": optax.sgd(0.1, momentum=0.9),
        "nesterov": optax.sgd(0.1, momentum=0.9, nesterov=True),
        "adam": optax.adam(0.1),
        "rmsprop": optax.rmsprop(0.1),
        "adagrad": optax.adagrad(0.1),
    }
    assert set(pairs) == set(optim.optimizer_names())
    for name, ref in pairs.items():
        ours, theirs = optim.make_optimizer(name, 0.1), ref
        s1, s2 = ours.init(params), theirs.init(params)
        for _ in range(2):
            u1, s1 = ours.update(grads, s1, params)
            u2, s2 = theirs.update(grads, s2, params)
            chex.assert_trees_all_close(u1, u2, rtol=1e-6, atol=1e-7)  # float32, same ops
    adamw = optim.make_optimizer("adam", 0.1, weight_decay=0.01, decoupled=True)
    ref = optax.adamw(0.1, weight_decay=0.01, mask=optim.decay_mask)
    chex.assert_trees_all_close(_one_step(adamw, grads, params), _one_step(ref, grads, params))


def test_bad_hyperparameters_raise_clear_errors():
    with pytest.raises(ValueError, match=r"max_norm must be positive .* got -1\.0"):
        optim.clip_by_global_norm(-1.0)
    with pytest.raises(ValueError, match="max_norm must be positive"):
        optim.clip_by_layer_norm(0.0)
    with pytest.raises(ValueError, match="max_delta must be positive"):
        optim.clip_by_value(float("nan"))
    with pytest.raises(ValueError, match="clipping must be positive"):
        optim.adaptive_grad_clip(-0.01)
    with pytest.raises(ValueError, match="eps must be positive"):
        optim.adaptive_grad_clip(0.01, eps=0.0)
    with pytest.raises(ValueError, match=r"weight_decay must be a finite number >= 0, got -0\.1"):
        optim.add_l1_decay(-0.1)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        optim.add_l2_decay(jnp.array([0.1, -0.2]))
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        optim.make_optimizer("sgd", 0.1, weight_decay=-1.0)
    with pytest.raises(ValueError, match=r"decay must lie in \[0, 1\)"):
        optim.monitor_grad_stats(1.0)
    with pytest.raises(ValueError, match="Unknown optimizer 'adamax'; valid names: sgd, momentum"):
        optim.make_optimizer("adamax", 0.1)
    with pytest.raises(TypeError, match=r"'sgd' got unexpected hyperparameters \['momentum'\]"):
        optim.make_optimizer("sgd", 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="momentum must lie in"):
        optim.make_optimizer("momentum", 0.1, momentum=1.5)
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        optim.make_optimizer("adam", -1e-3)
    with pytest.raises(TypeError, match="max_norm must be a real number"):
        optim.clip_by_global_norm("1.0")
    with pytest.raises(TypeError, match="direction must be an optimizer name"):
        optim.coupled_l2(optax.adam, 0.1, 0.1)
    # a schedule is a valid learning rate
    optim.make_optimizer("sgd", optax.constant_schedule(0.1))


def test_bad_trees_masks_and_states_raise():
    params = {"dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
    for bad in (3, None, "x"):
        with pytest.raises(TypeError, match=r"params must be a pytree of arrays"):
            optim.layer_names(bad)
        with pytest.raises(TypeError, match=r"params must be a pytree of arrays"):
            optim.decay_mask(bad)
    with pytest.raises(TypeError, match=r"tree must hold real arrays; the leaf at \"\['a'\]\""):
        optim.layer_norms({"a": "b"})
    with pytest.raises(TypeError, match=r"decay must be a sequence of leaf names"):
        optim.decay_mask(params, decay=3)
    for tx in (optim.add_l1_decay, optim.add_l2_decay):
        with pytest.raises(TypeError, match=r"mask must be None \(decay every leaf\), a callable"):
            tx(1e-4, mask=3)
    with pytest.raises(TypeError, match=r"opt_state must be an optax state .* got 'x'"):
        optim.telemetry("x")
    # one array is a tree of one layer; a tree of bools or a callable is a mask; traced leaves pass
    assert optim.layer_names(jnp.ones(3)) == ("",)
    optim.add_l2_decay(1e-4, mask={"dense_0": {"kernel": True, "bias": np.bool_(False)}})
    norms = jax.jit(optim.layer_norms)(params)
    np.testing.assert_allclose(norms, [np.sqrt(4.0)], rtol=1e-6)
    assert optim.telemetry(None) == {}


# --------------------------------------------------------------------------------------------------
# layers of the researcher's own models: forward order from one traced call
# --------------------------------------------------------------------------------------------------


def _user(name):
    import user_models

    return user_models.FACTORIES[name](jax.random.key(2))


def _optimizer_params(um):
    """The parameter pytree an optimizer of this model sees."""
    from flax import nnx

    if um.variables is None:  # NNX
        return nnx.state(um.model, nnx.Param)
    if isinstance(um.variables, dict) and "params" in um.variables:  # linen
        return um.variables["params"]
    return um.variables  # Equinox (partitioned) or a plain dict


@pytest.mark.parametrize(
    "name, readout",
    [
        ("linen_cnn", "a_head"),
        ("linen_bn_cnn_train", "Dense_0"),
        ("linen_pre_ln_transformer", "head"),
        ("linen_post_ln_transformer", "head"),
        ("linen_scan", "out"),
        ("nnx_mlp", "head"),
        ("nnx_cnn", "head"),
        ("equinox_mlp", "layers/2"),
        ("plain_dict", "w3"),
    ],
)
def test_layer_order_is_the_forward_order_and_agc_spares_the_readout(name, readout):
    um = _user(name)
    order = optim.layer_order(um.model, um.variables, um.x, train=um.train)
    params = _optimizer_params(um)
    # one group per layer the probe reports (a scanned stack is one group: its leaves are shared)
    probe_layers = [n.split("[")[0] for n in um.names]
    assert order.names == tuple(dict.fromkeys(probe_layers))
    assert optim.layer_names(params, layers=order) == order.names
    assert order.names[-1] == readout
    # AGC with a tiny threshold clips every layer but the readout
    grads = jax.tree.map(lambda p: 100.0 * jnp.ones_like(p), params)
    tx = optim.adaptive_grad_clip(1e-3, layers=order)
    out, state = tx.update(grads, tx.init(params), params)
    assert list(np.asarray(state.clipped)) == [True] * (len(order.names) - 1) + [False]
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    readout_out = [
        o
        for (path, _), o in zip(flat, jax.tree.leaves(out))
        if order.groups[optim._path_names(path)] == readout
    ]
    assert readout_out and all(np.all(np.asarray(o) == 100.0) for o in readout_out)


def test_default_grouping_refuses_to_guess_the_readout_of_unordered_names():
    params = {
        "Conv_0": {"kernel": jnp.ones((3, 3, 1, 2))},
        "BatchNorm_0": {"scale": jnp.ones(2)},
        "Dense_0": {"kernel": jnp.ones((2, 3))},
    }
    assert optim.layer_names(params) == ("BatchNorm_0", "Conv_0", "Dense_0")  # sorted: wrong
    with pytest.raises(ValueError, match="last need not be the readout"):
        optim.adaptive_grad_clip(0.01).init(params)
    names = ["Conv_0", "BatchNorm_0", "Dense_0"]
    assert optim.layer_names(params, layers=names) == tuple(names)
    optim.adaptive_grad_clip(0.01, layers=names).init(params)


def test_default_grouping_splits_a_top_level_sequence():
    params = {"layers": [{"weight": jnp.ones((3, 2))}, {"weight": jnp.ones((1, 3))}]}
    assert optim.layer_names(params) == ("layers/0", "layers/1")


def test_layers_by_name_reject_unknown_or_unlisted_leaves():
    params = {"a": {"w": jnp.ones(2)}, "b": {"w": jnp.ones(2)}}
    with pytest.raises(ValueError, match="belongs to none of the layers"):
        optim.layer_names(params, layers=["a"])
    with pytest.raises(ValueError, match="lists a name twice"):
        optim.layer_names(params, layers=["a", "a"])
    with pytest.raises(TypeError, match="layer names"):
        optim.layer_names(params, layers=["a", 3])


def test_agc_unit_axes_follow_the_weight_layout():
    """Equinox/PyTorch (out, in) weights: units are rows; axis=1 by hand skips the bias, and
    layer_order finds the fan-in axes itself."""
    um = _user("equinox_mlp")
    order = optim.layer_order(um.model, um.variables, um.x)
    params = um.variables
    w = params.layers[0].weight  # (8, 4): (out, in)
    assert order.fan_in[("layers", "0", "weight")] == (1,)
    grads = jax.tree.map(jnp.ones_like, params)
    for layers, axis in ((order, None), (["layers/0", "layers/1", "layers/2"], 1)):
        tx = optim.adaptive_grad_clip(1e-3, layers=layers, axis=axis)
        out, _ = tx.update(grads, tx.init(params), params)
        g = out.layers[0].weight
        row_norms = np.linalg.norm(np.asarray(g), axis=1)
        want = 1e-3 * np.maximum(np.linalg.norm(np.asarray(w), axis=1), 1e-3)
        np.testing.assert_allclose(row_norms, want, rtol=1e-5)


def test_decay_mask_reads_nnx_and_equinox_paths():
    from flax import nnx

    class Attn(nnx.Module):
        def __init__(self, rngs):
            self.attn = nnx.MultiHeadAttention(2, 4, rngs=rngs, decode=False)
            self.ln = nnx.LayerNorm(4, rngs=rngs)

    state = nnx.state(Attn(nnx.Rngs(0)), nnx.Param)
    mask = optim.decay_mask(state)
    flat = {optim._path_names(p): m for p, m in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert flat[("attn", "query", "bias")] is False  # (heads, head_dim): rank 2, still a bias
    assert flat[("attn", "query", "kernel")] is True
    assert flat[("ln", "scale")] is False
    custom = optim.decay_mask(state, no_decay=("bias", "scale", "kernel"))
    assert not any(jax.tree.leaves(custom))
    eqx_mask = optim.decay_mask(_user("equinox_mlp").variables)
    assert [bool(m) for m in jax.tree.leaves(eqx_mask)] == [True, False] * 3
