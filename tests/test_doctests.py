"""The ``>>>`` examples in gradflow's docstrings run, and print what they say they print.

One test per public module (``gradflow/__init__.py``), with ``import gradflow as gf``, ``jax``,
``jax.numpy as jnp``, ``numpy as np`` and ``optax`` already imported, as the documentation's pages
assume. The examples are the ones the API reference shows (docs/api), so a wrong one fails here.
"""

import doctest

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf

MODULES = [n for n in gf.__all__ if n != "__version__"]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _tests(module: str) -> list[doctest.DocTest]:
    mod = getattr(gf, module)
    globs = {"gf": gf, "jax": jax, "jnp": jnp, "np": np, "optax": optax}
    found = doctest.DocTestFinder(exclude_empty=True).find(mod, f"gradflow.{module}", globs=globs)
    return [t for t in found if t.examples]


def test_entry_points_have_examples():
    """The main entry points carry runnable examples (a regression would silently drop them)."""
    counted = {m: sum(len(t.examples) for t in _tests(m)) for m in MODULES}
    for module in ("activations", "analytic", "meanfield", "probes", "optim", "sweep"):
        assert counted[module] >= 2, f"gradflow.{module} has {counted[module]} doctest examples"
    assert sum(counted.values()) >= 40


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out = []
    for test in _tests(module):
        runner.run(test, out=out.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(out)
