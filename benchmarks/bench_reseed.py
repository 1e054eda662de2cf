"""A second ``hb.sample`` call with another seed: what it compiles again, and its time.

With automatic settings the driver chooses a step size (and SGHMC's friction) and, up to 2,000
dimensions, a Laplace metric; a second call with another seed (or other data of the same
shapes) chooses slightly different values. Each model is run with seeds 0, 1 and 2 in one
fresh process; reported: the number of XLA compilations of the sampling loop's chunk and of
everything, and the wall time of each call. ``--code DIR`` runs the same against another
checkout (e.g. a ``git worktree`` of an earlier commit) for a before/after table.

    python benchmarks/bench_reseed.py [--code DIR] [--smoke] [--models logistic,mlp] [--samplers sgld,sghmc,psgld]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r'''
import json, logging, math, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np, jax, jax.numpy as jnp
import heatbath as hb
model, kind, smoke = sys.argv[1], sys.argv[2], sys.argv[3] == "1"

class Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG); self.names = []
    def emit(self, r):
        m = r.getMessage()
        if m.startswith("Compiling "): self.names.append(m.split(" with")[0][len("Compiling "):])

rng = np.random.default_rng(0)
if model == "logistic":  # 20 coefficients, N = 2,000: the Laplace metric applies
    d, n = (5, 200) if smoke else (20, 2000)
    X = rng.normal(size=(n, d)).astype(np.float32); y = (X @ rng.normal(size=d) + rng.logistic(size=n) > 0).astype(np.float32)
    t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p ** 2),
                                  lambda p, b: jnp.sum(b[1] * (b[0] @ p) - jax.nn.softplus(b[0] @ p)),
                                  (X, y), params=jnp.zeros(d))
else:  # an MLP of 10-50-2 weights (above 2,000 dimensions: the identity metric)
    h_, n = (8, 200) if smoke else (50, 2000)
    X = rng.normal(size=(n, 10)).astype(np.float32); y = (X[:, 0] * X[:, 1] > 0).astype(np.int32)
    params = {"W0": jnp.zeros((10, h_)), "b0": jnp.zeros(h_), "W1": jnp.zeros((h_, 2)), "b1": jnp.zeros(2)}
    if not smoke:
        params = {"W0": jnp.zeros((10, 200)), "b0": jnp.zeros(200), "W1": jnp.zeros((200, 2)), "b1": jnp.zeros(2)}
    def loglik(p, b):
        hdn = jnp.tanh(b[0] @ p["W0"] + p["b0"]); logits = hdn @ p["W1"] + p["b1"]
        return jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(b[1].shape[0]), b[1]])
    t = hb.models.from_logdensity(lambda p: -0.5 * sum(jnp.sum(v ** 2) for v in jax.tree.leaves(p)), loglik, (X, y), params=params)
make = {"sgld": hb.samplers.sgld, "sghmc": hb.samplers.sghmc, "psgld": hb.samplers.psgld}[kind]
out = []
for seed in (0, 1, 2):
    c = Count(); lg = logging.getLogger("jax"); lg.addHandler(c); lg.setLevel(logging.DEBUG)
    t0 = time.perf_counter()
    with jax.log_compiles():
        r = hb.sample(t, make(), batch_size=n // 10, num_samples=200 if smoke else 1000, num_chains=4,
                      progress_bar=False, checks="off", seed=seed)
        jax.block_until_ready(jax.tree.leaves(r.samples))
    dt = time.perf_counter() - t0
    lg.removeHandler(c)
    out.append({"seed": seed, "seconds": dt, "chunk_compiles": c.names.count("jit(chunk)"), "compiles": len(c.names),
                "step_size": float(r.tuning["step_size"])})
print(json.dumps({"dims": int(sum(np.size(v) for v in jax.tree.leaves(t.example_params()))), "runs": out}))
'''


def run_child(code_dir, model, kind, smoke):
    env = dict(os.environ, PYTHONPATH=code_dir, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", CHILD, model, kind, "1" if smoke else "0"], env=env, cwd=code_dir,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", default=None, help="also run against this checkout (before/after)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--models", default="logistic,mlp")
    ap.add_argument("--samplers", default="sgld,sghmc", help="any of sgld, sghmc, psgld")
    args = ap.parse_args(argv)
    codes = [("this", os.path.dirname(HERE))] + ([("other", os.path.abspath(args.code))] if args.code else [])
    print("| code | model (dims) | sampler | seed 0: s (chunk compiles) | seed 1 | seed 2 |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for kind in args.samplers.split(","):
            for label, path in codes:
                r = run_child(path, model, kind, args.smoke)
                cells = [f"{x['seconds']:.2f} ({x['chunk_compiles']}/{x['compiles']})" for x in r["runs"]]
                print(f"| {label} | {model} ({r['dims']}) | {kind} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
