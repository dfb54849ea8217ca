"""gradflow: a JAX research toolkit for vanishing and exploding gradients.

Every claim about why gradients vanish or explode becomes an exact jittable function (theory
modules), a property test of its bound, a reproducible experiment with a figure, and a section of
the paper. Import as ``import gradflow as gf``; the public modules are re-exported here:

* :mod:`gradflow.config` -- the precision policy: float32 matmuls on every backend unless asked
* :mod:`gradflow.activations` -- registry of phi, closed-form phi', sup|phi'|
* :mod:`gradflow.initializers` -- Xavier/He/LeCun/orthogonal/... and their theoretical Var(W)
* :mod:`gradflow.analytic` -- closed-form chain gradients, log-domain products, bounds
* :mod:`gradflow.meanfield` -- mean-field q-map, c-map, chi1, depth scales, critical line
* :mod:`gradflow.spectra` -- input-output Jacobian spectra and free-probability moments
* :mod:`gradflow.models` -- Flax linen Chain, MLP, DeepLinear, RNN/LSTM
* :mod:`gradflow.adapters` -- any model (Flax linen, NNX, Equinox, plain JAX) as a pure function
* :mod:`gradflow.taps` -- find the layers of any JAX function and tap their outputs exactly
* :mod:`gradflow.losses` -- the costs ``(logits, y) -> scalar`` the probe and training minimise
* :mod:`gradflow.probes` -- per-layer gradient and signal statistics of any model in one pass
* :mod:`gradflow.report` -- the probe's report types, verdicts, table, frame and figure
* :mod:`gradflow.history` -- signs of exploding gradients in a training history
* :mod:`gradflow.optim` -- optax transforms: clipping with telemetry, weight decay, monitors
* :mod:`gradflow.data` -- scikit-learn digits and synthetic tasks
* :mod:`gradflow.training` -- train state, jitted step, loop with divergence detection
* :mod:`gradflow.sweep` -- seeds x grids, vmapped and sharded, resumable results store
* :mod:`gradflow.rng` -- fast vmap-safe random keys (ThreeFry fused into one loop) for sweeps
* :mod:`gradflow.plotting` -- the house figure style
* :mod:`gradflow.experiment` -- the experiment registry (entry points) and paper artifacts
* :mod:`gradflow.latex` -- the paper's generated LaTeX: numbers, macros and tables
"""

from gradflow import (
    activations,
    adapters,
    analytic,
    config,
    data,
    experiment,
    history,
    initializers,
    latex,
    losses,
    meanfield,
    models,
    optim,
    plotting,
    probes,
    report,
    rng,
    spectra,
    sweep,
    taps,
    training,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "activations",
    "adapters",
    "analytic",
    "config",
    "data",
    "experiment",
    "history",
    "initializers",
    "latex",
    "losses",
    "meanfield",
    "models",
    "optim",
    "plotting",
    "probes",
    "report",
    "rng",
    "spectra",
    "sweep",
    "taps",
    "training",
]
