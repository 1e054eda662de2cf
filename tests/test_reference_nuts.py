"""NUTS on every reference posterior reproduces the bundled reference moments (slow).

This validates the NumPyro models of ``heatbath.models.references`` against the gold standard:
if a model differed from the Stan / inference_gym program that produced the reference, NUTS on
it would converge to other moments. Tolerances are derived from the run's own Monte Carlo error
(ArviZ ESS), plus a small slack for the reference's own MC error:

- means:  max_i |mean_i - ref_i| / ref_sd_i  <  4 / sqrt(min_i ess_bulk_i) + 0.05
- sds:    max_i |sd_i / ref_sd_i - 1|  <  4 max_i sqrt((kurt_i - 1) / (4 ess_sd_i)) + 0.05
  (the standard error of a sample sd is sd * sqrt((kurtosis - 1) / (4 n_eff)))

Run with ``pytest -m slow tests/test_reference_nuts.py``.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import numpy as np
import pytest

import jax

pytestmark = pytest.mark.slow

NUM_WARMUP = 1000
NUM_SAMPLES = 1000
NUM_CHAINS = 2

# NUTS settings per target (the reference runs used adapt_delta 0.95-0.99 on some of them).
SETTINGS = {
    "eight_schools-eight_schools_noncentered": dict(target_accept_prob=0.95),
    "sblri-blr": dict(dense_mass=True),
    "arK-arK": dict(),
    "gp_pois_regr-gp_pois_regr": dict(target_accept_prob=0.95),
    "low_dim_gauss_mix-low_dim_gauss_mix": dict(),
    # strongly correlated: Stan needed max_treedepth 20 with a diagonal metric
    "diamonds-diamonds": dict(dense_mass=True),
    "ig_german_credit_numeric_logistic_regression": dict(),
    "ig_eight_schools": dict(target_accept_prob=0.95),
    "ig_brownian_motion_missing_middle_observations": dict(),
}


def _x64(enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()


def _ess(draws: np.ndarray, method: str) -> np.ndarray:
    import arviz as az

    x = np.asarray(draws, dtype=np.float64)
    flat = x.reshape(x.shape[:2] + (-1,))
    return np.array([float(az.ess(flat[..., i], method=method)) for i in range(flat.shape[-1])])


def _kurtosis(draws: np.ndarray) -> np.ndarray:
    x = np.asarray(draws, dtype=np.float64)
    flat = x.reshape((x.shape[0] * x.shape[1], -1))
    c = flat - flat.mean(0)
    return (c**4).mean(0) / (c**2).mean(0) ** 2


@pytest.mark.parametrize("name", list(SETTINGS))
def test_nuts_matches_reference(name):
    from numpyro.infer import MCMC, NUTS

    from heatbath.models.references import reference

    ref = reference(name)
    with _x64(ref.requires_x64), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        mcmc = MCMC(
            NUTS(ref.model, **SETTINGS[name]),
            num_warmup=NUM_WARMUP,
            num_samples=NUM_SAMPLES,
            num_chains=NUM_CHAINS,
            chain_method="sequential",
            progress_bar=False,
        )
        data = ref.data_as(np.float64) if ref.requires_x64 else ref.data
        mcmc.run(jax.random.PRNGKey(0), **data, extra_fields=("diverging",))
        samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
        elapsed = time.perf_counter() - t0
    divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())

    report = ref.compare(samples)
    assert set(report["per_param"]) == set(ref.reference)

    ess_bulk = np.concatenate([_ess(samples[p], "bulk") for p in ref.reference])
    ess_sd = np.concatenate([_ess(samples[p], "sd") for p in ref.reference])
    kurt = np.concatenate([_kurtosis(samples[p]) for p in ref.reference])
    z_tol = 4.0 / np.sqrt(ess_bulk.min()) + 0.05
    sd_tol = 4.0 * np.max(np.sqrt(np.maximum(kurt - 1.0, 2.0) / (4.0 * ess_sd))) + 0.05

    print(
        f"\n[reference NUTS] {name}: max|z|={report['max_abs_z']:.3f} (tol {z_tol:.3f}), "
        f"sd ratio [{report['sd_ratio_min']:.3f}, {report['sd_ratio_max']:.3f}] "
        f"(tol +-{sd_tol:.3f}), min ess_bulk={ess_bulk.min():.0f}, "
        f"min ess_sd={ess_sd.min():.0f}, divergences={divergences}, time={elapsed:.1f}s"
    )
    assert report["max_abs_z"] < z_tol, report
    assert 1.0 - sd_tol < report["sd_ratio_min"], report
    assert report["sd_ratio_max"] < 1.0 + sd_tol, report
