r"""Running registered experiments: the steps, their records and timings, starting JAX.

What the ``gradflow`` command (:mod:`gradflow.cli`) does once it has parsed what you typed:
:func:`run_steps` runs an experiment's run, plot and tables steps (from the registry,
:mod:`gradflow.experiment`) into an :class:`Outcome`; :func:`write_record` leaves
``gradflow_run.json`` beside the results (the config a completed run used, so a rerun with
another config refuses to mix results: :func:`check_record`); :func:`record_runtime` merges the
wall times into ``results/runtimes.json``; :func:`start_jax` applies the compile mode and the CPU
device count and starts the distributed runtime (several hosts); :func:`lead_check` runs a check
on process 0 and stops every process together when it fails. ``gradflow reproduce`` is
:func:`choose`, :func:`prepare`, :func:`reproduce_one` per experiment and :func:`finish`.

Every user-facing failure is a :class:`UserError`: a one-line message and an exit status (2:
what you typed, 1: a failed step), which the command prints as ``gradflow: error: ...``.
"""

from __future__ import annotations

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import gradflow
from gradflow import _io
from gradflow import experiment as _experiment

__all__ = [
    "FAST_COMPILE_FLAG",
    "LATEX_HELP",
    "PAPER_TEX",
    "RUNTIMES",
    "RUN_RECORD",
    "Launch",
    "Outcome",
    "UserError",
    "apply_compile_mode",
    "build_paper",
    "check_not_in_use",
    "check_record",
    "check_workdir",
    "choose",
    "finish",
    "has_results",
    "incomplete",
    "lead_check",
    "load_experiment",
    "prepare",
    "record_runtime",
    "reproduce_one",
    "run_steps",
    "start_jax",
    "write_record",
]

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
LATEXMK_ARGS = ("-norc", "-pdf", "-interaction=nonstopmode", "-halt-on-error")

#: XLA flag of ``--compile fast``: XLA's CPU backend at optimisation level 1 (default 2). Measured
#: on 2 CPU cores: two depth-20 training programs compile in 3.6 s instead of 7.6 s and run as
#: fast (0.11 vs 0.15 s); `gradflow run remedies --quick` 35-37 s instead of 50-52 s (level 0:
#: compile 2.6 s, but runs 2.4x slower, 50-53 s in all).
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=1"

Json = _io.Json


# ------------------------------------------------------------------------------------ errors


class UserError(Exception):
    """An error for the user: printed as one ``gradflow: error: ...`` line, exit ``code``
    (2: what was typed; 1: a step failed)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.message = message
        self.code = code


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


@contextlib.contextmanager
def user_input(prefix: str = "") -> Iterator[None]:
    """Turn a ValueError/TypeError of gradflow's validators into a :class:`UserError` (exit 2)."""
    try:
        yield
    except (ValueError, TypeError) as e:
        raise UserError(f"{prefix}{e}", 2) from None


def rel(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _jsonable(obj: object) -> Json:
    """``obj`` as JSON would read it back (tuples become lists; a typed config its dict)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_experiment.jsonable))


def headless() -> None:
    """Headless plotting: the command only writes files."""
    import matplotlib

    matplotlib.use("Agg")


def _paths(items: Iterable[str | os.PathLike] | None) -> list[Path]:
    return [Path(p) for p in (items or ())]


# ------------------------------------------------------------------------------------ processes


def lead_check(check: Callable[[], None]) -> None:
    """Run ``check`` on process 0 and share its verdict, so that every process stops together
    (a process that went on alone would wait forever in the sweep's collectives)."""
    import jax

    error: UserError | None = None
    if _io.is_writer():
        try:
            check()
        except UserError as e:
            error = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if error is None and int(failed):
            error = UserError("process 0 stopped (see its output)", 2)
    if error is not None:
        raise error


def devices() -> str:
    """The devices the sweeps shard over, e.g. ``"4 x cpu (2 process(es))"``."""
    import jax

    devs = jax.devices()
    kinds = sorted({d.platform for d in devs})
    return f"{len(devs)} x {'/'.join(kinds)} ({jax.process_count()} process(es))"


@dataclasses.dataclass(frozen=True)
class Launch:
    """How to start JAX: ``--compile``, ``--cpu-devices`` and the distributed runtime's
    ``--distributed`` / ``--coordinator`` / ``--num-processes`` / ``--process-id``."""

    compile: str = "auto"  # "auto" | "fast" | "optimized"
    quick: bool = False  # "auto" compiles fast for the quick configs
    cpu_devices: int | str | None = None
    distributed: bool = False
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def compile_mode(self) -> str:
        """``"fast"`` or ``"optimized"`` (``"auto"``: fast with the quick configs)."""
        if self.compile == "auto":
            return "fast" if self.quick else "optimized"
        return self.compile


def apply_compile_mode(launch: Launch) -> None:
    """``--compile fast``: add :data:`FAST_COMPILE_FLAG` to ``XLA_FLAGS`` (unless the user set an
    optimisation level there), before JAX starts its backends; XLA reads the flags once, so once
    they run it has no effect (an explicit ``--compile fast`` then warns)."""
    if launch.compile_mode != "fast":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_backend_optimization_level" in flags:
        return  # the user's own choice wins
    from gradflow import _jax_compat

    if _jax_compat.backends_are_initialized():  # e.g. main() called again in one process
        if launch.compile == "auto":
            return  # best effort: only an explicit --compile fast is worth a warning
        print(
            "gradflow: warning: JAX's backend already started; --compile fast has no effect",
            file=sys.stderr,
        )
        return
    os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE_FLAG}".strip()


def _set_cpu_devices(n: int | str | None) -> None:
    if n is None:
        return
    from gradflow import sweep

    try:
        sweep.cpu_devices(n)
    except ValueError:
        raise UserError(f"--cpu-devices must be an int >= 1 or 'auto', got {n!r}") from None
    except RuntimeError as e:
        raise UserError(f"--cpu-devices: {e}", 2) from None


def _start_distributed(launch: Launch) -> None:
    explicit = (launch.coordinator, launch.num_processes, launch.process_id)
    if not (launch.distributed or any(v is not None for v in explicit)):
        return
    if any(v is not None for v in explicit) and not all(v is not None for v in explicit):
        raise UserError(
            "--coordinator, --num-processes and --process-id go together (or use "
            "--distributed alone to read them from the cluster environment)"
        )
    if launch.num_processes is not None and not 0 <= launch.process_id < launch.num_processes:
        raise UserError(
            f"--process-id must be in 0..{launch.num_processes - 1}, got {launch.process_id}"
        )
    import jax

    try:
        jax.distributed.initialize(
            coordinator_address=launch.coordinator,
            num_processes=launch.num_processes,
            process_id=launch.process_id,
        )
    except (RuntimeError, ValueError) as e:
        raise UserError(f"jax.distributed.initialize failed: {e}", 1) from None


def start_jax(launch: Launch) -> None:
    """Apply the compile mode and the CPU device count and start the distributed runtime, before
    any JAX computation."""
    apply_compile_mode(launch)
    _set_cpu_devices(launch.cpu_devices)
    _start_distributed(launch)


# ------------------------------------------------------------------------------------ checks


def load_experiment(name: str) -> _experiment.Experiment:
    """The registered experiment ``name``; an unknown name is a usage error (exit 2)."""
    known = _experiment.names()
    if name not in known:
        raise UserError(
            f"unknown experiment {name!r}; valid names: {', '.join(known) or '(none registered)'}"
        )
    try:
        return _experiment.get(name)
    except Exception as e:  # a broken plug-in: say which and why, exit 1
        if not isinstance(e, ModuleNotFoundError):  # a missing module needs no traceback
            traceback.print_exc()
        raise UserError(
            f"could not load experiment {name!r} ({type(e).__name__}: {one_line(e)})", 1
        ) from None


def has_results(results: Path) -> bool:
    """Whether ``results`` holds anything (a run to resume, or to plot)."""
    return results.is_dir() and any(results.iterdir())


def check_record(results: Path, name: str, mode: str, config: Mapping, *, fresh: bool) -> None:
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
        raise UserError(
            f"{rel(results)} holds results of {name} ({mode}) made with another config "
            f"({diff}); add --fresh to discard them, or use another --workdir"
        )


def check_workdir(root: Path) -> None:
    """``--workdir`` must be a directory gradflow can write (created if missing)."""
    import tempfile

    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as e:
        raise UserError(f"--workdir {root}: cannot write there ({e.strerror or e})", 2) from None


def _stores(results: Path) -> list[Path]:
    """The sweep stores (directories holding a metadata.json) below ``results``."""
    return sorted(p.parent for p in results.rglob("metadata.json")) if results.is_dir() else []


def check_not_in_use(results: Path) -> None:
    """Refuse to delete results another process is writing (``--fresh``)."""
    from gradflow import sweep

    for store in _stores(results):
        holder = sweep.in_use(store)
        if holder is not None:
            raise UserError(
                f"{rel(store)} is in use by {holder}; --fresh would delete results that run is "
                "writing: wait for it to finish, or use another --workdir",
                1,
            )


def incomplete(results: Path) -> str | None:
    """Why the results in ``results`` are not complete (an interrupted run), or None."""
    from gradflow import sweep

    done = total = 0
    unfinished = False
    for store in _stores(results):
        try:
            meta = sweep.load_metadata(store)
        except (OSError, ValueError) as e:
            return f"a results store is damaged ({one_line(e)})"
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


# ------------------------------------------------------------------------------------ steps


@dataclasses.dataclass
class Outcome:
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


def _failure(step: str, name: str, e: BaseException) -> str:
    msg = f"experiment {name!r} failed in its {step} step ({type(e).__name__}: "
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    msg += f"{first})"
    if "holds a different sweep" in str(e):
        msg += "; add --fresh to discard the old results"
    return msg


def _step(out: Outcome, step: str, call: Callable[[], object]) -> object:
    """Run one step, timed into ``out.seconds[step]``; a failure goes into ``out.error`` (with
    its traceback printed) and returns None."""
    t0 = time.perf_counter()
    try:
        result = call()
    except Exception as e:
        traceback.print_exc()
        out.error = _failure(step, out.name, e)
        return None
    out.seconds[step] = time.perf_counter() - t0
    return result


def run_steps(
    exp: _experiment.Experiment,
    config: Mapping | None,
    lay: _experiment.Layout,
    *,
    run: bool,
    write: bool,
) -> Outcome:
    """Run ``exp``'s run step (``run``), then, on the writing process, plot and tables."""
    out = Outcome(exp.name)
    if run:
        out.resumed = has_results(lay.results)
        lay.results.mkdir(parents=True, exist_ok=True)
        _step(out, "run", lambda: exp.run(config, lay.results))
        if out.error:
            return out
    if not write:
        return out
    headless()
    figures = _step(out, "plot", lambda: _paths(exp.plot(lay.results, lay.figures)))
    if out.error:
        return out
    out.figures = figures
    tables = exp.tables
    made = _step(out, "tables", lambda: _paths(tables and tables(lay.results, lay.tables)))
    if not out.error:
        out.tables = made
    return out


# ------------------------------------------------------------------------------------ records


def write_record(
    lay: _experiment.Layout, mode: str, config: Mapping, overrides: Mapping, out: Outcome
) -> Path:
    """Leave ``gradflow_run.json`` in the results: the config and overrides a completed run
    used, the version, precision, time and step timings."""
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
    return _experiment.write_atomic(lay.results / RUN_RECORD, json.dumps(record, indent=2) + "\n")


def process_seconds(t0: float) -> float:
    """Seconds since this process started (Linux ``/proc``: interpreter start-up and imports
    included, as ``time gradflow ...`` would count); elsewhere since ``t0`` (``perf_counter``)."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2 :].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.perf_counter() - t0


def machine() -> dict[str, int | list[float] | None]:
    """CPU count and load average: what a wall time means depends on both."""
    info: dict[str, int | list[float] | None] = {"cpus": os.cpu_count()}
    with contextlib.suppress(OSError, AttributeError):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, AttributeError):
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _read_runtimes(path: Path, *, warn: bool) -> dict[str, Json]:
    """``runtimes.json`` as a dict; empty when missing (or not valid JSON: a warning if asked)."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        if warn:
            print(
                f"gradflow: warning: {rel(path)} was not valid JSON; rewriting it", file=sys.stderr
            )
        return {}


def _write_runtimes(path: Path, data: Mapping[str, Json]) -> Path:
    return _experiment.write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def record_command(root: Path, mode: str, record: Mapping[str, Json]) -> Path:
    """Store the whole ``gradflow reproduce`` run (wall time with the paper build, machine) under
    ``"reproduce"`` in ``root/results/runtimes.json`` (atomically)."""
    path = root / RUNTIMES
    data = _read_runtimes(path, warn=False)
    data.setdefault("reproduce", {})[mode] = dict(record)
    return _write_runtimes(path, data)


def record_runtime(root: Path, mode: str, out: Outcome) -> Path:
    """Merge ``out``'s timings into ``root/results/runtimes.json`` (atomically). A resumed run
    does not replace a from-scratch timing."""
    path = root / RUNTIMES
    data = _read_runtimes(path, warn=True)
    entries = data.setdefault(mode, {})
    old = entries.get(out.name)
    if not (out.resumed and old is not None and not old.get("resumed", False)):
        entries[out.name] = {
            "seconds": round(out.total, 2),
            **{f"{k}_s": round(v, 2) for k, v in out.seconds.items()},
            "resumed": out.resumed,
            "finished": _io.timestamp(),
            "devices": devices(),
            "matmul_precision": gradflow.config.matmul_precision(),
            "gradflow": gradflow.__version__,
        }
    data[mode] = dict(sorted(entries.items()))
    return _write_runtimes(path, data)


# ------------------------------------------------------------------------------------ the paper


def build_paper(root: Path, *, required: bool) -> str:
    """Build ``root/paper/gradflow.pdf`` with latexmk; returns ``"built"``, ``"skipped"`` or
    ``"failed"``. Without the source or latexmk: an error when ``required``, else a note."""
    tex = root / PAPER_TEX
    if not tex.exists():
        msg = f"no paper source {rel(tex)}"
        if required:
            raise UserError(f"{msg}; run in the gradflow checkout or pass --workdir", 1)
        print(f"paper: {msg}; skipped")
        return "skipped"
    latexmk = shutil.which("latexmk")
    if latexmk is None:
        if required:
            raise UserError(f"latexmk not found on PATH: {LATEX_HELP}", 1)
        print(f"paper: not built, latexmk not found on PATH; to build it, {LATEX_HELP}")
        return "skipped"
    return _latexmk(latexmk, tex)


def _latexmk(latexmk: str, tex: Path) -> str:
    print(f"paper: {' '.join(['latexmk', *LATEXMK_ARGS, tex.name])} (in {rel(tex.parent)})")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [latexmk, *LATEXMK_ARGS, tex.name],
        cwd=tex.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    pdf = tex.with_suffix(".pdf")
    if proc.returncode != 0 or not pdf.exists():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        print(tail, file=sys.stderr)
        message = (
            f"latexmk failed with status {proc.returncode} after {seconds:.1f} s; see "
            f"{rel(tex.with_suffix('.log'))}"
        )
        print(f"gradflow: error: {one_line(message)}", file=sys.stderr)
        return "failed"
    print(f"paper: {rel(pdf)} ({seconds:.1f} s)")
    return "built"


# ------------------------------------------------------------------------------------ reproduce


def choose(only: Sequence[str] | None) -> list[str]:
    """The experiments ``gradflow reproduce`` runs: ``only`` (every registered one when empty),
    in registry order whatever the order of ``only``; an unknown name is a usage error."""
    known = _experiment.names()
    chosen = list(dict.fromkeys(only)) if only else list(known)
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise UserError(
            f"unknown experiment(s) {', '.join(map(repr, unknown))} in --only; valid names: "
            f"{', '.join(known) or '(none registered)'}"
        )
    return [n for n in known if n in chosen]


def prepare(root: Path, mode: str, names: Sequence[str], *, fresh: bool) -> None:
    """Before ``reproduce`` runs anything (every process together): a writable ``root``, and with
    ``fresh`` the old results of ``names`` deleted (refused while another run writes them)."""

    def check() -> None:
        check_workdir(root)
        if fresh:
            for n in names:
                check_not_in_use(_experiment.layout(n, mode, root).results)
            for n in names:
                shutil.rmtree(_experiment.layout(n, mode, root).results, ignore_errors=True)

    lead_check(check)


def reproduce_one(name: str, mode: str, root: Path) -> tuple[Outcome, Mapping | None]:
    """One experiment of ``reproduce`` with its default config: (its outcome, the config). A
    broken plug-in or a stale results directory fails this experiment only (``Outcome.error``)."""
    lay = _experiment.layout(name, mode, root)
    try:
        exp = load_experiment(name)
        with user_input(f"experiment {name!r}: "):
            config = exp.config(mode)
        lead_check(functools.partial(check_record, lay.results, name, mode, config, fresh=False))
    except UserError as e:
        return Outcome(name, error=e.message), None
    return run_steps(exp, config, lay, run=True, write=_io.is_writer()), config


def finish(
    root: Path,
    mode: str,
    outcomes: Sequence[Outcome],
    *,
    chosen: Sequence[str],
    paper: bool,
    launch: Launch,
    t0: float,
    machine_at_start: Mapping[str, Json],
) -> tuple[str, float | None]:
    """After every experiment of ``reproduce`` (process 0): the experiments index, the paper's
    generated inputs and the PDF, and, for a from-scratch run of every experiment, the whole
    command's record. Returns (the paper's status, the wall time when recorded)."""
    in_checkout = (root / "experiments" / "__init__.py").is_file()
    if in_checkout:
        print(f"experiments index: {rel(_experiment.write_index(root))}")
    if (root / PAPER_TEX).exists():  # runtime and benchmark tables, build record for the paper
        from gradflow import paper as _paper

        _paper.generate(root, mode=mode)
    if any(o.error for o in outcomes):
        return "not built", None
    status = build_paper(root, required=False) if paper else "not requested"
    complete = set(chosen) == set(_experiment.names()) and not any(o.resumed for o in outcomes)
    if not complete:
        return status, None
    wall = process_seconds(t0)  # a from-scratch run of every experiment: what budgets are about
    record_command(root, mode, {
        "seconds": round(wall, 1),
        "experiments_s": round(sum(o.total for o in outcomes), 1),
        "paper": status,
        "compile": launch.compile_mode,
        "machine_at_start": dict(machine_at_start),
        "devices": devices(),
        "matmul_precision": gradflow.config.matmul_precision(),
        "finished": _io.timestamp(),
        "gradflow": gradflow.__version__,
    })  # fmt: skip
    if in_checkout:
        _experiment.write_index(root)
    return status, wall
