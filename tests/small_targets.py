"""Small targets the driver tests share (not a test module)."""

import numpy as np

import jax
import jax.numpy as jnp

import heatbath as hb


def logistic(rows: int, dim: int, seed: int):
    """A Bayesian logistic regression with N(0, 1) priors on ``rows`` random rows of ``dim`` features."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, dim)).astype(np.float32)
    y = (rng.uniform(size=rows) < 0.5).astype(np.float32)

    def logprior(w):
        return -0.5 * jnp.sum(w**2)

    def loglik(w, b):
        z = b[0] @ w
        return jnp.sum(b[1] * z - jax.nn.softplus(z))

    return hb.models.from_logdensity(logprior, loglik, (X, y), params=jnp.zeros(dim))
