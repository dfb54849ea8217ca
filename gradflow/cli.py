r"""The ``gradflow`` command: list, run, plot and reproduce experiments, build the paper, diagnose.

Installed as a console script (``gradflow = "gradflow.cli:main"``)::

    gradflow list                                   # experiments, their claims and sources
    gradflow run layer_speed --quick                # run + figures + tables of one experiment
    gradflow run layer_speed --set seeds=8 --set lr=0.5 --workdir /tmp/ls --fresh
    gradflow plot layer_speed --quick               # figures and tables from saved results only
    gradflow reproduce [--quick] [--only NAME ...]  # every experiment, then paper/gradflow.pdf
    gradflow paper                                  # rebuild paper/gradflow.pdf (latexmk)
    gradflow diagnose --activation sigmoid --depth 20 --init normal   # probe a net on digits
    gradflow --version

Where outputs land (``--workdir DIR``, default the current directory, is the root; see
:func:`gradflow.experiment.layout`): results in ``DIR/results/<name>/<quick|full>``, figures in
``DIR/paper/figures``, tables and number macros in ``DIR/paper/tables``, wall times in
``DIR/results/runtimes.json`` (quick and full kept apart; one entry per experiment, the latest run
that computed its results from scratch; a run that resumed completed sweeps is kept only when there
is no from-scratch timing, marked ``"resumed": true``; runs with ``--set`` overrides are not
recorded). ``DIR/results/<name>/<mode>/gradflow_run.json`` records the config a completed
``gradflow run`` used, so a rerun with a different config refuses to mix results (``--fresh``
discards the old ones).

Several devices and hosts: ``run`` and ``reproduce`` take ``--cpu-devices N|auto`` (N CPU
devices, ``jax_num_cpu_devices``; ``auto``: one per usable core) and ``--distributed`` /
``--coordinator HOST:PORT --num-processes P --process-id I`` (:func:`jax.distributed.initialize`;
with ``--distributed`` alone its arguments come from the cluster environment: SLURM, Open MPI,
Cloud TPU). Every process runs the sweeps (:func:`gradflow.sweep.run` shards them over the global
devices); process 0 alone writes results, figures, tables, timings and the paper.

Errors in what you typed (an unknown experiment, activation, initializer, norm or loss, a malformed,
unknown or invalid ``--set`` value: the whole config is checked by
:func:`gradflow.experiment.resolve_config` and the experiment's ``check`` before anything runs; a
``--workdir`` that cannot be written) print one line, ``gradflow: error: ...`` naming the valid
choices, and exit with status 2. ``plot`` on incomplete results (an interrupted run) says how many
chunks are saved and to rerun. A failing experiment prints its traceback and exits with status 1.
The paper is built with ``latexmk -norc``: no ``latexmkrc`` (Perl) in a workdir is ever run.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import gradflow
from gradflow import _io, _table
from gradflow import experiment as _experiment

__all__ = ["PAPER_TEX", "RUNTIMES", "RUN_RECORD", "build_parser", "main"]

#: The paper's LaTeX source, relative to the root (``--workdir``).
PAPER_TEX = Path("paper") / "gradflow.tex"
#: Timings of ``gradflow run`` / ``reproduce``, relative to the root.
RUNTIMES = Path("results") / "runtimes.json"
#: The record a completed ``gradflow run`` leaves in the experiment's results directory.
RUN_RECORD = "gradflow_run.json"

LATEX_HELP = (
    "install a LaTeX toolchain with latexmk, e.g. on Debian/Ubuntu: "
    "`sudo apt-get install latexmk texlive-latex-recommended texlive-fonts-recommended` "
    "(macOS: MacTeX; any OS: TeX Live), then run `gradflow paper`"
)
# -norc: read no latexmkrc (not the system's, the user's, nor one in the paper directory, which
# is Perl that latexmk would run); every setting gradflow needs is on the command line.
_LATEXMK_ARGS = ("-norc", "-pdf", "-interaction=nonstopmode", "-halt-on-error")
_STEPS = ("run", "plot", "tables")


# ------------------------------------------------------------------------------------ errors


class CLIError(Exception):
    """An error for the user: printed as one ``gradflow: error: ...`` line, exit ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.message = message
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse without the usage block on errors: one line, raised as :class:`CLIError`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault(
            "formatter_class", lambda prog: argparse.HelpFormatter(prog, max_help_position=28)
        )
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise CLIError(f"{message} (see `{self.prog} --help`)", 2)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(message: str) -> None:
    print(f"gradflow: error: {_one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def _user_input(prefix: str = "") -> Iterator[None]:
    """Turn a ValueError/TypeError of gradflow's validators into a :class:`CLIError` (exit 2)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise CLIError(f"{prefix}{e}", 2) from None


# ------------------------------------------------------------------------------------ helpers


def _agg() -> None:
    """Headless plotting: the CLI only writes files."""
    import matplotlib

    matplotlib.use("Agg")


def _rel(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _jsonable(obj: Any) -> Any:
    """``obj`` as JSON would read it back (tuples become lists; a typed config its dict)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_experiment.jsonable))


def _mode(args: argparse.Namespace) -> str:
    return "quick" if getattr(args, "quick", False) else "full"


def _is_lead() -> bool:
    import jax

    return jax.process_index() == 0


def _lead_check(check: Callable[[], None]) -> None:
    """Run ``check`` on process 0 and share its verdict, so that every process stops together
    (a process that went on alone would wait forever in the sweep's collectives)."""
    import jax

    error: CLIError | None = None
    if jax.process_index() == 0:
        try:
            check()
        except CLIError as e:
            error = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if error is None and int(failed):
            error = CLIError("process 0 stopped (see its output)", 2)
    if error is not None:
        raise error


def _devices() -> str:
    import jax

    devs = jax.devices()
    kinds = sorted({d.platform for d in devs})
    return f"{len(devs)} x {'/'.join(kinds)} ({jax.process_count()} process(es))"


def _load_experiment(name: str) -> _experiment.Experiment:
    """The registered experiment ``name``; an unknown name is a usage error (exit 2)."""
    known = _experiment.names()
    if name not in known:
        raise CLIError(
            f"unknown experiment {name!r}; valid names: {', '.join(known) or '(none registered)'}"
        )
    try:
        return _experiment.get(name)
    except Exception as e:  # a broken plug-in: say which and why, exit 1
        if not isinstance(e, ModuleNotFoundError):  # a missing module needs no traceback
            traceback.print_exc()
        raise CLIError(
            f"could not load experiment {name!r} ({type(e).__name__}: {_one_line(e)})", 1
        ) from None


def _overrides(pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for text in pairs or ():
        with _user_input("--set: "):
            key, value = _experiment.parse_override(text)
        out[key] = value
    return out


def _paths(items: Any) -> list[Path]:
    return [Path(p) for p in (items or ())]


def _fmt_paths(paths: Sequence[Path]) -> str:
    return ", ".join(_rel(p) for p in paths) if paths else "(none)"


# ------------------------------------------------------------------------------------ distribution


def _cpu_devices_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'auto', got {text!r}") from None


def _add_distributed(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "devices and hosts",
        "Sweeps shard over every device JAX sees; with several processes each runs the same "
        "command and process 0 alone writes the outputs.",
    )
    g.add_argument(
        "--cpu-devices",
        type=_cpu_devices_arg,
        metavar="N|auto",
        help="give this process N CPU devices (jax_num_cpu_devices) to shard over; 'auto': "
        "one per usable core (the fastest setting on a CPU-only machine)",
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() (arguments from the cluster environment unless "
        "given below)",
    )
    g.add_argument(
        "--compile",
        choices=("auto", "fast", "optimized"),
        default="auto",
        help="XLA's backend optimisation: 'fast' compiles at level 1 (the quick configs are "
        "compile-bound: their programs run once and briefly), 'optimized' at XLA's default; "
        "'auto' (default): fast with --quick, optimized otherwise",
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0")
    g.add_argument("--num-processes", type=int, metavar="P", help="number of processes")
    g.add_argument("--process-id", type=int, metavar="I", help="this process, 0 .. P-1")


#: XLA flag of ``--compile fast``: XLA's CPU backend at optimisation level 1 (default 2). Measured
#: on 2 CPU cores: two depth-20 training programs compile in 3.6 s instead of 7.6 s and run as
#: fast (0.11 vs 0.15 s); `gradflow run remedies --quick` 35-37 s instead of 50-52 s (level 0:
#: compile 2.6 s, but runs 2.4x slower, 50-53 s in all).
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=1"


def _compile_mode(args: argparse.Namespace) -> str:
    mode = getattr(args, "compile", "auto")
    if mode == "auto":
        return "fast" if getattr(args, "quick", False) else "optimized"
    return mode


def _apply_compile_mode(args: argparse.Namespace) -> None:
    """``--compile fast``: add :data:`FAST_COMPILE_FLAG` to ``XLA_FLAGS`` (unless the user set an
    optimisation level there), before JAX starts its backends; XLA reads the flags once, so once
    they run it has no effect (an explicit ``--compile fast`` then warns)."""
    if _compile_mode(args) != "fast":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return  # the user's own choice wins
    from gradflow import _jax_compat

    if _jax_compat.backends_are_initialized():  # e.g. main() called again in one process
        if getattr(args, "compile", "auto") == "auto":
            return  # best effort: only an explicit --compile fast is worth a warning
        print(
            "gradflow: warning: JAX's backend already started; --compile fast has no effect",
            file=sys.stderr,
        )
        return
    os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE_FLAG}".strip()


def _start_jax(args: argparse.Namespace) -> None:
    """Apply ``--compile`` and ``--cpu-devices`` and start the distributed runtime, before any
    JAX computation."""
    import jax

    _apply_compile_mode(args)

    n = getattr(args, "cpu_devices", None)
    if n is not None:
        from gradflow import sweep

        try:
            sweep.cpu_devices(n)
        except ValueError:
            raise CLIError(f"--cpu-devices must be an int >= 1 or 'auto', got {n!r}") from None
        except RuntimeError as e:
            raise CLIError(f"--cpu-devices: {e}", 2) from None
    explicit = (args.coordinator, args.num_processes, args.process_id)
    if not (args.distributed or any(v is not None for v in explicit)):
        return
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise CLIError(
            "--coordinator, --num-processes and --process-id go together (or use "
            "--distributed alone to read them from the cluster environment)"
        )
    if args.num_processes is not None and not 0 <= args.process_id < args.num_processes:
        raise CLIError(
            f"--process-id must be in 0..{args.num_processes - 1}, got {args.process_id}"
        )
    try:
        jax.distributed.initialize(
            coordinator_address=args.coordinator,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"jax.distributed.initialize failed: {e}", 1) from None


# ------------------------------------------------------------------------------------ experiments


@dataclasses.dataclass
class _Outcome:
    """What one experiment's steps produced."""

    name: str
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)
    figures: list[Path] = dataclasses.field(default_factory=list)
    tables: list[Path] = dataclasses.field(default_factory=list)
    resumed: bool = False
    error: str | None = None

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def _has_results(results: Path) -> bool:
    return results.is_dir() and any(results.iterdir())


def _check_record(results: Path, name: str, mode: str, config: dict, *, fresh: bool) -> None:
    """Refuse to mix results of two configs in one results directory."""
    record = results / RUN_RECORD
    if fresh or not record.exists():
        return
    try:
        old = json.loads(record.read_text())["config"]
    except (OSError, ValueError, KeyError):
        return
    new = _jsonable(config)
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise CLIError(
            f"{_rel(results)} holds results of {name} ({mode}) made with another config "
            f"({diff}); add --fresh to discard them, or use another --workdir"
        )


def _check_workdir(root: Path) -> None:
    """``--workdir`` must be a directory gradflow can write (created if missing)."""
    import tempfile

    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise CLIError(f"--workdir {root}: cannot write there ({e.strerror or e})", 2) from None


def _stores(results: Path) -> list[Path]:
    """The sweep stores (directories holding a metadata.json) below ``results``."""
    return sorted(p.parent for p in results.rglob("metadata.json")) if results.is_dir() else []


def _check_not_in_use(results: Path) -> None:
    """Refuse to delete results another process is writing (``--fresh``)."""
    from gradflow import sweep

    for store in _stores(results):
        holder = sweep.in_use(store)
        if holder is not None:
            raise CLIError(
                f"{_rel(store)} is in use by {holder}; --fresh would delete results that run is "
                "writing: wait for it to finish, or use another --workdir",
                1,
            )


def _incomplete(results: Path) -> str | None:
    """Why the results in ``results`` are not complete (an interrupted run), or None."""
    from gradflow import sweep

    done = total = 0
    unfinished = False
    for store in _stores(results):
        try:
            meta = sweep.load_metadata(store)
        except (OSError, ValueError) as e:
            return f"a results store is damaged ({_one_line(e)})"
        chunks = sum(int(g.get("chunks", 0)) for g in meta["groups"])
        present = len(list((store / "rows").glob("*.parquet"))) if (store / "rows").is_dir() else 0
        total += chunks
        done += min(present, chunks)
        unfinished |= not meta.get("complete")
    if unfinished or done < total:
        return f"results are incomplete ({done} of {total} chunks)"
    if not (results / RUN_RECORD).exists():
        return "results are incomplete (the run that made them did not finish)"
    return None


def _failure(step: str, name: str, e: BaseException) -> str:
    msg = f"experiment {name!r} failed in its {step} step ({type(e).__name__}: "
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    msg += f"{first})"
    if "holds a different sweep" in str(e):
        msg += "; add --fresh to discard the old results"
    return msg


def _steps(
    exp: _experiment.Experiment,
    config: dict | None,
    lay: _experiment.Layout,
    *,
    run: bool,
    write: bool,
) -> _Outcome:
    """Run ``exp``'s run step (``run``), then, on the writing process, plot and tables."""
    out = _Outcome(exp.name)
    if run:
        out.resumed = _has_results(lay.results)
        lay.results.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            exp.run(config, lay.results)
        except Exception as e:
            traceback.print_exc()
            out.error = _failure("run", exp.name, e)
            return out
        out.seconds["run"] = time.perf_counter() - t0
    if not write:
        return out
    _agg()
    t0 = time.perf_counter()
    try:
        out.figures = _paths(exp.plot(lay.results, lay.figures))
    except Exception as e:
        traceback.print_exc()
        out.error = _failure("plot", exp.name, e)
        return out
    out.seconds["plot"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if exp.tables is not None:
        try:
            out.tables = _paths(exp.tables(lay.results, lay.tables))
        except Exception as e:
            traceback.print_exc()
            out.error = _failure("tables", exp.name, e)
            return out
    out.seconds["tables"] = time.perf_counter() - t0
    return out


def _write_record(lay: _experiment.Layout, mode: str, config: dict, overrides: dict, out: _Outcome):
    record = {
        "experiment": out.name,
        "mode": mode,
        "config": _jsonable(config),
        "overrides": _jsonable(overrides),
        "gradflow": gradflow.__version__,
        "matmul_precision": gradflow.config.matmul_precision(),
        "finished": _io.timestamp(),
        "seconds": {k: round(v, 3) for k, v in out.seconds.items()},
        "resumed": out.resumed,
    }
    _experiment.write_atomic(lay.results / RUN_RECORD, json.dumps(record, indent=2) + "\n")


def _process_seconds(t0: float) -> float:
    """Seconds since this process started (Linux ``/proc``: interpreter start-up and imports
    included, as ``time gradflow ...`` would count); elsewhere since ``t0`` (``perf_counter``)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - t0


def _machine() -> dict[str, Any]:
    """CPU count and load average: what a wall time means depends on both."""
    info: dict[str, Any] = {"cpus": os.cpu_count()}
    with contextlib.suppress(OSError, AttributeError):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, AttributeError):
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _record_command(root: Path, mode: str, record: dict[str, Any]) -> Path:
    """Store the whole ``gradflow reproduce`` run (wall time with the paper build, machine) under
    ``"reproduce"`` in ``root/results/runtimes.json`` (atomically)."""
    path = root / RUNTIMES
    data: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
    data.setdefault("reproduce", {})[mode] = record
    return _experiment.write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _record_runtime(root: Path, mode: str, out: _Outcome) -> Path:
    """Merge ``out``'s timings into ``root/results/runtimes.json`` (atomically)."""
    path = root / RUNTIMES
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            print(
                f"gradflow: warning: {_rel(path)} was not valid JSON; rewriting it", file=sys.stderr
            )
            data = {}
    entries = data.setdefault(mode, {})
    old = entries.get(out.name)
    if not (out.resumed and old is not None and not old.get("resumed", False)):
        entries[out.name] = {
            "seconds": round(out.total, 2),
            **{f"{k}_s": round(v, 2) for k, v in out.seconds.items()},
            "resumed": out.resumed,
            "finished": _io.timestamp(),
            "devices": _devices(),
            "matmul_precision": gradflow.config.matmul_precision(),
            "gradflow": gradflow.__version__,
        }
    data[mode] = dict(sorted(entries.items()))
    return _experiment.write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _report(out: _Outcome, mode: str, lay: _experiment.Layout, *, echo: Callable = print) -> None:
    times = ", ".join(f"{k} {v:.1f} s" for k, v in out.seconds.items())
    resumed = " (resumed from saved results)" if out.resumed else ""
    echo(f"{out.name} ({mode}): {times}; total {out.total:.1f} s{resumed}")
    echo(f"  results  {_rel(lay.results)}")
    echo(f"  figures  {_fmt_paths(out.figures)}")
    echo(f"  tables   {_fmt_paths(out.tables)}")


# ------------------------------------------------------------------------------------ commands


def _cmd_list(args: argparse.Namespace) -> int:
    import textwrap

    known = _experiment.names()
    if not known:
        print(
            f"no experiments registered (entry-point group {_experiment.ENTRY_POINT_GROUP!r}); "
            "is gradflow installed with `pip install -e .`?"
        )
        return 0
    print(f"{len(known)} experiments; run one with `gradflow run NAME [--quick]`\n")
    failed = 0
    for name in known:
        try:
            exp = _experiment.get(name)
        except Exception as e:
            failed += 1
            print(f"{name}\n  (failed to load: {type(e).__name__}: {_one_line(e)})\n")
            continue
        print(name)
        for label, text in (("claim", exp.claim), ("source", exp.source)):
            head = f"  {label + ':':<9}"
            print(textwrap.fill(_one_line(text), 100, initial_indent=head,
                                subsequent_indent=" " * len(head)))  # fmt: skip
        if exp.figures:
            print("  figures: " + ", ".join(exp.figures))
        print()
    if failed:
        _error(f"{failed} experiment(s) failed to load (see above)")
        return 1
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    exp = _load_experiment(args.name)
    overrides = _overrides(args.set)
    mode = _mode(args)
    with _user_input():
        config = exp.config(mode, overrides)
    root = Path(args.workdir)
    lay = _experiment.layout(exp.name, mode, root)
    _start_jax(args)
    lead = _is_lead()

    def check():
        _check_workdir(root)
        _check_record(lay.results, exp.name, mode, config, fresh=args.fresh)
        if args.fresh and lay.results.exists():
            _check_not_in_use(lay.results)
            shutil.rmtree(lay.results)

    _lead_check(check)
    out = _steps(exp, config, lay, run=True, write=lead)
    if out.error:
        raise CLIError(out.error, 1)
    if not lead:
        return 0
    _write_record(lay, mode, config, overrides, out)
    _report(out, mode, lay)
    if overrides:
        print(f"  runtimes not recorded in {_rel(root / RUNTIMES)} (--set overrides)")
    else:
        print(f"  runtimes {_rel(_record_runtime(root, mode, out))}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    exp = _load_experiment(args.name)
    mode = _mode(args)
    root = Path(args.workdir)
    lay = _experiment.layout(exp.name, mode, root)
    if not _has_results(lay.results):
        cmd = f"gradflow run {exp.name}" + (" --quick" if mode == "quick" else "")
        if root != Path("."):
            cmd += f" --workdir {args.workdir}"
        raise CLIError(
            f"no {mode} results for {exp.name} in {_rel(lay.results)}; run `{cmd}` first", 1
        )
    why = _incomplete(lay.results)
    if why is not None:
        cmd = f"gradflow run {exp.name}" + (" --quick" if mode == "quick" else "")
        if root != Path("."):
            cmd += f" --workdir {args.workdir}"
        raise CLIError(
            f"{mode} {why} for {exp.name} in {_rel(lay.results)}: rerun `{cmd}` (finished "
            "chunks are kept)",
            1,
        )
    _check_workdir(root)
    out = _steps(exp, None, lay, run=False, write=True)
    if out.error:
        raise CLIError(out.error, 1)
    _report(out, mode, lay)
    return 0


def _summary_table(outcomes: Sequence[_Outcome], mode: str) -> str:
    header = ["experiment", *(f"{s} s" for s in _STEPS), "total s", "status"]
    rows = []
    for o in outcomes:
        status = "FAILED" if o.error else ("resumed" if o.resumed else "ok")
        cells = [f"{o.seconds[s]:.1f}" if s in o.seconds else "-" for s in _STEPS]
        rows.append([o.name, *cells, f"{o.total:.1f}", status])
    total = sum(o.total for o in outcomes)
    rows.append(["total", "", "", "", f"{total:.1f}", ""])
    head, *body, last = _table.align([header, *rows], left={0, len(header) - 1})
    rule = "-" * len(head)
    return "\n".join([f"runtime summary ({mode})", head, rule, *body, rule, last])


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    known = _experiment.names()
    chosen = list(dict.fromkeys(args.only)) if args.only else list(known)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise CLIError(
            f"unknown experiment(s) {', '.join(map(repr, unknown))} in --only; valid names: "
            f"{', '.join(known) or '(none registered)'}"
        )
    # registry order, whatever the order of --only
    chosen = [n for n in known if n in chosen]
    mode = _mode(args)
    root = Path(args.workdir)
    t0 = time.perf_counter()
    machine_at_start = _machine()
    _start_jax(args)
    lead = _is_lead()

    def fresh():
        _check_workdir(root)
        if args.fresh:
            for n in chosen:
                _check_not_in_use(_experiment.layout(n, mode, root).results)
            for n in chosen:
                shutil.rmtree(_experiment.layout(n, mode, root).results, ignore_errors=True)

    _lead_check(fresh)

    outcomes: list[_Outcome] = []
    bar = tqdm(chosen, desc=f"reproduce ({mode})", unit="experiment",
               disable=None if lead else True, dynamic_ncols=True)  # fmt: skip

    def echo(text: str) -> None:
        if lead:
            tqdm.write(text, file=sys.stdout)

    for name in bar:
        bar.set_postfix_str(name, refresh=True)
        lay = _experiment.layout(name, mode, root)
        try:  # a broken plug-in or a stale results directory fails this experiment only
            exp = _load_experiment(name)
            with _user_input(f"experiment {name!r}: "):
                config = exp.config(mode)
            _lead_check(functools.partial(_check_record, lay.results, name, mode, config,
                                          fresh=False))  # fmt: skip
        except CLIError as e:
            out = _Outcome(name, error=e.message)
        else:
            out = _steps(exp, config, lay, run=True, write=lead)
        outcomes.append(out)
        if not lead:
            continue
        if out.error:
            tqdm.write(f"gradflow: error: {_one_line(out.error)}", file=sys.stderr)
            continue
        _write_record(lay, mode, config, {}, out)
        _record_runtime(root, mode, out)
        _report(out, mode, lay, echo=echo)
    bar.close()
    if not lead:
        return 1 if any(o.error for o in outcomes) else 0

    print()
    print(_summary_table(outcomes, mode))
    print(f"timings: {_rel(root / RUNTIMES)}")
    in_checkout = (root / "experiments" / "__init__.py").is_file()
    if in_checkout:
        index = _experiment.write_index(root)
        print(f"experiments index: {_rel(index)}")
    if (root / PAPER_TEX).exists():  # runtime and benchmark tables, build record for the paper
        from gradflow import paper as _paper

        _paper.generate(root, mode=mode)
    failed = [o.name for o in outcomes if o.error]
    if failed:
        _error(f"{len(failed)} experiment(s) failed: {', '.join(failed)}; paper not built")
        return 1
    status = "not requested" if args.no_paper else _build_paper(root, required=False)
    complete = set(chosen) == set(known) and not any(o.resumed for o in outcomes)
    if complete:  # a from-scratch run of every experiment: the number the budgets are about
        wall = _process_seconds(t0)
        _record_command(root, mode, {
            "seconds": round(wall, 1),
            "experiments_s": round(sum(o.total for o in outcomes), 1),
            "paper": status,
            "compile": _compile_mode(args),
            "machine_at_start": machine_at_start,
            "devices": _devices(),
            "matmul_precision": gradflow.config.matmul_precision(),
            "finished": _io.timestamp(),
            "gradflow": gradflow.__version__,
        })  # fmt: skip
        print(f"gradflow reproduce{' --quick' if mode == 'quick' else ''}: {wall:.0f} s wall")
        if in_checkout:
            _experiment.write_index(root)
    return 0 if status in ("built", "skipped", "not requested") else 1


def _build_paper(root: Path, *, required: bool) -> str:
    """Build ``root/paper/gradflow.pdf`` with latexmk; returns ``"built"``, ``"skipped"`` or
    ``"failed"``. Without the source or latexmk: an error when ``required``, else a note."""
    tex = root / PAPER_TEX
    if not tex.exists():
        msg = f"no paper source {_rel(tex)}"
        if required:
            raise CLIError(f"{msg}; run in the gradflow checkout or pass --workdir", 1)
        print(f"paper: {msg}; skipped")
        return "skipped"
    latexmk = shutil.which("latexmk")
    if latexmk is None:
        if required:
            raise CLIError(f"latexmk not found on PATH: {LATEX_HELP}", 1)
        print(f"paper: not built, latexmk not found on PATH; to build it, {LATEX_HELP}")
        return "skipped"
    cmd = [latexmk, *_LATEXMK_ARGS, tex.name]
    print(f"paper: {' '.join(['latexmk', *_LATEXMK_ARGS, tex.name])} (in {_rel(tex.parent)})")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tex.parent, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    pdf = tex.with_suffix(".pdf")
    if proc.returncode != 0 or not pdf.exists():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        print(tail, file=sys.stderr)
        _error(
            f"latexmk failed with status {proc.returncode} after {seconds:.1f} s; see "
            f"{_rel(tex.with_suffix('.log'))}"
        )
        return "failed"
    print(f"paper: {_rel(pdf)} ({seconds:.1f} s)")
    return "built"


def _cmd_paper(args: argparse.Namespace) -> int:
    return 0 if _build_paper(Path(args.workdir), required=True) == "built" else 1


def _spec(text: str, what: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``"name(param=value, ...)"`` -> ``(name, params)``."""
    hint = f"expected NAME or NAME(param=value, ...), e.g. {_SPEC_EXAMPLES[what]}"
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise CLIError(f"malformed --{what} {text!r}: {hint}") from None
    if isinstance(node, ast.Name):
        return node.id, {}
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and not node.args
        and all(kw.arg is not None for kw in node.keywords)
    ):
        try:
            return node.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}
        except ValueError:
            pass
    raise CLIError(f"malformed --{what} {text!r}: {hint}")


_SPEC_EXAMPLES = {
    "activation": "leaky_relu(negative_slope=0.2)",
    "init": "scaled_normal(scale=2.0)",
    "bias-init": "normal(std=0.05)",
}


_MLP_FLAGS = {
    "activation": "sigmoid",
    "depth": 20,
    "width": 30,
    "init": "normal",
    "bias_init": "normal",
    "norm": "none",
    "residual": False,
}


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected D1,D2,... (positive ints), got {text!r}"
        ) from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive dimensions, got {text!r}")
    return dims


def _load_factory(spec: str) -> tuple[str, Callable[..., Any]]:
    """``PACKAGE.MODULE:FACTORY`` -> (the spec, the callable); CLIError on any mistake."""
    import importlib

    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr.isidentifier():
        raise CLIError(
            f"malformed --model {spec!r}: expected PACKAGE.MODULE:FACTORY, e.g. "
            "my_project.models:make_cnn"
        )
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise CLIError(
            f"--model: cannot import {module!r} ({e}); install it, or add its directory to "
            "PYTHONPATH"
        ) from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise CLIError(f"--model: {module} has no callable {attr!r}")
    return spec, factory


def _user_model(args: argparse.Namespace, seed: int) -> tuple[Any, Any, Any, Any]:
    """Call the --model factory (with a key if it takes an argument) -> (model, variables, x, y);
    without a batch of its own, the digits of --n reshaped to --input-shape."""
    import inspect

    import jax

    spec, factory = args.model_factory
    try:
        takes_key = bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        takes_key = False
    try:
        made = factory(jax.random.key(seed)) if takes_key else factory()
    except Exception as e:  # the user's code: say where it failed, in one line
        raise CLIError(f"--model: {spec}() raised {type(e).__name__}: {e}") from None
    if not isinstance(made, tuple) or len(made) not in (2, 4):
        raise CLIError(
            f"--model: {spec}() must return (model, variables), (apply_fn, params) or "
            f"(model, variables, x, y); got {type(made).__name__}"
            + (f" of length {len(made)}" if isinstance(made, tuple) else "")
        )
    if len(made) == 4:
        return made
    x, y = args.digits
    try:
        x = x.reshape((x.shape[0], *args.input_shape))
    except (TypeError, ValueError):
        raise CLIError(
            f"--input-shape {args.input_shape} does not hold the 64 pixels of a digit"
        ) from None
    return (*made, x, y)


def _diagnose_user_model(args: argparse.Namespace) -> int:
    import inspect

    import jax

    from gradflow import data, probes

    changed = [f"--{k.replace('_', '-')}" for k, v in _MLP_FLAGS.items() if getattr(args, k) != v]
    if changed:
        raise CLIError(f"--model diagnoses your model: {', '.join(changed)} only apply to the MLP")
    args.model_factory = _load_factory(args.model)
    with _user_input("--n: "):
        digits = data.load_digits(n_train=args.n, seed=0)
    args.digits = (jax.numpy.asarray(digits.x_train), jax.numpy.asarray(digits.y_train))
    loss = args.loss or "softmax_cross_entropy"
    reports = []
    for seed in range(args.seed, args.seed + args.draws):
        model, variables, x, y = _user_model(args, seed)
        try:
            reports.append(probes.probe(model, variables, x, y, loss=loss, train=args.train))
        except Exception as e:  # the user's model (or its batch) failed: one line, exit 2
            msg = str(e).split("\n")[0]
            raise CLIError(
                f"--model: probing {args.model} failed: {type(e).__name__}: {msg}"
            ) from None
    report = reports[0] if len(reports) == 1 else jax.tree.map(lambda *a: jax.numpy.stack(a),
                                                               *reports)  # fmt: skip
    name = getattr(model, "__name__", None) if inspect.isroutine(model) else None
    name = name or type(model).__name__
    desc = (
        f"{args.model}: {name} on a batch of {jax.tree.leaves(x)[0].shape[0]}; {loss}; seed "
        f"{args.seed}"
        + (f", {args.draws} draws" if args.draws > 1 else "")
        + (", train mode" if args.train else "")
    )
    print(desc)
    return _print_diagnosis(args, report, f"diagnose_{args.model.rpartition(':')[2]}", args.model)


def _print_diagnosis(args: argparse.Namespace, report: Any, default_out: str, title: str) -> int:
    """Print the table and the verdict counts of ``report``, save its figure."""
    from gradflow import plotting, probes

    print(probes.format_report(report))
    labels = probes.verdict(report)
    counts = {v: int((labels == v).sum()) for v in ("vanishing", "exploding", "non-finite")}
    if any(counts.values()):
        print(", ".join(f"{n} layer(s) {v}" for v, n in counts.items() if n))
    _agg()
    with plotting.style():
        written = probes.plot_report(report, args.out or default_out, title=title)
    print(f"figure: {_fmt_paths(_paths(written))}")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from gradflow import activations, data, initializers, models, probes

    for flag, least in (("n", 1), ("draws", 1)):
        if getattr(args, flag) < least:
            raise CLIError(f"--{flag} must be >= {least}, got {getattr(args, flag)}")
    if args.seed < 0:
        raise CLIError(f"--seed must be >= 0, got {args.seed}")
    if args.model is not None:
        return _diagnose_user_model(args)
    if args.train or args.input_shape != (64,):
        raise CLIError("--train and --input-shape apply to --model only")
    args.loss = args.loss or "sigmoid_cross_entropy"

    act_name, act_params = _spec(args.activation, "activation")
    with _user_input("--activation: "):
        act = activations.get(act_name, **act_params)
    inits = {}
    for flag, text in (("init", args.init), ("bias-init", args.bias_init)):
        name, params = _spec(text, flag)
        with _user_input(f"--{flag}: "):
            inits[flag] = initializers.get(name, **params)
    for flag, least in (("depth", 2), ("width", 1)):
        if getattr(args, flag) < least:
            raise CLIError(f"--{flag} must be >= {least}, got {getattr(args, flag)}")
    norm = None if args.norm == "none" else args.norm
    with _user_input():
        model = models.MLP(
            widths=(args.width,) * (args.depth - 1),
            out=10,
            activation=act,
            kernel_init=inits["init"],
            bias_init=inits["bias-init"],
            norm=norm,
            residual=args.residual,
        )
    with _user_input("--n: "):
        digits = data.load_digits(n_train=args.n, seed=0)

    import jax

    x, y = jax.numpy.asarray(digits.x_train), jax.numpy.asarray(digits.y_train)
    train = norm == "batch"  # BatchNorm: the batch statistics a training step sees

    def one(seed):
        variables = model.init(jax.random.key(seed), x)
        return probes.probe(model, variables, x, y, loss=args.loss, train=train)

    if args.draws == 1:
        report = one(args.seed)
    else:  # seeds SEED .. SEED+draws-1, vmapped: one compiled call
        report = jax.vmap(one)(jax.numpy.arange(args.seed, args.seed + args.draws))

    desc = (
        f"MLP 64 -> {args.depth - 1} x {args.width} -> 10, {args.activation}, init {args.init}, "
        f"bias init {args.bias_init}, norm {args.norm}"
        + (", residual" if args.residual else "")
        + f"; {args.loss} on {args.n} digits; seed {args.seed}"
        + (f", {args.draws} draws" if args.draws > 1 else "")
    )
    print(desc)
    out = f"diagnose_{act_name}_{args.init.split('(')[0]}_depth{args.depth}_width{args.width}"
    title = (
        f"{args.activation}, init {args.init}, depth {args.depth}, width {args.width}"
        + ("" if norm is None else f", {norm} norm")
        + (", residual" if args.residual else "")
    )
    return _print_diagnosis(args, report, out, title)


# ------------------------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gradflow`` command (one subparser per subcommand)."""
    parser = _Parser(
        prog="gradflow",
        description="gradflow: vanishing and exploding gradients -- experiments, figures, paper, "
        "and a per-layer diagnosis of any MLP.",
        epilog="Run `gradflow COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"gradflow {gradflow.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def workdir(p):
        p.add_argument(
            "--workdir",
            default=".",
            metavar="DIR",
            help="root of the outputs: DIR/results, DIR/paper/figures, DIR/paper/tables "
            "(default: the current directory)",
        )

    def quick(p):
        p.add_argument(
            "--quick",
            action="store_true",
            help="the quick config (seconds) instead of the full one",
        )

    p = sub.add_parser(
        "list",
        help="list the experiments, their claims and sources",
        description="List the registered experiments (entry points "
        f"{_experiment.ENTRY_POINT_GROUP!r}) with their claims and sources.",
    )
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser(
        "run",
        help="run one experiment, then make its figures and tables",
        description="Run an experiment's sweeps (results in DIR/results/NAME/MODE; a rerun "
        "resumes them), then its figures (DIR/paper/figures) and tables (DIR/paper/tables). "
        "Prints where everything went and the wall time, and records it in "
        "DIR/results/runtimes.json.",
    )
    p.add_argument("name", metavar="NAME", help="experiment name (see `gradflow list`)")
    quick(p)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (a Python literal, e.g. seeds=8, lr=0.5, depths=(10,20)); "
        "repeatable",
    )
    workdir(p)
    p.add_argument(
        "--fresh", action="store_true", help="discard this experiment's saved results first"
    )
    _add_distributed(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "plot",
        help="figures and tables of one experiment from its saved results",
        description="Make an experiment's figures and tables from its saved results only "
        "(run `gradflow run NAME` first).",
    )
    p.add_argument("name", metavar="NAME", help="experiment name (see `gradflow list`)")
    quick(p)
    workdir(p)
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser(
        "reproduce",
        help="every experiment (run, figures, tables), then the paper PDF",
        description="Run every experiment in registry order (run, figures, tables; saved sweeps "
        "resume), print a runtime summary (also in DIR/results/runtimes.json), then build "
        "DIR/paper/gradflow.pdf with latexmk when DIR/paper/gradflow.tex exists.",
    )
    quick(p)
    workdir(p)
    p.add_argument("--only", nargs="+", metavar="NAME", help="only these experiments")
    p.add_argument("--fresh", action="store_true", help="discard saved results first")
    p.add_argument("--no-paper", action="store_true", help="do not build the paper PDF")
    _add_distributed(p)
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser(
        "paper",
        help="build paper/gradflow.pdf (latexmk)",
        description="Build DIR/paper/gradflow.pdf from DIR/paper/gradflow.tex with "
        f"`latexmk {' '.join(_LATEXMK_ARGS)}` (figures and tables must exist: `gradflow "
        "reproduce` makes them).",
    )
    workdir(p)
    p.set_defaults(func=_cmd_paper)

    from gradflow import probes

    p = sub.add_parser(
        "diagnose",
        help="probe an MLP, or your own model, on digits: per-layer gradient table and figure",
        description="Build gradflow.models.MLP(widths=(WIDTH,)*(DEPTH-1), out=10) from the flags "
        "(or take your model from --model PACKAGE.MODULE:FACTORY), probe one forward/backward "
        "pass on N scikit-learn digits (gradflow.probes.probe), print the per-layer table with a "
        "verdict per layer (vanishing / healthy / exploding) and save the figure (PDF + PNG). "
        "Activations and initializers take parameters as NAME(param=value), e.g. --activation "
        "'leaky_relu(negative_slope=0.2)' --init 'scaled_normal(scale=2.0)'.",
    )
    p.add_argument(
        "--activation",
        default="sigmoid",
        metavar="NAME",
        help="a gradflow.activations name (default: sigmoid)",
    )
    p.add_argument(
        "--depth",
        type=int,
        default=20,
        help="number of Dense layers, the readout included: DEPTH-1 hidden layers (default: 20)",
    )
    p.add_argument("--width", type=int, default=30, help="hidden width (default: 30)")
    p.add_argument(
        "--init",
        default="normal",
        metavar="NAME",
        help="kernel initializer, a gradflow.initializers name (default: normal, i.e. N(0, 1))",
    )
    p.add_argument(
        "--bias-init",
        default="normal",
        metavar="NAME",
        help="bias initializer (default: normal)",
    )
    p.add_argument(
        "--norm",
        default="none",
        choices=("none", "batch", "layer"),
        help="normalisation before each activation (default: none; batch uses batch statistics)",
    )
    p.add_argument("--residual", action="store_true", help="identity skips around hidden blocks")
    p.add_argument(
        "--loss",
        default=None,
        choices=probes.LOSSES,
        help="loss (default: sigmoid_cross_entropy, Nielsen's cross-entropy on sigmoid outputs, "
        "for the MLP; softmax_cross_entropy for --model)",
    )
    p.add_argument(
        "--model",
        metavar="PACKAGE.MODULE:FACTORY",
        help="diagnose your own model instead of the MLP: FACTORY (called with a PRNG key if it "
        "takes an argument) returns (model, variables) for a Flax linen module, (module, None) "
        "for an NNX or Equinox module, (apply_fn, params) for a plain function, or any of these "
        "followed by a batch x, y; without a batch it gets the digits reshaped to --input-shape. "
        "The module must be importable (installed, or on PYTHONPATH)",
    )
    p.add_argument(
        "--input-shape",
        type=_shape,
        default=(64,),
        metavar="D1,D2,...",
        help="--model: the shape of one input, e.g. 8,8,1 for a CNN (default: 64)",
    )
    p.add_argument(
        "--train",
        action="store_true",
        help="--model: training-mode behaviour (BatchNorm batch statistics, dropout off)",
    )
    p.add_argument(
        "--n", type=int, default=1000, help="number of digits in the batch (default: 1000)"
    )
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default: 0)")
    p.add_argument(
        "--draws",
        type=int,
        default=1,
        help="initialisations (seeds SEED, SEED+1, ...); the table shows the median (default: 1)",
    )
    p.add_argument(
        "--out",
        metavar="PATH",
        help="figure path stem, written as PATH.pdf and PATH.png (default: "
        "diagnose_ACTIVATION_INIT_depthD_widthW in the current directory)",
    )
    p.set_defaults(func=_cmd_diagnose)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradflow`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except CLIError as e:
        _error(e.message)
        return e.code
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    try:
        return int(args.func(args))
    except CLIError as e:
        _error(e.message)
        return e.code
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:  # e.g. `gradflow diagnose | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
