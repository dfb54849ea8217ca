"""The PyTorch ways of each workload: the common loop, and the expert ``torch.func`` way.

**The loop** (``pytorch``): what a researcher writes today, written carefully (no gratuitous host
syncs, ``torch.no_grad`` where nothing is differentiated, one ``.numpy()`` per result): build the
network per seed with ``nn.Linear`` and ``nn.init``, run ``backward()``, read each layer's
``.grad``, and capture the pre-activation gradients with a forward hook that registers a tensor
hook on each layer's output (the usual recipe for :math:`\\partial C/\\partial z_l`).

**torch.func** (``torch_func``): what an expert writes to batch over networks, the PyTorch
counterpart of ``jax.vmap``: the parameters of every network stacked on a leading axis (drawn in
one call per tensor), :func:`torch.func.functional_call` of one template module, and
``torch.func.vmap(torch.func.grad(loss))`` over the stack. The pre-activation gradients are the
gradients with respect to zero perturbations added to each layer's pre-activation (the trick
:func:`gradflow.probes.probe` uses). Training (:func:`train_func`) vmaps the gradient of every
network's minibatch loss and updates the stacked parameters with SGD, one eager step for all
networks at once.

Both run on :data:`DEVICE` (``set_device("cuda")`` for a GPU: ``python -m benchmarks.run --device
gpu``); results come back as NumPy arrays, which waits for the device.

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
    "PerturbedMLP",
    "chain_grads",
    "chain_grads_func",
    "forward",
    "from_jax",
    "matmul_peak",
    "mlp",
    "probe",
    "probe_func",
    "probe_func_sweep",
    "set_device",
    "set_matmul_precision",
    "set_threads",
    "stack_from_jax",
    "stacked_mlp",
    "synchronize",
    "train",
    "train_func",
    "train_sweep",
]

#: Where the PyTorch ways run: ``"cpu"`` or ``"cuda"`` (:func:`set_device`).
DEVICE = "cpu"


def set_device(name: str) -> None:
    """Run the PyTorch ways on ``name`` (``"cpu"`` or ``"cuda"``)."""
    global DEVICE
    if name not in ("cpu", "cuda"):
        raise ValueError(f"torch device must be 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("torch device 'cuda' requested but torch.cuda.is_available() is False")
    DEVICE = name


def set_matmul_precision(name: str) -> None:
    """``torch.set_float32_matmul_precision``: ``"highest"`` (float32, PyTorch's default) or
    ``"high"`` (TensorFloat-32 on NVIDIA GPUs), the counterparts of JAX's names."""
    torch.set_float32_matmul_precision(name)


def synchronize() -> None:
    """Wait for the device (CUDA kernels run asynchronously)."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()


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
        layer = nn.Linear(fan_in, fan_out, device=DEVICE)
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
        layer = nn.Linear(*kernel.shape, device=DEVICE)
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
        "weight_grad_norm": weight.cpu().numpy(),
        "bias_grad_norm": bias.cpu().numpy(),
        "preact_grad_norm": preact.cpu().numpy(),
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
    xt = torch.from_numpy(np.array(x, np.float32)).to(DEVICE)
    yt = torch.from_numpy(np.array(y, np.int64)).to(DEVICE)
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
    x, xt = (
        torch.from_numpy(np.array(a, np.float32)).to(DEVICE) for a in (data.x_train, data.x_test)
    )
    y, yt = (
        torch.from_numpy(np.array(a, np.int64)).to(DEVICE) for a in (data.y_train, data.y_test)
    )
    n = x.shape[0]
    gen = torch.Generator(DEVICE).manual_seed(seed)
    opt = torch.optim.SGD(layers.parameters(), lr=learning_rate)
    records: dict[str, list] = {}
    grad_block, loss_block = [], []
    for step in range(steps):
        if batch_size is None:
            xb, yb = x, y
        else:
            idx = torch.randperm(n, generator=gen, device=DEVICE)[:batch_size]
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
            records.setdefault(k, []).append(v.cpu().numpy())
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
    wt = torch.tensor(np.asarray(w, np.float32), requires_grad=True, device=DEVICE)
    bt = torch.tensor(np.asarray(b, np.float32), requires_grad=True, device=DEVICE)
    a = torch.from_numpy(np.array(x, np.float32)).to(DEVICE)
    for w_j, b_j in zip(wt.unbind(-1), bt.unbind(-1)):
        a = phi(w_j * a + b_j)
    (a * torch.from_numpy(np.array(dC_daL, np.float32)).to(DEVICE)).sum().backward()
    return bt.grad.cpu().numpy(), wt.grad.cpu().numpy()


# ----------------------------------------------------------------------------- torch.func way


class PerturbedMLP(nn.Module):
    """``Linear -> phi`` hidden layers and a linear readout whose pre-activations take additive
    perturbations: ``z_l = Linear_l(h) + p_l``; the gradient at ``p = 0`` is dC/dz_l."""

    def __init__(self, widths: Sequence[int], activation: str, device: str = "meta"):
        super().__init__()
        self.phi = _act(activation)
        self.layers = nn.ModuleList(
            nn.Linear(a, b, device=device) for a, b in itertools.pairwise(widths)
        )

    def forward(self, x: torch.Tensor, perts: Sequence[torch.Tensor] | None = None):
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h) if perts is None else layer(h) + perts[i]
            if i < last:
                h = self.phi(h)
        return h


def stacked_mlp(
    widths: Sequence[int], n: int, seed: int, *, bias_init: str = "normal"
) -> dict[str, torch.Tensor]:
    """The parameters of ``n`` networks (names of :class:`PerturbedMLP`), stacked on a leading
    axis and drawn in one call per tensor on :data:`DEVICE`: kernels
    :math:`N(0, 1/\\text{fan\\_in})`, biases :math:`N(0, 1)` or zero (gradflow's
    ``lecun_normal`` / ``normal`` / ``zeros``)."""
    if bias_init not in ("normal", "zeros"):
        raise ValueError(f"bias_init must be 'normal' or 'zeros', got {bias_init!r}")
    gen = torch.Generator(DEVICE).manual_seed(seed)
    params = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        w = torch.randn(n, fan_out, fan_in, generator=gen, device=DEVICE)
        params[f"layers.{i}.weight"] = w.mul_(1.0 / math.sqrt(fan_in))
        params[f"layers.{i}.bias"] = (
            torch.randn(n, fan_out, generator=gen, device=DEVICE)
            if bias_init == "normal"
            else torch.zeros(n, fan_out, device=DEVICE)
        )
    return params


def stack_from_jax(params: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """:func:`stacked_mlp`'s layout from a gradflow MLP's stacked ``params`` (``(n, ...)``
    leaves, ``dense_0 ... dense_L``)."""
    names = sorted(params, key=lambda n: int(n.rsplit("_", 1)[1]))
    out = {}
    for i, name in enumerate(names):
        kernel = np.asarray(params[name]["kernel"], np.float32)  # (n, fan_in, fan_out)
        out[f"layers.{i}.weight"] = torch.from_numpy(kernel.transpose(0, 2, 1).copy()).to(DEVICE)
        bias = np.asarray(params[name]["bias"], np.float32)
        out[f"layers.{i}.bias"] = torch.from_numpy(bias.copy()).to(DEVICE)
    return out


def _num_layers(params: Mapping[str, torch.Tensor]) -> int:
    return sum(1 for k in params if k.endswith(".weight"))


def probe_func(
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    activation: str,
    widths: Sequence[int],
) -> dict[str, torch.Tensor]:
    """:func:`probe`'s numbers for every network of a stack, in one vmapped call:
    ``vmap(grad(loss, argnums=(params, perturbations)))`` over the stacked ``params``."""
    from torch.func import functional_call, grad_and_value, vmap

    base = PerturbedMLP(widths, activation)
    n_layers = _num_layers(params)
    batch = x.shape[0]
    perts = [torch.zeros(batch, w, device=x.device) for w in widths[1:]]

    def loss(p, q):
        return F.cross_entropy(functional_call(base, p, (x, q)), y)

    def one(p):
        (g_params, g_perts), c = grad_and_value(loss, argnums=(0, 1))(p, perts)
        weight = torch.stack(
            [torch.linalg.vector_norm(g_params[f"layers.{i}.weight"]) for i in range(n_layers)]
        )
        bias = torch.stack(
            [torch.linalg.vector_norm(g_params[f"layers.{i}.bias"]) for i in range(n_layers)]
        )
        preact = torch.stack([torch.linalg.vector_norm(g * batch, dim=1).mean() for g in g_perts])
        return c, weight, bias, preact

    c, weight, bias, preact = vmap(one)(dict(params))
    return {"loss": c, "weight_grad_norm": weight, "bias_grad_norm": bias,
            "preact_grad_norm": preact}  # fmt: skip


def probe_func_sweep(
    n: int,
    widths: Sequence[int],
    x: np.ndarray,
    y: np.ndarray,
    activation: str,
    *,
    bias_init: str = "normal",
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Draw ``n`` networks (:func:`stacked_mlp`) and :func:`probe_func` them: arrays ``(n, L)``."""
    xt = torch.from_numpy(np.array(x, np.float32)).to(DEVICE)
    yt = torch.from_numpy(np.array(y, np.int64)).to(DEVICE)
    params = stacked_mlp(widths, n, seed, bias_init=bias_init)
    out = probe_func(params, xt, yt, activation, widths)
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def train_func(
    params: Mapping[str, torch.Tensor],
    learning_rates: Sequence[float],
    data: Any,
    *,
    activation: str,
    widths: Sequence[int],
    steps: int,
    batch_size: int | None,
    record_every: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """:func:`train` for a stack of networks at once (network ``i`` at ``learning_rates[i]``):
    ``vmap(grad_and_value(loss))`` over the stacked ``params`` and per-network minibatches (the
    ``batch_size`` largest of ``n`` uniforms per network: drawn without replacement), one SGD
    update of the whole stack per step. Records as :func:`train`, arrays ``(networks, R, ...)``.
    """
    from torch.func import functional_call, grad_and_value, vmap

    x, xt = (
        torch.from_numpy(np.array(a, np.float32)).to(DEVICE) for a in (data.x_train, data.x_test)
    )
    y, yt = (
        torch.from_numpy(np.array(a, np.int64)).to(DEVICE) for a in (data.y_train, data.y_test)
    )
    n = x.shape[0]
    nets = len(learning_rates)
    lr = torch.tensor(np.asarray(learning_rates, np.float32), device=DEVICE)
    gen = torch.Generator(DEVICE).manual_seed(seed)
    base = PerturbedMLP(widths, activation)
    n_layers = _num_layers(params)
    p = {k: v.clone() for k, v in params.items()}

    def loss(q, xb, yb):
        return F.cross_entropy(functional_call(base, q, (xb,)), yb)

    step_fn = vmap(grad_and_value(loss))
    evaluate = vmap(lambda q, a: functional_call(base, q, (a,)), in_dims=(0, None))

    def layer_norms(tree):
        return torch.stack(
            [
                torch.sqrt(
                    tree[f"layers.{i}.weight"].square().sum((1, 2))
                    + tree[f"layers.{i}.bias"].square().sum(1)
                )
                for i in range(n_layers)
            ],
            dim=1,
        )  # (nets, L)

    def scores(out, target):
        ce = F.cross_entropy(out.flatten(0, 1), target.repeat(nets), reduction="none")
        acc = (out.argmax(-1) == target).float().mean(1)
        return ce.view(nets, -1).mean(1), acc

    records: dict[str, list] = {}
    grad_block, loss_block = [], []
    for step in range(steps):
        if batch_size is None:
            xb, yb = x.expand(nets, *x.shape), y.expand(nets, *y.shape)
        else:
            idx = torch.rand(nets, n, generator=gen, device=DEVICE).topk(batch_size, dim=1)[1]
            xb, yb = x[idx], y[idx]
        g, c = step_fn(p, xb, yb)
        with torch.no_grad():
            grad_block.append(layer_norms(g))
            loss_block.append(c)
            for k in p:
                p[k] = p[k] - lr.view(-1, *([1] * (p[k].ndim - 1))) * g[k]
        if (step + 1) % record_every:
            continue
        with torch.no_grad():
            gn = torch.stack(grad_block).mean(0)
            loss_train, acc_train = scores(evaluate(p, x), y)
            loss_test, acc_test = scores(evaluate(p, xt), yt)
            rec = {
                "batch_loss": torch.stack(loss_block).mean(0),
                "grad_norm": gn,
                "update_norm": lr[:, None] * gn,
                "loss": loss_train,
                "accuracy": acc_train,
                "test_loss": loss_test,
                "test_accuracy": acc_test,
                "param_norm": layer_norms(p),
            }
        for k, v in rec.items():
            records.setdefault(k, []).append(v)
        grad_block, loss_block = [], []
    return {k: torch.stack(v, dim=1).cpu().numpy() for k, v in records.items()}


def chain_grads_func(
    w: np.ndarray, b: np.ndarray, x: np.ndarray, dC_daL: np.ndarray, activation: str
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`chain_grads` by ``vmap(grad(...))`` of one chain over the ``N`` chains."""
    from torch.func import grad, vmap

    phi = _act(activation)

    def out(w_, b_, x_, g_):
        a = x_
        for j in range(w_.shape[0]):
            a = phi(w_[j] * a + b_[j])
        return a * g_

    tensors = [torch.from_numpy(np.asarray(v, np.float32).copy()).to(DEVICE)
               for v in (w, b, x, dC_daL)]  # fmt: skip
    gw, gb = vmap(grad(out, argnums=(0, 1)))(*tensors)
    return gb.cpu().numpy(), gw.cpu().numpy()


def matmul_peak(n: int = 2048, *, repeats: int = 10) -> dict[str, Any]:
    """Median GFLOP/s of ``torch.matmul`` of two float32 ``(n, n)`` matrices (current threads,
    :data:`DEVICE`, the current float32 matmul precision)."""
    gen = torch.Generator(DEVICE).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=DEVICE)
    b = torch.randn(n, n, generator=gen, device=DEVICE)
    torch.matmul(a, b)
    synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        synchronize()
        times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    return {"n": n, "median_s": median, "gflops": 2.0 * n**3 / median / 1e9, "repeats": repeats}
