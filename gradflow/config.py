r"""The precision policy: gradflow's numbers do not depend on the backend beyond float32 rounding.

A float32 matrix product is not one computation on every machine. XLA on a CPU multiplies and
accumulates in float32; on an NVIDIA GPU since Ampere, JAX's default precision lets cuBLAS round
the operands to TensorFloat-32 (10 mantissa bits instead of 23); on a TPU the default is one pass
of bfloat16 (7 bits). A gradient norm measured through fifty such products moves by about
:math:`10^{-4}` relative to float32 (measured on an H200: 3.8e-4 on a depth-50, width-1024 MLP), so
a toolkit that measures gradients would silently report other numbers on another machine.

gradflow therefore runs the float32 matrix products and convolutions of everything it traces at
``"highest"`` precision by default (:data:`DEFAULT`): float32 operands, float32 accumulation, on
every backend. The choice is the ``precision`` argument of :func:`jax.lax.dot_general` and
:func:`jax.default_matmul_precision` (JAX's names; see the docs of :class:`jax.lax.Precision`):

======================= ======================================================================
``"highest"`` (default)  float32 products on every backend (CPU, GPU without TF32, TPU in six
                         bfloat16 passes)
``"high"``               TensorFloat-32 on NVIDIA GPUs (Ampere and later), three bfloat16
                         passes on a TPU, float32 on a CPU
``"default"``            the backend's fastest: TensorFloat-32 on NVIDIA GPUs, one bfloat16
                         pass on a TPU, float32 on a CPU
======================= ======================================================================

JAX's aliases are accepted and stored under these names (``"float32"`` is ``"highest"``,
``"tensorfloat32"`` and ``"bfloat16_3x"`` are ``"high"``, ``"bfloat16"`` is ``"default"``). On a CPU
the three give bit-identical float32 results (XLA's CPU backend ignores the setting), so the
policy costs nothing there.

Opting in to the fast passes, for one block or for the process::

    import gradflow as gf

    with gf.config.use_matmul_precision("default"):   # TF32 on a GPU inside this block only
        report = gf.probes.probe(model, variables, x, y)

    gf.config.set_matmul_precision("default")         # from now on
    # or, before Python starts: GRADFLOW_MATMUL_PRECISION=default gradflow run criticality

Where it applies: gradflow's entry points enter :func:`matmul_scope` when they trace, namely
:func:`gradflow.probes.probe` and :func:`~gradflow.probes.probe_rnn`, the training functions
(:func:`gradflow.training.train_fn`, :func:`~gradflow.training.fit`,
:func:`~gradflow.training.make_train_step`, :func:`~gradflow.training.evaluate`,
:func:`~gradflow.training.init_state`), every sweep (:func:`gradflow.sweep.run` traces the
researcher's ``fn`` inside it, :func:`gradflow.sweep.batched` too) and the theory functions that
multiply matrices (:func:`gradflow.analytic.mlp_forward` and
:func:`~gradflow.analytic.mlp_grads`, :mod:`gradflow.spectra`'s network functions and
:func:`~gradflow.spectra.jacobian_singular_values`,
:func:`gradflow.meanfield.measure_propagation`). A product given an explicit ``precision=``
(e.g. a Flax ``Dense(precision=...)``) keeps its own. Code outside gradflow is untouched:
importing gradflow does not change JAX's global default.

The policy is read when a function is traced, as JAX reads its own configuration. gradflow's own
jitted entry points (:func:`~gradflow.probes.probe`, :func:`~gradflow.training.fit`,
:func:`~gradflow.sweep.run`) enter the scope outside their ``jax.jit``, so their compile caches
key on it. For a function you jit yourself around gradflow code (``jax.jit(train_fn(...))``,
``jax.jit(jax.vmap(lambda k: probe(...)))``), :func:`use_matmul_precision` and
:func:`set_matmul_precision` also set JAX's ``jax_default_matmul_precision``, on which JAX keys
its caches, so it is traced again when the policy changes. (The environment variable only sets
gradflow's initial policy: importing gradflow never changes JAX's configuration.)

Recorded: every sweep store's metadata (each session's ``matmul_precision``; the config, and so the
store's hash, names a precision other than the default, so a store never mixes two), each
experiment's ``run.json``, ``results/runtimes.json`` and the experiments index, and
:func:`gradflow.training.fit`'s checkpoint fingerprint (when not the default).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax

__all__ = [
    "ALIASES",
    "DEFAULT",
    "ENV_VAR",
    "PRECISIONS",
    "canonical",
    "matmul_precision",
    "matmul_scope",
    "set_matmul_precision",
    "use_matmul_precision",
    "wrap",
]

#: The policy's values, most exact first (see the module docstring for what each means).
PRECISIONS: tuple[str, ...] = ("highest", "high", "default")
#: gradflow's default: float32 products on every backend.
DEFAULT = "highest"
#: JAX's other names for the same three settings.
ALIASES: dict[str, str] = {
    "float32": "highest",
    "tensorfloat32": "high",
    "bfloat16_3x": "high",
    "bfloat16": "default",
}
#: Environment variable read once at import: the process's initial policy.
ENV_VAR = "GRADFLOW_MATMUL_PRECISION"

F = TypeVar("F", bound=Callable[..., Any])


def canonical(name: Any) -> str:
    """The policy name of ``name`` (one of :data:`PRECISIONS`; JAX's aliases are mapped).

    Raises:
      ValueError: ``name`` is not one of :data:`PRECISIONS` or :data:`ALIASES`.
    """
    if isinstance(name, str):
        key = name.strip().lower()
        if key in PRECISIONS:
            return key
        if key in ALIASES:
            return ALIASES[key]
    valid = ", ".join(repr(p) for p in (*PRECISIONS, *ALIASES))
    raise ValueError(f"unknown matmul precision {name!r}; valid: {valid}")


def _from_env() -> str:
    value = os.environ.get(ENV_VAR)
    if value is None or not value.strip():
        return DEFAULT
    try:
        return canonical(value)
    except ValueError as e:
        raise ValueError(f"environment variable {ENV_VAR}: {e}") from None


_global: str = _from_env()
_UNSET = object()
_jax_before: object = _UNSET  # JAX's own setting before set_matmul_precision first changed it
_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "gradflow_matmul_precision", default=None
)


def matmul_precision() -> str:
    """The policy in force here: the innermost :func:`use_matmul_precision`, else the process's
    (:func:`set_matmul_precision`, else ``$GRADFLOW_MATMUL_PRECISION``, else ``"highest"``)."""
    scoped = _scoped.get()
    return _global if scoped is None else scoped


def set_matmul_precision(name: str) -> str:
    """Set the process's policy to ``name`` (see :data:`PRECISIONS`); returns the previous one.

    Also sets JAX's ``jax_default_matmul_precision`` to ``name``, so that a function you jitted
    around gradflow code (``jax.jit(jax.vmap(lambda k: probe(...)))``) is traced again at the new
    policy instead of reusing its compiled program (JAX keys its caches on that setting); your
    own matrix products follow it too. Setting gradflow's default (``"highest"``) again puts
    back JAX's setting as it was before the first call.

    Raises:
      ValueError: an unknown name (the message lists the valid ones).
    """
    global _global, _jax_before
    new = canonical(name)
    if _jax_before is _UNSET:
        _jax_before = jax.config.jax_default_matmul_precision
    jax.config.update("jax_default_matmul_precision", _jax_before if new == DEFAULT else new)
    previous, _global = _global, new
    return previous


@contextlib.contextmanager
def use_matmul_precision(name: str) -> Iterator[str]:
    """Inside the ``with`` block (this thread or task only), gradflow traces at ``name``.

    The block also runs inside ``jax.default_matmul_precision(name)``: a function you jitted
    around gradflow code is traced again inside the block (JAX keys its caches on that setting)
    and your own matrix products in the block follow ``name`` too. Yields the canonical name.
    Raises ``ValueError`` for an unknown name, before the block runs.
    """
    new = canonical(name)
    token = _scoped.set(new)
    try:
        with jax.default_matmul_precision(new):
            yield new
    finally:
        _scoped.reset(token)


def matmul_scope() -> contextlib.AbstractContextManager:
    """The JAX context gradflow's entry points trace in:
    ``jax.default_matmul_precision(matmul_precision())``.

    Use it around your own code to trace it as gradflow does (e.g. a reference computation you
    compare a probe with)."""
    return jax.default_matmul_precision(matmul_precision())


def wrap(fn: F) -> F:
    """``fn`` running inside :func:`matmul_scope` (the policy is read at each call)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with matmul_scope():
            return fn(*args, **kwargs)

    return wrapped  # type: ignore[return-value]
