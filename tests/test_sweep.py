"""Tests of gradflow.sweep: table layout, one compile per group, resume, divergence, devices, hosts.

In-process tests use functions without a PRNG draw (threefry compiles slowly on CPU) and read the
key through ``jax.random.key_data``; the subprocess tests run ``tests/sweep_worker.py``, a
tanh net with ``jax.random.normal`` weights, on 4 devices, on 2 processes x 2 devices over gloo,
and under ``kill -9``, and compare with the same sweep computed here on one device.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradflow import sweep

HERE = Path(__file__).resolve().parent
WORKER = HERE / "sweep_worker.py"
SUBPROCESS_TIMEOUT_S = 180


def _load_worker():
    spec = importlib.util.spec_from_file_location("gradflow_sweep_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def key_fn(hparams, key):
    """Cheap metrics of every shape; the key's data shows which key each run received."""
    steps = jnp.arange(3.0)
    layers = jnp.arange(hparams["n"], dtype=jnp.float32)
    bits = jax.random.key_data(key).astype(jnp.float32)
    return {
        "loss": hparams["a"] * steps,  # 1-d: "layer" by default
        "final": hparams["a"] + bits[1],  # 0-d
        "grad": hparams["a"] * steps[:, None] + layers[None, :],  # 2-d: (step, layer)
        "key": bits,
    }


GRID = {"a": [0.5, 2.0, 3.0], "n": [2, 3], "act": ["tanh", None]}
SEEDS = [7, 3]


def _run(tmp_path, fn=key_fn, grid=GRID, seeds=SEEDS, **kw):
    kw.setdefault("static", ("n",) if "n" in grid else ())
    kw.setdefault("progress", False)
    return sweep.run(fn, grid, seeds, workdir=kw.pop("workdir", tmp_path / "w"), **kw)


# ----------------------------------------------------------------------------- layout


def test_table_layout_and_values(tmp_path):
    df = _run(tmp_path)
    assert list(df.columns) == [
        "a",
        "n",
        "act",
        "seed",
        "metric",
        "step",
        "layer",
        "value",
        "diverged",
        "diverged_step",
    ]
    assert dict(df.dtypes.astype(str)) == {
        "a": "float64",
        "n": "Int64",
        "act": "string",
        "seed": "int64",
        "metric": "string",
        "step": "Int64",
        "layer": "Int64",
        "value": "float64",
        "diverged": "bool",
        "diverged_step": "Int64",
    }
    # rows: per group (n, act) and run (a, seed): loss 3 + final 1 + grad 3n + key 2
    n_runs = len(GRID["a"]) * len(SEEDS)
    assert len(df) == sum(n_runs * len(GRID["act"]) * (3 + 1 + 3 * n + 2) for n in GRID["n"])
    keys = ["a", "n", "act", "seed", "metric", "step", "layer"]
    assert not df.duplicated(keys).any()
    assert set(df.seed) == set(SEEDS)
    assert df.act.isna().sum() > 0 and set(df.act.dropna()) == {"tanh"}

    loss = df[df.metric == "loss"]
    assert loss.step.isna().all() and loss.layer.notna().all()  # 1-d -> ("layer",)
    np.testing.assert_allclose(loss.value, loss.a * loss.layer.astype(float), rtol=1e-6)
    final = df[df.metric == "final"]
    assert final.step.isna().all() and final.layer.isna().all()  # 0-d -> scalar row
    grad = df[df.metric == "grad"]
    expected = grad.a * grad.step.astype(float) + grad.layer.astype(float)
    np.testing.assert_allclose(grad.value, expected, rtol=1e-6)  # float32 products
    assert (
        grad.groupby(["n", "act", "a", "seed"]).layer.max()
        == grad.groupby(["n", "act", "a", "seed"]).n.first() - 1
    ).all()

    # every run received jax.random.key(seed): the key a single-run script would use
    key = df[df.metric == "key"]
    for seed in SEEDS:
        data = np.asarray(jax.random.key_data(jax.random.key(seed)), dtype=np.float64)
        got = key[key.seed == seed].pivot_table(
            index=["a", "n", "act"], columns="layer", values="value", dropna=False
        )
        np.testing.assert_array_equal(got.to_numpy(), np.broadcast_to(data, got.shape))
    assert not df.diverged.any() and df.diverged_step.isna().all()


def test_hparams_reach_fn_as_declared(tmp_path):
    seen = []

    def fn(hparams, key):
        seen.append({k: type(v) for k, v in hparams.items()})
        assert list(hparams) == list(GRID)
        return {"x": hparams["a"] * hparams["n"]}

    df = _run(tmp_path, fn)
    assert len(seen) == 4  # one trace per (n, act) group
    for types in seen:
        assert types["n"] is int and types["act"] in (str, type(None))
        assert issubclass(types["a"], jax.core.Tracer)
    np.testing.assert_allclose(df.value, df.a * df.n.astype(float), rtol=1e-6)


def test_compiles_once_per_group_and_resume_skips_everything(tmp_path):
    traces = []

    def fn(hparams, key):
        traces.append(hparams["n"])
        return key_fn(hparams, key)

    df = _run(tmp_path, fn, chunk_size=1)  # 6 chunks per group, one compile per group
    assert sorted(traces) == [2, 2, 3, 3]
    again = _run(tmp_path, fn, chunk_size=1)
    assert len(traces) == 4  # nothing left to do: no trace, no compile
    pd.testing.assert_frame_equal(again, df)
    meta = sweep.load_metadata(tmp_path / "w")
    assert meta["complete"] and len(meta["sessions"]) == 2
    assert meta["sessions"][1]["groups"] == []


_UNCHUNKED = {}


@settings(max_examples=3)
@given(chunk_size=st.integers(1, 7))
def test_results_do_not_depend_on_chunking(tmp_path_factory, chunk_size):
    """Each run's key comes from its seed alone; chunking only changes the batch shape."""
    grid = {"a": GRID["a"], "n": [2]}
    if "df" not in _UNCHUNKED:
        _UNCHUNKED["df"] = _run(tmp_path_factory.mktemp("whole"), grid=grid)
    chunked = _run(tmp_path_factory.mktemp("chunked"), grid=grid, chunk_size=chunk_size)
    pd.testing.assert_frame_equal(chunked, _UNCHUNKED["df"], check_exact=False, rtol=1e-6)


def test_axes_override_and_extra_axis_columns(tmp_path):
    def fn(hparams, key):
        return {
            "loss": hparams["a"] * jnp.arange(4.0),
            "dh_norm": jnp.ones((2, 3, 5)),
            "grad_norm": jnp.zeros((4, 2)),
        }

    axes = {"loss": ("step",), "dh_norm": ("step", "t", "unit")}
    df = _run(tmp_path, fn, grid={"a": [1.0]}, seeds=[0], axes=axes)
    assert list(df.columns[3:7]) == ["step", "layer", "t", "unit"]
    loss = df[df.metric == "loss"]
    assert loss.step.tolist() == [0, 1, 2, 3] and loss[["layer", "t", "unit"]].isna().all().all()
    dh = df[df.metric == "dh_norm"]
    assert len(dh) == 30 and dh.layer.isna().all() and dh.unit.max() == 4
    grad = df[df.metric == "grad_norm"]  # default 2-d naming
    assert grad.step.max() == 3 and grad.layer.max() == 1 and grad.t.isna().all()


# ----------------------------------------------------------------------------- divergence


def test_diverged_runs_are_marked_and_the_sweep_continues(tmp_path):
    def fn(hparams, key):
        # exp(a * step) overflows float32 (max ~3.4e38, e^88.7) at step > 88.7 / a
        loss = jnp.exp(hparams["a"] * jnp.arange(10.0))
        return {"loss": loss, "grad": jnp.stack([loss, -loss], axis=1), "final": loss[-1]}

    df = _run(tmp_path, fn, grid={"a": [1.0, 20.0, 45.0]}, seeds=[0, 1], axes={"loss": ("step",)})
    runs = df.groupby("a").agg(
        diverged=("diverged", "all"), any_=("diverged", "any"), step=("diverged_step", "first")
    )
    assert (runs.diverged == runs.any_).all()  # a run is diverged on every one of its rows
    assert runs.loc[1.0, "diverged"] == False  # noqa: E712
    assert pd.isna(runs.loc[1.0, "step"])
    assert runs.loc[20.0, "diverged"] and runs.loc[20.0, "step"] == 5  # 20 * 5 = 100 > 88.7
    assert runs.loc[45.0, "diverged"] and runs.loc[45.0, "step"] == 2  # 45 * 2 = 90 > 88.7
    # values stay non-finite, flagged
    bad = df[(df.a == 20.0) & (df.metric == "loss") & (df.step >= 5)]
    assert np.isinf(bad.value).all()
    assert np.isfinite(df[~df.diverged].value).all()


def test_diverged_step_reported_by_fn(tmp_path):
    """The training loop's convention: diverged_step = -1 while finite, else the step."""

    def fn(hparams, key):
        step = jnp.where(hparams["a"] > 1.0, 3, -1)
        return {"loss": jnp.full(5, hparams["a"]), "diverged_step": step}

    df = _run(tmp_path, fn, grid={"a": [1.0, 2.0]}, seeds=[0])
    assert set(df.metric) == {"loss"}  # diverged_step is a column, not rows
    ok, bad = df[df.a == 1.0], df[df.a == 2.0]
    assert not ok.diverged.any() and ok.diverged_step.isna().all()
    assert bad.diverged.all() and (bad.diverged_step == 3).all()


# ----------------------------------------------------------------------------- store


def test_store_load_metadata_and_plain_pandas(tmp_path):
    df = _run(tmp_path, chunk_size=4, config={"lr": 0.1}, name="demo")
    workdir = tmp_path / "w"
    pd.testing.assert_frame_equal(sweep.load(workdir), df)
    keys = ["a", "n", "act", "seed", "metric", "step", "layer"]
    plain = pd.read_parquet(workdir / "rows")
    pd.testing.assert_frame_equal(
        plain.sort_values(keys).reset_index(drop=True).astype(df.dtypes.to_dict()),
        df.sort_values(keys).reset_index(drop=True),
    )
    files = sorted(os.listdir(workdir / "rows"))
    assert len(files) == 4 * 2  # 4 groups x ceil(6 / 4) chunks
    assert all(f.startswith("g") and f.endswith(".parquet") for f in files)
    assert not [f for f in os.listdir(workdir) if f.endswith(".tmp")]

    meta = json.loads((workdir / "metadata.json").read_text())
    assert meta["complete"] is True
    assert meta["config"]["grid"] == [[k, v] for k, v in GRID.items()]
    assert meta["config"]["seeds"] == SEEDS and meta["config"]["static"] == ["n", "act"]
    assert meta["config"]["config"] == {"lr": 0.1} and meta["config"]["name"] == "demo"
    assert meta["columns"] == list(df.columns)
    session = meta["sessions"][0]
    assert session["gradflow_version"] == "0.1.0" and session["packages"]["jax"] == jax.__version__
    assert session["process_count"] == 1 and len(session["devices"]) == jax.device_count()
    assert session["git"]["commit"] is None or len(session["git"]["commit"]) == 40
    assert [g["group"] for g in session["groups"]] == [0, 1, 2, 3]
    assert all(g["chunks"] == 2 and g["compile_s"] > 0 for g in session["groups"])
    assert [g["label"] for g in meta["groups"]] == [
        "n=2,act=tanh",
        "n=2,act=None",
        "n=3,act=tanh",
        "n=3,act=None",
    ]


def test_partial_store_resumes_only_missing_chunks(tmp_path):
    traces = []

    def fn(hparams, key):
        traces.append(hparams["n"])
        return key_fn(hparams, key)

    df = _run(tmp_path, fn, chunk_size=4)
    rows = tmp_path / "w" / "rows"
    lost = sorted(rows.iterdir())[5]  # group 2 (n=3, act=tanh), chunk 1
    lost.unlink()
    (rows / f".{lost.name}.999.tmp").write_bytes(b"half a parquet file")  # a killed writer
    traces.clear()
    again = _run(tmp_path, fn, chunk_size=4)
    assert traces == [3]  # only the group of the lost chunk compiles again
    assert lost.exists() and not list(rows.glob(".*"))
    pd.testing.assert_frame_equal(again, df)


def test_changed_config_in_same_workdir_raises(tmp_path):
    _run(tmp_path)
    with pytest.raises(ValueError, match=r"different sweep(.|\n)*seeds: stored \[7,3\] vs now"):
        _run(tmp_path, seeds=[7, 3, 4])
    with pytest.raises(ValueError, match=r"(?s)config: stored \{\} vs now \{\"lr\":1\}.*fresh"):
        _run(tmp_path, config={"lr": 1})
    with pytest.raises(ValueError, match="chunk_size"):
        _run(tmp_path, chunk_size=1)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no metadata\.json"):
        sweep.load(tmp_path)
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / "g0000-c00000-x.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=r"metadata\.json is missing"):
        _run(tmp_path, workdir=tmp_path)


# A small store for the integrity tests: 2 static groups x 2 chunks of 2 runs.
SMALL = {"a": [0.5, 2.0], "n": [2, 3]}


def _small(tmp_path, name="s", **kw):
    return _run(tmp_path, grid=SMALL, chunk_size=2, workdir=tmp_path / name, **kw)


def _chunks(workdir):
    return sorted((workdir / "rows").glob("*.parquet"))


def test_a_chunk_of_another_sweep_copied_in_is_refused(tmp_path):
    df = _small(tmp_path)
    _small(tmp_path, name="other", config={"lr": 1})  # same grid, another config: other hashes
    foreign = _chunks(tmp_path / "other")[0]
    target = tmp_path / "s" / "rows" / foreign.name
    target.write_bytes(foreign.read_bytes())
    for call in (lambda: sweep.load(tmp_path / "s"), lambda: _small(tmp_path)):
        with pytest.raises(ValueError, match=rf"{foreign.name} is not a chunk of this sweep"):
            call()
    target.unlink()
    pd.testing.assert_frame_equal(sweep.load(tmp_path / "s"), df)


@pytest.mark.parametrize("identity", [True, False], ids=["identity", "old_style"])
def test_a_chunk_overwritten_by_another_chunk_of_the_store_is_refused(tmp_path, identity):
    _small(tmp_path)
    files = _chunks(tmp_path / "s")  # g0 c0, g0 c1, g1 c0, g1 c1
    if not identity:  # a store written before chunks carried their identity: plain pandas
        for f in files:
            pd.read_parquet(f).to_parquet(f, index=False)
    for src, dst, pattern in (
        (files[0], files[2], "group 1, chunk 0"),  # n=2 rows under n=3's name
        (files[0], files[1], "group 0, chunk 1"),  # another chunk of the same group
    ):
        kept = dst.read_bytes()
        dst.write_bytes(src.read_bytes())
        why = "belongs elsewhere" if identity else "holds other runs than that chunk"
        for call in (lambda: sweep.load(tmp_path / "s"), lambda: _small(tmp_path)):
            with pytest.raises(ValueError, match=rf"{dst.name} \(named as {pattern}\) {why}"):
                call()
        dst.write_bytes(kept)
    assert len(_small(tmp_path)) == len(sweep.load(tmp_path / "s"))


def test_duplicated_rows_in_a_chunk_are_refused(tmp_path):
    _small(tmp_path)
    f = _chunks(tmp_path / "s")[0]
    frame = pd.read_parquet(f)
    pd.concat([frame, frame.iloc[:1]]).to_parquet(f, index=False)
    with pytest.raises(ValueError, match=r"holds 12 to 13 rows per run \(duplicated or missing"):
        sweep.load(tmp_path / "s")


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda m: m["dtypes"].update(a="Int64"), "dtypes"),
        (lambda m: m["columns"].reverse(), "columns"),
        (lambda m: m["config"]["seeds"].append(99), "config_hash"),
        (lambda m: m["groups"].pop(), "groups"),
    ],
    ids=["dtypes", "columns", "config", "groups"],
)
def test_edited_metadata_is_refused(tmp_path, edit, field):
    _small(tmp_path)
    path = tmp_path / "s" / "metadata.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    pattern = rf"metadata\.json does not match its own config: {field}"
    with pytest.raises(ValueError, match=pattern):
        sweep.load(tmp_path / "s")
    with pytest.raises(ValueError, match=pattern):
        sweep.load_metadata(tmp_path / "s")


def test_damaged_stores_say_what_is_wrong_with_which_path(tmp_path):
    _small(tmp_path)
    meta = tmp_path / "s" / "metadata.json"
    good = meta.read_text()
    meta.write_text(good[: len(good) // 2])  # a truncated file (not from gradflow's writer)
    for call in (lambda: sweep.load(tmp_path / "s"), lambda: _small(tmp_path)):
        with pytest.raises(ValueError, match=r"s/metadata\.json is not valid JSON .*damaged"):
            call()
    meta.write_text(json.dumps({"config": {"format": sweep.FORMAT}}))
    with pytest.raises(ValueError, match=r"lacks the field\(s\) \['config_hash'"):
        _small(tmp_path)
    meta.write_text(good)
    rows = tmp_path / "s" / "rows"
    for f in rows.iterdir():
        f.unlink()
    rows.rmdir()
    rows.write_text("not a directory")
    for call in (lambda: sweep.load(tmp_path / "s"), lambda: _small(tmp_path)):
        with pytest.raises(ValueError, match=r"s/rows is not a directory"):
            call()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"workdir .*file exists and is not a directory"):
        _run(tmp_path, grid=SMALL, workdir=blocker)
    with pytest.raises(OSError, match=r"cannot create the sweep store .*file/sub: Not a dir"):
        _run(tmp_path, grid=SMALL, workdir=blocker / "sub")


_HOLDER = """
import pathlib, sys, time
from gradflow import sweep
lock = sweep._StoreLock(pathlib.Path(sys.argv[1])).__enter__()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_writer_is_refused_and_a_dead_holder_leaves_no_lock(tmp_path):
    workdir = tmp_path / "s"
    _small(tmp_path)
    stray = workdir / "rows" / ".g0000-c00000-x.parquet.abc.tmp"  # another writer's temp file
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        stray.write_bytes(b"in flight")
        holder = sweep.in_use(workdir)
        assert holder.startswith(f"pid {proc.pid} on host ")
        with pytest.raises(RuntimeError, match=rf"s is in use by pid {proc.pid} on host "):
            _small(tmp_path)
        assert stray.read_bytes() == b"in flight"  # the refused writer touched nothing
    finally:
        proc.kill()  # SIGKILL: no clean-up runs in the holder
        proc.wait(timeout=SUBPROCESS_TIMEOUT_S)
        proc.stdout.close()
    assert json.loads((workdir / sweep.LOCK_FILE).read_text())["pid"] == proc.pid  # stale
    assert sweep.in_use(workdir) is None
    _small(tmp_path)  # the stale lock is recovered: the kernel released it with the process
    assert not stray.exists()  # and the lock holder cleans stale temp files
    assert sweep.in_use(workdir) is None and (workdir / sweep.LOCK_FILE).read_text() == ""


def test_in_process_lock_refuses_a_concurrent_run(tmp_path):
    workdir = tmp_path / "s"
    _small(tmp_path)
    with sweep._StoreLock(workdir):
        with pytest.raises(RuntimeError, match=rf"in use by pid {os.getpid()} on host"):
            _small(tmp_path)
    assert sweep.in_use(tmp_path / "nowhere") is None
    _small(tmp_path)


def test_progress_bar(tmp_path, capsys):
    _run(tmp_path, progress=True, name="bar", workdir=tmp_path / "p")
    err = capsys.readouterr().err
    assert "bar" in err and "4/4" in err and "chunk" in err
    _run(tmp_path, progress=False, workdir=tmp_path / "q")
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- bad input


def _ok(hparams, key):
    return {"x": hparams.get("a", 0.0) * jnp.ones(2)}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"static": ("depth",)}, ValueError, r"static key 'depth' is not a grid key.*\['a', 'n'\]"),
        ({"grid": {"a": []}}, ValueError, r"grid\['a'\] is empty"),
        ({"grid": {"a": 1.0}}, TypeError, r"grid\['a'\] must be a list.*\[1.0\]"),
        ({"grid": {"a": "relu"}}, TypeError, r"grid\['a'\] must be a list.*\['relu'\]"),
        ({"grid": {"a": [1.0, 1.0]}}, ValueError, "duplicate value 1.0"),
        ({"grid": {"a": [1, "x"]}}, TypeError, r"mixes value types \['int', 'str'\]"),
        ({"grid": {"a": [(1, 2)]}}, TypeError, "must be int, float, str, bool or None"),
        ({"grid": {"seed": [1.0]}}, ValueError, "grid key 'seed' clashes"),
        ({"grid": {"layer": [1.0]}}, ValueError, "grid key 'layer' clashes"),
        ({"grid": [("a", [1.0])]}, TypeError, "grid must be a dict"),
        ({"seeds": [0, 1.5]}, TypeError, "seeds must be integers, got 1.5"),
        ({"seeds": [True]}, TypeError, "seeds must be integers, got True"),
        ({"seeds": ["0"]}, TypeError, "seeds must be integers, got '0'"),
        ({"seeds": 4}, TypeError, r"seeds must be a list of integers, e.g. range\(4\)"),
        ({"seeds": []}, ValueError, "seeds is empty"),
        ({"seeds": [1, 1, 2]}, ValueError, r"seeds has duplicates \[1\]"),
        ({"seeds": [-1]}, ValueError, r"\[0, 2\*\*32\), got -1"),
        ({"seeds": [2**32]}, ValueError, r"\[0, 2\*\*32\), got 4294967296"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be a positive integer or None, got 0"),
        ({"chunk_size": 2.5}, ValueError, "chunk_size must be a positive integer"),
        ({"axes": {"x": "step"}}, TypeError, r"write \('step',\)"),
        ({"axes": {"x": ("seed",)}}, ValueError, "'seed', which is already a column"),
        ({"axes": {"x": ("a",)}}, ValueError, "'a', which is already a column"),
        ({"axes": {"x": ("t", "t")}}, ValueError, "repeats an axis name"),
        ({"axes": {"x": ("t", "u")}}, ValueError, r"names 2 axes.*per-run shape \(2,\)"),
        ({"axes": {"y": ("t",)}}, ValueError, r"metrics \['y'\] that fn does not return.*\['x'\]"),
        ({"config": {"f": object()}}, TypeError, "config must be JSON-serialisable"),
        ({"name": 3}, TypeError, "name must be a string"),
        ({"fn": "loss"}, TypeError, "fn must be callable"),
        ({"fn": lambda h, k: jnp.ones(2)}, TypeError, "must return a dict.*got an array"),
        ({"fn": lambda h, k: (h["a"],)}, TypeError, "must return a dict.*got tuple"),
        ({"fn": lambda h, k: {"x": "high"}}, TypeError, r"metric 'x' = 'high' of type str"),
        ({"fn": lambda h, k: {"x": None}}, TypeError, "metric 'x' = None"),
        ({"fn": lambda h, k: {"k": k}}, TypeError, "metric 'k' = an array of dtype key<gff>"),
        ({"fn": lambda h, k: {"x": {"y": 1j * h["a"]}}}, TypeError, "metric 'x/y'"),
        ({"fn": lambda h, k: {1: h["a"]}}, TypeError, "metric names must be non-empty strings"),
        ({"fn": lambda h, k: {"x": jnp.ones((2, 2, 2))}}, ValueError, r"name its axes.*'x'"),
        ({"fn": lambda h, k: {"diverged_step": jnp.ones(2)}}, ValueError, "must be a scalar"),
    ],
)
def test_bad_input_raises(tmp_path, kwargs, error, match):
    kwargs = {"grid": {"a": [1.0], "n": [2]}, "seeds": [0], "fn": _ok, "static": (), **kwargs}
    with pytest.raises(error, match=match):
        _run(tmp_path, **kwargs)


def test_traced_hparam_used_as_shape_says_static(tmp_path):
    def fn(hparams, key):
        return {"x": jnp.ones(hparams["n"])}

    with pytest.raises(TypeError, match=r"concrete value of a batched.*\['n'\].*static="):
        _run(tmp_path, fn, grid={"n": [2, 3]}, static=())

    def branch(hparams, key):
        return {"x": 1.0 if hparams["a"] > 0 else -1.0}

    with pytest.raises(TypeError, match=r"batched, i.e. traced: \['a'\]"):
        _run(tmp_path, branch, grid={"a": [-1.0, 1.0]}, workdir=tmp_path / "b")
    df = _run(tmp_path, fn, grid={"n": [2, 3]}, static=("n",), workdir=tmp_path / "ok")
    assert df.groupby("n").size().to_dict() == {2: 2 * 2, 3: 3 * 2}


# ----------------------------------------------------------------------------- processes


@pytest.mark.parametrize("n", ["all", 0, -2, True, 2.0])
def test_cpu_devices_rejects_bad_counts(n):
    with pytest.raises(ValueError, match="int >= 1 or 'auto'"):
        sweep.cpu_devices(n)


def test_cpu_devices_auto_gives_one_device_per_usable_core():
    code = (
        "import os, jax; from gradflow import sweep; n = sweep.cpu_devices('auto'); "
        "assert n == len(os.sched_getaffinity(0)) == jax.device_count('cpu'), n; "
        "assert sweep.cpu_devices(n) == n; print('devices', n)"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"devices {sweep.usable_cores()}"


def _worker(workdir, *args, **popen):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(workdir), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def _finish(*procs):
    """Wait for every process with a bounded timeout; kill them all and fail on a hang."""
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"sweep worker hung for {SUBPROCESS_TIMEOUT_S} s")
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    return outputs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The worker's sweep, uninterrupted, on this process's devices."""
    workdir = tmp_path_factory.mktemp("reference")
    df = sweep.run(worker.fn, worker.GRID, worker.SEEDS, workdir=workdir, **worker.sweep_kwargs())
    assert df.diverged.any() and not df.diverged.all()  # some runs of the grid diverge
    return df


def _assert_same_table(df, reference):
    """Equal keys, flags and dtypes; values to 1e-6 relative (inf/NaN in the same places)."""
    pd.testing.assert_frame_equal(df, reference, check_exact=False, rtol=1e-6, atol=0)


@pytest.mark.slow
def test_four_devices_match_one_device_with_padding(tmp_path, reference):
    # 9 runs per group in chunks of 2 and 1: every chunk is padded to 4 devices
    _finish(_worker(tmp_path, "--devices", 4, "--out", tmp_path / "out.parquet"))
    df = sweep.load(tmp_path)
    _assert_same_table(df, reference)
    _assert_same_table(pd.read_parquet(tmp_path / "out.parquet"), reference)
    session = sweep.load_metadata(tmp_path)["sessions"][0]
    assert len(session["devices"]) == 4 and session["process_count"] == 1


def test_block_size_gives_the_same_table(tmp_path, reference):
    # blocks of 1 and 3 runs mapped inside the program: the same rows as vmapping each chunk
    for block in (1, 3):
        workdir = tmp_path / f"b{block}"
        df = sweep.run(worker.fn, worker.GRID, worker.SEEDS, workdir=workdir, block_size=block,
                       **worker.sweep_kwargs())  # fmt: skip
        _assert_same_table(df, reference)
        assert sweep.load_metadata(workdir)["sessions"][-1]["block_size"] == block
    # not part of the config: a store made with blocks resumes without them
    df = sweep.run(worker.fn, worker.GRID, worker.SEEDS, workdir=tmp_path / "b1",
                   **worker.sweep_kwargs())  # fmt: skip
    _assert_same_table(df, reference)
    for bad in (0, -2, 1.5, True, "2", "Auto"):
        with pytest.raises(ValueError, match=r"block_size must be a positive integer, 'auto' or"):
            sweep.run(worker.fn, worker.GRID, worker.SEEDS, workdir=tmp_path / "bad",
                      block_size=bad)  # fmt: skip


def test_batched_program_blocks_equal_vmap():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), (sweep.MESH_AXIS,))

    def one(a, seed):
        return {"y": jnp.sin(a) * jnp.arange(3.0) + seed}

    a, seeds = jnp.linspace(0.0, 1.0, 7), jnp.arange(7.0)
    want = jax.vmap(one)(a, seeds)["y"]
    for block in (None, 1, 3, 10):  # 3: 7 runs = two blocks + a remainder
        got = jax.jit(sweep.batched(one, mesh, block))(a, seeds)["y"]
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    with pytest.raises(ValueError, match=r"integer, 'auto' or None, got 0"):
        sweep.batched(one, mesh, 0)
    with pytest.raises(ValueError, match=r"mesh must be a jax.sharding.Mesh with an axis 'sweep'"):
        sweep.batched(one, jax.sharding.Mesh(np.asarray(jax.devices()), ("other",)))
    with pytest.raises(TypeError, match=r"one must be callable"):
        sweep.batched(None, mesh)


_VMAP_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
import gradflow as gf
gf.sweep.cpu_devices(3)
model = gf.models.MLP(widths=(12,) * 5, out=4, activation="sigmoid")
x = jax.random.normal(jax.random.key(0), (16, 6)); y = jnp.arange(16) % 4
one = lambda s: gf.probes.probe(model, model.init(gf.rng.threefry_key(s), x), x, y)
for n in (7, 9):  # 7: padded to 9 runs over 3 devices
    seeds = jnp.arange(n, dtype=jnp.uint32)
    got, want = gf.sweep.vmap(one)(seeds), jax.jit(jax.vmap(one))(seeds)
    assert got.layer_names == want.layer_names
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape, (g.shape, w.shape)
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-30)
got = gf.sweep.vmap(one)(jnp.arange(9, dtype=jnp.uint32))
assert len(got.loss.sharding.device_set) == 3, got.loss.sharding  # every device ran runs
# seeds already committed to one device are moved onto the mesh, not refused by jit
committed = jax.device_put(jnp.arange(7, dtype=jnp.uint32), jax.devices()[2])
np.testing.assert_array_equal(np.asarray(gf.sweep.vmap(one)(committed).loss),
                              np.asarray(gf.sweep.vmap(one)(np.arange(7, dtype=np.uint32)).loss))
print("ok")
"""


def test_vmap_equals_jit_vmap_sharded_and_padded():
    # gf.sweep.vmap over 3 CPU devices: a probe of 7 seeds (padded to 9) and of 9 seeds equals
    # jax.jit(jax.vmap(...)) on the default device, to float32 rounding (rtol 1e-5)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _VMAP_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=SUBPROCESS_TIMEOUT_S)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_vmap_pytrees_keys_blocks_and_bad_calls():
    def one(key, hp):
        return {"z": jax.random.normal(key, (3,)) * hp["a"], "s": hp["b"].sum()}

    keys = jax.random.split(jax.random.key(1), 5)
    hp = {"a": np.arange(5.0, dtype=np.float32), "b": jnp.ones((5, 2))}
    want = jax.vmap(one)(keys, hp)
    for block in (None, 2, "auto"):
        fn = sweep.vmap(one, block_size=block)
        got = fn(keys, hp)
        for k in want:
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=1e-6)
    compiled = fn.lower(keys, hp).compile()  # ahead of time, as jax.jit's .lower
    np.testing.assert_allclose(np.asarray(compiled(keys, hp)["z"]), np.asarray(want["z"]),
                               rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match=r"leading \(run\) axes differ: \[5, 4, 5\]"):
        fn(keys, {"a": np.arange(4.0), "b": jnp.ones((5, 2))})
    with pytest.raises(TypeError, match="needs a leading run axis, got a scalar"):
        fn(keys, {"a": 3.0, "b": jnp.ones((5, 2))})
    with pytest.raises(ValueError, match="at least one array"):
        fn()
    with pytest.raises(ValueError, match="zero runs"):
        sweep.vmap(lambda a: a)(np.zeros((0, 2)))
    with pytest.raises(TypeError, match="fn must be callable"):
        sweep.vmap(3)
    with pytest.raises(ValueError, match=r"integer, 'auto' or None, got 'x'"):
        sweep.vmap(one, block_size="x")
    with pytest.raises(TypeError, match="devices must be JAX devices"):
        sweep.vmap(one, devices=["cpu:0"])
    with pytest.raises(TypeError, match="devices must be a sequence of JAX devices"):
        sweep.vmap(one, devices="cpu")
    with pytest.raises(ValueError, match="at least one device"):
        sweep.vmap(one, devices=[])


def _primitives(jaxpr) -> set[str]:
    found = {e.primitive.name for e in jaxpr.eqns}
    for e in jaxpr.eqns:
        for p in e.params.values():
            for sub in p if isinstance(p, list | tuple) else [p]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found |= _primitives(inner)
    return found


def test_auto_block_sizes_blocks_from_the_working_set():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), (sweep.MESH_AXIS,))
    traces = []

    def big(a):  # 5 MiB made by one operation per run: blocks of 2 fit 16 MiB on CPU
        traces.append(1)
        return {"s": jnp.sum(jnp.broadcast_to(a, (1280, 1024)) * 2.0)}

    def small(a):  # 4 KiB: all 8 runs at once
        return {"s": jnp.sum(jnp.broadcast_to(a, (1024,)) * 2.0)}

    def mid(a):  # 3 MiB: 5 fit; 10 runs -> two blocks of 5 (a divisor: no remainder body)
        return {"s": jnp.sum(jnp.broadcast_to(a, (768, 1024)) * 2.0)}

    program = sweep.batched(mid, mesh, "auto")
    scans = [e for e in jax.make_jaxpr(program)(jnp.arange(10.0)).jaxpr.eqns[0].params["jaxpr"].eqns
             if e.primitive.name == "scan"]  # fmt: skip
    assert [e.params["length"] for e in scans] == [2], scans  # one loop, no remainder
    a = jnp.arange(8.0)
    for fn, blocked in ((big, True), (small, False)):
        program = sweep.batched(fn, mesh, "auto")
        prims = _primitives(jax.make_jaxpr(program)(a).jaxpr)
        assert ("scan" in prims) == blocked, (fn.__name__, prims)  # lax.map: a scan over blocks
        got = jax.jit(program)(a)["s"]
        np.testing.assert_allclose(
            np.asarray(got), np.asarray(a) * 2.0 * {big: 1280 * 1024, small: 1024}[fn], rtol=1e-6
        )
    assert len(traces) == 1  # traced once for one run; that trace serves both programs


@pytest.mark.parametrize("name", ["linen_cnn", "nnx_mlp"])
def test_blocks_probe_researchers_models(tmp_path, name):
    # a researcher's linen CNN / NNX module built and probed inside fn: blocks of 2, the auto
    # block and all-at-once (and gf.sweep.vmap) give the same per-layer gradient norms (to
    # float32 rounding)
    import user_models

    import gradflow as gf

    def fn(hparams, key):
        um = user_models.FACTORIES[name](key)
        report = gf.probes.probe(um.model, um.variables, um.x, um.y)
        return {"grad": report.weight_grad_norm, "loss": report.loss}

    tables = {
        block: sweep.run(fn, {}, range(4), workdir=tmp_path / str(block), block_size=block)
        for block in (None, 2, "auto")
    }
    want = tables[None].sort_values(["seed", "metric", "layer"])["value"].to_numpy()
    assert np.isfinite(want).all() and want.size > 4
    for block in (2, "auto"):
        got = tables[block].sort_values(["seed", "metric", "layer"])["value"].to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 sums in another order
    # gf.sweep.vmap of the same fn over the same seeds (the keys sweep.run makes)
    out = sweep.vmap(lambda s: fn({}, gf.rng.threefry_key(s)), block_size=2)(
        jnp.arange(4, dtype=jnp.uint32)
    )
    grad = tables[None].query("metric == 'grad'").sort_values(["seed", "layer"])["value"]
    np.testing.assert_allclose(np.asarray(out["grad"]).ravel(), grad.to_numpy(), rtol=1e-5)


def test_auto_is_the_default_and_recorded(tmp_path, reference):
    df = sweep.run(worker.fn, worker.GRID, worker.SEEDS, workdir=tmp_path, **worker.sweep_kwargs())
    _assert_same_table(df, reference)
    assert sweep.load_metadata(tmp_path)["sessions"][-1]["block_size"] == "auto"


@pytest.mark.slow
def test_four_devices_with_blocks_match_one_device(tmp_path, reference):
    _finish(_worker(tmp_path, "--devices", 4, "--block", 1))
    _assert_same_table(sweep.load(tmp_path), reference)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_loopback_match_one_process(tmp_path, reference):
    port = _free_port()
    procs = [
        _worker(
            tmp_path / "store",
            "--devices",
            2,
            "--num-processes",
            2,
            "--process-id",
            i,
            "--port",
            port,
            "--out",
            tmp_path / f"out{i}.parquet",
        )
        for i in range(2)
    ]
    outputs = _finish(*procs)
    assert "4 devices" in outputs[0] and "4 devices" in outputs[1]
    _assert_same_table(sweep.load(tmp_path / "store"), reference)
    for i in range(2):  # every process returns the whole table
        _assert_same_table(pd.read_parquet(tmp_path / f"out{i}.parquet"), reference)
    meta = sweep.load_metadata(tmp_path / "store")
    assert len(meta["sessions"]) == 1  # only process 0 writes
    session = meta["sessions"][0]
    assert session["process_count"] == 2
    assert sorted(d["process_index"] for d in session["devices"]) == [0, 0, 1, 1]


@pytest.mark.slow
def test_kill_9_mid_sweep_then_resume(tmp_path, reference):
    rows = tmp_path / "rows"
    proc = _worker(tmp_path, "--sleep", 0.5, start_new_session=True)
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not (rows.is_dir() and list(rows.glob("g*.parquet"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"worker ended or hung before its first chunk: {proc.communicate()[0]}")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    n_chunks = 2 * 5
    killed_with = len(list(rows.glob("g*.parquet")))
    assert 1 <= killed_with < n_chunks  # really interrupted
    assert not sweep.load_metadata(tmp_path)["complete"]
    partial = sweep.load(tmp_path)
    assert 0 < len(partial) < len(reference)

    _finish(_worker(tmp_path))
    df = sweep.load(tmp_path)
    assert len(list(rows.glob("g*.parquet"))) == n_chunks
    keys = [*worker.GRID, "seed", "metric", "step", "layer", "t", "i", "j"]
    assert not df.duplicated(keys).any()
    pd.testing.assert_frame_equal(df, reference)  # same devices and chunks: bitwise equal
    meta = sweep.load_metadata(tmp_path)
    assert meta["complete"] and len(meta["sessions"]) == 2
    assert sum(g["chunks"] for g in meta["sessions"][1]["groups"]) == n_chunks - killed_with
