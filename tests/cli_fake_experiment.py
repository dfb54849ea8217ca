"""A tiny experiment for the tests of gradflow.cli (not collected: no ``test_`` prefix).

``EXPERIMENT`` follows the conventions of every gradflow experiment (one sweep through
:func:`gradflow.sweep.run`, a figure from the saved results only, a LaTeX table and macros), but
runs in about a second, so the CLI tests do not depend on the real experiments' runtimes.
``BROKEN`` fails in its run step. tests/test_cli.py registers both by monkeypatching
``gradflow.experiment._entry_points``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import gradflow as gf


def _fn(hparams, key):
    """Norm of the output of a depth-4 tanh chain of width 8 with weights N(0, sw2 / 8)."""
    w = jax.random.normal(key, (4, 8, 8)) * jnp.sqrt(hparams["sw2"] / 8)
    h, norms = jnp.ones(8), []
    for layer in range(4):
        h = jnp.tanh(w[layer] @ h)
        norms.append(jnp.linalg.norm(h))
    return {"act_norm": jnp.stack(norms)}


def run(config: dict, results_dir: Path) -> None:
    gf.sweep.run(
        _fn,
        grid={"sw2": list(config["sw2"])},
        seeds=range(config["seeds"]),
        workdir=Path(results_dir) / "norms",
        name="cli_fake",
        progress=False,
    )


def plot(results_dir: Path, figures_dir: Path) -> list[Path]:
    df = gf.sweep.load(Path(results_dir) / "norms")
    df = df[~df.diverged]
    with gf.plotting.style():
        fig, ax = gf.plotting.figure()
        for i, (sw2, g) in enumerate(df.groupby("sw2")):
            med = g.groupby("layer")["value"].median()
            ax.plot(med.index + 1, gf.plotting.finite_or_raise(med.values, "act_norm"),
                    color=gf.plotting.COLORS[i], label=f"$\\sigma_w^2$ = {sw2:g}")  # fmt: skip
        ax.set_xlabel("layer")
        ax.set_ylabel(r"$\|h_l\|$ (median over seeds)")
        ax.legend()
        return gf.plotting.savefig(fig, Path(figures_dir) / "cli_fake_headline")


def tables(results_dir: Path, tables_dir: Path) -> list[Path]:
    df = gf.sweep.load(Path(results_dir) / "norms")
    last = df[df.layer == df.layer.max()].groupby("sw2")["value"].median()
    rows = [(float(s), float(v)) for s, v in last.items()]
    return [
        gf.experiment.latex_table(
            rows, ["$\\sigma_w^2$", "median norm"], Path(tables_dir) / "cli_fake.tex"
        ),
        gf.experiment.write_macros(
            Path(tables_dir) / "cli_fake_macros.tex", {"cliFakeNorm": float(np.max(last.values))}
        ),
    ]


def check(config: dict) -> None:
    if config["seeds"] < 1:
        raise ValueError(f"seeds must be >= 1, got {config['seeds']}")


EXPERIMENT = gf.experiment.Experiment(
    name="cli_fake",
    claim="Activation norms of a random tanh chain grow with the weight variance.",
    source="a test fixture",
    configs={
        "quick": {"seeds": 2, "sw2": (0.5, 2.0)},
        "full": {"seeds": 3, "sw2": (0.5, 1.0, 2.0)},
    },
    run=run,
    plot=plot,
    tables=tables,
    figures=("cli_fake_headline",),
    check=check,
)


def _broken_run(config: dict, results_dir: Path) -> None:
    raise RuntimeError("this experiment always fails")


BROKEN = gf.experiment.Experiment(
    name="cli_broken",
    claim="Fails on purpose.",
    source="a test fixture",
    configs={"quick": {"seeds": 1}, "full": {"seeds": 1}},
    run=_broken_run,
    plot=lambda results_dir, figures_dir: [],
)
