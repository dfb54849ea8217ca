r"""Fast counter-based random keys for sweeps: Threefry-2x32 as XLA lays it out, fused on CPU.

Initialising a sweep's networks is random-number generation: 1024 seeds of a depth-10, width-30
MLP draw :math:`10^7` normals, 32 seeds of a depth-50, width-256 MLP :math:`10^8`. JAX's default
key (``jax.random.key``) computes ThreeFry-2x32 in the program, and on CPU its lowering rolls the
cipher's 20 rounds into a loop (to compile faster), so every round is a pass over memory: about
13 ns per 32-bit word on a 2-core CPU, longer than the forward and backward pass of those
networks.

:func:`threefry_key` returns a key with ``jax.random.key(seed)``'s numbers, bit for bit (JAX's
default ``threefry2x32`` implementation, in its default ``jax_threefry_partitionable`` layout),
computed by the cipher written out below instead of JAX's rolled loop: the same results, a
fraction of the compile time for a vmapped network init. :func:`gradflow.sweep.run` makes its
default keys with it.

:func:`key` returns a JAX typed key whose ``random_bits`` is the same cipher (Salmon, Moraes,
Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3"; :func:`threefry2x32`) written
out round by round in ``jax.numpy``, which XLA fuses into one loop over the counters, with the
counters and output layout of XLA's own ``RngBitGenerator(RNG_THREE_FRY)``: its bits equal
``lax.rng_bit_generator(key_data, shape, algorithm=RNG_THREE_FRY)`` bit for bit (tested for 8, 16,
32 and 64-bit words, odd, even, empty and scalar shapes, and a carry in the 64-bit counter).
``split`` and ``fold_in`` are JAX's threefry functions on the key words (as JAX's own ``rbg``
key). Every ``jax.random`` function takes it (``normal``, ``uniform``, ``split``, ``fold_in``,
...), and so does everything that takes a key: ``model.init(gf.rng.key(seed), x)``,
:func:`gradflow.sweep.run` with ``rng="native"``.

Semantics, and what differs from JAX's ``rbg`` key:

* **Batch-independent under vmap.** ``lax.rng_bit_generator`` batches by drawing every row from
  the *first* key of the batch (JAX's ``unsafe_rbg`` and ``rbg`` keys inherit this: vmapped over
  seeds, they do not give each seed its own stream). Here the bits are elementwise functions of
  the key words and counters, so ``jax.vmap`` batches them like any arithmetic: run ``i`` of a
  vmapped sweep gets exactly the numbers it gets alone, whatever the batch, chunk or device
  count, and a batch of keys is drawn in one fused loop (no per-key loop). Tested in
  ``tests/test_rng.py``.
* **Another stream.** The numbers differ from ``jax.random.key(seed)``'s (same distribution, other
  cipher layout): results made with one key type are reproducible only with the same type.
* **Deterministic.** Threefry is integer arithmetic, specified bit for bit; the keys' derivation is
  JAX's threefry. The bits are identical across runs, batch sizes, device counts and backends
  (floating-point transforms of them, such as ``normal``'s ``erfinv``, may differ in the last bit
  between backends).

Measured on the 2-core CPU of the benchmarks: :math:`10^7` words in one call 23 ms (XLA's own
``RngBitGenerator`` 27 ms, ``jax.random.bits`` 164 ms); 11 draws of ``(30, 30)`` for each of 1024
vmapped keys 12 ms (drawing key by key with ``RngBitGenerator``, as this module did before, 54 ms).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import define_prng_impl
from jax.extend.random import rbg_prng_impl as _rbg  # JAX's threefry seed/split/fold_in on 4 words
from jax.typing import ArrayLike

__all__ = ["IMPL", "NAMES", "THREEFRY_IMPL", "key", "resolve", "threefry2x32", "threefry_key"]

_UINT = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA  # Threefish's key-schedule constant


def _rotl(x: jax.Array, d: int) -> jax.Array:
    return lax.shift_left(x, jnp.uint32(d)) | lax.shift_right_logical(x, jnp.uint32(32 - d))


def threefry2x32(k0, k1, x0, x1) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), elementwise on uint32 arrays.

    The block cipher of ``jax.random.key`` and of XLA's ``RngBitGenerator(RNG_THREE_FRY)``:
    key ``(k0, k1)``, counter ``(x0, x1)`` -> two words. Written out round by round, so XLA fuses
    the whole cipher into one loop over the counters (JAX's own CPU lowering rolls the 20 rounds
    into a ``fori_loop`` to compile faster, which makes every round a pass over memory).

    Raises:
      TypeError: an argument is not a ``uint32`` array (signed or float words would hash other
        bits without an error).
    """
    for name, v in (("k0", k0), ("k1", k1), ("x0", x0), ("x1", x1)):
        dtype = getattr(v, "dtype", None)
        if dtype != jnp.uint32:
            raise TypeError(
                f"threefry2x32: {name} must be a uint32 array, got {dtype or type(v).__name__}"
            )
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(_PARITY))
    x0, x1 = x0 + k0, x1 + k1
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x0, x1


def _counters(key_data: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """The 64-bit counters ``state + i`` (``i`` row-major over ``shape``) as (low, high) words;
    the state is key words 2 and 3 (low first), as XLA reads a ``u32[4]`` key."""
    n = math.prod(shape)
    if n >= 2**32:
        raise ValueError(f"gradflow.rng draws at most 2**32 - 1 words per call, got {shape}")
    lo = key_data[2] + lax.iota(jnp.uint32, n).reshape(shape)
    hi = key_data[3] + (lo < key_data[2]).astype(jnp.uint32)  # carry into the high word
    return lo, hi


def _split_dim(shape: tuple[int, ...]) -> int:
    """XLA's ``SplitShapeIntoHalves``: the first even dimension, else the first largest."""
    for i, d in enumerate(shape):
        if d % 2 == 0:
            return i
    return max(range(len(shape)), key=lambda i: (shape[i], -i))


def _bits32(key_data: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``lax.rng_bit_generator(key_data, shape, uint32, RNG_THREE_FRY)``'s bits, bit for bit.

    XLA halves the shape on one dimension ``d`` (:func:`_split_dim`), runs one cipher call per
    counter of the half shape and interleaves the two output words along ``d``.
    """
    if not shape:
        return _bits32(key_data, (1,))[0]
    d = _split_dim(shape)
    half = (*shape[:d], -(-shape[d] // 2), 1, *shape[d + 1 :])
    o0, o1 = threefry2x32(key_data[0], key_data[1], *_counters(key_data, half))
    # XLA:CPU fuses the cipher into this interleaving (and into a consumer such as normal's
    # erfinv), computing it once per output word; an optimization_barrier does not stop it there
    out = jnp.concatenate([o0, o1], axis=d + 1)
    out = out.reshape(*shape[:d], 2 * half[d], *shape[d + 1 :])
    return lax.slice_in_dim(out, 0, shape[d], axis=d)


def _bits64(key_data: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """XLA's 64-bit ThreeFry bits: one cipher call per element, ``low | high << 32``."""
    o0, o1 = threefry2x32(key_data[0], key_data[1], *_counters(key_data, shape))
    return o0.astype(jnp.uint64) | (o1.astype(jnp.uint64) << jnp.uint64(32))


def _random_bits(key_data: jax.Array, bit_width: int, shape) -> jax.Array:
    if bit_width not in _UINT:
        raise TypeError(f"bit_width must be one of {sorted(_UINT)}, got {bit_width}")
    shape = tuple(int(d) for d in shape)
    if bit_width == 64:
        return _bits64(key_data, shape)
    # 8 and 16 bits: the low bits of the 32-bit draw, as lax.rng_bit_generator returns them
    return _bits32(key_data, shape).astype(_UINT[bit_width])


#: The PRNG implementation (pass as ``impl=`` to ``jax.random.key``).
IMPL = define_prng_impl(
    key_shape=(4,),
    seed=_rbg.seed,
    split=_rbg.split,
    random_bits=_random_bits,
    fold_in=_rbg.fold_in,
    name="gradflow_threefry_native",
    tag="gfn",
)

# --------------------------------------------------------------------------- JAX's own stream
# jax.random.key(seed)'s implementation ("threefry2x32") with jax_threefry_partitionable on (the
# default since JAX 0.5): bits(key, shape) = c1 ^ c2 for (c1, c2) = threefry2x32(key, (hi, lo)),
# (hi, lo) the 64-bit row-major index of each element; split(key, shape) stacks (c1, c2) over
# the same counters; fold_in(key, d) = threefry2x32(key, (0, d)). With the flag off, or 2**32 or
# more words in one draw, JAX's own functions are called on the same key data.
_JAX_THREEFRY = "threefry2x32"


def _jax_key(key_data: jax.Array) -> jax.Array:
    return jax.random.wrap_key_data(key_data, impl=_JAX_THREEFRY)


def _fused(shape: tuple[int, ...]) -> bool:
    return bool(jax.config.jax_threefry_partitionable) and math.prod(shape) < 2**32


def _fry_counts(key_data: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    lo = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    return threefry2x32(key_data[0], key_data[1], jnp.zeros(shape, jnp.uint32), lo)


def _fry_seed(seed: jax.Array) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed, impl=_JAX_THREEFRY))  # no cipher call


def _fry_bits(key_data: jax.Array, bit_width: int, shape) -> jax.Array:
    shape = tuple(int(d) for d in shape)
    if bit_width not in _UINT:
        raise TypeError(f"bit_width must be one of {sorted(_UINT)}, got {bit_width}")
    if not _fused(shape):
        return jax.random.bits(_jax_key(key_data), shape, _UINT[bit_width])
    c1, c2 = _fry_counts(key_data, shape)
    if bit_width == 64:
        return (c1.astype(jnp.uint64) << jnp.uint64(32)) | c2.astype(jnp.uint64)
    return (c1 ^ c2).astype(_UINT[bit_width])


def _fry_split(key_data: jax.Array, shape) -> jax.Array:
    shape = tuple(int(d) for d in shape)
    if not _fused(shape):
        return jax.random.key_data(jax.random.split(_jax_key(key_data), shape))
    c1, c2 = _fry_counts(key_data, shape)
    return jnp.stack([c1, c2], axis=len(shape))


def _fry_fold_in(key_data: jax.Array, data: jax.Array) -> jax.Array:
    lo = jnp.asarray(data).astype(jnp.uint32)
    c1, c2 = threefry2x32(key_data[0], key_data[1], jnp.zeros_like(lo), lo)
    return jnp.stack([c1, c2])


#: The PRNG implementation of :func:`threefry_key`: JAX's ``threefry2x32`` stream, fused.
THREEFRY_IMPL = define_prng_impl(
    key_shape=(2,),
    seed=_fry_seed,
    split=_fry_split,
    random_bits=_fry_bits,
    fold_in=_fry_fold_in,
    name="gradflow_threefry2x32_fused",
    tag="gff",
)


#: Accepted names of :func:`resolve` (``gradflow.sweep.run(rng=...)``).
NAMES = ("threefry", "native")


def key(seed: ArrayLike) -> jax.Array:
    """``jax.random.key(seed, impl=IMPL)``: a typed key drawing with the fused ThreeFry above.

    ``seed`` is an integer or an integer array (traceable, vmappable), as for ``jax.random.key``;
    concrete seeds must lie in ``[0, 2**32)`` (ValueError otherwise; TypeError for non-integers).

    Example:
      A vmapped seed draws exactly what it draws alone:

      >>> def draw(seed):
      ...     return jax.random.normal(gf.rng.key(seed), (3,))
      >>> batch = jax.vmap(draw)(jnp.arange(4))
      >>> bool((batch[2] == draw(2)).all())
      True
    """
    _check_seed(seed)
    return jax.random.key(seed, impl=IMPL)


def threefry_key(seed: ArrayLike) -> jax.Array:
    """A typed key with exactly ``jax.random.key(seed)``'s numbers, computed fused.

    Every draw, ``split`` and ``fold_in`` equals JAX's default ``threefry2x32`` key's bit for bit
    (``jax.random.key_data`` too); only the key's implementation differs
    (:data:`THREEFRY_IMPL`): the cipher's 20 rounds are written out (:func:`threefry2x32`), so
    XLA fuses them into the consumer instead of running JAX's rolled CPU loop, one pass over
    memory per round. Measured on a 2-core CPU (benchmarks w1): the sweep program of 1024
    depth-10, width-30 MLP probes (init included) compiles in 2.6 s instead of 4.5 s and runs in
    447 ms instead of 538 ms, the results identical.
    :func:`gradflow.sweep.run` (``rng="threefry"``, its default) makes its keys with it.

    With ``jax_threefry_partitionable`` off (not JAX's default), or for one draw of ``2**32``
    words or more, it calls JAX's own functions on the key data, so the numbers stay JAX's.
    ``seed`` is as for :func:`key` (TypeError, ValueError otherwise).

    Example:
      >>> a = jax.random.normal(gf.rng.threefry_key(7), (3,))
      >>> bool((a == jax.random.normal(jax.random.key(7), (3,))).all())
      True
    """
    _check_seed(seed)
    return jax.random.key(seed, impl=THREEFRY_IMPL)


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or seed is None or isinstance(seed, str | float):
        raise TypeError(f"seed must be an integer or an integer array, got {seed!r}")
    if not isinstance(seed, jax.core.Tracer):
        arr = np.asarray(seed)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"seed must be an integer or an integer array, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= 2**32):
            raise ValueError(f"seed must lie in [0, 2**32), got {seed!r}")


def resolve(name: str) -> Callable[[ArrayLike], jax.Array]:
    """``"threefry"`` -> :func:`threefry_key` (``jax.random.key``'s numbers, fused),
    ``"native"`` -> :func:`key` (another stream)."""
    if name == "threefry":
        return threefry_key
    if name == "native":
        return key
    raise ValueError(f"unknown rng {name!r}; valid names: {', '.join(NAMES)}")
