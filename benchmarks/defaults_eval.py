#!/usr/bin/env python
"""Issue 18's table: every model x sampler run with defaults only, against NUTS.

    python benchmarks/defaults_eval.py [--only a,b] [--samplers sgld,psgld,sghmc] [--num-samples 10000]
                                       [--out benchmarks/defaults_eval.md]

Each run is exactly what a new user writes:
``hb.sample(model, hb.samplers.sgld(), data=..., batch_size=N // 10, num_samples=S, num_chains=4)``
(full batches for N < 1,000, where minibatches save nothing); nothing else is set. Each run is compared with a reference: the
bundled gold standards (``hb.models.reference``) or ``hb.reference`` (BlackJAX NUTS in
float64, 4 x 5,000 draws after 2,000 warmup, R-hat and ESS checked, cached on disk) for the
models of ``benchmarks/defaults_models.py``. Verdict: ``meets`` when max |mean - ref| / ref_sd <= 0.2 and
every sd ratio is in [0.8, 1.25]; otherwise ``warned`` when heatbath warned (any
RuntimeWarning: self-diagnosis, divergence, init), else ``SILENT`` (the defect this issue is
about). Also recorded: divergence at draw 0, gradient evaluations (data passes), time.
The bundled models that need float64 run in a subprocess with ``JAX_ENABLE_X64=1``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BUNDLED = ["german_credit", "eight_schools_noncentered", "eight_schools", "brownian_motion", "arK", "gp_pois_regr",
           "low_dim_gauss_mix", "diamonds", "sblri"]
Z_MAX, LO, HI = 0.2, 0.8, 1.25


def cache_dir() -> Path:
    root = Path(os.environ.get("HEATBATH_CACHE", Path.home() / ".cache" / "heatbath"))
    d = root / "defaults_eval"
    d.mkdir(parents=True, exist_ok=True)
    return d


@functools.lru_cache(maxsize=None)
def _cached_reference(name):
    from defaults_models import MODELS

    return _reference(name, *MODELS[name])


def nuts_reference(name, model, data, sites):
    """:func:`_reference` for a model of ``defaults_models`` (once per process)."""
    return _cached_reference(name)


def _reference(name, model, data, sites):
    """Mean and sd per compared site from ``hb.reference`` (BlackJAX NUTS in float64, 4 x 5,000 draws,
    R-hat and ESS checked; cached on disk by a digest of model, data and settings)."""
    import heatbath as hb

    try:
        ref, checked = hb.reference(model, data=data, sites=sites, keep_draws=False), True
    except hb.diagnostics.ReferenceCheckError as err:  # NUTS itself struggled (e.g. divergences)
        print(f"{name}: {err}", flush=True)
        ref, checked = err.reference, False
    out = {k: {"mean": np.asarray(v["mean"]), "sd": np.asarray(v["sd"])} for k, v in ref.reference.items()}
    return out, checked


def compare(samples, ref):
    zs, rs = [], []
    for k, r in ref.items():
        x = np.asarray(samples[k], np.float64)
        x = x.reshape((-1,) + x.shape[2:])
        sd = np.asarray(r["sd"], np.float64)
        ok = sd > 0
        zs.append(np.ravel((np.abs(x.mean(0) - r["mean"]) / np.where(ok, sd, 1.0))[ok]))
        rs.append(np.ravel((x.std(0, ddof=1) / np.where(ok, sd, 1.0))[ok]))
    z, r = np.concatenate(zs), np.concatenate(rs)
    return float(z.max()), float(r.min()), float(r.max())


def run_one(name, sampler_name, num_samples):
    import heatbath as hb
    from defaults_models import MODELS

    if name in BUNDLED:
        ref_obj = hb.models.reference(name)
        model, data = ref_obj.model, (ref_obj.data_as(np.float64) if ref_obj.requires_x64 else ref_obj.data)
        ref = {k: {"mean": v["mean"], "sd": v["sd"]} for k, v in ref_obj.reference.items()}
        n, checked = ref_obj.num_data, True
    else:
        model, data, sites = MODELS[name]
        ref, checked = nuts_reference(name, model, data, sites)
        n = next(np.shape(v)[0] for v in data.values() if np.ndim(v) > 0)
    sampler = {"sgld": hb.samplers.sgld, "psgld": hb.samplers.psgld, "sghmc": hb.samplers.sghmc}[sampler_name]()
    batch = n // 10 if n >= 1000 else None
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = hb.sample(model, sampler, data=data, batch_size=batch, num_samples=num_samples, num_chains=4,
                            seed=0, progress_bar=False)
            error = None
        except Exception as err:  # noqa: BLE001 - recorded in the table
            res, error = None, f"{type(err).__name__}: {err}"
    wall = time.perf_counter() - t
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    row = {"model": name if checked else name + " (reference failed its checks)", "sampler": sampler_name, "batch_size": batch, "time_s": wall, "warnings": msgs,
           "error": error}
    if res is not None:
        good = [c for c in range(res.num_chains) if c not in res.diverged_chains()]
        samples = {k: np.asarray(v)[good] for k, v in res.samples.items()} if good else res.samples
        z, lo, hi = compare(samples, ref) if good else (float("inf"), 0.0, 0.0)
        meets = z <= Z_MAX and LO <= lo and hi <= HI
        row.update(z_max=z, sd_min=lo, sd_max=hi, meets=bool(meets), data_passes=res.data_passes,
                   diverged_at_0=bool(np.asarray(res.stats["diverging"])[:, 0].any()),
                   step_size=(res.tuning or {}).get("step_size"), friction=(res.tuning or {}).get("friction"),
                   estimator=((res.tuning or {}).get("gradient") or {}).get("chosen", "naive"),
                   full_batch_gain=((res.tuning or {}).get("gradient") or {}).get("full_batch_gain"),
                   metric_condition=((res.tuning or {}).get("metric") or {}).get("condition_number"),
                   ess=(res.checks or {}).get("ess_bulk_min"), rhat=(res.checks or {}).get("rhat_max"),
                   tconf=(res.checks or {}).get("configurational_temperature"),
                   tkin=(res.checks or {}).get("kinetic_temperature"))
    else:
        row.update(meets=False)
    row["verdict"] = "meets" if row["meets"] else ("warned" if (msgs or error) else "SILENT")
    return row


def table(rows):
    lines = ["| model | sampler | verdict | max \\|z\\| | sd ratios | ESS | data passes | time (s) | h | C |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['model']} | {r['sampler']} | {r['verdict']} (error) | | | | | {r['time_s']:.0f} | | |")
            continue
        fr = f"{r['friction']:.3g}" if r.get("friction") else ""
        lines.append(f"| {r['model']} | {r['sampler']} | {r['verdict']}{' (warned)' if r['meets'] and r['warnings'] else ''}"
                     f" | {r['z_max']:.2f} | {r['sd_min']:.2f}-{r['sd_max']:.2f} | {r['ess'] or 0:.0f} | "
                     f"{r['data_passes']:.0f} | {r['time_s']:.0f} | {r['step_size'] or 0:.3g} | {fr} |")
    meets = sum(r["meets"] for r in rows)
    silent = sum(r["verdict"] == "SILENT" for r in rows)
    div0 = sum(bool(r.get("diverged_at_0")) for r in rows)
    lines.append("")
    lines.append(f"{meets} of {len(rows)} runs meet the bars ({100 * meets / max(len(rows), 1):.0f}%); "
                 f"{silent} silent failures; {div0} runs diverged at draw 0.")
    trusted = [r for r in rows if "reference failed" not in r["model"]]
    if len(trusted) < len(rows):
        m2 = sum(r["meets"] for r in trusted)
        lines.append(f"Without the models whose NUTS reference failed its own checks: {m2} of {len(trusted)} "
                     f"({100 * m2 / max(len(trusted), 1):.0f}%).")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=None, help="comma-separated model names (default: all)")
    p.add_argument("--samplers", default="sgld,psgld,sghmc")
    p.add_argument("--num-samples", type=int, default=10_000)
    p.add_argument("--out", default=str(HERE / "defaults_eval.md"))
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--merge", nargs="+", default=None, metavar="LOG",
                   help="no runs: build the table from the rows printed in these logs (runs split over processes)")
    args = p.parse_args()
    if args.merge:
        rows = []
        for path in args.merge:
            for line in Path(path).read_text().splitlines():
                if line.startswith("{") and " warnings: " in line:
                    body, count = line.rsplit(" warnings: ", 1)
                    row = json.loads(body)
                    row["warnings"] = ["?"] * int(count)
                    rows.append(row)
        text = table(rows)
        print(text)
        Path(args.out).write_text(f"# Defaults against NUTS ({time.strftime('%Y-%m-%d')}, num_samples="
                                  f"{args.num_samples}, 4 chains)\n\n" + text + "\n")
        return
    from defaults_models import MODELS

    names = args.only.split(",") if args.only else BUNDLED + list(MODELS)
    rows = []
    for name in names:
        x64 = name == "gp_pois_regr"
        if x64 and not args.child and os.environ.get("JAX_ENABLE_X64") != "1":
            tmp = cache_dir() / f"rows_{name}.json"
            env = {**os.environ, "JAX_ENABLE_X64": "1"}
            subprocess.run([sys.executable, __file__, "--only", name, "--samplers", args.samplers, "--num-samples",
                            str(args.num_samples), "--json", str(tmp), "--child", "--out", os.devnull],
                           check=True, env=env)
            rows += json.loads(tmp.read_text())
            continue
        for s in args.samplers.split(","):
            row = run_one(name, s, args.num_samples)
            print(json.dumps({k: v for k, v in row.items() if k != "warnings"}), "warnings:", len(row["warnings"]),
                  flush=True)
            rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows))
    text = table(rows)
    print(text)
    if args.out != os.devnull:
        Path(args.out).write_text(f"# Defaults against NUTS ({time.strftime('%Y-%m-%d')}, num_samples="
                                  f"{args.num_samples}, 4 chains)\n\n" + text + "\n")


if __name__ == "__main__":
    main()
