"""The generated pages of gradflow's documentation, as Markdown text (no Sphinx needed).

* :func:`api_pages`: one page per public module of ``gradflow/__init__.py`` with an entry for
  every name of the module's ``__all__``;
* :func:`gallery_pages`: one page per experiment registered under the ``gradflow.experiments``
  entry points (:func:`gradflow.experiment.registry`), with its claim, source, commands, figures,
  configs and measured runtimes (:func:`runtimes`);
* :func:`benchmark_sections`: the benchmark reports committed under ``benchmarks/``.

``gradflow_docs`` (the Sphinx extension beside this file) writes them when a build starts;
``tests/test_docs.py`` tests them without building.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODES = ("quick", "full")


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it already holds it (keeps Sphinx's rebuilds
    incremental); returns whether it wrote."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def sync_dir(directory: Path, pages: Mapping[str, str]) -> None:
    """Make ``directory`` hold exactly ``pages`` (``{file name: text}``): write the changed ones,
    delete ``.md`` files no longer generated (an experiment that left the registry)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in pages.items():
        write_if_changed(directory / name, text)
    for stale in directory.glob("*.md"):
        if stale.name not in pages:
            stale.unlink()


# --- API reference ----------------------------------------------------------------------------


def public_modules() -> list[str]:
    """The public modules re-exported by ``gradflow/__init__.py``, in its ``__all__`` order."""
    import gradflow

    return [n for n in gradflow.__all__ if inspect.ismodule(getattr(gradflow, n, None))]


def public_names(module: str) -> list[str]:
    """Every public name of ``gradflow.<module>``: its ``__all__`` (each gradflow module has one;
    the public-API test pins it)."""
    mod = importlib.import_module(f"gradflow.{module}")
    names = getattr(mod, "__all__", None)
    if names is None:
        raise ValueError(f"gradflow.{module} has no __all__: its public names are undefined")
    return list(names)


def _directive(module: str, name: str) -> list[str]:
    obj = getattr(importlib.import_module(f"gradflow.{module}"), name)
    target = f"gradflow.{module}.{name}"
    if inspect.isclass(obj):
        # NamedTuples list their fields in the class docstring; their generated field docs
        # ("Alias for field number 0") say nothing, so only methods of other classes are shown.
        if issubclass(obj, tuple) and hasattr(obj, "_fields"):
            return [f".. autoclass:: {target}", "   :no-members:"]
        return [f".. autoclass:: {target}", "   :members:"]
    if inspect.isroutine(obj):
        return [f".. autofunction:: {target}"]
    lines = [f".. autodata:: {target}"]
    if len(repr(obj)) > 90:
        lines.append("   :no-value:")
    return lines


def api_page(module: str) -> str:
    """The reference page of ``gradflow.<module>``: the module docstring, a summary table of its
    public names, then one autodoc entry per name."""
    names = public_names(module)
    lines = [
        f"# `gradflow.{module}`",
        "",
        "```{eval-rst}",
        f".. automodule:: gradflow.{module}",
        "   :no-members:",
        "",
        ".. rubric:: Public names",
        "",
        ".. autosummary::",
        "   :nosignatures:",
        "",
        *(f"   {n}" for n in names),
        "",
        ".. rubric:: Reference",
        "",
    ]
    for n in names:
        lines += [*_directive(module, n), ""]
    lines += ["```", ""]
    return "\n".join(lines)


def api_index(modules: list[str]) -> str:
    """The API index: one line per public module, its one-line summary from the module
    docstring, and the toctree of the module pages."""
    lines = [
        "# API reference",
        "",
        "Every public name of every module that `import gradflow as gf` re-exports: the modules "
        "below are `gf.<module>`, and each page documents every name of the module's `__all__`, "
        "with its math, shapes and the paper it comes from.",
        "",
        "| module | what it holds |",
        "| --- | --- |",
    ]
    for m in modules:
        doc = inspect.getdoc(importlib.import_module(f"gradflow.{m}")) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        first = re.sub(r":math:`([^`]*)`", r"$\1$", first).replace("|", r"\|")
        lines.append(f"| [`gradflow.{m}`]({m}.md) | {first} |")
    lines += ["", "```{toctree}", ":hidden:", "", *modules, "```", ""]
    return "\n".join(lines)


def api_pages() -> dict[str, str]:
    """``{file name: Markdown}`` of the API reference (``index.md`` and one page per module)."""
    modules = public_modules()
    pages = {f"{m}.md": api_page(m) for m in modules}
    pages["index.md"] = api_index(modules)
    return pages


# --- measured runtimes ------------------------------------------------------------------------


def _seconds_cell(cell: str) -> float | None:
    m = re.fullmatch(r"\s*([0-9.]+)\s*s\s*", cell)
    return float(m.group(1)) if m else None


def index_runtimes(text: str) -> dict[str, dict[str, float]]:
    """The quick and full wall times in the experiments index (``experiments/README.md``, written
    by :func:`gradflow.experiment.write_index`): ``{mode: {name: seconds}}``; ``--`` cells are
    left out."""
    lines = text.splitlines()
    header = next((i for i, ln in enumerate(lines) if ln.startswith("| experiment |")), None)
    out: dict[str, dict[str, float]] = {m: {} for m in MODES}
    if header is None:
        return out
    columns = [c.strip() for c in lines[header].strip().strip("|").split("|")]
    # counted from the right: a claim may hold a "|" (||dC/db_l||) that splits its cell
    where = {m: columns.index(m) - len(columns) for m in MODES if m in columns}
    for ln in lines[header + 2 :]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([a-z][a-z0-9_]*)`", cells[0])
        if not name or len(cells) < len(columns):
            continue
        for mode, col in where.items():
            secs = _seconds_cell(cells[col])
            if secs is not None:
                out[mode][name.group(1)] = secs
    return out


def index_devices(text: str) -> str | None:
    """The "Wall times measured on: ..." line of the experiments index, if any."""
    m = re.search(r"^Wall times measured on: (.*?)\.?$", text, flags=re.M)
    return m.group(1) if m else None


def runtimes(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Measured wall times: ``{mode: {name: {"seconds": s, "devices": ..., "from": file}}}``.

    Each (mode, experiment) comes from ``results/runtimes.json`` (written by ``gradflow run`` and
    ``gradflow reproduce`` on this checkout) where it holds one, else from the committed
    experiments index ``experiments/README.md``.
    """
    root = Path(root)
    out: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in MODES}
    index = root / "experiments" / "README.md"
    if index.is_file():
        text = index.read_text()
        devices = index_devices(text)
        for mode, per in index_runtimes(text).items():
            for name, secs in per.items():
                out[mode][name] = {
                    "seconds": secs,
                    "devices": devices,
                    "from": "experiments/README.md",
                }
    rt = root / "results" / "runtimes.json"
    if rt.is_file():
        data = json.loads(rt.read_text())
        for mode in MODES:
            for name, entry in (data.get(mode) or {}).items():
                if isinstance(entry, Mapping) and "seconds" in entry:
                    out[mode][name] = {
                        "seconds": float(entry["seconds"]),
                        "devices": entry.get("devices"),
                        "from": "results/runtimes.json",
                    }
    return out


# --- the experiment gallery -------------------------------------------------------------------


def _literal(value: Any) -> str:
    text = repr(value)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


def _config_table(configs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(k for m in MODES for k in configs.get(m, {})))
    lines = ["| key | quick | full |", "| --- | --- | --- |"]
    for k in keys:
        cells = [_literal(configs[m][k]) if k in configs.get(m, {}) else "--" for m in MODES]
        lines.append(f"| `{k}` | {cells[0]} | {cells[1]} |")
    return lines


def _runtime_text(name: str, times: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    parts = []
    for mode in MODES:
        entry = times.get(mode, {}).get(name)
        if entry is None:
            parts.append(f"{mode}: not measured in this checkout")
            continue
        where = f" on {entry['devices']}" if entry.get("devices") else ""
        parts.append(f"{mode}: **{entry['seconds']:.0f} s**{where} (`{entry['from']}`)")
    return "; ".join(parts)


def gallery_page(exp: Any, times: Mapping, root: Path, page_dir: Path) -> str:
    """One experiment's gallery page (``exp`` a :class:`gradflow.experiment.Experiment`)."""
    name = exp.name
    run = exp.run
    module = getattr(run, "__module__", None)
    lines = [
        f"# {name}",
        "",
        f"**Claim.** {exp.claim}",
        "",
        f"**Source.** {exp.source}",
        "",
        "**Run it.**",
        "",
        "```bash",
        f"gradflow run {name} --quick    # the quick config (seconds)",
        f"gradflow run {name}            # the full config: the paper's figures",
        f"gradflow plot {name}           # figures and tables again, from the saved results",
        "```",
        "",
        f"**Measured wall time** (run, figures and tables). {_runtime_text(name, times)}.",
        "",
    ]
    figures_dir = Path(root) / "paper" / "figures"
    shown = [f for f in exp.figures if (figures_dir / f"{f}.png").is_file()]
    missing = [f for f in exp.figures if f not in shown]
    if shown:
        lines += ["## Figures", ""]
        for stem in shown:
            rel = os.path.relpath(figures_dir / f"{stem}.png", page_dir)
            lines += [
                f"```{{figure}} {rel}",
                f":alt: {stem}",
                "",
                f"`paper/figures/{stem}.png` (and `.pdf`), drawn by `gradflow plot {name}` from"
                " the saved results.",
                "```",
                "",
            ]
    if missing:
        lines += [
            "Not in this checkout (drawn by `gradflow run "
            f"{name}`): " + ", ".join(f"`paper/figures/{f}.png`" for f in missing) + ".",
            "",
        ]
    lines += ["## Configs", "", "`--set key=value` overrides any key.", ""]
    configs = {m: c.to_dict() if hasattr(c, "to_dict") else c for m, c in exp.configs.items()}
    lines += [*_config_table(configs), ""]
    if module:
        lines += [
            "## What it does",
            "",
            "```{eval-rst}",
            f".. automodule:: {module}",
            "   :no-members:",
            "```",
            "",
        ]
    return "\n".join(lines)


def gallery_index(experiments: list[Any], times: Mapping, root: Path, page_dir: Path) -> str:
    """The gallery's front page: a card per registered experiment, in registry order."""
    lines = [
        "# Experiment gallery",
        "",
        "One page per experiment registered under the `gradflow.experiments` entry points "
        "(`gradflow list`), generated from the registry when the documentation is built: an "
        "experiment added to the registry appears here by itself. Each reproduces a claim of a "
        "classic paper, with a quick config (seconds) and a full config (the paper's figures).",
        "",
        "| experiment | claim | quick | full |",
        "| --- | --- | --- | --- |",
    ]
    for exp in experiments:
        cells = []
        for mode in MODES:
            entry = times.get(mode, {}).get(exp.name)
            cells.append(f"{entry['seconds']:.0f}\u00a0s" if entry else "--")  # no break
        claim = exp.claim.replace("|", r"\|")
        lines.append(f"| [{exp.name}]({exp.name}.md) | {claim} | {cells[0]} | {cells[1]} |")
    lines += [""]
    figures_dir = Path(root) / "paper" / "figures"
    thumbs = []
    for exp in experiments:
        stem = next((f for f in exp.figures if (figures_dir / f"{f}.png").is_file()), None)
        if stem:
            thumbs.append((exp.name, os.path.relpath(figures_dir / f"{stem}.png", page_dir)))
    if thumbs:
        lines += ["## Headline figures", ""]
        for name, rel in thumbs:
            lines += [
                f"```{{figure}} {rel}",
                f":alt: {name}",
                ":figclass: gf-thumb",
                f":target: {name}.html",
                "",
                f"[{name}]({name}.md)",
                "```",
                "",
            ]
    lines += ["```{toctree}", ":hidden:", "", *(e.name for e in experiments), "```", ""]
    return "\n".join(lines)


def gallery_pages(root: Path, page_dir: Path) -> dict[str, str]:
    """``{file name: Markdown}`` of the gallery: ``index.md`` and one page per registered
    experiment (:func:`gradflow.experiment.registry`)."""
    from gradflow import experiment

    experiments = list(experiment.registry().values())
    times = runtimes(root)
    pages = {f"{e.name}.md": gallery_page(e, times, root, page_dir) for e in experiments}
    pages["index.md"] = gallery_index(experiments, times, root, page_dir)
    return pages


# --- benchmarks -------------------------------------------------------------------------------


def benchmark_results(root: Path) -> list[Path]:
    """The committed benchmark results: ``benchmarks/results.json`` and any
    ``benchmarks/<where>/results.json`` (a GPU run, say), without the ``--quick`` toy sizes."""
    bench = Path(root) / "benchmarks"
    found = [bench / "results.json", *sorted(bench.glob("*/results.json"))]
    return [p for p in found if p.is_file() and p.parent.name != "quick"]


def benchmark_sections(root: Path) -> list[tuple[str, str]]:
    """``[(title, Markdown)]``, one per results file, rendered by
    ``benchmarks.report.markdown`` (the same text as the committed ``RESULTS.md``) with its
    headings moved one level down to sit under the page's own title."""
    from benchmarks import report

    out = []
    for path in benchmark_results(root):
        results = json.loads(path.read_text())
        text = report.markdown(results)
        body = text.split("\n", 1)[1] if text.startswith("# ") else text
        body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)
        machine = results.get("machine", {})
        backend = machine.get("jax_backend")
        rel = path.relative_to(root).as_posix()
        title = f"{backend.upper()}: `{rel}`" if backend else f"`{rel}`"
        out.append((title, body))
    return out


def performance_page(root: Path) -> str:
    """The performance page: every committed benchmark report (:func:`benchmark_sections`)."""
    lines = [
        "# Performance",
        "",
        "gradflow's speed against a PyTorch loop and naive JAX on the same machine, in the same "
        "run (`make bench`; `python -m benchmarks.run --help`). This page is generated from the "
        "committed results (`benchmarks/results.json`, and `benchmarks/<where>/results.json` "
        "for runs on other hardware, a GPU say) when the documentation is built; every number "
        "below comes from them.",
        "",
    ]
    sections = benchmark_sections(root)
    if not sections:
        lines += [
            "No benchmark results are committed in this checkout: `make bench` makes them.",
            "",
        ]
    for title, body in sections:
        lines += [f"## {title}", "", body.strip(), ""]
    return "\n".join(lines)
