r"""Checks and generated inputs for the paper (``paper/gradflow.tex``).

Two jobs, both pure Python (no LaTeX needed to import or test this module):

* :func:`check_log` reads the log LaTeX leaves beside the PDF (``paper/gradflow.log``) and reports
  what a reader would see as a broken paper: LaTeX errors, undefined references and citations,
  multiply-defined labels, a build that needs another run, missing glyphs, and boxes that stick out
  of the text block (``Overfull \hbox``/``\vbox`` beyond a tolerance, floats too large for the
  page). CI fails on any of them::

      python -m gradflow.paper check paper/gradflow.log            # exit 1 on a problem
      python -m gradflow.paper check paper/gradflow.log --tolerance 0.5

* :func:`runtimes_table` turns ``results/runtimes.json`` (written by ``gradflow run`` and
  ``gradflow reproduce``, see :mod:`gradflow.runner`) into ``paper/tables/runtimes.tex`` and its
  number macros, so the paper's wall-time figures are generated, never typed::

      python -m gradflow.paper generate --root . --mode quick

The paper includes these generated files under ``\IfFileExists`` guards, so it builds before they
exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from gradflow import experiment as _experiment

__all__ = [
    "LogReport",
    "Overfull",
    "benchmarks_table",
    "build_macros",
    "check_log",
    "check_tables",
    "generate",
    "main",
    "parse_log",
    "runtimes_table",
]

#: TeX wraps log lines at this many characters (``max_print_line`` of TeX Live's texmf.cnf).
MAX_PRINT_LINE = 79

_ERROR = re.compile(
    r"^(?:! (?P<bang>.+)|(?:\S*/)?[^\s:/]+\.(?:tex|sty|cls|bbl|aux|def|cfg|clo):\d+: (?P<fle>.+))$"
)
_FATAL = re.compile(r"^==> Fatal error occurred.*$")
_UNDEF_REF = re.compile(r"LaTeX Warning: Reference `(?P<key>[^']*)' on page \S+ undefined")
_UNDEF_CITE = re.compile(
    r"(?:LaTeX|Package natbib) Warning: Citation `(?P<key>[^']*)' on page \S+ undefined"
)
_UNDEF_REF_SUMMARY = re.compile(r"LaTeX Warning: There were undefined references")
_UNDEF_CITE_SUMMARY = re.compile(
    r"(?:LaTeX|Package natbib) Warning: There were undefined citations"
)
_MULTI = re.compile(r"LaTeX Warning: Label `(?P<key>[^']*)' multiply defined")
_MULTI_SUMMARY = re.compile(r"LaTeX Warning: There were multiply-defined labels")
_RERUN = re.compile(
    r"(?:Rerun to get (?:cross-references|citations|outlines) right"
    r"|Citation\(s\) may have changed"
    r"|Label\(s\) may have changed)"
)
_OVERFULL = re.compile(
    r"^Overfull \\(?P<kind>[hv])box \((?P<pt>-?\d+(?:\.\d+)?)pt too (?:wide|high)\)"
    r"\s*(?P<where>.*)$"
)
_FLOAT = re.compile(
    r"LaTeX Warning: Float too large for page by (?P<pt>-?\d+(?:\.\d+)?)pt"
    r"(?: on input line (?P<line>\d+))?"
)
_MISSING_CHAR = re.compile(r"^Missing character: (?P<what>.+)$")


@dataclasses.dataclass(frozen=True)
class Overfull:
    """One box that sticks out: ``kind`` is ``"hbox"`` (too wide), ``"vbox"`` (too high) or
    ``"float"`` (a float taller than the page); ``pt`` by how much; ``where`` LaTeX's location
    (``"in paragraph at lines 5--7"``, ``"on input line 8"``)."""

    kind: str
    pt: float
    where: str

    def __str__(self) -> str:
        if self.kind == "float":
            return f"float too large for the page by {self.pt:g}pt {self.where}".rstrip()
        what = "too wide" if self.kind == "hbox" else "too high"
        return f"overfull \\{self.kind} ({self.pt:g}pt {what}) {self.where}".rstrip()


@dataclasses.dataclass(frozen=True)
class LogReport:
    """What :func:`parse_log` found in a LaTeX log.

    Attributes:
      errors: error messages (``! ...`` lines, ``file:line: ...`` with ``-file-line-error``).
      undefined_references, undefined_citations: keys LaTeX could not resolve, in order of first
        appearance; ``"?"`` stands for LaTeX's summary line when no key was named.
      multiply_defined: labels defined more than once.
      rerun: LaTeX asked for another run (cross-references or citations not yet stable).
      missing_characters: glyphs the fonts lack (dropped silently from the PDF).
      overfull: every overfull box and oversized float, whatever its size.
    """

    errors: tuple[str, ...] = ()
    undefined_references: tuple[str, ...] = ()
    undefined_citations: tuple[str, ...] = ()
    multiply_defined: tuple[str, ...] = ()
    rerun: bool = False
    missing_characters: tuple[str, ...] = ()
    overfull: tuple[Overfull, ...] = ()

    def problems(self, tolerance_pt: float = 1.0) -> list[str]:
        """Every problem as one line; overfull boxes count only beyond ``tolerance_pt`` points
        (floats too large for the page always count)."""
        if not tolerance_pt >= 0:
            raise ValueError(f"tolerance_pt must be >= 0, got {tolerance_pt!r}")
        out = [f"LaTeX error: {e}" for e in self.errors]
        out += [f"undefined reference: {k}" for k in self.undefined_references]
        out += [f"undefined citation: {k}" for k in self.undefined_citations]
        out += [f"multiply-defined label: {k}" for k in self.multiply_defined]
        if self.rerun:
            out.append("LaTeX asks for another run: cross-references or citations not final")
        out += [f"missing character: {c}" for c in self.missing_characters]
        out += [
            str(b) for b in self.overfull if b.kind == "float" or b.pt > tolerance_pt
        ]  # fmt: skip
        return out

    def ok(self, tolerance_pt: float = 1.0) -> bool:
        """No problem (see :meth:`problems`)."""
        return not self.problems(tolerance_pt)


def _unwrap(text: str, width: int = MAX_PRINT_LINE) -> list[str]:
    """Log lines with TeX's hard wrapping undone: a line of exactly ``width`` characters
    continues on the next one."""
    out: list[str] = []
    carry = ""
    for line in text.splitlines():
        if len(line) == width:
            carry += line
            continue
        out.append(carry + line)
        carry = ""
    if carry:
        out.append(carry)
    return out


def _dedup(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def parse_log(text: str, *, width: int = MAX_PRINT_LINE) -> LogReport:
    """Parse the text of a LaTeX log (pdfTeX/XeTeX/LuaTeX, with or without
    ``-file-line-error``) into a :class:`LogReport`.

    Args:
      text: the log's contents.
      width: TeX's ``max_print_line`` (lines of exactly this length are joined with the next).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (the log's contents), got {type(text).__name__}")
    errors, refs, cites, multi, chars = [], [], [], [], []
    boxes: list[Overfull] = []
    rerun = False
    ref_summary = cite_summary = multi_summary = False
    for line in _unwrap(text, width):
        if m := _ERROR.match(line):
            errors.append((m["bang"] or m["fle"]).strip())
        elif _FATAL.match(line):
            errors.append(line.strip("=> ").strip())
        if m := _UNDEF_REF.search(line):
            refs.append(m["key"])
        ref_summary |= bool(_UNDEF_REF_SUMMARY.search(line))
        if m := _UNDEF_CITE.search(line):
            cites.append(m["key"])
        cite_summary |= bool(_UNDEF_CITE_SUMMARY.search(line))
        if m := _MULTI.search(line):
            multi.append(m["key"])
        multi_summary |= bool(_MULTI_SUMMARY.search(line))
        rerun |= bool(_RERUN.search(line))
        if m := _OVERFULL.match(line):
            boxes.append(Overfull(f"{m['kind']}box", float(m["pt"]), m["where"].strip()))
        if m := _FLOAT.search(line):
            where = f"on input line {m['line']}" if m["line"] else ""
            boxes.append(Overfull("float", float(m["pt"]), where))
        if m := _MISSING_CHAR.match(line):
            chars.append(m["what"].strip())
    if ref_summary and not refs:
        refs.append("?")
    if cite_summary and not cites:
        cites.append("?")
    if multi_summary and not multi:
        multi.append("?")
    return LogReport(
        errors=tuple(errors),
        undefined_references=_dedup(refs),
        undefined_citations=_dedup(cites),
        multiply_defined=_dedup(multi),
        rerun=rerun,
        missing_characters=_dedup(chars),
        overfull=tuple(boxes),
    )


def check_log(path: str | os.PathLike, *, width: int = MAX_PRINT_LINE) -> LogReport:
    """:func:`parse_log` of the log file at ``path`` (read as UTF-8, undecodable bytes replaced).

    Raises:
      FileNotFoundError: no log at ``path`` (the paper was not built).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no LaTeX log at {path}: build the paper first (`gradflow paper` or "
            "`gradflow reproduce`)"
        )
    return parse_log(path.read_text(encoding="utf-8", errors="replace"), width=width)


_SCI = re.compile(r"(?<![\w\\])[-+]?\d+(?:\.\d+)?[eE][-+]?\d+\b")
_TEXT_MINUS = re.compile(r"^-\s*\d")
_NONFINITE = re.compile(r"^(?:nan|-?inf|NaN|-?Inf)$")


def _outside_math(cell: str) -> str:
    return re.sub(r"\$[^$]*\$", " ", cell)


def check_tables(tables_dir: str | os.PathLike) -> list[str]:
    r"""Formatting slips in the generated ``*.tex`` files of ``tables_dir``, one line each: Python
    scientific notation (``2.8e+02``: LaTeX prints it literally), a negative number in text mode
    (``-0.567`` prints a hyphen, not a minus sign: wrap it in ``$...$``; not checked in
    ``*_macros.tex``, whose values may be used in math), and ``nan``/``inf`` cells. Math
    (``$...$``) is left alone. Returns ``[]`` when there is nothing to report.
    """
    out = []
    for path in sorted(Path(tables_dir).glob("*.tex")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.lstrip().startswith("%"):
                continue
            if path.name.endswith("_macros.tex"):
                m = re.fullmatch(r"\\newcommand\{\\(\w+)\}\{(.*)\}", line.strip())
                cells = [m.group(2)] if m else []
            elif line.rstrip().endswith("\\\\"):
                cells = line.rstrip()[:-2].split("&")
            else:
                continue
            for cell in cells:
                text = _outside_math(cell).strip()
                where = f"{path.name}:{n}"
                if _SCI.search(text):
                    out.append(f"{where}: scientific notation in text: {cell.strip()!r}")
                elif _TEXT_MINUS.match(text) and not path.name.endswith("_macros.tex"):
                    out.append(f"{where}: text-mode minus (a hyphen): {cell.strip()!r}")
                elif _NONFINITE.match(text):
                    out.append(f"{where}: non-finite value: {cell.strip()!r}")
    return out


# --- generated inputs ---------------------------------------------------------------------------

_MODES = ("quick", "full")


def _camel(name: str) -> str:
    return "".join(p.capitalize() for p in re.split(r"[^A-Za-z]+", name) if p)


def runtimes_table(
    runtimes_json: str | os.PathLike,
    tables_dir: str | os.PathLike,
    *,
    experiments: Sequence[str] | None = None,
) -> list[Path]:
    r"""Write ``runtimes.tex`` (a booktabs tabular: wall seconds per experiment, quick and full)
    and ``runtimes_macros.tex`` into ``tables_dir`` from ``results/runtimes.json``.

    Macros: ``\runtimesQuickTotal`` / ``\runtimesFullTotal`` (seconds, sum over the experiments
    timed in that mode), ``\runtimesQuickCount`` / ``\runtimesFullCount`` (how many),
    ``\runtimesQuickCommand`` / ``\runtimesFullCommand`` (wall seconds of the whole from-scratch
    ``gradflow reproduce`` run, paper build included, when recorded; ``...CommandCpus``: its
    CPUs), and
    ``\runtimes<Mode><Experiment>`` per experiment (e.g. ``\runtimesFullLayerSpeed``). A mode
    with no timings gets no macros; a missing cell is ``--``.

    Args:
      runtimes_json: the file :mod:`gradflow.runner` writes (``{"quick"|"full": {name: {"seconds":
        ...}}}``).
      tables_dir: where to write (``paper/tables``).
      experiments: row order (default: :func:`gradflow.experiment.names`, then any others).

    Raises:
      FileNotFoundError: no ``runtimes_json``.
      ValueError: the file is not in that format.
    """
    path = Path(runtimes_json)
    if not path.is_file():
        raise FileNotFoundError(f"no runtimes file at {path}: run `gradflow reproduce` first")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not set(data) <= {*_MODES, "reproduce"}:
        raise ValueError(
            f"{path}: expected an object with keys among {(*_MODES, 'reproduce')}, got "
            f"{sorted(data) if isinstance(data, dict) else type(data).__name__}"
        )
    data = dict(data)
    commands = data.pop("reproduce", {})
    seconds: dict[str, dict[str, float]] = {m: {} for m in _MODES}
    for mode, entries in data.items():
        if not isinstance(entries, dict):
            raise ValueError(f"{path}: {mode!r} must map experiment names to timings")
        for name, entry in entries.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("seconds"), (int, float)):
                raise ValueError(f"{path}: {mode}.{name} lacks a numeric 'seconds' entry")
            seconds[mode][name] = float(entry["seconds"])
    known = list(experiments) if experiments is not None else list(_experiment.names())
    timed = {n for m in _MODES for n in seconds[m]}
    order = [n for n in known if n in timed] + sorted(timed - set(known))
    modes = [m for m in _MODES if seconds[m]]
    rows = [[n.replace("_", " "), *(seconds[m].get(n, "--") for m in modes)] for n in order]
    if modes:
        rows.append(["total", *(sum(seconds[m].values()) for m in modes)])
    tables_dir = Path(tables_dir)
    table = _experiment.latex_table(
        rows, ["experiment", *(f"{m} (s)" for m in modes)], tables_dir / "runtimes.tex"
    )
    if modes and table.is_file():  # a rule above the total (only process 0 writes)
        text = table.read_text()
        i = text.rindex("\ntotal &")
        _experiment.write_atomic(table, text[:i] + "\n\\midrule" + text[i:])
    out = [table]
    macros: dict[str, float | int] = {}
    for m in modes:
        macros[f"runtimes{m.capitalize()}Total"] = sum(seconds[m].values())
        macros[f"runtimes{m.capitalize()}Count"] = len(seconds[m])
        for n, s in seconds[m].items():
            macros[f"runtimes{m.capitalize()}{_camel(n)}"] = s
    for m, rec in commands.items() if isinstance(commands, dict) else ():
        if m in _MODES and isinstance(rec, dict) and isinstance(rec.get("seconds"), (int, float)):
            macros[f"runtimes{m.capitalize()}Command"] = float(rec["seconds"])
            machine = rec.get("machine_at_start", {})
            cpus = machine.get("cpus_usable") or machine.get("cpus")
            macros[f"runtimes{m.capitalize()}CommandCpus"] = cpus if isinstance(cpus, int) else 0
    out.append(_experiment.write_macros(tables_dir / "runtimes_macros.tex", macros))
    return out


_WORDS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")


def _macro_key(key: str) -> str:
    """``"w1"`` -> ``"WorkloadOne"``; other keys camel-cased, digits spelled out."""
    m = re.fullmatch(r"w(\d+)", key)
    if m:
        return "Workload" + "".join(_WORDS[int(d)] for d in m.group(1))
    return "".join(_WORDS[int(c)] if c.isdigit() else c for c in _camel(key))


def benchmarks_table(results_json: str | os.PathLike, tables_dir: str | os.PathLike) -> list[Path]:
    r"""Write ``benchmarks.tex`` and ``benchmarks_macros.tex`` into ``tables_dir`` from the
    ``results.json`` that ``python -m benchmarks.run`` (``make bench``) writes.

    The file names its headline ways (``"ways"``: method, label, role; benchmarks.report writes
    them): gradflow's default way (role ``"gradflow"``) and the peers it is measured against
    (role ``"peer"``: the naive JAX loop, torch.func, the PyTorch loop), in column order.

    Table: one row per workload (its title), the median wall time in milliseconds of each
    headline way that ran, and gradflow's speed-up over each peer where measured (the peer's
    median over gradflow's); a workload without the gradflow way (the compile-time one) has no
    row. Macros, named after the peer's method id (``naive_jax`` -> ``NaiveJax``):
    ``\benchmarks<Workload>Speedup<Peer>`` (e.g.
    ``\benchmarksWorkloadOneSpeedupPytorch``), ``\benchmarks<Workload>PeakFraction`` where FLOPs
    were counted, ``\benchmarksMatmulPeak`` (GFLOP/s), ``\benchmarksCpus`` (usable CPUs),
    ``\benchmarksLoadAverage`` (one-minute load average when the run started) and
    ``\benchmarksQuick`` (1 for the quick sizes, else 0).

    Raises:
      FileNotFoundError: no ``results_json``.
      ValueError: the file is not in that format.
    """
    path = Path(results_json)
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results at {path}: run `make bench` first")
    data, ways, per = _read_benchmarks(path)
    peers = ways[1:]
    times = [w for w in ways if any(w["method"] in v.medians for v in per.values())]
    bases = [w for w in peers if any(w["method"] in v.speedups for v in per.values())]
    rows = [
        [v.title, *(1e3 * v.medians[w["method"]] if w["method"] in v.medians else "--"
                    for w in times), *(v.speedups.get(w["method"], "--") for w in bases)]
        for v in per.values()
    ]  # fmt: skip
    columns = [
        "workload",
        *(f"{w['label']} (ms)" for w in times),
        *(f"vs {w['label']}" for w in bases),
    ]
    tables_dir = Path(tables_dir)
    out = [_experiment.latex_table(rows, columns, tables_dir / "benchmarks.tex")]
    macros = _benchmark_macros(data, per, peers)
    out.append(_experiment.write_macros(tables_dir / "benchmarks_macros.tex", macros))
    return out


@dataclasses.dataclass(frozen=True)
class _Workload:
    """One workload's row: its title, every way's median seconds, the headline way's speed-ups
    over the others and its GFLOP/s (where FLOPs were counted)."""

    title: str
    medians: dict[str, float]
    speedups: dict[str, float]
    gflops: float | None


def _read_benchmarks(path: Path) -> tuple[dict, list[dict[str, str]], dict[str, _Workload]]:
    """(the results, the headline ways, gradflow first, then its peers, and the workloads that
    ran the headline way), or a ValueError naming what is wrong with the file."""
    try:
        data = json.loads(path.read_text())
        workloads, machine = data["workloads"], data["machine"]
        if not isinstance(workloads, dict) or not workloads or not isinstance(machine, dict):
            raise TypeError("no workloads")
        ways = _headline_ways(data, path)
        per = {}
        for key, w in workloads.items():
            medians = {m["method"]: float(m["median_s"]) for m in w["measurements"]}
            if ways[0]["method"] not in medians:  # e.g. the compile-time workload: no speed row
                continue
            ups = w.get("speedups", {}).get(ways[0]["method"], {})
            per[key] = _Workload(str(w["title"]), medians, {k: float(v) for k, v in ups.items()},
                                 w.get("gflops", {}).get(ways[0]["method"]))  # fmt: skip
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(
            f"{path} is not a benchmarks results file (benchmarks.report.write): "
            f"{type(e).__name__}: {e}"
        ) from None
    return data, ways, per


def _headline_ways(data: dict, path: Path) -> list[dict[str, str]]:
    """The file's ``"ways"`` (method, label, role): the one of role ``"gradflow"`` first."""
    if "ways" not in data:
        raise ValueError(
            "no 'ways' (the file predates them): add them with `python -m benchmarks.report "
            f"--describe-ways {path}` (nothing is rerun)"
        )
    ways = [{k: str(w[k]) for k in ("method", "label", "role")} for w in data["ways"]]
    heads = [w for w in ways if w["role"] == "gradflow"]
    if len(heads) != 1:
        raise ValueError(f"'ways' must hold one way of role 'gradflow', got {len(heads)}")
    return heads + [w for w in ways if w["role"] == "peer"]


def _benchmark_macros(
    data: dict, per: dict[str, _Workload], peers: list[dict[str, str]]
) -> dict[str, float | int]:
    """The number macros of :func:`benchmarks_table`."""
    peak = data.get("matmul_peak_gflops")
    machine = data["machine"]
    macros: dict[str, float | int] = {}
    for key, w in per.items():
        k = _macro_key(key)
        for peer in peers:
            if peer["method"] in w.speedups:
                macros[f"benchmarks{k}Speedup{_camel(peer['method'])}"] = w.speedups[peer["method"]]
        if w.gflops is not None and peak:
            macros[f"benchmarks{k}PeakFraction"] = float(w.gflops) / float(peak)
    if peak:
        macros["benchmarksMatmulPeak"] = float(peak)
    if machine.get("cpu_usable") is not None:
        macros["benchmarksCpus"] = int(machine["cpu_usable"])
    if machine.get("jax_devices"):
        macros["benchmarksDevices"] = len(machine["jax_devices"])
    if machine.get("load_average"):
        macros["benchmarksLoadAverage"] = float(machine["load_average"][0])
    macros["benchmarksQuick"] = int(bool(data.get("quick", False)))
    return macros


def build_macros(tables_dir: str | os.PathLike, mode: str) -> Path:
    r"""Write ``build_macros.tex``: ``\gradflowVersion`` (:data:`gradflow.__version__`) and
    ``\gradflowMode`` (``quick`` or ``full``: which configurations made the figures and tables).

    Raises:
      ValueError: ``mode`` not ``"quick"`` or ``"full"``.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    import gradflow

    return _experiment.write_macros(
        Path(tables_dir) / "build_macros.tex",
        {"gradflowVersion": gradflow.__version__, "gradflowMode": mode},
    )


def generate(root: str | os.PathLike = ".", *, mode: str | None = None) -> list[Path]:
    """Write every generated paper input whose source exists under ``root``:
    ``paper/tables/runtimes*.tex`` from ``results/runtimes.json``,
    ``paper/tables/benchmarks*.tex`` from ``benchmarks/results.json``, and, when ``mode`` is given,
    ``paper/tables/build_macros.tex`` (:func:`build_macros`). Returns the written paths."""
    root = Path(root)
    tables = root / "paper" / "tables"
    out: list[Path] = []
    runtimes = root / "results" / "runtimes.json"
    if runtimes.is_file():
        out += runtimes_table(runtimes, tables)
    bench = root / "benchmarks" / "results.json"
    if bench.is_file():
        out += benchmarks_table(bench, tables)
    if mode is not None:
        out.append(build_macros(tables, mode))
    return out


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gradflow.paper check LOG [--tolerance PT]`` (exit 1 on a problem, 2 on no log)
    and ``python -m gradflow.paper generate [--root DIR]``."""
    parser = argparse.ArgumentParser(
        prog="python -m gradflow.paper", description="Check the paper's LaTeX log; generate inputs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="fail on LaTeX errors, undefined refs/cites, overfull boxes")
    p.add_argument("log", help="the LaTeX log, e.g. paper/gradflow.log")
    p.add_argument(
        "--tolerance",
        type=float,
        default=1.0,
        metavar="PT",
        help="overfull boxes up to PT points are tolerated (default: 1.0)",
    )
    p.add_argument(
        "--tables",
        metavar="DIR",
        help="also report formatting slips in the generated tables of DIR (gradflow.paper."
        "check_tables): warnings, or problems with --strict-tables",
    )
    p.add_argument(
        "--strict-tables", action="store_true", help="count table formatting slips as problems"
    )
    p = sub.add_parser("generate", help="write paper/tables/runtimes*.tex from results/")
    p.add_argument("--root", default=".", help="the root of results/ and paper/ (default: .)")
    p.add_argument(
        "--mode",
        choices=_MODES,
        help="the configurations the figures came from (writes tables/build_macros.tex)",
    )
    args = parser.parse_args(argv)

    if args.command == "generate":
        for path in generate(args.root, mode=args.mode):
            print(f"wrote {path}")
        return 0
    try:
        report = check_log(args.log)
        problems = report.problems(args.tolerance)
    except (FileNotFoundError, ValueError) as e:
        print(f"gradflow.paper: error: {e}", file=sys.stderr)
        return 2
    slips = check_tables(args.tables) if args.tables else []
    if slips and args.strict_tables:
        problems = problems + slips
    elif slips:
        print(f"{args.tables}: {len(slips)} formatting warning(s):", file=sys.stderr)
        for line in slips:
            print(f"  {line}", file=sys.stderr)
    if problems:
        print(f"{args.log}: {len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    small = [b for b in report.overfull if b.kind != "float"]
    note = f"; {len(small)} overfull box(es) within {args.tolerance:g}pt" if small else ""
    print(f"{args.log}: no LaTeX errors, undefined references or citations, overfull boxes{note}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
