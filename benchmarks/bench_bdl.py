"""Bayesian-deep-learning scale: SG-MCMC steps on a 784-512-512-10 MLP against an optax step.

    /work/venv/bin/python benchmarks/bench_bdl.py                  # 670k weights, 5 repeats
    /work/venv/bin/python benchmarks/bench_bdl.py --repeats 3 --steps 100 --out /tmp/bdl.json
    /work/venv/bin/python benchmarks/bench_bdl.py --smoke          # a tiny MLP, seconds (CI)

Model: a 784-512-512-10 ReLU MLP (669,706 weights), prior N(0, I), softmax likelihood on
N = 60,000 synthetic rows (Gaussian inputs, labels from a random teacher), batch n = 128
drawn uniformly with replacement. Every contender runs ``--steps`` steps per call and is
timed interleaved with the others in one process (common.interleaved: compiled first,
round-robin in shuffled order), and reported as the median over rounds of its paired ratio
to the optax floor:

  optax           floor: a hand-written ``optax.sgd`` training step in a jitted lax.scan
                  (randint indices, gather, jax.grad of the loss, the update).
  optax (A/A)     the same program jitted a second time: the A/A control of the floor.
  hand SGLD       a hand-written SGLD scan: gradient + threefry normals (the Gaussian floor),
                  drawn with ``heatbath.kernels.tree.normal_like`` (jax.random.normal's values
                  in one fused pass: ``heatbath/kernels/threefry.py``).
  hand SGLD jax.random  the same scan calling ``jax.random.normal`` per parameter array
                  (what a hand-written scan usually does; the floor before 2026-12-05).
  hand SGLD moments  the hand SGLD scan keeping a running mean and sum of squared deviations
                  of its draws (Welford) in the carry: the floor of keep="moments".
  hand SGLD signs the same with packed Rademacher signs (the cheap-noise floor).
  hb SGLD ...     ``hb.sample`` (the public call, everything compiled already: a second call
                  with a new sampler object of the same settings), keep="moments",
                  checks="off", progress_bar=False, on the from_logdensity target: SGLD with
                  Gaussian, Rademacher and uniform(8-bit) noise; SGHMC OBABO plain, fused
                  (one draw per step) and fused with Rademacher noise; pSGLD.
  hb SGLD last draw  ``hb.sample`` SGLD returning only its last draw (``num_samples=1``,
                  ``thinning`` = the steps): what the hand SGLD scan returns; ``... flag`` the
                  same with ``on_divergence="flag"`` (no divergence guard: what it costs).
  hb SGLD numpyro the same network written as a NumPyro model (``numpyro.sample`` per
                  weight array, a ``numpyro.plate`` over the rows, ``dist.Categorical``),
                  through ``hb.sample``'s NumPyro bridge: its paired ratio to ``hb SGLD`` is the
                  cost of the NumPyro route; ``hb SGLD numpyro jax-data`` the same with the
                  data already JAX arrays (no host-to-device copy or hash of NumPy arrays).

``--only "hb SGLD,hb SGLD numpyro"`` times only the contenders of those names (and the optax
floor).

Writes a JSON file (``--out``) with the machine, the load and every ratio.
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
from common import interleaved, machine_info, markdown_table, paired_ratio  # noqa: E402

import optax  # noqa: E402

import heatbath as hb  # noqa: E402
from heatbath.kernels import noise_weak  # noqa: E402

FULL = {"sizes": (784, 512, 512, 10), "rows": 60_000, "batch": 128}
SMOKE = {"sizes": (8, 4, 3), "rows": 200, "batch": 16}


def make_problem(sizes, rows, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, sizes[0])).astype(np.float32)
    teacher = rng.normal(size=(sizes[0], sizes[-1])).astype(np.float32) / math.sqrt(sizes[0])
    y = np.argmax(X @ teacher + rng.gumbel(size=(rows, sizes[-1])), axis=1).astype(np.int32)
    params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"W{i}"] = jnp.asarray(rng.normal(size=(a, b)).astype(np.float32) / math.sqrt(a))
        params[f"b{i}"] = jnp.zeros((b,), jnp.float32)
    return (X, y), params


def forward(params, X):
    n = len(params) // 2
    h = X
    for i in range(n):
        h = h @ params[f"W{i}"] + params[f"b{i}"]
        if i < n - 1:
            h = jax.nn.relu(h)
    return h


def logprior(params):
    return -0.5 * sum(jnp.sum(p * p) for p in jax.tree.leaves(params))


def loglik(params, batch):
    X, y = batch
    logits = forward(params, X)
    return jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def num_weights(params):
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))


def jax_normal(key, params):
    """What a hand-written scan usually calls: ``jax.random.normal`` per parameter array."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _signs_like(key, params):
    return noise_weak.rademacher().draw(key, params)


def hand_scans(data, params, num_steps, batch, h):
    """The hand-written floors: optax.sgd, SGLD with normals, SGLD with packed signs."""
    X, y = jnp.asarray(data[0]), jnp.asarray(data[1])
    N = X.shape[0]

    def neg_logpost(p, idx):
        return -(logprior(p) + (N / batch) * loglik(p, (X[idx], y[idx])))

    grad = jax.grad(neg_logpost)
    opt = optax.sgd(h)

    def optax_run(p, key):
        def body(c, k):
            p, s = c
            idx = jax.random.randint(k, (batch,), 0, N)
            u, s = opt.update(grad(p, idx), s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(body, (p, opt.init(p)), jax.random.split(key, num_steps))
        return p

    def sgld_run(noise_fn):
        def run(p, key):
            def body(p, k):
                k1, k2 = jax.random.split(k)
                idx = jax.random.randint(k1, (batch,), 0, N)
                g = grad(p, idx)
                xi = noise_fn(k2, p)
                return jax.tree.map(lambda a, b, c: a - h * b + math.sqrt(2 * h) * c, p, g, xi), None

            p, _ = jax.lax.scan(body, p, jax.random.split(key, num_steps))
            return p

        return run

    def sgld_moments_run(p, key):
        # The floor of keep="moments": the same SGLD scan with a running mean and sum of squared
        # deviations (Welford) of the draws in the carry.
        def body(c, k):
            p, mean, m2, n = c
            k1, k2 = jax.random.split(k)
            idx = jax.random.randint(k1, (batch,), 0, N)
            g = grad(p, idx)
            xi = normal(k2, p)
            p = jax.tree.map(lambda a, b, c: a - h * b + math.sqrt(2 * h) * c, p, g, xi)
            n = n + 1.0
            delta = jax.tree.map(lambda x, m: x - m, p, mean)
            mean = jax.tree.map(lambda m, dl: m + dl / n, mean, delta)
            m2 = jax.tree.map(lambda s, dl, x, m: s + dl * (x - m), m2, delta, p, mean)
            return (p, mean, m2, n), None

        zeros = jax.tree.map(jnp.zeros_like, p)
        (p, mean, m2, _), _ = jax.lax.scan(body, (p, zeros, zeros, jnp.zeros(())), jax.random.split(key, num_steps))
        return mean, m2

    normal = lambda k, p: hb.kernels.tree.normal_like(k, p)  # noqa: E731

    return {
        "optax": jax.jit(optax_run),
        "optax (A/A)": jax.jit(lambda p, k: optax_run(p, k)),
        "hand SGLD": jax.jit(sgld_run(normal)),
        "hand SGLD jax.random": jax.jit(sgld_run(jax_normal)),
        "hand SGLD moments": jax.jit(sgld_moments_run),
        "hand SGLD signs": jax.jit(sgld_run(_signs_like)),
    }


def numpyro_mlp(sizes):
    """The MLP as a user writes it in NumPyro: N(0, 1) on every weight array, a data plate."""
    import numpyro
    import numpyro.distributions as dist

    def model(X, y=None):
        p = {}
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            p[f"W{i}"] = numpyro.sample(f"W{i}", dist.Normal(0.0, 1.0).expand([a, b]).to_event(2))
            p[f"b{i}"] = numpyro.sample(f"b{i}", dist.Normal(0.0, 1.0).expand([b]).to_event(1))
        logits = forward(p, X)
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    return model


def hb_contenders(data, params, num_steps, batch, h):
    target = hb.models.from_logdensity(logprior, loglik, data, params=params)
    makers = {
        "hb SGLD": lambda: hb.samplers.sgld(h),
        "hb SGLD rademacher": lambda: hb.samplers.sgld(h, noise=noise_weak.rademacher()),
        "hb SGLD uniform8": lambda: hb.samplers.sgld(h, noise=noise_weak.uniform()),
        "hb SGHMC obabo": lambda: hb.samplers.sghmc(math.sqrt(h), 1.0),
        "hb SGHMC obabo fused": lambda: hb.samplers.sghmc(math.sqrt(h), 1.0, fuse_noise=True),
        "hb SGHMC fused rademacher": lambda: hb.samplers.sghmc(math.sqrt(h), 1.0, fuse_noise=True,
                                                               noise=noise_weak.rademacher()),
        "hb pSGLD": lambda: hb.samplers.psgld(h),
    }

    def call(make):
        # A new sampler object every call, as the README's inline pattern does.
        return lambda: hb.sample(target, make(), batch_size=batch, num_samples=num_steps, keep="moments",
                                 checks="off", progress_bar=False, init=params, seed=0, num_warmup=0).moments["mean"]

    out = {name: call(make) for name, make in makers.items()}
    # The last draw only (one draw per call, thinning = the steps): what the hand scan returns;
    # and the same without the divergence guard (on_divergence="flag"), what the guard costs.
    for name, mode in (("hb SGLD last draw", "stop"), ("hb SGLD last draw flag", "flag")):
        out[name] = (lambda mode=mode: hb.sample(
            target, hb.samplers.sgld(h), batch_size=batch, num_samples=1, thinning=num_steps, checks="off",
            progress_bar=False, init=params, seed=0, num_warmup=0, on_divergence=mode).samples)
    # The weak noise's like-for-like pair of "hand SGLD signs" (which returns its last draw).
    out["hb SGLD rademacher last draw"] = lambda: hb.sample(
        target, hb.samplers.sgld(h, noise=noise_weak.rademacher()), batch_size=batch, num_samples=1,
        thinning=num_steps, checks="off", progress_bar=False, init=params, seed=0, num_warmup=0).samples
    np_data = {"X": np.asarray(data[0]), "y": np.asarray(data[1])}
    sizes = [params["W0"].shape[0]] + [params[f"W{i}"].shape[1] for i in range(len(params) // 2)]
    model = numpyro_mlp(sizes)
    jax_data = {k: jnp.asarray(v) for k, v in np_data.items()}

    def numpyro_call(d):
        return lambda: hb.sample(model, hb.samplers.sgld(h), data=d, batch_size=batch, num_samples=num_steps,
                                 keep="moments", checks="off", progress_bar=False, init=params,
                                 seed=0, num_warmup=0).moments["mean"]

    out["hb SGLD numpyro"] = numpyro_call(np_data)
    out["hb SGLD numpyro jax-data"] = numpyro_call(jax_data)
    return out


SMOKE_CONTENDERS = ("optax", "hb SGHMC fused rademacher")


def run(config, num_steps, repeats, out_path=None, verbose=True, only=None):
    data, params = make_problem(config["sizes"], config["rows"])
    h = 1e-6 if config is FULL else 1e-4
    key = jax.random.key(0)
    hands = hand_scans(data, params, num_steps, config["batch"], h)
    contenders = {name: (lambda f=f: f(params, key)) for name, f in hands.items()}
    contenders.update(hb_contenders(data, params, num_steps, config["batch"], h))
    if config is SMOKE:  # one of each kind, at the least compile time
        contenders = {k: contenders[k] for k in SMOKE_CONTENDERS}
    if only:
        contenders = {k: v for k, v in contenders.items() if k == "optax" or k in only}
    t0 = time.perf_counter()
    timings = interleaved(contenders, repeats=repeats, warmup=1, verbose=verbose)
    rows, ratios = [], {}
    for name, t in timings.items():
        med, q25, q75 = paired_ratio(timings, name, "optax")
        ratios[name] = {"median_ratio_to_optax": med, "q25": q25, "q75": q75, "min_seconds": t.best,
                        "ms_per_step_min": 1e3 * t.best / num_steps}
        rows.append([name, f"{med:.2f}x", f"{q25:.2f}-{q75:.2f}", f"{1e3 * t.best / num_steps:.2f}"])
    pairs = [("hb SGLD", "hand SGLD"), ("hand SGLD", "hand SGLD jax.random"), ("hb SGLD", "hand SGLD moments"), ("hb SGLD last draw", "hand SGLD"),
             ("hb SGLD last draw flag", "hand SGLD"),
             ("hb SGLD rademacher", "hand SGLD signs"),
             ("hb SGLD rademacher last draw", "hand SGLD signs"), ("hb SGHMC obabo fused", "hb SGLD"),
             ("hb SGHMC obabo", "hb SGLD"), ("hb SGHMC fused rademacher", "hb SGLD rademacher"),
             ("optax (A/A)", "optax"), ("hb SGLD numpyro", "hb SGLD")]
    extra = {f"{a} / {b}": paired_ratio(timings, a, b)[0] for a, b in pairs if a in timings and b in timings}
    result = {"machine": machine_info(), "weights": num_weights(params), "rows": config["rows"],
              "batch": config["batch"], "steps_per_call": num_steps, "repeats": repeats, "ratios": ratios,
              "pairs": extra, "seconds": time.perf_counter() - t0}
    table = markdown_table(["contender", "median ratio to optax", "IQR", "ms/step (min)"], rows)
    if verbose:
        print(f"\n{num_weights(params):,} weights, N = {config['rows']:,}, batch {config['batch']}, "
              f"{num_steps} steps per call, {repeats} repeats\n")
        print(table)
        print("\n" + "\n".join(f"{k}: {v:.2f}x" for k, v in extra.items()))
    if out_path:
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--smoke", action="store_true", help="a tiny MLP and 5 steps: checks that everything runs")
    ap.add_argument("--out", default=None, help="write the results to this JSON file")
    ap.add_argument("--only", default=None, help="comma-separated contender names to time (and optax)")
    args = ap.parse_args(argv)
    only = args.only.split(",") if args.only else None
    if args.smoke:
        return run(SMOKE, 5, 1, args.out, verbose=False)
    return run(FULL, args.steps, args.repeats, args.out, only=only)


if __name__ == "__main__":
    main()
