"""The proximity operator of 1-D total variation: Condat's exact direct algorithm.

prox_{t TV}(y) = argmin_x |x - y|^2 / 2 + t sum_i |x_{i+1} - x_i| (L. Condat, "A direct algorithm
for 1-D total variation denoising", IEEE Signal Processing Letters 20(11), 2013). Used by
:func:`heatbath.kernels.prox.tv1d`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["tv1d_prox"]


# ---------------------------------------------------------------------------------------------
# 1-D total variation (Condat 2013)
# ---------------------------------------------------------------------------------------------
def _tv1d_vector(y, lam):
    """argmin_x |x - y|^2 / 2 + lam sum |x_{i+1} - x_i| for a 1-D y (Condat's direct algorithm).

    A state machine in a ``lax.while_loop``: each iteration either advances the running segment
    by one sample or closes a segment, writing its value over [k0, end] at once.
    """
    n = y.shape[0]
    lam = jnp.asarray(lam, y.dtype)
    idx = jnp.arange(n)
    i32 = jnp.int32

    def fill(out, k0, end, v):
        end = jnp.maximum(end, k0)  # a closing segment covers at least one sample
        return jnp.where((idx >= k0) & (idx <= end), v, out), end + 1

    def body(s):
        k, k0, km, kp, vmin, vmax, umin, umax, out, done = s
        at_end = k == n - 1
        y_next = y[jnp.minimum(k + 1, n - 1)]

        # -- the last sample reached -------------------------------------------------------
        def end_neg(_):  # umin < 0: close the segment at vmin, restart at kminus + 1
            o, k0n = fill(out, k0, km, vmin)
            yk = y[jnp.minimum(k0n, n - 1)]
            return (k0n, k0n, km * 0 + k0n, kp, yk, vmax, lam, yk + lam - vmax, o, done)

        def end_pos(_):  # umax > 0: close the segment at vmax, restart at kplus + 1
            o, k0n = fill(out, k0, kp, vmax)
            yk = y[jnp.minimum(k0n, n - 1)]
            return (k0n, k0n, km, k0n, vmin, yk, yk - lam - vmin, -lam, o, done)

        def end_last(_):  # the final segment
            v = vmin + umin / (k - k0 + 1).astype(y.dtype)
            o, _ = fill(out, k0, k, v)
            return (k, k0, km, kp, vmin, vmax, umin, umax, o, True)

        def at_last(_):
            branch = jnp.where(umin < 0, 0, jnp.where(umax > 0, 1, 2))
            return jax.lax.switch(branch, [end_neg, end_pos, end_last], None)

        # -- a sample in the middle ---------------------------------------------------------
        def middle(_):
            umin1 = umin + y_next - vmin
            umax1 = umax + y_next - vmax

            def jump_down(_):
                o, k0n = fill(out, k0, km, vmin)
                yk = y[k0n]
                return (k0n, k0n, k0n, k0n, yk, yk + 2 * lam, lam, -lam, o, done)

            def jump_up(_):
                o, k0n = fill(out, k0, kp, vmax)
                yk = y[k0n]
                return (k0n, k0n, k0n, k0n, yk - 2 * lam, yk, lam, -lam, o, done)

            def extend(_):
                k1 = k + 1
                lo_hit = umin1 >= lam
                km1 = jnp.where(lo_hit, k1, km)
                vmin1 = jnp.where(lo_hit, vmin + (umin1 - lam) / (k1 - k0 + 1).astype(y.dtype), vmin)
                umin2 = jnp.where(lo_hit, lam, umin1)
                hi_hit = umax1 <= -lam
                kp1 = jnp.where(hi_hit, k1, kp)
                vmax1 = jnp.where(hi_hit, vmax + (umax1 + lam) / (k1 - k0 + 1).astype(y.dtype), vmax)
                umax2 = jnp.where(hi_hit, -lam, umax1)
                return (k1, k0, km1, kp1, vmin1, vmax1, umin2, umax2, out, done)

            branch = jnp.where(umin1 < -lam, 0, jnp.where(umax1 > lam, 1, 2))
            return jax.lax.switch(branch, [jump_down, jump_up, extend], None)

        return jax.lax.cond(at_end, at_last, middle, None)

    zero = jnp.zeros((), i32)
    init = (zero, zero, zero, zero, y[0] - lam, y[0] + lam, lam, -lam, jnp.zeros_like(y), jnp.asarray(False))
    out = jax.lax.while_loop(lambda s: jnp.logical_not(s[-1]), body, init)[8]
    return out


def tv1d_prox(x, t):
    """prox of t sum |x_{i+1} - x_i| along the last axis of the array ``x`` (t >= 0)."""
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError("tv1d needs leaves with at least one axis (the signal's), got a scalar")
    if x.shape[-1] == 1:
        return x
    flat = x.reshape((-1, x.shape[-1]))
    t = jnp.asarray(t, x.dtype)
    return jax.vmap(lambda row: _tv1d_vector(row, t))(flat).reshape(x.shape)
