"""Tests for gradflow.rng: Threefry-2x32 laid out as XLA's RngBitGenerator, batch-independent.

Tolerances: the distribution tests draw n = 2**18 normals; their mean is within 5 / sqrt(n) of 0
and their variance within 5 * sqrt(2 / n) of 1 (5 standard errors), and a Kolmogorov-Smirnov test
against N(0, 1) must not reject at p = 1e-4. All draws are deterministic (fixed seeds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import user_models

import gradflow as gf

SEEDS = jnp.arange(6, dtype=jnp.uint32)


def test_vmapped_draws_equal_single_draws():
    # lax.rng_bit_generator alone would give every vmapped seed the first seed's numbers
    def draw(seed):
        k = gf.rng.key(seed)
        k1, k2 = jax.random.split(k)
        return (
            jax.random.normal(k1, (5, 7)),
            jax.random.uniform(jax.random.fold_in(k2, 3), (4,)),
            jax.random.bits(k, (3,)),
        )

    batched = jax.jit(jax.vmap(draw))(SEEDS)
    for i, seed in enumerate(SEEDS):
        alone = jax.jit(draw)(seed)
        for b, a in zip(batched, alone, strict=True):
            np.testing.assert_array_equal(np.asarray(b[i]), np.asarray(a))
    normals = np.asarray(batched[0]).reshape(len(SEEDS), -1)
    assert len({row.tobytes() for row in normals}) == len(SEEDS)  # every seed its own stream
    # nested vmap (e.g. seeds x learning rates) and a chunk of another size agree too
    grid = jax.jit(jax.vmap(jax.vmap(lambda s: draw(s)[0])))(SEEDS.reshape(2, 3))
    np.testing.assert_array_equal(np.asarray(grid).reshape(6, 5, 7), np.asarray(batched[0]))
    again = jax.jit(jax.vmap(lambda s: draw(s)[0]))(SEEDS[2:5])
    np.testing.assert_array_equal(np.asarray(again), np.asarray(batched[0][2:5]))


# odd, even, scalar, empty and unit shapes: XLA halves the first even dimension, else the largest
SHAPES = [(), (1,), (2,), (7,), (0,), (3, 0), (2, 3), (3, 4), (4, 2), (4, 6), (3, 5), (5, 3),
          (1, 1, 2), (5, 1, 3), (7, 9, 11), (64, 30), (30, 10)]  # fmt: skip


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.uint16, jnp.uint32, jnp.uint64])
def test_bits_equal_xla_rng_bit_generator(dtype, x64):
    gen = np.random.default_rng(0)
    narrow = np.dtype(dtype).itemsize < 4  # the low bits of the 32-bit path: fewer shapes
    for shape in SHAPES[::3] if narrow else SHAPES:
        words = gen.integers(0, 2**32, 4, dtype=np.uint64).astype(np.uint32)
        words[2] = 0xFFFFFFF9  # the counter's low word carries into the high word
        kd = jnp.asarray(words)
        want = jax.lax.rng_bit_generator(
            kd, shape, dtype, algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY
        )[1]
        got = jax.jit(
            lambda kd, shape=shape: jax.random.bits(
                jax.random.wrap_key_data(kd, impl=gf.rng.IMPL), shape, dtype
            )
        )(kd)
        assert got.dtype == want.dtype and got.shape == want.shape, shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(shape))


def test_threefry2x32_known_answers():
    # Random123's known-answer vectors for Threefry-2x32-20 (kat_vectors)
    k0, k1 = jnp.uint32([0, 0xFFFFFFFF, 0x13198A2E]), jnp.uint32([0, 0xFFFFFFFF, 0x03707344])
    x0, x1 = jnp.uint32([0, 0xFFFFFFFF, 0x243F6A88]), jnp.uint32([0, 0xFFFFFFFF, 0x85A308D3])
    y0, y1 = gf.rng.threefry2x32(k0, k1, x0, x1)
    np.testing.assert_array_equal(np.asarray(y0), np.uint32([0x6B200159, 0x1CB996FC, 0xC4923A9C]))
    np.testing.assert_array_equal(np.asarray(y1), np.uint32([0x99BA4EFE, 0xBB002BE7, 0x483DF7A0]))


def test_threefry2x32_rejects_other_dtypes():
    w = jnp.uint32([1, 2])
    with pytest.raises(TypeError, match="threefry2x32: x1 must be a uint32 array, got int32"):
        gf.rng.threefry2x32(w, w, w, jnp.int32([1, 2]))
    with pytest.raises(TypeError, match="threefry2x32: k0 must be a uint32 array, got int"):
        gf.rng.threefry2x32(7, w, w, w)


def test_an_unbatched_key_inside_vmap():
    k = gf.rng.key(7)
    out = jax.vmap(lambda x: x + jax.random.normal(k, (3,)))(jnp.arange(4.0))
    np.testing.assert_array_equal(np.asarray(out - jnp.arange(4.0)[:, None])[0],
                                  np.asarray(jax.random.normal(k, (3,))))  # fmt: skip
    assert np.allclose(np.asarray(out[1] - out[0]), 1.0)


def test_normal_distribution():
    n = 2**18
    x = np.asarray(jax.random.normal(gf.rng.key(0), (n,)), np.float64)
    assert abs(x.mean()) < 5 / np.sqrt(n)
    assert abs(x.var() - 1) < 5 * np.sqrt(2 / n)
    assert scipy.stats.kstest(x, "norm").pvalue > 1e-4
    u = np.asarray(jax.random.uniform(gf.rng.key(1), (n,)), np.float64)
    assert scipy.stats.kstest(u, "uniform").pvalue > 1e-4
    # another stream than JAX's default key (same distribution)
    assert not np.array_equal(x[:8], np.asarray(jax.random.normal(jax.random.key(0), (8,))))


def test_float64_and_flax_init(x64):
    z = jax.random.normal(gf.rng.key(3), (1000,), jnp.float64)
    assert z.dtype == jnp.float64 and len(np.unique(np.asarray(z))) == 1000
    model = gf.models.MLP(widths=(256, 256), out=10, kernel_init="lecun_normal")
    x = jnp.zeros((2, 64), jnp.float32)
    params = jax.vmap(lambda s: model.init(gf.rng.key(s), x))(SEEDS[:2])["params"]
    k = np.asarray(params["dense_1"]["kernel"], np.float64)  # (2 seeds, 256, 256), N(0, 1/256)
    assert k.shape == (2, 256, 256) and not np.array_equal(k[0], k[1])
    assert abs(k.std() * 16 - 1) < 0.01  # n = 131072 draws: 5 standard errors ~ 0.01


# ------------------------------------------------------------------ threefry_key: JAX's stream


def _same_key(a, b):
    np.testing.assert_array_equal(np.asarray(jax.random.key_data(a)), jax.random.key_data(b))


def _jax_and_fused(seed, fn):
    """``fn(key)`` with JAX's default key and with gf.rng.threefry_key, both jitted; for a list
    of seeds, ``[(jax's, fused), ...]`` from one compiled program each (not one per seed)."""
    programs = [jax.jit(lambda s, make=make: fn(make(s)))
                for make in (jax.random.key, gf.rng.threefry_key)]  # fmt: skip
    if isinstance(seed, list):
        return [[p(s) for p in programs] for s in seed]
    return [p(seed) for p in programs]


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.uint16, jnp.uint32, jnp.uint64])
def test_threefry_key_bits_equal_jax(dtype, x64):
    shapes = SHAPES[::3] if np.dtype(dtype).itemsize < 4 else SHAPES  # narrow: 32-bit's low bits
    seeds = [np.uint32(0), np.uint32(2**32 - 1)]
    draws = _jax_and_fused(seeds, lambda k: [jax.random.bits(k, shape, dtype) for shape in shapes])
    for want, got in draws:
        for shape, w, g in zip(shapes, want, got, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape == shape
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=str(shape))


def test_threefry_key_split_fold_in_and_draws_equal_jax():
    def derive(k):
        k1, k2 = jax.random.split(k)
        grid = jax.random.split(k2, (3, 4))
        return (
            jax.random.key_data(k),
            jax.random.key_data(jax.random.split(k, 5)),
            jax.random.key_data(grid),
            jax.random.key_data(jax.random.fold_in(k1, 2**32 - 3)),
            jax.random.normal(jax.random.fold_in(k, 7), (5, 7)),
            jax.random.uniform(k1, (9,)),
            jax.random.truncated_normal(grid[1, 2], -2.0, 2.0, (4, 4)),
            jax.random.randint(k2, (6,), 0, 1000),
            jax.random.permutation(k1, 11),
        )

    for want, got in _jax_and_fused([np.uint32(s) for s in (0, 3, 2**32 - 1)], derive):
        for w, g in zip(want, got, strict=True):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    # vmapped over seeds: each seed gets what it gets alone, as with jax.random.key
    batched = jax.jit(jax.vmap(lambda s: derive(gf.rng.threefry_key(s))))(SEEDS)
    alone = jax.jit(lambda s: derive(jax.random.key(s)))
    for i, seed in enumerate(SEEDS):
        for b, w in zip(batched, alone(seed), strict=True):
            np.testing.assert_array_equal(np.asarray(b[i]), np.asarray(w))


def test_threefry_key_flax_init_equals_jax(x64):
    model = gf.models.MLP(widths=(16,) * 6, out=3, activation="tanh")  # a scanned run of 6
    x = jnp.ones((4, 8), jnp.float64 if x64 else jnp.float32)
    want, got = _jax_and_fused(jnp.uint32(11), lambda k: model.init(k, x))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def _arrays(um) -> list:
    """Every array a user model's factory drew: its batch, variables and the model's own state
    (NNX modules and Equinox models hold their parameters)."""
    from flax import nnx

    model = nnx.state(um.model) if isinstance(um.model, nnx.Module) else um.model
    leaves = jax.tree.leaves((um.x, um.y, um.variables, model))
    return [np.asarray(v) for v in leaves if isinstance(v, jax.Array)]


@pytest.mark.parametrize("name", sorted(user_models.FACTORIES))
def test_threefry_key_builds_researchers_models_as_jax_random_key(name):
    # linen CNNs / Transformers / scans, NNX modules, an Equinox model and a plain function's
    # parameters built from the key: the same arrays, bit for bit, as with jax.random.key
    want = _arrays(user_models.FACTORIES[name](jax.random.key(5)))
    got = _arrays(user_models.FACTORIES[name](gf.rng.threefry_key(5)))
    assert len(got) == len(want) >= 3
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, w)


def test_threefry_key_follows_jax_without_partitionable():
    # JAX's other layout (jax_threefry_partitionable off) draws other numbers: the key follows it
    with jax.threefry_partitionable(False):
        for shape in [(5,), (3, 4), (7, 9, 11)]:
            want, got = _jax_and_fused(4, lambda k, shape=shape: jax.random.normal(k, shape))
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            want, got = _jax_and_fused(4, lambda k, shape=shape: jax.random.split(k, shape))
            _same_key(got, want)
        off = jax.random.normal(gf.rng.threefry_key(4), (5,))
    on = jax.random.normal(gf.rng.threefry_key(4), (5,))
    assert not np.array_equal(np.asarray(off), np.asarray(on))  # the two layouts do differ


def test_threefry_key_checks_its_seed():
    with pytest.raises(TypeError, match="seed must be an integer"):
        gf.rng.threefry_key(1.5)
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2\*\*32\)"):
        gf.rng.threefry_key(-1)
    assert jax.random.key_impl(gf.rng.threefry_key(0)) is not None


def test_resolve_and_bad_names(tmp_path):
    assert gf.rng.resolve("threefry") is gf.rng.threefry_key
    assert gf.rng.resolve("native") is gf.rng.key
    with pytest.raises(ValueError, match="unknown rng 'philox'; valid names: threefry, native"):
        gf.rng.resolve("philox")
    with pytest.raises(ValueError, match="unknown rng 'fast'; valid names: threefry, native"):
        gf.sweep.run(lambda h, k: {"x": 0.0}, {"a": [1.0]}, range(2), workdir=tmp_path, rng="fast")


def _fn(hparams, key):
    return {"w": jax.random.normal(key, (3,)) * hparams["scale"]}


def test_sweep_with_native_keys(tmp_path):
    grid = {"scale": [1.0, 2.0]}
    df = gf.sweep.run(_fn, grid, range(3), workdir=tmp_path / "a", rng="native", chunk_size=2)
    got = df[df.scale == 2.0].sort_values(["seed", "layer"])["value"].to_numpy()
    want = [2 * np.asarray(jax.random.normal(gf.rng.key(s), (3,))) for s in range(3)]
    want = np.concatenate(want)
    np.testing.assert_allclose(got, want, rtol=1e-6)  # float32 -> float64 table
    assert gf.sweep.load_metadata(tmp_path / "a")["config"]["rng"] == "native"
    # the default keys are another sweep: the store refuses to mix them
    with pytest.raises(ValueError, match=r"holds|different|another"):
        gf.sweep.run(_fn, grid, range(3), workdir=tmp_path / "a", chunk_size=2)


def test_sweep_default_keys_draw_jax_random_key_numbers(tmp_path):
    df = gf.sweep.run(_fn, {"scale": [1.0, 2.0]}, range(3), workdir=tmp_path, chunk_size=2)
    got = df[df.scale == 2.0].sort_values(["seed", "layer"])["value"].to_numpy()
    want = [2 * np.asarray(jax.random.normal(jax.random.key(s), (3,))) for s in range(3)]
    want = np.concatenate(want)
    np.testing.assert_array_equal(got, want.astype(np.float64))  # bit for bit, not just close
    assert "rng" not in gf.sweep.load_metadata(tmp_path)["config"]  # the default: stores resume


@pytest.mark.slow
def test_native_keys_same_on_two_devices(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, sys
        import jax
        jax.config.update("jax_num_cpu_devices", 2)
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        import gradflow as gf
        from test_rng import _fn
        assert len(jax.devices()) == 2
        df = gf.sweep.run(_fn, {{"scale": [1.0, 2.0]}}, range(3), workdir=sys.argv[1],
                          rng="native", chunk_size=3)
        df = df.sort_values(["scale", "seed", "layer"])
        print(json.dumps(df["value"].tolist()))
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    two = json.loads(out.stdout.strip().splitlines()[-1])
    one = gf.sweep.run(_fn, {"scale": [1.0, 2.0]}, range(3), workdir=tmp_path / "one",
                       rng="native", chunk_size=3)  # fmt: skip
    one = one.sort_values(["scale", "seed", "layer"])["value"].to_numpy()
    np.testing.assert_allclose(np.asarray(two), one, rtol=1e-6)
