"""Where an ``hb.sample`` step's time goes on an accelerator, against the hand-written floor.

    python benchmarks/gpu_profile.py --out DIR            # on a GPU: about a minute
    python benchmarks/gpu_profile.py --out DIR --smoke    # tiny sizes, any backend

On the logistic regression of ``benchmarks/gpu.py`` (d = 50, N = 50,000, batch 500), times
variants of the public call and of the floor, interleaved (min and median of the repeats):
the floor; the floor with hb's per-step key split; ``hb.sample`` keeping every draw, with each
``on_divergence`` mode, with the progress bar; ``keep="moments"``. On the 670k-weight MLP of
``benchmarks/bench_bdl.py``: the hand-written SGLD scan and ``hb.sample`` (``keep="moments"``)
at 1,000 and 2,000 steps (the difference separates the per-call cost from the per-step
cost), and fused SGHMC. Then a profiler trace of one call of the floor and one of
``hb.sample`` per model (``DIR/trace_<model>``, Perfetto JSON), and a summary
(``DIR/profile.json``): kernels launched per step and device time per step of each compiled
program, read from the trace. (The optimized HLO: run with ``XLA_FLAGS=--xla_dump_to=...``.)
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import math
import os
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved, machine_info  # noqa: E402
from gpu import logistic_problem  # noqa: E402

import heatbath as hb  # noqa: E402


def trace_summary(trace_dir, steps):
    """Kernel launches and device time per step, per XLA module, from the Perfetto trace."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        return {"error": "no perfetto trace written"}
    with gzip.open(files[0]) as f:
        events = json.load(f)
    events = events.get("traceEvents", events)
    threads = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    per_module, names = {}, {}
    for e in events:
        if e.get("ph") != "X":
            continue
        args = e.get("args", {})
        module = args.get("hlo_module") or args.get("long_name", "")[:0]
        if not module:
            continue
        m = per_module.setdefault(module, {"kernels": 0, "device_us": 0.0})
        m["kernels"] += 1
        m["device_us"] += float(e.get("dur", 0.0))
        key = (module, e.get("name", "")[:60])
        names[key] = names.get(key, 0) + 1
    out = {k: {"kernels_per_step": v["kernels"] / steps, "device_us_per_step": v["device_us"] / steps}
           for k, v in per_module.items()}
    top = sorted(names.items(), key=lambda kv: -kv[1])[:60]
    return {"modules": out, "top_kernel_names": [[m, n, c / steps] for (m, n), c in top],
            "threads": sorted(set(threads.values()))[:40]}


def logistic(args, result):
    X, y, N, d, n, logprior, loglik = logistic_problem(args.smoke)
    steps = 20 if args.smoke else 2000
    h = 1e-4
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    grad = jax.grad(lambda w, idx: logprior(w) + (N / n) * loglik(w, (Xj[idx], yj[idx])))

    def floor_fn(split_inside):
        def run(w, key):
            def body(carry, k):
                w, key = carry
                if split_inside:
                    key, k1, k2 = jax.random.split(key, 3)
                else:
                    k1, k2 = jax.random.split(k)
                idx = jax.random.randint(k1, (n,), 0, N)
                w = w + h * grad(w, idx) + math.sqrt(2 * h) * jax.random.normal(k2, w.shape)
                return (w, key), w

            return jax.lax.scan(body, (w, key), jax.random.split(key, steps))[1]

        return jax.jit(run)

    floor, floor_split = floor_fn(False), floor_fn(True)
    target = hb.models.from_logdensity(logprior, loglik, (X, y), params=jnp.zeros(d))
    w0, key = jnp.zeros(d), jax.random.key(0)

    def hb_call(**kw):
        opts = dict(batch_size=n, num_samples=steps, init=w0, checks="off", progress_bar=False)
        opts.update(kw)
        if opts.get("keep") == "moments":
            return lambda: hb.sample(target, hb.samplers.sgld(h), **opts, num_warmup=0).moments["mean"]
        return lambda: hb.sample(target, hb.samplers.sgld(h), **opts, num_warmup=0).samples["theta"]

    contenders = {
        "floor": lambda: floor(w0, key),
        "floor, split inside": lambda: floor_split(w0, key),
        "hb stop (default)": hb_call(),
        "hb restart": hb_call(on_divergence="restart"),
        "hb flag": hb_call(on_divergence="flag"),
        "hb moments": hb_call(keep="moments"),
        "hb progress bar": hb_call(progress_bar=True),
    }
    timed(contenders, args, steps, result, "logistic", ("floor", "hb stop (default)"))


def mlp(args, result):
    import bench_bdl

    config = bench_bdl.SMOKE if args.smoke else bench_bdl.FULL
    data, params = bench_bdl.make_problem(config["sizes"], config["rows"])
    steps, h, batch = (10 if args.smoke else 1000), 1e-6, config["batch"]
    hand = bench_bdl.hand_scans(data, params, steps, batch, h)["hand SGLD"]
    hand2 = bench_bdl.hand_scans(data, params, 2 * steps, batch, h)["hand SGLD"]
    target = hb.models.from_logdensity(bench_bdl.logprior, bench_bdl.loglik, data, params=params)
    key = jax.random.key(0)

    def hb_call(n, **kw):
        opts = dict(batch_size=batch, num_samples=n, keep="moments", checks="off", progress_bar=False,
                    init=params, seed=0)
        opts.update(kw)
        return lambda: hb.sample(target, hb.samplers.sgld(h), **opts, num_warmup=0).moments["mean"]

    contenders = {
        "floor": lambda: hand(params, key),
        "floor x2 steps": lambda: hand2(params, key),
        "hb moments": hb_call(steps),
        "hb moments x2 steps": hb_call(2 * steps),
        "hb sghmc fused moments": lambda: hb.sample(
            target, hb.samplers.sghmc(math.sqrt(h), 1.0, fuse_noise=True), batch_size=batch, num_samples=steps,
            keep="moments", checks="off", progress_bar=False, init=params, seed=0, num_warmup=0).moments["mean"],
    }
    timed(contenders, args, steps, result, "mlp", ("floor", "hb moments"))


def timed(contenders, args, steps, result, name, traced):
    timings = interleaved(contenders, repeats=1 if args.smoke else args.repeats, warmup=1, verbose=True)
    out = {"steps": steps,
           "min_ms_per_step": {k: 1e3 * t.best / steps for k, t in timings.items()},
           "median_ms_per_step": {k: 1e3 * float(np.median(t.times)) / steps for k, t in timings.items()}}
    # Profiler trace of one call of each traced contender (already compiled above).
    trace_dir = os.path.join(args.out, f"trace_{name}")
    try:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for k in traced:
            jax.block_until_ready(contenders[k]())
        jax.profiler.stop_trace()
        out["trace"] = trace_summary(trace_dir, steps)
    except Exception as err:  # the timings above stand without the trace
        out["trace"] = {"error": f"{type(err).__name__}: {err}"}
    result[name] = out
    print(name, json.dumps(out["min_ms_per_step"], indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu_profile")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="logistic,mlp")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    result = {"machine": machine_info()}
    for name, fn in (("logistic", logistic), ("mlp", mlp)):
        if name in args.models.split(","):
            fn(args, result)
            with open(os.path.join(args.out, "profile.json"), "w") as f:
                json.dump(result, f, indent=1, default=str)
    return result


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"{time.perf_counter() - t0:.1f} s")
