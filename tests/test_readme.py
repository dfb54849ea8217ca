"""The README's promises: its example runs, its two commands are the real ones, its figures exist,
and it points to the documentation and how to build it (the manual lives in docs/)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"<!-- readme-test -->\n```python\n(.*?)```", README, flags=re.S)


def test_examples_found():
    assert len(BLOCKS) >= 1


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()  # every example prints something


def test_two_commands_and_ci():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert re.findall(r"^make (\w+)", quick, flags=re.M) == ["reproduce", "test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^reproduce:", makefile, flags=re.M) and re.search(
        r"^test:", makefile, flags=re.M
    )
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_points_to_the_docs():
    assert "(docs/index.md)" in README and (ROOT / "docs" / "index.md").is_file()
    assert re.search(r"^make docs\b", README, flags=re.M)
    assert re.search(r"^docs:", (ROOT / "Makefile").read_text(), flags=re.M)


def test_figures_exist():
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert figures
    missing = [f for f in figures if not (ROOT / f).is_file()]
    assert not missing, f"README shows figures that are not committed: {missing}"
