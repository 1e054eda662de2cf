"""SWAG (Maddox et al. 2019) from a ``keep="moments"`` run: a sampleable Gaussian per chain.

``hb.sample(..., keep="moments", swag_rank=K)`` keeps, per chain, the running mean theta_bar and
variance diag(Sigma) of the draws and the deviations D = [theta_i - theta_bar] of the last K
draws. :func:`swag` turns them into

    theta = theta_bar + (1/sqrt 2) diag(Sigma)^(1/2) z_1 + (1/sqrt(2 (K - 1))) D z_2,
    z_1 ~ N(0, I_d), z_2 ~ N(0, I_K)

(covariance (diag(Sigma) + D D' / (K - 1)) / 2), one Gaussian per chain; several chains make a
uniform mixture (MultiSWAG, Wilson & Izmailov 2020). It works on the recorded (constrained)
values, which for network weights are the parameters themselves.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from heatbath.kernels.validate import check_count, seed_key

__all__ = ["swag", "SWAG"]


@dataclasses.dataclass
class SWAG:
    """Per chain: ``mean`` and ``var`` (name -> (chain, ...)), ``deviations`` (name -> (chain, K, ...))."""

    mean: dict
    var: dict
    deviations: dict
    sites: tuple

    @property
    def num_chains(self) -> int:
        return int(np.shape(self.mean[self.sites[0]])[0])

    @property
    def rank(self) -> int:
        return int(np.shape(self.deviations[self.sites[0]])[1])

    def sample(self, key, num: int, *, constrained: bool = True):
        """``num`` draws, name -> (num, ...); each draw from a chain chosen uniformly."""
        num = check_count(num, "num", 1)
        rng = np.random.default_rng(int(np.asarray(jax.random.randint(seed_key(key), (), 0, 2**31 - 1))))
        chains = rng.integers(0, self.num_chains, size=num)
        k = self.rank
        z2 = rng.standard_normal((num, k))
        out = {}
        for name in self.sites:
            mu = np.asarray(self.mean[name], np.float64)[chains]
            sd = np.sqrt(np.maximum(np.asarray(self.var[name], np.float64), 0.0))[chains]
            dev = np.asarray(self.deviations[name], np.float64)[chains]  # (num, K, ...)
            z1 = rng.standard_normal(mu.shape)
            low = np.einsum("sk,sk...->s...", z2, dev) / np.sqrt(2.0 * max(k - 1, 1))
            out[name] = (mu + sd * z1 / np.sqrt(2.0) + low).astype(np.asarray(self.mean[name]).dtype)
        return out


def swag(result, sites=None, *, include_diverged: bool = False) -> SWAG:
    """The SWAG approximation of a ``hb.sample(..., keep="moments", swag_rank=K)`` result
    (K >= 2). ``sites``: which recorded sites (default: all with deviations, the deterministic
    sites of the model included; pass the network's sites to leave e.g. predictions out).

    Diverged chains are left out with a RuntimeWarning, as ``Result.get_moments`` does (a
    ValueError when every chain diverged, unless ``include_diverged=True``); a kept chain whose
    moments are not finite is a ValueError naming it, never a NaN approximation."""
    m = getattr(result, "moments", None)
    if not m or "deviations" not in m:
        raise ValueError("swag needs a result of hb.sample(..., keep='moments', swag_rank=K) with K >= 2")
    if hasattr(result, "get_moments"):  # a Result: its diverged chains left out
        m = result.get_moments(group_by_chain=True, include_diverged=include_diverged, _stacklevel=4)
    names = tuple(sites) if sites is not None else tuple(m["deviations"])
    missing = [n for n in names if n not in m["deviations"]]
    if missing:
        raise ValueError(f"the result has no deviations of {missing}; it has {sorted(m['deviations'])}")
    k = int(np.shape(m["deviations"][names[0]])[1])
    if k < 2:
        raise ValueError(f"SWAG needs swag_rank >= 2 deviations, the result has {k}")
    run_chains = m.get("chains")  # the kept chains' indices in the run
    for n in names:
        for part in ("mean", "var", "deviations"):
            v = np.asarray(m[part][n])
            bad = np.nonzero(~np.isfinite(v).reshape(v.shape[0], -1).all(axis=1))[0].tolist()
            if bad:
                bad = [run_chains[i] for i in bad] if run_chains is not None else bad
                raise ValueError(f"the {part} of {n!r} is not finite in chain(s) {bad}: its iterates left the "
                                 "region of finite values (lower the step size); a chain with non-finite moments "
                                 "cannot enter SWAG, even with include_diverged=True")
    return SWAG({n: np.asarray(m["mean"][n]) for n in names}, {n: np.asarray(m["var"][n]) for n in names},
                {n: np.asarray(m["deviations"][n]) for n in names}, names)
