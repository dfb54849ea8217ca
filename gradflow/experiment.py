"""Experiments as plug-ins: the registry behind ``gradflow list/run/plot/reproduce``.

An experiment is a module (gradflow's own live in the ``experiments`` package beside gradflow; a
researcher's can live in any package) that defines an :class:`Experiment` and registers it under the
``gradflow.experiments`` entry-point group of its ``pyproject.toml``::

    [project.entry-points."gradflow.experiments"]
    layer_speed = "experiments.layer_speed:EXPERIMENT"

gradflow never imports ``experiments`` by name: :func:`registry` discovers entry points, so a
researcher's package plugs into the same ``gradflow`` command the same way.

Each experiment has a ``quick`` config (seconds; used by the tests) and a ``full`` config (the
paper's figures), instances of one frozen :class:`Config` dataclass (its typed fields are the
config's keys; ``__post_init__`` checks their values), and three steps with a fixed data flow::

    run(config, results_dir)       -> writes tidy rows through gradflow.sweep into results_dir
    plot(results_dir, figures_dir) -> figures (PDF + PNG) from saved results only
    tables(results_dir, tables_dir)-> LaTeX tables (.tex) and number macros (\\newcommand)

:func:`layout` fixes where each lands, :func:`resolve_config` applies ``--set key=value``
overrides (typed by the config's fields), :func:`stored_config` reads back the config a sweep store
was made with, and :mod:`gradflow.latex` (:func:`write_macros`, :func:`latex_table`) writes the
paper's generated inputs so that no number in the paper is typed by hand.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import numbers
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from gradflow import _checks, _io, _limits
from gradflow import sweep as _sweep
from gradflow.latex import _escape, fmt, latex_table, write_macros  # noqa: F401  (re-exported)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Config",
    "Experiment",
    "Layout",
    "check_memory",
    "fmt",
    "get",
    "jsonable",
    "latex_table",
    "layout",
    "names",
    "parse_override",
    "registry",
    "resolve_config",
    "stored_config",
    "write_atomic",
    "write_index",
    "write_macros",
]

#: The entry-point group a package registers its experiments under (``[project.entry-points]``).
ENTRY_POINT_GROUP = "gradflow.experiments"
MODES = ("quick", "full")


# --- typed configs ----------------------------------------------------------------------------

_SCALARS = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of an experiment's typed config: a frozen dataclass, one field per config key.

    Subclass it with ``@dataclasses.dataclass(frozen=True)``; annotate every field with ``int``,
    ``float``, ``bool``, ``str`` or ``tuple[T, ...]`` of those (``--set`` overrides are typed by
    these annotations) and validate the values in ``__post_init__`` after calling
    ``super().__post_init__()``, which checks every field's type. The quick config states only
    what it changes::

        @dataclasses.dataclass(frozen=True)
        class SpeedConfig(gf.experiment.Config):
            seeds: int  # random draws
            epochs: int  # passes over the data

        FULL = SpeedConfig(seeds=30, epochs=500)
        QUICK = dataclasses.replace(FULL, epochs=20)

    What a sweep stores (``metadata.json``, the config hash, the run record) is :meth:`to_dict`.
    """

    def __post_init__(self) -> None:
        for name, kind in _field_kinds(type(self)).items():
            value = getattr(self, name)
            if not _is_kind(value, kind):
                raise TypeError(
                    f"{type(self).__name__}.{name} must be {_describe(kind)}, got {value!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        """The config as a dict, in field order (what the sweep stores and hashes)."""
        return dataclasses.asdict(self)

    def check_resources(self) -> None:
        """Raise ``ValueError`` when this config would not fit in memory (:func:`check_memory`).

        Nothing by default. Kept out of ``__post_init__``, so that importing an experiment never
        depends on the machine; :func:`resolve_config` and the experiment's ``run`` call it.
        """


@functools.cache
def _field_kinds(cls: type) -> dict[str, Any]:
    """``{field: kind}`` of a :class:`Config` subclass; a kind is a scalar type or
    ``(tuple, element type)``."""
    hints = typing.get_type_hints(cls)
    return {f.name: _kind_of_hint(cls, f.name, hints[f.name]) for f in dataclasses.fields(cls)}


def _kind_of_hint(cls: type, name: str, hint: Any) -> Any:
    args = typing.get_args(hint)
    if hint in _SCALARS:
        return hint
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] in _SCALARS:
            return (tuple, args[0])
    raise TypeError(
        f"{cls.__name__}.{name}: unsupported config type {hint!r}; use int, float, bool, str or "
        "tuple[T, ...] of those"
    )


def _kind_of_value(default: Any) -> Any:
    """The kind of a dict config's value (for plug-ins whose configs are plain dicts)."""
    if isinstance(default, (tuple, list)):
        numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in default)
        if not default:
            return (type(default), None)
        proto = 0.0 if numeric and any(isinstance(v, float) for v in default) else default[0]
        return (type(default), _kind_of_value(proto))
    if default is None:
        return None
    if isinstance(default, bool):
        return bool
    if isinstance(default, numbers.Integral):
        return int
    return float if isinstance(default, numbers.Real) else type(default)


def _is_kind(value: Any, kind: Any) -> bool:
    if isinstance(kind, tuple):
        return isinstance(value, kind[0]) and all(_is_kind(v, kind[1]) for v in value)
    if kind is None:
        return True
    if kind in (int, float):
        number = numbers.Integral if kind is int else numbers.Real
        return isinstance(value, number) and not isinstance(value, bool)
    return isinstance(value, kind)


def _describe(kind: Any) -> str:
    if isinstance(kind, tuple):
        return f"a {kind[0].__name__} of {kind[1].__name__ if kind[1] else 'values'}"
    return f"a {kind.__name__}" if kind is not None else "a value"


def _coerce_scalar(key: str, value: Any, kind: Any, default: Any) -> Any:
    """``value`` as ``kind`` (bools stay bools, ints ints, floats finite floats unless ``default``
    is not, an int promoted; other types as they are), or ValueError."""
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"config key {key!r} takes True or False, got {value!r}")
    if not _is_kind(value, float if kind is float else kind):
        raise ValueError(
            f"config key {key!r} takes {_describe(kind)} (default {default!r}), got {value!r}"
        )
    if kind is float:
        value = float(value)
        finite_default = not isinstance(default, numbers.Real) or math.isfinite(default)
        if not math.isfinite(value) and finite_default:
            raise ValueError(
                f"config key {key!r} takes a finite number (default {default!r}), got {value!r}"
            )
    return int(value) if kind is int else value


def _coerce(key: str, value: Any, kind: Any, default: Any) -> Any:
    """``value`` as ``kind``; a sequence kind takes a tuple/list (or one value) whose every
    element has the element kind (floats finite)."""
    if not isinstance(kind, tuple):
        return _coerce_scalar(key, value, kind, default)
    what = f"{_describe(kind)} (default {default!r})"
    if isinstance(value, (tuple, list)):
        seq = value
    elif isinstance(value, (bool, numbers.Real, str)):
        seq = (value,)
    else:
        raise ValueError(f"config key {key!r} takes {what}, got {value!r}")
    out = []
    for i, v in enumerate(seq):
        try:
            out.append(_coerce_scalar(key, v, kind[1], 0.0))
        except ValueError:
            issue = "a finite number" if isinstance(v, float) and kind[1] is float else None
            at = f": element {i} ({v!r}) is not {issue or _describe(kind[1])}"
            raise ValueError(
                f"config key {key!r} takes {what}, got {value!r}{at if seq is value else ''}"
            ) from None
    return kind[0](out)


# --- the registry -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One reproducible experiment.

    Attributes:
      name: registry name (``[a-z_]+``), e.g. ``"layer_speed"``.
      claim: the claim it reproduces, one sentence.
      source: where the claim comes from (seed notes, papers).
      configs: ``{"quick": QUICK, "full": FULL}``: instances of one :class:`Config` subclass (or,
        for plug-ins written before typed configs, dicts of JSON-serialisable values).
      run: ``run(config, results_dir)``: runs the sweeps, writing through :mod:`gradflow.sweep`.
      plot: ``plot(results_dir, figures_dir) -> list[Path]``: figures from saved results only.
      tables: ``tables(results_dir, tables_dir) -> list[Path]``: ``.tex`` tables and macros.
      figures: the stems of the headline figures (shown in the README), e.g.
        ``("layer_speed_training",)``.
      check: for dict configs only: ``check(config)`` raises ``ValueError``/``TypeError`` naming a
        bad value (and the valid choices); :func:`resolve_config` calls it, so ``gradflow run``
        refuses a bad ``--set`` in one line before anything runs. A :class:`Config` checks itself.
      order: the experiment's place in the paper (its section order); :func:`names` lists
        experiments by it, those without one last, by name.
    """

    name: str
    claim: str
    source: str
    configs: Mapping[str, Config | Mapping[str, Any]]
    run: Callable[[Any, Path], Any]
    plot: Callable[[Path, Path], Sequence[Path]]
    tables: Callable[[Path, Path], Sequence[Path]] | None = None
    figures: tuple[str, ...] = ()
    check: Callable[[dict], None] | None = None
    order: int | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ValueError(f"experiment name must match [a-z][a-z0-9_]*, got {self.name!r}")
        if not isinstance(self.configs, Mapping):
            raise TypeError(f"configs must be a dict mode -> config, got {self.configs!r}")
        missing = [m for m in MODES if m not in self.configs]
        if missing:
            raise ValueError(f"experiment {self.name!r} lacks config(s) {missing}; needs {MODES}")
        kinds = {type(c) if isinstance(c, Config) else Mapping for c in self.configs.values()}
        if len(kinds) != 1 or not all(
            isinstance(c, (Config, Mapping)) for c in self.configs.values()
        ):
            raise TypeError(
                f"experiment {self.name!r}: configs must be instances of one Config class (or all "
                f"dicts), got {sorted(type(c).__name__ for c in self.configs.values())}"
            )
        for field in ("run", "plot"):
            if not callable(getattr(self, field)):
                raise TypeError(f"experiment {self.name!r}: {field} must be callable")
        for field in ("tables", "check"):
            if getattr(self, field) is not None and not callable(getattr(self, field)):
                raise TypeError(f"experiment {self.name!r}: {field} must be callable or None")
        if self.order is not None and (
            not isinstance(self.order, int) or isinstance(self.order, bool)
        ):
            raise TypeError(
                f"experiment {self.name!r}: order must be an int or None, got {self.order!r}"
            )

    def config(
        self, mode: str = "full", overrides: Mapping[str, Any] | None = None
    ) -> Config | dict:
        """The ``mode`` config with ``overrides`` applied (see :func:`resolve_config`)."""
        return resolve_config(self, mode, overrides)


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def names() -> tuple[str, ...]:
    """Registered experiment names in the paper's order (each experiment's ``order``), then the
    others by name."""
    eps = _entry_points()
    return tuple(sorted(eps, key=lambda n: _order_key(n, eps[n])))


def _order_key(name: str, ep: metadata.EntryPoint) -> tuple:
    try:
        order = getattr(ep.load(), "order", None)
    except Exception:  # a plug-in that cannot load sorts last; get() says why
        order = None
    return (not isinstance(order, int), order if isinstance(order, int) else 0, name)


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


def resolve_config(
    experiment: Experiment, mode: str = "full", overrides: Mapping[str, Any] | None = None
) -> Config | dict:
    """``experiment.configs[mode]`` with ``overrides`` applied, each typed by its field.

    A :class:`Config` is rebuilt with the overrides (its ``__post_init__`` validates them) and
    checked against the memory available (:meth:`Config.check_resources`); a dict config is
    typed by its values and checked by the experiment's ``check``. Bools stay bools, ints ints,
    floats finite floats (an int is promoted), strings strings; a tuple takes a tuple/list (or
    one value) whose every element has the element type.

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
    base = experiment.configs[mode]
    current = base.to_dict() if isinstance(base, Config) else dict(base)
    for key in overrides or {}:
        if key not in current:
            raise ValueError(
                f"unknown config key {key!r} for experiment {experiment.name!r}; "
                f"valid keys: {', '.join(sorted(current))}"
            )
    kinds = _field_kinds(type(base)) if isinstance(base, Config) else {}
    typed = {
        k: _coerce(k, v, kinds.get(k, _kind_of_value(current[k])), current[k])
        for k, v in (overrides or {}).items()
    }
    if isinstance(base, Config):
        config = dataclasses.replace(base, **typed)
        config.check_resources()
        return config
    current.update(typed)
    if experiment.check is not None:
        experiment.check(current)
    return current


def stored_config(workdir: str | os.PathLike) -> dict[str, Any]:
    """The experiment config a sweep store was made with: the ``config`` given to
    :func:`gradflow.sweep.run`, as its ``metadata.json`` holds it (tuples read back as lists)."""
    return _sweep.load_metadata(workdir)["config"]["config"]


def jsonable(obj: Any) -> Any:
    """``json.dumps``'s ``default`` for run records: a :class:`Config` as :meth:`Config.to_dict`,
    anything else as ``str(obj)``."""
    return obj.to_dict() if isinstance(obj, Config) else str(obj)


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


#: Write text atomically (a temporary file, fsynced and renamed over ``path``); under
#: :func:`jax.distributed.initialize` only process 0 writes. Returns the path.
write_atomic = _io.write_text


# --- the experiments index --------------------------------------------------------------------

_INDEX_HEADER = [
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
#: Wall-time budgets (seconds) of the whole ``gradflow reproduce``, quick and full.
_BUDGETS = {"quick": 180, "full": 1200}


def index_markdown(runtimes: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> str:
    """The experiments index (``experiments/README.md``): claim, source, command, figures and the
    measured wall time of every registered experiment, quick and full.

    ``runtimes`` is the content of ``results/runtimes.json`` written by ``gradflow run`` /
    ``gradflow reproduce`` (``{"quick"|"full": {name: {"seconds": s, "devices": ...}}}``); missing
    timings show as ``--``. Regenerate with ``python -m gradflow.experiment [--root DIR]``.
    """
    runtimes = runtimes or {}
    lines = [*_INDEX_HEADER, *_index_rows(runtimes), *_index_machine(runtimes)]
    for mode in _BUDGETS:
        lines += _index_reproduce(mode, runtimes.get("reproduce", {}).get(mode))
    return "\n".join(lines) + "\n"


def _seconds(runtimes: Mapping, mode: str, name: str) -> float | None:
    entry = runtimes.get(mode, {}).get(name)
    return float(entry["seconds"]) if entry and "seconds" in entry else None


def _index_rows(runtimes: Mapping) -> list[str]:
    """One table row per experiment, then the total wall time per mode."""
    lines, totals = [], dict.fromkeys(_BUDGETS, 0.0)
    for name in names():
        exp = get(name)
        figs = ", ".join(f"[{f}](../paper/figures/{f}.png)" for f in exp.figures) or "--"
        secs = {m: _seconds(runtimes, m, name) for m in totals}
        for mode, s in secs.items():
            totals[mode] += s or 0.0
        cells = " | ".join(f"{s:.0f} s" if s is not None else "--" for s in secs.values())
        lines.append(f"| `{name}` | {exp.claim} | {exp.source} | {figs} | {cells} |")
    total = " | ".join(f"{totals[m]:.0f} s" if runtimes.get(m) else "--" for m in totals)
    return [*lines, f"| **total** | | | | {total} |"]


def _index_machine(runtimes: Mapping) -> list[str]:
    """The devices and the float32 matmul precision the timings were measured with."""
    entries = [e for mode in _BUDGETS for e in runtimes.get(mode, {}).values()]
    devices = sorted({str(e.get("devices")) for e in entries if e.get("devices")})
    precisions = sorted({str(e.get("matmul_precision", "not recorded")) for e in entries})
    lines = ["", f"Wall times measured on: {'; '.join(devices)}."] if devices else []
    if precisions:
        lines += [
            "",
            f"Float32 matrix products at precision: {', '.join(f'`{p}`' for p in precisions)} "
            "(`gradflow.config`; `highest` is float32 on every backend, the default).",
        ]
    return lines


def _index_reproduce(mode: str, rec: Mapping[str, Any] | None) -> list[str]:
    """The wall time of the whole ``gradflow reproduce`` in ``mode`` against its budget."""
    if not rec or "seconds" not in rec:
        return []
    m = rec.get("machine_at_start", {})
    cpus = m.get("cpus_usable", m.get("cpus", "?"))
    load = m.get("load_average")
    load_txt = f", load average {load[0]:.2f} at the start" if load else ""
    verdict = "within" if rec["seconds"] < _BUDGETS[mode] else "OVER"
    compile_txt = f", XLA compile `{rec['compile']}`" if rec.get("compile") else ""
    if rec.get("matmul_precision"):
        compile_txt += f", matmul precision `{rec['matmul_precision']}`"
    cmd = "gradflow reproduce --quick" if mode == "quick" else "gradflow reproduce"
    return [
        "",
        f"The whole `{cmd}` (every experiment from scratch, the index, the paper's tables"
        f" and PDF: {rec.get('paper', '?')}): **{rec['seconds']:.0f} s** wall on {cpus}"
        f" CPUs{load_txt}{compile_txt} ({rec.get('finished', '?')}); {verdict} the "
        f"{_BUDGETS[mode]} s budget.",
    ]


def write_index(root: str | os.PathLike = ".") -> Path:
    """Write ``ROOT/experiments/README.md`` (:func:`index_markdown`) from the registry and
    ``ROOT/results/runtimes.json``; ``gradflow reproduce`` calls it in the gradflow checkout."""
    import json

    root = Path(root)
    rt = root / "results" / "runtimes.json"
    runtimes = json.loads(rt.read_text()) if rt.is_file() else {}
    return write_atomic(root / "experiments" / "README.md", index_markdown(runtimes))
