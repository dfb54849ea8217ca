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
import os
import re
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "ENTRY_POINT_GROUP",
    "Experiment",
    "Layout",
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
    """

    name: str
    claim: str
    source: str
    configs: Mapping[str, Mapping[str, Any]]
    run: Callable[[dict, Path], Any]
    plot: Callable[[Path, Path], Sequence[Path]]
    tables: Callable[[Path, Path], Sequence[Path]] | None = None
    figures: tuple[str, ...] = ()

    def __post_init__(self):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"experiment name must match [a-z][a-z0-9_]*, got {self.name!r}")
        missing = [m for m in MODES if m not in self.configs]
        if missing:
            raise ValueError(f"experiment {self.name!r} lacks config(s) {missing}; needs {MODES}")

    def config(self, mode: str = "full", overrides: Mapping[str, Any] | None = None) -> dict:
        """The ``mode`` config with ``overrides`` applied (see :func:`resolve_config`)."""
        return resolve_config(self, mode, overrides)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> tuple[str, ...]:
    """Registered experiment names, sorted in the order of DESIGN.md where known."""
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


def _coerce(key: str, value: Any, default: Any) -> Any:
    if default is None or isinstance(value, type(default)):
        return value
    if isinstance(default, bool):
        raise ValueError(f"config key {key!r} takes True or False, got {value!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, (tuple, list)) and isinstance(value, (tuple, list, int, float, str)):
        seq = value if isinstance(value, (tuple, list)) else (value,)
        return type(default)(seq)
    raise ValueError(
        f"config key {key!r} takes a {type(default).__name__} (default {default!r}), got {value!r}"
    )


def resolve_config(
    experiment: Experiment, mode: str = "full", overrides: Mapping[str, Any] | None = None
) -> dict:
    """``experiment.configs[mode]`` with ``overrides`` applied, type-checked against the defaults.

    Raises:
      ValueError: unknown mode, unknown key (lists the valid keys), or a value of the wrong type.
    """
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
    return cfg


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
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    root = Path(root)
    return Layout(
        results=root / "results" / name / mode,
        figures=root / "paper" / "figures",
        tables=root / "paper" / "tables",
    )


# --- generated paper inputs -------------------------------------------------------------------


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file and :func:`os.replace` (atomic).

    Under :func:`jax.distributed.initialize` only process 0 writes (every process runs an
    experiment's sweeps; one writes its outputs); the path is returned either way.
    """
    path = Path(path)
    if _process_index() != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _process_index() -> int:
    import jax

    return jax.process_index()


def fmt(x: Any, digits: int = 3) -> str:
    """A number for the paper: ``digits`` significant digits, scientific for very small or large
    magnitudes, ``--`` for NaN/inf (LaTeX-safe)."""
    if isinstance(x, str):
        return x
    if isinstance(x, (bool, int)) and not isinstance(x, float):
        return str(x)
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

    Macro names must be letters only (LaTeX); values are formatted with :func:`fmt`, and those
    that use math (``\times10^{..}``) are wrapped in ``\ensuremath``.
    """
    lines = ["% generated by gradflow: do not edit"]
    for name, value in macros.items():
        if not re.fullmatch(r"[A-Za-z]+", name):
            raise ValueError(f"LaTeX macro names must be letters only, got {name!r}")
        text = fmt(value, digits)
        if "\\times" in text or (text.startswith("-") and text != "--"):
            text = f"\\ensuremath{{{text}}}"
        lines.append(f"\\newcommand{{\\{name}}}{{{text}}}")
    return write_atomic(path, "\n".join(lines) + "\n")


_LATEX_ESCAPES = {"&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_"}


def _escape(text: str) -> str:
    if text.startswith("$") and text.endswith("$"):
        return text
    return "".join(_LATEX_ESCAPES.get(c, c) for c in text)


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
    ncol = len(columns)
    if any(len(r) != ncol for r in rows):
        raise ValueError(f"every row must have {ncol} cells (columns {list(columns)})")
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
