r"""The paper's promises, checked without LaTeX: gradflow.paper's log checker and generated tables,
and the source paper/gradflow.tex itself.

Source checks (static; the CI build with latexmk and ``python -m gradflow.paper check`` does the
rest):

* every ``\includegraphics`` / ``\input`` target is something an experiment's ``plot()`` /
  ``tables()`` writes (named ``<experiment>_...``, found in its module) or is guarded by
  ``\IfFileExists`` on the same path;
* every cited key is in references.bib, every entry there is cited and has its required fields;
* only packages from Debian's texlive-latex-base, -latex-recommended, -fonts-recommended and
  lmodern are loaded;
* every experiment that exists has its macros, figures and table in the paper;
* no number is typed by hand in the running text. The heuristic: outside math, after removing
  comments, code, labels, citations and paths, no digit stands on its own (``float32`` or ``L2``
  are names, not numbers); inside math, no decimal with more than one digit after the point
  (``$g = 0.5$`` states a setting, ``$0.937$`` would be a measurement). Integers inside math
  (``$1/4$``, ``$25$``, ``$2^{100}$``) state the theory or the setting.
* the Python session printed in the toolkit section runs.
"""

from __future__ import annotations

import importlib.util
import json
import re
from importlib import metadata
from pathlib import Path

import pytest

import gradflow as gf
from gradflow import paper

ROOT = Path(__file__).resolve().parents[1]
TEX_PATH = ROOT / "paper" / "gradflow.tex"
BIB_PATH = ROOT / "paper" / "references.bib"
TEX = TEX_PATH.read_text()
BIB = BIB_PATH.read_text()

# ----------------------------------------------------------------------------- log snippets
# Real pdfTeX output (TeX Live 2022, max_print_line = 79), lines wrapped as TeX wraps them.

UNDEFINED = """\
LaTeX Warning: Reference `sec:missing-label-with-a-rather-long-name-that-wraps-
the-log-line-beyond' on page 1 undefined on input line 5.

Package natbib Warning: Citation `nokey2020' on page 1 undefined on input line\x20
5.

Package natbib Warning: There were undefined citations.

LaTeX Warning: There were undefined references.

LaTeX Warning: Label(s) may have changed. Rerun to get cross-references right.
"""

OVERFULL = """\
Overfull \\hbox (45.89929pt too wide) in paragraph at lines 5--7
[]\x20
 []

Overfull \\hbox (0.8pt too wide) in paragraph at lines 20--21
[]\\T1/lmr/m/n/10 text

LaTeX Warning: Float too large for page by 298.94444pt on input line 8.

Overfull \\vbox (20.0pt too high) detected at line 6
 []

Underfull \\hbox (badness 10000) in paragraph at lines 30--31
"""

ERRORS = f"""\
! Undefined control sequence.
l.4 \\undefinedmacro
{" " * 19}
! Package pdftex.def Error: File `figures/nothere.pdf' not found: using draft s
etting.

./gradflow.tex:12: LaTeX Error: File `tables/x.tex' not found.
LaTeX Warning: Label `a' multiply defined.
Missing character: There is no ^^A in font lmr10!
"""

CLEAN = """\
This is pdfTeX, Version 3.141592653-2.6-1.40.24 (TeX Live 2022/Debian) (preloaded format=pdflatex)
 restricted \\write18 enabled.
(./gradflow.tex
LaTeX2e <2022-11-01> patch level 1
Output written on gradflow.pdf (6 pages, 512345 bytes).
"""


def test_parse_log_undefined_references_and_citations():
    r = paper.parse_log(UNDEFINED)
    assert r.undefined_references == (
        "sec:missing-label-with-a-rather-long-name-that-wraps-the-log-line-beyond",
    )
    assert r.undefined_citations == ("nokey2020",)
    assert r.rerun and not r.errors and not r.overfull
    probs = r.problems()
    assert "undefined citation: nokey2020" in probs
    assert any(p.startswith("undefined reference: sec:missing") for p in probs)
    assert not r.ok()


def test_parse_log_summary_line_alone_still_fails():
    r = paper.parse_log("Package natbib Warning: There were undefined citations.\n")
    assert r.undefined_citations == ("?",)
    r = paper.parse_log("LaTeX Warning: There were undefined references.\n")
    assert r.undefined_references == ("?",) and not r.ok()


def test_parse_log_overfull_boxes_and_tolerance():
    r = paper.parse_log(OVERFULL)
    kinds = [(b.kind, b.pt) for b in r.overfull]
    assert kinds == [("hbox", 45.89929), ("hbox", 0.8), ("float", 298.94444), ("vbox", 20.0)]
    assert r.overfull[0].where == "in paragraph at lines 5--7"
    assert r.overfull[2].where == "on input line 8"
    # the 0.8pt box is within the default 1pt tolerance; underfull boxes never count
    assert len(r.problems()) == 3
    assert len(r.problems(tolerance_pt=0.5)) == 4
    # a float too large for the page always counts
    assert len(r.problems(tolerance_pt=1000.0)) == 1
    assert "float too large" in r.problems(tolerance_pt=1000.0)[0]
    with pytest.raises(ValueError, match="tolerance_pt must be >= 0"):
        r.problems(tolerance_pt=-1.0)


def test_parse_log_errors_in_both_styles():
    r = paper.parse_log(ERRORS)
    assert r.errors == (
        "Undefined control sequence.",
        "Package pdftex.def Error: File `figures/nothere.pdf' not found: using draft setting.",
        "LaTeX Error: File `tables/x.tex' not found.",
    )
    assert r.multiply_defined == ("a",)
    assert r.missing_characters == ("There is no ^^A in font lmr10!",)
    assert len(r.problems()) == 5


def test_parse_log_clean():
    r = paper.parse_log(CLEAN)
    assert r == paper.LogReport() and r.ok() and r.problems() == []


def test_parse_log_rejects_bytes():
    with pytest.raises(TypeError, match="must be a str"):
        paper.parse_log(b"! Undefined control sequence.")


def test_check_log_file_and_cli(tmp_path, capsys):
    log = tmp_path / "gradflow.log"
    with pytest.raises(FileNotFoundError, match="no LaTeX log"):
        paper.check_log(log)
    assert paper.main(["check", str(log)]) == 2
    log.write_text(CLEAN)
    assert paper.check_log(log).ok()
    assert paper.main(["check", str(log)]) == 0
    log.write_text(CLEAN + OVERFULL)
    assert paper.main(["check", str(log)]) == 1
    err = capsys.readouterr().err
    assert "3 problem(s)" in err and "45.8993pt too wide" in err
    assert paper.main(["check", str(log), "--tolerance", "50"]) == 1  # the float still counts


def test_check_tables_flags_formatting_slips(tmp_path, capsys):
    (tmp_path / "x.tex").write_text(
        "% generated by gradflow: do not edit\n"
        "\\begin{tabular}{lrr}\n\\toprule\na & b & c \\\\\n\\midrule\n"
        "one & 174 $\\pm$ 2.8e+02 & -0.567 \\\\\n"
        "two & $-0.5$ & $1.2\\times10^{-3}$ \\\\\n"
        "three & nan & 1.5 \\\\\n"
        "\\bottomrule\n\\end{tabular}\n"
    )
    (tmp_path / "x_macros.tex").write_text(
        "% generated by gradflow: do not edit\n"
        "\\newcommand{\\xNeg}{-0.5}\n\\newcommand{\\xSci}{3e-05}\n"
        "\\newcommand{\\xOk}{\\ensuremath{3.00\\times10^{-5}}}\n"
    )
    slips = paper.check_tables(tmp_path)
    assert slips == [
        "x.tex:6: scientific notation in text: '174 $\\\\pm$ 2.8e+02'",
        "x.tex:6: text-mode minus (a hyphen): '-0.567'",
        "x.tex:8: non-finite value: 'nan'",
        "x_macros.tex:3: scientific notation in text: '3e-05'",
    ]
    assert paper.check_tables(tmp_path / "empty") == []
    log = tmp_path / "gradflow.log"
    log.write_text(CLEAN)
    assert paper.main(["check", str(log), "--tables", str(tmp_path)]) == 0  # warnings only
    assert "4 formatting warning(s)" in capsys.readouterr().err
    assert paper.main(["check", str(log), "--tables", str(tmp_path), "--strict-tables"]) == 1


# ----------------------------------------------------------------------------- runtimes table

RUNTIMES = {
    "quick": {
        "layer_speed": {"seconds": 12.5, "run_s": 10.0, "resumed": False},
        "activation_derivatives": {"seconds": 2.25, "resumed": False},
    },
    "full": {"layer_speed": {"seconds": 95.0, "resumed": False}},
}


def test_runtimes_table(tmp_path):
    src = tmp_path / "runtimes.json"
    src.write_text(json.dumps(RUNTIMES))
    tex, macros = paper.runtimes_table(src, tmp_path / "tables")
    lines = tex.read_text().splitlines()
    assert r"\begin{tabular}{lrr}" in lines
    body = [ln for ln in lines if ln.endswith(r"\\")]
    assert body[0] == r"experiment & quick (s) & full (s) \\"
    # registry order: activation_derivatives before layer_speed; missing cell is --
    assert body[1] == r"activation derivatives & 2.25 & -- \\"
    assert body[2] == r"layer speed & 12.5 & 95 \\"
    assert body[3] == r"total & 14.8 & 95 \\"
    assert lines[lines.index(body[3]) - 1] == r"\midrule"
    m = macros.read_text()
    assert r"\newcommand{\runtimesQuickTotal}{14.8}" in m
    assert r"\newcommand{\runtimesQuickCount}{2}" in m
    assert r"\newcommand{\runtimesFullLayerSpeed}{95}" in m
    assert r"\newcommand{\runtimesQuickActivationDerivatives}{2.25}" in m
    assert "Command" not in m  # no whole-command record in this file


def test_runtimes_table_whole_command(tmp_path):
    src = tmp_path / "runtimes.json"
    record = {"seconds": 151.2, "machine_at_start": {"cpus": 8, "cpus_usable": 2}, "paper": "built"}
    src.write_text(json.dumps({**RUNTIMES, "reproduce": {"quick": record}}))
    tex, macros = paper.runtimes_table(src, tmp_path / "tables")
    m = macros.read_text()
    assert r"\newcommand{\runtimesQuickCommand}{151}" in m
    assert r"\newcommand{\runtimesQuickCommandCpus}{2}" in m
    assert r"\runtimesFullCommand" not in m
    assert "reproduce" not in tex.read_text()  # not a row of the per-experiment table


def test_runtimes_table_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no runtimes file"):
        paper.runtimes_table(tmp_path / "none.json", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        paper.runtimes_table(bad, tmp_path)
    bad.write_text(json.dumps({"medium": {}}))
    with pytest.raises(ValueError, match="keys among"):
        paper.runtimes_table(bad, tmp_path)
    bad.write_text(json.dumps({"quick": {"x": {"secs": 1}}}))
    with pytest.raises(ValueError, match="lacks a numeric 'seconds'"):
        paper.runtimes_table(bad, tmp_path)


WAYS = [
    {"method": "gradflow", "label": "gradflow", "role": "gradflow"},
    {"method": "naive_jax", "label": "naive JAX", "role": "peer"},
    {"method": "torch_func", "label": "torch.func", "role": "peer"},
    {"method": "pytorch", "label": "PyTorch", "role": "peer"},
]
BENCH = {
    "quick": False,
    "ways": WAYS,
    "machine": {
        "cpu_usable": 2,
        "load_average": [0.5, 0.4, 0.3],
        "jax_devices": ["cpu:0", "cpu:1"],
    },
    "matmul_peak_gflops": 100.0,
    "workloads": {
        "w1": {
            "title": "probe sweep, research size",
            "measurements": [
                {"method": "gradflow", "median_s": 0.01},
                {"method": "gradflow_blocked", "median_s": 0.005},
                {"method": "naive_jax", "median_s": 0.06},
                {"method": "pytorch", "median_s": 0.4},
            ],
            "speedups": {"gradflow": {"pytorch": 40.0, "naive_jax": 6.0}},
            "gflops": {"gradflow": 55.0},
        },
        "w4": {
            "title": "analytic chain gradients",
            "measurements": [
                {"method": "gradflow", "median_s": 0.002},
                {"method": "naive_jax", "median_s": 0.02},
            ],
            "speedups": {"gradflow": {"naive_jax": 10.0}},
        },
    },
}


def test_benchmarks_table(tmp_path):
    src = tmp_path / "results.json"
    src.write_text(json.dumps(BENCH))
    tex, macros = paper.benchmarks_table(src, tmp_path / "tables")
    body = [ln for ln in tex.read_text().splitlines() if ln.endswith(r"\\")]
    assert body[0] == (
        r"workload & gradflow (ms) & naive JAX (ms) & PyTorch (ms) & vs naive JAX & "
        r"vs PyTorch \\"
    )
    # proposed variants (gradflow_blocked) are not in the paper's table; a missing way is --
    assert body[1] == r"probe sweep, research size & 10 & 60 & 400 & 6 & 40 \\"
    assert body[2] == r"analytic chain gradients & 2 & 20 & -- & 10 & -- \\"
    m = macros.read_text()
    for line in (
        r"\newcommand{\benchmarksWorkloadOneSpeedupPytorch}{40}",
        r"\newcommand{\benchmarksWorkloadOneSpeedupNaiveJax}{6}",
        r"\newcommand{\benchmarksWorkloadOnePeakFraction}{0.55}",
        r"\newcommand{\benchmarksWorkloadFourSpeedupNaiveJax}{10}",
        r"\newcommand{\benchmarksMatmulPeak}{100}",
        r"\newcommand{\benchmarksCpus}{2}",
        r"\newcommand{\benchmarksDevices}{2}",
        r"\newcommand{\benchmarksLoadAverage}{0.5}",
        r"\newcommand{\benchmarksQuick}{0}",
    ):
        assert line in m, line
    assert "WorkloadFourSpeedupPytorch" not in m


def test_benchmarks_table_rejects_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="make bench"):
        paper.benchmarks_table(tmp_path / "none.json", tmp_path)
    bad = tmp_path / "results.json"
    for text in ("{", json.dumps({"machine": {}}), json.dumps({**BENCH, "workloads": {}})):
        bad.write_text(text)
        with pytest.raises(ValueError, match="not a benchmarks results file"):
            paper.benchmarks_table(bad, tmp_path)
    no_ways = {k: v for k, v in BENCH.items() if k != "ways"}
    bad.write_text(json.dumps(no_ways))
    with pytest.raises(
        ValueError, match=re.escape("no 'ways' (the file predates them): add them with `python -m")
    ):
        paper.benchmarks_table(bad, tmp_path)
    bad.write_text(json.dumps({**BENCH, "ways": WAYS[1:]}))
    with pytest.raises(ValueError, match="one way of role 'gradflow', got 0"):
        paper.benchmarks_table(bad, tmp_path)


def test_benchmarks_table_labels_come_from_the_file(tmp_path):
    """The paper reads the labels and the order of the headline ways from results.json."""
    bench = {**BENCH, "ways": [WAYS[0], {**WAYS[3], "label": "torch loop"}, WAYS[1]]}
    src = tmp_path / "results.json"
    src.write_text(json.dumps(bench))
    tex, _ = paper.benchmarks_table(src, tmp_path / "tables")
    body = [ln for ln in tex.read_text().splitlines() if ln.endswith(r"\\")]
    assert body[0] == (
        r"workload & gradflow (ms) & torch loop (ms) & naive JAX (ms) & vs torch loop & "
        r"vs naive JAX \\"
    )


def test_committed_benchmark_results_render(tmp_path):
    """benchmarks/results.json as committed (upgraded by --describe-ways, never rerun)."""
    src = Path(__file__).parents[1] / "benchmarks" / "results.json"
    tex, macros = paper.benchmarks_table(src, tmp_path)
    assert "gradflow (ms) & naive JAX (ms) & torch.func (ms) & PyTorch (ms)" in tex.read_text()
    assert r"\benchmarksWorkloadOneSpeedupTorchFunc" in macros.read_text()


def test_generate_writes_what_exists(tmp_path):
    assert paper.generate(tmp_path) == []
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "runtimes.json").write_text(json.dumps(RUNTIMES))
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results.json").write_text(json.dumps(BENCH))
    written = paper.generate(tmp_path)
    assert sorted(p.name for p in written) == [
        "benchmarks.tex", "benchmarks_macros.tex", "runtimes.tex", "runtimes_macros.tex",
    ]  # fmt: skip
    assert all(p.parent == tmp_path / "paper" / "tables" for p in written)
    assert paper.main(["generate", "--root", str(tmp_path)]) == 0
    written = paper.generate(tmp_path, mode="quick")
    assert written[-1].name == "build_macros.tex"
    text = written[-1].read_text()
    assert r"\newcommand{\gradflowMode}{quick}" in text
    assert rf"\newcommand{{\gradflowVersion}}{{{gf.__version__}}}" in text
    with pytest.raises(ValueError, match="mode must be one of"):
        paper.build_macros(tmp_path, "medium")


# ----------------------------------------------------------------------------- the source


def _strip_comments(text: str) -> str:
    return re.sub(r"(?<!\\)%.*", "", text)


SRC = _strip_comments(TEX)
BODY = SRC.split(r"\begin{document}", 1)[1].split(r"\end{document}", 1)[0]


def _group_end(text: str, start: int) -> int:
    """Index just past the brace group opening at ``text[start] == '{'``."""
    assert text[start] == "{", text[start : start + 20]
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{" and text[i - 1] != "\\":
            depth += 1
        elif text[i] == "}" and text[i - 1] != "\\":
            depth -= 1
            if depth == 0:
                return i + 1
    raise AssertionError("unbalanced braces in gradflow.tex")


def _guards() -> list[tuple[str, int, int]]:
    r"""(path, start, end) of the then-branch of every ``\IfFileExists{path}{...}``."""
    out = []
    for m in re.finditer(r"\\IfFileExists\{([^}]*)\}", SRC):
        start = m.end()
        out.append((m.group(1), start, _group_end(SRC, start)))
    return out


def _targets() -> list[tuple[str, str, int]]:
    """(kind, path, offset) of every input and graphic."""
    out = [("input", m.group(1), m.start()) for m in re.finditer(r"\\input\{([^}]*)\}", SRC)]
    out += [
        ("graphic", m.group(1), m.start())
        for m in re.finditer(r"\\includegraphics(?:\[[^\]]*\])?\{([^}]*)\}", SRC)
    ]
    return out


def _experiment_source(name: str) -> str | None:
    eps = {ep.name: ep for ep in metadata.entry_points(group=gf.experiment.ENTRY_POINT_GROUP)}
    if name not in eps:
        return None
    spec = importlib.util.find_spec(eps[name].module)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).read_text()


def _landed() -> list[str]:
    """Registered experiments whose module exists and defines its Experiment."""
    out = []
    for name in gf.experiment.names():
        if _experiment_source(name) is None:
            continue
        try:
            gf.experiment.get(name)
        except (ImportError, AttributeError, ValueError):
            continue  # a placeholder module (only a docstring) or one being written
        out.append(name)
    return out


def _produced_by_experiment(path: str) -> str | None:
    """The experiment whose plot()/tables() writes ``path`` (by its naming convention and its
    source), or None."""
    m = re.fullmatch(r"(figures|tables)/([a-z0-9_]+?)(\.pdf|\.tex)", path)
    if not m:
        return None
    folder, stem, ext = m.groups()
    if (folder, ext) not in (("figures", ".pdf"), ("tables", ".tex")):
        return None
    for name in sorted(gf.experiment.names(), key=len, reverse=True):
        if stem != name and not stem.startswith(name + "_"):
            continue
        src = _experiment_source(name)
        if src is None:
            return None
        if folder == "tables":
            if stem in (name, f"{name}_macros") and "def tables(" in src:
                return name
            what = stem[len(name) + 1 :]
        else:
            what = stem[len(name) + 1 :]
            if not what:
                return None
        if re.search(rf"(?:\{{NAME\}}|{name})_{re.escape(what)}\b", src):
            return name
        return None
    return None


def test_every_input_and_graphic_is_generated_or_guarded():
    guards = _guards()
    assert _targets(), "no \\input or \\includegraphics found"
    for kind, path, at in _targets():
        guarded = any(g == path and s <= at < e for g, s, e in guards)
        if guarded:
            continue
        assert _produced_by_experiment(path), (
            f"{kind} {path!r} is neither written by an experiment's plot()/tables() "
            f"(figures/<name>_<what>.pdf, tables/<name>.tex, tables/<name>_macros.tex) nor "
            f"guarded by \\IfFileExists{{{path}}}"
        )


def test_guarded_inputs_are_generated_by_gradflow_paper_or_benchmarks():
    # the optional inputs: runtimes (gradflow.paper.generate), benchmarks, the build record
    allowed = {"tables/runtimes", "tables/benchmarks", "tables/build"}
    for path, _, _ in _guards():
        assert re.sub(r"(_macros)?\.tex$", "", path) in allowed, path


def test_graphics_use_the_column_or_text_width():
    for m in re.finditer(r"\\includegraphics(\[[^\]]*\])?\{([^}]*)\}", BODY):
        assert m.group(1) in (r"[width=\columnwidth]", r"[width=\textwidth]"), m.group(0)
    # full-width graphics sit in figure*, column-width ones in figure
    for env, width in (("figure", r"\columnwidth"), (r"figure\*", r"\textwidth")):
        for block in re.findall(rf"\\begin\{{{env}\}}(.*?)\\end\{{{env}\}}", BODY, flags=re.S):
            for w in re.findall(r"width=(\\[a-z]+)", block):
                assert w == width, (env, block[:80])


def test_every_landed_experiment_is_in_the_paper():
    landed = _landed()
    assert "layer_speed" in landed
    for name in landed:
        assert f"\\input{{tables/{name}_macros.tex}}" in SRC, f"{name}: macros not loaded"
        assert f"figures/{name}_" in BODY, f"{name}: no figure in the paper"
        assert f"\\input{{tables/{name}.tex}}" in BODY, f"{name}: no table in the paper"


def _bib_entries() -> dict[str, tuple[str, str]]:
    """key -> (entry type, body)."""
    out = {}
    for m in re.finditer(r"@(\w+)\s*\{\s*([^,\s]+)\s*,", BIB):
        assert m.group(2) not in out, f"duplicate bib key {m.group(2)}"
        start = BIB.index("{", m.start())
        out[m.group(2)] = (m.group(1).lower(), BIB[start : _group_end(BIB, start)])
    return out


def _cited() -> set[str]:
    keys = set()
    for m in re.finditer(r"\\(?:no)?cite[a-zA-Z]*\*?(?:\[[^\]]*\]){0,2}\{([^}]*)\}", BODY):
        keys |= {k.strip() for k in m.group(1).split(",") if k.strip()}
    return keys


REQUIRED = {
    "article": ("author", "title", "journal", "year"),
    "inproceedings": ("author", "title", "booktitle", "year"),
    "incollection": ("author", "title", "booktitle", "publisher", "year"),
    "book": ("author", "title", "publisher", "year"),
    "mastersthesis": ("author", "title", "school", "year"),
    "phdthesis": ("author", "title", "school", "year"),
    "misc": ("author", "title", "year"),
}


def test_citations_resolve_and_bib_entries_are_used_and_complete():
    entries = _bib_entries()
    cited = _cited()
    assert cited, "the paper cites nothing"
    assert not cited - set(entries), f"cited but not in references.bib: {cited - set(entries)}"
    assert not set(entries) - cited, f"in references.bib but never cited: {set(entries) - cited}"
    for key, (kind, body) in entries.items():
        assert kind in REQUIRED, f"{key}: entry type @{kind} not one of {sorted(REQUIRED)}"
        for field in REQUIRED[kind]:
            assert re.search(rf"\b{field}\s*=", body), f"{key}: missing {field}"
        year = re.search(r"\byear\s*=\s*\{(\d{4})\}", body)
        assert year and 1900 < int(year.group(1)) < 2100, f"{key}: bad year"


# Debian packages texlive-latex-base, texlive-latex-recommended, texlive-fonts-recommended, lmodern
# (checked with `dpkg -S $(kpsewhich NAME.sty)`); NOT cleveref, siunitx, enumitem, multirow,
# placeins, upquote, nicefrac, ... (texlive-latex-extra / -science).
ALLOWED_PACKAGES = {
    "amsmath", "amssymb", "amsfonts", "mathtools", "graphicx", "graphics", "booktabs", "xcolor",
    "caption", "subcaption", "fancyvrb", "listings", "microtype", "natbib", "hyperref", "url",
    "geometry", "fontenc", "inputenc", "lmodern", "array", "tabularx", "dcolumn", "bm", "xspace",
    "textcomp", "verbatim", "float", "babel", "calc", "ifthen", "afterpage", "etoolbox",
}  # fmt: skip


def test_only_debian_base_and_recommended_packages():
    used = set()
    for m in re.finditer(r"\\(?:usepackage|RequirePackage)(?:\[[^\]]*\])?\{([^}]*)\}", SRC):
        used |= {p.strip() for p in m.group(1).split(",") if p.strip()}
    assert used, "no packages found"
    assert not used - ALLOWED_PACKAGES, (
        f"packages outside the allowed set: {used - ALLOWED_PACKAGES}"
    )
    assert re.search(r"\\documentclass\[[^\]]*twocolumn[^\]]*\]\{article\}", SRC)
    assert r"\bibliographystyle{plainnat}" in BODY


def _prose(body: str) -> tuple[str, str]:
    """(text outside math, text inside math) of the body, without code, labels, citations,
    paths and environment options."""
    t = re.sub(r"\\begin\{(gfcode|verbatim|Verbatim)\}.*?\\end\{\1\}", " ", body, flags=re.S)
    t = re.sub(r"\\(?:code|texttt|url|label|ref|eqref|input|IfFileExists)\{[^}]*\}", " ", t)
    t = re.sub(r"\\(?:no)?cite[a-zA-Z]*\*?(?:\[[^\]]*\]){0,2}\{[^}]*\}", " ", t)
    t = re.sub(r"\\includegraphics(?:\[[^\]]*\])?\{[^}]*\}", " ", t)
    t = re.sub(r"\\href\{[^}]*\}", " ", t)
    t = re.sub(r"\\ifnum\\[A-Za-z]+\s*[=<>]\s*-?\d+", " ", t)  # TeX conditionals on macros
    display = r"\\begin\{(equation|align|gather|multline)(\*?)\}(.*?)\\end\{\1\2\}"
    math = [m[2] for m in re.findall(display, t, flags=re.S)]
    t = re.sub(display, " ", t, flags=re.S)
    inline = r"\$(.+?)\$|\\\[(.+?)\\\]|\\\((.+?)\\\)"
    math += ["".join(m) for m in re.findall(inline, t, flags=re.S)]
    text = re.sub(inline, " ", t, flags=re.S)
    text = re.sub(r"\\begin\{[^}]*\}(?:\[[^\]]*\])?", " ", text)
    return text, " ".join(math)


def test_no_hand_typed_numbers():
    text, math = _prose(BODY)
    # a digit that is not part of a name (float32, L2, x64) or a macro
    loose = re.findall(r"(?<![A-Za-z0-9_\\])\d+(?:\.\d+)?(?![A-Za-z0-9])", text)
    assert not loose, f"numbers typed in the running text (use generated macros): {loose}"
    measured = re.findall(r"\d*\.\d{2,}", math)
    assert not measured, f"decimals typed in math (use generated macros): {measured}"


def test_number_heuristic_catches_typed_numbers():
    text, math = _prose(r"The ratio is 4.83 and $q = 0.937$ but $\sigma' \le 1/4$, float32 ok.")
    assert re.findall(r"(?<![A-Za-z0-9_\\])\d+(?:\.\d+)?(?![A-Za-z0-9])", text) == ["4.83"]
    assert re.findall(r"\d*\.\d{2,}", math) == ["0.937"]


PYTHON_BLOCKS = re.findall(
    r"% paper-test: python\n\\begin\{gfcode\}\n(.*?)\\end\{gfcode\}", TEX, flags=re.S
)


def test_the_printed_session_runs(capsys):
    assert PYTHON_BLOCKS, "no '% paper-test: python' block before a gfcode listing"
    for i, block in enumerate(PYTHON_BLOCKS):
        exec(compile(block, f"gradflow.tex listing {i}", "exec"), {"__name__": "__paper__"})
    assert capsys.readouterr().out.strip()


def test_code_lines_fit_the_column():
    # footnotesize Latin Modern typewriter: 0.525 em of 8 pt per character, column 3.4 in
    limit = int(3.4 * 72.27 / (0.525 * 8)) - 2
    for block in re.findall(r"\\begin\{gfcode\}\n(.*?)\\end\{gfcode\}", TEX, flags=re.S):
        for line in block.splitlines():
            assert len(line) <= limit, f"listing line longer than {limit} characters: {line!r}"


def test_benchmarks_table_with_torch_func_and_the_compile_workload(tmp_path):
    """torch.func gets a time and a speed-up column; a workload without a gradflow way (the
    compile-time one) gets no row."""
    bench = json.loads(json.dumps(BENCH))
    w1 = bench["workloads"]["w1"]
    w1["measurements"].append({"method": "torch_func", "median_s": 0.02})
    w1["speedups"]["gradflow"]["torch_func"] = 2.0
    bench["workloads"]["compile"] = {
        "title": "compile time",
        "measurements": [{"method": "gradflow_readme_depth10", "median_s": 0.1}],
        "speedups": {},
    }
    src = tmp_path / "results.json"
    src.write_text(json.dumps(bench))
    tex, macros = paper.benchmarks_table(src, tmp_path / "tables")
    body = [ln for ln in tex.read_text().splitlines() if ln.endswith(r"\\")]
    assert body[0] == (
        r"workload & gradflow (ms) & naive JAX (ms) & torch.func (ms) & PyTorch (ms) & "
        r"vs naive JAX & vs torch.func & vs PyTorch \\"
    )
    assert body[1] == r"probe sweep, research size & 10 & 60 & 20 & 400 & 6 & 2 & 40 \\"
    assert len(body) == 3 and "compile time" not in tex.read_text()
    assert r"\newcommand{\benchmarksWorkloadOneSpeedupTorchFunc}{2}" in macros.read_text()
