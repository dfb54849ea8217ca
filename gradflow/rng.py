r"""Fast counter-based random keys for sweeps: XLA's native ThreeFry behind a JAX key.

Initialising a sweep's networks is random-number generation: 32 seeds of a depth-50, width-256
MLP draw :math:`32 \cdot 50 \cdot 256^2 \approx 1.05 \times 10^8` normals. JAX's default key
(``jax.random.key``, ThreeFry-2x32 written in jax.numpy and traced into the program) costs about
13 ns per 32-bit word on a 2-core CPU, so that draw takes 1.4 s, longer than the forward and
backward pass of all 32 networks. XLA implements the same cipher natively
(``lax.rng_bit_generator`` with ``RNG_THREE_FRY``): 0.32 s for the same words.

:func:`key` returns a JAX typed key whose ``random_bits`` is XLA's native ThreeFry-2x32 (Salmon,
Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3") and whose ``split`` and
``fold_in`` are JAX's threefry functions on the key words (as JAX's own ``rbg`` key). Every
``jax.random`` function takes it (``normal``, ``uniform``, ``split``, ``fold_in``, ...), and so
does everything that takes a key: ``model.init(gf.rng.key(seed), x)``,
:func:`gradflow.sweep.run` with ``rng="native"``.

Semantics, and what differs from JAX's ``rbg`` key:

* **Batch-independent under vmap.** ``lax.rng_bit_generator`` batches by drawing every row from
  the *first* key of the batch (JAX's ``unsafe_rbg`` and ``rbg`` keys inherit this: vmapped over
  seeds, they do not give each seed its own stream). Here ``random_bits`` carries its own batching
  rule (``jax.custom_batching.custom_vmap``): a batch of keys is drawn one key at a time
  (``lax.map``), so run ``i`` of a vmapped sweep gets exactly the numbers it gets alone, whatever
  the batch, chunk or device count. Tested in ``tests/test_rng.py``.
* **Another stream.** The numbers differ from ``jax.random.key(seed)``'s (same distribution, other
  cipher layout): results made with one key type are reproducible only with the same type.
* **Deterministic on one backend.** XLA's ThreeFry is specified bit for bit; the keys' derivation
  is JAX's threefry. Values are identical across runs, batch sizes and device counts.

Measured on the 2-core CPU of the benchmarks (``benchmarks/RESULTS.md``): 32 x ``(50, 256, 256)``
normals, vmapped over seeds, 1.40 s -> 0.86 s; ``MLP.init`` of that sweep 1.33 s -> 0.52 s.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax._src.random import rbg as _rbg  # JAX's threefry-based seed/split/fold_in on 4 words
from jax.extend.random import define_prng_impl

__all__ = ["IMPL", "NAMES", "key", "resolve"]

_UINT = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}


@functools.cache
def _bits_fn(bit_width: int, shape: tuple[int, ...]):
    dtype = _UINT[bit_width]

    @jax.custom_batching.custom_vmap
    def bits(key_data):
        return lax.rng_bit_generator(
            key_data, shape, dtype, algorithm=lax.RandomAlgorithm.RNG_THREE_FRY
        )[1]

    @bits.def_vmap
    def _batched(axis_size, in_batched, key_data):
        del axis_size
        if not in_batched[0]:
            return bits(key_data), False
        # one key at a time: lax.rng_bit_generator's own batching would use the first key only
        return lax.map(bits, key_data), True

    return bits


def _random_bits(key_data: jax.Array, bit_width: int, shape) -> jax.Array:
    if bit_width not in _UINT:
        raise TypeError(f"bit_width must be one of {sorted(_UINT)}, got {bit_width}")
    return _bits_fn(int(bit_width), tuple(int(d) for d in shape))(key_data)


#: The PRNG implementation (pass as ``impl=`` to ``jax.random.key``).
IMPL = define_prng_impl(
    key_shape=(4,),
    seed=_rbg._rbg_seed,
    split=_rbg._rbg_split,
    random_bits=_random_bits,
    fold_in=_rbg._rbg_fold_in,
    name="gradflow_threefry_native",
    tag="gfn",
)

#: Accepted names of :func:`resolve` (``gradflow.sweep.run(rng=...)``).
NAMES = ("threefry", "native")


def key(seed: Any) -> jax.Array:
    """``jax.random.key(seed, impl=IMPL)``: a typed key drawing with XLA's native ThreeFry.

    ``seed`` is an integer or an integer array (traceable, vmappable), as for ``jax.random.key``.
    """
    return jax.random.key(seed, impl=IMPL)


def resolve(name: str):
    """``"threefry"`` -> ``jax.random.key`` (JAX's default), ``"native"`` -> :func:`key`."""
    if name == "threefry":
        return jax.random.key
    if name == "native":
        return key
    raise ValueError(f"unknown rng {name!r}; valid names: {', '.join(NAMES)}")
