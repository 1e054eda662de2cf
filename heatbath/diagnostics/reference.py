r"""A gold standard for any model: long NUTS runs, diagnosed, summarised and cached.

``hb.reference(model, data=...)`` runs the No-U-Turn sampler (Hoffman & Gelman 2014) on the
model's exact, full-data log density in heatbath's unconstrained space (the
:class:`~heatbath.models.target.Target` that ``hb.models.from_numpyro`` builds, Jacobians
included) and returns the posterior moments on the user's (constrained) scale with their Monte
Carlo errors, for judging a stochastic-gradient sampler or a VI fit where no bundled reference
(``hb.models.reference(name)``) exists::

    ref = hb.reference(model, data={"X": X, "y": y})   # minutes the first time, then cached
    ref.mean["beta"], ref.sd["beta"], ref.mcse_mean["beta"]
    ref.compare(result.samples)["max_abs_z"]          # as ReferencePosterior.compare
    ref.summary()                                      # a pandas DataFrame, one row per entry

Backends: ``"blackjax"`` (default; ``blackjax.window_adaptation`` + ``blackjax.nuts``) or
``"numpyro"`` (``numpyro.infer.NUTS`` on the same log density). Both adapt a step size and a
diagonal mass matrix per chain with Stan's windowed scheme. Defaults: 4 chains x 2,000 warmup x
5,000 draws (20,000 draws: Monte Carlo errors of the means about 1% of a posterior sd for a
well-mixing model), target acceptance 0.95 (posteriordb's), float64 (``x64=True`` enables 64-bit JAX inside
the call only, and float data are converted to float64; ``x64=False`` runs in float32).

(In ``heatbath.diagnostics`` the function ``reference`` shadows this module's name: import the
module's other names with ``from heatbath.diagnostics.reference import Reference``.)

Checks (ArviZ: rank-normalised split R-hat, bulk and tail ESS, Vehtari et al. 2021): every
non-constant entry needs R-hat <= ``max_rhat`` (1.01) and bulk and tail ESS >= ``min_ess``
(default 100 per chain), and no transition may diverge. A failed check raises
:class:`ReferenceCheckError` (``on_fail="raise"``, default; the reference is on the error's
``reference`` attribute, and cached) or warns (``on_fail="warn"``). Cached by a digest of the
model's program, its data and the run's settings (:mod:`heatbath.diagnostics.reference_cache`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import numbers
import re
import time
import warnings
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from heatbath.diagnostics import reference_cache, reference_nuts
from heatbath.drivers.settings import data_digest, model_digest
from heatbath.models.numpyro_bridge import from_numpyro
from heatbath.models.target import Target

__all__ = ["reference", "Reference", "ReferenceCheckError"]


class ReferenceCheckError(ValueError):
    """The NUTS run failed its checks; ``err.reference`` holds what it computed."""

    def __init__(self, message: str, reference: "Reference"):
        super().__init__(message)
        self.reference = reference


def _flat_names(site: str, shape: tuple) -> list:
    if not shape:
        return [site]
    return [f"{site}[{', '.join(map(str, i))}]" for i in np.ndindex(*shape)]


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """Reference posterior moments from a diagnosed NUTS run (see :func:`reference`).

    Attributes:
      name: the target's name (the NumPyro model's function name).
      reference: site -> ``{"mean", "sd", "mcse_mean", "mcse_sd", "ess_bulk", "ess_tail",
        "rhat", "q05", "q50", "q95"}``, float64 arrays shaped like the site on the constrained
        scale (deterministic sites included), as ``hb.models.reference(name).reference``.
      draws: site -> ``(chain, draw, *site_shape)`` float64 draws, or None (``keep_draws=False``).
      diagnostics: ``divergences`` (total), ``divergences_per_chain``, ``step_size`` (per
        chain), ``accept_rate`` and ``num_steps`` (means over draws), ``max_rhat``,
        ``min_ess_bulk``, ``min_ess_tail``, ``problems`` (why the checks fail; empty if ok).
      settings: the run's settings (backend and version, chains, warmup, draws, seed, ...).
      key: the cache key.  from_cache: loaded from the cache.  wall_time: the NUTS run's seconds.
    """

    name: str
    reference: dict = dataclasses.field(repr=False)
    draws: Optional[dict] = dataclasses.field(repr=False)
    diagnostics: dict = dataclasses.field(repr=False)
    settings: dict = dataclasses.field(repr=False)
    key: str = ""
    from_cache: bool = False
    wall_time: float = 0.0

    @property
    def params(self) -> tuple:
        return tuple(self.reference)

    def _stat(self, stat: str) -> dict:
        return {site: st[stat] for site, st in self.reference.items()}

    mean = property(lambda self: self._stat("mean"), doc="site -> posterior mean")
    sd = property(lambda self: self._stat("sd"), doc="site -> posterior sd (ddof=1)")
    mcse_mean = property(lambda self: self._stat("mcse_mean"), doc="site -> Monte Carlo error of the mean")
    mcse_sd = property(lambda self: self._stat("mcse_sd"), doc="site -> Monte Carlo error of the sd")
    ess = property(lambda self: self._stat("ess_bulk"), doc="site -> bulk ESS")
    rhat = property(lambda self: self._stat("rhat"), doc="site -> rank-normalised split R-hat")

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.diagnostics["problems"]

    def summary(self):
        """A pandas DataFrame, one row per entry (``theta[0]``, ``W[0, 1]``: ArviZ's names,
        0-based), columns mean, sd, mcse_mean, mcse_sd, ess_bulk, ess_tail, r_hat, q05, q50, q95."""
        import pandas as pd

        rows, index = [], []
        for site, st in self.reference.items():
            index += _flat_names(site, np.shape(st["mean"]))
            rows.append(np.stack([np.ravel(st[s]) for s in reference_cache.STATS], axis=1))
        columns = [("r_hat" if s == "rhat" else s) for s in reference_cache.STATS]
        return pd.DataFrame(np.concatenate(rows), index=index, columns=columns)

    def compare(self, samples: Mapping[str, Any], params: Optional[Sequence[str]] = None) -> dict:
        """As :meth:`heatbath.models.ReferencePosterior.compare`: per parameter the pooled
        mean's distance z = |mean - ref mean| / ref sd and the ratio sd / ref sd; returns
        ``{"per_param": {p: {"z", "sd_ratio"}}, "max_abs_z", "sd_ratio_min", "sd_ratio_max"}``."""
        names = [p for p in self.reference if p in samples] if params is None else list(params)
        if not names:
            raise ValueError(f"no reference parameter in samples; reference has {list(self.reference)}")
        per_param, zs, ratios = {}, [], []
        for p in names:
            if p not in self.reference:
                raise ValueError(f"no reference for {p!r}; have {list(self.reference)}")
            if p not in samples:
                raise ValueError(f"{p!r} not in samples")
            ref = self.reference[p]
            x = np.asarray(samples[p], np.float64)
            shape = np.shape(ref["mean"])
            if x.ndim != 2 + len(shape) or x.shape[2:] != shape or x.shape[0] * x.shape[1] < 2:
                raise ValueError(f"samples[{p!r}] has shape {x.shape}, expected (chain, draw) + {shape}, 2+ draws")
            flat = x.reshape((-1,) + shape)
            z = np.abs(flat.mean(0) - ref["mean"]) / ref["sd"]
            r = flat.std(0, ddof=1) / ref["sd"]
            per_param[p] = {"z": z, "sd_ratio": r}
            zs.append(np.ravel(z))
            ratios.append(np.ravel(r))
        zs, ratios = np.concatenate(zs), np.concatenate(ratios)
        return {"per_param": per_param, "max_abs_z": float(zs.max()),
                "sd_ratio_min": float(ratios.min()), "sd_ratio_max": float(ratios.max())}

    def __repr__(self) -> str:
        d = self.diagnostics
        shapes = {p: np.shape(s["mean"]) for p, s in self.reference.items()}
        return (f"Reference(name={self.name!r}, params={shapes}, backend={self.settings['backend']!r}, "
                f"draws={self.settings['num_chains']}x{self.settings['num_samples']}, "
                f"divergences={d['divergences']}, max_rhat={d['max_rhat']:.4f}, "
                f"min_ess_bulk={d['min_ess_bulk']:.0f}, ok={self.ok}, from_cache={self.from_cache})")


# ---------------------------------------------------------------------------------------------


def _as_float64(tree):
    def conv(x):
        if isinstance(x, (np.ndarray, jax.Array)) and np.issubdtype(x.dtype, np.floating):
            return np.asarray(x, np.float64)
        return x

    return jax.tree.map(conv, tree)


def _target(model, data, x64: bool) -> Target:
    """The model's Target (built afresh, not through the drivers' cache: it is built under
    ``jax_enable_x64`` with float64 data), float data in float64 when ``x64``."""
    if isinstance(model, Target):
        if data is None and not x64:
            return model
        return model.with_data(_as_float64(model.data if data is None else data) if x64 else data)
    if not callable(model):
        raise TypeError(f"expected a NumPyro model (a callable) or a heatbath Target, got {type(model).__name__}")
    if data is None:
        args, kwargs = (), {}
    elif isinstance(data, dict):
        args, kwargs = (), data
    elif isinstance(data, (tuple, list)):
        args, kwargs = tuple(data), {}
    else:
        raise TypeError("data for a NumPyro model must be a dict of keyword arguments or a tuple of positional "
                        f"ones, got {type(data).__name__}")
    if x64:
        args, kwargs = _as_float64(args), _as_float64(kwargs)
    return from_numpyro(model, *args, **kwargs)


def _program_digest(target: Target) -> str:
    """:func:`heatbath.drivers.settings.model_digest` (the jaxpr of ``target.terms`` on two data
    rows, with its constants); for a target that cannot run on two rows (per-observation latent
    variables in its data plate) the same digest on the full data."""
    try:
        digest = model_digest(target)
    except Exception:  # noqa: BLE001 -- e.g. a full-batch-only model traced on 2 of its rows
        digest = None
    if digest is not None:
        return digest
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target.example_params())
    closed = jax.make_jaxpr(target.terms)(params, target.data)
    h = hashlib.blake2b(digest_size=12)
    h.update(re.sub(r" at 0x[0-9a-fA-F]+", "", str(closed.jaxpr)).encode())
    for const in closed.consts:
        arr = np.asarray(const)
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return "full:" + h.hexdigest()


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _statistics(draws: dict) -> dict:
    """Per-site moments, quantiles and ArviZ's MCSE, ESS and R-hat (float64)."""
    import arviz as az

    ds = az.convert_to_dataset({k: np.asarray(v, np.float64) for k, v in draws.items()})
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # constant entries: NaN ESS / R-hat
        diag = {"ess_bulk": az.ess(ds, method="bulk"), "ess_tail": az.ess(ds, method="tail"),
                "rhat": az.rhat(ds), "mcse_mean": az.mcse(ds, method="mean"), "mcse_sd": az.mcse(ds, method="sd")}
    out = {}
    for site, x in draws.items():
        flat = np.asarray(x, np.float64).reshape((-1,) + x.shape[2:])
        q = np.quantile(flat, [0.05, 0.5, 0.95], axis=0)
        st = {"mean": flat.mean(0), "sd": flat.std(0, ddof=1), "q05": q[0], "q50": q[1], "q95": q[2]}
        st.update({k: np.asarray(v[site].values, np.float64) for k, v in diag.items()})
        out[site] = {k: np.asarray(st[k], np.float64).reshape(x.shape[2:]) for k in reference_cache.STATS}
    return out


def _diagnose(stats: dict, run: dict, max_rhat: float, min_ess: float) -> dict:
    """The checks on top of the run's own diagnostics (constant entries, sd = 0, are skipped)."""
    worst = {}
    for k, stat, sign in (("max_rhat", "rhat", -1), ("min_ess_bulk", "ess_bulk", 1), ("min_ess_tail", "ess_tail", 1)):
        entries = [(np.inf, "")]  # (sign * value, name); NaN on a non-constant entry counts as failing
        for site, st in stats.items():
            live = np.ravel(st["sd"]) > 0
            names = np.array(_flat_names(site, np.shape(st["mean"])))[live]
            values = np.nan_to_num(sign * np.ravel(st[stat])[live], nan=-np.inf)
            entries += zip(values.tolist(), names.tolist())
        value, name = min(entries)
        worst[k] = (sign * value, name)
    problems = []
    if worst["max_rhat"][0] > max_rhat:
        problems.append(f"R-hat {worst['max_rhat'][0]:.4f} > {max_rhat} ({worst['max_rhat'][1]})")
    for k, label in (("min_ess_bulk", "bulk ESS"), ("min_ess_tail", "tail ESS")):
        if worst[k][0] < min_ess:
            problems.append(f"{label} {worst[k][0]:.0f} < {min_ess:.0f} ({worst[k][1]})")
    if run["divergences"]:
        problems.append(f"{run['divergences']} divergent transitions (per chain: {run['divergences_per_chain']})")
    return dict(run, **{k: v[0] for k, v in worst.items()}, problems=problems)


def _finish(ref: Reference, on_fail: str) -> Reference:
    if ref.ok:
        return ref
    msg = (f"the reference NUTS run for {ref.name!r} failed its checks: {'; '.join(ref.diagnostics['problems'])}. "
           "Run longer (num_warmup, num_samples), raise target_accept or reparametrise the model")
    if on_fail == "raise":
        raise ReferenceCheckError(msg + " (the result is on this error's .reference)", ref)
    warnings.warn(msg, UserWarning, stacklevel=3)
    return ref


def _constrained_draws(target: Target, unravel, positions: np.ndarray, sites: Sequence[str], block: int = 1000):
    """site -> (chain, draw, *shape) float64, the draws constrained in blocks of ``block``."""
    constrain = jax.jit(jax.vmap(lambda x: {s: v for s, v in target.constrain(unravel(x)).items() if s in sites}))
    chains = []
    for chain in positions:
        parts = [jax.device_get(constrain(chain[i:i + block])) for i in range(0, len(chain), block)]
        chains.append({s: np.concatenate([np.asarray(p[s], np.float64) for p in parts]) for s in sites})
    return {s: np.stack([c[s] for c in chains]) for s in sites}


def reference(model, data=None, *, num_chains: int = 4, num_warmup: int = 2000, num_samples: int = 5000,
              seed: int = 0, backend: str = "blackjax", target_accept: float = 0.95, x64: bool = True,
              sites: Optional[Sequence[str]] = None, keep_draws: bool = True, cache: bool = True,
              cache_dir=None, max_rhat: float = 1.01, min_ess: Optional[float] = None,
              on_fail: str = "raise") -> Reference:
    """Reference posterior moments of ``model`` on ``data`` from a long, diagnosed NUTS run.

    Args:
      model: a NumPyro model (``data``: its keyword arguments as a dict, or positional ones as
        a tuple) or a heatbath Target (``data``, if given, replaces its data). No data plate is
        needed: the log density is always the full-data one.
      num_chains, num_warmup, num_samples: chains, adaptation steps and kept draws per chain.
      seed: an int; chain c starts from ``init_params(fold_in(key(seed), c))`` (uniform(-2, 2)
        unconstrained, redrawn where the density is not finite).
      backend: ``"blackjax"`` or ``"numpyro"``.  target_accept: the adaptation's target.
      x64: run in float64 (64-bit JAX inside this call only; float data converted).
      sites: the constrained sites to summarise (default: every site ``constrain`` returns,
        deterministic ones included; restrict it when a per-observation deterministic site
        would make the draws large).
      keep_draws: keep (and cache) the draws.
      cache, cache_dir: read and write the cache (default directory ``$HEATBATH_CACHE/reference``
        or ``~/.cache/heatbath/reference``). A cached file that fails its checksums is
        recomputed, with a warning.
      max_rhat, min_ess: the checks (default ``min_ess``: 100 per chain); on_fail: ``"raise"``
        (:class:`ReferenceCheckError`) or ``"warn"``.

    Returns:
      a :class:`Reference`.
    """
    num_chains = _check_int(num_chains, "num_chains", 1)
    num_warmup = _check_int(num_warmup, "num_warmup", 1)
    num_samples = _check_int(num_samples, "num_samples", 100)
    seed = _check_int(seed, "seed", 0)
    if backend not in reference_nuts.RUNNERS:
        raise ValueError(f"unknown backend {backend!r}: use one of {sorted(reference_nuts.RUNNERS)}")
    if not (isinstance(target_accept, numbers.Real) and 0 < target_accept < 1):
        raise ValueError(f"target_accept must be in (0, 1), got {target_accept!r}")
    if on_fail not in ("raise", "warn"):
        raise ValueError(f"on_fail must be 'raise' or 'warn', got {on_fail!r}")
    if not (isinstance(max_rhat, numbers.Real) and max_rhat >= 1):
        raise ValueError(f"max_rhat must be a number >= 1, got {max_rhat!r}")
    min_ess = 100.0 * num_chains if min_ess is None else float(min_ess)
    if isinstance(sites, str):
        sites = [sites]
    settings = {"backend": backend, "backend_version": importlib.metadata.version(backend), "jax": jax.__version__,
                "num_chains": num_chains, "num_warmup": num_warmup, "num_samples": num_samples, "seed": seed,
                "target_accept": float(target_accept), "x64": bool(x64),
                "sites": None if sites is None else sorted(map(str, sites))}
    with jax.enable_x64(bool(x64)):
        target = _target(model, data, bool(x64))
        if target.discrete_error:
            raise ValueError(f"NUTS needs gradients: {target.discrete_error}")
        flat0, unravel = ravel_pytree(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target.example_params()))
        shapes = jax.eval_shape(lambda x: target.constrain(unravel(x)), flat0)
        chosen = list(shapes) if sites is None else list(sites)
        unknown = [s for s in chosen if s not in shapes]
        if unknown:
            raise ValueError(f"sites {unknown} are not sites of the model; it has {list(shapes)}")
        key = reference_cache.cache_key(_program_digest(target), data_digest(target), settings)
        directory = reference_cache.cache_dir(cache_dir)
        diag_args = (max_rhat, min_ess)
        if cache:
            got = reference_cache.load(directory, key, keep_draws)
            if isinstance(got, str):
                warnings.warn(f"the cached reference is invalid ({got}): recomputing it", UserWarning, stacklevel=2)
            elif got is not None:
                record, stats, draws = got
                ref = Reference(name=record["name"], reference=stats, draws=draws, settings=record["settings"],
                                diagnostics=_diagnose(stats, record["run"], *diag_args), key=key,
                                from_cache=True, wall_time=float(record["wall_time"]))
                return _finish(ref, on_fail)

        def logdensity(x):
            return target.logdensity(unravel(x))

        k_init, k_run = jax.random.split(jax.random.key(seed))
        start = time.perf_counter()
        x0 = reference_nuts.starting_points(target, logdensity, lambda p: ravel_pytree(p)[0], k_init, num_chains)
        out = reference_nuts.RUNNERS[backend](logdensity, x0, k_run, num_warmup, num_samples, float(target_accept))
        positions = np.asarray(out["positions"])
        if positions.shape != (num_chains, num_samples, flat0.size):
            raise RuntimeError(f"the {backend} run returned draws of shape {positions.shape}")  # pragma: no cover
        draws = _constrained_draws(target, unravel, positions, chosen)
        wall = time.perf_counter() - start
    div = np.asarray(out["diverging"]).sum(axis=1)
    run = {"divergences": int(div.sum()), "divergences_per_chain": div.astype(int).tolist(),
           "step_size": np.asarray(out["step_size"], np.float64).tolist(),
           "accept_rate": float(np.mean(out["accept_rate"])), "num_steps": float(np.mean(out["num_steps"]))}
    stats = _statistics(draws)
    ref = Reference(name=target.name, reference=stats, draws=draws if keep_draws else None, settings=settings,
                    diagnostics=_diagnose(stats, run, *diag_args), key=key, wall_time=wall)
    if cache:
        reference_cache.save(directory, key, stats=stats, draws=ref.draws,
                             meta={"name": target.name, "settings": settings, "run": run, "wall_time": wall})
    return _finish(ref, on_fail)
