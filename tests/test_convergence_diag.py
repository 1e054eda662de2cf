"""Convergence diagnostics (heatbath.diagnostics.convergence): nested R-hat against the paper's
formula written out independently, its behaviour on a two-mode target with many short chains,
and the ArviZ-backed R-hat / ESS."""

from __future__ import annotations

import arviz as az
import numpy as np
import pytest

import heatbath as hb
from heatbath.diagnostics import NESTED_RHAT_THRESHOLD, ess, nested_rhat, nested_rhat_threshold, rhat


def paper_nested_rhat(draws, num_superchains):
    """Margossian et al. (2024), Section 2, for one scalar: draws (chain, draw), superchain k
    being chains k*M .. (k+1)*M - 1. Loops, one quantity at a time."""
    chains, n = draws.shape
    m = chains // num_superchains
    superchain_means, within = [], []
    for k in range(num_superchains):
        group = draws[k * m:(k + 1) * m]
        chain_means = [float(np.sum(chain)) / n for chain in group]
        super_mean = sum(chain_means) / m
        superchain_means.append(super_mean)
        b_tilde = sum((c - super_mean) ** 2 for c in chain_means) / (m - 1) if m > 1 else 0.0
        w_tilde = (sum(sum((v - c) ** 2 for v in chain) / (n - 1) for chain, c in zip(group, chain_means)) / m
                   if n > 1 else 0.0)
        within.append(b_tilde + w_tilde)
    overall = sum(superchain_means) / num_superchains
    b_nu = sum((s - overall) ** 2 for s in superchain_means) / (num_superchains - 1)
    w_nu = sum(within) / num_superchains
    return np.sqrt(1.0 + b_nu / w_nu)


@pytest.mark.parametrize("chains, draws, superchains", [(12, 7, 3), (12, 7, 4), (12, 7, 12), (8, 1, 2), (6, 5, 2)])
def test_nested_rhat_matches_the_paper_formula(chains, draws, superchains):
    rng = np.random.default_rng(chains * draws + superchains)
    x = rng.normal(size=(chains, draws, 3)) + rng.normal(size=(chains, 1, 3))  # chains disagree a little
    got = nested_rhat(x, superchains)
    assert got.shape == (3,)
    want = [paper_nested_rhat(x[..., j], superchains) for j in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    as_dict = nested_rhat({"a": x[..., 0], "b": x}, superchains)
    assert as_dict["a"].shape == () and float(as_dict["a"]) == pytest.approx(want[0], rel=1e-12)
    np.testing.assert_array_equal(as_dict["b"], got)


def two_mode_chains(superchain_starts, chains_per_superchain=16, warmup=50, draws=10, rho=0.5, seed=0):
    """Short chains on 0.5 N(-4, 1) + 0.5 N(4, 1) that never cross between modes: each chain
    starts at its superchain's point and runs an AR(1) (lag-1 correlation rho, stationary
    N(mode, 1)) in the mode on the side of that point. Returns (chain, draw)."""
    rng = np.random.default_rng(seed)
    starts = np.repeat(np.asarray(superchain_starts, float), chains_per_superchain)
    modes = 4.0 * np.sign(starts)
    x = starts.copy()
    kept = []
    for t in range(warmup + draws):
        x = modes + rho * (x - modes) + np.sqrt(1 - rho**2) * rng.normal(size=x.shape)
        if t >= warmup:
            kept.append(x.copy())
    return np.stack(kept, axis=1)


def test_nested_rhat_flags_superchains_stuck_in_different_modes():
    """The paper's design (Section 4): 256 short chains, K = 16 superchains of M = 16, the chains
    of a superchain sharing an overdispersed start, N = 10 draws each after warmup."""
    starts = np.random.default_rng(1).normal(scale=6.0, size=16)
    assert (starts > 0).any() and (starts < 0).any()
    stuck = two_mode_chains(starts)
    value = float(nested_rhat(stuck, 16))
    # between superchains the means differ by 8 (B ~ 16); within them the variance is ~ 1
    assert value > 3.0 > NESTED_RHAT_THRESHOLD
    assert nested_rhat_threshold(16, 10) == NESTED_RHAT_THRESHOLD == 1.01

    # converged: every draw from the mixture (chains cross modes freely): nR-hat^2 - 1 ~ 1 / (M N)
    mixed = np.random.default_rng(2).choice([-4.0, 4.0], size=(256, 10)) + np.random.default_rng(3).normal(size=(256, 10))
    assert float(nested_rhat(mixed, 16)) < NESTED_RHAT_THRESHOLD

    # the blind spot the paper warns about: every superchain started on the same side, so they
    # all agree, and nested R-hat cannot see the missed mode
    same_side = two_mode_chains(np.abs(starts) + 0.1)
    assert float(nested_rhat(same_side, 16)) < NESTED_RHAT_THRESHOLD


def test_nested_rhat_threshold_for_single_draw_chains():
    # N = 1: the persistent variance alone gives nR-hat^2 - 1 ~ 1 / M (the paper's 1.004 at M = 128)
    assert nested_rhat_threshold(128) == pytest.approx(np.sqrt(1 + 1 / 128 + 1e-4))
    assert round(nested_rhat_threshold(128), 3) == 1.004
    # stationary chains, one draw each: M (nR-hat^2 - 1) estimates 1, with the relative error
    # sqrt(2 / (K - 1)) of a variance over K = 16 superchain means
    one_draw = np.random.default_rng(4).normal(size=(2048, 1))
    scaled = 128 * (float(nested_rhat(one_draw, 16)) ** 2 - 1)
    assert abs(scaled - 1) < 3 * np.sqrt(2 / 15)


def test_nested_rhat_errors():
    x = np.zeros((10, 5))
    with pytest.raises(ValueError, match="do not split into 3 superchains"):
        nested_rhat(x, 3)
    with pytest.raises(ValueError, match=">= 2"):
        nested_rhat(x, 1)
    with pytest.raises(ValueError, match="no draws"):
        nested_rhat(np.zeros((4, 0)), 2)
    bad = np.random.default_rng(0).normal(size=(4, 5))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        nested_rhat(bad, 2)
    with pytest.raises(ValueError, match=r"\(chain, draw"):
        nested_rhat(np.zeros(8), 2)


def test_rhat_and_ess_are_arviz():
    rng = np.random.default_rng(5)
    draws = {"mu": rng.normal(size=(4, 200)), "beta": rng.normal(size=(4, 200, 2)) + [0.0, 1.0]}
    draws["beta"][0] += 0.5  # one chain off
    idata = az.from_dict(posterior=draws)
    want_rhat, want_ess = az.rhat(idata), az.ess(idata)
    got_rhat, got_ess = rhat(draws), ess(draws)
    for name in draws:
        np.testing.assert_allclose(got_rhat[name], want_rhat[name].values, rtol=1e-12)
        np.testing.assert_allclose(got_ess[name], want_ess[name].values, rtol=1e-12)
    assert got_rhat["beta"].shape == (2,) and got_rhat["beta"][0] > 1.01
    assert float(rhat(draws["mu"])) == pytest.approx(float(want_rhat["mu"]), rel=1e-12)
    tail = ess(draws, method="tail")
    np.testing.assert_allclose(tail["mu"], az.ess(idata, method="tail")["mu"].values, rtol=1e-12)
    result = hb.Result(samples=draws, stats={"diverging": np.zeros((4, 200), bool)}, final_state=None,
                       grad_evals=0.0, num_data=1, wall_time=0.0, compile_time=0.0, sampler_name="fake")
    np.testing.assert_allclose(rhat(result)["beta"], got_rhat["beta"])
    assert float(nested_rhat(result, 2)["mu"]) == pytest.approx(paper_nested_rhat(draws["mu"], 2), rel=1e-12)
    result.samples = {}
    with pytest.raises(ValueError, match="kept no draws"):
        rhat(result)
    with pytest.raises(ValueError, match="empty"):
        ess({})
