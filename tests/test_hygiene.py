"""Source hygiene: no control bytes, no private JAX imports outside the one guarded module, and
no citations of files that are not in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    p for d in ("gradflow", "experiments", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_file(path):
    text = path.read_text(encoding="utf-8")
    bad = sorted({hex(ord(c)) for c in text if ord(c) < 32 and c not in "\t\n\r"})
    assert not bad, f"control characters {bad} in {path.name}"
    outside_repo = re.findall(r"\b(?:DESIGN|REFERENCES)" + r"\.md\b", text)
    assert not outside_repo, f"{path.name} cites {outside_repo}: cite the papers themselves"
    if path.parts[-2] == "gradflow" and path.name != "_jax_compat.py":
        assert not re.search(r"\bjax\._src\b", text), f"{path.name} imports private JAX"
