"""Tests for gradflow.probes: probe == autodiff for every model, Nielsen's speeds on digits,
verdicts on the textbook regimes, gradients through time, reports of every model displayed."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scan_helpers
import user_models
from flax import nnx

import gradflow as gf
from gradflow import losses, models, probes

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def digits():
    return gf.data.load_digits(n_train=1000)


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _init_seeds(model, x, keys):
    """Variables for every key, stacked on a leading axis (eager init: the compiled random ops
    are shared between seeds and models, which keeps the suite fast on CPU)."""
    vs = [model.init(k, x[:1]) for k in keys]
    return jax.tree.map(lambda *a: jnp.stack(a), *vs)


def test_vmap_over_seeds_with_init_inside():
    """The documented pattern: jax.vmap(lambda k: probe(model, model.init(k, x), x, y))(keys)."""
    model = models.MLP(widths=(4, 4), out=3, activation="tanh")
    x = jax.random.normal(KEY, (8, 2))
    y = jnp.arange(8) % 3
    keys = jax.random.split(KEY, 3)
    r = jax.jit(jax.vmap(lambda k: probes.probe(model, model.init(k, x), x, y)))(keys)
    assert r.weight_grad_norm.shape == (3, 3) and r.loss.shape == (3,)
    assert r.layer_names == ("dense_0", "dense_1", "dense_2")
    one = probes.probe(model, model.init(keys[1], x), x, y)
    # two float32 programs (batched and not): ~2e-7 apart here, each ~2e-7 from float64. Both
    # run float32 matmuls (gradflow.config's "highest"); with TF32 (a GPU's default) 2.4e-5.
    np.testing.assert_allclose(r.weight_grad_norm[1], one.weight_grad_norm, rtol=1e-5)
    np.testing.assert_allclose(r.act_var[1], one.act_var, rtol=1e-5)


# ------------------------------------------------------------------------ probe == autodiff

CASES = {
    "chain": (models.Chain(depth=5), (7, 1), "mse", False),
    "mlp_sigmoid": (
        models.MLP(widths=(6, 5), out=3, activation="sigmoid", bias_init="normal"),
        (7, 4),
        "sigmoid_cross_entropy",
        False,
    ),
    # widths (6, 6, 6): dense_1, dense_2 are a run of identical blocks, scanned
    "mlp_relu": (models.MLP(widths=(6, 6, 6), out=3), (7, 4), "softmax_cross_entropy", False),
    "mlp_batch": (
        models.MLP(widths=(6, 6, 6), out=3, activation="tanh", norm="batch"),
        (7, 4),
        "softmax_cross_entropy",
        True,
    ),
    "mlp_layer_residual": (
        models.MLP(widths=(6, 6, 6), out=3, activation="tanh", norm="layer", residual=True),
        (7, 4),
        "mse",
        False,
    ),
    "deep_linear": (models.DeepLinear(width=4, depth=3, out=3), (7, 4), "mse", False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_probe_matches_autodiff(case, x64):
    model, shape, loss, train = CASES[case]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape))
    out_dim = 1 if isinstance(model, models.Chain) else 3
    y = jnp.asarray(rng.integers(0, 3, size=shape[0]), jnp.int32) if out_dim == 3 else None
    y = y if y is not None else jnp.asarray(rng.uniform(size=(shape[0], 1)))
    if loss == "mse" and out_dim == 3:
        y = jnp.asarray(rng.normal(size=(shape[0], 3)))
    v = _f64(model.init(KEY, x))
    report = probes.probe(model, v, x, y, loss=loss, train=train)
    loss_fn = losses.get_loss(loss)
    mutable = ["batch_stats"] if train else []

    # params: jax.grad of the plain model (no perturbations, no sow)
    def cost_params(params):
        out = model.apply({**v, "params": params}, x, train=train, mutable=mutable or False)
        return loss_fn(out[0] if train else out, y)

    g_params = jax.jit(jax.grad(cost_params))(v["params"])
    # pre-activations: jax.grad with respect to the zero perturbations
    perts = models.perturbations(model, v, x, train=train)

    def cost_perts(p):
        v2 = {**v, "perturbations": p}
        out, state = model.apply(v2, x, train=train, mutable=["intermediates", *mutable])
        return loss_fn(out, y), state["intermediates"]

    (c, inter), g_perts = jax.jit(jax.value_and_grad(cost_perts, has_aux=True))(perts)
    np.testing.assert_allclose(report.loss, c, rtol=1e-12)
    names = model.layer_names()
    assert report.layer_names == names
    B = shape[0]
    for i, name in enumerate(names):
        gp = g_params[name]
        np.testing.assert_allclose(
            report.weight_grad_norm[i], np.linalg.norm(gp["kernel"]), rtol=1e-10
        )
        if "bias" in gp:
            np.testing.assert_allclose(
                report.bias_grad_norm[i], np.linalg.norm(gp["bias"]), rtol=1e-8, atol=1e-15
            )
        else:
            assert np.isnan(report.bias_grad_norm[i])  # bias-free layer
        delta = B * np.asarray(g_perts[name]["z"])  # per-example delta (Nielsen)
        dn = np.linalg.norm(delta, axis=-1)
        np.testing.assert_allclose(report.preact_grad_norm[i], dn.mean(), rtol=1e-10)
        np.testing.assert_allclose(report.preact_grad_norm_std[i], dn.std(), rtol=1e-8, atol=1e-15)
        if "bias" in gp and not train:
            # dC/db_l is the batch mean of the per-example deltas
            np.testing.assert_allclose(delta.mean(0), gp["bias"], rtol=1e-10, atol=1e-15)
        h = np.asarray(inter[name]["act"][0])
        u = np.asarray(inter[name]["preact"][0])
        act = model.layer_activations()[i]
        np.testing.assert_allclose(report.act_mean[i], h.mean(), rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(report.act_var[i], h.var(), rtol=1e-10)
        np.testing.assert_allclose(
            report.avg_sq_channel_mean[i], (h.mean(0) ** 2).mean(), rtol=1e-9
        )
        np.testing.assert_allclose(report.avg_channel_var[i], h.var(0).mean(), rtol=1e-10)
        np.testing.assert_allclose(report.preact_sq_mean[i], (u**2).mean(), rtol=1e-10)
        slope = np.abs(np.asarray(act.grad(u))) / act.sup_grad
        np.testing.assert_allclose(report.saturated_frac[i], (slope < 0.01).mean(), atol=1e-12)
        np.testing.assert_allclose(report.dead_frac[i], (slope == 0).all(0).mean(), atol=1e-12)
        np.testing.assert_allclose(
            report.weight_norm[i], np.linalg.norm(v["params"][name]["kernel"]), rtol=1e-12
        )


@pytest.fixture(scope="module")
def nielsen(digits):
    """Nielsen ch. 5 on digits: sigmoid [64, 30, 30, 30, 30, 10], weights N(0, 1/n_in), biases
    N(0, 1), sigmoid cross-entropy, the first 1000 training examples; 20 seeds, vmapped."""
    model = models.MLP(
        widths=(30, 30, 30, 30),
        out=10,
        activation="sigmoid",
        kernel_init="lecun_normal",
        bias_init="normal",
    )
    x, y = digits.x_train, digits.y_train
    keys = jax.random.split(jax.random.key(2024), 20)
    v = _init_seeds(model, x, keys)
    report = jax.vmap(lambda v: probes.probe(model, v, x, y, loss="sigmoid_cross_entropy"))(v)
    return model, x, y, v, report


def test_probe_matches_closed_form_mlp_backprop(nielsen):
    """Nielsen's delta^L = a - y and BP2 (gradflow.analytic.mlp_grads), per example."""
    model, x, y, vs, reports = nielsen
    v = jax.tree.map(lambda a: a[0], vs)
    report = jax.tree.map(lambda a: a[0], reports)
    layers = [v["params"][n] for n in model.layer_names()]
    logits = model.apply(v, x)
    d_aL = jax.nn.sigmoid(logits) - jax.nn.one_hot(y, 10)  # delta^L = a - y on the logits
    g = gf.analytic.mlp_grads(layers, x, d_aL, "sigmoid", linear_readout=True)
    for i, delta in enumerate(g.bias):
        np.testing.assert_allclose(
            report.preact_grad_norm[i], np.linalg.norm(delta, axis=-1).mean(), rtol=1e-4
        )
        np.testing.assert_allclose(
            report.bias_grad_norm[i], np.linalg.norm(delta.mean(0)), rtol=1e-4
        )


# ---------------------------------------------------------------------- Nielsen on digits


def test_nielsen_speeds_increase_toward_the_output_in_every_seed(nielsen):
    """His MNIST draw: hidden-layer speeds 0.003, 0.017, 0.070, 0.285 -- each layer several
    times faster than the one before. On digits, in every one of 20 seeds."""
    _, x, _, _, r = nielsen
    assert x.shape == (1000, 64)
    speeds = np.asarray(r.bias_grad_norm)
    assert speeds.shape == (20, 5)
    ratios = speeds[:, 1:4] / speeds[:, :3]  # consecutive hidden layers
    assert ratios.min() > 3.0, ratios.min()  # measured: min 3.6, median 5 per layer
    median = np.median(speeds[:, :4], axis=0)
    nielsen = np.array([0.003, 0.017, 0.070, 0.285])
    assert np.all((median > nielsen / 2) & (median < nielsen * 2)), median
    assert np.all(gf.report.verdict(r, stat="bias_grad_norm")[:, 0] == "vanishing")


class _UnhashableLoss:
    """A callable loss that cannot be hashed (defines __eq__ only)."""

    def __eq__(self, other):
        return isinstance(other, _UnhashableLoss)

    __hash__ = None

    def __call__(self, out, y):
        return losses.mse(out, y)


def test_probe_with_an_unhashable_loss_still_works():
    model = models.MLP(widths=(4,), out=2)
    x, y = jnp.ones((3, 2)), jnp.zeros((3, 2))
    v = model.init(KEY, x)
    r = probes.probe(model, v, x, y, loss=_UnhashableLoss())
    np.testing.assert_allclose(r.loss, probes.probe(model, v, x, y, loss="mse").loss, rtol=1e-6)


class _Custom(nn.Module):
    """A user's module built from DenseBlocks, without layer_names(): forward order is found."""

    @nn.compact
    def __call__(self, x):
        h = models.DenseBlock(4, activation="tanh", name="block_10")(x)
        h = models.MLP(widths=(3,), out=3, activation="tanh", name="inner")(h)
        return models.DenseBlock(2, name="a_head")(h)


def test_probe_finds_the_layers_of_a_custom_module():
    model = _Custom()
    x, y = jax.random.normal(KEY, (5, 2)), jnp.array([0, 1, 1, 0, 1])
    v = model.init(KEY, x)
    r = probes.probe(model, v, x, y)
    assert r.layer_names == ("block_10", "inner/dense_0", "inner/dense_1", "a_head")
    g = jax.grad(lambda p: losses.softmax_cross_entropy(model.apply({"params": p}, x), y))(
        v["params"]
    )
    np.testing.assert_allclose(
        r.weight_grad_norm[1], jnp.linalg.norm(g["inner"]["dense_0"]["kernel"]), rtol=1e-5
    )
    sub = probes.probe(model, v, x, y, layers=["inner/dense_1", "block_10"])
    assert sub.layer_names == ("inner/dense_1", "block_10")
    np.testing.assert_allclose(sub.weight_grad_norm, r.weight_grad_norm[jnp.array([2, 0])])
    with pytest.raises(ValueError, match=r"unknown layers \['dense_0'\]; the model has"):
        probes.probe(model, v, x, y, layers=["dense_0"])


def test_probe_is_cached_per_model():
    """New variables of the same shapes, and an equal model object, trace the model no more."""
    traces = []

    class Counted(nn.Module):
        @nn.compact
        def __call__(self, x):
            traces.append(x.shape)
            return nn.Dense(2)(jnp.tanh(nn.Dense(4)(x)))

    x, y = jnp.ones((3, 2)), jnp.array([0, 1, 1])
    v0, v1 = Counted().init(KEY, x), Counted().init(jax.random.key(1), x)
    n0 = len(traces)
    probes.probe(Counted(), v0, x, y)
    n1 = len(traces)
    assert n1 > n0
    probes.probe(Counted(), v1, x, y)
    assert len(traces) == n1


# ------------------------------------------------------------------------ scanned layers


_unrolled = scan_helpers.unrolled


@pytest.mark.parametrize(
    "model, train",
    [
        (models.MLP(widths=(8,) * 6, out=3, activation="tanh"), False),
        (models.MLP(widths=(8,) * 6, out=3, activation="relu", norm="batch"), True),
        (models.MLP(widths=(8,) * 6, out=3, norm="layer", residual=True), False),
        (models.DeepLinear(width=8, depth=6, out=3, use_bias=True), False),
    ],
)
def test_scanned_probe_equals_jax_grad_and_the_unrolled_probe(model, train):
    """float32: the probe of a network whose hidden blocks run as one scan reports the same
    layers as the unrolled network, with gradient norms equal to jax.grad's (rtol 1e-5) and
    every field within float32 rounding of the unrolled probe's."""
    x = jax.random.normal(jax.random.key(1), (16, 8))
    y = jnp.arange(16) % 3
    keys = jax.random.split(KEY, 2)
    run = lambda: jax.jit(
        jax.vmap(lambda k: probes.probe(model, model.init(k, x), x, y, train=train))
    )(keys)
    report, ref = run(), _unrolled(run)
    assert report.layer_names == ref.layer_names == model.layer_names()
    assert report.layer_kinds == ref.layer_kinds
    for k in gf.report.STATS:
        np.testing.assert_allclose(getattr(report, k), getattr(ref, k), rtol=2e-6, atol=1e-7,
                                   err_msg=k)  # fmt: skip
    mutable = ["batch_stats"] if train else False
    for s, key in enumerate(keys):
        v = model.init(key, x)

        def cost(params, v=v):
            out = model.apply({**v, "params": params}, x, train=train, mutable=mutable)
            return losses.softmax_cross_entropy(out[0] if train else out, y)

        g = jax.grad(cost)(v["params"])
        names = model.layer_names()
        for i, name in enumerate(names):
            np.testing.assert_allclose(
                report.weight_grad_norm[s, i], jnp.linalg.norm(g[name]["kernel"]), rtol=1e-5
            )
            # BatchNorm in training subtracts the batch mean of z = xW + b, so the hidden
            # biases' gradient is 0 in exact arithmetic: both sides are float32 rounding
            # (seen: 6.3e-8 vs 1.0e-7, from differently ordered sums), hence atol 1e-6 there
            bn_bias = train and i < len(names) - 1
            np.testing.assert_allclose(
                report.bias_grad_norm[s, i], jnp.linalg.norm(g[name]["bias"]), rtol=1e-5,
                atol=1e-6 if bn_bias else 1e-9,
            )  # fmt: skip


def test_scanned_model_probe_does_not_retrace():
    """New variables of the same shapes: the probe of a scanned network is traced once."""
    traces = []

    class Counted(models.MLP):
        def __call__(self, x, *, train=False):
            traces.append(x.shape)
            return super().__call__(x, train=train)

    model = Counted(widths=(4,) * 5, out=2, activation="tanh")
    x, y = jnp.ones((3, 4)), jnp.array([0, 1, 1])
    v0, v1 = model.init(KEY, x), model.init(jax.random.key(1), x)
    probes.probe(model, v0, x, y)
    n = len(traces)
    chex_report = probes.probe(model, v1, x, y)
    assert len(traces) == n
    assert chex_report.layer_names == model.layer_names()


def test_user_scan_over_stacked_layers_reports_each_layer_exactly():
    """A plain function that stacks its per-layer parameters and scans over them: one row per
    layer, named by its parameters, with gradients equal to jax.grad's."""
    params = {
        f"h{i}": {"w": jax.random.normal(jax.random.key(i), (5, 5)) / 2, "b": jnp.full(5, 0.1)}
        for i in range(4)
    }
    params["out"] = {"w": jax.random.normal(KEY, (5, 3))}

    def apply_fn(p, x):
        ws = jnp.stack([p[f"h{i}"]["w"] for i in range(4)])
        bs = jnp.stack([p[f"h{i}"]["b"] for i in range(4)])
        h, _ = jax.lax.scan(lambda h, wb: (jnp.tanh(h @ wb[0] + wb[1]), None), x, (ws, bs))
        return h @ p["out"]["w"]

    x = jax.random.normal(jax.random.key(7), (6, 5))
    y = jnp.arange(6) % 3
    report = probes.probe(apply_fn, params, x, y)
    assert report.layer_names == ("h0", "h1", "h2", "h3", "out")
    g = jax.grad(lambda p: losses.softmax_cross_entropy(apply_fn(p, x), y))(params)
    for i, name in enumerate(report.layer_names):
        np.testing.assert_allclose(
            report.weight_grad_norm[i], jnp.linalg.norm(g[name]["w"]), rtol=1e-5
        )
    np.testing.assert_allclose(
        report.bias_grad_norm[:4], [jnp.linalg.norm(g[f"h{i}"]["b"]) for i in range(4)], rtol=1e-5
    )
    assert np.isnan(report.bias_grad_norm[4])


# ------------------------------------------------------------------------ verdicts, depth 20


@pytest.fixture(scope="module")
def depth20(digits):
    """Depth-20 MLPs (19 hidden layers of width 32) on 256 digits, 3 seeds each."""
    x, y = digits.x_train[:256], digits.y_train[:256]
    keys = jax.random.split(jax.random.key(7), 3)
    widths = (32,) * 19
    sig = dict(activation="sigmoid", kernel_init="lecun_normal", bias_init="zeros")
    configs = {
        "relu_he": (models.MLP(widths, 10, activation="relu", kernel_init="he_normal"), False),
        "sigmoid": (models.MLP(widths, 10, **sig), False),
        "sigmoid_batchnorm": (models.MLP(widths, 10, norm="batch", **sig), True),
        "sigmoid_residual": (models.MLP(widths, 10, residual=True, **sig), False),
    }
    out = {}
    for name, (model, train) in configs.items():
        reports = [probes.probe(model, model.init(k, x[:1]), x, y, train=train) for k in keys]
        out[name] = jax.tree.map(lambda *a: jnp.stack(a), *reports)
    return out


def test_relu_he_depth_20_is_healthy(depth20):
    r = depth20["relu_he"]
    assert np.all(gf.report.verdict(r) == "healthy")
    ratio = np.asarray(r.preact_grad_norm[:, 0] / r.preact_grad_norm[:, -1])
    assert np.all((ratio > 0.1) & (ratio < 10))


def test_sigmoid_lecun_depth_20_is_vanishing(depth20):
    r = depth20["sigmoid"]
    v = gf.report.verdict(r)
    assert np.all(v[:, :10] == "vanishing") and np.all(v[:, -1] == "healthy")
    ratio = np.asarray(r.preact_grad_norm[:, 0] / r.preact_grad_norm[:, -1])
    assert np.all(ratio < 1e-8)  # measured ~1e-12: at most 1/4 per sigmoid layer
    # the same from the weight gradients (what the optimiser sees)
    assert np.all(gf.report.verdict(r, stat="weight_grad_norm")[:, 0] == "vanishing")


def test_batchnorm_and_residual_cut_the_first_to_last_ratio(depth20):
    def ratio(r):
        g = np.asarray(r.preact_grad_norm)
        return g[:, 0] / g[:, -1]

    plain = ratio(depth20["sigmoid"])
    for variant in ("sigmoid_batchnorm", "sigmoid_residual"):
        fixed = ratio(depth20[variant])
        assert np.all(fixed > 1e6 * plain), (variant, fixed, plain)
        assert np.all(gf.report.verdict(depth20[variant])[:, 0] == "healthy")
    # BatchNorm right after the affine map removes the bias: dC/db is zero in train mode
    assert float(np.max(depth20["sigmoid_batchnorm"].bias_grad_norm[:, :-1])) < 1e-5


def test_exploding_chain_is_exploding():
    """Seed 001: w_j = 100 and z_j = 0, so every backward factor is 100 * 1/4 = 25."""
    depth = 20
    w, b = gf.analytic.exploding_chain(depth, 0.5)
    model = models.Chain(depth=depth)
    x, y = jnp.array([[0.5]]), jnp.array([[0.0]])
    r = probes.probe(model, models.chain_params(w, b), x, y, loss="mse")
    v = gf.report.verdict(r)
    assert v[0] == "exploding" and v[-1] == "healthy"
    assert list(v).count("exploding") == depth - 2  # ratios 25^(L-1-j) > 100 for j <= L-3
    g = np.asarray(r.preact_grad_norm, np.float64)
    np.testing.assert_allclose(g[:-1] / g[1:], 25.0, rtol=1e-5)
    closed = gf.analytic.chain_grads(w, b, 0.5, 0.5, "sigmoid").bias  # dC/da_L = a_L - y = 1/2
    np.testing.assert_allclose(r.bias_grad_norm, np.abs(closed), rtol=1e-5)


@pytest.mark.parametrize("gain", [10.0, 0.1])
def test_norms_neither_overflow_nor_underflow_in_float32(x64, gain):
    """A deep linear net with W = gain I: per-layer gradients 10^{+-23} whose squares overflow
    (or underflow) float32, reported equal to the float64 probe (rtol: float32 rounding through
    24 layers)."""
    depth = 24
    model = models.MLP(widths=(2,) * (depth - 1), out=2, activation="linear",
                       bias_init="zeros")  # fmt: skip
    # the input scale keeps the forward pass finite (it scales by gain^depth too)
    x = jnp.full((3, 2), gain ** (1 - depth) * 1e3, jnp.float32)
    y = jnp.zeros((3, 2), jnp.float32) if gain > 1 else jnp.ones((3, 2), jnp.float32)
    params = model.init(KEY, x)["params"]
    params = {k: {"kernel": gain * jnp.eye(2, dtype=jnp.float32), "bias": v["bias"]}
              for k, v in params.items()}  # fmt: skip
    r32 = probes.probe(model, {"params": params}, x, y, loss="mse")
    r64 = probes.probe(model, _f64({"params": params}), _f64(x), _f64(y), loss="mse")
    for stat in ("weight_grad_norm", "bias_grad_norm", "preact_grad_norm", "weight_norm"):
        got, want = np.asarray(getattr(r32, stat)), np.asarray(getattr(r64, stat))
        assert got.dtype == np.float32 and np.all(np.isfinite(got)) and np.all(got > 0), stat
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=stat)
    extreme = float(np.asarray(r64.preact_grad_norm)[0])
    assert (extreme > 1e20) if gain > 1 else (0 < extreme < 1e-20)  # beyond float32's squares


# ------------------------------------------------------------------------- through time


def test_rnn_gradients_decay_geometrically_and_lstm_slower():
    """Pascanu et al. 2013: ||dC/dh_t|| <= lambda_1(U) sup|tanh'| ||dC/dh_{t+1}|| for a vanilla
    tanh RNN (loss on the last output only); the LSTM's additive cell path decays far slower."""
    T, gain = 40, 0.9
    x, y = gf.data.adding_problem(jax.random.key(0), 64, T)
    vanilla = models.RNN(
        hidden=32, out=1, recurrent_init=gf.initializers.get("orthogonal", gain=gain)
    )
    lstm = models.RNN(hidden=32, out=1, cell="lstm")
    rv = probes.probe_rnn(vanilla, vanilla.init(KEY, x), x, y)
    rl = probes.probe_rnn(lstm, lstm.init(KEY, x), x, y)
    gv, gl = np.asarray(rv.hidden_grad_norm), np.asarray(rl.hidden_grad_norm)
    assert gv.shape == gl.shape == (T,)
    # every step back multiplies the per-example gradient by at most lambda_1(U) * 1
    assert np.all(gv[:-1] <= gain * gv[1:] * (1 + 1e-5))
    rate_v, rate_l = float(probes.time_decay_rate(gv)), float(probes.time_decay_rate(gl))
    assert rate_v < gain  # measured 0.72
    # geometric: log-norm is linear in t (R^2 of the fit)
    logg = np.log(gv)
    fit = np.polyval(np.polyfit(np.arange(T), logg, 1), np.arange(T))
    assert 1 - np.sum((logg - fit) ** 2) / np.sum((logg - logg.mean()) ** 2) > 0.95
    assert rate_l > rate_v + 0.1  # measured 0.89 vs 0.72
    assert gl[0] / gl[-1] > 1e2 * gv[0] / gv[-1]  # measured ~1e3 times more gradient at t = 1
    assert float(rv.param_grad_norm) > 0 and np.all(np.asarray(rv.hidden_norm) > 0)
    with pytest.raises(TypeError, match=r"use gradflow\.probes\.probe_rnn"):
        probes.probe(vanilla, vanilla.init(KEY, x), x, y)
    with pytest.raises(TypeError, match=r"probe_rnn takes a gradflow\.models\.RNN"):
        probes.probe_rnn(models.MLP(widths=(3,), out=1), {}, x, y)


@pytest.mark.parametrize("cell", ["vanilla", "lstm"])
def test_probe_rnn_matches_autodiff(cell, x64):
    model = models.RNN(hidden=3, out=2, cell=cell)
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.normal(size=(5, 7, 2))), jnp.asarray(rng.normal(size=(5, 2)))
    v = _f64(model.init(KEY, x))
    r = probes.probe_rnn(model, v, x, y)
    perts = models.perturbations(model, v, x)

    @jax.jit
    def grads(params, perts):
        def cost(params, perts):
            return losses.mse(model.apply({"params": params, "perturbations": perts}, x), y)

        return jax.value_and_grad(cost, argnums=(0, 1))(params, perts)

    c, (gp, gz) = grads(v["params"], perts)
    dh = 5 * np.linalg.norm(np.asarray(gz["rnn"]["h"]), axis=-1)  # (B, T): per-example
    np.testing.assert_allclose(r.loss, c, rtol=1e-12)
    np.testing.assert_allclose(r.hidden_grad_norm, dh.mean(0), rtol=1e-10)
    np.testing.assert_allclose(r.hidden_grad_norm_std, dh.std(0), rtol=1e-8)
    flat = np.concatenate([np.ravel(a) for a in jax.tree.leaves(gp)])
    np.testing.assert_allclose(r.param_grad_norm, np.linalg.norm(flat), rtol=1e-10)
    _, state = model.apply(v, x, mutable=["intermediates"])
    h = np.asarray(state["intermediates"]["rnn"]["h"][0])
    np.testing.assert_allclose(r.hidden_norm, np.linalg.norm(h, axis=-1).mean(0), rtol=1e-10)
    # the last step's gradient comes straight from the readout: dC_x/dh_T = W_out (out_x - y_x)
    out = np.asarray(model.apply(v, x))
    direct = (out - np.asarray(y)) @ np.asarray(v["params"]["readout"]["kernel"]).T
    np.testing.assert_allclose(dh[:, -1], np.linalg.norm(direct, axis=-1), rtol=1e-10)


def test_time_decay_rate_recovers_a_geometric_rate():
    t = jnp.arange(30.0)
    np.testing.assert_allclose(probes.time_decay_rate(0.8 ** (29 - t)), 0.8, rtol=1e-5)
    # underflowed steps are left out of the fit
    g = jnp.where(t < 5, 0.0, 0.5 ** (29 - t))
    np.testing.assert_allclose(probes.time_decay_rate(g), 0.5, rtol=1e-5)
    # overflowed steps too; fewer than two usable steps, or a NaN norm, is refused (concrete)
    np.testing.assert_allclose(probes.time_decay_rate(g.at[-1].set(jnp.inf)), 0.5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"at least two finite, positive steps .* row 0 has 1"):
        probes.time_decay_rate(jnp.array([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"norms holds 1 NaN value"):
        probes.time_decay_rate(g.at[3].set(jnp.nan))
    with pytest.raises(ValueError, match=r"axis 1 is out of range for norms of shape \(30,\)"):
        probes.time_decay_rate(g, axis=1)
    # traced, nothing can raise: NaN steps are left out, too few usable steps give NaN
    rate = jax.jit(probes.time_decay_rate)
    np.testing.assert_allclose(rate(g.at[7].set(jnp.nan)), 0.5, rtol=1e-5)
    assert np.isnan(rate(jnp.array([0.0, 0.0, 1.0])))


# ------------------------------------------------------------- the researcher's own models


def _layer_grads(grads, name):
    """(weight, bias) gradients of the layer ``name`` from a gradient pytree of the params."""
    if isinstance(grads, dict) and name in grads and not isinstance(grads[name], dict):
        return grads[name], grads.get("b" + name[1:])  # plain dict: w1 / b1
    index = None
    if name.endswith("]"):
        name, index = name[:-1].split("[")
        index = int(index)
    node = grads
    for part in name.split("/"):
        key = int(part) if part.isdigit() else part
        if isinstance(node, (list, tuple)):
            node = node[key]
        elif hasattr(node, "keys"):  # a dict or an NNX State (integer keys for nnx.List)
            node = node[key] if key in node else node[part]
        else:  # an Equinox module
            node = getattr(node, part)
    get = (lambda k: node.get(k)) if hasattr(node, "get") else (lambda k: getattr(node, k, None))
    w = next(
        v for v in (get("kernel"), get("embedding"), get("scale"), get("weight")) if v is not None
    )
    b = get("bias")
    w = w[...] if isinstance(w, nnx.Variable) else w
    b = b[...] if isinstance(b, nnx.Variable) else b
    if index is not None:
        w, b = w[index], None if b is None else b[index]
    return w, b


@pytest.fixture(scope="module", params=sorted(user_models.FACTORIES))
def user_model(request):
    um = user_models.FACTORIES[request.param](jax.random.key(3))
    report = probes.probe(um.model, um.variables, um.x, um.y, um.loss, train=um.train)
    return request.param, um, report


def test_user_model_layers_are_those_the_forward_pass_runs(user_model):
    name, um, report = user_model
    assert list(report.layer_names) == um.names, name
    assert len(report.layer_kinds) == len(um.names)
    assert set(report.layer_kinds) <= set(gf.taps.KINDS)


def test_user_model_gradients_equal_autodiff_and_explicit_perturbation(user_model):
    """|dC/dW|, |dC/db| equal jax.grad; the per-example delta equals B dC/d(eps) of an explicit
    zero perturbation of the layer's output (rtol 1e-5, float32; atol 1e-6 for gradients that
    are zero in exact arithmetic, e.g. a conv bias before train-mode BatchNorm)."""
    _, um, report = user_model
    loss = losses.get_loss(um.loss)
    m = gf.adapters.as_model(um.model, um.variables, train=um.train)
    shapes = {
        row.name: row.shape
        for row in gf.taps.trace(m.apply, m.params, um.x, m.state, paths=m.paths).layers
    }
    zeros = {n: jnp.zeros(shapes[n]) for n in um.names}
    g_params = jax.grad(lambda p: loss(um.outputs(zeros, p), um.y))(um.params())
    g_eps = jax.grad(lambda e: loss(um.outputs(e), um.y))(zeros)
    batch = jax.tree.leaves(um.x)[0].shape[0]
    for i, layer in enumerate(um.names):
        gw, gb = _layer_grads(g_params, layer)
        np.testing.assert_allclose(
            report.weight_grad_norm[i], jnp.linalg.norm(gw.ravel()), rtol=1e-5, err_msg=layer
        )
        if gb is None:
            assert np.isnan(report.bias_grad_norm[i]), layer
        else:
            np.testing.assert_allclose(
                report.bias_grad_norm[i],
                jnp.linalg.norm(gb.ravel()),
                rtol=1e-5,
                atol=1e-6,
                err_msg=layer,
            )
        per_example = jnp.linalg.norm((g_eps[layer] * batch).reshape(batch, -1), axis=1)
        np.testing.assert_allclose(
            report.preact_grad_norm[i], per_example.mean(), rtol=1e-5, err_msg=layer
        )
        np.testing.assert_allclose(
            report.preact_grad_norm_std[i], per_example.std(), rtol=1e-4, atol=1e-7, err_msg=layer
        )
    np.testing.assert_allclose(report.loss, loss(um.outputs(zeros), um.y), rtol=1e-6)


def test_user_model_report_displays(user_model, tmp_path):
    name, um, report = user_model
    text = gf.report.format_report(report)
    for layer in um.names:
        assert layer in text
    frame = gf.report.to_frame(report)
    assert list(frame["name"]) == um.names and list(frame["kind"]) == list(report.layer_kinds)
    assert gf.report.verdict(report).shape == (len(um.names),)
    paths = gf.report.plot_report(report, tmp_path / name)
    assert all(p.exists() for p in map(__import__("pathlib").Path, paths))


def test_user_model_kinds():
    um = user_models.FACTORIES["linen_pre_ln_transformer"](KEY)
    r = probes.probe(um.model, um.variables, um.x, um.y)
    kinds = dict(zip(r.layer_names, r.layer_kinds))
    assert kinds["embed"] == "embedding" and kinds["head"] == "dense"
    assert kinds["block_0/ln1"] == "norm" and kinds["ln_f"] == "norm"
    assert {kinds[f"block_1/attn/{p}"] for p in ("query", "key", "value", "out")} == {"attention"}
    cnn = user_models.FACTORIES["linen_bn_cnn_train"](KEY)
    r = probes.probe(cnn.model, cnn.variables, cnn.x, cnn.y, train=True)
    assert r.layer_kinds == ("conv", "norm", "dense")
    # the attention key's bias gets no gradient: softmax is invariant to a shift of the logits
    assert np.all(np.asarray(r.saturated_frac) != np.asarray(r.saturated_frac))  # NaN: unknown phi


def test_user_models_vmap_over_seeds_equals_separate_calls():
    for factory in ("linen_cnn", "plain_dict", "equinox_mlp"):
        keys = jax.random.split(jax.random.key(5), 3)
        ums = [user_models.FACTORIES[factory](k) for k in keys]
        x, y, model = ums[0].x, ums[0].y, ums[0].model
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *[u.variables for u in ums])
        batched = jax.vmap(lambda v, m=model, x=x, y=y: probes.probe(m, v, x, y))(stacked)
        for i, u in enumerate(ums):
            single = probes.probe(model, u.variables, x, y)
            np.testing.assert_allclose(
                batched.weight_grad_norm[i], single.weight_grad_norm, rtol=1e-5, err_msg=factory
            )
            np.testing.assert_allclose(
                batched.preact_grad_norm[i], single.preact_grad_norm, rtol=1e-5, err_msg=factory
            )


def test_user_function_compiles_once_per_shape():
    calls = []

    def apply_fn(p, x):
        calls.append(1)
        return user_models._plain_apply(p, x)

    um = user_models.plain_dict(KEY)
    probes.probe(apply_fn, um.variables, um.x, um.y)
    n = len(calls)
    other = user_models.plain_dict(jax.random.key(9))
    probes.probe(apply_fn, other.variables, um.x, um.y)
    probes.probe(apply_fn, um.variables, um.x + 1.0, um.y)
    assert len(calls) == n


def test_nnx_probe_leaves_the_module_untouched():
    um = user_models.FACTORIES["nnx_cnn"](KEY)
    before = jax.tree.map(np.asarray, nnx.state(um.model))
    probes.probe(um.model, None, um.x, um.y, train=True)
    after = jax.tree.map(np.asarray, nnx.state(um.model))
    jax.tree.map(np.testing.assert_array_equal, before, after)


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("empty", ValueError, "empty batch"),
        ("mismatch", ValueError, "x has 6 examples but y has 5"),
        ("nan_x", ValueError, r"x holds 1 non-finite value"),
        ("labels", ValueError, r"labels y must lie in \[0, number of outputs\)"),
        ("nnx_state_for_linen", TypeError, "NNX State"),
        ("variables_for_nnx", TypeError, "pass variables=None"),
        ("no_layers", ValueError, "has no parameterised layer"),
        ("loss_not_scalar", ValueError, "loss must return a scalar"),
        ("not_a_model", TypeError, "model must be a flax.linen Module"),
        ("no_params", ValueError, "params has no floating-point array"),
    ],
)
def test_probe_rejects_bad_input(case, error, match):
    um = user_models.FACTORIES["plain_dict"](KEY)
    nx = user_models.FACTORIES["nnx_mlp"](KEY)
    cnn = user_models.FACTORIES["linen_cnn"](KEY)
    call = {
        "empty": lambda: probes.probe(um.model, um.variables, um.x[:0], um.y[:0]),
        "mismatch": lambda: probes.probe(um.model, um.variables, um.x, um.y[:5]),
        "nan_x": lambda: probes.probe(um.model, um.variables, um.x.at[2, 1].set(jnp.nan), um.y),
        "labels": lambda: probes.probe(um.model, um.variables, um.x, um.y.at[0].set(7)),
        "nnx_state_for_linen": lambda: probes.probe(cnn.model, nnx.state(nx.model), cnn.x, cnn.y),
        "variables_for_nnx": lambda: probes.probe(nx.model, {"params": {}}, nx.x, nx.y),
        "no_layers": lambda: probes.probe(
            lambda p, x: jnp.tanh(x) * 0 + p["c"], {"c": jnp.zeros(3)}, um.x[:, :3], um.y
        ),
        "loss_not_scalar": lambda: probes.probe(
            um.model, um.variables, um.x, um.y, loss=lambda out, y: out.sum(-1)
        ),
        "not_a_model": lambda: probes.probe(42, None, um.x, um.y),
        "no_params": lambda: probes.probe(um.model, {"w": 1}, um.x, um.y),
    }[case]
    with pytest.raises(error, match=match):
        call()


def test_denseblock_on_sequences_reports_per_example_delta():
    """A DenseBlock on (batch, time, features): delta_x covers all T positions of example x
    (it used to count positions as examples: sqrt(T) too large)."""

    class Seq(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = models.DenseBlock(6, activation="tanh", name="dense_0")(x)
            return models.DenseBlock(3, name="dense_1")(h.mean(1))

    m = Seq()
    x = jax.random.normal(KEY, (4, 10, 5))
    y = jnp.array([0, 1, 2, 1])
    v = m.init(KEY, x)
    r = probes.probe(m, v, x, y)
    perts = models.perturbations(m, v, x)
    g = jax.grad(lambda p: losses.softmax_cross_entropy(m.apply({**v, "perturbations": p}, x), y))(
        perts
    )["dense_0"]["z"]
    per_example = jnp.linalg.norm((4 * g).reshape(4, -1), axis=1)
    np.testing.assert_allclose(r.preact_grad_norm[0], per_example.mean(), rtol=1e-5)
    assert r.layer_names == ("dense_0", "dense_1")
    assert np.isfinite(r.saturated_frac[0])  # the protocol's activation slope is known
