r"""Reference posteriors: real models and data with gold-standard posterior moments.

This suite is the yardstick of the package. Each target is a NumPyro model, its data, and the
moments (and, for posteriordb targets, 10 x 1000 draws) of its posterior as computed by a long,
well-diagnosed NUTS run elsewhere. A sampler or VI method is judged by its distance to these
numbers, per unit of time and of gradient evaluations.

Targets (folder name, short alias in brackets):

- ``eight_schools-eight_schools_noncentered`` (``eight_schools_noncentered``): non-centred
  eight schools, posteriordb.
- ``sblri-blr`` (``sblri``): badly scaled Bayesian linear regression, N=100, D=5; exact
  moments by quadrature in ``extra``.
- ``arK-arK`` (``arK``): AR(5) time series, T=200.
- ``gp_pois_regr-gp_pois_regr`` (``gp_pois_regr``): latent GP Poisson regression, N=11;
  needs float64 (see :func:`gp_pois_regr`).
- ``low_dim_gauss_mix-low_dim_gauss_mix`` (``low_dim_gauss_mix``): two-component 1-D Gaussian
  mixture, N=1000.
- ``diamonds-diamonds`` (``diamonds``): brms linear regression, N=5000, 24 strongly
  correlated covariates.
- ``ig_german_credit_numeric_logistic_regression`` (``german_credit``): logistic regression,
  N=1000, D=25, inference_gym.
- ``ig_eight_schools`` (``eight_schools``): centred eight schools with inference_gym's prior.
- ``ig_brownian_motion_missing_middle_observations`` (``brownian_motion``): Gaussian
  state-space model, 30 states, 20 observed, inference_gym; exact posterior and exact
  mean-field VI optimum in ``extra``.

Usage::

    import heatbath as hb
    ref = hb.models.reference("german_credit")
    ref.model(**ref.data)                  # a plain NumPyro model, called with keyword data
    ref.reference["weights"]["mean"]       # (25,) reference posterior mean, constrained scale
    report = ref.compare(result.samples)   # samples: name -> (chain, draw, *shape)
    report["max_abs_z"], report["sd_ratio_min"], report["sd_ratio_max"]
    ref.data_as(np.float64)                # the data in float64, for runs with jax_enable_x64

Conventions every model follows (the rest of the package relies on them):

- ``model(**data)``: keyword arguments only; ``data`` holds numpy arrays (float32 / int32) and
  python scalars (ints; the Brownian-motion noise scales are python floats).
- Every observation sits in one ``numpyro.plate("data", N)``, the *data plate*; ``N`` is
  computed from the arrays (never passed as a separate int), and every array in ``data`` has
  leading axis ``N``. Data are preprocessed for this (AR lag matrix, centred design matrix,
  observed subset of a time series, ...), so no ``NaN`` appears in any data array.
- Per-observation latent variables (the eight schools' ``theta_trans`` / ``school_effects``,
  the GP's ``f_tilde``) sit inside the data plate, which marks those targets as full-batch only
  (``hb.models.from_numpyro`` then refuses to minibatch them, with a clear message). The
  Brownian-motion path ``locs`` (30 states, 20 observed) is global, so that target minibatches.
- No discrete latent sites; supports are declared through constrained distributions so that
  ``numpyro``'s ``biject_to`` gives the same unconstrained space as Stan. Each model's log joint
  equals the source program's log density (Stan ``target`` or inference_gym's joint) up to an
  additive constant (tested against hand-written densities; NumPyro NUTS reproduces every
  reference, see ``tests/test_reference_nuts.py``).
- Site names are the reference's parameter names (``mu``, ``tau``, ``theta``, ``beta``, ...);
  Stan's ``beta[1] .. beta[5]`` become one site ``beta`` of shape ``(5,)``.

Provenance: posteriordb (BSD-3-Clause, stan-dev/posteriordb at 28f8d3d; rstan NUTS, 10 chains,
10,000 thinned draws, all posteriordb checks passed) and TensorFlow Probability's inference_gym
(Apache-2.0, tensorflow/probability at c847a41; cmdstanpy NUTS). German credit data: UCI
"Statlog (German Credit Data)", german.data-numeric (CC BY 4.0). The data files are bundled
unchanged under ``heatbath/models/data`` (see ``data/PROVENANCE.md``); each target's
:attr:`ReferencePosterior.meta` keeps the exact source paths and inference settings.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from heatbath.models.reference_data import BY_NAME, SPECS, Spec
from heatbath.models.reference_models import DATA_PLATE, SortedNormal

__all__ = ["ReferencePosterior", "reference", "list_references", "DATA_PLATE", "SortedNormal"]

# ---------------------------------------------------------------------------------------------
# Loading helpers
# ---------------------------------------------------------------------------------------------

_INDEXED = re.compile(r"^([A-Za-z_]\w*)\[(\d+(?:,\d+)*)\]$")


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a)  # own copy
    a.setflags(write=False)
    return a


def _freeze_data(d: dict) -> dict:
    return {k: _readonly(v) if isinstance(v, np.ndarray) else v for k, v in d.items()}


def _to_array(v):
    if isinstance(v, bool) or isinstance(v, str) or v is None:
        return v
    if isinstance(v, (int, float, list)):
        try:
            return _readonly(np.asarray(v, dtype=np.float64))
        except (TypeError, ValueError):
            return v
    return v


def _split_name(key: str) -> tuple[str, tuple[int, ...]]:
    """``"beta[3]" -> ("beta", (2,))`` (0-based); ``"sigma" -> ("sigma", ())``."""
    m = _INDEXED.match(key)
    if m is None:
        return key, ()
    return m.group(1), tuple(int(i) - 1 for i in m.group(2).split(","))


def _gather_table(table: Mapping[str, Any]) -> dict[str, Any]:
    """Gather a ``{"beta[1]": {...stats}, ...}`` table into ``{"beta": {stat: array}}``.

    Entries without an index (``"sigma"``, or inference_gym's whole-vector ``"locs"``) are kept
    as given, with lists turned into arrays; indexed entries are stacked in index order.
    """
    groups: dict[str, dict[tuple[int, ...], Mapping]] = {}
    order: list[str] = []
    for key, entry in table.items():
        base, idx = _split_name(key)
        if base not in groups:
            groups[base] = {}
            order.append(base)
        groups[base][idx] = entry
    out: dict[str, Any] = {}
    for base in order:
        entries = groups[base]
        if list(entries) == [()]:
            e = entries[()]
            out[base] = {k: _to_array(v) for k, v in e.items()} if isinstance(e, Mapping) else e
            continue
        if () in entries:
            raise ValueError(f"parameter {base!r} given both whole and by index")
        ndim = {len(i) for i in entries}
        if len(ndim) != 1:
            raise ValueError(f"parameter {base!r} has inconsistent index ranks")
        shape = tuple(max(i[d] for i in entries) + 1 for d in range(ndim.pop()))
        if len(entries) != int(np.prod(shape)):
            raise ValueError(f"parameter {base!r}: missing indices for shape {shape}")
        stats = list(next(iter(entries.values())))
        gathered = {}
        for s in stats:
            arr = np.empty(shape, dtype=np.float64)
            for i, e in entries.items():
                arr[i] = e[s]
            gathered[s] = _readonly(arr)
        out[base] = gathered
    return out


def _is_table(d: Any) -> bool:
    return (
        isinstance(d, Mapping)
        and len(d) > 0
        and all(isinstance(v, Mapping) for v in d.values())
        and any(_INDEXED.match(k) for k in d)
    )


def _convert_extra(obj: Any) -> Any:
    if _is_table(obj):
        return _gather_table(obj)
    if isinstance(obj, Mapping):
        return {k: _convert_extra(v) for k, v in obj.items()}
    return _to_array(obj)


def _normalise_stats(stats: dict) -> dict:
    """Rename posteriordb's ``posteriordb_mcse_mean`` to the common key ``mcse_mean``."""
    out = dict(stats)
    if "posteriordb_mcse_mean" in out and "mcse_mean" not in out:
        out["mcse_mean"] = out.pop("posteriordb_mcse_mean")
    return out


def _gather_draws(npz: Mapping[str, np.ndarray], ref_keys: Sequence[str]) -> dict:
    """npz keys ``beta_1..beta_5`` (Stan ``beta[1..5]``) -> ``{"beta": (chain, draw, 5)}``."""
    groups: dict[str, dict[tuple[int, ...], np.ndarray]] = {}
    for key in ref_keys:
        base, idx = _split_name(key)
        npz_key = base + "".join(f"_{i + 1}" for i in idx)
        if npz_key not in npz:
            raise KeyError(f"reference draws lack {npz_key!r} (for {key!r})")
        groups.setdefault(base, {})[idx] = np.asarray(npz[npz_key], dtype=np.float64)
    out = {}
    for base, entries in groups.items():
        if list(entries) == [()]:
            out[base] = _readonly(entries[()])
            continue
        shape = tuple(max(i[d] for i in entries) + 1 for d in range(len(next(iter(entries)))))
        first = next(iter(entries.values()))
        arr = np.empty(first.shape + shape, dtype=np.float64)
        for i, a in entries.items():
            arr[(Ellipsis,) + i] = a
        out[base] = _readonly(arr)
    return out


def _data_dir():
    return importlib.resources.files(__name__.rpartition(".")[0]).joinpath("data")


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ReferencePosterior:
    """A reference posterior: a NumPyro model, its data, and gold-standard moments.

    Attributes:
      name: folder name of the target, e.g. ``"ig_german_credit_numeric_logistic_regression"``.
      model: the NumPyro model, called ``model(**data)``.
      data: preprocessed model keyword arguments (read-only numpy arrays, float32 / int32,
        and python scalars); :meth:`data_as` gives them in float64.
      raw_data: ``data.json`` as loaded.
      reference: site name -> ``{"mean", "sd", ...}`` arrays shaped like the site (scalars as
        0-d arrays), on the constrained scale; posteriordb targets also have ``"q05"``,
        ``"q50"``, ``"q95"``, ``"mcse_mean"`` (posteriordb's) and ``"posteriordb_mean_value"``;
        inference_gym targets have ``"mcse_mean"``.
      draws: site name -> ``(chain, draw, *site_shape)`` reference draws (posteriordb targets:
        10 x 1000), or ``None``.
      meta: ``reference.json``'s ``meta`` block (provenance, inference settings).
      extra: everything else ``reference.json`` holds, arrays gathered the same way (sblri:
        ``extra["exact_semi_analytic"]["moments"]["beta"]["mean"]``; Brownian motion:
        ``extra["locs_exact_gaussian"]`` with ``mean``, ``sd``, ``cov`` and
        ``extra["meanfield_gaussian_vi_optimum"]``).
      requires_x64: the model needs ``jax_enable_x64`` to be evaluated faithfully
        (``gp_pois_regr``).
    """

    name: str
    model: Callable = field(repr=False)
    data: dict = field(repr=False)
    raw_data: dict = field(repr=False)
    reference: dict = field(repr=False)
    draws: dict | None = field(repr=False)
    meta: dict = field(repr=False)
    extra: dict = field(repr=False)
    requires_x64: bool = False

    @property
    def params(self) -> tuple[str, ...]:
        """Names of the sites that have reference moments."""
        return tuple(self.reference)

    def data_as(self, dtype) -> dict:
        """The model kwargs preprocessed again from ``raw_data`` with float arrays in ``dtype``.

        ``data`` is float32; use ``data_as(np.float64)`` for runs under ``jax_enable_x64`` so
        that the data are not rounded to float32 (integer arrays and python scalars are
        unchanged). Returns a fresh, writable dict.
        """
        return BY_NAME[self.name].prep(self.raw_data, np.dtype(dtype))

    @property
    def num_data(self) -> int:
        """Size ``N`` of the data plate (the leading axis of every array in ``data``)."""
        for v in self.data.values():
            if isinstance(v, np.ndarray) and v.ndim >= 1:
                return int(v.shape[0])
        raise ValueError(f"{self.name}: no array in data")  # pragma: no cover

    def compare(self, samples: Mapping[str, Any], params: Sequence[str] | None = None) -> dict:
        r"""Standardised distance of a sample set's moments to the reference.

        For each parameter, with pooled sample mean :math:`\bar x` and sd :math:`s` (ddof=1,
        over chains and draws) and reference mean / sd :math:`m, \sigma`:

        .. math:: z = |\bar x - m| / \sigma, \qquad r = s / \sigma.

        Args:
          samples: site name -> array of shape ``(chain, draw, *site_shape)``, constrained
            scale (e.g. ``Result.samples`` or ``MCMC.get_samples(group_by_chain=True)``).
          params: the parameters to compare (default: every reference parameter present in
            ``samples``).

        Returns:
          ``{"per_param": {name: {"z": array, "sd_ratio": array}}, "max_abs_z": float,
          "sd_ratio_min": float, "sd_ratio_max": float}``.

        Raises:
          ValueError: a requested parameter has no reference or is absent from ``samples``,
            no parameter in common, or a shape mismatch.
        """
        if params is None:
            names = [p for p in self.reference if p in samples]
            if not names:
                raise ValueError(
                    f"{self.name}: no reference parameter in samples; reference has "
                    f"{list(self.reference)}, samples have {list(samples)}"
                )
        else:
            names = list(params)
            for p in names:
                if p not in self.reference:
                    raise ValueError(
                        f"{self.name}: no reference for {p!r}; have {list(self.reference)}"
                    )
                if p not in samples:
                    raise ValueError(f"{self.name}: {p!r} not in samples")
        per_param = {}
        zs, ratios = [], []
        for p in names:
            ref = self.reference[p]
            x = np.asarray(samples[p], dtype=np.float64)
            shape = np.shape(ref["mean"])
            if x.ndim != 2 + len(shape) or x.shape[2:] != shape:
                raise ValueError(
                    f"{self.name}: samples[{p!r}] has shape {x.shape}, expected "
                    f"(chain, draw) + {shape}"
                )
            flat = x.reshape((-1,) + shape)
            if flat.shape[0] < 2:
                raise ValueError(f"{self.name}: need at least 2 draws of {p!r}")
            z = np.abs(flat.mean(axis=0) - ref["mean"]) / ref["sd"]
            r = flat.std(axis=0, ddof=1) / ref["sd"]
            per_param[p] = {"z": z, "sd_ratio": r}
            zs.append(np.ravel(z))
            ratios.append(np.ravel(r))
        zs, ratios = np.concatenate(zs), np.concatenate(ratios)
        return {
            "per_param": per_param,
            "max_abs_z": float(np.max(zs)),
            "sd_ratio_min": float(np.min(ratios)),
            "sd_ratio_max": float(np.max(ratios)),
        }

    def __repr__(self) -> str:
        shapes = {p: np.shape(s["mean"]) for p, s in self.reference.items()}
        return (
            f"ReferencePosterior(name={self.name!r}, model={self.model.__name__}, "
            f"num_data={self.num_data}, params={shapes}, draws={self.draws is not None})"
        )


def list_references() -> list[str]:
    """Folder names of every reference posterior, in the suite's order."""
    return [s.folder for s in SPECS]


def _resolve(name: str) -> Spec:
    if not isinstance(name, str):
        raise TypeError(f"reference name must be a str, got {type(name).__name__}")
    spec = BY_NAME.get(name)
    if spec is None:
        folded = [s for k, s in BY_NAME.items() if k.lower() == name.lower()]
        if folded:
            spec = folded[0]
    if spec is None:
        valid = ", ".join(f"{s.folder!r} (alias {s.alias!r})" for s in SPECS)
        raise ValueError(f"unknown reference posterior {name!r}; valid names: {valid}")
    return spec


def reference(name: str) -> ReferencePosterior:
    """Load a reference posterior by folder name or short alias (loaded lazily, cached).

    Aliases: ``german_credit``, ``eight_schools_noncentered``, ``eight_schools`` (inference_gym,
    centred), ``brownian_motion``, ``arK``, ``gp_pois_regr``, ``low_dim_gauss_mix``,
    ``diamonds``, ``sblri``. See :func:`list_references` for the folder names.

    The returned object is shared between calls: its arrays are read-only.
    """
    return _load(_resolve(name).folder)


@functools.lru_cache(maxsize=None)
def _load(folder: str) -> ReferencePosterior:
    spec = BY_NAME[folder]
    base = _data_dir().joinpath(folder)
    raw = json.loads(base.joinpath("data.json").read_text(encoding="utf-8"))
    ref_json = json.loads(base.joinpath("reference.json").read_text(encoding="utf-8"))
    table = ref_json["reference"]

    site_keys = [k for k in table if _split_name(k)[0] in spec.params]
    other_keys = [k for k in table if _split_name(k)[0] not in spec.params]
    gathered = _gather_table({k: table[k] for k in site_keys})
    missing = [p for p in spec.params if p not in gathered]
    if missing:
        raise ValueError(f"{folder}: reference.json lacks {missing}")  # pragma: no cover
    ref = {p: _normalise_stats(gathered[p]) for p in spec.params}

    extra = {k: _convert_extra(v) for k, v in ref_json.items() if k not in ("meta", "reference")}
    extra.update({k: _convert_extra(table[k]) for k in other_keys})

    draws = None
    npz_res = base.joinpath("reference_draws.npz")
    if npz_res.is_file():
        with npz_res.open("rb") as fh, np.load(fh) as npz:
            draws = _gather_draws(npz, site_keys)

    return ReferencePosterior(
        name=folder,
        model=spec.model,
        data=_freeze_data(spec.prep(raw)),
        raw_data=raw,
        reference=ref,
        draws=draws,
        meta=ref_json.get("meta", {}),
        extra=extra,
        requires_x64=spec.requires_x64,
    )
