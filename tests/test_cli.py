"""Tests for gradflow.cli: every subcommand's happy path on a tiny experiment, and bad input.

The experiments come from tests/cli_fake_experiment.py, registered by monkeypatching
``gradflow.experiment._entry_points`` (so these tests do not depend on the real experiments'
runtimes); ``main([...])`` runs in-process, except for one subprocess run of the installed
``gradflow`` script and one two-process run on loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

import gradflow as gf
from gradflow.cli import main

TESTS = Path(__file__).parent
FAKES = {"cli_fake": "EXPERIMENT", "cli_broken": "BROKEN"}
VALID = "valid names: cli_broken, cli_fake"


def _entry_points(names=FAKES):
    group = gf.experiment.ENTRY_POINT_GROUP
    return {n: metadata.EntryPoint(n, f"cli_fake_experiment:{FAKES[n]}", group) for n in names}


@pytest.fixture
def fakes(monkeypatch):
    """Register cli_fake and cli_broken (and nothing else)."""
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setattr(gf.experiment, "_entry_points", lambda: _entry_points())


@pytest.fixture
def fake(monkeypatch):
    """Register cli_fake only."""
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setattr(gf.experiment, "_entry_points", lambda: _entry_points(["cli_fake"]))


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gradflow: error: "), err
    return lines[0]


def _fake_latexmk(bin_dir: Path) -> Path:
    """A latexmk stand-in that records its arguments and working directory, and writes the PDF."""
    bin_dir.mkdir()
    script = bin_dir / "latexmk"
    script.write_text(  # shell builtins only: PATH holds nothing else
        '#!/bin/sh\necho "$@" > latexmk_args.txt\npwd >> latexmk_args.txt\n: > gradflow.pdf\n'
    )
    script.chmod(0o755)
    return bin_dir


# ------------------------------------------------------------------------------------ help


def test_installed_script_version():
    exe = Path(sys.executable).parent / "gradflow"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"gradflow {gf.__version__}"


@pytest.mark.parametrize("command", ["list", "run", "plot", "reproduce", "paper", "diagnose"])
def test_help_on_every_subcommand(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gradflow {command}")
    assert "--workdir" in out or command in ("list", "diagnose")


def test_top_level_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("list", "run", "plot", "reproduce", "paper", "diagnose"):
        assert command in out


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["run", "nope", "--quick"], f"unknown experiment 'nope'; {VALID}"),
        (["plot", "nope"], f"unknown experiment 'nope'; {VALID}"),
        (["reproduce", "--only", "cli_fake", "nope"],
         f"unknown experiment(s) 'nope' in --only; {VALID}"),
        (["run", "cli_fake", "--set", "seeds"],
         "--set: malformed override 'seeds': expected key=value"),
        (["run", "cli_fake", "--set", "1x=2"], "is not a config key"),
        (["run", "cli_fake", "--quick", "--set", "seed=1"],
         "unknown config key 'seed' for experiment 'cli_fake'; valid keys: seeds, sw2"),
        (["run", "cli_fake", "--set", "seeds=many"], "config key 'seeds' takes a int"),
        (["run", "cli_fake", "--set", "sw2=abc"], "config key 'sw2' takes a tuple of float "
         "(default (0.5, 1.0, 2.0)), got 'abc'"),
        (["run", "cli_fake", "--set", "sw2=(1.0, 1e400)"],
         "config key 'sw2' takes a tuple of float (default (0.5, 1.0, 2.0)), got (1.0, inf): "
         "element 1 (inf) is not a finite number"),
        (["run", "cli_fake", "--set", "seeds=True"], "config key 'seeds' takes a int"),
        (["run", "cli_fake", "--set", "seeds=0"], "seeds must be >= 1, got 0"),
        (["reproduce", "--only", "cli_fake", "--workdir", "/dev/null/sub"],
         "--workdir /dev/null/sub: cannot write there (Not a directory)"),
        (["run", "cli_fake", "--workdir", "/dev/null"],
         "--workdir /dev/null: cannot write there"),
        (["run", "cli_fake", "--cpu-devices", "many"],
         "argument --cpu-devices: expected an int >= 1 or 'auto', got 'many'"),
        (["run", "cli_fake", "--cpu-devices", "0"],
         "--cpu-devices must be an int >= 1 or 'auto', got 0"),
        (["run", "cli_fake", "--num-processes", "2"], "--coordinator, --num-processes and "
         "--process-id go together"),
        (["diagnose", "--activation", "nope"],
         "--activation: unknown activation 'nope'; valid names: linear, sigmoid, tanh, relu"),
        (["diagnose", "--activation", "leaky_relu(slope=0.2)"], "unexpected parameter 'slope'"),
        (["diagnose", "--activation", "relu("], "malformed --activation 'relu(': expected NAME"),
        (["diagnose", "--init", "nope"], "--init: unknown initializer 'nope'; valid names: normal"),
        (["diagnose", "--bias-init", "normal(std=-1)"], "--bias-init: initializer 'normal'"),
        (["diagnose", "--norm", "group"],
         "argument --norm: invalid choice: 'group' (choose from 'none', 'batch', 'layer')"),
        (["diagnose", "--loss", "hinge"], "invalid choice: 'hinge' (choose from "
         "'softmax_cross_entropy', 'sigmoid_cross_entropy', 'mse')"),
        (["diagnose", "--depth", "deep"], "argument --depth: invalid int value: 'deep'"),
        (["diagnose", "--depth", "1"], "--depth must be >= 2, got 1"),
        (["diagnose", "--n", "5000"], "--n: load_digits: n_train=5000 exceeds"),
        (["diagnose", "--model", "user_models"], "malformed --model 'user_models': expected "
         "PACKAGE.MODULE:FACTORY"),
        (["diagnose", "--model", "no_such_pkg.models:make"], "--model: cannot import "
         "'no_such_pkg.models'"),
        (["diagnose", "--model", "user_models:nope"],
         "--model: user_models has no callable 'nope'"),
        (["diagnose", "--model", "user_models:cli_broken"], "--model: user_models:cli_broken() "
         "raised RuntimeError: the user's factory is broken"),
        (["diagnose", "--model", "user_models:conv_net"], "must return (model, variables)"),
        (["diagnose", "--model", "user_models:cli_cnn"],  # 64 pixels, not 8x8x1
         "--model: probing user_models:cli_cnn failed: ScopeParamShapeError"),
        (["diagnose", "--model", "user_models:cli_cnn", "--input-shape", "9,9"],
         "--input-shape (9, 9) does not hold the 64 pixels of a digit"),
        (["diagnose", "--model", "user_models:cli_nnx", "--depth", "3"],
         "--model diagnoses your model: --depth only apply to the MLP"),
        (["diagnose", "--train"], "--train and --input-shape apply to --model only"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(argv, message, fakes, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert message in line
    assert captured.out == ""


# ------------------------------------------------------------------------------------ happy paths


def test_list(fakes, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "2 experiments" in out
    assert out.index("cli_broken") < out.index("cli_fake")
    assert "claim:   Activation norms of a random tanh chain grow" in out
    assert "source:  a test fixture" in out
    assert "figures: cli_fake_headline" in out


def test_list_real_registry(capsys):
    """The installed entry points: a landed experiment is listed with its claim and source."""
    main(["list"])  # exit 1 while some registered experiment does not load yet
    out = capsys.readouterr().out
    exp = gf.experiment.get("activation_derivatives")
    assert f"activation_derivatives\n  claim:   {exp.claim[:30]}" in out
    assert "  source:  " in out


def test_run_plot_and_rerun(fake, tmp_path, capsys):
    root = tmp_path / "root"
    argv = ["run", "cli_fake", "--quick", "--workdir", str(root)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lay = gf.experiment.layout("cli_fake", "quick", root)
    figures = [lay.figures / f"cli_fake_headline.{ext}" for ext in ("pdf", "png")]
    tables = [lay.tables / "cli_fake.tex", lay.tables / "cli_fake_macros.tex"]
    for path in [*figures, *tables]:
        assert path.stat().st_size > 0, path
    assert "cli_fake (quick): run" in out and "total" in out
    assert "figures" in out and "cli_fake_headline.png" in out and "runtimes" in out
    df = gf.sweep.load(lay.results / "norms")
    assert sorted(df.seed.unique()) == [0, 1] and sorted(df.sw2.unique()) == [0.5, 2.0]
    record = json.loads((lay.results / "gradflow_run.json").read_text())
    assert record["config"] == {"seeds": 2, "sw2": [0.5, 2.0]} and record["mode"] == "quick"
    runtimes = json.loads((root / "results" / "runtimes.json").read_text())
    first = runtimes["quick"]["cli_fake"]
    assert first["seconds"] > 0 and first["resumed"] is False and "full" not in runtimes
    assert first["seconds"] == pytest.approx(first["run_s"] + first["plot_s"] + first["tables_s"],
                                             abs=0.03)  # fmt: skip

    # plot: from the saved results only
    for path in figures:
        path.unlink()
    assert main(["plot", "cli_fake", "--quick", "--workdir", str(root)]) == 0
    assert all(p.exists() for p in figures)

    # rerun: resumes; the from-scratch timing is kept
    assert main(argv) == 0
    assert "resumed from saved results" in capsys.readouterr().out
    runtimes = json.loads((root / "results" / "runtimes.json").read_text())
    assert runtimes["quick"]["cli_fake"] == first

    # another config refuses to mix with the saved results, --fresh starts over
    assert main([*argv, "--set", "seeds=3"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "made with another config (seeds: 2 -> 3); add --fresh" in line
    assert main([*argv, "--set", "seeds=3", "--fresh"]) == 0
    assert "not recorded" in capsys.readouterr().out
    assert sorted(gf.sweep.load(lay.results / "norms").seed.unique()) == [0, 1, 2]
    runtimes = json.loads((root / "results" / "runtimes.json").read_text())
    assert runtimes["quick"]["cli_fake"] == first  # runs with --set are not recorded


def test_plot_on_an_interrupted_run_says_rerun(fake, tmp_path, capsys):
    root = tmp_path / "root"
    assert main(["run", "cli_fake", "--workdir", str(root)]) == 0
    capsys.readouterr()
    lay = gf.experiment.layout("cli_fake", "full", root)
    store = lay.results / "norms"
    # as `kill -9` leaves it mid-sweep: a chunk missing, the sweep not marked complete, no record
    meta = json.loads((store / "metadata.json").read_text())
    meta["complete"] = False
    (store / "metadata.json").write_text(json.dumps(meta))
    for chunk in (store / "rows").glob("*.parquet"):
        chunk.unlink()
    (lay.results / "gradflow_run.json").unlink()
    assert main(["plot", "cli_fake", "--workdir", str(root)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "full results are incomplete (0 of 1 chunks) for cli_fake" in line
    assert f"rerun `gradflow run cli_fake --workdir {root}`" in line
    assert main(["run", "cli_fake", "--workdir", str(root)]) == 0  # the rerun completes it
    (lay.results / "gradflow_run.json").unlink()  # killed after the sweeps, before the record
    capsys.readouterr()
    assert main(["plot", "cli_fake", "--workdir", str(root)]) == 1
    assert "the run that made them did not finish" in _one_error_line(capsys.readouterr().err)


def test_fresh_refuses_to_delete_results_in_use(fake, tmp_path, capsys):
    root = tmp_path / "root"
    argv = ["run", "cli_fake", "--quick", "--workdir", str(root)]
    assert main(argv) == 0
    store = gf.experiment.layout("cli_fake", "quick", root).results / "norms"
    with gf.sweep._StoreLock(store):
        assert main([*argv, "--fresh"]) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert f"is in use by pid {os.getpid()} on host" in line and "--fresh would delete" in line
    assert (store / "metadata.json").exists()


def test_paper_runs_latexmk_without_rc_files(tmp_path, monkeypatch, capsys):
    """A latexmkrc in the paper directory is Perl that latexmk would run: -norc ignores it."""
    paper = tmp_path / "paper"
    paper.mkdir()
    (paper / "gradflow.tex").write_text("\\documentclass{article}\n")
    (paper / "latexmkrc").write_text('system("touch pwned");\n')
    monkeypatch.setenv("PATH", str(_fake_latexmk(tmp_path / "bin")))
    assert main(["paper", "--workdir", str(tmp_path)]) == 0
    args = (paper / "latexmk_args.txt").read_text().splitlines()[0].split()
    assert args[0] == "-norc" and args[-1] == "gradflow.tex"
    assert "latexmk -norc -pdf" in capsys.readouterr().out


def test_plot_without_results(fake, tmp_path, capsys):
    assert main(["plot", "cli_fake", "--workdir", str(tmp_path)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert f"no full results for cli_fake in {tmp_path / 'results' / 'cli_fake' / 'full'}" in line
    assert f"run `gradflow run cli_fake --workdir {tmp_path}` first" in line


def test_reproduce_and_paper(fake, tmp_path, monkeypatch, capsys):
    root = tmp_path / "root"
    (root / "paper").mkdir(parents=True)
    (root / "paper" / "gradflow.tex").write_text("\\documentclass{article}\n")
    monkeypatch.setenv("PATH", str(_fake_latexmk(tmp_path / "bin")))
    assert main(["reproduce", "--quick", "--workdir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "runtime summary (quick)" in out
    assert any(line.startswith("cli_fake") and line.rstrip().endswith("ok")
               for line in out.splitlines())  # fmt: skip
    assert (root / "paper" / "figures" / "cli_fake_headline.pdf").exists()
    assert (root / "paper" / "gradflow.pdf").exists()
    args, cwd = (root / "paper" / "latexmk_args.txt").read_text().splitlines()
    assert args == "-norc -pdf -interaction=nonstopmode -halt-on-error gradflow.tex"
    assert Path(cwd).resolve() == (root / "paper").resolve()
    runtimes = json.loads((root / "results" / "runtimes.json").read_text())
    assert set(runtimes) == {"quick", "reproduce"} and runtimes["quick"]["cli_fake"]["seconds"] > 0
    # the whole command (every experiment from scratch, paper included) is recorded too
    whole = runtimes["reproduce"]["quick"]
    assert whole["paper"] == "built" and whole["machine_at_start"]["cpus"] >= 1
    assert whole["seconds"] >= runtimes["quick"]["cli_fake"]["seconds"] - 0.1
    fake_s = runtimes["quick"]["cli_fake"]["seconds"]
    assert whole["experiments_s"] == pytest.approx(fake_s, abs=0.1)
    assert "gradflow reproduce --quick: " in out and " s wall" in out

    # no latexmk: reproduce still succeeds and says how to install it; `paper` fails
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["reproduce", "--quick", "--workdir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "latexmk not found" in out
    assert "apt-get install latexmk texlive-latex-recommended texlive-fonts-recommended" in out
    # a rerun resumed the saved sweeps: it is no from-scratch timing, the record stays
    runtimes_after = json.loads((root / "results" / "runtimes.json").read_text())
    assert runtimes_after["reproduce"] == runtimes["reproduce"]
    assert main(["paper", "--workdir", str(root)]) == 1
    assert "latexmk not found on PATH" in _one_error_line(capsys.readouterr().err)
    assert main(["paper", "--workdir", str(tmp_path)]) == 1
    assert "no paper source" in _one_error_line(capsys.readouterr().err)


def test_reproduce_continues_past_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(TESTS))
    group = gf.experiment.ENTRY_POINT_GROUP
    missing = metadata.EntryPoint("cli_missing", "cli_no_such_module:EXPERIMENT", group)
    eps = {**_entry_points(), "cli_missing": missing}
    monkeypatch.setattr(gf.experiment, "_entry_points", lambda: eps)
    assert main(["reproduce", "--quick", "--workdir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "RuntimeError: this experiment always fails" in captured.err  # its traceback
    assert (
        "gradflow: error: could not load experiment 'cli_missing' (ModuleNotFoundError: No module "
        "named 'cli_no_such_module')"
    ) in captured.err
    assert captured.err.strip().splitlines()[-1] == (
        "gradflow: error: 2 experiment(s) failed: cli_broken, cli_missing; paper not built"
    )
    rows = {line.split()[0]: line.split()[-1] for line in captured.out.splitlines()
            if line.startswith("cli_")}  # fmt: skip
    assert rows == {"cli_broken": "FAILED", "cli_fake": "ok", "cli_missing": "FAILED"}
    assert (tmp_path / "paper" / "figures" / "cli_fake_headline.png").exists()
    runtimes = json.loads((tmp_path / "results" / "runtimes.json").read_text())
    assert set(runtimes["quick"]) == {"cli_fake"}


def test_diagnose(tmp_path, capsys):
    argv = ["diagnose", "--depth", "4", "--width", "8", "--n", "32", "--draws", "2",
            "--activation", "leaky_relu(negative_slope=0.2)", "--init", "scaled_normal(scale=2.0)",
            "--bias-init", "zeros", "--norm", "batch", "--residual", "--loss", "mse",
            "--out", str(tmp_path / "diag.png")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "MLP 64 -> 3 x 8 -> 10, leaky_relu(negative_slope=0.2), init scaled_normal" in out
    assert "norm batch, residual; mse on 32 digits; seed 0, 2 draws" in out
    assert "median over 2 draws" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("dense_")]
    assert [r[0] for r in rows] == [f"dense_{i}" for i in range(4)]
    assert all(r[-1] in ("vanishing", "healthy", "exploding") for r in rows)
    assert rows[-1][-1] == "healthy"  # the readout is its own reference
    assert all(r[1] == "dense" for r in rows)  # the kind column
    assert rows[1][3] == "-" or float(rows[1][3]) < 1e-5  # BatchNorm removes dC/db (train mode)
    for ext in ("pdf", "png"):
        assert (tmp_path / f"diag.{ext}").stat().st_size > 0


@pytest.mark.parametrize(
    "argv, rows",
    [
        (["--model", "user_models:cli_cnn", "--input-shape", "8,8,1"],
         [("z_conv", "conv"), ("b_conv", "conv"), ("a_head", "dense")]),
        (["--model", "user_models:cli_nnx", "--draws", "2"], [("fc", "dense"), ("head", "dense")]),
        (["--model", "user_models:cli_tokens"], [("embed", "embedding"), ("block_0/ln1", "norm")]),
    ],
)  # fmt: skip
def test_diagnose_user_model(argv, rows, tmp_path, capsys):
    assert main(["diagnose", *argv, "--n", "16", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(argv[1] + ": ")
    table = [line.split()[:2] for line in out.splitlines()[4:] if not line.startswith("figure")]
    assert [tuple(r) for r in table[: len(rows)]] == rows
    for ext in ("pdf", "png"):
        assert (tmp_path / f"d.{ext}").stat().st_size > 0


# ------------------------------------------------------------------------------------ two hosts

_WORKER = textwrap.dedent(
    """
    import sys
    from importlib import metadata
    sys.path.insert(0, {tests!r})
    import gradflow.experiment as e
    ep = metadata.EntryPoint("cli_fake", "cli_fake_experiment:EXPERIMENT", e.ENTRY_POINT_GROUP)
    e._entry_points = lambda: {{"cli_fake": ep}}
    from gradflow.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(worker: Path, root: Path, *extra: str) -> list[tuple[int, str, str]]:
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    common = ["run", "cli_fake", "--quick", "--workdir", str(root), "--cpu-devices", "2",
              "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", *extra]  # fmt: skip
    procs = [
        subprocess.Popen([sys.executable, str(worker), *common, "--process-id", str(i)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for i in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=240) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


def test_run_on_two_processes(tmp_path):
    """Two processes on loopback, 2 CPU devices each: one table, written by process 0 only."""
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER.format(tests=str(TESTS)))
    root = tmp_path / "root"
    (rc0, out0, err0), (rc1, out1, err1) = _two_processes(worker, root)
    assert rc0 == 0 and rc1 == 0, err0 + err1
    assert "cli_fake (quick): run" in out0 and "runtimes" in out0
    assert "cli_fake" not in out1  # process 1 computes, process 0 writes and reports
    lay = gf.experiment.layout("cli_fake", "quick", root)
    df = gf.sweep.load(lay.results / "norms")
    assert len(df) == 2 * 2 * 4  # sw2 x seeds x layers, no duplicates
    assert not df.duplicated(["sw2", "seed", "layer"]).any()
    assert (lay.figures / "cli_fake_headline.png").exists()
    runtimes = json.loads((root / "results" / "runtimes.json").read_text())
    assert runtimes["quick"]["cli_fake"]["devices"] == "4 x cpu (2 process(es))"

    # process 0 refuses to mix configs: both processes stop (none waits in a collective)
    (rc0, _, err0), (rc1, _, err1) = _two_processes(worker, root, "--set", "seeds=3")
    assert rc0 == 2 and "made with another config (seeds: 2 -> 3)" in err0
    assert rc1 == 2 and "gradflow: error: process 0 stopped (see its output)" in err1
    assert len(gf.sweep.load(lay.results / "norms")) == len(df)
