"""The end-of-run self-diagnosis of ``hb.sample``: does the run look like the posterior?

ESS and R-hat cannot see the O(h) bias of a stochastic-gradient chain, so three physical checks
come with them (each cheap next to the run, each skipped where it does not apply):

- **Chains agree and mixed** (every sampler, ``checks="basic"`` and up): rank-normalised split
  R-hat and bulk ESS (ArviZ's definitions, computed in NumPy by
  ``heatbath.diagnostics.rank_stats``) over the chains that did not diverge; a warning when
  R-hat > 1.01 (Vehtari et al. 2021) or the bulk ESS of some coordinate is below 100.
- **Configurational temperature** (``checks="full"``): for a posterior pi ~ exp(-U / T),
  integration by parts gives E|grad U|^2 = T E[tr Hess U]; the ratio
  T_conf = mean |grad U|^2 / mean tr Hess U over the draws is T for exact draws and T s^2 for
  draws whose spread is s times too wide (a mean shifted by delta sd along an eigenvector
  raises it by ~ delta^2 / d). Evaluated with full-data gradients at up to 128 of the
  recorded unconstrained draws (second half of each chain), tr Hess U by Hutchinson's
  estimator (4 Rademacher probes), the standard error from 8 batches of consecutive draws.
  Warned about when |T_conf / T - 1| > 0.2 and 3 standard errors away.
- **Kinetic temperature** (SGHMC and its splittings, every check level): 2 mean(kinetic
  energy) / d must be T at stationarity; a friction too low for the gradient noise heats it
  (T + h v / (2 C); the automatic friction keeps it below 1.2 T). Warned about when off by
  more than 25% and 3 standard errors.
- **Predicted noise bias** (SGLD, pSGLD and SGHMC with a constant step, ``checks="full"``):
  the measured curvature and gradient noise at the chains' last states give the
  linearised variance inflation h lambda_max(H + V / T) / 2 (SGLD; see
  :mod:`heatbath.drivers.autotune`) or the excess temperature h v / (2 C) (SGHMC); warned
  about above 0.25 (sd +12%).

Everything is in ``Result.checks``: the numbers, and the warnings raised.
"""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.drivers import keys as _keys
from heatbath.drivers.hostmem import without_huge_pages
from heatbath.diagnostics import rank_stats
from heatbath.kernels import curvature, hashrand
from heatbath.kernels import tree as _tree
from heatbath.kernels.schedules import is_constant
from heatbath.models.target import SYMMETRIC_ATTR  # noqa: F401 - a model's symmetric sites (network_model sets it)

__all__ = ["LEVELS", "default_level", "run_checks"]

LEVELS = ("full", "basic", "off")
RHAT_MAX = 1.01
RHAT_UNUSABLE = 1.5  # beyond it the warning says the draws are not usable as they are
ESS_MIN = 100.0
# T_conf / T outside this range warns. T_conf is a variance ratio (T s^2 for draws s times too
# wide), weighted by curvature. The automatic step size itself allows a variance inflation of 1.2
# in the worst direction (h = 0.4 / lambda_max(H + V/T)), so runs that work as designed read up
# to about 1.2-1.35 (the 38 defaults-table rows that meet the bars read 0.89-1.34, sd ratios
# 0.91-1.13); the range's ends are sds about 0.84 and 1.18 times the posterior's.
TCONF_RANGE = (0.7, 1.4)
TKIN_TOL = 0.25
NOISE_MAX = 0.25
MAX_POINTS = 128
PROBES = 4
MAX_RHAT_COORDS = 2000


def default_level() -> str:
    """``checks=None``: ``$HEATBATH_CHECKS`` if set (the test suite uses ``basic``), else ``full``."""
    level = os.environ.get("HEATBATH_CHECKS", "full")
    return level if level in LEVELS else "full"


def _flat_draws(samples: dict, chains, max_coords: int | None = None) -> np.ndarray:
    """The floating draws of ``chains`` as (chain, draw, coordinate) float64; with more than
    ``max_coords`` coordinates in all, a fixed even spread of ``max_coords`` of them, picked
    before the conversion (a network's 1,000 draws of 84k weights are 670 MB in float64)."""
    arrays = []
    for v in samples.values():
        a = np.asarray(v)
        if np.issubdtype(a.dtype, np.floating):
            arrays.append(a.reshape(a.shape[0], a.shape[1], -1))
    total = sum(a.shape[2] for a in arrays)
    if not total:
        return np.zeros((len(chains), 0, 0))
    pick = None
    if max_coords is not None and total > max_coords:
        pick = np.linspace(0, total - 1, max_coords).astype(int)
    cols, start = [], 0
    for a in arrays:
        if pick is not None:  # the columns first: a[chains] alone would copy every draw
            a, start = a[:, :, pick[(pick >= start) & (pick < start + a.shape[2])] - start], start + a.shape[2]
        cols.append(a[chains].astype(np.float64))
    return np.concatenate(cols, axis=2)


def _rhat_ess(samples: dict, chains) -> dict:
    """Rank-normalised split R-hat and bulk ESS (ArviZ's definitions, computed in NumPy by
    :mod:`heatbath.diagnostics.rank_stats`: importing ArviZ took seconds of a first call); for
    very large models on a fixed spread of ``MAX_RHAT_COORDS`` coordinates."""
    x = _flat_draws(samples, chains, MAX_RHAT_COORDS)
    if x.size == 0 or x.shape[1] < 4:
        return {}
    ok = np.all(np.isfinite(x), axis=(0, 1)) & (np.std(x, axis=(0, 1)) > 0)
    if not ok.any():
        return {}
    rhat, ess = rank_stats.rhat_and_bulk_ess(x[:, :, ok])
    out = {"rhat_max": float(np.nanmax(rhat)) if np.isfinite(rhat).any() else float("nan")}
    if np.isfinite(ess).any():
        out.update(ess_bulk_min=float(np.nanmin(ess)), ess_bulk_median=float(np.nanmedian(ess)))
    else:
        out.update(ess_bulk_min=float("nan"), ess_bulk_median=float("nan"))
    return out


FUNCTION_ROWS = 32  # training rows whose log-likelihood stands in for symmetric sites in R-hat and ESS
ROWS_CHUNK_BYTES = 1 << 26  # unconstrained draws per compiled chunk of the rows' log-likelihood


def symmetric_sites(target) -> tuple:
    """The sample sites of ``target`` whose posterior has exact symmetries (a network's weights:
    hidden units can be permuted and, with odd activations, flipped), so that their per-coordinate
    R-hat and ESS do not measure convergence (``Target.symmetric_sites``); () for other targets."""
    return tuple(getattr(target, "symmetric_sites", ()) or ()) if target is not None else ()


def _convergence_statistics(result, sym) -> tuple:
    """(statistics for R-hat and ESS, what they are). Without symmetric sites: the draws. With
    them: the log-likelihood of ``FUNCTION_ROWS`` training rows at every draw (invariant under the
    symmetries: what the chains predict) and the other sites (evenly thinned so that the rows stay
    within ``MAX_RHAT_COORDS``); where the rows cannot be computed (a full-batch-only target), the
    run's log density per step instead."""
    if not sym:
        return result.samples, None
    stats, what = {}, []
    from heatbath.diagnostics import loglik

    t = result.target
    idx = np.unique(np.linspace(0, t.num_data - 1, min(FUNCTION_ROWS, t.num_data)).astype(int))
    try:
        d = sum(int(np.prod(np.shape(v)[2:])) for v in result.samples.values())  # values per draw
        ll = loglik.loglik_of_rows(t, result.samples, idx, result.unconstrained,
                                   chunk_size=max(1, ROWS_CHUNK_BYTES // (4 * max(d, 1))))
        stats["loglik_rows"] = np.asarray(ll, np.float64)
        what.append(f"the log-likelihood of {len(idx)} training rows")
    except Exception as e:  # noqa: BLE001 - a failed check must not lose the run
        if "lp" in result.stats:
            stats["lp"] = np.asarray(result.stats["lp"], np.float64)
            what.append(f"the log density of each step (the training rows' log-likelihood was not available: "
                        f"{str(e).splitlines()[0][:120] if str(e) else type(e).__name__})")
    others = {k: v for k, v in result.samples.items() if k not in sym}
    if others:
        flat = np.concatenate([np.reshape(np.asarray(v, np.float64), np.shape(v)[:2] + (-1,)) for v in others.values()],
                              axis=-1)
        room = max(1, MAX_RHAT_COORDS - FUNCTION_ROWS - 1)
        if flat.shape[-1] > room:
            flat = flat[..., np.linspace(0, flat.shape[-1] - 1, room).astype(int)]
        stats["other_sites"] = flat
        what.append("the other sites" + (f" ({room} of their coordinates)" if flat.shape[-1] == room else ""))
    head = f"R-hat and ESS over {', '.join(what)}" if what else "no R-hat or ESS"
    return stats, (f"{head}: the sites {list(sym)[:3]}{'...' if len(sym) > 3 else ''} have exact symmetries (a "
                   "network's hidden units can be permuted), so their own R-hat does not measure convergence")


def _frozen(unconstrained, chains) -> dict:
    """Coordinates of the unconstrained draws that never changed in a chain (every draw equal).

    With T > 0 every step adds noise to every coordinate, so a coordinate that never moves is
    one whose steps are all below its floating-point rounding: a chain stuck at the edge of the
    support (a scale at 0, where an unconstrained coordinate runs off to -infinity) with a tiny
    step size. R-hat leaves such coordinates out (zero variance), so they need their own check."""
    if unconstrained is None:
        return {}
    # Compared in each leaf's own dtype (an exact equality: no float64 copy of every draw).
    per_chain, total = np.zeros(len(chains), np.int64), 0
    for leaf in jax.tree.leaves(unconstrained):
        a = np.asarray(leaf)
        if not np.issubdtype(a.dtype, np.floating) or a.ndim < 2 or a.shape[1] < 2:
            continue
        a = a[chains].reshape(len(chains), a.shape[1], -1)
        per_chain += np.all(a == a[:, :1, :], axis=1).sum(axis=1)
        total += a.shape[2]
    if not per_chain.any():
        return {}
    return {"frozen_coordinates": {int(chains[i]): int(n) for i, n in enumerate(per_chain) if n},
            "frozen_of": int(total)}


def _batch_ratio(a: np.ndarray, b: np.ndarray, batches: int = 8):
    ratio = float(np.mean(a) / np.mean(b))
    n = len(a) // batches
    if n < 1:
        return ratio, float("nan")
    parts = [np.mean(a[i * n:(i + 1) * n]) / np.mean(b[i * n:(i + 1) * n]) for i in range(batches)]
    return ratio, float(np.std(parts, ddof=1) / np.sqrt(batches))


def _configurational(target, unconstrained, chains, key) -> dict:
    """T_conf from up to MAX_POINTS unconstrained draws of the given chains (second halves).

    |grad U|^2 is evaluated on all the data; tr Hess U (Hutchinson, PROBES Rademacher probes) on
    the automatic step size's curvature rows (all rows up to ``autotune.CURVATURE_ROWS``, else
    that many drawn without replacement and rescaled to N: an unbiased trace at a cost that does
    not grow with N; at N = 50,000 the check took 2.5 s per call on the full data)."""
    from heatbath.drivers import autotune

    leaves = jax.tree.leaves(unconstrained)
    num_draws = leaves[0].shape[1]
    if num_draws < 8:
        return {}
    per_chain = max(1, MAX_POINTS // len(chains))
    idx = np.unique(np.linspace(num_draws // 2, num_draws - 1, per_chain).astype(int))
    pts = jax.tree.map(lambda x: np.asarray(x)[np.asarray(chains)][:, idx].reshape((-1,) + x.shape[2:]),
                       unconstrained)
    rows, _ = autotune.curvature_rows(target, _keys.fold_in(key, 7))

    def build():
        def one(p, k, rows):
            def u(q):
                return -target.logdensity(q)

            def u_rows(q):
                return -target.logdensity(q, rows)

            g = jax.grad(u)(p)
            # Signs from hashed counters (heatbath.kernels.hashrand): threefry under this vmap
            # added about 0.7 s to the program's compile.
            w = hashrand.words(k)
            probes = jax.vmap(lambda j: hashrand.rademacher_like(w, p, stream=j))(jnp.arange(PROBES, dtype=jnp.uint32))
            quad = jax.vmap(lambda z: _tree.dot(z, curvature.hvp(u_rows, p, z)))(probes)
            return _tree.sq_norm(g), jnp.mean(quad)

        return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))

    fn = target.memo("selfcheck_tconf", build)
    n = jax.tree.leaves(pts)[0].shape[0]
    a, b = fn(pts, _keys.chain_keys(key, n), rows)  # (derived on the host: no program to compile)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))) or np.mean(b) <= 0:
        return {}
    ratio, se = _batch_ratio(a, b)
    return {"configurational_temperature": ratio, "configurational_temperature_se": se, "points": int(n)}


def tconf_alarm(tc: float, se: float, T: float) -> bool:
    """Whether a configurational temperature ``tc`` (standard error ``se``) warns at temperature T:
    outside ``TCONF_RANGE`` x T, by more than 3 standard errors from T."""
    return not TCONF_RANGE[0] <= tc / T <= TCONF_RANGE[1] and abs(tc - T) > 3 * se


def _kinetic(stats, chains, d) -> dict:
    ke = stats.get("kinetic_energy")
    if ke is None or d == 0:
        return {}
    ke = np.asarray(ke, np.float64)[np.asarray(chains)]
    half = ke[:, ke.shape[1] // 2:]
    if half.shape[1] < 8:
        return {}
    tk = 2.0 * half / d
    # Batch means over time (chains pooled per batch) for the standard error.
    ratio = float(np.mean(tk))
    nb = 8
    n = half.shape[1] // nb
    parts = [np.mean(tk[:, i * n:(i + 1) * n]) for i in range(nb)]
    return {"kinetic_temperature": ratio, "kinetic_temperature_se": float(np.std(parts, ddof=1) / np.sqrt(nb))}


def _noise_bias(target, sampler, estimator, est_state, positions, key, batch_size) -> dict:
    from heatbath.drivers import autotune

    base = sampler.name.split("-")[0]
    if base not in ("sgld", "psgld", "sghmc") or target.nonsmooth is not None:
        return {}
    hp = sampler.hyperparameters
    h = hp.get("step_size")
    T = is_constant(sampler.temperature)
    if not isinstance(h, (int, float)) or T is None or T <= 0:
        return {}
    if base == "psgld":
        return {}  # pSGLD's metric moves with its RMSprop state: the linear bound is not its own
    try:
        m, _ = autotune._measure(target, sampler, base, estimator, est_state, positions, key, batch_size, T,
                                 need=("lam_v",) if base == "sghmc" else ("lam_hv",))
    except ValueError:
        return {}
    if base == "sghmc":
        C = hp.get("friction")
        mass = hp.get("mass", 1.0)
        if not isinstance(C, (int, float)) or not isinstance(mass, (int, float)):
            return {}
        excess = float(np.max(m["lam_v"]) * h / (2.0 * C / mass) / T)
        return {"predicted_excess_temperature": excess, "lam_v": float(np.max(m["lam_v"]))}
    infl = float(h * np.max(m["lam_hv"]) / 2.0)
    return {"predicted_variance_inflation": infl, "lam_hv": float(np.max(m["lam_hv"]))}


@without_huge_pages  # their work arrays without NumPy's huge-page advice (drivers/hostmem.py)
def run_checks(result, sampler, estimator, est_state_fn, batch_size, level, seed_key, run_target=None):
    """Fill ``result.checks`` and warn about what looks wrong. Returns the list of warning messages.

    ``run_target``: the target in the coordinates the sampler ran in (its final state's), when
    they are not ``result.target``'s (:mod:`heatbath.drivers.metric`)."""
    if level == "off":
        return []
    checks, msgs = {"level": level}, []
    div = np.asarray(result.stats["diverging"])
    chains = [c for c in range(div.shape[0]) if not div[c].any()]
    checks["chains_used"] = chains
    if not chains:
        result.checks = checks
        return []
    T = is_constant(sampler.temperature)
    if result.samples:
        conv_stats, over = _convergence_statistics(result, symmetric_sites(getattr(result, "target", None)))
        checks.update(_rhat_ess(conv_stats, chains))
        if over:
            checks["rhat_over"] = over
        if checks.get("rhat_max", 1.0) > RHAT_MAX:
            what = "the two halves of the chain disagree" if len(chains) == 1 else "the chains disagree"
            severe = (" At this level the draws do not represent the posterior: do not use them as they are."
                      if checks["rhat_max"] > RHAT_UNUSABLE else "")
            msgs.append(f"R-hat {checks['rhat_max']:.3f} > {RHAT_MAX}: {what} (different modes, or not mixed yet); "
                        "run longer, and compare the chains' means (Result.samples) for separate modes" + severe
                        + (f" ({over})" if over else ""))
        if checks.get("ess_bulk_min", np.inf) < ESS_MIN:
            msgs.append(f"bulk ESS {checks['ess_bulk_min']:.0f} < {ESS_MIN:.0f} for some coordinate: the draws are "
                        "too autocorrelated for reliable means; run more steps (num_samples or thinning)")
        rounds = ((result.tuning or {}).get("metric") or {}).get("adaptation") or []
        if any(r.get("adapted") for r in rounds) and (checks.get("rhat_max", 1.0) > RHAT_MAX
                                                      or checks.get("ess_bulk_min", np.inf) < ESS_MIN):
            msgs.append(f"the posterior's scales in the typical set differ from its mode's (the metric was refined "
                        f"{sum(bool(r.get('adapted')) for r in rounds)} time(s) in warmup) and the chains still mix "
                        "slowly: the curvature changes along the posterior (a funnel or a curved ridge). In a "
                        "hierarchical model, write the groups the data identify well centred and the weakly "
                        "identified ones non-centred (numpyro.infer.reparam.LocScaleReparam)"
                        + ("" if getattr(sampler, "name", "").startswith("sghmc") and batch_size is None else
                           "; or run SGHMC on full batches (batch_size=None) or larger minibatches: with a quiet "
                           "gradient its friction stays low and its momentum crosses such a ridge (README, "
                           "'Refine the metric where the chains are')"))
    if T and T > 0 and result.target.nonsmooth is None:  # (a proximal step may hold a coordinate at 0 exactly)
        frozen = _frozen(result.unconstrained, chains)
        checks.update(frozen)
        if frozen:
            stuck = frozen["frozen_coordinates"]
            h = (result.tuning or {}).get("step_size", (getattr(sampler, "hyperparameters", {}) or {}).get("step_size"))
            msgs.append(
                f"chain(s) {sorted(stuck)} did not move: {max(stuck.values())} of {frozen['frozen_of']} unconstrained "
                f"coordinates kept one value over every draw, so their draws are unusable (R-hat and ESS leave them "
                f"out). Likely cause: a start at the edge of the support (e.g. a scale at 0, where a failed mode "
                f"search ends: see Result.tuning['init'])"
                + (f" with a step size ({float(h):.3g}) too small to leave it" if isinstance(h, (int, float)) else "")
                + "; give init= values inside the support (init='median' or a dict), or a step_size")
    if "kinetic_energy" in result.stats and T and T > 0:
        d = _tree.size(jax.tree.map(lambda x: x[0], result.final_state.position))
        kin = _kinetic(result.stats, chains, d)
        checks.update(kin)
        if kin:
            tk, se = kin["kinetic_temperature"], kin["kinetic_temperature_se"]
            if abs(tk / T - 1) > TKIN_TOL and abs(tk - T) > 3 * se:
                msgs.append(f"kinetic temperature {tk:.3g} where T = {T:g} is expected: the friction is too low for "
                            "the gradient noise (or the step too large); raise friction or batch_size, or lower the "
                            "step size (or leave them to heatbath: step_size=None, friction=None)")
    if level == "full" and T and T > 0:
        # The configurational temperature reads grad log p only: not the law of a target with a nonsmooth g.
        if result.unconstrained is not None and result.target.nonsmooth is None:
            conf = _configurational(result.target, result.unconstrained, chains, _keys.fold_in(seed_key, 1))
            checks.update(conf)
            if conf:
                tc, se = conf["configurational_temperature"], conf["configurational_temperature_se"]
                if tconf_alarm(tc, se, T):
                    hot = "wider than the posterior or off its centre" if tc > T else "narrower than the posterior"
                    msgs.append(f"configurational temperature {tc:.3g} +- {se:.2g} where T = {T:g} is expected: the "
                                f"draws look {hot} (as if their variance were {tc / T:.2g} x the posterior's in "
                                f"the stiff directions, sds {np.sqrt(tc / T):.2g} x); likely causes: a step size too "
                                "large for the curvature or the gradient noise (lower it, raise batch_size, or "
                                "step_size=None), or a run too short")
        positions = jax.tree.map(lambda x: x[np.asarray(chains)], result.final_state.position)
        noise = _noise_bias(result.target if run_target is None else run_target, sampler, estimator, est_state_fn(positions), positions,
                            _keys.fold_in(seed_key, 2), batch_size)
        checks.update(noise)
        if noise.get("predicted_variance_inflation", 0.0) > NOISE_MAX:
            msgs.append(f"the step size makes the predicted posterior variance {1 + noise['predicted_variance_inflation']:.2f}"
                        " x too large in the worst direction (h lambda_max(H + V/T) / 2 from the measured curvature and"
                        " gradient noise): lower the step size, raise batch_size, or use step_size=None")
        if noise.get("predicted_excess_temperature", 0.0) > NOISE_MAX:
            tk = checks.get("kinetic_temperature")
            msgs.append(f"the friction is too low for the measured gradient noise: predicted temperature "
                        f"{1 + noise['predicted_excess_temperature']:.2f} T (h v / (2 C)) in the direction of the "
                        "largest gradient noise (v its variance)"
                        + (f"; the kinetic temperature averaged over all directions reads {tk / T:.3g} T"
                           if tk is not None and np.isfinite(tk) else "")
                        + "; raise friction or batch_size, or use friction=None")
    checks["warnings"] = msgs
    result.checks = checks
    return msgs
