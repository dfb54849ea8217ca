"""Speed of gradflow against the way researchers do the same work today, measured side by side.

``python -m benchmarks.run`` (``make bench``) runs the CPU suite and writes
``benchmarks/RESULTS.md`` and ``benchmarks/results.json``; ``python -m benchmarks.run --device
gpu`` runs the GPU suite (JAX on the GPU, PyTorch on CUDA) and writes
``benchmarks/RESULTS-gpu.md`` and ``results-gpu.json`` (``benchmarks/gpu_session.sh`` runs it
within one lent GPU session). Both are generated, never
typed. The workloads:

1. ``w1`` probe sweep, research size: per-layer weight, bias and pre-activation gradient norms at
   init for 1024 seeds of a sigmoid MLP (depth 10, width 30, batch 64, digits-shaped inputs);
2. ``w2`` probe sweep, large: 32 seeds of depth 50, width 256, batch 256 (compute-bound);
3. ``w3`` training sweep: 64 networks (16 seeds x 4 learning rates), depth 20, width 64, 200 SGD
   steps on digits, per-layer gradient norms recorded every 10 steps;
4. ``w4`` analytic: closed-form chain gradients (:func:`gradflow.analytic.chain_grads`) against
   ``jax.grad`` through the chain for 10,000 chains of depth 100;
5. ``compile``: the compile time of the init + probe program at depths 10, 50 and 200;
6. ``w2big`` (GPU suite): 16 seeds of depth 50, width 1024, batch 1024, at float32 ("highest")
   and at the GPU's fast passes (TF32), beside ``torch.func`` at both.

The ways: **gradflow** (the program :func:`gradflow.sweep.run` compiles: ``jit`` + ``vmap`` over
seeds and hyperparameters, the batch axis sharded over ``jax.devices()``; on a CPU-only machine one
device per usable core, ``--cpu-devices auto``, the default), **the README's way**
(``jit(vmap(lambda k: probe(model, model.init(k, x), x, y)))``), **the PyTorch loop** (a Python
loop over seeds and configs, ``backward()``, each layer's ``.grad``, hooks for the pre-activation
gradients), **torch.func** (the expert PyTorch way: stacked parameters,
``torch.func.functional_call`` and ``vmap(grad(...))`` over them; training vmapped over the
networks), and **naive JAX** (one jitted call per seed in a Python loop, on the first device).
Every way's numbers are checked against gradflow's before anything is timed. Every JAX way reports
its compile time and its end-to-end time (compile + run: what a one-shot sweep costs).

Modules: :mod:`benchmarks.harness` (timing, machine facts, matmul peak),
:mod:`benchmarks.torch_baselines` (the PyTorch ways), :mod:`benchmarks.workloads` (configurations,
targets and the measurements), :mod:`benchmarks.report` (the json and the Markdown),
:mod:`benchmarks.run` (the command).
"""
