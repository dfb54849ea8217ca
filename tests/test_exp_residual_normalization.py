"""residual_normalization: the model pieces, and the quick config's claims from saved results."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from experiments import residual_normalization as exp

# ----------------------------------------------------------------------------- the model pieces


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conv3x3_is_a_circular_flax_conv(seed):
    x = jax.random.normal(jax.random.key(seed), (2, 4, 5, 3))
    conv = exp.Conv3x3(6)
    v = conv.init(jax.random.key(seed + 10), x)
    v = jax.tree.map(lambda a: a + 0.1, v)  # a non-zero bias too
    want = nn.Conv(6, (3, 3), padding="CIRCULAR").apply(v, x)
    np.testing.assert_allclose(conv.apply(v, x), want, rtol=1e-5, atol=1e-5)  # float32 sums
    assert v["params"]["kernel"].shape == (3, 3, 3, 6)


def test_he_init_preserves_the_second_moment_through_relu_conv():
    """The premise of the variance doubling: E_W[conv(relu(x))^2] = E[x^2] for symmetric x."""
    x = jax.random.normal(jax.random.key(0), (256, 4, 4, 16))
    keys = jax.random.split(jax.random.key(1), 64)
    out = jax.vmap(lambda k: exp.Conv3x3(16, use_bias=False).init_with_output(k, nn.relu(x))[0])(
        keys
    )
    assert float(jnp.mean(out**2)) == pytest.approx(float(jnp.mean(x**2)), rel=0.05)


def test_channel_stats_do_not_overflow():
    x = jnp.full((2, 2, 2, 1), 1e25) * jnp.arange(1.0, 3.0)[:, None, None, None]  # 1e25, 2e25
    sq_mean, var = exp._log10_channel_stats(x)
    assert float(var) == pytest.approx(math.log10(0.25e50), abs=1e-4)
    assert float(sq_mean) == pytest.approx(math.log10(2.25e50), abs=1e-4)


# SkipInit's branch scalar is Fixup's multiplier without Fixup's scalar biases: Fixup covers
# both, and three variants keep the suite short.
@pytest.mark.parametrize("variant", ["none", "batchnorm", "fixup"])
def test_probe_rows_match_autodiff(variant):
    """gf.probes.probe on the scanned ResNet (BatchNorm with batch statistics): a row per conv
    per block, in forward order, with the weight-gradient norms of jax.grad."""
    x = jnp.asarray(exp._data().x_train[:8])
    y = jnp.asarray(exp._data().y_train[:8])
    net = exp.ResNet(width=4, depth=3, variant=variant)
    v = net.init(jax.random.key(0), x[:1])
    # perturb every parameter so that no gradient is zero by construction
    v = {**v, "params": jax.tree.map(lambda a: a + 0.05, v["params"])}
    report = gf.probes.probe(net, v, x, y, exp.LOSS, train=True)
    state = {k: s for k, s in v.items() if k == "batch_stats"}
    loss = gf.probes.get_loss(exp.LOSS)

    def cost(p):
        out, _ = net.apply({"params": p, **state}, x, mutable=["batch_stats", "intermediates"])
        return loss(out, y)

    g = jax.jit(jax.grad(cost))(v["params"])
    names = list(report.layer_names)
    assert names[0] == "stem" and names[-1] == "readout"
    convs = [n for n in names if "/conv_" in n]
    assert convs == [f"blocks/conv_{i}[{b}]" for b in range(3) for i in (0, 1)]
    norms = np.asarray(report.weight_grad_norm)
    want = np.linalg.norm(np.asarray(g["blocks"]["conv_1"]["kernel"][2], np.float64))
    assert norms[names.index("blocks/conv_1[2]")] == pytest.approx(want, rel=1e-5)
    want = np.linalg.norm(np.asarray(g["stem"]["kernel"], np.float64))
    assert norms[0] == pytest.approx(want, rel=1e-5)
    assert np.all(norms > 0)
    if variant == "batchnorm":
        assert names[1:5] == ["blocks/bn_0[0]", "blocks/conv_0[0]", "blocks/bn_1[0]",
                              "blocks/conv_1[0]"]  # fmt: skip


def test_fixup_and_skipinit_start_at_the_identity():
    x = jnp.asarray(exp._data().x_train[:16])
    for variant in ("skipinit", "fixup"):
        net = exp.ResNet(width=4, depth=5, variant=variant)
        v = net.init(jax.random.key(3), x[:1])
        _, st = net.apply(v, x, mutable=["intermediates"])
        im = st["intermediates"]["blocks"]
        np.testing.assert_array_equal(im["ratio"][0], 0.0)  # every branch is exactly 0
        np.testing.assert_allclose(im["var"][0], im["var"][0][0], rtol=0, atol=1e-6)
    # Fixup's first branch layer is He times L^(-1/2) (m = 2 layers per branch)
    net = exp.ResNet(width=16, depth=64, variant="fixup")
    k = net.init(jax.random.key(0), x[:1])["params"]["blocks"]["conv_0"]["kernel"]
    assert float(jnp.var(k)) == pytest.approx(2.0 / (9 * 16) / 64, rel=0.05)


# --------------------------------------------------------------------- the quick config's claims


@pytest.fixture(scope="module")
def done(run_quick):
    root, cfg, figs, tabs = run_quick("residual_normalization")
    df, config = exp.load(root / "results")
    return root, cfg, figs, tabs, df, config


def test_outputs_exist(done):
    root, cfg, figs, tabs, *_ = done
    assert {p.name for p in figs} == {
        f"{s}.{e}" for s in exp.EXPERIMENT.figures for e in ("pdf", "png")
    }
    assert {p.name for p in tabs} == {f"{exp.NAME}.tex", f"{exp.NAME}_macros.tex"}
    for p in [*figs, *tabs]:
        assert p.stat().st_size > 0
    table = (root / "tables" / f"{exp.NAME}.tex").read_text()
    assert table.count(r"\\") == 1 + len(cfg.variants) * len(cfg.depths)
    macros = (root / "tables" / f"{exp.NAME}_macros.tex").read_text()
    for v in ("None", "Batchnorm", "Skipinit", "Fixup"):
        for d in ("Min", "Max"):  # the shallowest and the deepest network (one in quick)
            assert f"\\residualNormalizationAcc{v}{d}}}" in macros


def test_every_run_present(done):
    _, cfg, _, _, df, _ = done
    runs = df.drop_duplicates(["variant", "depth", "learning_rate", "seed"])
    assert len(runs) == (len(cfg.variants) * len(cfg.depths) * len(cfg.learning_rates) * cfg.seeds)


def test_unnormalised_variance_grows_geometrically(done):
    """De & Smith 2020: Var(x_l) doubles per block (log2 rate 1) at infinite width."""
    _, cfg, _, _, df, config = done
    s = exp.summary(df, config)
    for d in cfg.depths:
        rate = exp.growth_rate(exp.init_profile(df, "none", d, "init_log10_var"))
        # measured 0.79 at width 8: the median over seeds of a product of random per-block
        # factors grows more slowly than their mean (2 per block)
        assert 0.5 < rate < 1.1, rate
        bn = exp.growth_rate(exp.init_profile(df, "batchnorm", d, "init_log10_var"))
        assert rate > 4 * bn
        # the logits are huge: the initial loss is far above ln 10
        assert s.loc[(s["variant"] == "none") & (s["depth"] == d), "init_loss"].item() > 20


def test_batchnorm_grows_linearly_and_downscales_the_branch(done):
    """With BatchNorm, each branch adds 2 Var(relu(z)) = 1 - 1/pi to the average channel
    variance (He conv of a unit-variance ReLU; the other 1/pi goes to the channel means), so
    Var(x_l) grows linearly and the branch/input ratio falls like 1/l."""
    _, cfg, _, _, df, _ = done
    per_block = 1 - 1 / math.pi
    for d in cfg.depths:
        var = 10 ** np.median(exp.init_profile(df, "batchnorm", d, "init_log10_var"), axis=0)
        slope = np.polyfit(np.arange(1, d + 1), var, 1)[0]
        assert slope == pytest.approx(per_block, rel=0.3)  # measured ~0.65 at width 8
        ratio = np.median(exp.init_profile(df, "batchnorm", d, "init_branch_ratio"), axis=0)
        # the branch variance is ~1 - 1/pi: ratio x Var(x_{l-1}) within 40% of it, typically
        pred = per_block / var[:-1]
        assert np.median(ratio[1:] / pred) == pytest.approx(1.0, rel=0.4)
        assert ratio[-1] < ratio[0] / 3  # downscaled with depth
        assert np.all(ratio < 1)


def test_skipinit_and_fixup_are_the_identity_at_init(done):
    _, cfg, _, _, df, config = done
    for v in ("skipinit", "fixup"):
        for d in cfg.depths:
            assert np.all(exp.init_profile(df, v, d, "init_branch_ratio") == 0.0)
            var = exp.init_profile(df, v, d, "init_log10_var")
            np.testing.assert_allclose(var, var[:, :1] * np.ones_like(var), atol=1e-5)
            # no gradient reaches a branch's convolutions at init
            for conv in ("conv_0", "conv_1"):
                assert np.all(exp.conv_grads(df, v, d, conv) == 0.0)
    d = cfg.depths[0]
    fix = exp.init_profile(df, "fixup", d, "init_weight_grad_norm")
    assert np.all(fix[:, :-1] == 0.0) and np.all(fix[:, -1] > 0)  # only the zero classifier
    skip = exp.init_profile(df, "skipinit", d, "init_weight_grad_norm")
    alpha = [exp.row_names(df, "skipinit", d).index(f"blocks[{b}]") for b in range(d)]
    assert np.all(skip[:, alpha] > 0)  # alpha, the branch's scale, is what moves first
    s = exp.summary(df, config).set_index(["variant", "depth"])
    assert s.loc[("fixup", d), "init_loss"] == pytest.approx(math.log(10), rel=1e-6)


def test_skipinit_and_fixup_train_without_normalisation(done):
    _, cfg, _, _, df, config = done
    s = exp.summary(df, config).set_index(["variant", "depth"])
    for d in cfg.depths:
        none = df[
            (df["variant"] == "none") & (df["depth"] == d) & (df["metric"] == "test_accuracy")
        ]
        # every unnormalised run diverged or stayed at chance (0.1), at every learning rate
        assert np.all(none["diverged"] | (none["value"] < 0.2))
        for v in ("batchnorm", "skipinit", "fixup"):
            assert s.loc[(v, d), "acc_mean"] > 0.8, (v, d)  # measured 0.92-0.93 at depth 16
            assert s.loc[(v, d), "diverged"] == 0


def test_bad_config():
    e = gf.experiment.get("residual_normalization")
    with pytest.raises(ValueError, match="variants must be distinct names of none, batchnorm"):
        e.run(e.config("quick", {"variants": ["layernorm"]}), None)
    with pytest.raises(ValueError, match="depths must be ints >= 2"):
        e.run(e.config("quick", {"depths": [1]}), None)
    with pytest.raises(ValueError, match="learning_rates must be positive"):
        e.run(e.config("quick", {"learning_rates": [-0.1]}), None)
    with pytest.raises(ValueError, match="probe_batch must be an int >= 2"):
        e.run(e.config("quick", {"probe_batch": 1}), None)
    with pytest.raises(ValueError, match="unknown variant 'groupnorm'"):
        exp.ResNet(width=4, depth=2, variant="groupnorm").init(jax.random.key(0), jnp.ones((1, 64)))
