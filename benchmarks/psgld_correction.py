"""What dropping pSGLD's Gamma term costs: stationary variance on N(0, 1) with and without it.

    /work/venv/bin/python benchmarks/psgld_correction.py

Target N(0, 1) in 1-D (so Hutchinson's z (Hz) is the exact Hessian diagonal), RMSprop
decay a = 0.99, eps = 1e-5, 16 chains x 50,000 draws after 5,000 warmup steps. The Monte Carlo
error of Var is estimated from the spread of the 16 per-chain variances.
"""

import jax.numpy as jnp

import heatbath as hb


def main():
    target = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: 0.0 * jnp.sum(b),
                                       jnp.zeros((4,)), params=jnp.zeros(1))
    print("| h | decay | Gamma | Var (exact 1) | MC error |")
    print("|---|---|---|---|---|")
    for h in (0.01, 0.001):
        for decay in (0.99, 0.9):
            for corr in (False, True):
                r = hb.sample(target, hb.samplers.psgld(h, decay=decay, correction=corr), num_samples=50_000,
                              num_warmup=5_000, num_chains=16, progress_bar=False, seed=0)
                v = r.samples["theta"][..., 0].var(axis=1)
                print(f"| {h} | {decay} | {'kept' if corr else 'dropped'} | {v.mean():.3f} | {v.std(ddof=1) / 4:.3f} |",
                      flush=True)


if __name__ == "__main__":
    main()
