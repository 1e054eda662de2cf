"""One command for an accelerator: the SG-MCMC steps and FB-GVI, timed, results in one file.

    python benchmarks/gpu.py --out gpu_results.json            # on a GPU: under 8 minutes
    python benchmarks/gpu.py --smoke --out /tmp/smoke.json     # tiny sizes, seconds, any backend
    python benchmarks/gpu.py --sections bdl,fbgvi              # a subset

Sections (each timed interleaved in this process, common.interleaved, median paired ratios):

1. ``bdl``: the 784-512-512-10 MLP (669,706 weights, N = 60,000, batch 128):
   benchmarks/bench_bdl.py's contenders (optax floor and its A/A copy, hand-written SGLD
   scans, hb.sample SGLD / SGHMC / pSGLD with Gaussian and cheap noise).
2. ``logistic``: Bayesian logistic regression at d = 50 (N = 50,000, n = 500): a bare
   hand-written SGLD scan (the floor), blackjax.sgld in a lax.scan, hb.sample SGLD, SGHMC
   (fused OBABO) and pSGLD.
3. ``fbgvi``: hb.fit with FB-GVI (full covariance) on a d = 500 Gaussian target: seconds per
   step (compilation excluded: a second call).

The programmable-VI VAE step is not in it yet. Results: one JSON file (``--out``) with the
machine description (backend, device kind), the load and every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_bdl  # noqa: E402
from common import interleaved, machine_info, paired_ratio  # noqa: E402

import heatbath as hb  # noqa: E402


def logistic_problem(smoke: bool):
    """The d = 50 logistic regression (N = 50,000, batch 500; tiny with ``smoke``):
    ``(X, y, N, d, n, logprior, loglik)`` (also benchmarks/gpu_profile.py's)."""
    N, d, n = (500, 5, 50) if smoke else (50_000, 50, 500)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, d)).astype(np.float32)
    y = (rng.uniform(size=N) < 1 / (1 + np.exp(-X @ rng.normal(size=d) / math.sqrt(d)))).astype(np.float32)

    def logprior(w):
        return -0.5 * jnp.sum(w**2)

    def loglik(w, batch):
        z = batch[0] @ w
        return jnp.sum(batch[1] * z - jax.nn.softplus(z))

    return X, y, N, d, n, logprior, loglik


def logistic_section(smoke: bool, repeats: int):
    import blackjax

    X, y, N, d, n, logprior, loglik = logistic_problem(smoke)
    steps = 5 if smoke else 2000
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    h = 1e-4

    def logpost(w, idx):
        return logprior(w) + (N / n) * loglik(w, (Xj[idx], yj[idx]))

    grad = jax.grad(logpost)

    def floor_fn(w, key):
        def body(w, k):
            k1, k2 = jax.random.split(k)
            idx = jax.random.randint(k1, (n,), 0, N)
            w = w + h * grad(w, idx) + math.sqrt(2 * h) * jax.random.normal(k2, w.shape)
            return w, w

        return jax.lax.scan(body, w, jax.random.split(key, steps))[1]

    floor, floor_aa = jax.jit(floor_fn), jax.jit(lambda w, k: floor_fn(w, k))
    bj_grad = blackjax.sgmcmc.gradients.grad_estimator(logprior, lambda w, row: loglik(w, (row[0][None], row[1][None])), N)
    bj = blackjax.sgld(bj_grad)

    @jax.jit
    def blackjax_run(w, key):
        def body(w, k):
            k1, k2 = jax.random.split(k)
            idx = jax.random.randint(k1, (n,), 0, N)
            w = bj.step(k2, w, (Xj[idx], yj[idx]), h)
            return w, w

        return jax.lax.scan(body, w, jax.random.split(key, steps))[1]

    target = hb.models.from_logdensity(logprior, loglik, (X, y), params=jnp.zeros(d))
    w0, key = jnp.zeros(d), jax.random.key(0)

    def hb_call(make):
        return lambda: hb.sample(target, make(), batch_size=n, num_samples=steps, init=w0, checks="off",
                                 progress_bar=False, num_warmup=0).samples["theta"]

    contenders = {
        "floor": lambda: floor(w0, key),
        "floor (A/A)": lambda: floor_aa(w0, key),
        "blackjax sgld": lambda: blackjax_run(w0, key),
        "hb SGLD": hb_call(lambda: hb.samplers.sgld(h)),
        "hb SGHMC fused": hb_call(lambda: hb.samplers.sghmc(math.sqrt(h), 1.0, fuse_noise=True)),
        "hb pSGLD": hb_call(lambda: hb.samplers.psgld(h)),
    }
    if smoke:  # the smoke run checks that every kind of contender runs, at the least compile time
        contenders = {k: contenders[k] for k in ("floor", "blackjax sgld", "hb SGLD")}
    timings = interleaved(contenders, repeats=repeats, warmup=1, verbose=not smoke)
    return {"d": d, "rows": N, "batch": n, "steps_per_call": steps,
            "ratios_to_floor": {k: paired_ratio(timings, k, "floor")[0] for k in timings},
            "min_seconds": {k: t.best for k, t in timings.items()}}


def fbgvi_section(smoke: bool, repeats: int):
    d, steps = (5, 20) if smoke else (500, 200)
    rng = np.random.default_rng(1)
    q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    a = (q * np.geomspace(1.0, 100.0, d)) @ q.T
    aj = jnp.asarray(0.5 * (a + a.T), jnp.float32)
    target = hb.models.from_logdensity(lambda p: -0.5 * p @ aj @ p, lambda p, b: 0.0 * jnp.sum(b), jnp.zeros((1, 1)),
                                       params=jnp.zeros(d))

    def call():
        return hb.fit(target, hb.vi.fbgvi(0.005, steps), elbo_samples=0, check=False).mean

    times = interleaved({"fbgvi": call}, repeats=repeats, warmup=1, verbose=False)["fbgvi"]
    return {"d": d, "steps": steps, "seconds_per_step_min": times.best / steps, "min_seconds": times.best}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that it all runs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="gpu_results.json")
    ap.add_argument("--sections", default="bdl,logistic,fbgvi", help="comma-separated subset to run")
    ap.add_argument("--bdl-steps", type=int, default=1000,
                    help="steps per timed call of the 670k-weight MLP (a GPU step takes well under a millisecond, "
                         "so 200 steps would time mostly the call's fixed cost)")
    args = ap.parse_args(argv)
    wanted = args.sections.split(",")
    repeats = 1 if args.smoke else args.repeats
    t0 = time.perf_counter()
    results = {"machine": machine_info(), "smoke": args.smoke, "sections": {}}
    config = bench_bdl.SMOKE if args.smoke else bench_bdl.FULL
    steps = 5 if args.smoke else args.bdl_steps
    for name, fn in [("bdl", lambda: bench_bdl.run(config, steps, repeats, verbose=not args.smoke)),
                     ("logistic", lambda: logistic_section(args.smoke, repeats)),
                     ("fbgvi", lambda: fbgvi_section(args.smoke, repeats))]:
        if name not in wanted:
            continue
        s0 = time.perf_counter()
        try:
            results["sections"][name] = fn()
        except Exception as err:  # a failed section is recorded, the others still run
            results["sections"][name] = {"error": f"{type(err).__name__}: {err}"}
        results["sections"][name]["section_seconds"] = time.perf_counter() - s0
        with open(args.out, "w") as f:  # written after every section: a timeout keeps what is done
            json.dump(results, f, indent=1, default=str)
    results["seconds"] = time.perf_counter() - t0
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, default=str)
    if not args.smoke:
        print(json.dumps({k: v.get("ratios_to_floor", v.get("pairs", v)) for k, v in results["sections"].items()},
                         indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
