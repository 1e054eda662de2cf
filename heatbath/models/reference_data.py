"""The registry of the bundled reference posteriors: folder, alias, model, data preparation,
parameters (used by :mod:`heatbath.models.references`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from heatbath.models.reference_models import (
    arK,
    brownian_motion_missing_middle,
    diamonds,
    eight_schools_centered,
    eight_schools_noncentered,
    german_credit_logistic,
    gp_pois_regr,
    low_dim_gauss_mix,
    sblri_blr,
)

__all__ = ["Spec", "SPECS", "BY_NAME"]

def _f(a, dtype) -> np.ndarray:
    """Floats computed in float64, then cast to the data dtype (float32 by default)."""
    return np.asarray(a, dtype=np.float64).astype(dtype)


def _prep_eight_schools_noncentered(raw, dtype=np.float32):
    return {"y": _f(raw["y"], dtype), "sigma": _f(raw["sigma"], dtype)}


def _prep_sblri(raw, dtype=np.float32):
    return {"X": _f(raw["X"], dtype), "y": _f(raw["y"], dtype)}


def _prep_arK(raw, dtype=np.float32):
    y = np.asarray(raw["y"], dtype=np.float64)
    K, T = int(raw["K"]), int(raw["T"])
    if y.shape != (T,):
        raise ValueError(f"arK data: expected {T} values, got {y.shape}")
    t = np.arange(K, T)  # 0-based times of the modelled terms (Stan's K+1..T)
    lags = np.stack([y[t - k] for k in range(1, K + 1)], axis=1)  # lags[:, k-1] = y[t-k]
    return {"y_lags": _f(lags, dtype), "y": _f(y[K:], dtype)}


def _prep_gp(raw, dtype=np.float32):
    return {"x": _f(raw["x"], dtype), "k": np.asarray(raw["k"], dtype=np.int32)}


def _prep_gauss_mix(raw, dtype=np.float32):
    return {"y": _f(raw["y"], dtype)}


def _prep_diamonds(raw, dtype=np.float32):
    X = np.asarray(raw["X"], dtype=np.float64)
    Xc = X[:, 1:] - X[:, 1:].mean(axis=0)
    return {"Xc": _f(Xc, dtype), "Y": _f(raw["Y"], dtype)}


def _prep_german(raw, dtype=np.float32):
    R = np.asarray(raw["raw_german_data_numeric"], dtype=np.float64)
    feats, cls = R[:, :-1], R[:, -1]
    Z = (feats - feats.mean(axis=0)) / feats.std(axis=0)  # population sd (ddof=0)
    X = np.concatenate([Z, np.ones((R.shape[0], 1))], axis=1)
    return {"X": _f(X, dtype), "y": (cls == 2).astype(np.int32)}


def _prep_ig_eight_schools(raw, dtype=np.float32):
    return {
        "treatment_effects": _f(raw["treatment_effects"], dtype),
        "treatment_stddevs": _f(raw["treatment_stddevs"], dtype),
    }


def _prep_brownian(raw, dtype=np.float32):
    vals = raw["observed_locs"]
    idx = [i for i, v in enumerate(vals) if v is not None]
    return {
        "observed_locs": _f([vals[i] for i in idx], dtype),
        "obs_index": np.asarray(idx, dtype=np.int32),
        "num_timesteps": len(vals),
        "innovation_noise_scale": float(raw["innovation_noise_scale"]),
        "observation_noise_scale": float(raw["observation_noise_scale"]),
    }


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    folder: str
    alias: str
    model: Callable
    prep: Callable[..., dict]  # prep(raw, dtype=np.float32) -> model kwargs
    params: tuple[str, ...]
    requires_x64: bool = False


SPECS: tuple[Spec, ...] = (
    Spec("eight_schools-eight_schools_noncentered", "eight_schools_noncentered",
          eight_schools_noncentered, _prep_eight_schools_noncentered, ("theta", "mu", "tau")),
    Spec("sblri-blr", "sblri", sblri_blr, _prep_sblri, ("beta", "sigma")),
    Spec("arK-arK", "arK", arK, _prep_arK, ("alpha", "beta", "sigma")),
    Spec("gp_pois_regr-gp_pois_regr", "gp_pois_regr", gp_pois_regr, _prep_gp,
          ("rho", "alpha", "f"), requires_x64=True),
    Spec("low_dim_gauss_mix-low_dim_gauss_mix", "low_dim_gauss_mix", low_dim_gauss_mix,
          _prep_gauss_mix, ("mu", "sigma", "theta")),
    Spec("diamonds-diamonds", "diamonds", diamonds, _prep_diamonds, ("b", "Intercept", "sigma")),
    Spec("ig_german_credit_numeric_logistic_regression", "german_credit",
          german_credit_logistic, _prep_german, ("weights",)),
    Spec("ig_eight_schools", "eight_schools", eight_schools_centered, _prep_ig_eight_schools,
          ("avg_effect", "log_stddev", "school_effects")),
    Spec("ig_brownian_motion_missing_middle_observations", "brownian_motion",
          brownian_motion_missing_middle, _prep_brownian, ("locs",)),
)
BY_NAME: dict[str, Spec] = {}
for _s in SPECS:
    BY_NAME[_s.folder] = _s
    BY_NAME[_s.alias] = _s
del _s
