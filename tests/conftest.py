"""Shared test configuration.

* A bounded hypothesis profile (``ci``, the default) so the suite stays fast on 2 cores; select
  ``HYPOTHESIS_PROFILE=thorough`` for a longer local run. ``deadline=None`` because the first call
  of a jitted function compiles.
* ``x64``: a fixture that enables float64 inside one test (float64 references), restoring the
  previous setting afterwards.
* XLA compiles at the backend optimisation level of ``gradflow run --quick``
  (:func:`gradflow.runner.apply_compile_mode`: :data:`gradflow.runner.FAST_COMPILE_FLAG` in
  ``XLA_FLAGS`` before JAX starts its backend, unless ``XLA_FLAGS`` already names a level): the
  experiments' tests run their quick configs as the command line does, and the suite spends less
  of its time compiling.
* Strict dtype promotion inside the library tests would reject legitimate mixed-precision theory
  code, so instead every test states its dtypes and tolerances at the call.
"""

from __future__ import annotations

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

from gradflow import runner

runner.apply_compile_mode(runner.Launch(quick=True))  # as `gradflow run --quick` compiles

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        # the x64 fixture only flips a config flag; it is safe to share across examples
        HealthCheck.function_scoped_fixture,
    ],
)
settings.register_profile(
    "thorough",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def x64():
    """Enable float64 for the duration of one test."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def run_quick(tmp_path_factory):
    """``run_quick(name) -> (root, config, figures, tables)``: quick config end to end.

    Runs, plots and tabulates the registered experiment ``name`` under a fresh temporary
    directory ``root`` (``root/results``, ``root/figures``, ``root/tables``), as
    ``gradflow run NAME --quick`` does; each ``tests/test_exp_<name>.py`` calls it once from a
    module-scoped fixture.
    """
    import gradflow as gf

    def go(name: str):
        root = tmp_path_factory.mktemp(name)
        e = gf.experiment.get(name)
        cfg = e.config("quick")
        e.run(cfg, root / "results")
        figs = e.plot(root / "results", root / "figures")
        tabs = e.tables(root / "results", root / "tables")
        return root, cfg, figs, tabs

    return go
