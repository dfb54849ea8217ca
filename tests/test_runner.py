"""Tests for gradflow.runner: the compile mode, run records and timings, choosing experiments.

The command's behaviour end to end (every subcommand, exit codes, messages, files) is tested in
tests/test_cli.py; these test the runner's pieces directly, without running an experiment.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path

import pytest

import gradflow as gf
from gradflow import runner

TESTS = Path(__file__).parent


@pytest.fixture
def fakes(monkeypatch):
    """Register cli_fake and cli_broken (tests/cli_fake_experiment.py) and nothing else."""
    monkeypatch.syspath_prepend(str(TESTS))
    group = gf.experiment.ENTRY_POINT_GROUP
    eps = {n: metadata.EntryPoint(n, f"cli_fake_experiment:{attr}", group)
           for n, attr in (("cli_fake", "EXPERIMENT"), ("cli_broken", "BROKEN"))}  # fmt: skip
    monkeypatch.setattr(gf.experiment, "_entry_points", lambda: eps)


def test_compile_mode_sets_xla_flags(monkeypatch, capsys):
    from gradflow import _jax_compat

    monkeypatch.setattr(_jax_compat, "backends_are_initialized", lambda: False)
    flag = runner.FAST_COMPILE_FLAG

    def flags_after(**kw):
        runner.apply_compile_mode(runner.Launch(**kw))
        return os.environ.get("XLA_FLAGS", "")

    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert flags_after(compile="auto", quick=False) == "--xla_dump_to=/tmp/x"  # full: optimized
    assert flags_after(compile="auto", quick=True) == f"--xla_dump_to=/tmp/x {flag}"
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    assert flags_after(compile="fast", quick=False) == "--xla_backend_optimization_level=2"
    monkeypatch.delenv("XLA_FLAGS")
    assert flags_after(compile="optimized", quick=True) == ""
    assert flags_after(compile="fast", quick=False) == flag
    # too late: the backend already runs, so say so instead of silently doing nothing
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(_jax_compat, "backends_are_initialized", lambda: True)
    assert flags_after(compile="fast") == ""
    assert "--compile fast has no effect" in capsys.readouterr().err
    assert flags_after(compile="auto", quick=True) == ""  # implicit: silently best effort
    assert capsys.readouterr().err == ""


def test_launch_compile_mode():
    assert runner.Launch().compile_mode == "optimized"
    assert runner.Launch(quick=True).compile_mode == "fast"
    assert runner.Launch(compile="optimized", quick=True).compile_mode == "optimized"


def test_start_jax_rejects_partial_coordinates():
    with pytest.raises(runner.UserError, match="--coordinator, --num-processes and --process-id"):
        runner.start_jax(runner.Launch(num_processes=2))
    with pytest.raises(runner.UserError, match=r"--process-id must be in 0\.\.1, got 5"):
        runner.start_jax(runner.Launch(coordinator="127.0.0.1:1", num_processes=2, process_id=5))


def test_record_runtime_keeps_the_from_scratch_timing(tmp_path, capsys):
    path = tmp_path / runner.RUNTIMES
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    first = runner.Outcome("x", seconds={"run": 2.0, "plot": 0.5})
    assert runner.record_runtime(tmp_path, "quick", first) == path
    assert "was not valid JSON; rewriting it" in capsys.readouterr().err
    entry = json.loads(path.read_text())["quick"]["x"]
    assert entry["seconds"] == 2.5 and entry["run_s"] == 2.0 and entry["resumed"] is False
    resumed = runner.Outcome("x", seconds={"run": 0.1}, resumed=True)
    runner.record_runtime(tmp_path, "quick", resumed)
    assert json.loads(path.read_text())["quick"]["x"] == entry  # a resumed run replaces nothing
    runner.record_runtime(tmp_path, "full", resumed)  # ... but is kept where nothing else is
    assert json.loads(path.read_text())["full"]["x"]["resumed"] is True


def test_check_record_refuses_another_config(tmp_path):
    lay = gf.experiment.layout("x", "quick", tmp_path)
    lay.results.mkdir(parents=True)
    out = runner.Outcome("x", seconds={"run": 1.0})
    runner.write_record(lay, "quick", {"seeds": 2, "sw2": (0.5, 2.0)}, {}, out)
    runner.check_record(lay.results, "x", "quick", {"seeds": 2, "sw2": [0.5, 2.0]}, fresh=False)
    with pytest.raises(runner.UserError, match=r"another config \(seeds: 2 -> 3\); add --fresh"):
        runner.check_record(lay.results, "x", "quick", {"seeds": 3, "sw2": [0.5, 2.0]},
                            fresh=False)  # fmt: skip
    runner.check_record(lay.results, "x", "quick", {"seeds": 3}, fresh=True)


def test_incomplete_without_a_record(tmp_path):
    results = tmp_path / "r"
    results.mkdir()
    assert runner.incomplete(results) == (
        "results are incomplete (the run that made them did not finish)"
    )
    (results / runner.RUN_RECORD).write_text("{}")
    assert runner.incomplete(results) is None


def test_choose_in_registry_order(fakes):
    assert runner.choose(None) == ["cli_broken", "cli_fake"]
    assert runner.choose(["cli_fake", "cli_broken", "cli_fake"]) == ["cli_broken", "cli_fake"]
    with pytest.raises(runner.UserError, match=r"unknown experiment\(s\) 'nope' in --only"):
        runner.choose(["nope"])


def test_load_experiment_errors(fakes):
    with pytest.raises(runner.UserError, match="unknown experiment 'nope'; valid names: cli_br"):
        runner.load_experiment("nope")
    assert runner.load_experiment("cli_fake").name == "cli_fake"


def test_run_steps_reports_a_failing_step(fakes, tmp_path, capsys):
    exp = runner.load_experiment("cli_broken")
    lay = gf.experiment.layout("cli_broken", "quick", tmp_path)
    out = runner.run_steps(exp, exp.config("quick"), lay, run=True, write=True)
    assert out.error.startswith("experiment 'cli_broken' failed in its run step (RuntimeError")
    assert "run" not in out.seconds and not out.figures
    assert "Traceback" in capsys.readouterr().err


def test_cli_error_is_the_runner_error():
    from gradflow import cli

    assert cli.CLIError is runner.UserError
    e = runner.UserError("bad", 1)
    assert (e.message, e.code) == ("bad", 1)
