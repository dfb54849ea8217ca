"""Tests for gradflow.latex: the paper's generated numbers, macros and tables."""

import pytest

import gradflow as gf


def test_reexported_by_experiment():
    for name in ("fmt", "write_macros", "latex_table"):
        assert getattr(gf.experiment, name) is getattr(gf.latex, name)


def test_macros_and_tables(tmp_path):
    p = gf.latex.write_macros(
        tmp_path / "m.tex", {"ratioA": 4.23456, "tiny": 1.5e-30, "n": 20, "bad": float("nan")}
    )
    text = p.read_text()
    assert r"\newcommand{\ratioA}{4.23}" in text
    assert r"\newcommand{\tiny}{\ensuremath{1.50\times10^{-30}}}" in text
    neg = gf.latex.write_macros(tmp_path / "n.tex", {"neg": -0.306}).read_text()
    assert r"\newcommand{\neg}{\ensuremath{-0.306}}" in neg
    assert gf.latex.fmt(5710.4) == "5710" and gf.latex.fmt(12.345) == "12.3"
    assert r"\newcommand{\n}{20}" in text and r"\newcommand{\bad}{--}" in text
    with pytest.raises(ValueError, match="letters only"):
        gf.latex.write_macros(tmp_path / "m.tex", {"ratio_1": 1.0})
    t = gf.latex.latex_table(
        [["relu_he", 0.5, 1e-9], ["$\\sigma$", 2, -3.0]], ["init", "a", "b%"], tmp_path / "t.tex"
    )
    body = t.read_text()
    assert r"relu\_he & 0.5 & $1.00\times10^{-9}$ \\" in body
    assert r"$\sigma$ & 2 & $-3$ \\" in body and r"init & a & b\% \\" in body
    # a cell already in math mode is not wrapped again (that would be display math)
    again = gf.latex.latex_table(
        [["$1\\times10^{-16} \\pm 2$", "3\\times10^{2}"]], ["a", "b"], tmp_path / "u.tex"
    ).read_text()
    assert r"$1\times10^{-16} \pm 2$ & $3\times10^{2}$ \\" in again and "$$" not in again
    assert "\\begin{tabular}{lrr}" in body
    with pytest.raises(ValueError, match="every row must have 3 cells"):
        gf.latex.latex_table([[1, 2]], ["a", "b", "c"], tmp_path / "t.tex")


def test_latex_escaping_of_text_and_math(tmp_path):
    text = r"a_b & 10% {c} \d $x^2$ ^e ~f #g $5"
    t = gf.latex.latex_table([[text, 1.0]], ["name $\\sigma$", "v"], tmp_path / "t.tex")
    body = t.read_text()
    want = (
        r"a\_b \& 10\% \{c\} \textbackslash{}d $x^2$ \textasciicircum{}e "
        r"\textasciitilde{}f \#g \$5 & 1 \\"
    )
    assert want in body
    assert r"name $\sigma$ & v \\" in body
    m = gf.latex.write_macros(
        tmp_path / "m.tex", {"label": "50% of {x}", "sci": gf.latex.fmt(2e-9)}
    ).read_text()
    assert r"\newcommand{\label}{50\% of \{x\}}" in m
    assert r"\newcommand{\sci}{\ensuremath{2.00\times10^{-9}}}" in m
    with pytest.raises(TypeError, match=r"fmt formats a real number or a string, got None"):
        gf.latex.write_macros(tmp_path / "m.tex", {"none": None})
