"""Sphinx configuration of gradflow's documentation (``make docs``).

Generated pages (the API reference, the experiment gallery) are written by the ``gradflow_docs``
extension in ``_ext/`` when the build starts; see its docstring.
"""

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")

import gradflow  # noqa: E402

project = "gradflow"
author = "gradflow authors"
copyright = "gradflow authors, Apache-2.0"
version = release = gradflow.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinxarg.ext",
    "gradflow_docs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "_generated", "README.md"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# autodoc: signatures as written, type hints in the signature, members in source order
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Type aliases shown by name, as the source writes them, not expanded into their unions
# (jax.typing.ArrayLike is an eight-member Union; optax.Params a recursive chex.ArrayTree).
autodoc_type_aliases = {
    name: name
    for name in (
        "ArrayLike",
        "DTypeLike",
        "chex.ArrayTree",
        "optax.OptState",
        "optax.Params",
        "optax.ScalarOrSchedule",
        "optax.Updates",
    )
}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# MathJax from the django-static-mathjax wheel (the `docs` extra), copied into the site by
# gradflow_docs: the pages render their math offline, with no CDN.
mathjax_path = "mathjax/tex-chtml.js"

html_theme = "furo"
html_title = f"gradflow {release}"
html_static_path = ["_static"]
html_css_files = ["gradflow.css"]
html_show_sourcelink = False
pygments_style = "friendly"


_ALIAS_REPR = re.compile(r"TypeAliasForwardRef\('([^']*)'\)")


def _alias_names(app, what, name, obj, options, signature, return_annotation):
    """Sphinx prints an alias inside a union (``DTypeLike | None``) by its repr,
    ``TypeAliasForwardRef('DTypeLike')``: print its name."""
    del app, what, name, obj, options

    def fix(text):
        return _ALIAS_REPR.sub(r"\1", text) if text else text

    return fix(signature), fix(return_annotation)


def setup(app):
    app.connect("autodoc-process-signature", _alias_names)
