r"""Figures of runs and of tuning: traces, marginals against a reference, KSD against time.

Each function returns the matplotlib ``Figure`` (its axes in ``fig.axes``) and never calls
``plt.show()``: show or save it yourself (``fig.savefig(path)``). matplotlib is imported when a
function is called, not with heatbath, and uses whatever backend is active (in scripts and
tests, ``MPLBACKEND=Agg`` or ``matplotlib.use("Agg")`` draws without a display).

- :func:`plot_trace`: ArviZ's ``az.plot_trace`` of a Result (diverged chains left out, as in
  ``Result.to_arviz``).
- :func:`plot_marginals`: each scalar parameter's histogram against a reference posterior,
  drawn as the reference draws' histogram where there are draws and as the normal density with
  the reference mean and sd where there are only moments (bundled gold standards, Comparison
  inputs of :func:`heatbath.diagnostics.compare`).
- :func:`plot_ksd_vs_time`: the kernel Stein discrepancy (Gorham & Mackey, ICML 2017; IMQ
  kernel, full-data scores) against wall-clock time, for runs (KSD of the first k draws, at the
  time they were ready) or for the candidates of :func:`heatbath.tune` (KSD of each round at
  the time it ended), the criterion of Coullon, South & Nemeth (2023).
- :func:`plot_tuning`: a tuning's table, KSD per round per candidate.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from heatbath.diagnostics.compare import _reference_of, _samples_of

__all__ = ["plot_trace", "plot_marginals", "plot_ksd_vs_time", "plot_tuning"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - matplotlib is a dependency of heatbath
        raise ImportError("heatbath's plots need matplotlib: pip install matplotlib") from err
    return plt


def plot_trace(result, var_names: Optional[Sequence[str]] = None, *, include_diverged: bool = False, **kwargs):
    """Trace and marginal density of each parameter per chain: ``az.plot_trace`` of the run.

    Args:
      result: a heatbath Result (or anything ``az.plot_trace`` takes: an InferenceData, a dict).
      var_names: parameters to draw (default: all of the posterior group).
      include_diverged: keep diverged chains (by default they are left out with a warning).
      kwargs: passed to ``az.plot_trace`` (e.g. ``compact=False``, ``figsize``).

    Returns:
      The Figure: two axes per parameter (density, trace).
    """
    import arviz as az

    _pyplot()
    data = result
    if hasattr(result, "to_arviz"):
        data = result.to_arviz(include_diverged=include_diverged, log_likelihood=False)
    axes = az.plot_trace(data, var_names=None if var_names is None else list(var_names), **kwargs)
    return np.asarray(axes).ravel()[0].figure


def _grid(plt, k: int, cols: int, size=(2.8, 2.2)):
    cols = max(1, min(cols, k))
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows + 0.5), squeeze=False)
    axes = axes.ravel()
    for ax in axes[k:]:
        fig.delaxes(ax)
    return fig, axes[:k]


def plot_marginals(result, reference, params: Optional[Sequence[str]] = None, *, max_panels: int = 25,
                   bins: int = 60, cols: int = 5, label: str = "draws"):
    """Each scalar parameter's marginal against a reference posterior, one panel per element.

    Args:
      result: a heatbath Result (constrained ``samples``; diverged chains left out) or a dict
        name -> (chain, draw, ...) array.
      reference: what :func:`heatbath.diagnostics.compare` takes: a bundled reference name or a
        ``ReferencePosterior`` (its draws when it ships some, else its moments), a dict name ->
        draws, a dict name -> ``{"mean", "sd"}``, or another Result. Draws are drawn as a grey
        histogram; moments as the normal density N(mean, sd) (dashed, labelled as such).
      params: parameters to draw (default: those on both sides); at most ``max_panels`` panels.

    Returns:
      The Figure: one axes per scalar element, x labelled ``name[i]``, a legend on the first.
    """
    plt = _pyplot()
    samples = result
    if hasattr(result, "excluded_chains") and getattr(result, "samples", None):
        bad = result.excluded_chains()
        samples = {k: np.delete(np.asarray(v), bad, axis=0) for k, v in result.samples.items()}
    samples = _samples_of(samples, "result")
    moments, ref_draws, ref_label = _reference_of(reference, {k: v.shape[2:] for k, v in samples.items()})
    ref_names = list(moments if moments is not None else ref_draws)
    names = [p for p in (params or ref_names) if p in samples and p in ref_names]
    if not names:
        raise ValueError(f"no parameter to draw: the reference has {ref_names}, the draws have {list(samples)}")
    panels = []
    for p in names:
        x = samples[p].reshape(-1, int(np.prod(samples[p].shape[2:], dtype=int)))
        for i in range(x.shape[1]):
            tag = p if samples[p].ndim == 2 else f"{p}[{','.join(map(str, np.unravel_index(i, samples[p].shape[2:])))}]"
            m = s = y = None
            if moments is not None:
                m, s = float(np.ravel(moments[p][0])[i]), float(np.ravel(moments[p][1])[i])
            if ref_draws is not None:
                y = np.asarray(ref_draws[p]).reshape(len(ref_draws[p]), -1)[:, i]
            panels.append((tag, x[:, i], m, s, y))
    panels = panels[:max_panels]
    fig, axes = _grid(plt, len(panels), cols)
    for ax, (tag, xi, m, s, y) in zip(axes, panels):
        lo, hi = np.quantile(np.concatenate([xi] + ([y] if y is not None else [])), [0.002, 0.998])
        if m is not None:
            lo, hi = min(lo, m - 4 * s), max(hi, m + 4 * s)
        span = (lo, hi) if hi > lo else (lo - 1.0, lo + 1.0)
        if y is not None:
            ax.hist(y, bins=bins, range=span, density=True, color="0.8", label=f"reference draws ({ref_label})")
        if m is not None:
            g = np.linspace(*span, 200)
            ax.plot(g, np.exp(-0.5 * ((g - m) / s) ** 2) / (s * math.sqrt(2 * math.pi)), "k--", lw=1.2,
                    label="reference N(mean, sd)")
        ax.hist(xi, bins=bins, range=span, density=True, histtype="step", lw=1.2, color="C0", label=label)
        ax.set_xlabel(tag, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("density", fontsize=8)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def _is_tuning(obj) -> bool:
    table = getattr(obj, "table", obj)
    return isinstance(table, list) and bool(table) and isinstance(table[0], dict) and "ksd" in table[0]


def _candidate_label(row) -> str:
    hyper = {k: v for k, v in row["hyperparameters"].items() if v is not None}
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in hyper.items())


def _run_curve(result, num_points: int, max_draws: int, ksd_kwargs: dict):
    """(times, KSDs) of the first k draws of a run, k on a geometric grid."""
    from heatbath.diagnostics.stein import ksd, scores

    draws = getattr(result, "unconstrained", None)
    if draws is None or getattr(result, "target", None) is None:
        raise ValueError("plot_ksd_vs_time needs runs with unconstrained draws and a target: "
                         "hb.sample(..., record_unconstrained=True)")
    import jax

    n = int(np.shape(jax.tree.leaves(draws)[0])[1])
    ks = np.unique(np.geomspace(min(n, 10), n, num_points).astype(int))
    times, values = [], []
    for k in ks:
        per = max(1, min(k, max_draws // int(np.shape(jax.tree.leaves(draws)[0])[0])))
        idx = np.unique(np.linspace(0, k - 1, per).round().astype(int))
        sub = jax.tree.map(lambda v: np.asarray(v)[:, idx], draws)
        values.append(ksd(sub, scores(result.target, sub), sample_axes=2, **ksd_kwargs))
        # the time the first k draws were ready: compile, then a constant rate
        times.append(result.compile_time + (result.wall_time - result.compile_time) * k / n)
    return np.asarray(times), np.asarray(values)


def plot_ksd_vs_time(results_or_table, labels: Optional[Sequence[str]] = None, *, num_points: int = 8,
                     max_draws: int = 1000, ax=None, **ksd_kwargs):
    """KSD against wall-clock time (log-log), the Stein-discrepancy-per-unit-time criterion.

    Args:
      results_or_table: a :class:`heatbath.tuning.TuneResult` (or its ``table``): each
        candidate's KSD of each round at the time (since ``tune`` began) the round ended; or a
        Result, a list of Results or a dict label -> Result run with
        ``record_unconstrained=True``: the KSD (full-data scores, at most ``max_draws`` evenly
        spaced draws) of its first k draws, at ``num_points`` values of k, against the time
        they were ready (``compile_time`` + the sampling time in proportion to k: a constant
        rate is assumed).
      labels: line labels (default: the candidates' hyperparameters, the dict's keys, or
        ``run i``).
      ax: an axes to draw on (default: a new figure).
      ksd_kwargs: passed to :func:`heatbath.diagnostics.ksd` for runs.

    Returns:
      The Figure (one axes, one line per run or candidate).
    """
    plt = _pyplot()
    fig, ax = (plt.subplots(figsize=(6.0, 4.0)) if ax is None else (ax.figure, ax))
    if _is_tuning(results_or_table):
        table = getattr(results_or_table, "table", results_or_table)
        curves = [(np.asarray(r["clock"], float), np.asarray(r["ksd"], float)) for r in table]
        names = [_candidate_label(r) for r in table]
        ax.set_xlabel("seconds since tuning began")
    else:
        runs = results_or_table
        if isinstance(runs, dict):
            names, runs = list(runs), list(runs.values())
        else:
            runs = list(runs) if isinstance(runs, (list, tuple)) else [runs]
            names = [f"run {i}" for i in range(len(runs))]
        curves = [_run_curve(r, num_points, max_draws, ksd_kwargs) for r in runs]
        ax.set_xlabel("wall-clock seconds (compile included)")
    names = list(labels) if labels is not None else names
    for (t, v), name in zip(curves, names):
        ok = np.isfinite(v)
        ax.plot(t[ok], v[ok], marker="o", ms=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylabel("KSD (IMQ, full-data scores)")
    ax.legend(fontsize=7)
    return fig


def plot_tuning(tune_result, *, ax=None):
    """A tuning's table: the KSD of every candidate in every round it ran (log scale).

    Each candidate is a line over the rounds it survived; the winner is drawn thick, the
    candidates that diverged are listed in the title (they have no finite KSD).

    Returns:
      The Figure (one axes: x ``round``, y ``KSD``, one line per candidate that scored).
    """
    plt = _pyplot()
    table = getattr(tune_result, "table", tune_result)
    if not _is_tuning(table):
        raise TypeError("plot_tuning takes a TuneResult (hb.tune) or its table")
    fig, ax = (plt.subplots(figsize=(6.0, 4.0)) if ax is None else (ax.figure, ax))
    diverged = []
    for row in table:
        v = np.asarray(row["ksd"], float)
        if not np.isfinite(v).any():
            diverged.append(_candidate_label(row))
            continue
        best = row["status"] == "best"
        rounds = np.arange(1, len(v) + 1)
        ax.plot(rounds[np.isfinite(v)], v[np.isfinite(v)], marker="o", lw=2.5 if best else 1.0,
                label=_candidate_label(row) + (" (best)" if best else ""))
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("KSD")
    width = max(len(r["ksd"]) for r in table)
    ax.set_xticks(range(1, width + 1))
    family = getattr(tune_result, "family", "")
    title = f"successive halving{' (' + family + ')' if family else ''}: KSD per round"
    if diverged:
        title += "\ndiverged: " + "; ".join(diverged)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig
