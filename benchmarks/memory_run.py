"""One SGLD run of a d-parameter model, for ``bench_memory.py`` to measure its peak RSS.

    python benchmarks/memory_run.py MODE [--steps S] [--dim D] [--draws R] [--chunk C] [--swag K]

The model is cheap per step and d-dimensional: theta in R^d with a N(0, I) prior and N
observations y_i ~ N(theta[j_i], 1) of random coordinates j_i (N = 10^4 rows; a minibatch of
32 rows touches at most 32 coordinates). SGLD with h = 1e-3, one chain. MODE says what the
run keeps (``--steps`` transitions after 1% warmup):

- ``baseline``: 10 draws (imports, data, compilation, runtime: the fixed cost).
- ``moments``: ``keep="moments"`` with a SWAG buffer of the last K draws, every step recorded
  (num_samples = steps, thinning = 1).
- ``moments_thinned``: ``keep="moments"``, R draws recorded every steps/R steps.
- ``thinned``: ``keep="draws"``, R draws kept every steps/R steps.
- ``naive``: ``keep="draws"``, every step kept (num_samples = steps).

It prints one JSON line: the settings, wall and compile time, the bytes the Result holds
(draws, stats, moments), this process's own ``ru_maxrss``, and a correctness figure: the
mean over the data-free coordinates (posterior N(0, 1)) of the estimated variance, which for
SGLD with exact gradients there is 1 / (1 - h/2) = 1.0005.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

MODES = ("baseline", "moments", "moments_thinned", "thinned", "naive")
STEP_SIZE = 1e-3
NUM_DATA = 10_000
BATCH = 32


def build(dim: int, seed: int = 0):
    import jax.numpy as jnp
    import numpy as np

    import heatbath as hb

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, dim, NUM_DATA).astype(np.int32)
    y = rng.normal(size=NUM_DATA).astype(np.float32)

    def logprior(p):
        return -0.5 * jnp.sum(p**2)

    def loglik(p, batch):
        return -0.5 * jnp.sum((batch["y"] - p[batch["idx"]]) ** 2)

    target = hb.models.from_logdensity(logprior, loglik, {"idx": idx, "y": y}, params=jnp.zeros(dim))
    free = np.ones(dim, bool)
    free[idx] = False  # coordinates with no data: posterior N(0, 1)
    return target, free


def nbytes(tree) -> int:
    import jax
    import numpy as np

    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(tree)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--steps", type=int, default=1_000_000, help="transitions after warmup")
    parser.add_argument("--dim", type=int, default=100_000, help="number of parameters d")
    parser.add_argument("--draws", type=int, default=1000, help="recorded draws R (thinned modes)")
    parser.add_argument("--chunk", type=int, default=None, help="chunk_size (draws per compiled chunk)")
    parser.add_argument("--swag", type=int, default=10, help="SWAG rank K (moments modes)")
    args = parser.parse_args(argv)

    import jax
    import numpy as np

    import heatbath as hb

    t0 = time.perf_counter()
    target, free = build(args.dim)
    steps = 10 if args.mode == "baseline" else args.steps
    if args.mode in ("moments_thinned", "thinned"):
        if steps % args.draws:
            parser.error("--steps must be a multiple of --draws")
        num_samples, thinning = args.draws, steps // args.draws
    else:
        num_samples, thinning = steps, 1
    keep = "moments" if args.mode.startswith("moments") else "draws"
    kw = dict(keep=keep, swag_rank=args.swag) if keep == "moments" else {}
    warmup = steps // 100
    r = hb.sample(target, hb.samplers.sgld(STEP_SIZE), batch_size=BATCH, num_samples=num_samples,
                  thinning=thinning, num_warmup=warmup, chunk_size=args.chunk, progress_bar=False, seed=1, **kw)
    wall = time.perf_counter() - t0
    if keep == "moments":
        var = r.moments["var"]["theta"][0]
        held = {"draws": 0, "stats": nbytes(r.stats), "moments": nbytes({k: v for k, v in r.moments.items() if k != "count"})}
    else:
        x = r.samples["theta"][0]
        var = x.var(axis=0, ddof=1) if len(x) > 1 else np.full(x.shape[1:], np.nan)
        held = {"draws": nbytes(r.samples), "stats": nbytes(r.stats), "moments": 0}
    out = dict(
        mode=args.mode, dim=args.dim, steps=steps, warmup=warmup, num_samples=num_samples, thinning=thinning,
        chunk_size=args.chunk, swag_rank=args.swag if keep == "moments" else 0, wall_s=wall,
        compile_s=r.compile_time, run_s=r.wall_time, held_bytes=held,
        self_maxrss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        mean_var_free=float(np.mean(var[free])) if free.any() else None, num_free=int(free.sum()),
        diverged=bool(np.any(r.stats["diverging"])), backend=jax.default_backend(),
    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
