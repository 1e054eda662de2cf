"""Annealed Langevin dynamics as a global optimizer, against SGD and Adam from the same starts.

Two multimodal problems in 10 dimensions, 100 starts each (the same starts for every method):

- a tilted double well, U(x) = sum_i (x_i^2 - 1)^2 + 0.5 x_i: 2^10 = 1024 minima, the
  global one at x_i = -1.06 for all i; success = every coordinate in the global well.
- Rastrigin, U(x) = 10 d + sum_i x_i^2 - 10 cos(2 pi x_i) on [-5.12, 5.12]^10: ~10^10 minima,
  the global one at 0; success = every coordinate in the central basin (|x_i| < 0.5).

Methods: SGD (``sgld`` at T = 0), Adam (optax, two learning rates), annealed SGLD
(``hb.optim.anneal(sgld(h), polynomial_cooling(T0, 0.9 K))``, then 10% of the steps at T = 0)
and the annealed Adam-preconditioned Langevin (``hb.samplers.langevin(optax.adam(...))``
with the same cooling): the temperature dial turned from T0 down to 0.

Prints a Markdown table (the README's) and saves a figure: the annealing trace of one run
(``hb.optimize`` returns it) and the per-coordinate success of every method.

    /work/venv/bin/python examples/annealing_rastrigin.py [--out annealing_rastrigin.png] [--quick]
"""

from __future__ import annotations

import argparse
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import heatbath as hb
from heatbath.kernels import schedules as S

D = 10
NUM_STARTS = 100


def double_well():
    def logp(x):
        return -jnp.sum((x**2 - 1.0) ** 2 + 0.5 * x)

    def success(x):  # (starts, D) -> per-coordinate success
        return x < 0.0

    return logp, success, (-2.0, 2.0)


def rastrigin():
    def logp(x):
        return -(10.0 * D + jnp.sum(x**2 - 10.0 * jnp.cos(2 * jnp.pi * x)))

    def success(x):
        return np.abs(x) < 0.5

    return logp, success, (-5.12, 5.12)


def target_of(logp):
    return hb.models.from_logdensity(logp, lambda x, b: 0.0 * jnp.sum(b), jnp.zeros((1, 1)), params=jnp.zeros(D))


def final_positions(target, sampler, num_steps, starts, seed=1):
    """Run every start as one chain (vmap); return the final positions (starts, D)."""
    res = hb.sample(target, sampler, num_samples=1, num_warmup=num_steps - 1, num_chains=starts.shape[0],
                    init=starts, seed=seed, progress_bar=False)
    return np.asarray(res.final_state.position)


def methods(h, T0, K):
    cool = S.polynomial_cooling(T0, int(0.9 * K))  # T0 -> 0 over 90% of the run, then T = 0
    return {
        "SGD": hb.samplers.sgld(h, temperature=0.0),
        "Adam (lr 0.01)": hb.optim.from_optax(optax.adam(0.01)),
        "Adam (lr 0.1)": hb.optim.from_optax(optax.adam(0.1)),
        "annealed SGLD": hb.optim.anneal(hb.samplers.sgld(h), cool),
        "annealed Adam-Langevin (lr 0.01)": hb.optim.anneal(hb.samplers.langevin(optax.adam(0.01)), cool),
    }


def run(quick: bool):
    problems = {
        "10-D double well": (double_well(), dict(h=0.04, T0=0.5, K=5000)),
        "10-D Rastrigin": (rastrigin(), dict(h=0.004, T0=5.0, K=5000 if quick else 20000)),
    }
    rows, per_coord = [], {}
    for pname, ((logp, success, (lo, hi)), cfg) in problems.items():
        target = target_of(logp)
        starts = jax.random.uniform(jax.random.key(0), (NUM_STARTS, D), minval=lo, maxval=hi)
        for mname, sampler in methods(cfg["h"], cfg["T0"], cfg["K"]).items():
            t0 = time.perf_counter()
            x = final_positions(target, sampler, cfg["K"], starts)
            ok = success(x)
            u = -np.asarray(jax.vmap(logp)(jnp.asarray(x)))
            rows.append((pname, mname, cfg["K"], cfg["T0"], ok.all(axis=1).mean(), ok.mean(), np.median(u),
                         time.perf_counter() - t0))
            per_coord[(pname, mname)] = ok.mean()
            print(f"  {pname:18s} {mname:34s} done in {rows[-1][-1]:.1f}s", flush=True)
    return rows, per_coord


def trace_example(out_png, per_coord):
    """One annealed run through hb.optimize, with its trace, and the summary bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logp, _, _ = double_well()
    K = 5000
    res = hb.optimize(target_of(logp), hb.optim.anneal(hb.samplers.sgld(0.04), S.polynomial_cooling(0.5, int(0.9 * K))),
                      num_steps=K, init=jnp.ones(D), seed=3, trace_every=25)
    steps = np.arange(1, len(res.trace["lp"]) + 1) * 25
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, -res.trace["lp"], lw=1)
    x_star = min(np.roots([4.0, 0.0, -4.0, 0.5]).real)  # U'(x) = 4x^3 - 4x + 0.5 = 0
    axes[0].axhline(D * ((x_star**2 - 1) ** 2 + 0.5 * x_star), color="k", ls=":", label="global minimum")
    axes[0].set(xlabel="step", ylabel="U(x)", title="annealed SGLD from the worst minimum (x = +1)")
    axes[0].legend()
    axes[1].plot(steps, res.trace["temperature"])
    axes[1].set(xlabel="step", ylabel="T", title="temperature (polynomial cooling, then T = 0)")
    names = list(dict.fromkeys(m for _, m in per_coord))
    probs = list(dict.fromkeys(p for p, _ in per_coord))
    width = 0.8 / len(probs)
    for i, p in enumerate(probs):
        axes[2].bar(np.arange(len(names)) + i * width, [per_coord[(p, m)] for m in names], width, label=p)
    axes[2].set_xticks(np.arange(len(names)) + width / 2, [textwrap.fill(n, 12) for n in names], fontsize=7)
    axes[2].set(ylabel="share of coordinates in the global basin", title="per-coordinate success, 100 starts")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    print(f"final x of the traced run: {np.round(np.asarray(res.params), 3)}; figure: {out_png}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="annealing_rastrigin.png")
    parser.add_argument("--quick", action="store_true", help="fewer Rastrigin steps")
    args = parser.parse_args()
    rows, per_coord = run(args.quick)
    print()
    print("| problem | method | steps | global minimum found (share of 100 starts) | coordinates in the global basin | median final U |")
    print("|---|---|---|---|---|---|")
    for pname, mname, K, T0, share, coord, med, _ in rows:
        name = f"{mname}, T0 = {T0:g}" if mname.startswith("annealed") else mname
        print(f"| {pname} | {name} | {K} | {share:.2f} | {coord:.3f} | {med:.2f} |")
    print()
    trace_example(args.out, per_coord)


if __name__ == "__main__":
    main()
