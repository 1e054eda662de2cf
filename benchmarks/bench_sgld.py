"""SGLD on Bayesian logistic regression: heatbath against the floor and the natural route.

    /work/venv/bin/python benchmarks/bench_sgld.py                 # the full benchmark
    /work/venv/bin/python benchmarks/bench_sgld.py --repeats 3     # quicker, noisier

Model: w ~ N(0, I_d), y_i ~ Bernoulli(sigmoid(x_i . w)), N = 50,000 rows, d = 50; SGLD
(Welling & Teh 2011) with n = 500 rows per step drawn uniformly with replacement,

    w <- w + h [grad log p(w) + (N/n) sum_{i in B} grad log p(y_i | x_i, w)] + sqrt(2 h) xi,

5,000 steps, every step kept. Contenders, timed interleaved in one process (min over the
repeats, after compiling everything):

  floor       a bare hand-written jitted lax.scan: randint indices, gather the rows,
              jax.grad of the hand-written log posterior, the update; returns the draws.
  hb loop     heatbath's compiled chunk alone (heatbath.drivers.loop.make_step/make_chunk, what
              hb.sample runs on the device), on the from_logdensity target.
  hb.sample   the public call, (i) on the from_logdensity target, (ii) on the NumPyro model
              through from_numpyro; progress_bar=False. Two numbers: "run" is
              Result.wall_time - Result.compile_time (host-side checks, init, the device
              loop and the copy of the draws to the host, without compilation); "call" is
              the whole call, compilation included, with everything else already warm.
  natural     the route a user takes today: NumPyro's initialize_model potential (the model
              with plate(..., subsample_size=n), the plate's indices substituted, dynamic
              args) and blackjax.sgld in a jitted lax.scan with the same index sampling.
  blackjax    blackjax.sgld on the hand-written log density (blackjax.sgmcmc.gradients).

Then 64 chains: hb.sample(num_chains=64) against jax.vmap of the BlackJAX scans and of the
floor, in draws per second. ``--profile`` adds prototypes of the heatbath step with one
piece removed at a time, to see where time above the floor goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

import numpy as np

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved, machine_info, markdown_table, ops_per_step, paired_ratio  # noqa: E402

import blackjax  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.handlers import substitute  # noqa: E402
from numpyro.infer.util import initialize_model  # noqa: E402

import heatbath as hb  # noqa: E402
from heatbath.drivers import batching as hb_batching  # noqa: E402
from heatbath.drivers import loop as hb_loop  # noqa: E402


# ----------------------------------------------------------------------------------------
# The problem
# ----------------------------------------------------------------------------------------
def make_data(n_rows, dim, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, dim)).astype(np.float32)
    w_true = rng.normal(size=dim).astype(np.float32) / np.sqrt(dim)
    y = (rng.uniform(size=n_rows) < 1 / (1 + np.exp(-X @ w_true))).astype(np.float32)
    return X, y


def logprior(w):
    return -0.5 * jnp.sum(w**2)


def loglik(w, batch):
    X, y = batch
    z = X @ w
    return jnp.sum(y * z - jax.nn.softplus(z))


def loglik_row(w, row):  # BlackJAX's convention: one row, vmapped by its estimator
    x, y = row
    z = x @ w
    return y * z - jax.nn.softplus(z)


def numpyro_model(X, y):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("obs", dist.Bernoulli(logits=X @ w), obs=y)


def subsampled_model(X, y, batch_size=None):
    """The model as NumPyro users write it for minibatches: a plate with subsample_size."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0], subsample_size=batch_size) as idx:
        numpyro.sample("obs", dist.Bernoulli(logits=X[idx] @ w), obs=y[idx])


# ----------------------------------------------------------------------------------------
# Contenders
# ----------------------------------------------------------------------------------------
def build_floor(n_rows, batch, steps, h):
    """The bare hand-written scan: the floor."""
    c = math.sqrt(2 * h)

    def logpost(w, Xb, yb):
        return logprior(w) + (n_rows / batch) * loglik(w, (Xb, yb))

    grad = jax.grad(logpost)

    def run(w0, key, X, y):
        def body(carry, _):
            w, key = carry
            key, kb, kn = jax.random.split(key, 3)
            idx = jax.random.randint(kb, (batch,), 0, n_rows)
            w = w + h * grad(w, X[idx], y[idx]) + c * jax.random.normal(kn, w.shape)
            return (w, key), w

        return jax.lax.scan(body, (w0, key), None, length=steps)[1]

    return run


def build_blackjax_scan(grad_estimator, n_rows, batch, steps, h, minibatch_of):
    """blackjax.sgld in a lax.scan; ``minibatch_of(idx, X, y)`` is what the estimator eats."""

    def run(p0, key, X, y):
        sgld = blackjax.sgld(grad_estimator(X, y))

        def body(carry, _):
            p, key = carry
            key, kb, kn = jax.random.split(key, 3)
            idx = jax.random.randint(kb, (batch,), 0, n_rows)
            p = sgld.step(kn, p, minibatch_of(idx, X, y), h)
            return (p, key), p

        return jax.lax.scan(body, (p0, key), None, length=steps)[1]

    return run


def build_natural(X, y, batch, steps, h):
    """NumPyro's initialize_model potential (dynamic args, substituted plate) + blackjax.sgld."""
    n_rows = X.shape[0]

    def batched_model(X, y, idx):
        with substitute(data={"data": idx}):
            subsampled_model(X, y, batch_size=idx.shape[0])

    idx0 = jnp.arange(batch)
    init_params, potential_fn_gen, _, _ = initialize_model(
        jax.random.key(0), batched_model, model_args=(X, y, idx0), dynamic_args=True
    )

    def grad_estimator(X, y):
        def g(params, idx):
            return jax.grad(lambda p: -potential_fn_gen(X, y, idx)(p))(params)

        return g

    run = build_blackjax_scan(grad_estimator, n_rows, batch, steps, h, lambda idx, X, y: idx)
    return run, init_params.z


def build_blackjax_plain(n_rows, batch, steps, h):
    from blackjax.sgmcmc.gradients import grad_estimator as bj_grad

    def grad_estimator(X, y):
        del X, y
        return bj_grad(logprior, loglik_row, n_rows)

    return build_blackjax_scan(grad_estimator, n_rows, batch, steps, h, lambda idx, X, y: (X[idx], y[idx]))



def aot(fn, *args):
    """Compile ``fn`` for ``args`` ahead of time; a call running it, with ``.compiled``."""
    compiled = jax.jit(fn).lower(*args).compile()

    def call():
        return compiled(*args)

    call.compiled = compiled
    return call


def compiled_hb_loop(target, sampler, batch, steps, num_chains=1, seed=0, record="constrain",
                     impl=None):
    """What hb.sample runs on the device: one compiled chunk, and a call running it."""
    estimator = sampler.gradient.build(target.terms, target.num_data)
    batcher = hb_batching.uniform().build(batch, target.num_data, steps)
    step = hb_loop.make_step(sampler, estimator, batcher, target)
    rec = target.constrain_fn if record == "constrain" else None
    chunk = hb_loop.make_chunk(step, steps, 1, rec, None, True)
    master = jax.random.key(seed, impl=impl)
    keys = jax.vmap(lambda i: jax.random.fold_in(master, i))(jnp.arange(num_chains))
    positions = jax.vmap(target.init_params)(keys)
    states = jax.vmap(sampler.init)(positions, keys)
    shared = estimator.init(jax.tree.map(lambda x: x[0], positions), target.data)
    carry = (states, (), keys, jnp.ones((num_chains,), bool), ())
    return aot(chunk, carry, (), shared, target.data, jnp.int32(0))


def hb_sample_measure(model, sampler, data, batch, steps, num_chains=1):
    def run():
        t0 = time.perf_counter()
        r = hb.sample(model, sampler, data=data, batch_size=batch, num_samples=steps, num_chains=num_chains,
                      seed=0, progress_bar=False, num_warmup=0)
        total = time.perf_counter() - t0
        return {"time": total, "run": r.wall_time - r.compile_time, "compile": r.compile_time}

    return run


# ----------------------------------------------------------------------------------------
# Profiling prototypes (copies of heatbath's step with one piece changed; not the package)
# ----------------------------------------------------------------------------------------
def profile_variants(target, h, batch, steps, X, y):
    """Variants of the compiled hb loop, each removing or changing one piece of the step."""
    from heatbath.kernels import tree
    from heatbath.samplers.base import Info
    from heatbath.samplers.overdamped import SGLDState

    n_rows = target.num_data
    base = hb.samplers.sgld(h)
    c = math.sqrt(2 * h)

    def sampler_with(stats=True, split_noise=True, value=True):
        def step(key, state, batch_, grad_fn):
            if value:
                lp, g = grad_fn(state.position, batch_)
            else:  # the estimator's gradient only (jax.grad, no value)
                lp, g = jnp.zeros(()), jax.grad(lambda p: grad_fn(p, batch_)[0])(state.position)
            if split_noise:
                xi = tree.normal_like(key, state.position)
            else:  # a one-leaf position: its key as is, no split
                xi = jax.random.normal(key, jnp.shape(state.position), jnp.result_type(state.position))
            new = jax.tree.map(lambda p, gl, n: p + h * gl + c * n, state.position, g, xi)
            z = jnp.zeros(())
            if stats:
                info = Info(z + h, z + 1.0, tree.norm(g), lp, jnp.logical_not(tree.all_finite(new)))
            else:
                info = Info(z + h, z + 1.0, z, lp, jnp.zeros((), bool))
            return SGLDState(new, state.step + 1), info

        return base._replace(step=step)

    v = {}
    v["proto: copy of the step (control)"] = compiled_hb_loop(target, sampler_with(), batch, steps)
    v["proto: no grad_norm / finite check"] = compiled_hb_loop(target, sampler_with(stats=False), batch, steps)
    v["proto: noise key not split"] = compiled_hb_loop(target, sampler_with(split_noise=False), batch, steps)
    v["proto: no record of draws"] = compiled_hb_loop(target, base, batch, steps, record=None)
    v["proto: all three"] = compiled_hb_loop(target, sampler_with(stats=False, split_noise=False), batch, steps,
                                             record=None)
    v["proto: hb loop, rbg keys"] = compiled_hb_loop(target, base, batch, steps, impl="rbg")

    fl = build_floor(n_rows, batch, steps, h)
    v["proto: floor under vmap (1 chain)"] = aot(jax.vmap(fl, in_axes=(0, 0, None, None)), jnp.zeros((1, X.shape[1])),
                                                 jax.random.split(jax.random.key(0), 1), X, y)
    v["proto: floor, rbg keys"] = aot(fl, jnp.zeros(X.shape[1]), jax.random.key(0, impl="rbg"), X, y)
    return v


# ----------------------------------------------------------------------------------------
def _ratio_rows(timings, ref, unit=1e3, ops=None):
    """Table rows: name, min, x ref (mins), x ref (median paired ratio [IQR]), x ref (CPU), ops/step, spread."""
    fb, fc = timings[ref].best, timings[ref].best_cpu
    rows = []
    for name, t in timings.items():
        med, q25, q75 = paired_ratio(timings, name, ref)
        rows.append([name, f"{t.best * unit:.1f}", f"{t.best / fb:.3f}", f"{med:.3f} [{q25:.2f}, {q75:.2f}]",
                     f"{t.best_cpu / fc:.3f}", "" if ops is None or ops.get(name) is None else str(ops[name]),
                     t.spread])
        if "run" in t.extra:
            run = min(t.extra["run"])
            med = float(np.median(np.asarray(t.extra["run"]) / np.asarray(timings[ref].times)))
            rows.append([f"  {name}: run = wall_time - compile_time", f"{run * unit:.1f}", f"{run / fb:.3f}",
                         f"{med:.3f}", "", "",
                         f"compile {min(t.extra['compile']):.2f}-{max(t.extra['compile']):.2f} s"])
    return rows


_HEADER = ["contender", "ms (min)", "x floor (ratio of mins)", "x floor (median paired ratio [IQR])",
           "x floor (CPU time, mins)", "XLA ops/step", "spread (median/max over min)"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--step-size", type=float, default=2e-6)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--chain-steps", type=int, default=1000, help="steps per chain in the many-chains part")
    ap.add_argument("--chain-repeats", type=int, default=None, help="repeats of the many-chains part")
    ap.add_argument("--skip-single", action="store_true")
    ap.add_argument("--skip-chains", action="store_true")
    ap.add_argument("--profile", action="store_true", help="time prototypes of the step with one piece removed")
    ap.add_argument("--profile-steps", type=int, default=1000, help="steps per call in the profile part")
    ap.add_argument("--profile-repeats", type=int, default=30)
    args = ap.parse_args(argv)

    N, D, B, S, h = args.rows, args.dim, args.batch, args.steps, args.step_size
    X, y = make_data(N, D)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    key = jax.random.key(0)
    w0 = jnp.zeros(D)
    info = machine_info()
    print(f"# SGLD logistic regression: N={N}, d={D}, batch={B}, steps={S}, h={h}")
    for k, v in info.items():
        print(f"#   {k}: {v}")

    target = hb.models.from_logdensity(logprior, loglik, (X, y), params=jnp.zeros(D))
    # Every contender reads the same device buffers (a copy would start cold in the cache).
    target = dataclasses.replace(target, data=(Xj, yj))
    sampler = hb.samplers.sgld(h)
    out = {}

    if not args.skip_single:
        natural_fn, _ = build_natural(Xj, yj, B, S, h)
        compiled = {
            "floor": aot(build_floor(N, B, S, h), w0, key, Xj, yj),
            "hb loop": compiled_hb_loop(target, sampler, B, S),
            "natural (numpyro+blackjax)": aot(natural_fn, {"w": w0}, key, Xj, yj),
            "blackjax (hand-written)": aot(build_blackjax_plain(N, B, S, h), w0, key, Xj, yj),
        }
        measure = {
            "hb.sample (logdensity)": hb_sample_measure(target, sampler, None, B, S),
            "hb.sample (numpyro)": hb_sample_measure(numpyro_model, sampler, {"X": X, "y": y}, B, S),
            "hb.sample (numpyro, JAX arrays)": hb_sample_measure(numpyro_model, sampler, {"X": Xj, "y": yj}, B, S),
        }
        ops = {name: ops_per_step(c.compiled) for name, c in compiled.items()}

        # Sanity: the contenders sample the same posterior (the means of the second halves agree
        # within a few posterior sds; different random streams, so not exactly).
        d_floor = np.asarray(compiled["floor"]())
        d_nat = np.asarray(compiled["natural (numpyro+blackjax)"]()["w"])
        r = hb.sample(numpyro_model, sampler, data={"X": X, "y": y}, batch_size=B, num_samples=S,
                      progress_bar=False, num_warmup=0)
        half = S // 2
        sd = d_floor[half:].std(0).max()
        for name, d in [("natural", d_nat), ("hb.sample (numpyro)", r.samples["w"][0])]:
            diff = np.abs(d[half:].mean(0) - d_floor[half:].mean(0)).max()
            print(f"# check: max_j |mean_j({name}) - mean_j(floor)| = {diff:.4f} (posterior sd <= {sd:.4f})")

        # Two groups: the compiled loops alone, then the public calls (each compiles for
        # seconds, which would disturb the loops' timings if they were interleaved with them).
        print(f"\n## one chain x {S} steps, compiled loops: {args.repeats} interleaved repeats")
        timings = interleaved(compiled, repeats=args.repeats)
        single = markdown_table(_HEADER, _ratio_rows(timings, "floor", ops=ops))
        print(single)
        print(f"\n## one chain x {S} steps, public calls: {args.repeats} interleaved repeats")
        calls = {"floor": compiled["floor"]}
        calls.update(measure)
        timings = interleaved(calls, repeats=args.repeats, measure=measure)
        public = markdown_table(_HEADER, _ratio_rows(timings, "floor"))
        print(public)
        out["single"] = single + "\n\n" + public

    if args.profile:
        PS = args.profile_steps
        print(f"\n## profile: one chain x {PS} steps, {args.profile_repeats} interleaved repeats, min")
        prof = {
            "floor": aot(build_floor(N, B, PS, h), w0, key, Xj, yj),
            "floor again (A/A control)": aot(build_floor(N, B, PS, h), w0, key, Xj, yj),
            "hb loop": compiled_hb_loop(target, sampler, B, PS),
        }
        prof.update(profile_variants(target, h, B, PS, Xj, yj))
        ops = {name: ops_per_step(c.compiled) for name, c in prof.items()}
        tp = interleaved(prof, repeats=args.profile_repeats, verbose=False)
        table = markdown_table(
            _HEADER,
            _ratio_rows(tp, "floor", ops=ops),
        )
        print(table)
        out["profile"] = table

    if not args.skip_chains:
        C, SC = args.chains, args.chain_steps
        reps = args.chain_repeats or args.repeats
        print(f"\n## {C} chains x {SC} steps: {reps} interleaved repeats, min")
        keys = jax.random.split(key, C)
        w0s = jnp.zeros((C, D))
        vm = lambda f: jax.vmap(f, in_axes=(0, 0, None, None))  # noqa: E731
        nat_c, _ = build_natural(Xj, yj, B, SC, h)
        compiled = {
            "floor (vmap)": aot(vm(build_floor(N, B, SC, h)), w0s, keys, Xj, yj),
            "hb loop": compiled_hb_loop(target, sampler, B, SC, num_chains=C),
            "natural (vmap)": aot(vm(nat_c), {"w": w0s}, keys, Xj, yj),
            "blackjax (vmap)": aot(vm(build_blackjax_plain(N, B, SC, h)), w0s, keys, Xj, yj),
        }
        measure = {"hb.sample (logdensity)": hb_sample_measure(target, sampler, None, B, SC, num_chains=C)}
        ops = {name: ops_per_step(c.compiled) for name, c in compiled.items()}
        draws = C * SC
        header = ["contender", "s (min)", "draws/s (min time)", "x floor time (mins)", "speed vs blackjax (mins)",
                  "speed vs blackjax (median paired [IQR])", "XLA ops/step", "spread"]
        tables = []
        # As above: the compiled loops, then the public call against BlackJAX in its own group.
        for group in (compiled, {"blackjax (vmap)": compiled["blackjax (vmap)"], **measure}):
            tc = interleaved(group, repeats=reps, measure=measure)
            bj = tc["blackjax (vmap)"].best
            fb = tc["floor (vmap)"].best if "floor (vmap)" in tc else float("nan")
            rows = []
            for name, t in tc.items():
                med, q25, q75 = paired_ratio(tc, "blackjax (vmap)", name)
                rows.append([name, f"{t.best:.3f}", f"{draws / t.best:,.0f}", f"{t.best / fb:.3f}",
                             f"{bj / t.best:.3f}", f"{med:.3f} [{q25:.2f}, {q75:.2f}]",
                             "" if ops.get(name) is None else str(ops[name]), t.spread])
                if "run" in t.extra:
                    run = min(t.extra["run"])
                    med = float(np.median(np.asarray(tc["blackjax (vmap)"].times) / np.asarray(t.extra["run"])))
                    rows.append([f"  {name}: run = wall_time - compile_time", f"{run:.3f}", f"{draws / run:,.0f}",
                                 "", f"{bj / run:.3f}", f"{med:.3f}", "",
                                 f"compile {min(t.extra['compile']):.2f}-{max(t.extra['compile']):.2f} s"])
            tables.append(markdown_table(header, rows))
            print(tables[-1])
        many = "\n\n".join(tables)
        out["many"] = many

    print("\n" + ", ".join(f"{k}: {v}" for k, v in info.items()))
    return out


if __name__ == "__main__":
    main()
