r"""Scores of draws on a heatbath Target: full-data or one independent minibatch per draw.

For a Target with log p(theta | x) = log p_0(theta) + sum_{j=1}^N log p(x_j | theta), the score
of draw theta_i is

.. math:: s(\theta_i) = \nabla \log p_0(\theta_i) + \frac{N}{m} \sum_{j \in B_i} \nabla \log p(x_j | \theta_i),

with B_i = all N rows (exact scores) or m rows drawn uniformly without replacement,
independently for each draw (the stochastic Stein discrepancy of Gorham, Raj & Mackey,
NeurIPS 2020). Draws live in the Target's unconstrained space (``Result.unconstrained``).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.diagnostics._draws import is_array

__all__ = ["scores", "stochastic_scores"]


def _sample_axes(target, draws) -> tuple[int, tuple]:
    """How many leading axes of ``draws`` index draws, from the Target's parameter shapes."""
    example = target.example_params()
    if jax.tree.structure(example) != jax.tree.structure(draws):
        raise ValueError(
            f"draws have structure {jax.tree.structure(draws)}, the target's parameters "
            f"{jax.tree.structure(example)}: pass unconstrained draws (Result.unconstrained)"
        )
    extra, lead = set(), set()
    for ex, leaf in zip(jax.tree.leaves(example), jax.tree.leaves(draws)):
        shape = np.shape(leaf)
        k = len(shape) - len(ex.shape)
        if k not in (1, 2) or tuple(shape[k:]) != tuple(ex.shape):
            raise ValueError(
                f"a draws leaf has shape {shape} for a parameter of shape {ex.shape}: expected "
                f"(n,) + {ex.shape} or (chain, draw) + {ex.shape}"
            )
        extra.add(k)
        lead.add(tuple(shape[:k]))
    if len(extra) != 1 or len(lead) != 1:
        raise ValueError(f"draws leaves disagree on their leading (chain, draw) axes: {sorted(lead)}")
    lead = lead.pop()
    if int(np.prod(lead)) == 0:
        raise ValueError(f"draws hold no draws (leading axes {lead})")
    return extra.pop(), lead


def _one_score(target, batch_size):
    """score(params, key, data) of one draw; full data when ``batch_size`` is None."""
    num = target.num_data

    if batch_size is None:

        def score(params, key, data):
            del key
            return jax.grad(lambda q: sum(target.terms(q, data)))(params)

    else:
        scale = num / batch_size

        def score(params, key, data):
            # the m largest of N iid uniforms index a uniformly random m-subset (no replacement)
            rows = jax.lax.top_k(jax.random.uniform(key, (num,)), batch_size)[1]
            batch = jax.tree.map(lambda v: v[rows], data)

            def logp(q):
                lp, ll = target.terms(q, batch)
                return lp + scale * ll

            return jax.grad(logp)(params)

    return score


def _run_chunked(fn, flat, keys, extra_arg, chunk):
    """``vmap(fn)`` over the leading axis of ``flat`` (a pytree) in fixed-size, padded chunks."""
    n = jax.tree.leaves(flat)[0].shape[0]
    chunk = max(1, min(chunk, n))
    out = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        idx = np.arange(start, start + chunk).clip(max=n - 1)  # pad with the last draw
        part = fn(jax.tree.map(lambda v: v[idx], flat), keys[idx], extra_arg)
        out.append(jax.tree.map(lambda v: np.asarray(v)[: stop - start], part))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *out)


def _keys(seed, n):
    base = seed if (hasattr(seed, "dtype") and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)) else jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n))


def scores(target, draws, batch_size: Optional[int] = None, seed=0, *, chunk_size: Optional[int] = None):
    """grad log p at each unconstrained draw, on the full data or a minibatch per draw.

    Args:
      target: a :class:`heatbath.models.Target`.
      draws: a pytree like ``target.example_params()`` with leading axes (chain, draw) or (n,),
        e.g. ``Result.unconstrained``.
      batch_size: None for exact scores; m for (N / m) times the likelihood gradient on m rows
        drawn without replacement, independently per draw (draw i's rows from
        ``fold_in(key(seed), i)``).
      chunk_size: draws per compiled, vmapped chunk (default: about 2^24 data values per chunk).

    Returns:
      The scores, with the structure and shapes of ``draws`` (NumPy arrays, in the target's
      parameter dtype).
    """
    axes, lead = _sample_axes(target, draws)
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        if batch_size > target.num_data:
            raise ValueError(f"batch_size {batch_size} exceeds the number of data rows {target.num_data}")
        if getattr(target, "minibatch_error", None):
            raise ValueError(f"this target cannot be minibatched: {target.minibatch_error}")
        batch_size = int(batch_size)
    n = int(np.prod(lead))
    example = target.example_params()
    flat = jax.tree.map(
        lambda v, ex: jnp.asarray(np.asarray(v).reshape((n,) + tuple(ex.shape)), ex.dtype), draws, example
    )
    if chunk_size is None:
        per_row = sum(int(np.prod(np.shape(v)[1:])) for v in jax.tree.leaves(target.data))
        rows = target.num_data if batch_size is None else batch_size
        chunk_size = max(1, min(4096, (1 << 24) // max(1, (rows + target.num_data) * max(per_row, 1))))
    fn = target.memo(
        f"heatbath.diagnostics.scores[{batch_size}]",
        lambda: jax.jit(jax.vmap(_one_score(target, batch_size), in_axes=(0, 0, None))),
    )
    out = _run_chunked(fn, flat, _keys(seed, n), target.data, int(chunk_size))
    return jax.tree.map(lambda v: v.reshape(lead + v.shape[1:]), out)


def stochastic_scores(draws, score_fn, *, batch_size=None, seed=0, sample_axes=None):
    """Scores for :func:`heatbath.diagnostics.stochastic_ksd`; returns (scores, sample_axes)."""
    from heatbath.models import Target

    if isinstance(score_fn, Target):
        axes, _ = _sample_axes(score_fn, draws)
        if sample_axes is not None and sample_axes != axes:
            raise ValueError(f"sample_axes={sample_axes} contradicts the target's parameter shapes ({axes})")
        return scores(score_fn, draws, batch_size=batch_size, seed=seed), axes
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a heatbath Target or a function (x, key) -> score, got {type(score_fn).__name__}")
    if batch_size is not None:
        raise ValueError("batch_size applies to a Target; a score function draws its own minibatch from its key")
    leaves = jax.tree.leaves(draws)
    if not leaves:
        raise ValueError("draws is empty: no arrays")
    axes = sample_axes if sample_axes is not None else (2 if is_array(draws) and np.ndim(draws) == 3 else 1)
    lead = np.shape(leaves[0])[:axes]
    n = int(np.prod(lead))
    if n == 0:
        raise ValueError(f"draws hold no draws (leading axes {lead})")
    flat = jax.tree.map(lambda v: jnp.asarray(np.asarray(v).reshape((n,) + np.shape(v)[axes:])), draws)
    fn = jax.jit(jax.vmap(lambda x, k, _: score_fn(x, k), in_axes=(0, 0, None)))
    out = _run_chunked(fn, flat, _keys(seed, n), None, 1024)
    return jax.tree.map(lambda v: v.reshape(tuple(lead) + v.shape[1:]), out), axes
