"""The ``heatbath`` command.

    heatbath demo                 SGLD, pSGLD and SGLD-CV on the German credit reference
                                  posterior: a table against the gold standard and a figure
    heatbath references           the bundled reference posteriors
    heatbath sample NAME ...      one sampler on one reference posterior, compared to it
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]

# Step sizes tuned on German credit (batch 100): see README "Choosing a step size".
DEMO_METHODS = (
    ("SGLD", "sgld", 1e-4),
    ("pSGLD", "psgld", 5e-3),
    ("SGLD-CV", "sgld-cv", 4e-4),
)


SAMPLER_KINDS = ("sgld", "sgld-cv", "sgld-svrg", "psgld", "sghmc")


def _sampler(kind: str, step_size: float, temperature: float = 1.0, friction: float = 1.0):
    import heatbath as hb

    if kind == "sgld":
        return hb.samplers.sgld(step_size, temperature=temperature)
    if kind == "sgld-cv":
        return hb.samplers.sgld(step_size, temperature=temperature, gradient="cv")
    if kind == "sgld-svrg":
        return hb.samplers.sgld(step_size, temperature=temperature, gradient=hb.kernels.gradients.svrg(1000))
    if kind == "psgld":
        return hb.samplers.psgld(step_size, temperature=temperature)
    if kind == "sghmc":
        return hb.samplers.sghmc(step_size, friction, temperature=temperature)
    raise ValueError(f"unknown sampler {kind!r}; use one of {', '.join(SAMPLER_KINDS)}")


def _row(name, result, ref):
    import arviz as az
    import numpy as np

    cmp = ref.compare(result.samples)
    idata = result.to_arviz()
    names = [p for p in ref.reference if p in result.samples]
    ess = az.ess(idata, var_names=names)
    rhat = az.rhat(idata, var_names=names)
    min_ess = min(float(np.min(ess[v].values)) for v in names)
    max_rhat = max(float(np.max(rhat[v].values)) for v in names)
    return {
        "method": name,
        "wall time (s)": result.wall_time,
        "grad evals": result.grad_evals,
        "data passes": result.data_passes,
        "max |mean-ref|/sd": cmp["max_abs_z"],
        "sd ratio": f"[{cmp['sd_ratio_min']:.3f}, {cmp['sd_ratio_max']:.3f}]",
        "min ESS": min_ess,
        "max R-hat": max_rhat,
        "diverged chains": len(result.diverged_chains()),
    }


def _print_table(rows, file=None):
    file = sys.stdout if file is None else file
    cols = list(rows[0])
    fmt = {
        "wall time (s)": "{:.1f}",
        "grad evals": "{:.3g}",
        "data passes": "{:.0f}",
        "max |mean-ref|/sd": "{:.3f}",
        "min ESS": "{:.0f}",
        "max R-hat": "{:.3f}",
    }
    cells = [[fmt.get(c, "{}").format(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |", file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |", file=file)


def _figure(results, ref, param, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mean = np.atleast_1d(ref.reference[param]["mean"])
    sd = np.atleast_1d(ref.reference[param]["sd"])
    k = mean.size
    cols = min(5, k)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.0 * rows), squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= k:
            ax.axis("off")
            continue
        grid = np.linspace(mean[i] - 4 * sd[i], mean[i] + 4 * sd[i], 200)
        ax.plot(grid, np.exp(-0.5 * ((grid - mean[i]) / sd[i]) ** 2) / (sd[i] * np.sqrt(2 * np.pi)),
                "k--", lw=1.2, label="reference N(mean, sd)")
        for name, res in results:
            x = np.asarray(res.samples[param]).reshape(-1, k)[:, i]
            ax.hist(x, bins=60, range=(grid[0], grid[-1]), density=True, histtype="step", lw=1.0, label=name)
        ax.set_title(f"{param}[{i}]", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{ref.name}: heatbath samplers against the gold standard", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_demo(args) -> int:
    import heatbath as hb

    ref = hb.models.reference("german_credit")
    print(
        f"German credit logistic regression (N = {ref.num_data}, 25 weights), batch {args.batch_size}, "
        f"{args.chains} chains x {args.steps} steps (+{args.steps // 10} warmup) per method\n"
        f"reference: {ref.meta.get('generated_by', ref.meta.get('source', ''))}\n",
        flush=True,
    )
    results, rows = [], []
    for name, kind, h in DEMO_METHODS:
        res = hb.sample(
            ref.model,
            _sampler(kind, h),
            data=ref.data,
            batch_size=args.batch_size,
            num_samples=args.steps,
            num_warmup=args.steps // 10,
            thinning=args.thinning,
            num_chains=args.chains,
            seed=args.seed,
            progress_bar=not args.quiet,
        )
        results.append((name, res))
        rows.append(_row(f"{name} (h={h:g})", res, ref))
    print()
    _print_table(rows)
    if args.figure:
        _figure(results, ref, "weights", args.figure)
        print(f"\nfigure: {args.figure}")
    return 0


def cmd_references(args) -> int:
    import heatbath as hb

    for name in hb.models.list_references():
        ref = hb.models.reference(name)
        params = ", ".join(ref.reference)
        print(f"{name:50s} N={ref.num_data:<6d} {params}")
    return 0


def cmd_sample(args) -> int:
    import heatbath as hb

    ref = hb.models.reference(args.name)
    res = hb.sample(
        ref.model,
        _sampler(args.sampler, args.step_size, args.temperature, args.friction),
        data=ref.data,
        batch_size=args.batch_size,
        num_samples=args.steps,
        num_warmup=args.warmup if args.warmup is not None else args.steps // 10,
        thinning=args.thinning,
        num_chains=args.chains,
        seed=args.seed,
        progress_bar=not args.quiet,
    )
    print()
    _print_table([_row(f"{args.sampler} (h={args.step_size:g})", res, ref)])
    if args.figure:
        param = next(p for p in ref.reference if p in res.samples)
        _figure([(args.sampler, res)], ref, param, args.figure)
        print(f"\nfigure: {args.figure}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="heatbath", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="SGLD, pSGLD and SGLD-CV on German credit against the gold standard")
    demo.add_argument("--steps", type=int, default=100_000, help="kept steps per chain (default 100000)")
    demo.add_argument("--chains", type=int, default=4)
    demo.add_argument("--batch-size", type=int, default=100)
    demo.add_argument("--thinning", type=int, default=1)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--figure", default="heatbath_demo.png", help="where to write the figure ('' for none)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    refs = sub.add_parser("references", help="list the bundled reference posteriors")
    refs.set_defaults(func=cmd_references)

    smp = sub.add_parser("sample", help="run one sampler on one reference posterior")
    smp.add_argument("name", help="reference posterior (see `heatbath references`)")
    smp.add_argument("--sampler", default="sgld", choices=SAMPLER_KINDS)
    smp.add_argument("--friction", type=float, default=1.0, help="SGHMC friction C")
    smp.add_argument("--step-size", type=float, required=True)
    smp.add_argument("--temperature", type=float, default=1.0)
    smp.add_argument("--batch-size", type=int, default=None)
    smp.add_argument("--steps", type=int, default=20_000)
    smp.add_argument("--warmup", type=int, default=None)
    smp.add_argument("--chains", type=int, default=4)
    smp.add_argument("--thinning", type=int, default=1)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--figure", default="")
    smp.add_argument("--quiet", action="store_true")
    smp.set_defaults(func=cmd_sample)

    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    t0 = time.perf_counter()
    try:
        code = args.func(args)
    except (ValueError, TypeError) as err:
        print(f"heatbath: error: {err}", file=sys.stderr)
        return 2
    print(f"\ndone in {time.perf_counter() - t0:.1f}s")
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
