"""Sphinx extension for gradflow's documentation.

When a build starts (``builder-inited``) it writes the generated pages (:mod:`docgen`): the API
reference (``api/``), the experiment gallery (``gallery/``) and the performance page
(``performance.md``); these paths are git-ignored. It adds:

* the ``gf-run`` directive: runs its Python code when the page is built (one namespace per page,
  in a scratch directory), shows the code (unless ``:hide-code:``), what it printed (unless
  ``:hide-output:``) and the figures it saved (``:figure: a.png b.png``). An exception fails the
  build, so every example on the site runs and every number it shows is computed;
* a check that every public name of every public module has an entry in the API reference, and,
  once the HTML is written, that every link between the pages (and every anchor, image, script
  and style sheet they use) resolves;
* MathJax served from the site itself (the ``django-static-mathjax`` wheel of the ``docs`` extra),
  so formulas render without network access.
"""

from __future__ import annotations

import contextlib
import html.parser
import io
import os
import shutil
import time
import traceback
from importlib import resources
from pathlib import Path

import docgen
from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = "_generated"  # under the source dir: gf-run scratch directories and their figures


# --- gf-run -----------------------------------------------------------------------------------


class RunDirective(SphinxDirective):
    """``gf-run``: execute the content, show code, output and figures."""

    has_content = True
    option_spec = {  # noqa: RUF012 (docutils' interface)
        "figure": directives.unchanged,
        "hide-code": directives.flag,
        "hide-output": directives.flag,
    }

    def run(self) -> list[nodes.Node]:
        code = "\n".join(self.content)
        docname = self.env.docname
        scratch = Path(self.env.srcdir) / RUN_DIR / docname
        namespace = self.env.temp_data.setdefault("gf_run_namespace", {"__name__": "__docs__"})
        if "gf_run_fresh" not in self.env.temp_data:  # a page's first block starts clean
            shutil.rmtree(scratch, ignore_errors=True)
            self.env.temp_data["gf_run_fresh"] = True
        scratch.mkdir(parents=True, exist_ok=True)
        for path in sorted((ROOT / "gradflow").glob("*.py")):
            self.env.note_dependency(str(path))
        out = io.StringIO()
        cwd = os.getcwd()
        t0 = time.perf_counter()
        try:
            os.chdir(scratch)
            with contextlib.redirect_stdout(out):
                exec(compile(code, f"{docname} (gf-run, line {self.lineno})", "exec"), namespace)
        except Exception:
            raise self.error(
                f"gf-run: the example at line {self.lineno} raised\n{traceback.format_exc()}"
            ) from None
        finally:
            os.chdir(cwd)
        logger.info("gf-run %s:%d: %.1f s", docname, self.lineno, time.perf_counter() - t0)

        result: list[nodes.Node] = []
        if "hide-code" not in self.options:
            block = nodes.literal_block(code, code, language="python")
            self.set_source_info(block)
            result.append(block)
        printed = out.getvalue().rstrip()
        if printed and "hide-output" not in self.options:
            shown = nodes.literal_block(printed, printed, language="none")
            shown["classes"].append("gf-output")
            result.append(shown)
        for name in (self.options.get("figure") or "").split():
            if not (scratch / name).is_file():
                raise self.error(f"gf-run: the example did not write the figure {name!r}")
            rel = (Path(RUN_DIR) / docname / name).as_posix()
            result.append(nodes.image(uri=f"/{rel}", alt=name, classes=["gf-figure"]))
        return result


# --- generated pages --------------------------------------------------------------------------


def _generate(app: Sphinx) -> None:
    src = Path(app.srcdir)
    t0 = time.perf_counter()
    docgen.sync_dir(src / "api", docgen.api_pages())
    docgen.sync_dir(src / "gallery", docgen.gallery_pages(ROOT, src / "gallery"))
    docgen.write_if_changed(src / "performance.md", docgen.performance_page(ROOT))
    logger.info("gradflow_docs: generated pages in %.1f s", time.perf_counter() - t0)


def _mathjax(app: Sphinx) -> None:
    try:
        es5 = resources.files("mathjax") / "static" / "mathjax" / "es5"
    except ModuleNotFoundError:
        raise RuntimeError(
            "MathJax is missing: install the docs extra (pip install -c requirements.lock "
            "-e '.[docs]'), which brings the django-static-mathjax wheel"
        ) from None
    es5 = Path(str(es5))
    staging = Path(app.outdir).parent / "_mathjax"
    target = staging / "mathjax"
    fonts = Path("output") / "chtml" / "fonts" / "woff-v2"
    if not (target / "tex-chtml.js").is_file():
        (target / fonts).mkdir(parents=True, exist_ok=True)
        shutil.copy2(es5 / "tex-chtml.js", target / "tex-chtml.js")
        for font in (es5 / fonts).glob("*.woff"):
            shutil.copy2(font, target / fonts / font.name)
    app.config.html_static_path.append(str(staging))


def _builder_inited(app: Sphinx) -> None:
    _generate(app)
    if app.builder.format == "html":
        _mathjax(app)


def _check_api(app: Sphinx, env) -> None:
    """Every public name of every public module has an entry in the API reference."""
    documented = env.get_domain("py").objects
    for module in docgen.public_modules():
        for name in docgen.public_names(module):
            if f"gradflow.{module}.{name}" not in documented:
                logger.warning("API reference: gradflow.%s.%s has no entry", module, name)


class _Links(html.parser.HTMLParser):
    """The ids a page defines and the relative URLs it uses."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        url = attrs.get("href") if tag in ("a", "link") else attrs.get("src")
        if url and not url.startswith(("http:", "https:", "mailto:", "data:", "javascript:")):
            self.urls.append(url)


def _check_links(app: Sphinx, exception: Exception | None) -> None:
    """Every relative link of the built site resolves, anchors included."""
    if exception is not None or app.builder.format != "html":
        return
    out = Path(app.outdir)
    pages = {}
    for page in out.rglob("*.html"):
        parser = _Links()
        parser.feed(page.read_text())
        pages[page.resolve()] = parser
    for page, parser in pages.items():
        for url in parser.urls:
            path, _, anchor = url.partition("#")
            target = (page.parent / path.split("?")[0]).resolve() if path else page
            if not target.exists():
                logger.warning("broken link in %s: %s", page.relative_to(out.resolve()), url)
            elif anchor and target in pages and anchor not in pages[target].ids:
                logger.warning("broken anchor in %s: %s", page.relative_to(out.resolve()), url)


def setup(app: Sphinx) -> dict:
    # autosummary cuts a summary at the first ". " unless the text before it ends with a known
    # abbreviation; gradflow's docstrings cite "eq. 3" and "ch. 5" ("et al." is known already)
    from sphinx.ext import autosummary

    extra = (" eq.", " eqs.", " ch.", " Fig.")
    autosummary.WELL_KNOWN_ABBREVIATIONS = (*autosummary.WELL_KNOWN_ABBREVIATIONS, *extra)
    app.add_directive("gf-run", RunDirective)
    app.connect("builder-inited", _builder_inited)
    app.connect("env-check-consistency", _check_api)
    app.connect("build-finished", _check_links)
    # the command's page reads gradflow/cli.py's parser, a dependency Sphinx does not track
    app.connect("env-get-outdated", lambda app, env, *_: [d for d in ("cli",) if d in env.all_docs])
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
