"""Smoke test of the benchmark harness at toy sizes: every way runs, agrees, and is reported.

No timing assertions (timings are the benchmark's output, not a property). The JAX ways, their
agreement checks and the report are asserted with or without torch; only the comparison with the
PyTorch ways needs torch (the ``bench`` extra) and is skipped, with that reason, without it.
Random streams are traced with ``jax_threefry_partitionable=False`` here only to keep the
compiles short; the benchmark itself measures JAX's default.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

try:
    import benchmarks  # noqa: F401
except ImportError:  # pytest run from elsewhere than the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import harness, report, run, workloads

TOY = {
    "w1": workloads.ProbeSweep(
        "toy probe", seeds=4, depth=1, width=4, batch=8, block=2, torch_timed=2,
    ),
    "w3": workloads.TrainSweep(
        "toy training", seeds=2, learning_rates=(0.1,), depth=1, width=4, steps=4,
        record_every=2, batch=8, naive_timed=1, torch_timed=1,
    ),
    "w4": workloads.ChainSweep("toy chains", chains=6, depth=3, naive_timed=2),
    "compile": workloads.CompileSweep("toy compile", depths=(1, 2), width=4, seeds=2, batch=8),
}  # fmt: skip
TORCH = workloads.torch_available()
#: Prefixes of the ways (and their checks) that need torch; every other way is JAX.
TORCH_WAYS = ("pytorch", "torch_func")
#: The agreement checks of the JAX ways, present and passing with or without torch.
JAX_CHECKS = {
    "w1": {
        "gradflow_readme == gradflow (same seeds)",
        "jax_vmap == gradflow (same seeds)",
        "jax_bare == gradflow (same seeds)",
        "gradflow_blocked == gradflow (same seeds)",
        "gradflow_vmap_all == gradflow (same seeds)",
        "naive_jax == gradflow (same seeds)",
    },
    "w3": {"naive_jax == gradflow: first record of grad_norm"},
    "w4": {"chain_grads == jax.grad (relative to each chain's largest)"},
    "compile": {f"probe == jax.grad at depth {d} (kernel norms, seed 0)" for d in (1, 2)},
}


@pytest.fixture(scope="module")
def results():
    options = workloads.Options(
        repeats=1,
        budget_s=0.0,
        min_repeats=1,
        torch_threads=1,
        torch=TORCH,
    )
    with jax.threefry_partitionable(False):
        out = {k: workloads.run_workload(cfg, options) for k, cfg in TOY.items()}
    return {
        "command": "pytest",
        "quick": True,
        "machine": harness.machine_info(),
        "options": vars(options).copy(),
        "workloads": out,
        "matmul_peak": {"start": harness.matmul_peak(64, repeats=2)},
        "matmul_peak_gflops": 1.0,
        "json_name": "results.json",
    }


def test_every_way_runs_and_agrees(results):
    expected = {
        "w1": {
            "gradflow",
            "gradflow_readme",
            "jax_vmap",
            "jax_bare",
            "gradflow_native",
            "gradflow_blocked",
            "gradflow_vmap_all",
            "naive_jax",
        },
        "w3": {"gradflow", "naive_jax"},
        "w4": {"gradflow", "gradflow_log", "jax_grad", "naive_jax"},
        "compile": {"gradflow_readme_depth1", "gradflow_readme_depth2"},
    }
    for key, w in results["workloads"].items():
        methods = {m["method"] for m in w["measurements"]}
        assert expected[key] <= methods, (key, methods)
        for m in w["measurements"]:
            assert m["median_s"] > 0 and np.isfinite(m["median_s"]), m
            assert m["repeats"] >= 1
        checks = {c["check"]: c for c in w["checks"]}
        assert JAX_CHECKS[key] <= set(checks), (key, set(checks))
        for name in JAX_CHECKS[key]:
            assert checks[name]["max_rel_err"] <= checks[name]["tol"], checks[name]
        for c in w["checks"]:
            if "informative" not in c["note"]:
                assert c["ok"], c
        # the torch ways (and their checks) ran exactly when torch is installed
        with_torch = TORCH and key != "compile"  # the compile workload has no torch way
        assert any(m.startswith(TORCH_WAYS) for m in methods) == with_torch, (key, methods)
        assert any(c.startswith(TORCH_WAYS) for c in checks) == with_torch, (key, set(checks))
        # every speed-up is the ratio of the two medians
        median = {m["method"]: m["median_s"] for m in w["measurements"]}
        for way, bases in w["speedups"].items():
            for base, ratio in bases.items():
                assert ratio == pytest.approx(median[base] / median[way], rel=1e-12)
        if key != "compile":
            assert "naive_jax" in w["speedups"]["gradflow"]
            gf_way = next(m for m in w["measurements"] if m["method"] == "gradflow")
            assert gf_way["e2e_s"] == pytest.approx(gf_way["compile_s"] + gf_way["median_s"])
            assert "naive_jax" in w["e2e_speedups"]["gradflow"]
    compile_w = results["workloads"]["compile"]
    assert [d["depth"] for d in compile_w["per_depth"]] == [1, 2]
    assert compile_w["compile_ratio"] > 0 and len(compile_w["checks"]) == 2
    w3 = results["workloads"]["w3"]["measurements"]
    naive = next(m for m in w3 if m["method"] == "naive_jax")
    assert naive["scale"] == 2.0  # timed 1 of 2 runs


@pytest.mark.skipif(
    not TORCH, reason="torch is not installed (the bench extra): no PyTorch way to compare"
)
def test_pytorch_ways_agree_with_gradflow(results):
    for key, w in results["workloads"].items():
        if key == "compile":
            continue
        methods = {m["method"] for m in w["measurements"]}
        assert {"pytorch", "torch_func"} <= methods, methods
        assert any(c["check"].startswith("pytorch") for c in w["checks"])
        assert any(c["check"].startswith("torch_func ==") for c in w["checks"])


def test_report_written(results, tmp_path):
    md, js = tmp_path / "RESULTS.md", tmp_path / "results.json"
    report.write(results, md, js)
    text = md.read_text()
    for key, w in results["workloads"].items():
        assert f"## {key}: {w['title']}" in text
    assert "| 9 | w1 | `gradflow` | >= 20x the PyTorch loop |" in text
    assert "| 9 | w1 | `gradflow` | >= 5x naive JAX |" in text
    assert "| 14 | compile | `gradflow_readme` | compile at the deepest <= 1.5x" in text
    assert "| compile | end to end | / gradflow |" in text
    loaded = json.loads(js.read_text())
    assert {t["workload"] for t in loaded["targets"]} == {"w1", "w3", "w4", "compile"}
    assert loaded["workloads"]["w1"]["config"]["seeds"] == 4
    # the JAX targets carry the measured values; the torch ones are measured iff torch is there
    rows = {(t["workload"], t["method"], t["what"]): t for t in loaded["targets"]}
    naive = results["workloads"]["w1"]["speedups"]["gradflow"]["naive_jax"]
    assert rows["w1", "gradflow", "speedup:naive_jax"]["value"] == pytest.approx(naive, rel=1e-12)
    ratio = results["workloads"]["compile"]["compile_ratio"]
    compile_row = rows["compile", "gradflow_readme", "compile_ratio"]
    assert compile_row["value"] == pytest.approx(ratio, rel=1e-12)
    assert compile_row["met"] == (ratio <= 1.5)
    torch_rows = [t for k, t in rows.items() if k[2].split(":")[-1] in TORCH_WAYS]
    assert torch_rows and all((t["value"] is not None) == TORCH for t in torch_rows)
    assert ("| >= 20x the PyTorch loop | not measured |" in text) == (not TORCH)
    # the GPU suite scores its own targets on the same kind of results
    gpu = report.targets({**results, "suite": "gpu"})
    assert {(t["workload"], t["what"]) for t in gpu} >= {("w1", "speedup:torch_func")}
    assert all(t["threshold"] in (1.0, 10.0, 24.0) for t in gpu)


def test_measure_and_scaling():
    calls = []
    times, out = harness.measure(lambda: calls.append(1) or len(calls), repeats=3)
    assert len(times) == 3 and out == 4 and len(calls) == 4  # one warm-up
    m = harness.Measurement("x", "x", [1.0, 3.0, 2.0], None, timed=2, total=8)
    assert m.median_s == pytest.approx(8.0) and m.min_s == pytest.approx(4.0)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        harness.measure(lambda: None, repeats=0)


def test_run_rejects_bad_flags():
    with pytest.raises(SystemExit, match=r"unknown workload\(s\) \['w9'\] for the cpu suite"):
        run.main(["--only", "w1,w9"])
    with pytest.raises(SystemExit, match=r"unknown workload\(s\) \['w2big'\] for the cpu"):
        run.main(["--only", "w2big"])
    with pytest.raises(SystemExit, match="--repeats must be >= 1"):
        run.main(["--repeats", "0"])
    with pytest.raises(SystemExit, match="--deadline must be > 0 seconds"):
        run.main(["--deadline", "0"])
    with pytest.raises(TypeError, match="unknown workload configuration"):
        workloads.run_workload(object(), workloads.Options())


def test_requirements_of_a_missed_target():
    """A missed 10x target: the median and FLOP rate that would meet it, against both rates."""
    w3 = {
        "title": "t", "config": {}, "checks": [], "flops_per_run": 1e9, "runs": 4,
        "measurements": [{"method": "gradflow", "median_s": 2.0},
                         {"method": "pytorch", "median_s": 10.0}],
        "speedups": {"gradflow": {"pytorch": 5.0}}, "gflops": {"gradflow": 2.0},
        "layer_matmul": {"gflops": 2.0},
    }  # fmt: skip
    results = {"workloads": {"w3": w3}, "matmul_peak_gflops": 8.0}
    (r,) = [r for r in report.requirements(results) if r["what"] == "speedup:pytorch"]
    assert r["needed_s"] == pytest.approx(1.0)  # 10 s / 10x
    assert r["needed_gflops"] == pytest.approx(4.0)  # 4 runs x 1 GFLOP in 1 s
    assert r["needed_peak_fraction"] == pytest.approx(0.5)
    assert r["vs_layer_matmul"] == pytest.approx(2.0)
    w3["speedups"]["gradflow"]["pytorch"] = 10.0  # met: nothing to require
    assert not [r for r in report.requirements(results) if r["what"] == "speedup:pytorch"]
    # end to end: compile 3 s + run 2 s against the loop's 10 s is met; against 4 s it is not,
    # and the requirement says the compile alone exceeds the budget
    w3["measurements"][0].update(compile_s=3.0, e2e_s=5.0)
    w3["e2e_speedups"] = {"gradflow": {"pytorch": 10.0 / 5.0}}
    assert not [r for r in report.requirements(results) if r["what"] == "e2e:pytorch"]
    w3["measurements"][1]["median_s"] = 2.5
    w3["e2e_speedups"] = {"gradflow": {"pytorch": 2.5 / 5.0}}
    (r,) = [r for r in report.requirements(results) if r["what"] == "e2e:pytorch"]
    assert r["needed_s"] == pytest.approx(2.5) and r["now_s"] == pytest.approx(5.0)
    assert "the compile alone exceeds it" in report._requirement_text(r)


def test_training_flops_count_the_evaluations(results):
    cfg = TOY["w3"]
    w3 = results["workloads"]["w3"]
    # 2 records over the 1797 digits (train + test) on top of 6 B W^2 D per step
    assert w3["flops_per_run"] == cfg.flops_per_run + 2 * 1797 * 4**2 * 1 * 2
    assert w3["layer_matmul"]["gflops"] > 0 and w3["layer_matmul"]["shape"] == "2 x (8x4 @ 4x4)"


def test_readme_gpu_block_is_generated(results, tmp_path):
    """The README's GPU numbers are the generated block of benchmarks/results-gpu.json (or the
    'not yet' text while there is none), never typed."""
    root = Path(__file__).resolve().parents[1]
    js = root / "benchmarks" / "results-gpu.json"
    data = json.loads(js.read_text()) if js.is_file() else None
    assert report.readme_gpu_block(data) in (root / "README.md").read_text()
    # the block of a GPU run: every workload's gradflow and torch.func medians, and the update
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{report.readme_gpu_block(None)}\nb\n")
    gpu = {**results, "suite": "gpu", "torch_device": "cuda"}
    (tmp_path / "results-gpu.json").write_text(json.dumps(gpu, default=float))
    assert report.update_readme(readme, tmp_path / "results-gpu.json")
    text = readme.read_text()
    assert text.startswith("a\n") and text.endswith("\nb\n") and "| w1: seeds=4" in text
    assert not report.update_readme(readme, tmp_path / "results-gpu.json")  # idempotent
    with pytest.raises(ValueError, match="has no"):
        report.update_readme(tmp_path / "results-gpu.json", tmp_path / "results-gpu.json")
