"""Sparse Bayesian logistic regression with MYULA and BMUMLA (Lau & Liu, ICML 2022, Sec. 6).

    python examples/sparse_logistic_bregman.py               # prints the error table
    python examples/sparse_logistic_bregman.py --plot err.png

Data as in the paper's notebook: d = 100, N = 1,000, x_n ~ N(0, I), theta* = (0, .., 0, 0.1,
.., 0.1, ..., 0.9, .., 0.9) (each value 10 times), y_n ~ Bernoulli(sigmoid(<theta*, x_n>)).
Posterior pi(theta) ~ exp(-f(theta) - g(theta)) with f the logistic loss plus the L2 prior
alpha2 |theta|^2 / 2 (alpha2 = 0.1) and g(theta) = sum_i alpha1_i |theta_i| (alpha1 = 10, 9,
.., 1, each 10 times: the largest weights where theta* = 0). 30 chains from N(0, I), 4,000
full-data steps, h = 5e-4, lam = 1e-2 for both samplers; BMUMLA with the hypentropy mirror
map beta_i = 2 j^(1/4) (j = 1..10 the block of coordinate i) and the hypentropy envelope
sigma_i = alpha1_i^2 (the notebook's choices). The error at iteration k is
|mean over chains of theta_k - theta*|_2, as in the paper's Figure 3.
"""

from __future__ import annotations

import argparse

import numpy as np
import jax
import jax.numpy as jnp

import heatbath as hb
from heatbath.kernels import mirror, prox

D, N, CHAINS, STEPS = 100, 1000, 30, 4000


def problem(seed=0):
    rng = np.random.default_rng(seed)
    theta_star = np.repeat(np.arange(10) / 10, 10)
    X = rng.normal(size=(N, D))
    Y = (rng.uniform(size=N) < 1 / (1 + np.exp(-X @ theta_star))).astype(np.float32)
    return X.astype(np.float32), Y, theta_star


def target(X, Y, alpha1, alpha2=0.1):
    def logprior(theta):
        return -0.5 * alpha2 * jnp.sum(theta ** 2)

    def loglik(theta, batch):
        x, y = batch
        z = x @ theta
        return jnp.sum(y * z - jax.nn.softplus(z))

    return hb.models.from_logdensity(logprior, loglik, (X, Y), params=jnp.zeros(D),
                                     nonsmooth=prox.l1(alpha1.astype(np.float32)))


def errors(sampler, t, theta_star, seed=0):
    init = np.random.default_rng(seed + 1).normal(size=(CHAINS, D)).astype(np.float32)
    r = hb.sample(t, sampler, num_samples=STEPS, num_chains=CHAINS, init=init, seed=seed, progress_bar=False,
                  checks="off", num_warmup=0)  # the error along the run from its start
    draws = np.asarray(r.samples["theta"], np.float64)  # (chain, step, d)
    return np.linalg.norm(draws.mean(axis=0) - theta_star, axis=1), r


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--plot", help="save the error figure to this path (needs matplotlib)")
    args = ap.parse_args(argv)
    X, Y, theta_star = problem()
    alpha1 = np.repeat(np.arange(10, 0, -1), 10).astype(np.float64)
    t = target(X, Y, alpha1)
    h, lam = 5e-4, 1e-2
    block = np.repeat(np.arange(1, 11), 10)
    beta = (2 * block ** 0.25).astype(np.float32)
    sigma = (alpha1 ** 2).astype(np.float32)
    runs = {
        "MYULA": hb.samplers.myula(h, lam),
        "BMUMLA": hb.samplers.bmumla(h, lam, mirror=mirror.hypentropy(beta), prox=mirror.hypentropy(sigma)),
    }
    errs = {}
    for name, s in runs.items():
        errs[name], r = errors(s, t, theta_star)
        print(f"{name}: {r.wall_time - r.compile_time:.1f} s for {CHAINS} chains x {STEPS} steps")
    marks = [10, 50, 100, 250, 500, 1000, 2000, 4000]
    print("\n| iteration k | " + " | ".join(str(k) for k in marks) + " |")
    print("|---" * (len(marks) + 1) + "|")
    for name, e in errs.items():
        print(f"| {name} | " + " | ".join(f"{e[k - 1]:.3f}" for k in marks) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, e in errs.items():
            ax.plot(np.arange(1, STEPS + 1), e, label=name)
        ax.set_xlabel("iteration k")
        ax.set_ylabel(r"$\|\bar\theta_k - \theta^\star\|_2$ (mean of 30 chains)")
        ax.legend()
        fig.savefig(args.plot, dpi=150, bbox_inches="tight")
        print(f"figure saved to {args.plot}")
    return errs


if __name__ == "__main__":
    main()
