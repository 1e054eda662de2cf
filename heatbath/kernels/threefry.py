r"""Gaussian noise of JAX's default generator, bit for bit, in one fused pass.

``jax.random.normal(key, shape, dtype)`` with JAX's default generator (Threefry-2x32, the
counter-based hash of Salmon et al. 2011; partitionable layout, JAX's default since 0.5) is

    (b0, b1) = threefry2x32(key, (0, i))          for each flat index i of ``shape``
    bits     = b0 ^ b1                            (float64: b0 << 32 | b1)
    u        = max(lo, (bitcast(bits >> (nbits - nmant) | bits(1.0)) - 1) (1 - lo) + lo),
               lo = nextafter(-1, 0)
    z        = sqrt(2) erf_inv(u)

On the CPU, JAX lowers the hash as a rolled loop of five iterations (``fori_loop``), which XLA
cannot fuse with what follows: every call is a ``while`` loop of its own, reading and writing
two counter-sized arrays per iteration, and every call is compiled separately. A network has
one call per parameter array, so a Langevin step of a 784-100-50-10 MLP compiled six such
loops. :func:`normal` computes the same values with the 20 rounds unrolled in plain array
arithmetic, which XLA fuses with the uniform-to-normal map into one loop over the array. The
counter of each entry is built from one iota per dimension times its stride, as JAX builds
it, so that XLA's partitioner can split the hash along any sharded axis. Measured
(``benchmarks/bench_noise.py``, against ``jax.random.normal`` per parameter array; 2026-12-05,
2-core CPU): 0.68x the time for a draw shaped like the 669,706-weight MLP, and the compile of
a hand-written SGLD scan of the 84k-weight MLP 3.4-3.8 s -> 1.7 s.

:func:`bits` does the same for ``jax.random.bits`` (32-bit words: the cheap noise sources of
:mod:`heatbath.kernels.noise_weak` draw them). The noise is identical to
``jax.random.normal``'s (``tests/test_threefry.py`` compares them bit for bit); what a sampler
computes from it can differ in the last bits from before, where XLA now fuses the noise with
other operations. JAX's own functions are used for: keys of other generators, JAX's
non-partitionable layout (``jax_threefry_partitionable=False``), ``jax_debug_key_reuse``
(its checker counts a key's uses through JAX's samplers), dtypes other than float32 and
float64 (and float64 without ``jax_enable_x64``, which JAX warns about), symbolic
(shape-polymorphic) dimensions and arrays of 2^32 or more entries.
"""

from __future__ import annotations

import math
import operator
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["block", "bits", "normal"]

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA
_FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def block(k1, k2, x0, x1):
    """The Threefry-2x32 block function on uint32 arrays (NumPy or JAX, broadcast together):
    20 rounds, a key injection after every 4. Returns the two output words. The additions wrap
    around; NumPy warns about it on scalars (callers suppress that: ``np.errstate(over="ignore")``)."""
    u32 = np.uint32 if isinstance(x0, (np.ndarray, np.generic)) else jnp.uint32
    ks = (k1, k2, k1 ^ k2 ^ u32(_PARITY))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = (x1 << u32(r)) | (x1 >> u32(32 - r))
            x1 = x0 ^ x1
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + u32(i + 1)
    return x0, x1


def _static(shape):
    """``shape`` as a tuple of ints, or None when a dimension is symbolic (shape polymorphism)."""
    try:
        return tuple(operator.index(d) for d in shape)
    except TypeError:
        return None


def _fast(key, shape) -> bool:
    return (shape is not None and hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            and jnp.ndim(key) == 0 and jax.random.key_impl(key) == "threefry2x32"
            and bool(jax.config.jax_threefry_partitionable) and not jax.config.jax_debug_key_reuse
            and math.prod(shape) < 2**32)


def _words(key, shape):
    """The two Threefry output words of each entry of ``shape``, whose counter is the entry's
    row-major flat index (JAX's partitionable layout; entries < 2^32, so the high word is 0)."""
    data = jax.random.key_data(key)
    counts = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for dim in reversed(range(len(shape))):
        counts = counts + lax.broadcasted_iota(jnp.uint32, shape, dim) * jnp.uint32(stride)
        stride *= shape[dim]
    return block(data[0], data[1], jnp.zeros_like(counts), counts)


# Compiled functions of (key, shape[, dtype]), as JAX's own samplers are: traced once per shape
# and dtype in a process (the 20 rounds are about 100 array operations to trace), then a cached call.
@partial(jax.jit, static_argnums=1)
def _bits(key, shape):
    b0, b1 = _words(key, shape)
    return b0 ^ b1


@partial(jax.jit, static_argnums=(1, 2))
def _normal(key, shape, dtype):
    b0, b1 = _words(key, shape)
    finfo = jnp.finfo(dtype)
    if finfo.bits == 32:
        bits, uint = b0 ^ b1, np.uint32
    else:
        bits, uint = (b0.astype(jnp.uint64) << jnp.uint64(32)) | b1.astype(jnp.uint64), np.uint64
    one = np.array(1.0, dtype).view(uint)
    mantissa = lax.shift_right_logical(bits, jnp.asarray(finfo.bits - finfo.nmant, uint)) | jnp.asarray(one, uint)
    floats = lax.bitcast_convert_type(mantissa, dtype) - jnp.asarray(1.0, dtype)
    lo = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype), dtype=dtype)
    width = np.array(1.0, dtype) - lo  # in dtype, as XLA computes maxval - minval
    u = lax.max(jnp.asarray(lo, dtype), floats * jnp.asarray(width, dtype) + jnp.asarray(lo, dtype))
    return jnp.asarray(np.sqrt(2), dtype) * lax.erf_inv(u)


def bits(key, shape) -> jax.Array:
    """``jax.random.bits(key, shape, jnp.uint32)``, the same values, one fused pass."""
    static = _static(shape)
    if not _fast(key, static):
        return jax.random.bits(key, shape, jnp.uint32)
    return _bits(key, static)


def normal(key, shape, dtype=jnp.float32) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, the same values, one fused pass (module docstring)."""
    static = _static(shape)
    dtype = np.dtype(dtype)
    if not (_fast(key, static) and dtype in _FAST_DTYPES and jax.dtypes.canonicalize_dtype(dtype) == dtype):
        return jax.random.normal(key, shape, dtype)
    return _normal(key, static, dtype)
