"""The :class:`Laplace` approximation N(theta*, Sigma) that ``hb.fit(model, hb.vi.laplace(...))``
returns, and its linearised predictive."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.kernels.validate import check_count, seed_key

__all__ = ["Laplace", "finalize", "output_hessian"]


def output_hessian(likelihood: str, f, noise_scale: float = 1.0):
    """L_i: the Hessian of -log p(y_i | f_i) in f_i, per row: (n, K, K)."""
    if likelihood == "categorical":
        p = jax.nn.softmax(f, axis=-1)
        return jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
    f = f.reshape(f.shape[0], 1)
    if likelihood == "bernoulli":
        p = jax.nn.sigmoid(f)
        return (p * (1 - p))[:, :, None]
    return jnp.full((f.shape[0], 1, 1), 1.0 / noise_scale**2, f.dtype)


def _subset_indices(unravel, dim, subset):
    if subset is None:
        return np.arange(dim)
    index_tree = unravel(jnp.arange(dim, dtype=jnp.float32))
    missing = [s for s in subset if s not in index_tree]
    if missing:
        raise ValueError(f"subset names sites {missing} the model does not have; its sites: {sorted(index_tree)}")
    return np.sort(np.concatenate([np.asarray(index_tree[s]).ravel().round().astype(np.int64) for s in subset]))


def _precision(meta, target, unravel, theta, idx):
    """Lambda restricted to the coordinates idx: (m, m), float64."""
    data = target.data
    dim = theta.shape[0]
    m = len(idx)
    basis_all = jnp.zeros((m, dim), theta.dtype).at[jnp.arange(m), jnp.asarray(idx)].set(1.0)

    def logprior(x):
        return target.terms(x, jax.tree.map(lambda a: a[:1], data))[0]

    def logpost(x):
        lp, ll = target.terms(x, data)
        return lp + ll

    def columns(fn, chunk=256):
        g = jax.grad(fn)
        hvp = jax.jit(jax.vmap(lambda v: jax.jvp(g, (theta,), (v,))[1]))
        cols = [np.asarray(hvp(basis_all[i : i + chunk]), np.float64) for i in range(0, m, chunk)]
        return -np.concatenate(cols, axis=0)[:, idx]  # (m, m)

    if meta["curvature"] == "hessian":
        prec = columns(logpost)
    else:
        prec = columns(logprior)
        outputs = meta["outputs"]

        def f_sub(z):
            x = theta.at[jnp.asarray(idx)].set(z)
            out = outputs(unravel(x), data["X"] if isinstance(data, dict) else data[0])
            return out.reshape(out.shape[0], -1)

        z0 = theta[jnp.asarray(idx)]
        f0 = f_sub(z0)
        J = np.asarray(jax.jit(jax.jacfwd(f_sub))(z0), np.float64)  # (n, K, m)
        L = np.asarray(output_hessian(meta["likelihood"], f0, meta["noise_scale"]), np.float64)
        prec = prec + np.einsum("nkm,nkl,nlj->mj", J, L, J, optimize=True)
    return 0.5 * (prec + prec.T)


@dataclasses.dataclass
class Laplace:
    """N(theta*, Sigma) in the flat unconstrained space, Sigma nonzero on the coordinates
    ``index`` only (all of them without ``subset``): ``variance_sub`` (diag) or ``cov_sub``
    (full) there. ``sample``/``to_arviz`` like :class:`heatbath.Gaussian`; ``map_grad_norm``
    is |grad log p| on the full data at theta* (a check that the MAP search converged)."""

    mean_flat: np.ndarray
    index: np.ndarray
    structure: str
    variance_sub: Optional[np.ndarray]
    cov_sub: Optional[np.ndarray]
    precision_sub: np.ndarray
    map_grad_norm: float
    trace: dict
    method_name: str
    meta: dict = dataclasses.field(repr=False)
    target: Any = dataclasses.field(repr=False, default=None)
    unravel: Any = dataclasses.field(repr=False, default=None)
    observed_data: Optional[dict] = None
    grad_evals: float = 0.0
    num_data: int = 1
    wall_time: float = 0.0
    curvature_time: float = 0.0

    @property
    def dim(self) -> int:
        return int(self.mean_flat.shape[0])

    @property
    def mean(self):
        return jax.device_get(self.unravel(jnp.asarray(self.mean_flat)))

    @property
    def cov(self) -> np.ndarray:
        """The d x d covariance (zero outside the subset), formed on request."""
        c = np.zeros((self.dim, self.dim))
        sub = np.diag(self.variance_sub) if self.structure == "diag" else self.cov_sub
        c[np.ix_(self.index, self.index)] = sub
        return c

    @property
    def variance(self) -> np.ndarray:
        v = np.zeros(self.dim)
        v[self.index] = self.variance_sub if self.structure == "diag" else np.diag(self.cov_sub)
        return v

    def _flat_draws(self, key, num):
        z = jax.random.normal(seed_key(key), (num, len(self.index)), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
        z = np.asarray(z, np.float64)
        if self.structure == "diag":
            dz = z * np.sqrt(self.variance_sub)
        else:
            dz = z @ np.linalg.cholesky(self.cov_sub).T
        x = np.tile(self.mean_flat.astype(np.float64), (num, 1))
        x[:, self.index] += dz
        return jnp.asarray(x, self.mean_flat.dtype)

    def sample(self, key, num: int, *, constrained: bool = True):
        """``num`` draws: name -> (num, ...) constrained (deterministic sites included)."""
        num = check_count(num, "num", 1)
        draws = self._flat_draws(key, num)
        if not constrained:
            return jax.device_get(jax.vmap(self.unravel)(draws))
        values = jax.jit(jax.vmap(self.target.constrain_fn, in_axes=(0, None)))(draws, self.target.data)
        return {k: np.asarray(v) for k, v in jax.device_get(values).items()}

    def to_arviz(self, num_samples: int = 1000, seed=0):
        from heatbath.diagnostics.arviz import to_arviz

        draws = self.sample(seed, num_samples)
        return to_arviz({k: v[None] for k, v in draws.items()}, None, self.observed_data,
                        attrs={"inference_library": "heatbath", "method": self.method_name})

    def linearised_predictive(self, inputs, *, outputs=None, likelihood=None, method: str = "probit",
                              num_samples: int = 1000, seed=0) -> np.ndarray:
        """The predictive of the network linearised at theta* (Immer, Korzepa & Bauer 2021):
        f(x; theta) ~ f(x; theta*) + J(x) (theta - theta*), so f(x) ~ N(f*, J Sigma J').

        ``"probit"``: p = softmax(f* / sqrt(1 + pi/8 diag(J Sigma J'))) (for a Bernoulli, the
        probit approximation of E sigmoid(f), MacKay 1992); ``"mc"``: the mean of softmax over
        ``num_samples`` draws of f. Returns (n, K) class probabilities ((n, 2) for a Bernoulli).
        ``outputs(params, X)`` defaults to the method's own.
        """
        outputs = outputs or self.meta.get("outputs")
        likelihood = likelihood or self.meta.get("likelihood")
        if outputs is None or likelihood not in ("categorical", "bernoulli"):
            raise ValueError("the linearised predictive needs outputs= and likelihood='categorical' or 'bernoulli'")
        if method not in ("probit", "mc"):
            raise ValueError(f"method must be 'probit' or 'mc', got {method!r}")
        theta = jnp.asarray(self.mean_flat)
        idx = jnp.asarray(self.index)
        unravel = self.unravel

        def f_sub(z):
            out = outputs(unravel(theta.at[idx].set(z)), inputs)
            return out.reshape(out.shape[0], -1)

        z0 = theta[idx]
        f0 = np.asarray(f_sub(z0), np.float64)
        J = np.asarray(jax.jit(jax.jacfwd(f_sub))(z0), np.float64)  # (n, K, m)
        S = np.diag(self.variance_sub) if self.structure == "diag" else self.cov_sub
        fcov = np.einsum("nkm,ml,njl->nkj", J, S, J, optimize=True)
        if method == "probit":
            var = np.einsum("nkk->nk", fcov)
            z = f0 / np.sqrt(1.0 + math.pi / 8.0 * var)
            if likelihood == "bernoulli":
                p1 = 1.0 / (1.0 + np.exp(-z[:, 0]))
                return np.stack([1 - p1, p1], axis=1)
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        rng = np.random.default_rng(int(np.asarray(jax.random.randint(seed_key(seed), (), 0, 2**30))))
        chol = np.linalg.cholesky(fcov + 1e-12 * np.eye(fcov.shape[1]))
        eps = rng.standard_normal((num_samples,) + f0.shape)
        f = f0[None] + np.einsum("nkj,snj->snk", chol, eps)
        if likelihood == "bernoulli":
            p1 = (1.0 / (1.0 + np.exp(-f[..., 0]))).mean(0)
            return np.stack([1 - p1, p1], axis=1)
        f = f - f.max(axis=2, keepdims=True)
        e = np.exp(f)
        return (e / e.sum(axis=2, keepdims=True)).mean(0)

    def __repr__(self) -> str:
        return (f"Laplace({self.method_name}: d={self.dim}, {len(self.index)} with covariance ({self.structure}), "
                f"|grad| at MAP {self.map_grad_norm:.3g})")


def finalize(meta, run, options) -> Laplace:
    t0 = time.perf_counter()
    target = run.target
    theta = jnp.asarray(run.final_state.position)
    if not bool(jnp.all(jnp.isfinite(theta))):
        raise FloatingPointError(f"{run.method_name}: the MAP search diverged (non-finite parameters): lower step_size")
    dim = theta.shape[0]
    idx = _subset_indices(run.unravel, dim, meta["subset"])

    def logpost(x):
        lp, ll = target.terms(x, target.data)
        return lp + ll

    gnorm = float(jnp.linalg.norm(jax.grad(logpost)(theta)))
    prec = _precision(meta, target, run.unravel, theta, idx)
    T = float(meta["temperature"])
    var_sub = cov_sub = None
    if meta["structure"] == "diag":
        d = np.diag(prec)
        if np.any(d <= 0):
            raise FloatingPointError(f"{run.method_name}: {int(np.sum(d <= 0))} diagonal precisions <= 0 at the point "
                                     "found (not a mode of the log density): use curvature='ggn' or run longer")
        var_sub = T / d
    else:
        try:
            chol = np.linalg.cholesky(prec)
        except np.linalg.LinAlgError:
            raise FloatingPointError(f"{run.method_name}: the precision is not positive definite at the point found "
                                     "(not a mode): use curvature='ggn' or run the MAP search longer") from None
        inv = np.linalg.inv(chol)
        cov_sub = T * inv.T @ inv
    trace = {"step": run.steps, **run.infos}
    return Laplace(mean_flat=np.asarray(theta), index=idx, structure=meta["structure"], variance_sub=var_sub,
                   cov_sub=cov_sub, precision_sub=prec / T, map_grad_norm=gnorm, trace=trace,
                   method_name=run.method_name, meta=meta, target=target, unravel=run.unravel,
                   observed_data=run.observed_data, grad_evals=run.grad_evals, num_data=run.num_data,
                   wall_time=run.wall_time, curvature_time=time.perf_counter() - t0)
