"""Throughput of sharded chains and sharded data over (simulated) devices.

    /work/venv/bin/python benchmarks/bench_devices.py [--devices 8] [--repeats 5]

Runs itself with ``XLA_FLAGS=--xla_force_host_platform_device_count=D`` (8 by default): on
this CPU machine the devices are simulated and share the machine's cores, so the table shows
what sharding costs and how throughput scales up to the number of physical cores, not what
8 accelerators would give. Workload: logistic regression, N = 50,000 rows, d = 50, batch 500,
64 chains x 1000 steps of SGLD (shard="chains"), and 8 chains of SGLD with control variates
(whose full-data gradient is a sharded reduction) on N = 400,000 rows (shard="data").
"""

from __future__ import annotations

import argparse
import os
import sys


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
        os.execve(sys.executable, [sys.executable, __file__, "--child", "--devices", str(args.devices),
                                   "--repeats", str(args.repeats)], env)

    import jax
    import jax.numpy as jnp

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import heatbath as hb
    from bench_sgld import loglik, logprior, make_data
    from common import interleaved, machine_info, markdown_table

    devices = jax.devices()

    def logistic_target(N, seed, D=50):
        return hb.models.from_logdensity(logprior, loglik, make_data(N, D, seed), params=jnp.zeros(D))

    chains_target = logistic_target(50_000, 0)
    data_target = logistic_target(400_000, 1)
    sgld = hb.samplers.sgld(1e-5)
    svrg = hb.samplers.sgld(1e-5, gradient=hb.kernels.gradients.svrg(100))
    counts = [n for n in (1, 2, 4, 8) if n <= len(devices)]

    def chains_run(n):
        return lambda: hb.sample(chains_target, sgld, batch_size=500, num_samples=1000, num_chains=64,
                                 shard="chains" if n > 1 else None, devices=devices[:n], progress_bar=False,
                                 keep="moments", num_warmup=0)

    def data_run(n):
        return lambda: hb.sample(data_target, svrg, batch_size=500, num_samples=500, num_chains=8,
                                 shard="data" if n > 1 else None, devices=devices[:n], progress_bar=False,
                                 keep="moments", num_warmup=0)

    def measured(fn):
        def run():
            r = fn()
            return {"time": r.wall_time - r.compile_time}
        return run

    contenders = {}
    measure = {}
    for n in counts:
        contenders[f"chains x{n}"] = chains_run(n)
        measure[f"chains x{n}"] = measured(chains_run(n))
        contenders[f"data x{n}"] = data_run(n)
        measure[f"data x{n}"] = measured(data_run(n))
    timings = interleaved(contenders, repeats=args.repeats, warmup=1, measure=measure)

    info = machine_info()
    print()
    print("Sharded throughput (" + ", ".join(f"{k}: {v}" for k, v in info.items()) + ")")
    print()
    rows = []
    base_c = timings["chains x1"].best
    base_d = timings["data x1"].best
    for n in counts:
        tc, td = timings[f"chains x{n}"].best, timings[f"data x{n}"].best
        rows.append([n, f"{64 * 1000 / tc:,.0f}", f"{base_c / tc:.2f}", f"{8 * 500 / td:,.0f}", f"{base_d / td:.2f}"])
    print(markdown_table(["devices", "shard='chains': draws/s (64 chains)", "speed-up",
                          "shard='data': steps x chains/s (SVRG every 100, N=400k)", "speed-up"], rows))


if __name__ == "__main__":
    main()
