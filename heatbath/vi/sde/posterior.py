"""The fitted latent SDE that ``hb.fit`` returns for :func:`~heatbath.vi.sde.fbm_vi`."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels import fbm as _fbm
from heatbath.kernels.validate import check_count, seed_key
from heatbath.vi.sde import solver as _solver

__all__ = ["SDEPosterior", "finalize"]


class SDEPosterior:
    """The trained posterior over latent paths (and the point estimates of theta, H among them).

    Attributes:
      params: the trained parameters theta. hurst: H (learned, or the fixed value).
      omega: the weights omega(H). trace: name -> array over the trace points (``step``,
      ``elbo``, ``loglik``, ``kl``, ``hurst``, ``grad_norm``, ``diverging``). run: the FitRun.
      data: the observations {"t", "y"}.
    """

    def __init__(self, sde, run):
        self.sde = sde
        self.run = run
        self.params = run.final_state.position
        self.data = {k: np.asarray(v) for k, v in run.target.data.items()}
        self.trace = {"step": np.asarray(run.steps), **{k: np.asarray(v) for k, v in run.infos.items()}}
        self.hurst = float(sde.hurst(self.params))
        self.omega = np.asarray(_fbm.weights(sde.approx, self.hurst, jnp.float64 if jax.config.jax_enable_x64
                                             else jnp.float32))
        self.grad_calls = run.grad_calls
        self.wall_time = run.wall_time
        self._sim = {}

    def __repr__(self) -> str:
        return (f"SDEPosterior(hurst={self.hurst:.4f}, dim={self.sde.dim}, steps={self.run.num_steps}, "
                f"final elbo={float(self.trace['elbo'][-1]):.4g})")

    @property
    def times(self) -> np.ndarray:
        """The Euler grid t0, t0 + dt, ..., t1."""
        return np.asarray(self.sde.grid(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32))

    def _simulator(self, controlled: bool):
        if controlled not in self._sim:
            sde = self.sde

            def one(theta, key, batch):
                ctx = sde.context(sde.grid()[:-1], batch)
                return _solver.simulate(sde, theta, key, ctx, controlled=controlled)

            self._sim[controlled] = jax.jit(jax.vmap(one, in_axes=(None, 0, None)))
        return self._sim[controlled]

    def paths(self, key, num: int, *, prior: bool = False) -> dict:
        """``num`` paths of the posterior (or of the trained prior): {"t": grid (n+1,),
        "x": (num, n+1, d), "kl": (num,) the Girsanov sums}."""
        num = check_count(num, "num", 1)
        keys = jax.random.split(seed_key(key), num)
        batch = {k: jnp.asarray(v) for k, v in self.data.items()}
        p = self._simulator(not prior)(self.params, keys, batch)
        return {"t": self.times, "x": np.asarray(p.x), "kl": np.asarray(p.kl)}

    def predictive(self, key, num: int = 1000, *, probs=(0.05, 0.5, 0.95), prior: bool = False) -> dict:
        """Bands of X(t) on the grid: {"t", "mean", "sd", "quantiles" (len(probs), n+1, d), "probs"};
        mean and sd accumulated in float64."""
        x = self.paths(key, num, prior=prior)["x"].astype(np.float64)
        return {"t": self.times, "mean": x.mean(0), "sd": x.std(0, ddof=1),
                "quantiles": np.quantile(x, probs, axis=0), "probs": np.asarray(probs)}

    def sample(self, key, num: int, *, constrained: bool = True) -> dict:
        """Draws of the latent path on the grid and of H: {"x": (num, n+1, d), "hurst": (num,)}
        (H is a point estimate: every draw holds it)."""
        x = self.paths(key, num)["x"]
        return {"x": x, "hurst": np.full(num, self.hurst)}

    def to_arviz(self, num_samples: int = 1000, seed=0):
        """An ArviZ InferenceData: posterior ``x`` (chain, draw, time, latent) with the grid as
        the ``time`` coordinate, ``hurst``; observed_data ``y`` (float64)."""
        from heatbath.diagnostics.arviz import to_arviz

        draws = self.sample(seed, num_samples)
        idata = to_arviz({k: v[None] for k, v in draws.items()}, observed_data={"y": self.data["y"]},
                         attrs={"method": "fbm-vi", "hurst": self.hurst})
        post = idata.posterior.rename({"x_dim_0": "time", "x_dim_1": "latent"})
        idata.posterior = post.assign_coords(time=np.asarray(self.times, np.float64))
        return idata

    def elbo(self, key, num: int = 256) -> float:
        """A Monte Carlo ELBO on all the observations (mean over ``num`` paths)."""
        num = check_count(num, "num", 1)
        keys = jax.random.split(seed_key(key), num)
        batch = {k: jnp.asarray(v) for k, v in self.data.items()}
        sde = self.sde
        out = jax.jit(jax.vmap(lambda k: _solver.elbo_terms(sde, self.params, k, batch, 1.0)[0]))(keys)
        return float(np.mean(np.asarray(out, np.float64)))


def finalize(sde, run, options: Optional[dict] = None) -> SDEPosterior:
    return SDEPosterior(sde, run)
