"""Speed of gradflow against the way researchers do the same work today, measured side by side.

``python -m benchmarks.run`` (``make bench``) runs four workloads, each three ways in one process on
one machine, and writes ``benchmarks/RESULTS.md`` and ``benchmarks/results.json`` (both generated,
never typed):

1. ``w1`` probe sweep, research size: per-layer weight, bias and pre-activation gradient norms at
   init for 1024 seeds of a sigmoid MLP (depth 10, width 30, batch 64, digits-shaped inputs);
2. ``w2`` probe sweep, large: 32 seeds of depth 50, width 256, batch 256 (compute-bound);
3. ``w3`` training sweep: 64 networks (16 seeds x 4 learning rates), depth 20, width 64, 200 SGD
   steps on digits, per-layer gradient norms recorded every 10 steps;
4. ``w4`` analytic: closed-form chain gradients (:func:`gradflow.analytic.chain_grads`) against
   ``jax.grad`` through the chain for 10,000 chains of depth 100.

The three ways: **gradflow** (one compiled program: ``jit`` + ``vmap`` over seeds and
hyperparameters, batch axis sharded over ``jax.devices()`` as :mod:`gradflow.sweep` does it; on a
CPU-only machine one device per usable core, ``--cpu-devices auto``, the default), **the
common PyTorch way** (a Python loop over seeds and configs, ``backward()``, each layer's ``.grad``,
hooks for the pre-activation gradients), and **naive JAX** (one jitted call per seed in a Python
loop, on the first device). Every way's numbers are checked against gradflow's before anything
is timed.

Modules: :mod:`benchmarks.harness` (timing, machine facts, matmul peak),
:mod:`benchmarks.torch_baselines` (the PyTorch ways), :mod:`benchmarks.workloads` (configurations
and the measurements), :mod:`benchmarks.report` (results.json and RESULTS.md),
:mod:`benchmarks.run` (the command).
"""
