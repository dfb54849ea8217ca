"""The documentation's generated pages (docs/_ext/docgen.py), checked without building the site.

``make docs`` builds the site (CI does, with warnings as errors, running every example on its
pages); these tests pin what the generators promise: the API reference has an entry for every
public name, the gallery a page for every registered experiment with its claim, source, command,
figures and measured runtime, and the pages are all reachable from the index.
"""

import json
import re
import sys
from pathlib import Path

import pytest

import gradflow as gf

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import docgen  # noqa: E402


def test_api_reference_covers_every_public_name():
    pages = docgen.api_pages()
    modules = [n for n in gf.__all__ if n != "__version__"]
    assert sorted(pages) == sorted([*(f"{m}.md" for m in modules), "index.md"])
    for m in modules:
        page = pages[f"{m}.md"]
        assert f".. automodule:: gradflow.{m}" in page
        for name in getattr(gf, m).__all__:
            entry = rf"^\.\. auto(function|class|data):: gradflow\.{m}\.{name}$"
            assert re.search(entry, page, flags=re.M), f"gradflow.{m}.{name} has no entry"
        assert f"[`gradflow.{m}`]({m}.md)" in pages["index.md"]


def test_api_entry_kinds():
    page = docgen.api_page("analytic")
    assert ".. autofunction:: gradflow.analytic.chain_grads" in page
    assert ".. autoclass:: gradflow.analytic.ChainGrads\n   :no-members:" in page  # a NamedTuple
    page = docgen.api_page("activations")
    assert ".. autoclass:: gradflow.activations.Activation\n   :members:" in page
    assert ".. autodata:: gradflow.activations.SELU_ALPHA\n" in page


def test_every_documented_constant_has_its_doc_comment():
    """Sphinx's autodata reads a ``#:`` comment above the assignment (or a string just below it)
    in the public module's own source; a constant merely imported there is shown with its type's
    docstring (a dict's, whose reST broke the build), so each is assigned and documented where it
    is public."""
    modules = [n for n in gf.__all__ if n != "__version__"]
    checked = 0
    for m in modules:
        entries = rf"^\.\. autodata:: gradflow\.{m}\.(\w+)$"
        for name in re.findall(entries, docgen.api_page(m), re.M):
            module = getattr(gf, m)
            source = Path(module.__file__).read_text().splitlines()
            at = [i for i, line in enumerate(source) if re.match(rf"{name}\s*(:[^=]*)?=", line)]
            assert at, f"gradflow.{m}.{name} is not assigned in {module.__file__}"
            above = at[0] > 0 and source[at[0] - 1].startswith("#:")
            below = at[0] + 1 < len(source) and source[at[0] + 1].lstrip().startswith('"""')
            assert above or below, f"gradflow.{m}.{name} has no doc comment at its assignment"
            checked += 1
    assert checked >= 3


def test_public_names_needs_all(monkeypatch):
    monkeypatch.delattr(gf.rng, "__all__")
    with pytest.raises(ValueError, match=r"gradflow\.rng has no __all__"):
        docgen.public_names("rng")


RUNTIMES = {
    "quick": {
        "layer_speed": {"seconds": 7.4, "devices": "1 x cpu"},
        "criticality": {"seconds": 12.0, "devices": "1 x cpu"},
    },
    "full": {"layer_speed": {"seconds": 31.2, "devices": "1 x cpu"}},
}


def test_index_runtimes_read_what_write_index_writes():
    """The gallery reads the committed index back: the round trip keeps every timing, also for
    rows whose claim holds a '|' (layer_speed's ||dC/db_l||) that splits its Markdown cell."""
    assert "||" in gf.experiment.get("layer_speed").claim
    text = gf.experiment.index_markdown(RUNTIMES)
    got = docgen.index_runtimes(text)
    want = {m: {n: round(e["seconds"]) for n, e in per.items()} for m, per in RUNTIMES.items()}
    assert got == want
    assert docgen.index_devices(text) == "1 x cpu"
    assert docgen.index_runtimes("no table here") == {"quick": {}, "full": {}}


def _root(tmp_path, runtimes_json=None, index=RUNTIMES, figures=()):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "README.md").write_text(gf.experiment.index_markdown(index))
    if runtimes_json is not None:
        (tmp_path / "results").mkdir()
        (tmp_path / "results" / "runtimes.json").write_text(json.dumps(runtimes_json))
    (tmp_path / "paper" / "figures").mkdir(parents=True)
    for stem in figures:
        (tmp_path / "paper" / "figures" / f"{stem}.png").write_bytes(b"png")
    return tmp_path


def test_runtimes_prefer_results_json(tmp_path):
    fresh = {"quick": {"layer_speed": {"seconds": 5.0, "devices": "2 x cpu"}}}
    times = docgen.runtimes(_root(tmp_path, runtimes_json=fresh))
    assert times["quick"]["layer_speed"] == {
        "seconds": 5.0,
        "devices": "2 x cpu",
        "from": "results/runtimes.json",
    }
    assert times["quick"]["criticality"]["from"] == "experiments/README.md"
    assert times["full"]["layer_speed"]["seconds"] == 31.0


def test_gallery_has_every_registered_experiment(tmp_path):
    root = _root(tmp_path, figures=("layer_speed_training",))
    pages = docgen.gallery_pages(root, tmp_path / "docs" / "gallery")
    names = gf.experiment.names()
    assert sorted(pages) == sorted([*(f"{n}.md" for n in names), "index.md"])
    for name in names:
        exp = gf.experiment.get(name)
        page = pages[f"{name}.md"]
        assert exp.claim in page and exp.source in page
        assert f"gradflow run {name} --quick" in page
        assert f".. automodule:: {exp.run.__module__}" in page
        assert f"[{name}]({name}.md)" in pages["index.md"]
    page = pages["layer_speed.md"]
    assert "quick: **7 s** on 1 x cpu (`experiments/README.md`)" in page
    assert "full: **31 s**" in page
    assert "```{figure} ../../paper/figures/layer_speed_training.png" in page
    assert "Not in this checkout (drawn by `gradflow run layer_speed`)" in page  # layer_speed_init
    assert "quick: not measured in this checkout" in pages["remedies.md"]
    assert "```{figure}" not in pages["remedies.md"]


def test_gallery_picks_up_a_new_experiment(tmp_path, monkeypatch):
    """A registered experiment appears in the gallery with nothing else to edit."""
    from cli_fake_experiment import EXPERIMENT as fake  # tests/cli_fake_experiment.py

    real = gf.experiment.registry

    def registry():
        return {**real(), fake.name: fake}

    monkeypatch.setattr(gf.experiment, "registry", registry)
    pages = docgen.gallery_pages(_root(tmp_path), tmp_path / "docs" / "gallery")
    assert f"{fake.name}.md" in pages and fake.claim in pages[f"{fake.name}.md"]
    assert f"[{fake.name}]({fake.name}.md)" in pages["index.md"]


def test_performance_page_from_committed_results(tmp_path):
    page = docgen.performance_page(ROOT)
    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    assert "## CPU: `benchmarks/results.json`" in page
    assert f"| gradflow commit | {results['machine']['gradflow_commit']} |" in page
    assert not re.search(r"^# gradflow benchmarks", page, flags=re.M)  # one title per page
    (tmp_path / "benchmarks").mkdir()
    assert "No benchmark results are committed" in docgen.performance_page(tmp_path)


def test_every_page_is_in_a_toctree():
    index = (DOCS / "index.md").read_text()
    toctree = index.split("```{toctree}", 1)[1].split("```", 1)[0]
    entries = {ln.strip() for ln in toctree.splitlines() if ln.strip() and ":" not in ln}
    pages = {p.stem for p in DOCS.glob("*.md")} - {"index", "performance"}
    assert pages <= entries, f"pages missing from the index's toctree: {pages - entries}"
    assert {"api/index", "gallery/index", "performance"} <= entries


def test_make_docs_and_ci():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndocs:", 1)[1].split("\n\n", 1)[0]
    assert "sphinx -W" in recipe and "docs/_build/html" in recipe
    commands = re.findall(r"^make (\w+)", (ROOT / ".ci" / "run").read_text(), flags=re.M)
    assert commands[0] == "test" and "docs" in commands  # make test first, unchanged
    pyproject = (ROOT / "pyproject.toml").read_text()
    extra = pyproject.split("\ndocs = [", 1)[1].split("]", 1)[0]
    extra = re.sub(r"#.*", "", extra)  # comments
    lock = {ln.split("==")[0].lower() for ln in (ROOT / "requirements.lock").read_text().split()}
    for requirement in re.findall(r'"([A-Za-z0-9_.-]+)', extra):
        assert requirement.lower() in lock, f"{requirement} is not pinned in requirements.lock"


def _shell_commands(text: str) -> list[list[str]]:
    """The ``gradflow ...`` commands of a Markdown text's bash/console blocks, as argv lists."""
    import shlex

    commands = []
    for block in re.findall(r"```(?:bash|console)\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.removeprefix("$ "), comments=True)
            words = [w for w in words if w not in ("&", "&&")]
            if "gradflow" in words:
                commands.append(words[words.index("gradflow") + 1 :])
    return commands


def test_every_shown_command_parses():
    """Every `gradflow ...` line the docs and README show is accepted by the command's parser
    (nothing runs), and names registered experiments; the error example is the one exception."""
    from gradflow import cli

    texts = [p.read_text() for p in DOCS.glob("*.md")] + [(ROOT / "README.md").read_text()]
    commands = [c for t in texts for c in _shell_commands(t)]
    assert len(commands) >= 15
    names = set(gf.experiment.names())
    for argv in commands:
        if argv in (["--version"], ["diagnose", "--activation", "sigmod"]):
            continue
        args = cli.build_parser().parse_args(argv)
        if args.command in ("run", "plot"):
            assert args.name in names, argv
        assert set(getattr(args, "only", None) or ()) <= names, argv
