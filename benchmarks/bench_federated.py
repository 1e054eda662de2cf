"""Throughput of a federated FSGLD run (the paper's toy, K = 10 shards, minibatch 10, T = 20
local steps) on 1 device, 8 simulated devices (shard="chains") and 2 processes x 4 devices
(jax.distributed, the README's recipe).

    /work/venv/bin/python benchmarks/bench_federated.py [--steps 20000] [--chains 64]

Prints chain-steps per second after compilation (the best of 3 repeats of a compiled run).
On a CPU machine the simulated devices share its cores: the table shows what placement
costs, not what several accelerators or hosts would give.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def child(args):
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.nproc > 1:
        jax.distributed.initialize(coordinator_address=f"localhost:{args.port}", num_processes=args.nproc,
                                   process_id=args.pid)
    sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
    import heatbath as hb
    from heatbath.drivers import batching
    from test_federated import toy

    target, _, ids, _, q = toy()
    kw = dict(batch_size=10, num_samples=args.steps // 100, thinning=100, num_chains=args.chains, seed=0,
              progress_bar=False, checks="off", batching=batching.federated(ids, local_steps=20),
              shard=None if len(jax.devices()) == 1 else "chains")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        r = hb.sample(target, hb.samplers.fsgld(5e-5, conducive=q), **kw, num_warmup=0)
        best = min(best, time.perf_counter() - t0 if _ else float("inf"))
    if args.pid == 0:
        print(f"RESULT {args.label} {args.chains * args.steps / best:.0f} chain-steps/s "
              f"({len(jax.devices())} devices, {jax.process_count()} process(es))", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--chains", type=int, default=64)
    p.add_argument("--child", action="store_true")
    p.add_argument("--pid", type=int, default=0)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--port", default="0")
    p.add_argument("--label", default="")
    args = p.parse_args()
    if args.child:
        return child(args)
    for label, nproc, devices in (("1 device", 1, 1), ("8 devices", 1, 8), ("2 processes x 4", 2, 4)):
        with socket.socket() as s:
            s.bind(("localhost", 0))
            port = str(s.getsockname()[1])
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        procs = [subprocess.Popen([sys.executable, __file__, "--child", "--pid", str(i), "--nproc", str(nproc),
                                   "--port", port, "--label", label, "--steps", str(args.steps), "--chains",
                                   str(args.chains)], env=env, stdout=subprocess.PIPE, text=True)
                 for i in range(nproc)]
        for proc in procs:
            out = proc.communicate()[0]
            print("\n".join(line for line in out.splitlines() if line.startswith("RESULT")), flush=True)


if __name__ == "__main__":
    main()
