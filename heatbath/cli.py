"""The ``heatbath`` command.

    heatbath demo                 SGLD, pSGLD and SGLD-CV on the German credit reference
                                  posterior: a table against the gold standard and a figure
    heatbath references           the bundled reference posteriors
    heatbath sample NAME ...      one sampler on one reference posterior, compared to it

``heatbath COMMAND --help`` describes every option of a command. Step sizes: without one,
``heatbath sample`` chooses it in warmup (README, "Choosing a step size").
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["main", "build_parser", "marginal_figure"]

# The demo's step sizes on German credit (batch 100), chosen by hand: see README "Choosing a step size".
DEMO_METHODS = (
    ("SGLD", "sgld", 1e-4),
    ("pSGLD", "psgld", 5e-3),
    ("SGLD-CV", "sgld-cv", 4e-4),
)


SAMPLER_KINDS = ("sgld", "sgld-cv", "sgld-svrg", "psgld", "sghmc")


def _h(h: float) -> str:
    """1e-4 rather than 0.0001."""
    return f"{h:.0e}".replace("e-0", "e-").replace("e+0", "e")


def _sampler(kind: str, step_size=None, temperature: float = 1.0, friction=None):
    """The sampler of a CLI kind; ``step_size`` / ``friction`` None: chosen by the run (autotune)."""
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
    """One line of the table. Diverged chains (``Result.excluded_chains``) are left out of the
    accuracy, ESS and R-hat columns; the last column says how many there were. A method whose
    chains all diverged gets a row of dashes instead of numbers."""
    import warnings

    import arviz as az
    import numpy as np

    bad, num = result.excluded_chains(), result.num_chains
    row = {
        "method": name,
        "wall time (s)": result.wall_time,
        "grad evals": result.grad_evals,
        "data passes": result.data_passes,
        "max |mean-ref|/sd": "-",
        "sd ratio": "-",
        "min ESS": "-",
        "max R-hat": "-",
        "diverged chains": f"{len(bad)} of {num} (left out)" if bad else "0",
    }
    if len(bad) == num:
        row["diverged chains"] = f"{num} of {num} (all)"
        return row
    with warnings.catch_warnings():  # the exclusion is reported in the table and below it
        warnings.simplefilter("ignore", RuntimeWarning)
        samples = result.get_samples(group_by_chain=True)
        idata = result.to_arviz(log_likelihood=False)
    cmp = ref.compare(samples)
    names = [p for p in ref.reference if p in samples]
    ess = az.ess(idata, var_names=names)
    rhat = az.rhat(idata, var_names=names)
    row["max |mean-ref|/sd"] = cmp["max_abs_z"]
    row["sd ratio"] = f"[{cmp['sd_ratio_min']:.3f}, {cmp['sd_ratio_max']:.3f}]"
    row["min ESS"] = min(float(np.min(ess[v].values)) for v in names)
    row["max R-hat"] = max(float(np.max(rhat[v].values)) for v in names)
    return row


def _excluded_note(rows, file=None):
    """Below the table: which methods had chains left out (they diverged)."""
    file = sys.stdout if file is None else file
    for r in rows:
        if r["diverged chains"] != "0":
            print(f"{r['method']}: {r['diverged chains']} diverged chain(s) (non-finite state or log density), left "
                  "out of its accuracy, ESS and R-hat; lower the step size", file=file)


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
    cells = [[(fmt.get(c, "{}") if not isinstance(r[c], str) else "{}").format(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    # Markdown: a "|" inside a header cell is escaped, so the table keeps its columns.
    heads = [c.replace("|", "\\|") for c in cols]
    widths = [max(w, len(h)) for w, h in zip(widths, heads)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths)) + " |", file=file)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|", file=file)
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |", file=file)


def _reference_draws(ref, param, k):
    """The bundled reference draws of ``param`` as (draws, k), or None when the target has none."""
    import numpy as np

    draws = None if ref.draws is None else ref.draws.get(param)
    return None if draws is None else np.asarray(draws, dtype=np.float64).reshape(-1, k)


def marginal_figure(results, ref, param):
    """A figure of each method's marginals of ``param`` over the reference.

    The reference is the histogram of the bundled reference draws where the target has them
    (the posteriordb targets: 10 x 1000 NUTS draws), so that a skewed marginal is drawn as
    it is; the targets that ship moments only (German credit, the inference_gym targets)
    get the normal density with the reference mean and sd, labelled as such.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    mean = np.atleast_1d(ref.reference[param]["mean"])
    sd = np.atleast_1d(ref.reference[param]["sd"])
    k = mean.size
    ref_draws = _reference_draws(ref, param, k)
    cols = min(5, k)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(2.8 * cols, 6.0), 2.3 * rows + 0.4), squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= k:
            ax.axis("off")
            continue
        if ref_draws is not None:
            lo, hi = np.quantile(ref_draws[:, i], [0.002, 0.998])
            pad = 0.1 * (hi - lo) if hi > lo else 4 * sd[i]
            span = (lo - pad, hi + pad)
            ax.hist(ref_draws[:, i], bins=60, range=span, density=True, color="0.8", label="reference draws")
        else:
            span = (mean[i] - 4 * sd[i], mean[i] + 4 * sd[i])
            grid = np.linspace(*span, 200)
            ax.plot(grid, np.exp(-0.5 * ((grid - mean[i]) / sd[i]) ** 2) / (sd[i] * np.sqrt(2 * np.pi)),
                    "k--", lw=1.2, label="reference N(mean, sd)")
        for name, res in results:
            x = np.asarray(res.samples[param])
            if hasattr(res, "excluded_chains"):  # a Result: its diverged chains are left out
                x = np.delete(x, res.excluded_chains(), axis=0)
            x = x.reshape(-1, k)[:, i]
            ax.hist(x, bins=60, range=span, density=True, histtype="step", lw=1.0, label=name)
        ax.set_xlabel(param if np.ndim(ref.reference[param]["mean"]) == 0 else f"{param}[{i}]", fontsize=7)
        if i % cols == 0:
            ax.set_ylabel("density", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=6)
    what = ("histograms of the bundled reference draws" if ref_draws is not None
            else "normal densities from the reference means and sds (this target ships no reference draws)")
    fig.suptitle(f"{ref.name}: marginals of {param} against the gold standard\n(reference: {what})", fontsize=9)
    fig.tight_layout()
    return fig


def _check_figure_path(path):
    """Fail before the run (not after it) when the figure cannot be written: the directory must
    exist and be writable, and the suffix be one matplotlib writes."""
    if not path:
        return
    import matplotlib.pyplot as plt

    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"--figure {path!r}: the directory {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--figure {path!r}: the directory {folder!r} is not writable")
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if suffix not in formats:
        raise ValueError(f"--figure {path!r}: unknown image format {suffix!r}; use one of {sorted(formats)}")


def _figure(results, ref, param, path):
    import matplotlib.pyplot as plt

    fig = marginal_figure(results, ref, param)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_demo(args) -> int:
    import heatbath as hb

    _check_figure_path(args.figure)
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
    _excluded_note(rows)
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

    _check_figure_path(args.figure)
    ref = hb.models.reference(args.name)
    res = hb.sample(
        ref.model,
        _sampler(args.sampler, args.step_size, args.temperature, args.friction),
        data=ref.data,
        batch_size=args.batch_size,
        num_samples=args.steps,
        num_warmup=args.warmup if args.warmup is not None else (None if args.step_size is None else args.steps // 10),
        thinning=args.thinning,
        num_chains=args.chains,
        seed=args.seed,
        progress_bar=not args.quiet,
    )
    print()
    h = args.step_size if args.step_size is not None else res.tuning["step_size"]
    chosen = "" if args.step_size is not None else " chosen"
    rows = [_row(f"{args.sampler} (h={h:.3g}{chosen})", res, ref)]
    _print_table(rows)
    _excluded_note(rows)
    if args.figure:
        param = next(p for p in ref.reference if p in res.samples)
        _figure([(args.sampler, res)], ref, param, args.figure)
        print(f"\nfigure: {args.figure}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``heatbath`` command's parser: every option has a help string with its default."""
    parser = argparse.ArgumentParser(prog="heatbath", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="SGLD, pSGLD and SGLD-CV on German credit against the gold standard",
        description=", ".join(f"{name} (h={_h(h)})" for name, _, h in DEMO_METHODS)
        + " on the German credit logistic regression (N = 1000, 25 weights), each compared to the bundled "
          "gold-standard moments: a table of accuracy, ESS, R-hat and cost, and a figure of the marginals.",
    )
    demo.add_argument("--steps", type=int, default=100_000, metavar="N",
                      help="draws kept per chain and method; steps // 10 unrecorded warmup steps run first "
                           "(default: %(default)s)")
    demo.add_argument("--chains", type=int, default=4, metavar="C", help="chains per method (default: %(default)s)")
    demo.add_argument("--batch-size", type=int, default=100, metavar="n",
                      help="minibatch size n: rows drawn uniformly with replacement at every step "
                           "(default: %(default)s)")
    demo.add_argument("--thinning", type=int, default=1, metavar="K",
                      help="steps per kept draw (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed; chain i's draws depend only on (seed, i) "
                                                          "(default: %(default)s)")
    demo.add_argument("--figure", default="heatbath_demo.png", metavar="PATH",
                      help="where to write the figure of the marginals, '' for none (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars (default: show them)")
    demo.set_defaults(func=cmd_demo)

    refs = sub.add_parser("references", help="list the bundled reference posteriors",
                          description="List the bundled reference posteriors: name, number of data rows N, "
                                      "parameters with reference moments.")
    refs.set_defaults(func=cmd_references)

    smp = sub.add_parser(
        "sample",
        help="run one sampler on one reference posterior",
        description="Run one sampler on one bundled reference posterior and compare its draws to the gold "
                    "standard. Without --step-size (and --friction for sghmc) the run chooses them during warmup "
                    "from the measured curvature and gradient noise: see the README section \"Choosing a step "
                    "size\".",
    )
    smp.add_argument("name", help="reference posterior: a name or alias from `heatbath references` "
                                  "(e.g. german_credit, eight_schools_noncentered, arK)")
    smp.add_argument("--sampler", default="sgld", choices=SAMPLER_KINDS,
                     help="sgld: SGLD with naive minibatch gradients; sgld-cv: SGLD with control variates at the "
                          "MAP (found first, its cost counted); sgld-svrg: SGLD with SVRG gradients, centre "
                          "refreshed every 1000 steps; psgld: RMSprop-preconditioned SGLD; sghmc: SGHMC with "
                          "the OBABO splitting and --friction (default: %(default)s)")
    smp.add_argument("--step-size", type=float, default=None, metavar="h",
                     help="step size h > 0 (default: chosen during warmup, h = 0.4 / lambda_max(H + V/T) from the "
                          "measured curvature H and gradient noise V; see the README section 'Choosing a step "
                          "size'). On German credit with batch 100 the demo uses "
                     + ", ".join(f"{_h(h)} for {kind}" for _, kind, h in DEMO_METHODS))
    smp.add_argument("--friction", type=float, default=None, metavar="C",
                     help="SGHMC friction C, used only by --sampler sghmc (default: chosen from the measured "
                          "gradient noise so that it dominates it)")
    smp.add_argument("--temperature", type=float, default=1.0, metavar="T",
                     help="temperature T: 1 samples the posterior, 0 < T < 1 a cold posterior "
                          "(default: %(default)s)")
    smp.add_argument("--batch-size", type=int, default=None, metavar="n",
                     help="minibatch size n, rows drawn uniformly with replacement at every step "
                          "(default: full data; targets with per-observation latent variables run full-batch only)")
    smp.add_argument("--steps", type=int, default=20_000, metavar="N",
                     help="draws kept per chain (default: %(default)s)")
    smp.add_argument("--warmup", type=int, default=None, metavar="W",
                     help="unrecorded steps before the first draw (default: steps // 10 with a given step size; "
                          "with an automatic one a quarter of the steps, at least 200, half of which tune it)")
    smp.add_argument("--chains", type=int, default=4, metavar="C", help="independent chains (default: %(default)s)")
    smp.add_argument("--thinning", type=int, default=1, metavar="K", help="steps per kept draw (default: %(default)s)")
    smp.add_argument("--seed", type=int, default=0, help="random seed; chain i's draws depend only on (seed, i) "
                                                         "(default: %(default)s)")
    smp.add_argument("--figure", default="", metavar="PATH",
                     help="also write a figure of the first reference parameter's marginals to PATH, over the "
                          "bundled reference draws where the target has them (default: no figure)")
    smp.add_argument("--quiet", action="store_true", help="no progress bar (default: show it)")
    smp.set_defaults(func=cmd_sample)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
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
