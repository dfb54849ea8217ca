"""Experiments as plug-ins: the registry behind ``gradflow list/run/plot/reproduce``.

An experiment is a module (gradflow's own live in the ``experiments`` package beside gradflow; a
researcher's can live in any package) that defines an :class:`Experiment` and registers it under the
``gradflow.experiments`` entry-point group of its ``pyproject.toml``::

    [project.entry-points."gradflow.experiments"]
    layer_speed = "experiments.layer_speed:EXPERIMENT"

gradflow never imports ``experiments`` by name: :func:`registry` discovers entry points, so a
researcher's package plugs into the same ``gradflow`` command the same way.

Each experiment has a ``quick`` config (seconds; used by the tests) and a ``full`` config (the
paper's figures), and three steps with a fixed data flow::

    run(config, results_dir)       -> writes tidy rows through gradflow.sweep into results_dir
    plot(results_dir, figures_dir) -> figures (PDF + PNG) from saved results only
    tables(results_dir, tables_dir)-> LaTeX tables (.tex) and number macros (\\newcommand)

:func:`layout` fixes where each lands, :func:`resolve_config` applies ``--set key=value``
overrides, and :func:`write_macros` / :func:`latex_table` write the paper's generated inputs so that
no number in the paper is typed by hand.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from gradflow import _checks, _io, _limits

__all__ = [
    "ENTRY_POINT_GROUP",
    "Experiment",
    "Layout",
    "check_memory",
    "fmt",
    "get",
    "latex_table",
    "layout",
    "names",
    "parse_override",
    "registry",
    "resolve_config",
    "write_atomic",
    "write_index",
    "write_macros",
]

ENTRY_POINT_GROUP = "gradflow.experiments"
MODES = ("quick", "full")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One reproducible experiment.

    Attributes:
      name: registry name (``[a-z_]+``), e.g. ``"layer_speed"``.
      claim: the claim it reproduces, one sentence.
      source: where the claim comes from (seed notes, papers).
      configs: ``{"quick": {...}, "full": {...}}`` of JSON-serialisable values.
      run: ``run(config, results_dir)``: runs the sweeps, writing through :mod:`gradflow.sweep`.
      plot: ``plot(results_dir, figures_dir) -> list[Path]``: figures from saved results only.
      tables: ``tables(results_dir, tables_dir) -> list[Path]``: ``.tex`` tables and macros.
      figures: the stems of the headline figures (shown in the README), e.g.
        ``("layer_speed_training",)``.
      check: ``check(config)`` raises ``ValueError``/``TypeError`` naming a bad value (and the
        valid choices) of a config; :func:`resolve_config` calls it, so ``gradflow run`` refuses
        a bad ``--set`` in one line before anything runs. Sizes that would not fit in memory are
        bad values too (:func:`check_memory`).
    """

    name: str
    claim: str
    source: str
    configs: Mapping[str, Mapping[str, Any]]
    run: Callable[[dict, Path], Any]
    plot: Callable[[Path, Path], Sequence[Path]]
    tables: Callable[[Path, Path], Sequence[Path]] | None = None
    figures: tuple[str, ...] = ()
    check: Callable[[dict], None] | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"experiment name must match [a-z][a-z0-9_]*, got {self.name!r}")
        if not isinstance(self.configs, Mapping):
            raise TypeError(f"configs must be a dict mode -> config, got {self.configs!r}")
        missing = [m for m in MODES if m not in self.configs]
        if missing:
            raise ValueError(f"experiment {self.name!r} lacks config(s) {missing}; needs {MODES}")
        for field in ("run", "plot"):
            if not callable(getattr(self, field)):
                raise TypeError(f"experiment {self.name!r}: {field} must be callable")
        for field in ("tables", "check"):
            if getattr(self, field) is not None and not callable(getattr(self, field)):
                raise TypeError(f"experiment {self.name!r}: {field} must be callable or None")

    def config(self, mode: str = "full", overrides: Mapping[str, Any] | None = None) -> dict:
        """The ``mode`` config with ``overrides`` applied (see :func:`resolve_config`)."""
        return resolve_config(self, mode, overrides)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> tuple[str, ...]:
    """Registered experiment names: the paper's order where known, then the others by name."""
    order = (
        "activation_derivatives", "layer_speed", "chain_anatomy", "variance_propagation",
        "remedies", "clipping_decay", "rnn_through_time", "criticality", "dynamical_isometry",
        "transformer_layernorm", "residual_normalization",
    )  # fmt: skip
    found = list(_entry_points())
    return tuple(sorted(found, key=lambda n: (order.index(n) if n in order else len(order), n)))


def get(name: str) -> Experiment:
    """Load the experiment registered as ``name``.

    Raises:
      ValueError: unknown name (the message lists the registered ones), or the entry point does
        not point at an :class:`Experiment`.
    """
    eps = _entry_points()
    if name not in eps:
        raise ValueError(f"unknown experiment {name!r}; valid names: {', '.join(names())}")
    obj = eps[name].load()
    if not isinstance(obj, Experiment):
        raise ValueError(
            f"entry point {eps[name].value!r} for experiment {name!r} is a "
            f"{type(obj).__name__}, not a gradflow.experiment.Experiment"
        )
    if obj.name != name:
        raise ValueError(f"entry point {name!r} loads an experiment named {obj.name!r}")
    return obj


def registry() -> dict[str, Experiment]:
    """All registered experiments, loaded, by name."""
    return {n: get(n) for n in names()}


# --- configs ----------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` override: the value as a Python literal (``0.1``, ``(1, 2)``,
    ``[0.5, 1.0]``, ``True``) or else as a plain string."""
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"malformed override {text!r}: expected key=value, e.g. seeds=4")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key.isidentifier():
        raise ValueError(f"malformed override {text!r}: {key!r} is not a config key")
    try:
        value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
        value = raw.strip()
    return key, value


def _describe(default: Any) -> str:
    if isinstance(default, (tuple, list)):
        kinds = sorted({type(v).__name__ for v in default})
        return f"a {type(default).__name__} of {'/'.join(kinds) or 'values'}"
    return f"a {type(default).__name__}"


def _coerce_scalar(key: str, value: Any, default: Any, where: str = "") -> Any:
    """``value`` as the type of the scalar ``default``, or ValueError."""
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ValueError(f"config key {key!r} takes True or False, got {value!r}{where}")
    if isinstance(default, numbers.Integral):
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
    elif isinstance(default, numbers.Real):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value)
            if not math.isfinite(value) and math.isfinite(default):
                raise ValueError(
                    f"config key {key!r} takes a finite number (default {default!r}), got "
                    f"{value!r}{where}"
                )
            return value
    elif isinstance(value, type(default)):
        return value
    raise ValueError(
        f"config key {key!r} takes {_describe(default)} (default {default!r}), got {value!r}{where}"
    )


def _coerce(key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default``: bools stay bools, ints ints, floats finite floats
    (an int is promoted), strings strings; a tuple/list default takes a tuple/list (or one
    value) whose every element has the type of the default's elements."""
    if isinstance(default, (tuple, list)):
        if isinstance(value, (tuple, list)):
            seq = value
        elif isinstance(value, (bool, numbers.Real, str)):
            seq = (value,)
        else:
            raise ValueError(
                f"config key {key!r} takes {_describe(default)} (default {default!r}), got "
                f"{value!r}"
            )
        if default:
            numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in default)
            proto = 0.0 if numeric and any(isinstance(v, float) for v in default) else default[0]
            out = []
            for i, v in enumerate(seq):
                try:
                    out.append(_coerce_scalar(key, v, proto, ""))
                except ValueError:
                    finite_issue = isinstance(v, float) and isinstance(proto, float)
                    what = "a finite number" if finite_issue else _describe(proto)
                    at = f": element {i} ({v!r}) is not {what}" if seq is value else ""
                    raise ValueError(
                        f"config key {key!r} takes {_describe(default)} (default {default!r}), "
                        f"got {value!r}{at}"
                    ) from None
            seq = out
        return type(default)(seq)
    return _coerce_scalar(key, value, default, "")


def resolve_config(
    experiment: Experiment, mode: str = "full", overrides: Mapping[str, Any] | None = None
) -> dict:
    """``experiment.configs[mode]`` with ``overrides`` applied, type-checked against the defaults.

    Raises:
      ValueError: unknown mode, unknown key (lists the valid keys), or a value of the wrong type.
    """
    if not isinstance(experiment, Experiment):
        raise TypeError(
            f"experiment must be a gradflow.experiment.Experiment, got {type(experiment).__name__}"
        )
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a dict key -> value, got {overrides!r}")
    if mode not in experiment.configs:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(experiment.configs)}")
    cfg = dict(experiment.configs[mode])
    for key, value in (overrides or {}).items():
        if key not in cfg:
            raise ValueError(
                f"unknown config key {key!r} for experiment {experiment.name!r}; "
                f"valid keys: {', '.join(sorted(cfg))}"
            )
        cfg[key] = _coerce(key, value, cfg[key])
    if experiment.check is not None:
        experiment.check(cfg)
    return cfg


def check_memory(what: str, nbytes: float) -> None:
    """Raise ``ValueError`` when ``what`` needs more than the memory available now.

    ``nbytes`` is an estimate of the peak; the available memory is ``MemAvailable`` of
    ``/proc/meminfo`` (Linux) or free physical pages (elsewhere); nothing is checked where
    neither is known. For an experiment's ``check``: a size that cannot fit fails at once with
    a clear message instead of swapping for minutes and dying to the OOM killer.
    """
    _checks.real("nbytes", nbytes, nonneg=True, finite=False)
    _limits.check_bytes(what, nbytes)


# --- where things land ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one experiment's outputs live.

    ``results``: the sweep stores (``<root>/results/<name>/<mode>``); ``figures`` and ``tables``:
    the paper's generated inputs (``<root>/paper/figures``, ``<root>/paper/tables``), shared by all
    experiments and named ``<name>_*``.
    """

    results: Path
    figures: Path
    tables: Path


def layout(name: str, mode: str, root: str | os.PathLike = ".") -> Layout:
    """The :class:`Layout` of experiment ``name`` in ``mode`` under ``root``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be an experiment name (a non-empty str), got {name!r}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    root = _checks.path("root", root)
    return Layout(
        results=root / "results" / name / mode,
        figures=root / "paper" / "figures",
        tables=root / "paper" / "tables",
    )


# --- generated paper inputs -------------------------------------------------------------------


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: a temporary file created exclusively (an
    unpredictable name, never a planted file or symlink) in the same directory, fsynced and
    renamed over ``path`` with :func:`os.replace`.

    Under :func:`jax.distributed.initialize` only process 0 writes (every process runs an
    experiment's sweeps; one writes its outputs); the path is returned either way.
    """
    if not isinstance(text, str):
        raise TypeError(f"write_atomic writes text: got {type(text).__name__}, not str")
    path = _checks.path("path", path)
    if not _io.is_writer():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return _io.atomic_write(path, text)


def fmt(x: Any, digits: int = 3) -> str:
    """A number for the paper: ``digits`` significant digits, scientific for very small or large
    magnitudes, ``--`` for NaN/inf (LaTeX-safe).

    Example:
      >>> print(gf.experiment.fmt(0.000123))
      1.23\\times10^{-4}
      >>> gf.experiment.fmt(float("nan"))
      '--'
    """
    digits = _checks.size("digits", digits)
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, int)) and not isinstance(x, float):
        return str(x)
    if not isinstance(x, numbers.Real) and not (
        hasattr(x, "dtype") and getattr(x, "shape", None) == () and np.isrealobj(x)
    ):
        raise TypeError(f"fmt formats a real number or a string, got {x!r} ({type(x).__name__})")
    x = float(x)
    if not math.isfinite(x):
        return "--"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        mant, exp = f"{x:.{max(digits - 1, 0)}e}".split("e")
        return f"{mant}\\times10^{{{int(exp)}}}"
    if abs(x) >= 10**digits:  # e.g. 5710, not "5.71e+03" (which LaTeX would print literally)
        return f"{round(x):d}"
    return f"{x:.{digits}g}"


def write_macros(path: str | os.PathLike, macros: Mapping[str, Any], *, digits: int = 3) -> Path:
    r"""Write ``\newcommand{\name}{value}`` lines for the paper's quoted numbers.

    Macro names must be letters only (LaTeX). Numbers are formatted with :func:`fmt`, and those
    that use math (``\times10^{..}``, a minus sign) are wrapped in ``\ensuremath``; text is
    escaped for LaTeX (``& % # _ { } $ \ ^ ~``), except the parts between pairs of ``$``.
    """
    if not isinstance(macros, Mapping):
        raise TypeError(f"macros must be a dict name -> value, got {macros!r}")
    _checks.size("digits", digits)
    path = _checks.path("path", path)
    lines = ["% generated by gradflow: do not edit"]
    for name, value in macros.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z]+", name):
            raise ValueError(f"LaTeX macro names must be letters only, got {name!r}")
        if isinstance(value, str):
            text = _escape(value)
            math_mode = bool(_FMT_SCI.fullmatch(value))
        else:
            try:
                text = fmt(value, digits)
            except TypeError as e:
                raise TypeError(f"macro {name!r}: {e}") from None
            math_mode = "\\times" in text or (text.startswith("-") and text != "--")
        if math_mode:
            text = f"\\ensuremath{{{text}}}"
        lines.append(f"\\newcommand{{\\{name}}}{{{text}}}")
    return write_atomic(path, "\n".join(lines) + "\n")


# Text-mode escapes of LaTeX's special characters.
_LATEX_ESCAPES = {
    "&": r"\&",
    "%": r"\%",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "$": r"\$",
    "\\": r"\textbackslash{}",
    "^": r"\textasciicircum{}",
    "~": r"\textasciitilde{}",
}
# What fmt() writes for a very small or large number: LaTeX math, kept as is.
_FMT_SCI = re.compile(r"-?\d+(?:\.\d+)?\\times10\^\{-?\d+\}")


def _escape(text: str) -> str:
    """``text`` for LaTeX: the parts between pairs of ``$`` are math and kept as they are;
    everything else is text, its special characters escaped (a ``$`` without a partner too).
    A number as :func:`fmt` writes it (``1.50\\times10^{-30}``) is kept for math mode."""
    if _FMT_SCI.fullmatch(text):
        return text

    def esc(part: str) -> str:
        return "".join(_LATEX_ESCAPES.get(c, c) for c in part)

    dollars = [i for i, c in enumerate(text) if c == "$"]
    out, pos = [], 0
    for a, b in zip(dollars[0::2], dollars[1::2]):  # complete pairs only
        out += [esc(text[pos:a]), text[a : b + 1]]
        pos = b + 1
    out.append(esc(text[pos:]))  # an unpaired "$" is escaped here
    return "".join(out)


def latex_table(
    rows: Sequence[Sequence[Any]],
    columns: Sequence[str],
    path: str | os.PathLike,
    *,
    align: str | None = None,
    digits: int = 3,
) -> Path:
    """Write a booktabs ``tabular`` (no float environment: the paper wraps it) to ``path``.

    Cells are formatted with :func:`fmt`; strings are escaped unless wrapped in ``$...$``.
    """
    if isinstance(columns, str) or not isinstance(columns, Sequence):
        raise TypeError(f"columns must be a sequence of column headers, got {columns!r}")
    if (
        isinstance(rows, str)
        or not isinstance(rows, Sequence)
        or not all(isinstance(r, Sequence) and not isinstance(r, str) for r in rows)
    ):
        raise TypeError(f"rows must be a sequence of rows (sequences of cells), got {rows!r}")
    _checks.size("digits", digits)
    path = _checks.path("path", path)
    ncol = len(columns)
    if any(len(r) != ncol for r in rows):
        raise ValueError(f"rows: every row must have {ncol} cells (columns {list(columns)})")
    align = align or ("l" + "r" * (ncol - 1))

    def cell(v):
        text = fmt(v, digits) if not isinstance(v, str) else _escape(v)
        numeric = not isinstance(v, str) and text != "--"
        # math mode for scientific notation and for a minus sign (not a text hyphen)
        if text.startswith("$") and text.endswith("$"):  # a string already in math mode
            return text
        return f"${text}$" if "\\times" in text or (numeric and text.startswith("-")) else text

    lines = [
        "% generated by gradflow: do not edit",
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
        " & ".join(_escape(c) for c in columns) + r" \\",
        "\\midrule",
        *(" & ".join(cell(v) for v in r) + r" \\" for r in rows),
        "\\bottomrule",
        "\\end{tabular}",
    ]
    return write_atomic(path, "\n".join(lines) + "\n")


# --- the experiments index --------------------------------------------------------------------


def index_markdown(runtimes: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> str:
    """The experiments index (``experiments/README.md``): claim, source, command, figures and the
    measured wall time of every registered experiment, quick and full.

    ``runtimes`` is the content of ``results/runtimes.json`` written by ``gradflow run`` /
    ``gradflow reproduce`` (``{"quick"|"full": {name: {"seconds": s, "devices": ...}}}``); missing
    timings show as ``--``. Regenerate with ``python -m gradflow.experiment [--root DIR]``.
    """
    runtimes = runtimes or {}

    def secs(mode: str, name: str) -> str:
        entry = runtimes.get(mode, {}).get(name)
        return f"{entry['seconds']:.0f} s" if entry and "seconds" in entry else "--"

    lines = [
        "# Experiments",
        "",
        "<!-- generated by `gradflow reproduce` from the registry and "
        "results/runtimes.json: do not edit -->",
        "",
        "Each experiment reproduces a claim of the seed notes or a classic paper. Run one with",
        "`gradflow run NAME [--quick]` (results in `results/NAME/<mode>`, figures in",
        "`paper/figures/NAME_*.{pdf,png}`, tables and number macros in `paper/tables/`), all of",
        "them with `gradflow reproduce [--quick]` (`make reproduce`, `make reproduce-quick`).",
        "",
        "| experiment | claim | source | figures | quick | full |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    totals = {"quick": 0.0, "full": 0.0}
    for name in names():
        exp = get(name)
        figs = ", ".join(f"[{f}](../paper/figures/{f}.png)" for f in exp.figures) or "--"
        for mode in totals:
            entry = runtimes.get(mode, {}).get(name)
            totals[mode] += float(entry["seconds"]) if entry and "seconds" in entry else 0.0
        lines.append(
            f"| `{name}` | {exp.claim} | {exp.source} | {figs} | {secs('quick', name)} | "
            f"{secs('full', name)} |"
        )
    lines.append(
        "| **total** | | | | "
        + " | ".join(f"{totals[m]:.0f} s" if runtimes.get(m) else "--" for m in totals)
        + " |"
    )
    devices = sorted(
        {
            str(e.get("devices"))
            for mode in totals
            for e in runtimes.get(mode, {}).values()
            if e.get("devices")
        }
    )
    if devices:
        lines += ["", f"Wall times measured on: {'; '.join(devices)}."]
    precisions = sorted(
        {
            str(e.get("matmul_precision", "not recorded"))
            for mode in totals
            for e in runtimes.get(mode, {}).values()
        }
    )
    if precisions:
        lines += [
            "",
            f"Float32 matrix products at precision: {', '.join(f'`{p}`' for p in precisions)} "
            "(`gradflow.config`; `highest` is float32 on every backend, the default).",
        ]
    commands = runtimes.get("reproduce", {})
    for mode, budget in (("quick", 180), ("full", 1200)):
        rec = commands.get(mode)
        if not rec or "seconds" not in rec:
            continue
        m = rec.get("machine_at_start", {})
        cpus = m.get("cpus_usable", m.get("cpus", "?"))
        load = m.get("load_average")
        load_txt = f", load average {load[0]:.2f} at the start" if load else ""
        verdict = "within" if rec["seconds"] < budget else "OVER"
        compile_txt = f", XLA compile `{rec['compile']}`" if rec.get("compile") else ""
        if rec.get("matmul_precision"):
            compile_txt += f", matmul precision `{rec['matmul_precision']}`"
        cmd = "gradflow reproduce --quick" if mode == "quick" else "gradflow reproduce"
        lines += [
            "",
            f"The whole `{cmd}` (every experiment from scratch, the index, the paper's tables"
            f" and PDF: {rec.get('paper', '?')}): **{rec['seconds']:.0f} s** wall on {cpus}"
            f" CPUs{load_txt}{compile_txt} ({rec.get('finished', '?')}); {verdict} the {budget} s"
            " budget.",
        ]
    return "\n".join(lines) + "\n"


def write_index(root: str | os.PathLike = ".") -> Path:
    """Write ``ROOT/experiments/README.md`` (:func:`index_markdown`) from the registry and
    ``ROOT/results/runtimes.json``; ``gradflow reproduce`` calls it in the gradflow checkout."""
    import json

    root = Path(root)
    rt = root / "results" / "runtimes.json"
    runtimes = json.loads(rt.read_text()) if rt.is_file() else {}
    return write_atomic(root / "experiments" / "README.md", index_markdown(runtimes))
