"""SGHMC with splitting integrators: per-step cost against the floor, and time to accuracy.

    /work/venv/bin/python benchmarks/bench_sghmc.py cost        # per-step cost vs the floor
    /work/venv/bin/python benchmarks/bench_sghmc.py accuracy    # gradients to the bars vs SGLD
    /work/venv/bin/python benchmarks/bench_sghmc.py blackjax    # time to the bars vs blackjax.sghmc
    /work/venv/bin/python benchmarks/bench_sghmc.py all

cost. Bayesian logistic regression, N = 50,000 rows, d = 50, n = 500 rows per step drawn with
replacement, 5,000 steps, every draw kept (the problem of bench_sgld.py). Contenders, timed
interleaved in one process (min over the repeats, everything compiled first):

  floor <scheme>    a bare hand-written jitted lax.scan doing the same minibatch gradient and
                    update: OBABO with the gradient carried between steps (one gradient per
                    step), or Chen et al.'s Euler SGHMC; returns the draws.
  hb loop <scheme>  heatbath's compiled chunk alone (what hb.sample runs on the device).
  hb.sample         the public call; "run" = Result.wall_time - Result.compile_time.
  blackjax.sghmc    BlackJAX's Euler SGHMC (10 integration steps per sample on one minibatch,
                    the momentum redrawn every sample), per gradient step.

accuracy. The reference posteriors German credit (25 weights) and arK (AR(5), 7 parameters),
batch 100. A run of S steps discards its first S/10 and keeps S draws per chain (4 chains, as
the SGLD bars of tests/test_sgld_reference.py). Bars: max |mean - ref| / ref_sd <= 0.25 and sd
ratios in [0.9, 1.2]. With ``--seeds`` runs (default 3) of 8 independent replicates of 4
chains (32 chains per run; run k uses seed k for every method, so the methods see the same
minibatch indices) a method "reaches the bars at S" when >= 7/8 of all the replicates meet
them at S and at every larger S of the grid.
Gradient evaluations per chain to the bars = 1.1 S x 100 rows. Each method takes the best of
a small grid of its hyperparameters (listed in the output).

blackjax. Time to the German credit bars with 32 chains: (gradient steps to the bars, as
above) x (seconds per gradient step of the compiled loop, timed interleaved, min over repeats),
heatbath OBABO, BAOAB and Euler (through the NumPyro bridge, every draw recorded) against
blackjax.sghmc (Euler, positions then momenta, k steps per minibatch, the momentum redrawn
every k steps; a hand-written log density) over a small grid of its step size, friction
alpha and k. With k = 1 blackjax.sghmc moves the position with the freshly drawn momentum
before any gradient acts, so the gradient never reaches the position; k >= 5 here.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved, machine_info, markdown_table, ops_per_step, paired_ratio  # noqa: E402
from bench_sgld import aot, compiled_hb_loop, hb_sample_measure, loglik, loglik_row, logprior, make_data  # noqa: E402

import blackjax  # noqa: E402

import heatbath as hb  # noqa: E402


# ----------------------------------------------------------------------------------------
# cost: the floors
# ----------------------------------------------------------------------------------------
def build_floor_obabo(n_rows, batch, steps, h, C, with_value=False):
    """Hand-written OBABO, M = T = 1, the gradient carried from the end of one step to the next.

    ``with_value``: also compute the minibatch log density (heatbath's samplers report it as
    ``lp``, so their gradient estimator evaluates value and gradient together)."""
    d = math.exp(-C * h / 2)
    s = math.sqrt(1 - d * d)

    def logpost(w, Xb, yb):
        return logprior(w) + (n_rows / batch) * loglik(w, (Xb, yb))

    if with_value:
        vg = jax.value_and_grad(logpost)
    else:
        def vg(w, Xb, yb):
            return None, jax.grad(logpost)(w, Xb, yb)

    def run(w0, key, X, y):
        k0, key = jax.random.split(key)
        r0 = jax.random.normal(k0, w0.shape)
        _, g0 = vg(w0, X[:batch], y[:batch])

        def body(carry, _):
            w, r, g, key = carry
            key, kb, kn = jax.random.split(key, 3)
            xi = jax.random.normal(kn, (2,) + w.shape)  # both O noises from one RNG call
            r = d * r + s * xi[0]
            r = r + 0.5 * h * g
            w = w + h * r
            idx = jax.random.randint(kb, (batch,), 0, n_rows)
            lp, g = vg(w, X[idx], y[idx])
            r = r + 0.5 * h * g
            r = d * r + s * xi[1]
            return (w, r, g, key), (w if lp is None else (w, lp))

        return jax.lax.scan(body, (w0, r0, g0, key), None, length=steps)[1]

    return run


def build_floor_euler(n_rows, batch, steps, h, C, with_value=False):
    """Hand-written Euler SGHMC (Chen et al. 2014): r <- (1 - hC) r + h g + sqrt(2 C h) xi; w <- w + h r."""
    a, s = 1.0 - C * h, math.sqrt(2 * C * h)

    def logpost(w, Xb, yb):
        return logprior(w) + (n_rows / batch) * loglik(w, (Xb, yb))

    vg = jax.value_and_grad(logpost)

    def run(w0, key, X, y):
        k0, key = jax.random.split(key)
        r0 = jax.random.normal(k0, w0.shape)

        def body(carry, _):
            w, r, key = carry
            key, kb, kn = jax.random.split(key, 3)
            idx = jax.random.randint(kb, (batch,), 0, n_rows)
            if with_value:
                lp, g = vg(w, X[idx], y[idx])
            else:
                lp, g = None, jax.grad(logpost)(w, X[idx], y[idx])
            r = a * r + h * g + s * jax.random.normal(kn, w.shape)
            w = w + h * r
            return (w, r, key), (w if lp is None else (w, lp))

        return jax.lax.scan(body, (w0, r0, key), None, length=steps)[1]

    return run


def build_blackjax_sghmc(n_rows, batch, samples, h, alpha, k, loglik_row, logprior_fn=logprior):
    """blackjax.sghmc in a lax.scan: ``samples`` samples of ``k`` integration steps each."""
    from blackjax.sgmcmc.gradients import grad_estimator

    def run(w0, key, X, y):
        sghmc = blackjax.sghmc(grad_estimator(logprior_fn, loglik_row, n_rows), num_integration_steps=k, alpha=alpha)

        def body(carry, _):
            w, key = carry
            key, kb, kn = jax.random.split(key, 3)
            idx = jax.random.randint(kb, (batch,), 0, n_rows)
            w = sghmc.step(kn, w, (X[idx], y[idx]), h)
            return (w, key), w

        return jax.lax.scan(body, (w0, key), None, length=samples)[1]

    return run


def part_cost(args):
    N, D, B, S = 50_000, 50, 500, args.steps
    h, C = 1e-3, 10.0
    X, y = make_data(N, D)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    target = hb.models.from_logdensity(logprior, loglik, (X, y), params=jnp.zeros(D))
    w0, key = jnp.zeros(D), jax.random.key(0)
    contenders, measure = {}, {}
    for scheme, floor in (("obabo", build_floor_obabo), ("euler", build_floor_euler)):
        sampler = hb.samplers.sghmc(h, C, scheme)
        contenders[f"floor {scheme}"] = aot(floor(N, B, S, h, C), w0, key, Xj, yj)
        contenders[f"floor {scheme} + value (lp)"] = aot(floor(N, B, S, h, C, with_value=True), w0, key, Xj, yj)
        contenders[f"hb loop {scheme}"] = compiled_hb_loop(target, sampler, B, S)
        name = f"hb.sample {scheme}"
        measure[name] = hb_sample_measure(target, sampler, None, B, S)
        contenders[name] = lambda m=measure[name]: m()["time"]
    k = 10
    contenders["blackjax.sghmc (10 steps/sample)"] = aot(build_blackjax_sghmc(N, B, S // k, h, C, k, loglik_row),
                                                          w0, key, Xj, yj)
    print(f"cost: N={N} d={D} batch={B} steps={S} (h={h}, C={C}); repeats={args.repeats}", flush=True)
    timings = interleaved(contenders, repeats=args.repeats, measure=measure)
    rows = []
    for name, t in timings.items():
        ref = "floor obabo" if "obabo" in name else "floor euler"
        best = min(t.extra["run"]) if "run" in t.extra else t.best
        med, q25, q75 = paired_ratio(timings, name, ref)
        if "run" in t.extra:
            med = float(np.median(np.asarray(t.extra["run"]) / np.asarray(timings[ref].times)))
        cpu = t.best_cpu / timings[ref].best_cpu
        compiled = getattr(contenders[name], "compiled", None)
        ops = "" if compiled is None else str(ops_per_step(compiled))
        rows.append([name + (" (run)" if "run" in t.extra else ""), f"{best / S * 1e6:.1f}",
                     f"{best / timings[ref].best:.3f}", f"{med:.3f}", f"{cpu:.3f}", ops, ref, t.spread])
    print(markdown_table(["contender", "us/step (min)", "x floor (mins)", "x floor (median paired)",
                          "x floor (CPU time, mins)", "XLA ops/step", "floor", "spread"], rows))


# ----------------------------------------------------------------------------------------
# accuracy: gradient evaluations to the bars
# ----------------------------------------------------------------------------------------
REPLICATES = 8
BATCH = 100


def _bars_ok(ref, samples):
    c = ref.compare(samples)
    return c["max_abs_z"] <= 0.25 and c["sd_ratio_min"] >= 0.9 and c["sd_ratio_max"] <= 1.2


def bars_counts(ref, samples, grid):
    """For each S of ``grid``: how many of the replicates (4 chains each) meet the bars."""
    counts = []
    for S in grid:
        n = 0
        for i in range(samples[next(iter(samples))].shape[0] // 4):
            sub = {k: v[4 * i: 4 * i + 4, S // 10: S // 10 + S] for k, v in samples.items()}
            n += _bars_ok(ref, sub)
        counts.append(n)
    return counts


def first_reached(grid, counts, total):
    """The smallest S from which on >= 7/8 of the replicates meet the bars (None: never)."""
    for i, S in enumerate(grid):
        if all(8 * c >= 7 * total for c in counts[i:]):
            return S
    return None


def steps_to_bars(ref, samples, grid):
    counts = bars_counts(ref, samples, grid)
    return first_reached(grid, counts, samples[next(iter(samples))].shape[0] // 4), counts


def run_method(ref, sampler, grid, seeds=(0,)):
    """Counts summed over ``seeds`` (each 8 replicates of 4 chains), S* and seconds."""
    smax = max(grid)
    t0 = time.perf_counter()
    counts = np.zeros(len(grid), int)
    for seed in seeds:
        res = hb.sample(ref.model, sampler, data=ref.data, batch_size=BATCH, num_samples=int(1.1 * smax),
                        num_chains=4 * REPLICATES, seed=seed, progress_bar=False, num_warmup=0)
        counts += np.asarray(bars_counts(ref, res.samples, grid))
    star = first_reached(grid, list(counts), REPLICATES * len(seeds))
    return star, list(counts), time.perf_counter() - t0, res


SETTINGS = {
    "german_credit": {
        "grid": [2000, 2500, 3000, 3500, 4000, 4500, 5000, 6000, 7000, 8000, 10000, 12000],
        "sgld": [2e-4, 3e-4, 4e-4],
        "sghmc": [(0.006, 20.0), (0.009, 30.0), (0.012, 40.0)],
    },
    "arK": {
        "grid": [8000, 10000, 12500, 15000, 17500, 20000, 25000, 30000, 40000],
        "sgld": [1.5e-5, 2e-5, 3e-5],
        "sghmc": [(0.001, 25.0), (0.0015, 35.0), (0.002, 45.0)],
    },
}


def part_accuracy(args):
    rows = []
    for name in args.targets:
        ref = hb.models.reference(name)
        cfg = SETTINGS[name]
        grid = cfg["grid"]
        methods = [(f"sgld h={e:g}", "sgld", hb.samplers.sgld(e)) for e in cfg["sgld"]]
        for scheme in ("obabo", "baoab", "euler"):
            methods += [(f"{scheme} h={h:g} C={c:g}", scheme, hb.samplers.sghmc(h, c, scheme)) for h, c in cfg["sghmc"]]
        best = {}
        for label, family, sampler in methods:
            star, counts, secs, _ = run_method(ref, sampler, grid, seeds=range(args.seeds))
            print(f"{name}: {label}: S*={star} ({secs:.0f}s) of {REPLICATES * args.seeds} replicates, meeting the bars per S: "
                  + " ".join(f"{S}:{c}" for S, c in zip(grid, counts)), flush=True)
            key = math.inf if star is None else star
            if family not in best or key < best[family][0]:
                best[family] = (key, label)
        base = best["sgld"][0]
        for family, (star, label) in best.items():
            grads = "not reached" if star == math.inf else f"{1.1 * star * BATCH:,.0f}"
            ratio = "" if star == math.inf or base == math.inf else f"{base / star:.2f}"
            rows.append([name, family, label, "-" if star == math.inf else str(star), grads, ratio])
    print(markdown_table(["target", "method", "best setting", "steps S*", "gradient evals / chain (rows)",
                          "SGLD / method"], rows))


# ----------------------------------------------------------------------------------------
# blackjax: time to the bars on German credit
# ----------------------------------------------------------------------------------------
def part_blackjax(args):
    """Steps to the German credit bars (8 x seeds replicates) x seconds per step (timed interleaved)."""
    ref = hb.models.reference("german_credit")
    X, y = (jnp.asarray(ref.data["X"]), jnp.asarray(ref.data["y"]))
    N = X.shape[0]
    grid = SETTINGS["german_credit"]["grid"] + [15000, 20000, 30000, 40000, 60000]
    smax = max(grid)
    total = int(1.1 * smax)
    num_chains = 4 * REPLICATES

    def prior(w):
        return -0.5 * jnp.sum(w**2)

    stars, timers = {}, {}
    # heatbath: its own driver on the NumPyro model
    target = hb.models.from_numpyro(ref.model, **ref.data)
    for scheme, (h, c) in (("obabo", (0.012, 40.0)), ("baoab", (0.012, 40.0)), ("euler", (0.009, 30.0))):
        sampler = hb.samplers.sghmc(h, c, scheme)
        label = f"heatbath sghmc-{scheme} h={h:g} C={c:g}"
        star, counts, _, _ = run_method(ref, sampler, grid, seeds=range(args.seeds))
        print(f"{label}: S*={star}; " + " ".join(f"{S}:{k}" for S, k in zip(grid, counts)), flush=True)
        stars[label] = star
        timers[label] = compiled_hb_loop(target, sampler, BATCH, args.time_steps, num_chains=num_chains)
    # blackjax.sghmc: samples of k Euler steps on one minibatch, the momentum redrawn every sample
    for h, alpha, k in ((0.003, 100.0, 10), (0.005, 100.0, 10), (0.003, 50.0, 5), (0.006, 100.0, 5)):
        label = f"blackjax.sghmc h={h:g} alpha={alpha:g} k={k}"
        run_fn = build_blackjax_sghmc(N, BATCH, total // k, h, alpha, k, loglik_row, prior)
        fn = jax.jit(jax.vmap(run_fn, in_axes=(0, 0, None, None)))
        counts = np.zeros(len(grid), int)
        for seed in range(args.seeds):
            keys = jax.random.split(jax.random.key(seed), num_chains)
            w0 = jax.vmap(lambda kk: jax.random.uniform(kk, (25,), minval=-2.0, maxval=2.0))(keys)
            draws = np.repeat(np.asarray(fn(w0, keys, X, y)), k, axis=1)  # indexed by gradient steps
            counts += np.asarray(bars_counts(ref, {"weights": draws}, grid))
        star = first_reached(grid, list(counts), REPLICATES * args.seeds)
        print(f"{label}: S*={star}; " + " ".join(f"{S}:{c}" for S, c in zip(grid, counts)), flush=True)
        stars[label] = star
        keys = jax.random.split(jax.random.key(0), num_chains)
        timers[label] = aot(jax.vmap(build_blackjax_sghmc(N, BATCH, args.time_steps // k, h, alpha, k, loglik_row,
                                                          prior), in_axes=(0, 0, None, None)),
                            jnp.zeros((num_chains, 25)), keys, X, y)
    # the floor: hand-written OBABO and Euler (same logistic model), vmapped over the chains, every draw kept
    keys = jax.random.split(jax.random.key(0), num_chains)
    for scheme, floor, (h, c) in (("obabo", build_floor_obabo, (0.012, 40.0)), ("euler", build_floor_euler, (0.009, 30.0))):
        label = f"floor {scheme} (hand-written, 1 minibatch per step)"
        timers[label] = aot(jax.vmap(floor(N, BATCH, args.time_steps, h, c), in_axes=(0, 0, None, None)),
                            jnp.zeros((num_chains, 25)), keys, X, y)
        stars[label] = None
    print(f"timing {args.time_steps} gradient steps x {num_chains} chains, repeats={args.repeats}", flush=True)
    timings = interleaved(timers, repeats=args.repeats)
    rows = []
    for label, t in timings.items():
        per_step = t.best / args.time_steps
        star = stars[label]
        rows.append([label, "-" if label.startswith("floor") else "not reached" if star is None else str(star),
                     f"{per_step * 1e6:.1f}",
                     "-" if star is None else f"{1.1 * star * per_step:.2f}", t.spread])
    print(markdown_table(["sampler", "gradient steps to the bars", "us per gradient step (32 chains, min)",
                          "seconds to the bars", "spread"], rows))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["cost", "accuracy", "blackjax", "all"])
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--targets", nargs="+", default=["german_credit", "arK"])
    ap.add_argument("--seeds", type=int, default=3, help="accuracy: independent runs of 8 x 4 chains per method")
    ap.add_argument("--time-steps", type=int, default=5000, help="blackjax: steps per timed call")
    args = ap.parse_args(argv)
    for k, v in machine_info().items():
        print(f"{k}: {v}")
    if args.part in ("cost", "all"):
        part_cost(args)
    if args.part in ("accuracy", "all"):
        part_accuracy(args)
    if args.part in ("blackjax", "all"):
        part_blackjax(args)


if __name__ == "__main__":
    main()
