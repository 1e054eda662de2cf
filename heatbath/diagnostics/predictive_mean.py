"""The posterior predictive mean without materialising a predictive per draw.

A Bayesian network's predictive p(y | x, D) ~ (1/S) sum_s p(y | x, theta_s) is usually computed
by stacking the S per-draw predictions (S, n, K) and averaging: with S = 10^4 draws, n = 10^4
test inputs and K = 10 classes that is 4 GB of float32 (the out-of-memory errors of
``numpyro.infer.Predictive`` on Bayesian networks, numpyro issues 1503 and 1292).
:func:`predictive_moments` runs ``predict`` on ``chunk_size`` draws at a time (one compiled
``vmap``), sums the chunk on the device and adds it into float64 accumulators on the host, so
the memory is O(chunk_size n K) whatever S is:

    mean_ik   = (1/S) sum_s p_ik(theta_s)
    second_ik = (1/S) sum_s p_ik(theta_s)^2,   var_ik = second_ik - mean_ik^2

(the spread of the per-draw predictions: epistemic uncertainty). Draws come from a
:class:`~heatbath.drivers.Result` (every kept chain; diverged chains are left out as
``Result.get_samples`` does), from an approximation with ``sample(key, num)`` (``hb.fit``'s
result, a SWAG or Laplace approximation: the draws themselves are then also made a chunk at a
time, never all at once), or from a dict of arrays with a leading draw axis.

Inside the scan instead: a model with a deterministic site of the test predictions, sampled with
``hb.sample(..., keep="moments")``, accumulates their running mean and variance as the draws are
made (``Result.moments``); see ``heatbath.models.network``'s ``predict_at``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PredictiveMoments", "predictive_moments"]


class PredictiveMoments(NamedTuple):
    """``mean`` and ``second`` (the mean of squares) of the per-draw predictions (float64,
    shape of one prediction), ``var`` = second - mean^2 (clipped at 0), ``num_draws``."""

    mean: np.ndarray
    second: np.ndarray
    num_draws: int

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.second - self.mean**2, 0.0)


def _rows(x) -> Optional[int]:
    leaves = jax.tree.leaves(x)
    if not leaves or np.ndim(leaves[0]) == 0:
        return None
    return int(np.shape(leaves[0])[0])


def _chunks_from_dict(draws: dict, chunk_size: int):
    leaves = jax.tree.leaves(draws)
    if not leaves:
        raise ValueError("no draws: the dict of draws is empty")
    total = int(np.shape(leaves[0])[0])
    for start in range(0, total, chunk_size):
        yield jax.tree.map(lambda a: np.asarray(a[start : start + chunk_size]), draws)


def _source_chunks(source, chunk_size, num_draws, seed, include_diverged):
    """Yield dicts of draws with a leading draw axis of at most chunk_size."""
    if hasattr(source, "samples") and hasattr(source, "get_samples"):  # a Result
        if not source.samples:
            raise ValueError("this Result has no draws (keep='moments'): sample with a deterministic site of "
                             "the predictions to accumulate them in the scan, or keep the draws")
        by_chain = source.get_samples(group_by_chain=True, include_diverged=include_diverged)
        for c in range(np.shape(jax.tree.leaves(by_chain)[0])[0]):
            yield from _chunks_from_dict(jax.tree.map(lambda a: a[c], by_chain), chunk_size)
        return
    if hasattr(source, "sample") and callable(source.sample):  # an approximation
        if num_draws is None:
            raise ValueError("predictive_moments of an approximation needs num_draws")
        key = jax.random.key(seed) if isinstance(seed, int) else seed
        done = 0
        while done < num_draws:
            k = min(chunk_size, num_draws - done)
            yield source.sample(jax.random.fold_in(key, done), k)
            done += k
        return
    if isinstance(source, dict):
        yield from _chunks_from_dict(source, chunk_size)
        return
    raise TypeError(f"cannot take draws from a {type(source).__name__}: pass a Result, an approximation "
                    "with sample(key, num), or a dict of arrays with a leading draw axis")


def predictive_moments(
    source,
    predict: Callable,
    inputs,
    *,
    chunk_size: int = 256,
    num_draws: Optional[int] = None,
    seed=0,
    probabilities: bool = True,
    include_diverged: bool = False,
) -> PredictiveMoments:
    """Mean and second moment of ``predict(draw, inputs)`` over the draws of ``source``.

    Args:
      source: a ``Result``, an approximation (``sample(key, num)``; then ``num_draws``), or a
        dict name -> array (draw, ...).
      predict: ``predict(draw, inputs) -> array``, ``draw`` a dict of one draw's values (the
        constrained values a Result records). With ``probabilities=True`` (default) it must
        return (n, K) class probabilities for n = the inputs' leading axis.
      inputs: the inputs (an array or pytree; its leading axis is n).
      chunk_size: draws per compiled evaluation (memory: chunk_size x one prediction).
    """
    if not callable(predict):
        raise TypeError("predict must be a function predict(draw, inputs) -> predictions")
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    n = _rows(inputs)

    @jax.jit
    def chunk_sums(draws, x):
        p = jax.vmap(lambda d: predict(d, x))(draws)
        return jnp.sum(p, axis=0), jnp.sum(p * p, axis=0), p[0]

    acc1 = acc2 = None
    count = 0
    for draws in _source_chunks(source, chunk_size, num_draws, seed, include_diverged):
        if acc1 is None:
            one = jax.tree.map(lambda a: a[0], draws)
            shape = jax.eval_shape(predict, one, inputs)
            if not hasattr(shape, "shape"):
                raise ValueError(f"predict must return one array, got {type(shape).__name__}")
            if probabilities and (len(shape.shape) != 2 or (n is not None and shape.shape[0] != n)):
                raise ValueError(f"predict returned an array of shape {tuple(shape.shape)}; it must return "
                                 f"(n, K) class probabilities with n = {n} rows (one per input), for ONE draw "
                                 "(predictive_moments maps it over the draws)")
        s1, s2, p0 = chunk_sums(draws, inputs)
        if acc1 is None:
            if probabilities:
                p0 = np.asarray(p0, np.float64)
                sums = p0.sum(axis=1)
                if not np.all(np.isfinite(p0)) or np.any(p0 < -1e-5) or np.any(np.abs(sums - 1) > 1e-3):
                    raise ValueError("predict must return class probabilities (rows >= 0 summing to 1), got rows "
                                     f"summing to {sums.min():.4g}..{sums.max():.4g}: apply jax.nn.softmax to "
                                     "logits, or pass probabilities=False for other predictions")
            acc1 = np.zeros(np.shape(s1), np.float64)
            acc2 = np.zeros(np.shape(s1), np.float64)
        acc1 += np.asarray(s1, np.float64)
        acc2 += np.asarray(s2, np.float64)
        count += int(np.shape(jax.tree.leaves(draws)[0])[0])
    if acc1 is None:
        raise ValueError("no draws to average")
    return PredictiveMoments(acc1 / count, acc2 / count, count)
