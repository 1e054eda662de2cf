#!/usr/bin/env python
"""Issue 10: is a KSD-tuned step size better than the untuned defaults, in the same time?

    python benchmarks/tune_german_credit.py [--family sgld|sghmc|both] [--total SECONDS] [--seed 0]

German credit (N = 1000, 25 weights, batch 100, 4 chains in every run that is scored). For a
family and a total wall-clock budget T (default 180 s for SGLD, 240 s for SGHMC):

- tuned: ``hb.tune`` (successive halving by KSD, ``budget=T/2`` seconds, 4 chains), then the
  winner goes on from where its chains ended (``TuneResult.sample``) for the time left,
  T - (tuning's wall time); only this final run's draws are scored.
- each default (a fixed step size a user would try, and heatbath's automatic choice,
  ``step_size=None``): one run of at least the tuned pipeline's measured total time.

How a run gets a wall-clock budget (``timed_run``): a calibration run of 5,000 draws measures the
compile time a and the time per draw b; the scored run (a fresh sampler: it compiles again and,
for the automatic default, searches the MAP and tunes) gets n = (budget - a) / b draws, and its
own ``Result.wall_time`` (compile included) is what is reported. The calibration runs are not
charged to anyone (the tuned pipeline's final run is sized the same way); each default gets at
least the tuned pipeline's measured total and is rerun longer if it finishes early, so any
unfairness favours the defaults.

Distance to the gold standard (the bundled NUTS moments): per weight, the 2-Wasserstein
distance between the normal with the draws' mean and sd and the reference normal, in reference
sd units, sqrt(z^2 + (r - 1)^2) with z = (mean - ref_mean) / ref_sd and r = sd / ref_sd;
reported as its root mean square over the 25 weights (``w2``), with max |z| and the sd-ratio
range.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import heatbath as hb

GRIDS = {
    "sgld": {"step_size": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]},
    "sghmc": {"step_size": [1e-3, 3e-3, 1e-2], "friction": [10.0, 100.0]},
}
# Untuned defaults: values a user copies without looking at a gold standard. SGLD: 1e-3 (the
# step of BlackJAX's SGLD docstring example and MXNet's SGLD default learning rate; also 1/N
# here), 1e-5 (SGMCMCJax's README example), 1e-6 (a cautious small value). SGHMC: what a
# deep-learning user types, SGD with momentum 0.9 at learning rates 1e-3 (1/N), 1e-4 and 1e-6,
# converted (h = sqrt(lr), C = 0.1 / h; heatbath.samplers.hamiltonian.heavy_ball_parameters).
# Beside them, not counted as untuned: heatbath's automatic choice (None) and, for SGLD, the
# README's 1e-4, which was hand-picked by looking at this very gold standard.
DEFAULTS = {
    "sgld": [{"step_size": 1e-3}, {"step_size": 1e-5}, {"step_size": 1e-6}],
    "sghmc": [{"step_size": 0.0316, "friction": 3.16}, {"step_size": 0.01, "friction": 10.0},
              {"step_size": 0.001, "friction": 100.0}],
}
EXTRAS = {
    "sgld": [("hand-picked (README)", {"step_size": 1e-4}), ("automatic", {"step_size": None})],
    "sghmc": [("automatic", {"step_size": None, "friction": None})],
}
BATCH, CHAINS, THIN = 100, 4, 10  # THIN: steps per kept draw in the scored runs


def distance(ref, result) -> dict:
    cmp = ref.compare(result.samples)
    st = cmp["per_param"]["weights"]
    z, r = np.asarray(st["z"], float), np.asarray(st["sd_ratio"], float)
    return {"w2": float(np.sqrt(np.mean(z**2 + (r - 1) ** 2))), "max_abs_z": float(cmp["max_abs_z"]),
            "sd_ratio_min": float(cmp["sd_ratio_min"]), "sd_ratio_max": float(cmp["sd_ratio_max"])}


def _run(ref, make, n, seed):
    s = make()
    # A given step size: no warmup, as these rows were measured (an automatic one needs its own).
    return hb.sample(ref.model, s, data=ref.data, batch_size=BATCH, num_samples=n, thinning=THIN, num_chains=CHAINS,
                     seed=seed, progress_bar=False, checks="off", **({} if s.auto else {"num_warmup": 0}))


def timed_run(run, seconds, seed=0):
    """``run(n, seed)`` (n draws) sized for about ``seconds`` of its own wall time."""
    n0 = 5000
    cal = run(n0, seed + 100)
    b = max(cal.wall_time - cal.compile_time, 1e-3) / n0  # seconds per draw, compiled
    n = max(100, min(int((seconds - cal.compile_time) / b), 2**31 // (2 * THIN)))
    res = run(n, seed)
    for _ in range(3):  # finished well early (load dropped): rerun longer, never shorter
        if res.wall_time >= 0.9 * seconds:
            break
        n = min(int(n * seconds / res.wall_time) + 1, 2**31 // (2 * THIN))
        res = run(n, seed)
    return res


def maker(family, hyper):
    ctor = {"sgld": hb.samplers.sgld, "sghmc": hb.samplers.sghmc}[family]
    return lambda: ctor(**hyper)


def compare_family(family, total=180.0, seed=0, grid=None, defaults=None, verbose=True) -> dict:
    ref = hb.models.reference("german_credit")
    t0 = time.perf_counter()
    tr = hb.tune(ref.model, family, grid or GRIDS[family], data=ref.data, batch_size=BATCH, budget=total / 2,
                 num_chains=CHAINS, seed=seed)
    t_tune = time.perf_counter() - t0
    best = {k: v for k, v in tr.best.items() if k != "batch_size"}
    # the winner goes on from where its chains ended in the tuning
    final = timed_run(lambda n, s: tr.sample(n, thinning=THIN, seed=s, checks="off"), total - t_tune, seed)
    tuned_total = t_tune + final.wall_time
    rows = [{"run": f"tuned {best}", "kind": "tuned", "seconds": tuned_total, "steps": final.num_draws * THIN, **distance(ref, final)}]
    if verbose:
        print(tr)
        print(rows[-1])
    runs = [("untuned", h) for h in (defaults or DEFAULTS[family])] + (list(EXTRAS[family]) if defaults is None else [])
    for kind, hyper in runs:
        make = maker(family, hyper)
        res = timed_run(lambda n, s: _run(ref, make, n, s), tuned_total, seed)
        name = str(hyper)
        if hyper["step_size"] is None:
            name = f"h={res.tuning['step_size']:.3g}" + (
                f", C={res.tuning['friction']:.3g}" if "friction" in res.tuning else "")
        rows.append({"run": f"{kind} {name}", "kind": kind, "seconds": res.wall_time, "steps": res.num_draws * THIN,
                     **distance(ref, res)})
        if verbose:
            print(rows[-1])
    return {"family": family, "tune": tr, "tune_seconds": t_tune, "rows": rows}


def compare_family_grads(family, grads=4e8, seed=0, grid=None, defaults=None, ksd_draws=2000, verbose=True) -> dict:
    """The same comparison at an equal compute budget instead of equal wall time (immune to the
    machine's load): ``grads`` per-datum likelihood-gradient evaluations, all chains. The tuned
    pipeline is charged its samplers' evaluations and its scoring's (each KSD score: at most
    ``ksd_draws`` draws times N full-data gradients); the winner goes on for what is left. Each
    default runs ``grads / (batch x chains x grads per step)`` steps per chain (the automatic
    default also pays its MAP search and pilot, counted in its ``grad_evals``)."""
    ref = hb.models.reference("german_credit")
    N = int(ref.data["y"].shape[0]) if "y" in ref.data else 1000
    t0 = time.perf_counter()
    tr = hb.tune(ref.model, family, grid or GRIDS[family], data=ref.data, batch_size=BATCH, budget_grads=grads / 2,
                 num_chains=CHAINS, seed=seed, ksd_draws=ksd_draws)
    t_tune = time.perf_counter() - t0
    scoring = sum(r["rounds"] for r in tr.table) * ksd_draws * N
    spent = tr.grad_evals + scoring
    gps = tr.sampler.grads_per_step * tr.sampler.steps_per_draw
    final = tr.sample(max(1, int((grads - spent) / (BATCH * CHAINS * gps * THIN))), thinning=THIN, seed=seed, checks="off")
    total = spent + final.grad_evals * CHAINS
    rows = [{"run": f"tuned {({k: v for k, v in tr.best.items() if k != 'batch_size'})}", "kind": "tuned",
             "seconds": t_tune + final.wall_time, "steps": final.num_draws * THIN, "grads": total, **distance(ref, final)}]
    if verbose:
        print(tr)
        print(rows[-1])
    runs = [("untuned", h) for h in (defaults or DEFAULTS[family])] + (list(EXTRAS[family]) if defaults is None else [])
    for kind, hyper in runs:
        s = maker(family, hyper)()
        n = max(1, int(grads / (BATCH * CHAINS * s.grads_per_step * s.steps_per_draw * THIN)))
        res = _run(ref, lambda: s, n, seed)
        name = str(hyper)
        if hyper["step_size"] is None:
            name = f"h={res.tuning['step_size']:.3g}" + (
                f", C={res.tuning['friction']:.3g}" if "friction" in res.tuning else "")
        rows.append({"run": f"{kind} {name}", "kind": kind, "seconds": res.wall_time, "steps": res.num_draws * THIN,
                     "grads": res.grad_evals * CHAINS, **distance(ref, res)})
        if verbose:
            print(rows[-1])
    return {"family": family, "tune": tr, "tune_seconds": t_tune, "rows": rows, "budget": f"{grads:.3g} gradient evaluations"}


def markdown(out) -> str:
    budget = out.get("budget", "equal wall time")
    lines = [repr(out["tune"]), "", f"{out['family']}, budget {budget}: tuning {out['tune_seconds']:.0f} s, then the winner's run",
             "| run | seconds | steps/chain | gradient evals (all chains) | W2 (rms, ref sd) | max abs z | sd ratio |",
             "|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['run']} | {r['seconds']:.0f} | {r['steps']} | {r.get('grads', float('nan')):.3g} | {r['w2']:.3f} | "
                     f"{r['max_abs_z']:.3f} | [{r['sd_ratio_min']:.2f}, {r['sd_ratio_max']:.2f}] |")
    tuned = out["rows"][0]["w2"]
    best = min((r for r in out["rows"] if r.get("kind") == "untuned"), key=lambda r: r["w2"])
    lines += ["", f"tuned W2 {tuned:.3f} vs the best untuned default ({best['run']}) {best['w2']:.3f}: "
              + ("smaller" if tuned < best["w2"] else "NOT smaller")]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="both", choices=["sgld", "sghmc", "both"])
    p.add_argument("--total", type=float, default=None, help="seconds (default: 180 for sgld, 240 for sghmc)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grads", type=float, default=None,
                   help="equal compute instead of equal wall time: per-datum gradient evaluations, all chains (e.g. 4e8)")
    args = p.parse_args(argv)
    for fam in (["sgld", "sghmc"] if args.family == "both" else [args.family]):
        if args.grads:
            out = compare_family_grads(fam, args.grads, args.seed)
        else:
            out = compare_family(fam, args.total or {"sgld": 180.0, "sghmc": 240.0}[fam], args.seed)
        print(markdown(out))


if __name__ == "__main__":
    main()
