"""Cost per step of BMUMLA (and MYULA) against SGLD on the same logistic-regression target.

    python benchmarks/bench_bregman.py                 # 9 interleaved repeats
    python benchmarks/bench_bregman.py --repeats 5

Target: logistic regression, N = 20,000 rows, d = 100, N(0, I) prior, batch 200 rows drawn
uniformly with replacement, 4 chains, 5,000 steps, every 10th step kept (thinning 10). The
Bregman samplers run on the same f with an L1 term g = sum_i |theta_i| declared on the
target (SGLD cannot take g: the drivers refuse it), lam = 1e-2; BMUMLA with the hypentropy
mirror map (beta = 1) and the hypentropy envelope. All through ``hb.sample`` (checks off,
no progress bar); the time is ``Result.wall_time - Result.compile_time`` (the device loop and
the copy of the draws, no compilation). Contenders run interleaved in one process after
compiling everything; "sgld (A/A)" is a second, identical SGLD contender: its ratio to SGLD
is the noise floor of the comparison.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved, machine_info, markdown_table, paired_ratio  # noqa: E402

import heatbath as hb  # noqa: E402
from heatbath.kernels import mirror, prox  # noqa: E402

N, D, BATCH, CHAINS, STEPS, THIN = 20_000, 100, 200, 4, 5_000, 10


def targets():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D)).astype(np.float32)
    w = rng.normal(size=D) * (rng.uniform(size=D) < 0.2)
    y = (rng.uniform(size=N) < 1 / (1 + np.exp(-X @ w))).astype(np.float32)

    def logprior(t):
        return -0.5 * jnp.sum(t ** 2)

    def loglik(t, batch):
        x, yb = batch
        z = x @ t
        return jnp.sum(yb * z - jax.nn.softplus(z))

    smooth = hb.models.from_logdensity(logprior, loglik, (X, y), params=jnp.zeros(D))
    sparse = hb.models.from_logdensity(logprior, loglik, (X, y), params=jnp.zeros(D), nonsmooth=prox.l1(1.0))
    return smooth, sparse


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    smooth, sparse = targets()
    h, lam = 1e-5, 1e-2
    init = np.zeros((CHAINS, D), np.float32)
    runs = {
        "sgld": (smooth, hb.samplers.sgld(h)),
        "sgld (A/A)": (smooth, hb.samplers.sgld(h)),
        "myula": (sparse, hb.samplers.myula(h, lam)),
        "bmumla": (sparse, hb.samplers.bmumla(h, lam, mirror=mirror.hypentropy(1.0))),
    }

    def runner(target, sampler):
        def measure():
            r = hb.sample(target, sampler, batch_size=BATCH, num_samples=STEPS // THIN, thinning=THIN,
                          num_chains=CHAINS, init=init, seed=0, progress_bar=False, checks="off", num_warmup=0)
            return {"time": r.wall_time - r.compile_time}

        return measure

    measures = {name: runner(*tc) for name, tc in runs.items()}
    contenders = {name: (lambda m=m: m()) for name, m in measures.items()}
    timings = interleaved(contenders, repeats=args.repeats, measure=measures)
    info = machine_info()
    print(f"\n{info}\n")
    rows = []
    for name in runs:
        t = timings[name]
        med, q25, q75 = paired_ratio(timings, name, "sgld")
        rows.append([name, 1e3 * t.best, 1e6 * t.best / STEPS, t.best / timings["sgld"].best,
                     f"{med:.3f} [{q25:.3f}, {q75:.3f}]"])
    print(markdown_table(["contender", "ms (min)", "us / step (min)", "x sgld (ratio of mins)",
                          "x sgld (median paired [IQR])"], rows))


if __name__ == "__main__":
    main()
