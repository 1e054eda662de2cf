r"""Stein discrepancies: how far draws are from a target known only through its score.

With p the target and s(x) = grad log p(x), a reproducing kernel k gives the *Stein kernel*

.. math::

    k_p(x, y) = \nabla_x \cdot \nabla_y k(x, y) + \nabla_x k(x, y) \cdot s(y)
                + \nabla_y k(x, y) \cdot s(x) + k(x, y)\, s(x) \cdot s(y),

whose mean under p is zero. The kernel Stein discrepancy of draws x_1..x_n is

.. math:: \mathrm{KSD}^2 = \frac{1}{n^2} \sum_{i,j} k_p(x_i, x_j)   \quad\text{(V-statistic)}

(Gorham & Mackey, "Measuring sample quality with kernels", ICML 2017: the KSD of the empirical
measure itself, always >= 0). With the inverse multiquadric kernel
k(x, y) = (c^2 + |x - y|^2)^beta, beta in (-1, 0), it controls weak convergence to p, unlike the
Gaussian kernel in d >= 3. The U-statistic (i != j, divided by n(n-1)) is unbiased for the KSD^2
of the sampling distribution and may be negative.

Only scores are needed, never the normaliser: every draw of a heatbath run, recorded with
``hb.sample(..., record_unconstrained=True)``, can be scored on its Target (:func:`scores`), on
the full data or, as in the stochastic Stein discrepancy (Gorham, Raj & Mackey, NeurIPS 2020),
on an independent minibatch per draw.

Numerics: the n^2 sum runs in JAX over (chunk x chunk) blocks (O(n^2) time, O(chunk^2) memory,
one compilation per block shape; the upper triangle only, k_p being symmetric), under a local
``jax.enable_x64`` so that every block is evaluated in float64 whatever the global setting, and
the per-block sums are added on the host with ``math.fsum``. The n^2 terms are O(d) each and
cancel down to O(d / n) for good draws; float64 keeps that cancellation exact enough to agree
with a direct float64 NumPy sum to ~1e-12 (a float32 sum cannot promise 1e-8), at about twice
the CPU time of float32 (21 s vs 10 s for n = 1e5, d = 10). ``precision="float32"`` is offered
for speed: blocks in float32, block sums still added in float64; it agreed to 1e-6 relative at
n = 1e4 and 2e-7 at n = 1e5 in our measurements (the rounding errors mostly average out).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.diagnostics._draws import as_matrix, check_finite, x64
from heatbath.diagnostics.fssd import FSSD, fssd
from heatbath.diagnostics.scores import scores, stochastic_scores

__all__ = ["ksd", "stein_kernel_sum", "fssd", "FSSD", "scores", "stochastic_ksd", "ksd_result"]

KERNELS = ("imq", "gaussian")


def _stein_block(xa, sa, wa, xb, sb, wb, c, beta, kernel, half):
    """sum_ij wa_i wb_j k_p(xa_i, xb_j) for one block pair, by matrix products.

    With r = x - y and u = c^2 + |r|^2 the IMQ Stein kernel is
    u^b s_x.s_y + 2b u^(b-1) r.(s_y - s_x) - 2bd u^(b-1) - 4b(b-1) u^(b-2) |r|^2;
    the Gaussian one (bandwidth c) is k [s_x.s_y - r.(s_y - s_x)/c^2 + d/c^2 - |r|^2/c^4].
    """
    d = xa.shape[1]
    r2 = jnp.maximum(
        jnp.sum(xa * xa, 1)[:, None] + jnp.sum(xb * xb, 1)[None, :] - 2.0 * xa @ xb.T, 0.0
    )
    ss = sa @ sb.T
    # r.(s_y - s_x) = x.s_y - y.s_y - x.s_x + y.s_x
    cross = xa @ sb.T - jnp.sum(xb * sb, 1)[None, :] - jnp.sum(xa * sa, 1)[:, None] + sa @ xb.T
    if kernel == "imq":
        u = c * c + r2
        inv = 1.0 / u
        k0 = jax.lax.rsqrt(u) if half else u**beta
        k1 = k0 * inv
        kp = k0 * ss + 2.0 * beta * k1 * cross - 2.0 * beta * d * k1 - 4.0 * beta * (beta - 1.0) * (k1 * inv) * r2
    else:
        h2 = c * c
        kp = jnp.exp(-0.5 * r2 / h2) * (ss - cross / h2 + d / h2 - r2 / (h2 * h2))
    return wa @ (kp @ wb)


_stein_block_jit = jax.jit(_stein_block, static_argnames=("kernel", "half"))


def _diagonal(s: np.ndarray, c: float, beta: float, kernel: str) -> float:
    """sum_i k_p(x_i, x_i): |s|^2 c^(2b) - 2bd c^(2b-2) (IMQ); |s|^2 + d/c^2 (Gaussian)."""
    d = s.shape[1]
    s2 = np.einsum("ij,ij->i", s, s)
    if kernel == "imq":
        vals = s2 * c ** (2 * beta) - 2 * beta * d * c ** (2 * beta - 2)
    else:
        vals = s2 + d / c**2
    return math.fsum(vals)


def stein_kernel_sum(x: np.ndarray, s: np.ndarray, *, kernel="imq", c=1.0, beta=-0.5,
                     chunk_size=512, precision="float64") -> float:
    r"""sum_{i,j} k_p(x_i, x_j) over all n^2 pairs of rows of ``x`` (n, d) with scores ``s``.

    Blocks of ``chunk_size`` rows (fewer for small n: n rounded up to a power of two); the last
    one zero-padded with zero weight, so that every block has one shape and compiles once;
    upper-triangle block pairs only, off-diagonal ones counted twice. Draws are centred first
    (k_p depends on x - y only), which keeps the expansion |x - y|^2 = |x|^2 + |y|^2 - 2 x.y
    accurate.
    """
    n, d = x.shape
    # block rows: n rounded up to a power of two (>= 64), at most chunk_size: few compilations
    bsz = max(1, min(int(chunk_size), max(64, 1 << (n - 1).bit_length())))
    nb = -(-n // bsz)
    pad = nb * bsz - n
    xc = x - x.mean(axis=0)
    w = np.concatenate([np.ones(n), np.zeros(pad)])
    xc = np.concatenate([xc, np.zeros((pad, d))])
    sp = np.concatenate([s, np.zeros((pad, d))])
    dtype = np.float64 if precision == "float64" else np.float32
    ctx = x64() if precision == "float64" else contextlib.nullcontext()
    with ctx:
        xs = [jnp.asarray(xc[i * bsz:(i + 1) * bsz], dtype) for i in range(nb)]
        ss = [jnp.asarray(sp[i * bsz:(i + 1) * bsz], dtype) for i in range(nb)]
        ws = [jnp.asarray(w[i * bsz:(i + 1) * bsz], dtype) for i in range(nb)]
        cc, bb = jnp.asarray(c, dtype), jnp.asarray(beta, dtype)
        parts, mult = [], []
        for a in range(nb):
            for b in range(a, nb):
                parts.append(_stein_block_jit(xs[a], ss[a], ws[a], xs[b], ss[b], ws[b], cc, bb, kernel=kernel,
                                              half=beta == -0.5))
                mult.append(1.0 if a == b else 2.0)
        vals = np.asarray(jax.device_get(parts), dtype=np.float64)  # no stacking op to compile
    return math.fsum(m * v for m, v in zip(mult, vals))


def _check_options(kernel, c, beta, chunk_size, precision):
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if not (np.isfinite(c) and c > 0):
        raise ValueError(f"c must be a positive number, got {c!r}")
    if kernel == "imq" and not (-1.0 < beta < 0.0):
        raise ValueError(f"beta must lie in (-1, 0) for the IMQ kernel (Gorham & Mackey 2017), got {beta!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if precision not in ("float64", "float32"):
        raise ValueError(f"precision must be 'float64' or 'float32', got {precision!r}")


def ksd(draws, scores, *, kernel: str = "imq", c: float = 1.0, beta: float = -0.5,
        ustat: bool = False, squared: bool = False, sample_axes: Optional[int] = None,
        chunk_size: int = 512, precision: str = "float64") -> float:
    r"""Kernel Stein discrepancy of ``draws`` from the target whose scores are ``scores``.

    .. math::

        \mathrm{KSD}^2_V = \frac{1}{n^2} \sum_{i,j=1}^n k_p(x_i, x_j), \qquad
        \mathrm{KSD}^2_U = \frac{1}{n(n-1)} \sum_{i \ne j} k_p(x_i, x_j),

    k_p the Stein kernel of k(x, y) = (c^2 + |x - y|^2)^beta (IMQ, Gorham & Mackey 2017; the
    default c = 1, beta = -1/2 is theirs) or of exp(-|x - y|^2 / (2 c^2)) (``kernel="gaussian"``).

    Args:
      draws: an (n, d) array; an (n,) array (d = 1); a (chain, draw, d) array (flattened over
        chain and draw); or a pytree of arrays with ``sample_axes`` leading axes, each draw's
        leaves raveled and concatenated.
      scores: grad log p at each draw, the same shape (and structure) as ``draws``.
      ustat: the U-statistic instead of the (default) V-statistic.
      squared: return KSD^2 (a U-statistic may be negative) rather than sqrt(max(KSD^2, 0)).
      sample_axes: leading axes that index draws: default 1, or 2 for a 3-D bare array.
      chunk_size: rows per block: memory is O(chunk_size^2), time O(n^2).
      precision: ``"float64"`` (default; blocks under a local ``jax.enable_x64``) or
        ``"float32"`` (about 2x faster, ~1e-6 relative; block sums still added in float64).

    Returns:
      The KSD (or KSD^2) as a Python float.

    Raises:
      ValueError: shapes or structures differ, no draws, non-finite values, bad options.
    """
    _check_options(kernel, c, beta, chunk_size, precision)
    x, lead = as_matrix(draws, sample_axes, "draws")
    s, lead_s = as_matrix(scores, sample_axes, "scores")
    if jax.tree.structure(draws) != jax.tree.structure(scores):
        raise ValueError(
            f"draws and scores have different structures: {jax.tree.structure(draws)} vs {jax.tree.structure(scores)}"
        )
    if x.shape != s.shape or lead != lead_s:
        raise ValueError(
            f"draws and scores have different shapes: draws {lead} x {x.shape[1]} values per draw, "
            f"scores {lead_s} x {s.shape[1]}; pass grad log p at each draw, shaped like the draws"
        )
    check_finite(x, "draws")
    check_finite(s, "scores")
    n = x.shape[0]
    if ustat and n < 2:
        raise ValueError("the U-statistic needs at least 2 draws")
    total = stein_kernel_sum(x, s, kernel=kernel, c=float(c), beta=float(beta),
                             chunk_size=int(chunk_size), precision=precision)
    if ustat:
        value = (total - _diagonal(s, float(c), float(beta), kernel)) / (n * (n - 1.0))
    else:
        value = total / (float(n) * n)
    return float(value) if squared else math.sqrt(max(value, 0.0))


def stochastic_ksd(draws, score_fn, *, batch_size: Optional[int] = None, seed=0,
                   sample_axes: Optional[int] = None, **ksd_kwargs) -> float:
    r"""Stochastic kernel Stein discrepancy (Gorham, Raj & Mackey, NeurIPS 2020).

    The KSD with each draw scored on its own independent minibatch B_i of the data:

    .. math:: \hat s(x_i) = \nabla \log p_0(x_i) + \frac{N}{|B_i|} \sum_{j \in B_i} \nabla \log p(y_j | x_i).

    It converges to the KSD as the minibatch grows (equal at |B_i| = N; see the README for the
    measured rate), and, for a fixed batch size, still detects non-convergence as n grows.

    Args:
      draws: unconstrained draws (a pytree like the Target's parameters with leading axes
        (chain, draw) or (n,)) when ``score_fn`` is a Target; otherwise as in :func:`ksd`.
      score_fn: a :class:`heatbath.models.Target` (each draw scored on ``batch_size`` rows
        drawn without replacement, independently per draw; ``batch_size=None``: full data), or
        a function ``score_fn(x, key) -> stochastic score`` of one draw ``x`` (the draws'
        structure without its sample axes) and a JAX key, independent across draws.
      seed: seeds the minibatches (draw i uses ``fold_in(key(seed), i)``).
      ksd_kwargs: passed to :func:`ksd` (kernel, c, beta, ustat, squared, chunk_size, ...).
    """
    noisy, axes = stochastic_scores(draws, score_fn, batch_size=batch_size, seed=seed, sample_axes=sample_axes)
    return ksd(draws, noisy, sample_axes=axes, **ksd_kwargs)


def ksd_result(result, target=None, *, batch_size: Optional[int] = None, seed=0, **ksd_kwargs) -> float:
    """The KSD of a heatbath run's draws, scored on its Target in the unconstrained space.

    Args:
      result: a :class:`heatbath.Result` of ``hb.sample(..., record_unconstrained=True)``.
      target: the Target to score on (default: ``result.target``, the one that was sampled).
      batch_size: None (default) for exact full-data scores; an int for the stochastic KSD.
      ksd_kwargs: passed to :func:`ksd`.

    Raises:
      ValueError: the run kept no unconstrained draws, has no draws, or no target is known.
    """
    draws = getattr(result, "unconstrained", None)
    if draws is None and getattr(result, "moments", None) is not None and not getattr(result, "samples", None):
        raise ValueError(
            "this run kept no draws (keep='moments'): the KSD needs draws; run hb.sample(..., "
            "keep='draws', record_unconstrained=True)"
        )
    if draws is None:
        raise ValueError(
            "this result has no unconstrained draws (the space where scores live): run "
            "hb.sample(..., record_unconstrained=True)"
        )
    leaves = jax.tree.leaves(draws)
    if not leaves or any(np.ndim(v) < 2 or 0 in np.shape(v)[:2] for v in leaves):
        raise ValueError("this result holds no draws (zero chains or zero draws): nothing to measure")
    target = target if target is not None else getattr(result, "target", None)
    if target is None:
        raise ValueError("no target: pass target=... (the Target that was sampled)")
    sc = scores(target, draws, batch_size=batch_size, seed=seed)
    return ksd(draws, sc, sample_axes=2, **ksd_kwargs)

