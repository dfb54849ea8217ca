"""The common PyTorch way of each workload: a Python loop over seeds and configs, eager autograd.

What a researcher writes today, written carefully (no gratuitous host syncs, ``torch.no_grad``
where nothing is differentiated, one ``.numpy()`` per result): build the network per seed with
``nn.Linear`` and ``nn.init``, run ``backward()``, read each layer's ``.grad``, and capture the
pre-activation gradients with a forward hook that registers a tensor hook on each layer's output
(the usual recipe for :math:`\\partial C/\\partial z_l`).

The networks match :class:`gradflow.models.MLP`: ``Linear -> phi`` hidden layers, a linear
readout, kernels :math:`N(0, 1/\\text{fan\\_in})` (``lecun_normal``, untruncated), biases
:math:`N(0, 1)` or zero; mean softmax cross-entropy. ``from_jax`` loads gradflow's parameters so
the benchmark can check that both compute the same numbers before it times anything.

Requires ``torch`` (the ``bench`` extra); import this module only after checking it is installed.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "chain_grads",
    "forward",
    "from_jax",
    "matmul_peak",
    "mlp",
    "probe",
    "probe_sweep",
    "set_threads",
    "train",
    "train_sweep",
]

#: Activation names of :mod:`gradflow.activations` with their torch functions.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "linear": lambda z: z,
}


def _act(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def set_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` (intra-op threads)."""
    if n < 1:
        raise ValueError(f"torch threads must be >= 1, got {n}")
    torch.set_num_threads(int(n))


def mlp(widths: Sequence[int], seed: int, *, bias_init: str = "normal") -> nn.ModuleList:
    """``nn.Linear`` layers ``widths[0] -> ... -> widths[-1]`` initialised from ``seed``.

    Kernels :math:`N(0, 1/\\text{fan\\_in})`; biases :math:`N(0, 1)` (``"normal"``) or zero
    (``"zeros"``), as gradflow's ``lecun_normal`` / ``normal`` / ``zeros``.
    """
    if bias_init not in ("normal", "zeros"):
        raise ValueError(f"bias_init must be 'normal' or 'zeros', got {bias_init!r}")
    torch.manual_seed(seed)
    layers = nn.ModuleList()
    for fan_in, fan_out in itertools.pairwise(widths):
        layer = nn.Linear(fan_in, fan_out)
        nn.init.normal_(layer.weight, 0.0, 1.0 / math.sqrt(fan_in))
        if bias_init == "normal":
            nn.init.normal_(layer.bias)
        else:
            nn.init.zeros_(layer.bias)
        layers.append(layer)
    return layers


def from_jax(params: Mapping[str, Any]) -> nn.ModuleList:
    """The same network from a gradflow MLP's ``params`` (``dense_0 ... dense_L``)."""
    names = sorted(params, key=lambda n: int(n.rsplit("_", 1)[1]))
    layers = nn.ModuleList()
    for name in names:
        kernel = np.array(params[name]["kernel"], dtype=np.float32)
        layer = nn.Linear(*kernel.shape)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(kernel.T.copy()))
            layer.bias.copy_(torch.from_numpy(np.array(params[name]["bias"], np.float32)))
        layers.append(layer)
    return layers


def forward(layers: nn.ModuleList, x: torch.Tensor, activation: str) -> torch.Tensor:
    """Hidden layers ``phi(Linear(h))``, then the linear readout (the logits)."""
    phi = _act(activation)
    h = x
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        h = layer(h)
        if i < last:
            h = phi(h)
    return h


def probe(
    layers: nn.ModuleList, x: torch.Tensor, y: torch.Tensor, activation: str
) -> dict[str, np.ndarray]:
    """Per-layer ``||dC/dW||``, ``||dC/db||`` and mean per-example ``||B dC/dz||`` at ``layers``.

    The quantities of :class:`gradflow.probes.LayerReport` (``weight_grad_norm``,
    ``bias_grad_norm``, ``preact_grad_norm``) and the loss, by hooks and ``.grad``.
    """
    deltas: dict[int, torch.Tensor] = {}

    def capture(i: int):
        def hook(module, inputs, output):
            output.register_hook(lambda g: deltas.__setitem__(i, g))

        return hook

    handles = [layer.register_forward_hook(capture(i)) for i, layer in enumerate(layers)]
    try:
        for layer in layers:
            layer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(layers, x, activation), y)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    batch = x.shape[0]
    with torch.no_grad():
        weight = torch.stack([layer.weight.grad.norm() for layer in layers])
        bias = torch.stack([layer.bias.grad.norm() for layer in layers])
        preact = torch.stack([(deltas[i] * batch).norm(dim=1).mean() for i in range(len(layers))])
    return {
        "loss": np.asarray(loss.item(), np.float32),
        "weight_grad_norm": weight.numpy(),
        "bias_grad_norm": bias.numpy(),
        "preact_grad_norm": preact.numpy(),
    }


def probe_sweep(
    seeds: Sequence[int],
    widths: Sequence[int],
    x: np.ndarray,
    y: np.ndarray,
    activation: str,
    *,
    bias_init: str = "normal",
) -> dict[str, np.ndarray]:
    """:func:`probe` at init for every seed, in a Python loop; arrays stacked ``(seeds, L)``."""
    xt = torch.from_numpy(np.array(x, np.float32))
    yt = torch.from_numpy(np.array(y, np.int64))
    rows = [probe(mlp(widths, s, bias_init=bias_init), xt, yt, activation) for s in seeds]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def _layer_norms(tensors: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.stack([torch.sqrt(w.square().sum() + b.square().sum()) for w, b in tensors])


def train(
    layers: nn.ModuleList,
    learning_rate: float,
    data: Any,
    *,
    activation: str,
    steps: int,
    batch_size: int | None,
    record_every: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Plain SGD on softmax cross-entropy, recording what :func:`gradflow.training.train_fn` does.

    Every ``record_every`` steps: block means of the minibatch loss and of the per-layer norms
    of the gradient (``grad_norm``) and of the update (``update_norm``), then loss and accuracy on
    the whole training and test sets and the per-layer parameter norms. Minibatches are drawn
    without replacement each step (``torch.randperm``), or the full set when ``batch_size`` is
    None. Returns arrays ``(R,)`` / ``(R, L)``.
    """
    x, xt = (torch.from_numpy(np.array(a, np.float32)) for a in (data.x_train, data.x_test))
    y, yt = (torch.from_numpy(np.array(a, np.int64)) for a in (data.y_train, data.y_test))
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(layers.parameters(), lr=learning_rate)
    records: dict[str, list] = {}
    grad_block, loss_block = [], []
    for step in range(steps):
        if batch_size is None:
            xb, yb = x, y
        else:
            idx = torch.randperm(n, generator=gen)[:batch_size]
            xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(forward(layers, xb, activation), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            grad_block.append(_layer_norms([(m.weight.grad, m.bias.grad) for m in layers]))
            loss_block.append(loss.detach())
        opt.step()
        if (step + 1) % record_every:
            continue
        with torch.no_grad():
            g = torch.stack(grad_block).mean(0)
            out, out_t = forward(layers, x, activation), forward(layers, xt, activation)
            rec = {
                "batch_loss": torch.stack(loss_block).mean(),
                "grad_norm": g,
                "update_norm": learning_rate * g,
                "loss": F.cross_entropy(out, y),
                "accuracy": (out.argmax(1) == y).float().mean(),
                "test_loss": F.cross_entropy(out_t, yt),
                "test_accuracy": (out_t.argmax(1) == yt).float().mean(),
                "param_norm": _layer_norms([(m.weight, m.bias) for m in layers]),
            }
        for k, v in rec.items():
            records.setdefault(k, []).append(v.numpy())
        grad_block, loss_block = [], []
    return {k: np.stack(v) for k, v in records.items()}


def train_sweep(
    runs: Sequence[tuple[float, int]],
    widths: Sequence[int],
    data: Any,
    *,
    activation: str,
    steps: int,
    batch_size: int | None,
    record_every: int,
) -> list[dict[str, np.ndarray]]:
    """:func:`train` for every ``(learning_rate, seed)`` in ``runs``, in a Python loop."""
    return [
        train(
            mlp(widths, seed, bias_init="zeros"),
            lr,
            data,
            activation=activation,
            steps=steps,
            batch_size=batch_size,
            record_every=record_every,
            seed=seed,
        )
        for lr, seed in runs
    ]


def chain_grads(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, dC_daL: np.ndarray, activation: str
) -> tuple[np.ndarray, np.ndarray]:
    """Autograd gradients of :math:`C = \\sum_i (\\partial C/\\partial a_L)_i a_L^{(i)}` of a
    batch of one-neuron chains ``(N, L)``: returns ``(dC/db, dC/dw)``, each ``(N, L)``."""
    phi = _act(activation)
    wt = torch.tensor(np.asarray(w, np.float32), requires_grad=True)
    bt = torch.tensor(np.asarray(b, np.float32), requires_grad=True)
    a = torch.from_numpy(np.array(x, np.float32))
    for w_j, b_j in zip(wt.unbind(-1), bt.unbind(-1)):
        a = phi(w_j * a + b_j)
    (a * torch.from_numpy(np.array(dC_daL, np.float32))).sum().backward()
    return bt.grad.numpy(), wt.grad.numpy()


def matmul_peak(n: int = 2048, *, repeats: int = 10) -> dict[str, Any]:
    """Median GFLOP/s of ``torch.matmul`` of two float32 ``(n, n)`` matrices (current threads)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen)
    b = torch.randn(n, n, generator=gen)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    return {"n": n, "median_s": median, "gflops": 2.0 * n**3 / median / 1e9, "repeats": repeats}
