"""transformer_layernorm: the model pieces, and the quick config's claims from saved results."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf
from experiments import transformer_layernorm as exp

# ----------------------------------------------------------------------------- the model pieces


def test_sinusoidal_positions_are_vaswanis():
    pe = exp.sinusoidal_positions(5, 6)
    assert pe.shape == (5, 6) and pe.dtype == np.float32
    np.testing.assert_allclose(pe[0], [0, 1, 0, 1, 0, 1], atol=0)
    t = np.arange(5)
    np.testing.assert_allclose(pe[:, 0], np.sin(t), rtol=1e-6, atol=1e-7)  # i = 0: sin(t)
    np.testing.assert_allclose(pe[:, 3], np.cos(t / 10000 ** (2 / 6)), rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def tiny():
    """A 3-block Pre-LN and Post-LN stack of width 8 and a batch of tokens."""
    x = jnp.asarray(np.arange(2 * 5).reshape(2, 5) % 7, jnp.int32)
    y = jnp.roll(x, -1, axis=1)
    return x, y


@pytest.mark.parametrize("arch", exp.ARCHS)
def test_skipped_blocks_give_the_shallower_network(arch, tiny):
    """depth=L on a deeper stack computes the L-block network with the same first L blocks."""
    x, _ = tiny
    deep = exp.model(arch, 8, 2, 3, 7)
    shallow = exp.model(arch, 8, 2, 2, 7)
    params = deep.init(jax.random.key(0), x)["params"]
    cut = {**params, "blocks": jax.tree.map(lambda a: a[:2], params["blocks"])}
    got = deep.apply({"params": params}, x, depth=2)
    want = shallow.apply({"params": cut}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32, same ops
    assert not np.allclose(deep.apply({"params": params}, x), want, atol=1e-3)
    # the skipped block's parameters get exactly zero gradient
    loss = gf.probes.get_loss(exp.LOSS)
    g = jax.jit(jax.grad(lambda p: loss(deep.apply({"params": p}, x, depth=2), tiny[1])))(params)
    assert float(jnp.abs(g["blocks"]["ffn_out"]["kernel"][2]).max()) == 0.0
    assert float(jnp.abs(g["blocks"]["ffn_out"]["kernel"][1]).max()) > 0.0


@pytest.mark.parametrize("arch", exp.ARCHS)
def test_probe_rows_match_autodiff(arch, tiny):
    """gf.probes.probe on the scanned Transformer: a row per layer per block, in forward order,
    with the weight-gradient norms of jax.grad."""
    x, y = tiny
    net = exp.model(arch, 8, 2, 3, 7)
    v = net.init(jax.random.key(1), x)
    report = gf.probes.probe(net, v, x, y, exp.LOSS)
    loss = gf.probes.get_loss(exp.LOSS)
    g = jax.jit(jax.grad(lambda p: loss(net.apply({"params": p}, x), y)))(v["params"])
    names = list(report.layer_names)
    assert len(names) == 1 + 3 * 8 + (arch == "pre") + 1
    assert names[0] == "embed" and names[-1] == "readout"
    # forward order: a Pre-LN block normalises before attention, a Post-LN block after it
    first = names.index("blocks/ln_attn[0]") < names.index("blocks/attn/query[0]")
    assert first == (arch == "pre")
    ref = {
        "blocks/ffn_out[1]": g["blocks"]["ffn_out"]["kernel"][1],
        "blocks/attn/query[2]": g["blocks"]["attn"]["query"]["kernel"][2],
        "blocks/ln_ffn[0]": g["blocks"]["ln_ffn"]["scale"][0],
        "embed": g["embed"]["embedding"],
        "readout": g["readout"]["kernel"],
    }
    norms = np.asarray(report.weight_grad_norm)
    for name, leaf in ref.items():
        want = float(np.linalg.norm(np.asarray(leaf, np.float64)))
        assert norms[names.index(name)] == pytest.approx(want, rel=1e-5), name
    assert set(report.layer_kinds) == {"embedding", "attention", "dense", "norm"}


def test_adam_with_warmup_ramps_linearly():
    """Adam's first updates of a constant gradient are -lr_t exactly (m / sqrt(v) = 1), so the
    update sizes trace the schedule: lr * min(1, (t + 1) / W)."""
    params = jnp.zeros(3)
    for warmup, want in ((4.0, [0.25, 0.5, 0.75, 1.0, 1.0]), (0.0, [1.0] * 5)):
        tx = exp.adam_with_warmup({"learning_rate": 0.1, "warmup_steps": warmup})
        state = tx.init(params)
        sizes = []
        for _ in range(5):
            u, state = tx.update(jnp.ones(3), state, params)
            sizes.append(float(-u[0]))
        np.testing.assert_allclose(sizes, 0.1 * np.asarray(want), rtol=1e-5)
    assert isinstance(tx, optax.GradientTransformation)


# --------------------------------------------------------------------- the quick config's claims


@pytest.fixture(scope="module")
def done(run_quick):
    root, cfg, figs, tabs = run_quick("transformer_layernorm")
    init, train, config = exp.load(root / "results")
    return root, cfg, figs, tabs, init, train, config


def test_outputs_exist(done):
    root, cfg, figs, tabs, *_ = done
    stems = {f"{exp.NAME}_headline", f"{exp.NAME}_modules"}
    assert {p.name for p in figs} == {f"{s}.{e}" for s in stems for e in ("pdf", "png")}
    assert {p.name for p in tabs} == {
        f"{exp.NAME}.tex",
        f"{exp.NAME}_training.tex",
        f"{exp.NAME}_macros.tex",
    }
    for p in [*figs, *tabs]:
        assert p.stat().st_size > 0
    table = (root / "tables" / f"{exp.NAME}.tex").read_text()
    assert table.count(r"\\") == 1 + 2 * len(cfg.depths)
    macros = (root / "tables" / f"{exp.NAME}_macros.tex").read_text()
    for name in ("SlopePre", "SlopePost", "TrainedPostNoWarmup", "TrainedPostWarmup",
                 "TrainedPreNoWarmup", "StreamPreMax"):  # fmt: skip
        assert f"\\transformerLayernorm{name}}}" in macros, name


def test_every_run_present_and_finite_at_init(done):
    _, cfg, _, _, init, train, _ = done
    runs = init.drop_duplicates(["arch", "depth", "seed"])
    assert len(runs) == 2 * len(cfg.depths) * cfg.seeds
    assert not init["diverged"].any()
    runs = train.drop_duplicates(["arch", "learning_rate", "warmup_steps", "seed"])
    assert len(runs) == 2 * len(cfg.learning_rates) * 2 * cfg.train_seeds


def test_last_ffn_gradient_post_flat_pre_inverse_sqrt_depth(done):
    """Theorem 1: O(d sqrt(ln d)) for Post-LN, O(d sqrt(ln d / L)) for Pre-LN."""
    _, cfg, _, _, init, _, config = done
    slopes = exp.exponents(init, config)
    post, _ = slopes["post"]
    pre, _ = slopes["pre"]
    # measured (quick, 4 seeds, L = 3..12): post -0.00 +- 0.08, pre -0.57 +- 0.06
    assert abs(post) < 0.35, slopes
    assert -0.8 < pre < -0.3, slopes
    assert pre < post - 0.5, slopes
    s = exp.init_summary(init, config).set_index(["arch", "depth"])
    for d in cfg.depths:
        # at every depth every Pre-LN seed's last FFN gradient is below every Post-LN seed's
        g_pre = exp.grad_profile(init, "pre", d, "ffn_out")[:, -1]
        g_post = exp.grad_profile(init, "post", d, "ffn_out")[:, -1]
        assert g_pre.max() < g_post.min(), d
        assert s.loc[("pre", d), "last_ffn"] < s.loc[("post", d), "last_ffn"]


def test_pre_ln_stream_grows_linearly_post_ln_stays_normalised(done):
    """Every Pre-LN block adds to the residual stream: E||x_l||^2 / d grows linearly in l (the
    mechanism of the 1/sqrt(L) of the last FFN layer's gradient)."""
    _, cfg, _, _, init, _, _ = done
    deepest = max(cfg.depths)
    pre = np.median(exp.stream_profile(init, "pre", deepest), axis=0)
    blocks = np.arange(1, deepest + 1)
    fit = np.polyval(np.polyfit(blocks, pre, 1), blocks)
    r2 = 1 - np.sum((pre - fit) ** 2) / np.sum((pre - pre.mean()) ** 2)
    assert r2 > 0.98, r2  # a straight line in l
    assert np.all(np.diff(pre) > 0)  # every block adds
    for d in cfg.depths:
        post = exp.stream_profile(init, "post", d)
        np.testing.assert_allclose(post, 1.0, atol=1e-3)  # a LayerNorm output: mean square ~1


def test_post_ln_gradients_grow_toward_the_output(done):
    """Xiong et al. Figure 3: Post-LN's FFN gradients are largest near the output. (Their Pre-LN
    gradients stay level; ours fall toward the output, see the paper section.)"""
    _, cfg, _, _, init, _, config = done
    s = exp.init_summary(init, config).set_index(["arch", "depth"])
    deepest = max(cfg.depths)
    assert s.loc[("post", deepest), "last_over_first"] > 1.2  # measured 1.37 at L = 12
    for d in cfg.depths:
        assert s.loc[("post", d), "last_over_first"] > s.loc[("pre", d), "last_over_first"]


def test_post_ln_needs_warmup_pre_ln_does_not(done):
    _, cfg, _, _, _, train, config = done
    t = exp.train_summary(train, config)
    lr = max(cfg.learning_rates)
    warm = cfg.warmup_steps

    def row(arch, w):
        r = t[(t["arch"] == arch) & (t["learning_rate"] == lr) & (t["warmup_steps"] == w)]
        assert len(r) == 1
        return r.iloc[0]

    n = cfg.train_seeds
    assert row("post", 0)["trained"] == 0  # every seed stays above ln(V) / 2 without warm-up
    assert row("post", warm)["trained"] == n
    assert row("pre", 0)["trained"] == n
    assert row("pre", warm)["trained"] == n
    assert row("post", 0)["final_loss"] > 2 * row("post", warm)["final_loss"]
    assert (t["diverged"] == 0).all()  # a failure to train, not a divergence, in this setting


def test_bad_config():
    e = gf.experiment.get("transformer_layernorm")
    with pytest.raises(ValueError, match="depths must be at least two distinct ints"):
        e.run(e.config("quick", {"depths": [6]}), None)
    with pytest.raises(ValueError, match=r"width \(30\) must be even and a multiple of heads"):
        e.run(e.config("quick", {"width": 30}), None)
    with pytest.raises(ValueError, match="learning_rates must be positive"):
        e.run(e.config("quick", {"learning_rates": [0.0]}), None)
    with pytest.raises(ValueError, match="unknown activation 'tanh'; valid: relu, gelu"):
        e.run(e.config("quick", {"activation": "tanh"}), None)
    with pytest.raises(ValueError, match=r"warmup_steps \(500\) must be below steps \(150\)"):
        e.run(e.config("quick", {"warmup_steps": 500}), None)
    with pytest.raises(ValueError, match="must be a multiple of record_every"):
        e.run(e.config("quick", {"steps": 130}), None)
    with pytest.raises(ValueError, match="must not exceed n_train"):
        e.run(e.config("quick", {"probe_batch": 1000}), None)
    with pytest.raises(ValueError, match="unknown arch 'mid'; valid: post, pre"):
        exp.model("mid", 8, 2, 2, 7)
