"""Peak resident memory of long runs: streaming (running moments, thinning) vs keeping every draw.

    python benchmarks/bench_memory.py            # the full benchmark: 1e6 steps, d = 1e5 (about 1 h on 2 cores)
    python benchmarks/bench_memory.py --quick    # the same table at 1e4 steps (a few minutes)

Every configuration runs in its own process (``benchmarks/memory_run.py``) under
``/usr/bin/time -v``; its "Maximum resident set size" is the peak RSS (with
``resource.getrusage(RUSAGE_CHILDREN)`` as the fallback where GNU time is missing). The model
(see memory_run.py) has d = 1e5 parameters and is cheap per step, so the memory is that of
the sampler's state, what the run keeps, and the fixed cost of Python + JAX + XLA.

The accounting. One chain recording R draws of d float32 parameters holds

    fixed                            Python + JAX + XLA, the model's data and the compiled chunk
                                     programs (the ``baseline`` row: 10 draws, one small program;
                                     a real run compiles up to 4 programs: warmup and sampling
                                     chunks, full and remainder lengths)
    state and step temporaries       8 d * 4 bytes   (position, gradient, noise, new position, ...)
    keep="moments", SWAG rank K      2 (2 + K) d * 4 (mean, M2, the K-draw ring on the device,
                                                      and their copies in the Result)
    per-draw stats                   2 * 17 R bytes  (step_size, temperature, grad_norm, lp: float32,
                                                      diverging: bool; a list of chunks, then the
                                                      concatenated array)
    keep="draws"                     2 R d * 4 bytes (a list of chunks, then the concatenated
                                                      array), + one chunk of C draws on the device
                                                      (on the CPU backend the chunk is the host
                                                      array, so C hardly matters: measured)

None of it grows with the number of steps: only with what is recorded. So with
``keep="moments"`` and R fixed (thinning = steps / R) the peak RSS is the same for 1e4 and 1e6
steps, and with every step recorded (R = steps) only the 34 bytes of stats per step grow. The
benchmark checks this by measurement: each run against its twin with 1/10 of the steps (same
mode, same R; from 1e5 steps on, the same compiled programs), allowing the accounting's predicted growth plus the run-to-run spread of
the peak (measured on the repeated short runs). Keeping every draw costs 2 d * 4 bytes of peak
RSS per draw (800 kB here): 1e6 draws would need about 800 GB, so the naive run is measured
at 1e3 and 2e3 draws and extrapolated.

Allocator creep. By default the peak RSS of a long run at fixed R still creeps up by ~10-20 MiB
per decade of steps (sub-linearly: not a per-step leak). It is glibc's per-thread malloc arenas
(XLA's worker threads): with ``MALLOC_ARENA_MAX=1`` a 1e7-step run (d = 1e3) peaked at 397 MiB
against 416 MiB at 1e5 steps, by default at 415 against 396 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import machine_info, markdown_table  # noqa: E402

MiB = 2**20
STAT_BYTES = 17  # four float32 stats and one bool per draw and chain


def run_one(args, timeout=7200):
    """(peak RSS bytes, elapsed seconds, the run's JSON) of ``memory_run.py *args``."""
    cmd = [sys.executable, os.path.join(HERE, "memory_run.py"), *map(str, args)]
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    if gnu_time:
        cmd = [gnu_time, "-v", *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if m:
        rss = int(m.group(1)) * 1024
    else:  # largest child so far: exact when this child is the largest one yet
        rss = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) * 1024
    return rss, elapsed, record


def growth(rec, twin, dim):
    """Bytes the accounting predicts ``rec`` needs beyond its smaller twin (same mode and R)."""
    more = rec["num_samples"] - twin["num_samples"]
    b = 2 * STAT_BYTES * more
    if rec["mode"] in ("thinned", "naive"):
        b += 2 * 4 * dim * more
    return b


def static_bytes(rec, dim):
    """State, step temporaries and moment accumulators: what does not grow with the run."""
    f = 4 * dim
    b = 8 * f
    if rec["mode"].startswith("moments"):
        b += 2 * (2 + rec["swag_rank"]) * f
    return b


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1e4 steps instead of 1e6")
    parser.add_argument("--dim", type=int, default=100_000)
    args = parser.parse_args()
    steps = 10_000 if args.quick else 1_000_000
    d = args.dim
    R = 100 if args.quick else 1000
    runs = [
        ("baseline (10 draws)", ["baseline"]),
        ("naive", ["naive", "--steps", 1000]),
        ("naive", ["naive", "--steps", 2000]),
        ("naive", ["naive", "--steps", 2000, "--chunk", 16]),
        ("naive", ["naive", "--steps", 2000, "--chunk", 128]),
        ("naive", ["naive", "--steps", 2000, "--chunk", 2000]),
        ("moments, thinned", ["moments_thinned", "--steps", steps // 100, "--draws", R]),
        ("moments, thinned", ["moments_thinned", "--steps", steps // 10, "--draws", R]),
        ("moments, thinned", ["moments_thinned", "--steps", steps, "--draws", R]),
        ("moments, every step", ["moments", "--steps", steps // 100]),
        ("moments, every step", ["moments", "--steps", steps // 10]),
        ("moments, every step", ["moments", "--steps", steps]),
        ("thinned draws", ["thinned", "--steps", steps // 100, "--draws", R]),
        ("thinned draws", ["thinned", "--steps", steps // 10, "--draws", R]),
        ("thinned draws", ["thinned", "--steps", steps, "--draws", R]),
    ]
    info = machine_info()
    print(f"# Peak RSS of SGLD runs, d = {d} parameters, 1 chain ({'quick' if args.quick else 'full'})\n")
    for k, v in info.items():
        print(f"- {k}: {v}")
    print(f"- command: {' '.join([os.path.basename(sys.executable), *sys.argv])}")
    print("- peak RSS: /usr/bin/time -v (Maximum resident set size), one process per run; runs of <= 2e4 steps "
          "repeated 3 times (the minimum is shown), longer ones run once\n", flush=True)

    # Short runs are repeated (the peak RSS varies by a few % from run to run: compilation,
    # allocator); the table takes the minimum, the bound check allows the largest spread seen.
    records = []
    for label, a in runs:
        total = 10 if a[0] == "baseline" else int(a[a.index("--steps") + 1])
        repeats = 3 if total <= 20_000 else 1
        results = [run_one([*a, "--dim", d]) for _ in range(repeats)]
        rss = min(x[0] for x in results)
        elapsed = min(x[1] for x in results)
        rec = results[0][2]
        records.append(dict(label=label, rss=rss, rss_all=[x[0] for x in results], elapsed=elapsed, **rec))
        print(f"  {label} {rec['steps']} steps: peak RSS {[round(x[0] / MiB) for x in results]} MiB, {elapsed:.0f} s",
              file=sys.stderr, flush=True)
    base = records[0]["rss"]
    noise = max(max(r["rss_all"]) - min(r["rss_all"]) for r in records)

    rows = []
    for r in records:
        rows.append([r["label"], f"{r['steps'] + r['warmup']:,}", f"{r['num_samples']:,}", r["thinning"],
                     r["chunk_size"] or "default", f"{r['rss'] / MiB:.0f}", f"{(r['rss'] - base) / MiB:.1f}",
                     f"{sum(r['held_bytes'].values()) / MiB:.1f}", f"{r['elapsed']:.0f}",
                     f"{r['mean_var_free']:.4f}" if r["mode"] != "baseline" and r["mean_var_free"] else "-"])
    print(markdown_table(["run", "steps (incl. 1% warmup)", "draws recorded", "thinning", "chunk", "peak RSS (MiB)",
                          "above baseline (MiB)", "Result holds (MiB)", "wall (s)", "mean var, free coords"], rows))

    # The bound: each run against its twin at 1/10 of the steps.
    print(f"\nBound check: peak RSS of a run <= peak RSS of its twin with fewer steps (same mode, same "
          f"recorded draws R when thinned) + the growth the accounting predicts (34 B per extra recorded "
          f"draw; 800 kB per extra kept draw) + the run-to-run spread of the peak ({noise / MiB:.0f} MiB, the "
          f"largest max - min over the repeated rows).\n")
    rows = []
    for r in records:
        # The twin: the same mode at 1/10 of the steps (for the naive run: half the draws).
        twins = [t for t in records if t["mode"] == r["mode"] and t["chunk_size"] == r["chunk_size"]
                 and t["steps"] * (2 if r["mode"] == "naive" else 10) == r["steps"]]
        if not twins:
            continue
        t = twins[0]
        pred = t["rss"] + growth(r, t, d) + noise
        rows.append([r["label"], f"{r['steps']:,} vs {t['steps']:,}", f"{t['rss'] / MiB:.0f}",
                     f"{growth(r, t, d) / MiB:.1f}", f"{pred / MiB:.0f}", f"{r['rss'] / MiB:.0f}",
                     f"{(r['rss'] - t['rss']) / MiB:+.1f}", "yes" if r["rss"] <= pred else "NO"])
    print(markdown_table(["run", "steps vs twin", "twin peak (MiB)", "predicted growth (MiB)",
                          "bound: twin + growth + spread (MiB)", "measured peak (MiB)", "measured - twin (MiB)",
                          "within bound"], rows))
    mt = [r for r in records if r["mode"] == "moments_thinned"]
    peaks = ", ".join(f"{r['rss'] / MiB:.0f}" for r in mt)
    at = ", ".join(f"{r['steps']:.0e}" for r in mt)
    print(f"\nStated bound: keep='moments' (SWAG rank {mt[0]['swag_rank']}) with R = {R} recorded draws keeps the "
          f"peak RSS under {(mt[1]['rss'] + noise) / MiB:.0f} MiB (the run at 1/10 of the steps + the spread) for any "
          f"number of steps "
          f"(measured {peaks} MiB at {at} steps); of it, {base / MiB:.0f} MiB is Python + JAX + the "
          f"model (baseline) and {static_bytes(mt[0], d) / MiB:.1f} MiB the state and the moments.")
    naive = [r for r in records if r["mode"] == "naive" and r["chunk_size"] is None]
    a, b = naive[0], naive[-1]
    slope = (b["rss"] - a["rss"]) / (b["num_samples"] - a["num_samples"])
    print(f"Keeping every draw: {slope / 1e3:.0f} kB of peak RSS per kept draw (d * 4 = {4 * d / 1e3:.0f} kB of "
          f"draws): a 1e6-draw run would need {(a['rss'] + slope * (1e6 - a['num_samples'])) / 2**30:.0f} GiB.")
    print("\n```json\n" + json.dumps(records) + "\n```")


if __name__ == "__main__":
    main()
