"""First-call latency: how long a user waits for the first result, compilation included.

    python benchmarks/bench_first_call.py                       # both models, 3 repeats
    python benchmarks/bench_first_call.py --models logreg --repeats 5
    python benchmarks/bench_first_call.py --smoke               # tiny sizes (the test suite)

Every measurement runs in a **fresh Python process** (nothing compiled, no cache on disk), so
it is what a user's first call costs; imports and data creation are done before the clock
starts. The contenders run interleaved (round-robin, shuffled order each round) so a burst of
load hits all alike; the table gives the median and the minimum over the repeats, and the
median paired ratio to BlackJAX.

Models (issue 15): Bayesian logistic regression (N = 50,000, d = 50, batch 500) and an MLP of
84,060 weights (784-100-50-10, ReLU, N(0, 1) priors, 10,000 synthetic rows, batch 128). Each
contender runs SGLD for ``--steps`` steps (1,000) with a given step size, one chain:

  hand       a hand-written jitted ``lax.scan`` (randint rows, ``jax.grad``, the update),
             returning the last position.
  blackjax   ``blackjax.sgld`` with ``blackjax.sgmcmc.gradients.grad_estimator`` in a jitted
             ``lax.scan``, returning the last position (BlackJAX's documented pattern).
  hb         ``hb.sample(from_logdensity target, hb.samplers.sgld(h), batch_size=..,
             num_samples=steps, init=params)``: with the default end-of-run checks
             (``checks="full"``: R-hat, ESS, the configurational temperature and the
             predicted bias of the given step, each of the last two a compiled measurement),
             with ``checks="basic"`` (R-hat and ESS only: ``hb (basic)``), and with
             ``checks="off"`` and ``keep="moments"`` (``hb (lean)``).
  hb numpyro the same network or regression written as a NumPyro model (logistic regression
             only: the MLP's NumPyro model is timed by ``--numpyro-mlp``).

Each child also reports the number of XLA compilations and their total compile time
(``jax_log_compiles``), so fewer and smaller compiles can be checked. ``--baseline DIR`` adds
every ``hb`` contender run on another checkout of heatbath (``DIR`` first on ``PYTHONPATH``,
e.g. ``git worktree add /tmp/old HEAD~3``), interleaved with the rest: a before/after in one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import statistics
import subprocess
import sys
import time

MODELS = {
    "logreg": {"rows": 50_000, "dim": 50, "batch": 500, "h": 2e-6},
    "mlp": {"rows": 10_000, "sizes": (784, 100, 50, 10), "batch": 128, "h": 1e-6},
}
SMOKE = {
    "logreg": {"rows": 2_000, "dim": 5, "batch": 50, "h": 1e-4},
    "mlp": {"rows": 500, "sizes": (8, 6, 3), "batch": 32, "h": 1e-4},
}
CONTENDERS = ("hand", "blackjax", "hb", "hb (basic)", "hb (lean)", "hb numpyro")


# ----------------------------------------------------------------------------------------
# The child: one contender, one first call
# ----------------------------------------------------------------------------------------
class _CompileLog(logging.Handler):
    PATTERN = re.compile(r"Finished XLA compilation of (.*) in ([0-9.eE+-]+) sec")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.compiles = []

    def emit(self, record):
        m = self.PATTERN.match(record.getMessage())
        if m:
            self.compiles.append((m.group(1), float(m.group(2))))


def _problem(model, cfg):
    import numpy as np

    rng = np.random.default_rng(0)
    if model == "logreg":
        X = rng.normal(size=(cfg["rows"], cfg["dim"])).astype(np.float32)
        w = rng.normal(size=cfg["dim"]).astype(np.float32) / math.sqrt(cfg["dim"])
        y = (rng.uniform(size=cfg["rows"]) < 1 / (1 + np.exp(-X @ w))).astype(np.float32)
        params = np.zeros(cfg["dim"], np.float32)
        return (X, y), params
    sizes = cfg["sizes"]
    X = rng.normal(size=(cfg["rows"], sizes[0])).astype(np.float32)
    teacher = rng.normal(size=(sizes[0], sizes[-1])).astype(np.float32) / math.sqrt(sizes[0])
    y = np.argmax(X @ teacher + rng.gumbel(size=(cfg["rows"], sizes[-1])), axis=1).astype(np.int32)
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"W{i}"] = (rng.normal(size=(a, b)) / math.sqrt(a)).astype(np.float32)
        params[f"b{i}"] = np.zeros((b,), np.float32)
    return (X, y), params


def _densities(model):
    import jax
    import jax.numpy as jnp

    def logprior(p):
        return -0.5 * sum(jnp.sum(x * x) for x in jax.tree.leaves(p))

    if model == "logreg":
        def loglik(w, batch):
            X, y = batch
            z = X @ w
            return jnp.sum(y * z - jax.nn.softplus(z))
    else:
        def loglik(p, batch):
            X, y = batch
            h = X
            n = len(p) // 2
            for i in range(n):
                h = h @ p[f"W{i}"] + p[f"b{i}"]
                if i < n - 1:
                    h = jax.nn.relu(h)
            return jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(h), y[:, None], axis=1))
    return logprior, loglik


def child(contender, model, cfg, steps):
    """Build everything a user has before the call, then time the first call."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    data, params = _problem(model, cfg)
    logprior, loglik = _densities(model)
    N, batch, h = cfg["rows"], cfg["batch"], cfg["h"]
    if contender.startswith("hb"):
        import heatbath as hb  # noqa: F401
    if contender == "blackjax":
        import blackjax  # noqa: F401
    log = _CompileLog()
    jlog = logging.getLogger("jax")
    jlog.addHandler(log)
    jlog.setLevel(logging.DEBUG)
    for h_ in list(jlog.handlers):
        if h_ is not log:
            jlog.removeHandler(h_)
    jlog.propagate = False
    jax.config.update("jax_log_compiles", True)

    t0 = time.perf_counter()
    if contender == "hand":
        X, y = jnp.asarray(data[0]), jnp.asarray(data[1])

        def grad_fn(p, idx):
            return jax.grad(lambda q: logprior(q) + (N / batch) * loglik(q, (X[idx], y[idx])))(p)

        @jax.jit
        def run(p, key):
            def body(p, k):
                k1, k2 = jax.random.split(k)
                idx = jax.random.randint(k1, (batch,), 0, N)
                g = grad_fn(p, idx)
                leaves, tdef = jax.tree.flatten(p)
                keys = jax.random.split(k2, len(leaves))
                xi = jax.tree.unflatten(tdef, [jax.random.normal(kk, x.shape, x.dtype) for kk, x in zip(keys, leaves)])
                return jax.tree.map(lambda a, b, c: a + h * b + math.sqrt(2 * h) * c, p, g, xi), None

            return jax.lax.scan(body, p, jax.random.split(key, steps))[0]

        out = run(jax.tree.map(jnp.asarray, params), jax.random.key(0))
    elif contender == "blackjax":
        import blackjax

        X, y = jnp.asarray(data[0]), jnp.asarray(data[1])

        def loglik_row(p, row):
            xr, yr = row
            return loglik(p, (xr[None], yr[None]))

        grad_est = blackjax.sgmcmc.gradients.grad_estimator(logprior, loglik_row, N)
        sgld = blackjax.sgld(grad_est)

        @jax.jit
        def run(p, key):
            def body(p, k):
                k1, k2 = jax.random.split(k)
                idx = jax.random.randint(k1, (batch,), 0, N)
                return sgld.step(k2, p, (X[idx], y[idx]), h), None

            return jax.lax.scan(body, sgld.init(p), jax.random.split(key, steps))[0]

        out = run(jax.tree.map(jnp.asarray, params), jax.random.key(0))
    else:
        import heatbath as hb

        kw = dict(batch_size=batch, num_samples=steps, init=params, progress_bar=False, seed=0)
        if contender == "hb (lean)":
            kw.update(checks="off", keep="moments")
        if contender == "hb (basic)":
            kw.update(checks="basic")
        if contender == "hb numpyro":
            import numpyro
            import numpyro.distributions as dist

            if model != "logreg":
                raise SystemExit("hb numpyro: logistic regression only")

            def npmodel(X, y=None):
                w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
                with numpyro.plate("data", X.shape[0]):
                    numpyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)

            kw["init"] = {"w": params}
            res = hb.sample(npmodel, hb.samplers.sgld(h), data={"X": data[0], "y": data[1]}, **kw, num_warmup=0)
        else:
            target = hb.models.from_logdensity(logprior, loglik, data, params=params)
            res = hb.sample(target, hb.samplers.sgld(h), **kw, num_warmup=0)
        out = res.moments["mean"] if res.moments else res.samples
    jax.block_until_ready(out)
    wall = time.perf_counter() - t0
    comp = log.compiles
    top = sorted(comp, key=lambda c: -c[1])[:int(os.environ.get("BENCH_TOP", "8"))]
    return {"contender": contender, "model": model, "seconds": wall, "compiles": len(comp),
            "compile_seconds": sum(c[1] for c in comp), "top": top}


# ----------------------------------------------------------------------------------------
# The parent: fresh processes, interleaved
# ----------------------------------------------------------------------------------------
BASELINE = " @ baseline"


def run_child(contender, model, steps, smoke, baseline=None):
    name = contender[: -len(BASELINE)] if contender.endswith(BASELINE) else contender
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--models", model,
           "--steps", str(steps)] + (["--smoke"] if smoke else [])
    env = dict(os.environ)
    env.pop("HEATBATH_CHECKS", None)  # the default a user gets (full)
    if contender.endswith(BASELINE):
        env["PYTHONPATH"] = os.pathsep.join([baseline] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{contender} on {model} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["contender"] = contender
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="logreg,mlp")
    ap.add_argument("--contenders", default=",".join(CONTENDERS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that everything runs")
    ap.add_argument("--out", default=None, help="write the results to this JSON file")
    ap.add_argument("--baseline", default=None, help="another heatbath checkout: its hb contenders run too")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = SMOKE if args.smoke else MODELS
    if args.child:
        print(json.dumps(child(args.child, args.models, sizes[args.models], args.steps)))
        return None
    models = args.models.split(",")
    contenders = args.contenders.split(",")
    if args.baseline:
        contenders += [c + BASELINE for c in contenders if c.startswith("hb")]
    repeats = 1 if args.smoke else args.repeats
    jobs = [(c, m) for m in models for c in contenders if not (c.startswith("hb numpyro") and m != "logreg")]
    results = {job: [] for job in jobs}
    rng = random.Random(0)
    for r in range(repeats):
        order = list(jobs)
        rng.shuffle(order)
        for c, m in order:
            res = run_child(c, m, args.steps, args.smoke, args.baseline)
            results[(c, m)].append(res)
            print(f"round {r + 1}: {m:7s} {c:22s} {res['seconds']:7.2f} s, {res['compiles']:3d} compiles "
                  f"({res['compile_seconds']:.2f} s)", flush=True)
    summary = {}
    for m in models:
        print(f"\n{m}: first call, {args.steps} SGLD steps, one chain, {repeats} fresh processes per contender\n")
        print("| contender | s (median) | s (min) | x BlackJAX (median paired) | compiles | compile s |")
        print("|---|---|---|---|---|---|")
        ref = results.get(("blackjax", m))
        for c in contenders:
            rs = results.get((c, m))
            if not rs:
                continue
            secs = [x["seconds"] for x in rs]
            ratio = (statistics.median(a["seconds"] / b["seconds"] for a, b in zip(rs, ref)) if ref else float("nan"))
            summary[f"{m}/{c}"] = {"seconds": secs, "ratio_to_blackjax": ratio, "compiles": rs[-1]["compiles"],
                                   "compile_seconds": statistics.median(x["compile_seconds"] for x in rs),
                                   "top": rs[-1]["top"]}
            print(f"| {c} | {statistics.median(secs):.2f} | {min(secs):.2f} | {ratio:.2f}x | {rs[-1]['compiles']} | "
                  f"{summary[f'{m}/{c}']['compile_seconds']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
