"""Models a researcher writes, none of them built from gradflow: the probe, optim and training
tests run on each. ``FACTORIES[name](key) -> UserModel``.

Each :class:`UserModel` carries what gradflow is given (``model``, ``variables``), a batch, the
layer names the forward pass runs (in the order it runs them), and ``outputs(eps)``: the model's
outputs on the batch with an explicit perturbation ``eps[name]`` added to each layer's output --
written out here independently of gradflow.taps (linen: ``nn.intercept_methods``; NNX, Equinox
and plain functions: the forward pass spelled out), so tests can check ``dC/dz`` against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

# --------------------------------------------------------------------------------- the models


class ConvNet(nn.Module):
    """A CNN whose attribute names are not in execution order (sorting them would be wrong)."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), name="z_conv")(x))
        x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2), name="b_conv")(x))
        return nn.Dense(10, name="a_head")(x.reshape(x.shape[0], -1))


class BNConvNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(6, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        return nn.Dense(10)(x.mean((1, 2)))


class Block(nn.Module):
    """A Transformer block, pre-LN (Xiong et al. 2020) or post-LN (Vaswani et al. 2017)."""

    d: int
    pre: bool

    @nn.compact
    def __call__(self, x):
        ln1, ln2 = nn.LayerNorm(name="ln1"), nn.LayerNorm(name="ln2")
        attn = nn.MultiHeadDotProductAttention(num_heads=2, name="attn")
        fc1, fc2 = nn.Dense(2 * self.d, name="fc1"), nn.Dense(self.d, name="fc2")
        if self.pre:
            x = x + attn(ln1(x))
            return x + fc2(nn.gelu(fc1(ln2(x))))
        x = ln1(x + attn(x))
        return ln2(x + fc2(nn.gelu(fc1(x))))


class Transformer(nn.Module):
    vocab: int = 11
    d: int = 8
    depth: int = 2
    pre: bool = True

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(self.vocab, self.d, name="embed")(tokens)
        for i in range(self.depth):
            x = Block(self.d, self.pre, name=f"block_{i}")(x)
        if self.pre:
            x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.vocab, name="head")(x)


def _block_names(i: int, pre: bool) -> list[str]:
    attn = [f"block_{i}/attn/{p}" for p in ("query", "key", "value", "out")]
    ffn = [f"block_{i}/fc1", f"block_{i}/fc2"]
    if pre:
        return [f"block_{i}/ln1", *attn, f"block_{i}/ln2", *ffn]
    return [*attn, f"block_{i}/ln1", *ffn, f"block_{i}/ln2"]


class SeqDense(nn.Module):
    """A sequence model: Dense layers on (batch, time, features), mean over time at the end."""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Dense(6, name="inp")(x))
        x = jnp.tanh(nn.Dense(6, name="mix")(x))
        return nn.Dense(3, name="out")(x.mean(1))


class _ScanLayer(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        return jnp.tanh(nn.Dense(5, name="dense")(h)), None


class ScanStack(nn.Module):
    """Identical layers compiled once with nn.scan over stacked parameters."""

    depth: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(5, name="inp")(x)
        stack = nn.scan(
            _ScanLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.depth,
        )
        h, _ = stack(name="stack")(h, None)
        return nn.Dense(3, name="out")(h)


class NNXMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.first = nnx.Linear(4, 8, rngs=rngs)
        self.hidden = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(2)])
        self.norm = nnx.LayerNorm(8, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        x = jnp.tanh(self.first(x))
        for layer in self.hidden:
            x = jnp.tanh(layer(x))
        return self.head(self.norm(x))


class NNXCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.head = nnx.Linear(4 * 6 * 6, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        return self.head(x.reshape(x.shape[0], -1))


# --------------------------------------------------------------------------------- the harness


@dataclasses.dataclass
class UserModel:
    model: Any  # what gradflow is given
    variables: Any
    x: Any
    y: Any
    names: list[str]  # the layers the forward pass runs, in order
    outputs: Callable[[dict], Any]  # outputs on (x, y) with eps[name] added to each layer output
    loss: str = "softmax_cross_entropy"
    train: bool = False
    params: Callable[[], Any] = None  # the trainable parameters (for jax.grad references)
    grad_paths: dict = dataclasses.field(default_factory=dict)  # name -> (weight path, bias path)


def _linen_outputs(module, variables, x, names, *, train=False):
    """Outputs with eps added to each named module's output, through nn.intercept_methods."""

    def outputs(eps, params=None, x=x):
        v = dict(variables) if params is None else {**variables, "params": params}
        count: dict[str, int] = {}

        def icpt(f, args, kwargs, ctx):
            out = f(*args, **kwargs)
            if ctx.method_name != "__call__":
                return out
            path = "/".join(ctx.module.scope.path)
            if path in eps:
                count[path] = count.get(path, 0) + 1
                out = out + eps[path]
            return out

        with nn.intercept_methods(icpt):
            kw = {"train": train} if train else {}
            if train:
                out, _ = module.apply(v, x, mutable=["batch_stats"], **kw)
            else:
                out = module.apply(v, x)
        return out

    return outputs


def _linen(module, key, x, y, names, *, train=False, loss="softmax_cross_entropy"):
    variables = module.init(key, x)
    return UserModel(
        model=module,
        variables=variables,
        x=x,
        y=y,
        names=names,
        outputs=_linen_outputs(module, variables, x, names, train=train),
        loss=loss,
        train=train,
        params=lambda: variables["params"],
    )


def conv_net(key):
    kx, kp = jax.random.split(key)
    x = jax.random.normal(kx, (6, 8, 8, 1))
    return _linen(ConvNet(), kp, x, jnp.arange(6) % 10, ["z_conv", "b_conv", "a_head"])


def bn_conv_net(key):
    kx, kp = jax.random.split(key)
    x = jax.random.normal(kx, (6, 8, 8, 1))
    names = ["Conv_0", "BatchNorm_0", "Dense_0"]
    return _linen(BNConvNet(), kp, x, jnp.arange(6) % 10, names, train=True)


def transformer(key, pre=True):
    kx, kp = jax.random.split(key)
    tokens = jax.random.randint(kx, (4, 5), 0, 11)
    names = ["embed", *(n for i in range(2) for n in _block_names(i, pre))]
    names += ["ln_f", "head"] if pre else ["head"]
    return _linen(Transformer(pre=pre), kp, tokens, tokens, names)


def seq_dense(key):
    kx, kp = jax.random.split(key)
    x = jax.random.normal(kx, (5, 7, 4))
    return _linen(SeqDense(), kp, x, jnp.arange(5) % 3, ["inp", "mix", "out"])


def scan_stack(key):
    kx, kp = jax.random.split(key)
    x = jax.random.normal(kx, (6, 4))
    module = ScanStack()
    variables = module.init(kp, x)
    names = ["inp", *(f"stack/dense[{t}]" for t in range(4)), "out"]

    def outputs(eps, params=None):
        p = variables["params"] if params is None else params
        h = x @ p["inp"]["kernel"] + p["inp"]["bias"] + eps["inp"]
        for t in range(4):
            k, b = p["stack"]["dense"]["kernel"][t], p["stack"]["dense"]["bias"][t]
            h = jnp.tanh(h @ k + b + eps[f"stack/dense[{t}]"])
        return h @ p["out"]["kernel"] + p["out"]["bias"] + eps["out"]

    return UserModel(
        model=module,
        variables=variables,
        x=x,
        y=jnp.arange(6) % 3,
        names=names,
        outputs=outputs,
        params=lambda: variables["params"],
    )


def nnx_mlp(key):
    kx, kp = jax.random.split(key)
    x = jax.random.normal(kx, (6, 4))
    model = NNXMLP(nnx.Rngs(params=kp))
    names = ["first", "hidden/0", "hidden/1", "norm", "head"]

    def outputs(eps, params=None):
        m = _nnx_copy(model, params)
        h = jnp.tanh(m.first(x) + eps["first"])
        for i, layer in enumerate(m.hidden):
            h = jnp.tanh(layer(h) + eps[f"hidden/{i}"])
        h = m.norm(h) + eps["norm"]
        return m.head(h) + eps["head"]

    return UserModel(
        model=model,
        variables=None,
        x=x,
        y=jnp.arange(6) % 3,
        names=names,
        outputs=outputs,
        params=lambda: _nnx_split(model)[1],
    )


def _nnx_split(model):
    return nnx.split(model, nnx.Param, ...)


def _nnx_copy(model, params=None):
    graphdef, p, rest = _nnx_split(model)
    return nnx.merge(graphdef, p if params is None else params, rest)


def nnx_cnn(key):
    kx, kp = jax.random.split(key)
    x = jax.random.normal(kx, (6, 6, 6, 1))
    model = NNXCNN(nnx.Rngs(params=kp))
    names = ["conv", "bn", "head"]

    def outputs(eps, params=None):
        m = _nnx_copy(model, params)
        m.eval()
        h = nnx.relu(m.bn(m.conv(x) + eps["conv"]) + eps["bn"])
        return m.head(h.reshape(h.shape[0], -1)) + eps["head"]

    return UserModel(
        model=model,
        variables=None,
        x=x,
        y=jnp.arange(6) % 10,
        names=names,
        outputs=outputs,
        params=lambda: _nnx_split(model)[1],
    )


def equinox_mlp(key):
    import equinox as eqx

    kx, kp = jax.random.split(key)
    x = jax.random.normal(kx, (6, 4))
    mlp = eqx.nn.MLP(4, 3, 8, 2, activation=jnp.tanh, key=kp)
    params, static = eqx.partition(mlp, eqx.is_inexact_array)

    def apply_fn(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    names = ["layers/0", "layers/1", "layers/2"]

    def outputs(eps, params=None):
        m = eqx.combine(params if params is not None else mlp_params(), static)
        h = x
        for i, layer in enumerate(m.layers):
            h = jax.vmap(layer)(h) + eps[f"layers/{i}"]
            if i < 2:
                h = jnp.tanh(h)
        return h

    def mlp_params():
        return params

    return UserModel(
        model=apply_fn,
        variables=params,
        x=x,
        y=jnp.arange(6) % 3,
        names=names,
        outputs=outputs,
        params=mlp_params,
    )


def _plain_apply(p, x):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    h = jnp.tanh(h @ p["w2"] + p["b2"])
    return h @ p["w3"]


def plain_dict(key):
    ks = jax.random.split(key, 4)
    x = jax.random.normal(ks[0], (6, 4))
    params = {
        "w1": jax.random.normal(ks[1], (4, 8)) / 2,
        "b1": jnp.zeros(8),
        "w2": jax.random.normal(ks[2], (8, 8)) / 3,
        "b2": jnp.full(8, 0.1),
        "w3": jax.random.normal(ks[3], (8, 3)) / 3,
    }

    def outputs(eps, p=None):
        p = params if p is None else p
        h = jnp.tanh(x @ p["w1"] + p["b1"] + eps["w1"])
        h = jnp.tanh(h @ p["w2"] + p["b2"] + eps["w2"])
        return h @ p["w3"] + eps["w3"]

    return UserModel(
        model=_plain_apply,
        variables=params,
        x=x,
        y=jnp.arange(6) % 3,
        names=["w1", "w2", "w3"],
        outputs=outputs,
        params=lambda: params,
    )


FACTORIES: dict[str, Callable[[jax.Array], UserModel]] = {
    "linen_cnn": conv_net,
    "linen_bn_cnn_train": bn_conv_net,
    "linen_pre_ln_transformer": lambda k: transformer(k, pre=True),
    "linen_post_ln_transformer": lambda k: transformer(k, pre=False),
    "linen_sequence": seq_dense,
    "linen_scan": scan_stack,
    "nnx_mlp": nnx_mlp,
    "nnx_cnn": nnx_cnn,
    "equinox_mlp": equinox_mlp,
    "plain_dict": plain_dict,
}


# ------------------------------------------------------------------- factories for the CLI


def cli_cnn(key):
    """``gradflow diagnose --model user_models:cli_cnn --input-shape 8,8,1``."""
    module = ConvNet()
    return module, module.init(key, jnp.zeros((1, 8, 8, 1)))


def cli_nnx():
    """``gradflow diagnose --model user_models:cli_nnx``: an NNX module on digits (64 inputs)."""

    class Digits(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(64, 16, rngs=rngs)
            self.head = nnx.Linear(16, 10, rngs=rngs)

        def __call__(self, x):
            return self.head(jnp.tanh(self.fc(x)))

    return Digits(nnx.Rngs(0)), None


def cli_tokens(key):
    """A Transformer with its own batch of tokens (a 4-tuple)."""
    um = transformer(key)
    return um.model, um.variables, um.x, um.y


def cli_broken(key):
    raise RuntimeError("the user's factory is broken")
