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


# the output a README example shows: the fenced block right after "prints ...:" that follows it
SHOWN = {
    i: m.group(1)
    for i, block in enumerate(BLOCKS)
    if (
        m := re.match(
            r"\s*prints[^\n]*:\n\n```\n(.*?)```",
            README.split(f"```python\n{block}```", 1)[1],
            flags=re.S,
        )
    )
}
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?%?$")


def _same_line(shown: str, printed: str) -> bool:
    """Token by token: words equal, numbers within 1% (or both below 1e-6: float32 noise)."""
    a, b = shown.split(), printed.split()
    if len(a) != len(b):
        return False
    for s, p in zip(a, b):
        if _NUMBER.match(s.strip("(),")) and _NUMBER.match(p.strip("(),")):
            x, y = float(s.strip("(),%")), float(p.strip("(),%"))
            if not (abs(x - y) <= 0.01 * max(abs(x), abs(y)) + 1e-3 * (abs(x) < 1)
                    or max(abs(x), abs(y)) < 1e-6):  # fmt: skip
                return False
        elif s != p:
            return False
    return True


def _check_shown(shown: str, printed: str) -> None:
    """Every shown line (but "...") appears in the printed output, in order."""
    lines = printed.splitlines()
    at = 0
    for want in shown.splitlines():
        if want.strip() in ("...", ""):
            continue
        hit = next((k for k in range(at, len(lines)) if _same_line(want, lines[k])), None)
        assert hit is not None, f"README shows a line the example does not print:\n{want}"
        at = hit + 1


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert printed.strip()  # every example prints something
    if i in SHOWN:
        _check_shown(SHOWN[i], printed)


def test_readme_shows_printed_output():
    assert SHOWN, "no README example shows its output"


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
