"""Tests for gradflow.models: forward passes against NumPy references, the perturb/sow protocol,
the chain against gradflow.analytic, and argument validation."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scan_helpers
from hypothesis import given
from hypothesis import strategies as st

import gradflow as gf
from gradflow import models

KEY = jax.random.key(0)


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# The models every protocol test runs over: (model, input shape, apply kwargs).
CASES = {
    "chain": (models.Chain(depth=4), (6, 1), {}),
    "mlp": (models.MLP(widths=(7, 7), out=3, activation="tanh"), (6, 5), {}),
    "mlp_batch": (models.MLP(widths=(7, 7), out=3, norm="batch"), (6, 5), {"train": True}),
    "mlp_layer": (models.MLP(widths=(7, 7), out=3, norm="layer"), (6, 5), {}),
    "mlp_residual": (models.MLP(widths=(7, 7), out=3, residual=True), (6, 5), {}),
    "deep_linear": (models.DeepLinear(width=4, depth=3), (6, 5), {}),
    "rnn": (models.RNN(hidden=4, out=2), (3, 5, 2), {}),
    "lstm": (models.RNN(hidden=4, out=2, cell="lstm"), (3, 5, 2), {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_perturb_and_sow_leave_outputs_unchanged(case):
    model, shape, kw = CASES[case]
    x = jax.random.normal(jax.random.key(1), shape)
    variables = model.init(KEY, x)
    # init creates neither perturbations nor intermediates: variables work for any batch size
    assert set(variables) <= {"params", "batch_stats"}
    mutable = ["batch_stats"] if "batch_stats" in variables else []

    @jax.jit
    def plain(variables, x):
        return model.apply(variables, x, mutable=mutable, **kw)[0]

    @jax.jit
    def probed(variables, x):
        perts = models.perturbations(model, variables, x, **kw)
        v = {**variables, "perturbations": perts}
        out, state = model.apply(v, x, mutable=["intermediates", *mutable], **kw)
        return out, state["intermediates"], perts

    out, inter, perts = probed(variables, x)
    assert jax.tree.leaves(perts), "every model perturbs at least one pre-activation"
    assert all(float(jnp.abs(p).max()) == 0.0 for p in jax.tree.leaves(perts))
    assert inter
    chex.assert_trees_all_equal(out, plain(variables, x))  # adding zeros and sowing: no change
    # A different batch size works with the same variables.
    x2 = jax.random.normal(jax.random.key(2), (shape[0] + 3, *shape[1:]))
    assert plain(variables, x2).shape[0] == shape[0] + 3


def test_layer_names_and_parameter_layout():
    mlp = models.MLP(widths=(30, 20), out=10)
    assert mlp.layer_names() == ("dense_0", "dense_1", "dense_2")
    v = mlp.init(KEY, jnp.ones((2, 64)))
    chex.assert_trees_all_equal_shapes(
        v["params"],
        {
            "dense_0": {"kernel": jnp.zeros((64, 30)), "bias": jnp.zeros(30)},
            "dense_1": {"kernel": jnp.zeros((30, 20)), "bias": jnp.zeros(20)},
            "dense_2": {"kernel": jnp.zeros((20, 10)), "bias": jnp.zeros(10)},
        },
    )
    assert [a.name for a in mlp.layer_activations()] == ["relu", "relu", "linear"]
    chain = models.Chain(depth=3)
    assert chain.layer_names() == ("dense_0", "dense_1", "dense_2")
    assert [a.name for a in chain.layer_activations()] == ["sigmoid"] * 3
    deep = models.DeepLinear(width=4, depth=3, out=2)
    v = deep.init(KEY, jnp.ones((1, 5)))
    assert v["params"]["dense_0"]["kernel"].shape == (5, 4)
    assert v["params"]["dense_2"]["kernel"].shape == (4, 2)
    assert "bias" not in v["params"]["dense_1"]
    assert models.RNN(hidden=3, out=1).layer_names() == ("rnn", "readout")
    # list widths are stored as a tuple, so the module stays hashable (jit static argument)
    assert models.MLP(widths=[3, 3], out=2) == models.MLP(widths=(3, 3), out=2)
    assert hash(models.MLP(widths=[3, 3], out=2)) == hash(models.MLP(widths=(3, 3), out=2))


def test_initializers_by_name_and_callable():
    x = jnp.ones((1, 4))
    by_name = models.MLP(widths=(3,), out=2, kernel_init="zeros", bias_init="normal")
    v = by_name.init(KEY, x)
    assert float(jnp.abs(v["params"]["dense_0"]["kernel"]).max()) == 0.0
    ident = models.DeepLinear(width=4, depth=2, kernel_init=gf.initializers.get("scaled_identity"))
    v = ident.init(KEY, x)
    np.testing.assert_array_equal(v["params"]["dense_1"]["kernel"], np.eye(4))


def test_mlp_matches_numpy_reference_with_residual_and_layernorm(x64):
    """Definition of the blocks: z = h W + b, u = LN(z), h' = phi(u) (+ h when widths match)."""
    x = np.random.default_rng(0).normal(size=(5, 3))
    for norm in (None, "layer"):
        model = models.MLP(widths=(4, 4, 4), out=2, activation="tanh", norm=norm, residual=True)
        v = _f64(model.init(KEY, jnp.asarray(x)))
        p = jax.tree.map(np.asarray, v["params"])
        h = x
        for i in range(3):
            z = h @ p[f"dense_{i}"]["kernel"] + p[f"dense_{i}"]["bias"]
            if norm == "layer":
                mu, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
                z = (z - mu) / np.sqrt(var + 1e-6) * p[f"dense_{i}"]["norm"]["scale"]
                z = z + p[f"dense_{i}"]["norm"]["bias"]
            # the first block maps width 3 -> 4: no skip there; blocks 1, 2 have skips
            h = np.tanh(z) + (h if i > 0 else 0.0)
        ref = h @ p["dense_3"]["kernel"] + p["dense_3"]["bias"]
        out = model.apply(v, jnp.asarray(x))
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


def test_batchnorm_train_and_eval_modes(x64):
    model = models.MLP(widths=(6,), out=2, activation="sigmoid", norm="batch")
    x = jnp.asarray(np.random.default_rng(1).normal(3.0, 2.0, size=(16, 4)))
    v = _f64(model.init(KEY, x))
    p = jax.tree.map(np.asarray, v["params"])
    out, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
    z = np.asarray(x) @ p["dense_0"]["kernel"] + p["dense_0"]["bias"]
    u = (z - z.mean(0)) / np.sqrt(z.var(0) + models.BATCHNORM_EPSILON)
    ref = _sigmoid(u) @ p["dense_1"]["kernel"] + p["dense_1"]["bias"]
    np.testing.assert_allclose(out, ref, rtol=1e-10, atol=1e-12)
    m = models.BATCHNORM_MOMENTUM
    np.testing.assert_allclose(
        upd["batch_stats"]["dense_0"]["norm"]["mean"], (1 - m) * z.mean(0), rtol=1e-10
    )
    # eval mode uses the running averages (mean 0, variance 1 at init)
    ev = model.apply(v, x, train=False)
    ref_ev = _sigmoid(z / np.sqrt(1 + models.BATCHNORM_EPSILON)) @ p["dense_1"]["kernel"]
    np.testing.assert_allclose(ev, ref_ev + p["dense_1"]["bias"], rtol=1e-10)


def test_perturbation_acts_like_a_bias_shift():
    """The perturbation is added to z: shifting it by e equals shifting the bias by e."""
    model = models.MLP(widths=(5, 5), out=3, activation="tanh", bias_init="normal")
    x = jax.random.normal(jax.random.key(3), (4, 2))
    v = model.init(KEY, x)
    e = jnp.linspace(-0.5, 0.5, 5)
    perts = models.perturbations(model, v, x)
    perts["dense_1"]["z"] = perts["dense_1"]["z"] + e
    shifted = jax.tree.map(lambda a: a, v)
    shifted["params"]["dense_1"]["bias"] = v["params"]["dense_1"]["bias"] + e
    np.testing.assert_allclose(
        model.apply({**v, "perturbations": perts}, x),
        model.apply(shifted, x),
        rtol=1e-6,
        atol=1e-6,
    )


def test_deep_linear_scaled_identity_gain():
    """Seed 002: W_l = 2I over L layers multiplies the input by 2^L."""
    model = models.DeepLinear(
        width=3, depth=10, kernel_init=gf.initializers.get("scaled_identity", gain=2.0)
    )
    x = jnp.array([[1.0, -0.5, 0.25]])
    np.testing.assert_allclose(model.apply(model.init(KEY, x), x), 2.0**10 * x, rtol=1e-6)


@pytest.fixture(scope="module")
def chain_fns():
    """Jitted chain forward and gradients (model + autodiff), compiled once per dtype."""
    model = models.Chain(depth=6)

    def f(w, b, x, c):
        v = models.chain_params(w, b)
        xx = x[:, None]
        perts = models.perturbations(model, v, xx)

        def cost(params, perts):
            out = model.apply({"params": params, "perturbations": perts}, xx)
            return jnp.sum(c * out[:, 0]), out[:, 0]

        (_, out), (gp, gz) = jax.value_and_grad(cost, argnums=(0, 1), has_aux=True)(
            v["params"], perts
        )
        gw, gb = models.chain_weights({"params": gp})
        dz = jnp.stack([gz[f"dense_{j}"]["z"][:, 0] for j in range(6)], axis=-1)
        return out, gw, gb, dz

    def ref(w, b, x, c):
        return (
            gf.analytic.chain_forward(w, b, x, "sigmoid").a[..., -1],
            gf.analytic.chain_grads(w, b, x, c, "sigmoid"),
        )

    return jax.jit(f), jax.jit(ref)


@given(
    w=st.lists(st.floats(-3, 3), min_size=6, max_size=6),
    b=st.lists(st.floats(-2, 2), min_size=6, max_size=6),
    x=st.lists(st.floats(-2, 2), min_size=4, max_size=4),
    c=st.lists(st.floats(-1, 1), min_size=4, max_size=4),
)
def test_chain_matches_closed_form(chain_fns, w, b, x, c):
    """Chain + autodiff == gradflow.analytic's closed form (Nielsen ch. 5), in float64."""
    with jax.enable_x64(True):
        w, b, x, c = (jnp.asarray(v, jnp.float64) for v in (w, b, x, c))
        model_fn, ref_fn = chain_fns
        out, gw, gb, dz = model_fn(w, b, x, c)
        a_last, ref = ref_fn(w, b, x, c)
        np.testing.assert_allclose(out, a_last, rtol=1e-13, atol=1e-15)
        # per-example dC/dz_j is the per-example bias gradient
        np.testing.assert_allclose(dz, ref.bias, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gb, ref.bias.sum(0), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(gw, ref.weight.sum(0), rtol=1e-10, atol=1e-14)


def test_chain_params_roundtrip_and_exploding_chain():
    w, b = gf.analytic.exploding_chain(8, 0.5)
    v = models.chain_params(w, b)
    w2, b2 = models.chain_weights(v)
    chex.assert_trees_all_equal((w2, b2), (w, b))
    model = models.Chain(depth=8)
    _, state = model.apply(v, jnp.array([[0.5]]), mutable=["intermediates"])
    z = [state["intermediates"][f"dense_{j}"]["preact"][0] for j in range(8)]
    np.testing.assert_array_equal(np.concatenate(z).ravel(), np.zeros(8))  # z_j = 0 exactly
    with pytest.raises(ValueError, match="same shape"):
        models.chain_params(jnp.ones(3), jnp.ones(4))


def test_rnn_matches_manual_unroll(x64):
    """Vanilla: h_t = phi(x_t W + b + h_{t-1} U); LSTM with the forget-gate bias; readout of h_T."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 6, 2)))
    for cell in ("vanilla", "lstm"):
        model = models.RNN(hidden=4, out=2, cell=cell, forget_bias=1.5)
        v = _f64(model.init(KEY, x))
        p = jax.tree.map(np.asarray, v["params"])
        c = p["rnn"]["cell"]
        h = np.zeros((3, 4))
        cs = np.zeros((3, 4))
        for t in range(6):
            xt = np.asarray(x[:, t])
            if cell == "vanilla":
                h = np.tanh(xt @ c["i"]["kernel"] + c["i"]["bias"] + h @ c["h"]["kernel"])
            else:

                def g(n, xt=xt, h=h, c=c):
                    return xt @ c[f"i{n}"]["kernel"] + h @ c[f"h{n}"]["kernel"] + c[f"h{n}"]["bias"]

                i, f, o = _sigmoid(g("i")), _sigmoid(g("f") + 1.5), _sigmoid(g("o"))
                cs = f * cs + i * np.tanh(g("g"))
                h = o * np.tanh(cs)
        ref = h @ p["readout"]["kernel"] + p["readout"]["bias"]
        np.testing.assert_allclose(model.apply(v, x), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(batch, time, features\)"):
        models.RNN(hidden=4, out=1).init(KEY, jnp.ones((3, 2)))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: models.MLP(widths=(), out=10), ValueError, "widths is empty"),
        (lambda: models.MLP(widths=(30, 0), out=10), ValueError, r"widths\[1\] must be a positive"),
        (lambda: models.MLP(widths=(30, -2), out=10), ValueError, r"widths\[1\]"),
        (lambda: models.MLP(widths=30, out=10), TypeError, "widths must be a sequence"),
        (lambda: models.MLP(widths=(3.5,), out=10), TypeError, "positive int"),
        (lambda: models.MLP(widths=(3,), out=0), ValueError, "out must be a positive int"),
        (lambda: models.MLP(widths=(3,), out=2, activation="sigmod"), ValueError, "sigmoid"),
        (lambda: models.MLP(widths=(3,), out=2, kernel_init="he_nrmal"), ValueError, "he_normal"),
        (lambda: models.MLP(widths=(3,), out=2, bias_init=3), TypeError, "initializer name"),
        (lambda: models.MLP(widths=(3,), out=2, norm="group"), ValueError, "unknown norm 'group'"),
        (lambda: models.MLP(widths=(3,), out=2, residual="yes"), TypeError, "residual must be"),
        (lambda: models.Chain(depth=0), ValueError, "depth must be a positive int"),
        (lambda: models.Chain(depth=True), TypeError, "depth must be a positive int"),
        (lambda: models.DeepLinear(width=0, depth=3), ValueError, "width must be a positive"),
        (lambda: models.DeepLinear(width=3, depth=3, out=-1), ValueError, "out must be"),
        (lambda: models.RNN(hidden=4, out=1, cell="gru"), ValueError, "unknown cell 'gru'"),
        (lambda: models.RNN(hidden=0, out=1), ValueError, "hidden must be a positive"),
        (lambda: models.RNN(hidden=4, out=1, activation="tanhh"), ValueError, "unknown activ"),
        (lambda: models.DenseBlock(features=0), ValueError, "features must be a positive"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_residual_block_needs_matching_widths():
    block = models.DenseBlock(features=3, residual=True)
    with pytest.raises(ValueError, match="input width == features"):
        block.init(KEY, jnp.ones((1, 4)))


# --------------------------------------------------------------- runs of blocks compiled once

# Networks with runs of identical square hidden blocks (model, input width, apply kwargs).
STACKS = {
    "mlp_tanh": (models.MLP(widths=(6,) * 5, out=3, activation="tanh"), 6, {}),
    "mlp_first_block_differs": (
        models.MLP(widths=(6,) * 4, out=3, kernel_init="lecun_uniform", bias_init="normal"),
        4,
        {},
    ),
    "mlp_batch": (models.MLP(widths=(6,) * 4, out=3, norm="batch"), 6, {"train": True}),
    "mlp_layer_residual": (
        models.MLP(widths=(6,) * 4, out=3, norm="layer", residual=True, bias_init="normal"),
        5,
        {},
    ),
    "mlp_two_runs": (
        models.MLP(widths=(5, 5, 7, 7, 7), out=2, kernel_init="xavier_uniform"),
        3,
        {},
    ),
    "deep_linear": (models.DeepLinear(width=4, depth=6), 4, {}),  # the readout joins the run
    "deep_linear_bias_identity": (
        models.DeepLinear(
            width=4,
            depth=5,
            out=2,
            use_bias=True,
            bias_init="normal",
            kernel_init=gf.initializers.get("scaled_identity", gain=2.0),
        ),
        3,
        {},
    ),
    "chain": (models.Chain(depth=6), 1, {}),
}


class _Nested(nn.Module):
    """A stack inside another module (its RNG scope has a non-empty path)."""

    inner: nn.Module

    @nn.compact
    def __call__(self, x, *, train=False):
        return self.inner(x, train=train)


_unrolled = scan_helpers.unrolled


@pytest.mark.parametrize("case", sorted(STACKS))
def test_init_draws_flax_s_unrolled_numbers_bit_for_bit(case):
    """Under jit, a run's parameters come from one draw per initializer over the keys Flax
    derives for each layer; they equal Flax's per-layer draws exactly (here jitted and vmapped
    over seeds, as a sweep draws them), so a change in Flax's key derivation shows here."""
    model, width, _ = STACKS[case]
    x = jnp.ones((2, width))
    keys = jax.random.split(jax.random.key(3), 2)
    init = jax.jit(jax.vmap(lambda k: model.init(k, x)))
    new, old = init(keys), _unrolled(lambda: jax.jit(jax.vmap(lambda k: model.init(k, x)))(keys))
    assert jax.tree.structure(new) == jax.tree.structure(old)
    chex.assert_trees_all_equal(new, old)
    chex.assert_trees_all_equal_dtypes(new, old)


@pytest.mark.parametrize("case", ["mlp_layer_residual", "deep_linear_bias_identity"])
def test_init_is_flax_s_eager_jitted_nested_float64_and_with_raw_keys(case):
    """The same numbers as Flax's own per-layer init: eager (op by op, which rounds the normal's
    scale differently from a compiled draw, for Flax's own init too), vmapped eagerly, jitted
    with a raw ``PRNGKey``, nested in another module (a non-empty RNG path), and a callable
    initializer drawing float64."""
    model, width, _ = STACKS[case]
    x = jnp.ones((2, width))
    key, keys = jax.random.key(3), jax.random.split(jax.random.key(4), 2)
    runs = {
        "eager": lambda: model.init(key, x),
        "eager_vmap": lambda: jax.vmap(lambda k: model.init(k, x))(keys),
        "raw_key_nested": lambda: jax.jit(_Nested(model).init)(jax.random.PRNGKey(5), x),
    }
    for name, run in runs.items():
        chex.assert_trees_all_equal(run(), _unrolled(run), custom_message=name)
    with jax.enable_x64(True):  # a user's callable initializer drawing float64
        m = model.clone(kernel_init=lambda k, shape: 0.5 * jax.random.normal(k, shape, "f8"))
        run = lambda: jax.jit(m.init)(key, x)
        new, old = run(), _unrolled(run)
        chex.assert_trees_all_equal(new, old)
        chex.assert_trees_all_equal_dtypes(new, old)
        assert new["params"]["dense_1"]["kernel"].dtype == jnp.float64


@pytest.mark.parametrize(
    ("norm", "kw"),
    [("batch", {"train": True}), ("batch", {"train": True, "mutable": True}), ("layer", {})],
)
def test_init_with_output_and_collections_are_flax_s(norm, kw):
    """init runs a run's forward pass as the apply scan: its output, its sown intermediates
    (when init is asked for them) and BatchNorm's statistics (left as initialised in training
    mode, as Flax's BatchNorm leaves them during init) are those of Flax's unrolled init."""
    m = models.MLP(widths=(6,) * 4, out=3, norm=norm, residual=norm == "layer")
    x = jax.random.normal(jax.random.key(1), (5, 6))

    def run():
        return jax.jit(lambda k: m.init_with_output(k, x, **kw))(jax.random.key(2))

    (out, cols), (ref, ref_cols) = run(), _unrolled(run)
    assert jax.tree.structure(cols) == jax.tree.structure(ref_cols)
    assert ("intermediates" in cols) == (kw.get("mutable") is True)
    chex.assert_trees_all_equal(cols["params"], ref_cols["params"])
    chex.assert_trees_all_equal(cols.get("batch_stats"), ref_cols.get("batch_stats"))
    chex.assert_trees_all_close((out, cols), (ref, ref_cols), rtol=1e-6, atol=1e-7)


def test_flax_child_keys_are_flax_s_own():
    from flax.core.scope import LazyRng

    for rng in (LazyRng.create(jax.random.key(5)), LazyRng.create(jax.random.key(5), "a", 3)):
        names = ["dense_1", "dense_2", "dense_17"]
        for counter in (1, 2):
            keys = models._child_keys(rng, names, counter)
            for t, name in enumerate(names):
                want = LazyRng.create(rng, name, counter).as_jax_rng()
                np.testing.assert_array_equal(
                    jax.random.key_data(keys[t]), jax.random.key_data(want)
                )


@pytest.mark.parametrize("case", sorted(STACKS))
def test_scanned_apply_equals_the_unrolled_blocks(case, x64):
    """Outputs, sown intermediates and updated BatchNorm statistics of the scanned network are
    those of the unrolled one, per layer, in the same collections (float64, to 1e-12)."""
    model, width, kw = STACKS[case]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, width)))
    v = _f64(model.init(KEY, x))
    mutable = ["intermediates", *(["batch_stats"] if "batch_stats" in v else [])]

    def run():
        return model.apply(v, x, mutable=mutable, **kw)

    (out, cols), (ref, ref_cols) = jax.jit(run)(), _unrolled(jax.jit(run))
    assert jax.tree.structure(cols) == jax.tree.structure(ref_cols)
    chex.assert_trees_all_close(out, ref, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_close(cols, ref_cols, rtol=1e-12, atol=1e-14)
    # without mutable collections too
    chex.assert_trees_all_close(
        jax.jit(lambda: model.apply(v, x))(), model.apply(v, x), rtol=1e-12, atol=1e-14
    )


def _count(fn, *args, what="dot_general"):
    return str(jax.make_jaxpr(fn)(*args)).count(what)


def _eqns(fn, *args):
    return len(jax.make_jaxpr(fn)(*args).jaxpr.eqns)


@pytest.mark.parametrize("norm", [None, "batch", "layer"])
def test_a_run_of_identical_blocks_is_traced_once(norm):
    """The traced program does not grow with depth: one scan body for the hidden blocks in
    apply and in init's forward pass, one draw per initializer in init, and one operation per
    variable (not per layer) to cut a run's stacked variables, sown intermediates and updated
    statistics into layers -- in init, apply, apply with intermediates and a training step."""
    x = jnp.ones((2, 5))
    counts = []
    for depth in (4, 12):
        m = models.MLP(widths=(5,) * depth, out=2, activation="tanh", norm=norm)
        v = m.init(KEY, x)
        cols = ["intermediates", *(["batch_stats"] if norm == "batch" else [])]
        counts.append(
            {
                "apply dots": _count(lambda v, m=m: m.apply(v, x), v),
                "init dots": _count(lambda k, m=m: m.init(k, x), KEY),
                "init draws": _count(lambda k, m=m: m.init(k, x), KEY, what="random_bits"),
                "init folds": _count(lambda k, m=m: m.init(k, x), KEY, what="random_fold_in"),
                "init": _eqns(lambda k, m=m: m.init(k, x), KEY),
                "apply": _eqns(lambda v, m=m: m.apply(v, x), v),
                "train": _eqns(lambda v, m=m, c=cols: m.apply(v, x, train=True, mutable=c), v),
            }
        )
    assert counts[0] == counts[1]
    assert counts[0]["apply dots"] == 2  # the scan body and the readout
    assert counts[0]["init dots"] == 3  # the scan body and the readout, one block's own init


def test_compiled_init_and_probe_over_seeds_do_not_grow_with_depth():
    """What XLA compiles, not only what JAX traces: init + probe vmapped over seeds (a sweep's
    program) has as many optimised HLO instructions at depth 12 as at depth 4. Fails when a
    run's stacked variables are cut into layers in a way XLA cannot fold back into the stack
    that apply builds (e.g. slices of a reshape that vmap turned into a transpose)."""
    from gradflow import probes, rng

    x, y = jnp.ones((4, 5)), jnp.arange(4) % 2
    sizes = []
    for depth in (4, 12):
        m = models.MLP(widths=(5,) * depth, out=2, activation="tanh")
        program = jax.jit(jax.vmap(lambda s, m=m: probes.probe(m, m.init(rng.threefry_key(s), x),
                                                                x, y)))  # fmt: skip
        hlo = program.lower(jnp.arange(3, dtype=jnp.uint32)).compile().as_text()
        sizes.append(sum(1 for line in hlo.splitlines() if " = " in line))
    assert sizes[0] == sizes[1], sizes


def test_perturbations_and_missing_variables_unroll_the_blocks():
    """With a "perturbations" collection (mutable or passed in) every block perturbs its own z:
    the blocks run unrolled, as they do when BatchNorm statistics are missing (Flax's error)."""
    m = models.MLP(widths=(5,) * 4, out=2, norm="batch")
    x = jnp.ones((3, 5))
    v = m.init(KEY, x)
    perts = models.perturbations(m, v, x)
    assert sorted(perts) == list(m.layer_names())
    assert _count(lambda v: m.apply(v, x), v, what="scan") == 1
    with_perts = {**v, "perturbations": perts}
    assert _count(lambda v: m.apply(v, x), with_perts, what="scan") == 0
    with pytest.raises(Exception, match="batch_stats"):
        m.apply({"params": v["params"]}, x)
    with pytest.raises(Exception, match="batch_stats"):
        m.apply(v, x, train=True)  # training mode needs mutable statistics


def test_integer_inputs_run_the_first_block_alone():
    """A run that starts at the input: the first block changes the dtype (int -> float), so it
    runs unrolled and the rest of the run is scanned."""
    m = models.MLP(widths=(4, 4, 4), out=2)
    x = jnp.arange(12, dtype=jnp.int32).reshape(3, 4) % 3
    v = m.init(KEY, x)
    chex.assert_trees_all_close(m.apply(v, x), _unrolled(lambda: m.apply(v, x)), rtol=1e-6)
    # a staged init too (its forward pass is the same scan): Flax's variables and output

    def run():
        return jax.jit(lambda k: m.init_with_output(k, x))(KEY)

    (out, cols), (ref, ref_cols) = run(), _unrolled(run)
    chex.assert_trees_all_equal(cols, ref_cols)
    chex.assert_trees_all_close(out, ref, rtol=1e-6)


def test_chain_takes_one_input_feature_and_chain_weights_only_chains():
    chain = models.Chain(depth=3)
    with pytest.raises(ValueError, match=r"its input is \(\.\.\., 1\), got shape \(3, 4\)"):
        chain.init(jax.random.key(0), jnp.ones((3, 4)))  # used to build a (4, 1) kernel silently
    mlp = models.MLP((4,), out=2)
    v = mlp.init(jax.random.key(0), jnp.ones((1, 3)))
    with pytest.raises(ValueError, match=r"dense_0 must hold kernel \(\.\.\., 1, 1\).*\(3, 4\)"):
        models.chain_weights(v)  # used to return numbers
    with pytest.raises(ValueError, match=r"layers must be dense_0 \.\. dense_\{L-1\}, got \['a'\]"):
        models.chain_weights({"params": {"a": {}}})
    with pytest.raises(TypeError, match="variables must be a Chain's variables, got list"):
        models.chain_weights([1])
    w, b = models.chain_weights(chain.init(jax.random.key(0), jnp.ones((2, 1))))
    assert w.shape == b.shape == (3,)
