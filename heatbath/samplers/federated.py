"""Federated SGLD: DSGLD and FSGLD with conducive gradients (El Mekkaoui et al., UAI 2021).

The data live in K shards (clients). Each round a shard s is drawn with probability f_s and
T local steps run on minibatches B of shard s only (the batcher
:func:`heatbath.drivers.batching.federated` decides which shard, its size N_s and f_s reach
the step in ``oracle.batch_info``). A local step is any first-order sampler of the package
(SGLD by default, pSGLD, SGHMC) whose oracle is replaced by the federated gradient:

- DSGLD (distributed SGLD, Ahn et al. 2014), the likelihood scaled by the shard's share:

      g = grad log p(theta) + (N_s / (f_s n)) sum_{i in B} grad log p(x_i | theta);

- FSGLD adds the conducive gradient of Gaussian surrogates q_k of the shards' likelihoods:

      g_FS = g + grad log q(theta) - (1 / f_s) grad log q_s(theta),    q = prod_k q_k,

  which has mean zero over s (sum_s f_s (1/f_s) grad log q_s = grad log q) and cancels the
  shard's own likelihood where q_s fits it: with exact Gaussian q_k and the full shard as
  batch, g_FS is the exact full-data gradient of the log posterior whatever s is.

With SGLD as the local sampler, one step is theta <- theta + h g + sqrt(2 h T) xi (the paper's
convention theta += (eps/2) g + N(0, eps) is h = eps / 2).

The surrogates are kept in information form, grad log q_k(theta) = eta_k - Lambda_k theta
(:class:`ShardGaussians`; Lambda_k diagonal (K, d) or full (K, d, d) on the raveled position),
so a Laplace fit whose precision is singular (a feature constant within a shard) still gives
the exact second-order expansion of the shard's log likelihood. They are fitted once before
sampling, by the driver (:mod:`heatbath.drivers.federation`: a Laplace fit at each shard's
mode, or the moments of a short local SGLD run), or given.

Unavailable clients (``availability=`` of the batcher): the round's shard is drawn from f
renormalised over the round's available shards A, f'_s = f_s / sum_{k in A} f_k, and the
scaling and the correction use f_s := pi_s = E_A[f'_s 1{s in A}] (``batch_info["shard_prob"]``),
the probability that a round is served by s over the availability patterns. Then
E_{A,s}[(1/pi_s) grad log L_s] = sum_k grad log L_k and E_{A,s}[(1/pi_s) grad log q_s] = grad log q:
DSGLD stays unbiased over the rounds and FSGLD's correction has mean zero, whatever the
surrogates. (Scaling by f'_s instead, conditionally on A, would replace the absent clients'
likelihoods by their surrogates in FSGLD, biased by the surrogates' error, and drop them in
DSGLD.) A round with no available client is skipped: the chain stays where it is.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from heatbath.kernels.gradients import Oracle, naive
from heatbath.samplers.base import Sampler

PyTree = Any

__all__ = ["ShardGaussians", "shard_gaussians", "federated_gradient", "dsgld", "fsgld", "CONDUCIVE_METHODS"]

CONDUCIVE_METHODS = ("laplace", "laplace-diag", "sgld", "sgld-diag")


class ShardGaussians(NamedTuple):
    """Gaussian surrogates q_k of the K shards' likelihoods, in information form on the raveled
    position: grad log q_k(theta) = eta[k] - Lambda[k] theta (log q_k up to a constant).

    ``eta`` (K, d); ``prec`` Lambda: (K, d) diagonal or (K, d, d) full; ``method`` how they
    were fitted (for the record)."""

    eta: Any
    prec: Any
    method: str = "given"

    @property
    def num_shards(self) -> int:
        return int(np.shape(self.eta)[0])

    @property
    def dim(self) -> int:
        return int(np.shape(self.eta)[1])

    @property
    def diagonal(self) -> bool:
        return np.ndim(self.prec) == 2

    def __repr__(self) -> str:
        import hashlib

        h = hashlib.blake2b(digest_size=8)
        for a in (self.eta, self.prec):
            h.update(np.ascontiguousarray(np.asarray(a, np.float64)).tobytes())
        kind = "diag" if self.diagonal else "full"
        return f"ShardGaussians({self.method}, K={self.num_shards}, d={self.dim}, {kind}, {h.hexdigest()})"


def shard_gaussians(means, precisions, method: str = "given") -> ShardGaussians:
    """:class:`ShardGaussians` from moment form: q_k = N(means[k], precisions[k]^-1), ``means``
    (K, d), ``precisions`` (K, d) (diagonal) or (K, d, d)."""
    mu = np.asarray(means, np.float64)
    lam = np.asarray(precisions, np.float64)
    if mu.ndim != 2:
        raise ValueError(f"means must be (K, d), got shape {mu.shape}")
    K, d = mu.shape
    if lam.shape == (K, d):
        eta = lam * mu
    elif lam.shape == (K, d, d):
        eta = np.einsum("kij,kj->ki", lam, mu)
    else:
        raise ValueError(f"precisions must be (K, d) or (K, d, d) = ({K}, {d}[, {d}]), got {lam.shape}")
    if not (np.all(np.isfinite(eta)) and np.all(np.isfinite(lam))):
        raise ValueError("the shard Gaussians have non-finite means or precisions")
    return ShardGaussians(eta, lam, method)


def _correction(q: ShardGaussians, dtype):
    """(value, grad) of log q(x) - (1/f_s) log q_s(x) on the flat x, up to a constant."""
    eta = jnp.asarray(q.eta, dtype)
    lam = jnp.asarray(q.prec, dtype)
    eta_all, lam_all = jnp.sum(eta, 0), jnp.sum(lam, 0)
    diagonal = q.diagonal

    def quad(lam_, eta_, x):
        lx = lam_ * x if diagonal else lam_ @ x
        return jnp.dot(eta_, x) - 0.5 * jnp.dot(x, lx), eta_ - lx

    def corr(x, s, f):
        v_all, g_all = quad(lam_all, eta_all, x)
        v_s, g_s = quad(lam[s], eta[s], x)
        return v_all - v_s / f, g_all - g_s / f

    return corr


def federated_gradient(oracle: Oracle, batch, conducive: ShardGaussians | None = None):
    """The federated estimate ``(value, grad)`` at a position, as a function, for the round's
    shard in ``oracle.batch_info``: log p + (N_s / (f_s n)) sum_B log p(x_i | .), plus with
    ``conducive`` the correction log q - (1/f_s) log q_s."""
    info = oracle.batch_info
    if "shard_prob" not in info:
        raise ValueError("a federated sampler needs federated rounds: hb.sample(..., batching="
                         "hb.drivers.batching.federated(shards, local_steps=...))")
    n = jax.tree.leaves(batch)[0].shape[0]
    terms = oracle.terms

    def estimate(position, b):
        f = info["shard_prob"]
        scale = info["shard_size"].astype(f.dtype) / (f * n)

        def log_density(p):
            lp, ll = terms(p, b)
            return lp + scale * ll

        value, grad = jax.value_and_grad(log_density)(position)
        if conducive is not None:
            flat, unravel = ravel_pytree(position)
            cv, cg = _correction(conducive, flat.dtype)(flat, info["shard"], f.astype(flat.dtype))
            value = value + cv
            grad = jax.tree.map(jnp.add, grad, unravel(cg))
        return value, grad

    return estimate


_INFO_TYPES: dict = {}


def _info_type(local_type):
    """The local sampler's Info NamedTuple extended by the round's shard and the counters."""
    if local_type not in _INFO_TYPES:
        fields = tuple(local_type._fields) + ("shard", "rounds_served", "steps_served")
        _INFO_TYPES[local_type] = NamedTuple(f"Federated{local_type.__name__}", [(f, Any) for f in fields])
    return _INFO_TYPES[local_type]


def _local_sampler(local, step_size, temperature):
    from heatbath.samplers.hamiltonian import sghmc
    from heatbath.samplers.overdamped import psgld, sgld

    table = {"sgld": sgld, "psgld": psgld, "sghmc": sghmc}
    if isinstance(local, str):
        if local not in table:
            raise ValueError(f"local must be 'sgld', 'psgld', 'sghmc' or a Sampler, got {local!r}")
        if step_size is None:
            raise ValueError(
                "federated samplers need step_size= (h of the local steps; the paper's eps is 2 h): the automatic "
                "step size measures uniform minibatches, not the federated rounds' larger gradient noise"
            )
        if local == "sghmc":
            raise ValueError("local='sghmc' needs its friction: pass local=hb.samplers.sghmc(step_size, friction)")
        return table[local](step_size, temperature=temperature)
    if not isinstance(local, Sampler):
        raise TypeError(f"local must be 'sgld', 'psgld', 'sghmc' or a Sampler, got {type(local).__name__}")
    if step_size is not None:
        raise ValueError("give the step size to the local sampler (local=hb.samplers.psgld(h)), not to the federated one")
    if local.auto:
        raise ValueError(f"the local sampler leaves {list(local.auto)} automatic: give them explicitly (the automatic "
                         "choice measures uniform minibatches, not the federated rounds)")
    if local.gradient.name != "naive":
        raise ValueError(f"the local sampler's gradient must be the naive estimator (the federated scaling replaces it), "
                         f"got {local.gradient.name!r}")
    if local.uses:
        raise ValueError(f"the local sampler {local.name} reads {list(local.uses)} from the oracle: not a first-order "
                         "sampler the federated gradient can serve")
    return local


def _wrap(local: Sampler, conducive, name: str, constructor, hyper) -> Sampler:
    """The federated Sampler: the local sampler's steps on the federated oracle."""
    if conducive is not None and not isinstance(conducive, ShardGaussians):
        conducive = None  # unfitted: hb.sample fits it (heatbath.drivers.federation) and rebuilds

    def step(key, state, batch, oracle):
        if name == "fsgld" and conducive is None:
            raise ValueError("fsgld's conducive gradient is fitted by hb.sample before sampling; outside hb.sample "
                             "pass conducive=hb.drivers.federation.fit_conducive(...)")
        estimate = federated_gradient(oracle, batch, conducive)
        fed = Oracle(estimate, oracle.terms, oracle.num_data, oracle.nonsmooth, oracle.batch_info)
        new, info = local.step(key, state, batch, fed)
        info_ = oracle.batch_info
        active = info_["active"]
        # A round with no available client is skipped: the chain stays where it is.
        new = jax.tree.map(lambda a, b: jnp.where(active, a, b), new, state)
        out = _info_type(type(info))(*info, info_["shard"], info_["rounds_served"], info_["steps_served"])
        return new, out

    local_name = "" if local.name == "sgld" else f"-{local.name}"
    return Sampler(
        init=local.init, step=step, gradient=naive(), temperature=local.temperature, name=f"{name}{local_name}",
        grads_per_step=local.grads_per_step, hyperparameters=hyper,
        rebuild=lambda **changes: constructor(**{**hyper, **changes}),
        gradient_at_position=local.gradient_at_position, steps_per_draw=local.steps_per_draw, uses=("batch_info",),
    )


def dsgld(step_size=None, *, temperature=1.0, local="sgld") -> Sampler:
    """DSGLD: local steps on the round's shard with g = grad log p + (N_s / (f_s n)) sum_B grad log p(x_i | .)
    (Ahn, Shahbaba & Welling, ICML 2014; El Mekkaoui et al., UAI 2021).

    Run it with federated rounds: ``hb.sample(model, hb.samplers.dsgld(h), batch_size=n,
    batching=hb.drivers.batching.federated(shard_ids, local_steps=T), ...)``. Unbiased over the
    rounds, but with non-IID shards and T > 1 the chain drifts towards the visited shard's
    posterior within a round (the bias FSGLD removes).

    Args:
      step_size: h of the local sampler (SGLD: theta <- theta + h g + sqrt(2 h T) xi; the
        paper's eps = 2 h). Required with a named local sampler.
      temperature: T >= 0 (keyword-only).
      local: the local sampler, ``"sgld"`` (default), ``"psgld"``, or a first-order Sampler with
        the naive gradient (e.g. ``hb.samplers.sghmc(h, friction)``; then ``step_size=None``).
    """
    hyper = dict(step_size=step_size, temperature=temperature, local=local)
    return _wrap(_local_sampler(local, step_size, temperature), None, "dsgld", dsgld, hyper)


def fsgld(step_size=None, *, temperature=1.0, conducive="laplace", local="sgld") -> Sampler:
    """FSGLD: DSGLD plus the conducive gradient grad log q - (1/f_s) grad log q_s (El Mekkaoui et
    al., UAI 2021), q_k a Gaussian surrogate of shard k's likelihood:

        g_FS = grad log p + (N_s / (f_s n)) sum_B grad log p(x_i | .) + grad log q - (1/f_s) grad log q_s.

    Args:
      step_size, temperature, local: as :func:`dsgld`.
      conducive: the surrogates, fitted by ``hb.sample`` before sampling
        (:func:`heatbath.drivers.federation.fit_conducive`): ``"laplace"`` (default: each
        shard's mode under p^(1/K) L_k, full precision -Hessian of log L_k there, as the
        second-order expansion of log L_k), ``"laplace-diag"`` (its diagonal), ``"sgld"`` /
        ``"sgld-diag"`` (moments of a short SGLD run on p^(1/K) L_k, the prior's share taken
        out); or a fitted :class:`ShardGaussians` (e.g. from :func:`shard_gaussians`).
    """
    if isinstance(conducive, str):
        if conducive not in CONDUCIVE_METHODS:
            raise ValueError(f"conducive must be one of {CONDUCIVE_METHODS} or a ShardGaussians, got {conducive!r}")
    elif not isinstance(conducive, ShardGaussians):
        raise TypeError(f"conducive must be one of {CONDUCIVE_METHODS} or a ShardGaussians, got {type(conducive).__name__}")
    hyper = dict(step_size=step_size, temperature=temperature, conducive=conducive, local=local)
    return _wrap(_local_sampler(local, step_size, temperature), conducive, "fsgld", fsgld, hyper)


def needs_fit(sampler: Sampler) -> bool:
    """Whether ``sampler`` is an FSGLD whose surrogates are still to be fitted (by the driver)."""
    return sampler.name.startswith("fsgld") and isinstance(sampler.hyperparameters.get("conducive"), str)
