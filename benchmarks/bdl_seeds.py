"""``bdl_scoreboard.py --seeds``: the scoreboard over several seeds (train/test splits), pooled.

Each seed runs the whole scoreboard (``bdl_scoreboard.main`` with ``--seed S --paired``), in
``--jobs`` processes side by side; each seed's tables are printed, then each method's paired
differences against the MAP (NLL, ECE or the regression calibration error) pooled over the
seeds: the mean, its SE over seeds (sd / sqrt(number of seeds): the splits are independent
replicates) and the number of seeds where the method is better than the MAP.
"""

from __future__ import annotations

import numpy as np


def _one_seed(argv):
    """One seed's run in a worker: (its printed tables, its paired differences against the MAP)."""
    import contextlib
    import io

    from bdl_scoreboard import main

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            diffs = main(argv)
    except Exception as err:  # noqa: BLE001 - one seed's failure is reported, the others are kept
        return out.getvalue() + f"\nthis seed FAILED: {type(err).__name__}: {err}\n", {}
    return out.getvalue(), diffs


def pooled(args, argv):
    """``--seeds``: every seed's tables, then each method's paired differences against the MAP
    pooled over the seeds (each seed is its own split: the differences are independent, so
    their SE is the sd over seeds / sqrt(seeds)). Returns the per-seed differences."""
    import concurrent.futures
    import multiprocessing
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    keep, skip = [], False
    for a in argv:  # drop --seeds/--jobs/--seed/--figure (and their values): each worker gets one --seed
        if skip:
            skip = False
            continue
        name = a.split("=")[0]
        if name in ("--seeds", "--jobs", "--seed", "--figure"):
            skip = "=" not in a
            continue
        keep.append(a)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"--seeds must list distinct integers, got {args.seeds!r}")
    jobs = [keep + ["--seed", str(sd), "--paired"] for sd in seeds]
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            results = list(pool.map(_one_seed, jobs))
    else:
        results = [_one_seed(j) for j in jobs]
    per_seed, failed = {}, [sd for sd, (_, diffs) in zip(seeds, results) if not diffs]
    for sd, (text, diffs) in zip(seeds, results):
        print(f"\n## seed {sd}\n{text}")
        for name, d in diffs.items():
            per_seed.setdefault(name, []).append(d)
    from bdl_scoreboard import REGRESSION

    cal = "calibration error" if args.data in REGRESSION else "ECE"
    ok = [sd for sd in seeds if sd not in failed]
    print(f"\nPooled over {len(ok)} seeds (splits) {ok}: mean difference against the MAP, its SE over seeds "
          f"(sd / sqrt({len(ok)})), and the seeds where the method is better (negative)\n")
    if failed:
        print(f"Seeds that failed (their tables above say why; not pooled): {failed}\n")
    print(f"| method | NLL - MAP | SE | better | {cal} - MAP | SE | better |")
    print("|---|---|---|---|---|---|---|")
    for name, ds in per_seed.items():
        d = np.asarray(ds, np.float64)
        se = d.std(0, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else np.full(2, np.nan)
        print(f"| {name} | {d[:, 0].mean():+.4f} | {se[0]:.4f} | {int((d[:, 0] < 0).sum())}/{len(d)} | "
              f"{d[:, 1].mean():+.4f} | {se[1]:.4f} | {int((d[:, 1] < 0).sum())}/{len(d)} |")
    return per_seed
