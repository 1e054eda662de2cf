"""Bytes and flops per step of the compiled sampling chunk at 670k weights, from XLA's cost model.

Deterministic (no clock): XLA's ``cost_analysis()`` of the chunk that ``hb.sample`` compiles for
the 784-512-512-10 MLP of ``bench_bdl.py`` (batch 128, ``keep="moments"``, ``checks="off"``),
for SGLD and SGHMC (OBABO, with and without ``fuse_noise``) under ``on_divergence="stop"``
(the default) and ``"flag"`` (no guard). The cost model counts the body of the sampling loop
once, so the figures are per step. On a memory-bound CPU step the bytes track the time.

    python benchmarks/bench_step_bytes.py [--smoke]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import heatbath as hb  # noqa: E402
from heatbath.drivers import loop  # noqa: E402

import bench_bdl as B  # noqa: E402


def per_step(target, params, make, **kw):
    """(MB accessed, Mflop) per step of the sampling chunk compiled for ``make()``."""
    loop.COMPILED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hb.sample(target, make(), batch_size=128, num_samples=50, keep="moments", checks="off",
                  progress_bar=False, init=params, seed=0, **kw, num_warmup=0)
    costs = []
    for _, compiled in loop.COMPILED.entries.values():
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, list) else ca
        costs.append((ca.get("bytes accessed", 0.0) / 1e6, ca.get("flops", 0.0) / 1e6))
    return max(costs)  # the sampling chunk (a moments run compiles only it)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny MLP: checks that it runs")
    args = ap.parse_args(argv)
    sizes = [8, 16, 3] if args.smoke else [784, 512, 512, 10]
    data, params = B.make_problem(sizes, 1000 if args.smoke else 60_000)
    target = hb.models.from_logdensity(B.logprior, B.loglik, data, params=params)
    h = 1e-6
    contenders = [
        ("SGLD", lambda: hb.samplers.sgld(h)),
        ("SGHMC OBABO fuse_noise", lambda: hb.samplers.sghmc(math.sqrt(h), 1.0, fuse_noise=True)),
        ("SGHMC OBABO", lambda: hb.samplers.sghmc(math.sqrt(h), 1.0)),
    ]
    print(f"{B.num_weights(params):,} weights; per step of the sampling chunk (XLA cost model)")
    print("| sampler | on_divergence | MB accessed | Mflop |\n|---|---|---|---|")
    for name, make in contenders:
        for mode in ("stop", "flag"):
            mb, mflop = per_step(target, params, make, on_divergence=mode)
            print(f"| {name} | {mode} | {mb:.1f} | {mflop:.1f} |", flush=True)


if __name__ == "__main__":
    main()
