"""Tests for gradflow.training: step, evaluation, train_fn under vmap, fit, divergence, resume."""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf
from gradflow import training

# ----------------------------------------------------------------------------------- shared setups

SEEDS = (0, 1, 2)
DEEP = training.TrainConfig(
    # depth 10 (9 hidden tanh layers + readout) on digits with Nielsen's quadratic cost: at
    # learning rate 1 the readout's quadratic has curvature far above 2 / lr, so plain SGD blows up
    # geometrically within ~20 steps, whereas with the update norm clipped to lr * 1 it cannot.
    model=gf.models.MLP((32,) * 9, out=10, activation="tanh", kernel_init="lecun_normal"),
    optimizer="sgd",
    loss="mse",
    steps=30,
    batch_size=64,
    record_every=10,
)
TINY = training.TrainConfig(
    model=gf.models.MLP((8,), out=10, activation="tanh"),
    optimizer="sgd",
    loss="mse",
    steps=4,
    batch_size=None,
    record_every=2,
)
SMALL = training.TrainConfig(
    model=gf.models.MLP((16, 16), out=10, activation="tanh", norm="batch"),
    optimizer="momentum",
    steps=6,
    batch_size=32,
    record_every=2,
)


@functools.cache
def digits(n_train=None, n_test=None):
    return gf.data.load_digits(n_train=n_train, n_test=n_test)


@functools.cache
def deep_sweep():
    """3 seeds x {no clipping (inf), clip_by_global_norm(1)} at learning rate 1, one program."""
    fn = training.train_fn(DEEP, digits())
    clip = jnp.array([jnp.inf] * len(SEEDS) + [1.0] * len(SEEDS))
    keys = jnp.concatenate([jax.vmap(jax.random.key)(jnp.array(SEEDS))] * 2)
    hp = {"learning_rate": jnp.ones_like(clip), "clip": clip}
    return jax.device_get(jax.jit(jax.vmap(fn))(hp, keys))


# ----------------------------------------------------------------------------------- divergence


def test_deep_tanh_mlp_diverges_without_clipping_and_not_with_it():
    out = deep_sweep()
    n = len(SEEDS)
    dstep = out["diverged_step"]
    # without clipping every seed diverges inside the run ...
    assert np.all((dstep[:n] >= 0) & (dstep[:n] < DEEP.steps)), dstep
    for i in range(n):
        first_bad = dstep[i] // DEEP.record_every  # the record whose block holds the bad step
        assert np.all(np.isfinite(out["loss"][i, :first_bad]))
        assert np.all(np.isnan(out["loss"][i, first_bad:]))
        assert np.all(np.isnan(out["grad_norm"][i, first_bad:]))
    # ... with clipping none does, the loss stays finite and falls, and clipping was active
    assert np.all(dstep[n:] == -1), dstep
    assert np.all(np.isfinite(out["loss"][n:])) and np.all(np.isfinite(out["param_norm"][n:]))
    # 20 clipped steps at lr 1 are noisy per seed: the loss falls on average over the seeds
    assert out["loss"][n:, -1].mean() < out["loss"][n:, 0].mean()
    assert np.all(out["optim/clip_by_global_norm/clipped"][n:, 0] > 0.5)
    # the unclipped raw gradients were larger than the threshold before they blew up
    assert np.all(out["optim/clip_by_global_norm/global_norm"][:n, 0] > 1.0)


def test_fit_records_divergence_step_instead_of_raising():
    hist = training.fit(
        DEEP, digits(), {"learning_rate": 1.0, "clip": float("inf")}, key=jax.random.key(SEEDS[0])
    )
    expect = int(deep_sweep()["diverged_step"][0])
    # same blocks as train_fn; per-block jit vs one scan may round differently, never by a step
    assert hist.diverged_step is not None and abs(hist.diverged_step - expect) <= 1
    n_rec = hist.diverged_step // DEEP.record_every + 1  # stopped after the diverging block
    assert len(hist.steps) == n_rec and hist.metrics["loss"].shape == (n_rec,)
    assert np.isnan(hist.metrics["loss"][-1])
    chex.assert_tree_all_finite(hist.state.params)  # frozen at the last finite parameters
    assert int(hist.state.step) == hist.diverged_step
    signs = gf.history.check_history(hist.metrics)
    assert "loss_nonfinite" in [s.kind for s in signs]
    df = hist.to_frame()
    assert set(df.columns) == {"step", "metric", "layer", "value"}
    assert len(df[df.metric == "grad_norm"]) == n_rec * len(hist.layer_names) == n_rec * 10


# ----------------------------------------------------------------------------------- vmap, sweep


def test_vmap_over_learning_rates_and_seeds_equals_separate_runs():
    """Learning rate, init scale, weight decay and the seed vmapped together, vs one by one."""
    fn = training.train_fn(TINY, digits(128, 32))
    hp = {
        "learning_rate": jnp.array([0.01, 0.05, 0.2, 0.05]),
        "init_scale": jnp.array([1.0, 1.0, 0.5, 2.0]),
        "weight_decay": jnp.array([0.0, 1e-2, 0.0, 1e-3]),
    }
    keys = jax.vmap(jax.random.key)(jnp.array([3, 3, 4, 5]))
    batched = jax.jit(jax.vmap(fn))(hp, keys)
    single = jax.jit(fn)  # every hyperparameter traced: one compilation for the four runs
    for i in range(4):
        one = single(jax.tree.map(lambda x, i=i: x[i], hp), keys[i])
        # same program up to batching of the matmuls: float32 rounding only
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], batched), one, rtol=2e-5, atol=1e-6
        )
    assert np.all(batched["diverged_step"] == -1)
    assert not np.allclose(batched["loss"][0], batched["loss"][1])  # the runs did differ


def test_train_fn_runs_in_sweep_and_reports_divergence(tmp_path):
    fn = training.train_fn(TINY, digits(128, 32))
    axes = training.sweep_axes(fn, {"learning_rate": 0.1})
    assert axes["loss"] == ("step",) and axes["grad_norm"] == ("step", "layer")
    assert axes["diverged_step"] == ()
    df = gf.sweep.run(fn, grid={"learning_rate": [0.1, 1e4]}, seeds=range(2),
                      workdir=tmp_path / "sweep", axes=axes, progress=False)  # fmt: skip
    runs = df.groupby(["learning_rate", "seed"])[["diverged", "diverged_step"]].first()
    assert not runs.loc[0.1].diverged.any()
    assert runs.loc[1e4].diverged.all() and (runs.loc[1e4].diverged_step >= 0).all()
    loss = df[(df.metric == "loss") & (df.learning_rate == 0.1)]
    assert sorted(loss.step.unique()) == [0, 1]  # record index along the "step" axis


# ----------------------------------------------------------------------------------- checkpoints


class _Interrupt(Exception):
    pass


def test_checkpoint_resume_gives_same_parameters(tmp_path):
    data = digits(256, 64)
    hp = {"learning_rate": 0.1, "weight_decay": 1e-3}
    whole = training.fit(SMALL, data, hp, key=jax.random.key(7))

    def crash(r, record):
        if r == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        training.fit(
            SMALL, data, hp, key=jax.random.key(7), checkpoint_dir=tmp_path, callback=crash
        )
    assert (tmp_path / training.CHECKPOINT_FILE).exists()
    resumed = training.fit(SMALL, data, hp, key=jax.random.key(7), checkpoint_dir=tmp_path)
    chex.assert_trees_all_equal(resumed.state, whole.state)  # bit for bit, BatchNorm stats too
    chex.assert_trees_all_equal(resumed.metrics, whole.metrics)
    assert "batch_stats" in resumed.state.model_state
    # a checkpoint of another run is refused
    with pytest.raises(ValueError, match="holds a different run"):
        training.fit(SMALL, data, {**hp, "learning_rate": 0.2}, key=jax.random.key(7),
                     checkpoint_dir=tmp_path)  # fmt: skip


def test_save_load_checkpoint_roundtrip_and_mismatch(tmp_path):
    data = digits(256, 64)
    state = training.init_state(SMALL, data.x_train, jax.random.key(0), {"learning_rate": 0.1})
    path = training.save_checkpoint(tmp_path / "c.npz", state, metrics={"loss": np.ones(3)})
    back, metrics, dstep, _ = training.load_checkpoint(path, state)
    chex.assert_trees_all_equal(back, state)
    np.testing.assert_array_equal(metrics["loss"], np.ones(3))
    assert dstep is None
    other = training.init_state(
        dataclasses_replace(SMALL, model=gf.models.MLP((16,), out=10)), data.x_train,
        jax.random.key(0), {"learning_rate": 0.1},
    )  # fmt: skip
    with pytest.raises(ValueError, match="does not match this run's state"):
        training.load_checkpoint(path, other)


def _tamper(path, change):
    """Rewrite the checkpoint at ``path`` with ``change(arrays)`` applied (a crafted file)."""
    with np.load(path) as z:
        arrays = dict(z.items())
    change(arrays)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


_KERNEL = "state.params['dense_0']['kernel']"


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda a: a[_KERNEL].__setitem__((0, 0), np.nan), r"non-finite values at .*dense_0"),
        (lambda a: a.__setitem__(_KERNEL, np.full(a[_KERNEL].shape, 1e300)),
         r"expected float32\[64, 8\], got float64\[64, 8\]"),  # would be cast to inf
        (lambda a: a.__setitem__("state.step", np.array(-5, np.int32)), "has step -5 < 0"),
        (lambda a: a.__setitem__("__diverged_step__", np.array(123456)),
         r"diverged_step 123456 outside \[-1, step = 4\]"),
        (lambda a: a.__setitem__("metrics/loss", np.array(["a", "b"])),
         "metric 'loss' of dtype <U1"),
        (lambda a: a.update({k: np.concatenate([v] * 5) for k, v in a.items() if "metrics/" in k}),
         "holds 10 records of '.*'; this run makes 2"),
        (lambda a: a.__setitem__("extra", np.zeros(3)), "unexpected member 'extra'"),
        # 134 MB of zeros compress to 130 kB: refused from the zip directory, never read
        (lambda a: a.__setitem__("state.step", np.zeros(1 << 24, np.int64)),
         r"'state\.step' is 134217856 bytes uncompressed, more than the"),
    ],
    ids=["nan", "1e300", "step", "diverged_step", "string_metric", "records", "extra", "bomb"],
)  # fmt: skip
def test_a_tampered_checkpoint_is_refused_before_use(tmp_path, change, pattern):
    data = digits(64, 16)
    hp = {"learning_rate": 0.1}
    whole = training.fit(TINY, data, hp, key=jax.random.key(3), checkpoint_dir=tmp_path)
    ckpt = tmp_path / training.CHECKPOINT_FILE
    _tamper(ckpt, change)
    with pytest.raises(ValueError, match=pattern):
        training.fit(TINY, data, hp, key=jax.random.key(3), checkpoint_dir=tmp_path)
    ckpt.unlink()
    again = training.fit(TINY, data, hp, key=jax.random.key(3), checkpoint_dir=tmp_path)
    chex.assert_trees_all_equal(again.metrics, whole.metrics)


def test_a_checkpoint_whose_counts_disagree_is_refused(tmp_path):
    data = digits(64, 16)
    hp = {"learning_rate": 0.1}
    training.fit(TINY, data, hp, key=jax.random.key(3), checkpoint_dir=tmp_path)
    ckpt = tmp_path / training.CHECKPOINT_FILE
    # a finished healthy run of 2 records must have made 4 updates; this one claims 3
    _tamper(ckpt, lambda a: a.__setitem__("state.step", np.array(3, np.int32)))
    with pytest.raises(ValueError, match=r"inconsistent: step 3 with 2 record\(s\) of 2 steps"):
        training.fit(TINY, data, hp, key=jax.random.key(3), checkpoint_dir=tmp_path)


def dataclasses_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------------- step, eval


def test_train_step_probe_and_batch_stats():
    data = digits(256, 64)
    model = SMALL.model
    tx = gf.optim.make_optimizer("sgd", 0.1)
    state = training.init_state(SMALL, data.x_train, jax.random.key(0), tx=tx)
    step = training.make_train_step(model, tx, probe=True)
    x, y = data.x_train[:32], data.y_train[:32]
    new, out = step(state, x, y)
    assert int(new.step) == 1 and bool(out.finite)
    assert out.grad_norm.shape == (3,) and out.update_norm.shape == (3,)
    # plain SGD: the update is -lr * gradient, layer by layer (float32)
    np.testing.assert_allclose(out.update_norm, 0.1 * out.grad_norm, rtol=1e-5)
    assert out.probe.layer_names == ("dense_0", "dense_1", "dense_2")
    np.testing.assert_allclose(out.probe.loss, out.loss, rtol=1e-5)  # probe sees the same batch
    bs_old = state.model_state["batch_stats"]["dense_0"]["norm"]["mean"]
    bs_new = new.model_state["batch_stats"]["dense_0"]["norm"]["mean"]
    assert not np.allclose(bs_old, bs_new)  # BatchNorm running statistics moved


def test_evaluate_matches_numpy_and_init_scale_scales_kernels():
    data = digits(256, 64)
    cfg = training.TrainConfig(model=gf.models.MLP((8,), out=10), steps=1, record_every=1)
    s1 = training.init_state(cfg, data.x_train, jax.random.key(0), {"learning_rate": 0.1})
    s3 = training.init_state(
        cfg, data.x_train, jax.random.key(0), {"learning_rate": 0.1, "init_scale": 3.0}
    )
    np.testing.assert_allclose(s3.params["dense_0"]["kernel"], 3 * s1.params["dense_0"]["kernel"],
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(s3.params["dense_0"]["bias"], s1.params["dense_0"]["bias"])
    res = training.evaluate(cfg.model, s1.variables, data.x_test, data.y_test)
    logits = np.asarray(cfg.model.apply(s1.variables, data.x_test), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    ce = -np.mean(logp[np.arange(len(data.y_test)), data.y_test])
    np.testing.assert_allclose(res["loss"], ce, rtol=1e-5)  # float32 vs float64 reference
    np.testing.assert_allclose(res["accuracy"], np.mean(logits.argmax(-1) == data.y_test))


def test_evaluate_refuses_bad_data_and_never_scores_it():
    """Non-finite inputs, labels out of range and an empty batch raise when concrete; under jit
    (nothing can raise) the accuracy of non-finite outputs and everything about out-of-range
    labels is NaN, never a number such as 1/3."""
    model = gf.models.MLP((4,), out=3)
    x = jnp.ones((6, 2))
    y = jnp.array([0, 1, 2, 0, 1, 2])
    variables = model.init(jax.random.key(0), x)
    ok = training.evaluate(model, variables, x, y)
    assert np.isfinite(ok["loss"]) and 0 <= ok["accuracy"] <= 1
    nan_x = jnp.full((6, 2), jnp.nan)
    with pytest.raises(ValueError, match=r"x holds 12 non-finite value\(s\), the first nan at"):
        training.evaluate(model, variables, nan_x, y)
    with pytest.raises(ValueError, match=r"x holds 1 non-finite .* inf at index \(3, 1\)"):
        training.evaluate(model, variables, x.at[3, 1].set(jnp.inf), y)
    with pytest.raises(ValueError, match=r"y: labels must lie in \[0, 3\) .* got 7 at \(2,\)"):
        training.evaluate(model, variables, x, y.at[2].set(7))
    with pytest.raises(ValueError, match=r"non-empty batch: x has shape \(0, 2\)"):
        training.evaluate(model, variables, x[:0], y[:0])
    with pytest.raises(ValueError, match=r"same number of examples, got \(6, 2\) and \(5,\)"):
        training.evaluate(model, variables, x, y[:5])
    with pytest.raises(TypeError, match=r"variables must be the dict model\.init returned"):
        training.evaluate(model, [1, 2], x, y)
    jitted = jax.jit(lambda v, a, b: training.evaluate(model, v, a, b))
    traced = jitted(variables, nan_x, y)
    assert np.isnan(traced["accuracy"]) and np.isnan(traced["loss"])
    traced = jitted(variables, x, y.at[2].set(7))
    assert np.isnan(traced["accuracy"]) and np.isnan(traced["loss"])
    np.testing.assert_allclose(jitted(variables, x, y)["accuracy"], ok["accuracy"])


def test_callable_and_fixed_optimizers_and_max_loss():
    data = digits(128, 32)

    def make(hp):
        return optax.chain(gf.optim.clip_by_layer_norm(hp["clip"]), optax.sgd(hp["lr"]))

    model = gf.models.MLP((8,), out=10)
    cfg = training.TrainConfig(model=model, optimizer=make, steps=2, batch_size=16, record_every=1)
    out = training.train_fn(cfg, data)({"clip": 0.5, "lr": 0.1}, jax.random.key(0))
    assert out["loss"].shape == (2,) and int(out["diverged_step"]) == -1
    assert out["optim/clip_by_layer_norm/layer_norms"].shape == (2, 2)
    # a fixed transformation, and max_loss: a loss above it counts as divergence
    cfg = training.TrainConfig(model=model, optimizer=optax.sgd(0.1), steps=2, batch_size=16,
                               record_every=1, max_loss=1e-3)  # fmt: skip
    out = training.train_fn(cfg, data)({}, jax.random.key(0))
    assert int(out["diverged_step"]) == 0  # the very first loss exceeds 1e-3
    assert np.all(np.isnan(out["loss"]))
    assert not any(k.startswith("optim/") for k in out)  # optax.sgd keeps no telemetry


def test_a_minibatch_of_every_example_is_the_full_batch():
    """Minibatches are drawn without replacement: batch_size = n takes every example once, so the
    run equals full-batch training (float32 sums in another order: rtol 1e-4)."""
    data = digits(64, 16)
    full = training.train_fn(TINY, data)({"learning_rate": 0.5}, jax.random.key(0))
    cfg = dataclasses.replace(TINY, batch_size=64)
    every = training.train_fn(cfg, data)({"learning_rate": 0.5}, jax.random.key(0))
    np.testing.assert_allclose(every["loss"], full["loss"], rtol=1e-4)
    np.testing.assert_allclose(every["grad_norm"], full["grad_norm"], rtol=1e-4)


# ----------------------------------------------------------------------------------- errors


def test_bad_configuration_and_hyperparameters_raise():
    model = gf.models.MLP((8,), out=10)
    data = digits(128, 32)
    with pytest.raises(ValueError, match="unknown optimizer 'adamax'; valid names: sgd"):
        training.TrainConfig(model=model, optimizer="adamax")
    with pytest.raises(ValueError, match=r"steps \(25\) must be a multiple of record_every \(10\)"):
        training.TrainConfig(model=model, steps=25)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1 or None"):
        training.TrainConfig(model=model, batch_size=0)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        training.TrainConfig(model=model, loss="hinge")
    with pytest.raises(TypeError, match=r"model must be a flax\.linen Module, a flax\.nnx"):
        training.TrainConfig(model="mlp")
    with pytest.raises(ValueError, match="max_loss must be a positive number"):
        training.TrainConfig(model=model, max_loss=-1.0)
    cfg = training.TrainConfig(model=model, steps=2, batch_size=16, record_every=1)
    with pytest.raises(ValueError, match=r"needs hparams\['learning_rate'\]"):
        training.fit(cfg, data, {"lr": 0.1}, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"hparams\['learning_rate'\] must be a finite number > 0"):
        training.fit(cfg, data, {"learning_rate": -0.1}, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"hparams\['clip'\] must be a number > 0"):
        training.fit(cfg, data, {"learning_rate": 0.1, "clip": -1.0}, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"hparams\['weight_decay'\] must be a finite number >= 0"):
        training.fit(cfg, data, {"learning_rate": 0.1, "weight_decay": -1.0}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="batch_size 16 exceeds the 8 training examples"):
        training.fit(cfg, (data.x_train[:8], data.y_train[:8]), {"learning_rate": 0.1},
                     key=jax.random.key(0))  # fmt: skip
    with pytest.raises(TypeError, match="data must be"):
        training.train_fn(cfg, data.x_train)
    with pytest.raises(ValueError, match="checkpoint_every must be an int >= 1"):
        training.fit(cfg, data, {"learning_rate": 0.1}, key=jax.random.key(0), checkpoint_every=0)
    hp, key = {"learning_rate": 0.1}, jax.random.key(0)
    with pytest.raises(TypeError, match=r"key must be a PRNG key, e.g. jax.random.key\(0\), got 3"):
        training.fit(cfg, data, hp, key=3)
    with pytest.raises(TypeError, match=r"key must be a PRNG key.* of dtype float32"):
        training.init_state(cfg, data.x_train, jnp.ones(2), hp)
    with pytest.raises(TypeError, match=r"hparams must be a mapping .* got 3"):
        training.fit(cfg, data, 3, key=key)
    with pytest.raises(
        TypeError, match=r"hparams\['learning_rate'\] must be a real number or array, got 'x'"
    ):
        training.build_optimizer(cfg, {"learning_rate": "x"})
    with pytest.raises(ValueError, match=r"hparams\['init_scale'\] must be a finite number"):
        training.init_state(cfg, data.x_train, key, {**hp, "init_scale": float("nan")})
    with pytest.raises(ValueError, match=r"x is empty \(shape \(0, 64\)\); give at least one"):
        training.init_state(cfg, data.x_train[:0], key, hp)
    with pytest.raises(TypeError, match=r"config must be a TrainConfig, got None"):
        training.record_steps(None)
    with pytest.raises(TypeError, match=r"tx must be an optax.GradientTransformation .* got 3"):
        training.make_train_step(model, 3)
    with pytest.raises(TypeError, match=r"checkpoint_dir must be a path .* got 3"):
        training.fit(cfg, data, hp, key=key, checkpoint_dir=3)
    with pytest.raises(ValueError, match=r"data: inputs and targets must have the same number"):
        training.train_fn(cfg, (data.x_train, data.y_train[:5]))
    # traced keys and hyperparameters pass the checks (values are checked where concrete)
    keys = jax.random.split(key, 2)
    lrs = jnp.array([0.1, 0.2])
    states = jax.vmap(
        lambda k, lr: training.init_state(cfg, data.x_train, k, {"learning_rate": lr})
    )(keys, lrs)
    assert states.step.shape == (2,)


# ------------------------------------------------------------- the researcher's own models


class _NNXNet:
    """An NNX MLP on digits with BatchNorm and dropout (defined lazily: flax.nnx import)."""

    @staticmethod
    def make(seed=0):
        from flax import nnx

        class Net(nnx.Module):
            def __init__(self, rngs):
                self.fc = nnx.Linear(64, 16, rngs=rngs)
                self.bn = nnx.BatchNorm(16, rngs=rngs)
                self.drop = nnx.Dropout(0.1, rngs=rngs)
                self.head = nnx.Linear(16, 10, rngs=rngs)

            def __call__(self, x):
                return self.head(self.drop(nnx.relu(self.bn(self.fc(x)))))

        return Net(nnx.Rngs(seed))


def _eqx_pair():
    import equinox as eqx

    static = eqx.partition(eqx.nn.MLP(64, 10, 16, 1, key=jax.random.key(0)), eqx.is_inexact_array)[
        1
    ]

    def init_fn(key, x):
        return eqx.partition(eqx.nn.MLP(64, 10, 16, 1, key=key), eqx.is_inexact_array)[0]

    def apply_fn(params, x):
        return jax.vmap(eqx.combine(params, static))(x)

    return init_fn, apply_fn


def _linen_unordered():
    import flax.linen as nn

    class ConvBN(nn.Module):
        rate: float = 0.0

        @nn.compact
        def __call__(self, x, train: bool = False):
            x = x.reshape(x.shape[0], 8, 8, 1)
            x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x)))
            x = nn.Dropout(self.rate, deterministic=not train)(x.mean((1, 2)))
            return nn.Dense(10)(x)

    return ConvBN


def test_train_nnx_module_with_batchnorm_dropout_and_resume(tmp_path):
    data = digits(256, 64)
    cfg = training.TrainConfig(
        model=_NNXNet.make(), optimizer="adam", steps=6, batch_size=32, record_every=2, probe=True
    )
    hp = {"learning_rate": 1e-2}
    whole = training.fit(cfg, data, hp, key=jax.random.key(1))
    assert whole.layer_names == ("fc", "bn", "head")  # forward order, not alphabetical
    assert whole.metrics["grad_norm"].shape == (3, 3)
    assert whole.metrics["loss"][-1] < whole.metrics["loss"][0]
    assert whole.metrics["probe/preact_grad_norm"].shape == (3, 3)

    def crash(r, record):
        if r == 1:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        training.fit(cfg, data, hp, key=jax.random.key(1), checkpoint_dir=tmp_path, callback=crash)
    resumed = training.fit(cfg, data, hp, key=jax.random.key(1), checkpoint_dir=tmp_path)
    chex.assert_trees_all_equal(resumed.state, whole.state)  # BatchNorm stats and RNG streams
    chex.assert_trees_all_equal(resumed.metrics, whole.metrics)


def test_train_pair_per_seed_init_vmapped_equals_separate_runs():
    data = digits(128, 32)
    cfg = training.TrainConfig(
        model=_eqx_pair(), optimizer="sgd", steps=4, batch_size=16, record_every=2
    )
    fn = training.train_fn(cfg, data)
    keys = jax.vmap(jax.random.key)(jnp.arange(3))
    batched = jax.jit(jax.vmap(lambda k: fn({"learning_rate": 0.1}, k)))(keys)
    assert batched["grad_norm"].shape == (3, 2, 2)  # seeds, records, layers/0 and layers/1
    for i in range(3):
        single = fn({"learning_rate": 0.1}, keys[i])
        np.testing.assert_allclose(batched["loss"][i], single["loss"], rtol=1e-5)
    assert not np.allclose(batched["loss"][0], batched["loss"][1])  # different inits


def test_train_equinox_module_detects_divergence():
    import equinox as eqx

    data = digits(128, 32)
    mlp = eqx.nn.MLP(64, 10, 32, 4, activation=jnp.tanh, key=jax.random.key(0))
    cfg = training.TrainConfig(model=mlp, optimizer="sgd", loss="mse", steps=40, batch_size=32,
                               record_every=10)  # fmt: skip
    out = training.train_fn(cfg, data)({"learning_rate": 50.0, "init_scale": 4.0},
                                       jax.random.key(0))  # fmt: skip
    assert int(out["diverged_step"]) >= 0
    assert np.isnan(out["loss"][-1])
    calm = training.train_fn(cfg, data)({"learning_rate": 0.01}, jax.random.key(0))
    assert int(calm["diverged_step"]) == -1


def test_train_linen_unordered_names_and_dropout_per_step():
    data = digits(128, 32)
    ConvBN = _linen_unordered()
    hist = training.fit(
        training.TrainConfig(
            model=ConvBN(rate=0.5), optimizer="adam", steps=4, batch_size=32, record_every=2
        ),
        data,
        {"learning_rate": 1e-2},
        key=jax.random.key(0),
    )
    assert hist.layer_names == ("Conv_0", "BatchNorm_0", "Dense_0")
    # dropout draws a fresh mask every step: two steps from the same state differ only by key
    cfg = training.TrainConfig(model=ConvBN(rate=0.5), steps=1, record_every=1)
    tx = optax.sgd(0.1)
    state = training.init_state(cfg, data.x_train, jax.random.key(0), tx=tx)
    step = training.make_train_step(cfg.model, tx)
    x, y = data.x_train[:16], data.y_train[:16]
    _, a = step(state, x, y)
    _, b = step(state.replace(key=jax.random.split(state.key)[0]), x, y)
    _, c = step(state, x, y)
    assert float(a.loss) != float(b.loss) and float(a.loss) == float(c.loss)


def test_train_config_rejects_models_it_cannot_train():
    with pytest.raises(TypeError, match="or a pair"):
        training.TrainConfig(model=lambda p, x: x)
    with pytest.raises(TypeError, match="or a pair"):
        training.TrainConfig(model=(1, 2))
