"""Cost of one noise draw shaped like the 784-512-512-10 MLP (669,706 float32), by source.

    /work/venv/bin/python benchmarks/bench_noise.py [--repeats 7] [--draws 20]

Each contender draws ``--draws`` pytrees in a jitted lax.scan (keys split inside), timed
interleaved (common.interleaved), median paired ratio to ``jax.random.normal`` per parameter
array (threefry normals; what ``noise.brownian()`` called before 2026-12-05). ``brownian``: the
default source now, the same values computed in one fused pass (``heatbath/kernels/threefry.py``).
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_bdl import FULL, jax_normal, make_problem  # noqa: E402
from common import interleaved, machine_info, markdown_table, paired_ratio  # noqa: E402

from heatbath.kernels import noise as hb_noise  # noqa: E402
from heatbath.kernels import noise_weak  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--draws", type=int, default=20)
    args = ap.parse_args(argv)
    _, params = make_problem(FULL["sizes"], 10)
    sources = {"jax.random.normal": hb_noise.NoiseSource("jax.random.normal", jax_normal, None),
               "brownian (fused threefry)": hb_noise.brownian(), "gaussian16": noise_weak.gaussian16(),
               "uniform (8-bit)": noise_weak.uniform(), "rademacher": noise_weak.rademacher()}

    def runner(src):
        @jax.jit
        def run(key):
            def body(acc, k):
                xi = src.draw(k, params)
                return jax.tree.map(lambda a, x: a + x, acc, xi), None

            return jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), jax.random.split(key, args.draws))[0]

        return lambda: run(jax.random.key(0))

    timings = interleaved({k: runner(v) for k, v in sources.items()}, repeats=args.repeats)
    rows = [[k, f"{1e3 * t.best / args.draws:.2f}", f"{paired_ratio(timings, k, 'jax.random.normal')[0]:.2f}x"]
            for k, t in timings.items()]
    print(machine_info())
    print(markdown_table(["source", "ms per draw (min)", "median ratio to jax.random.normal"], rows))


if __name__ == "__main__":
    main()
