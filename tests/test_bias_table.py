"""benchmarks/bias_table.py: its closed forms (fast) and their agreement with hb.sample (slow).

The slow test runs a reduced version of the script's core on a few cells and asserts that the
measured stationary means and variances match the closed-form (Lyapunov) values within Monte
Carlo error (4.5 standard errors, the worst of 3 coordinates; errors from 32 independent chains).
"""

import os
import sys

import numpy as np
import pytest
import scipy.linalg as sl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import bias_table as B  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    return B.make_problem(3)


def test_noise_model_matches_minibatches(problem):
    """V(theta) of n rows with replacement, by Monte Carlo over 100,000 minibatches, and the
    stationary average E V = V(mu) + K(Sigma) (exact for a symmetric pair mu +- delta)."""
    p, n, N = problem, 10, len(problem.y64)
    rng = np.random.default_rng(0)
    delta = np.array([0.03, -0.02, 0.05])

    def V_exact(theta):
        a = p.X64 * (p.y64 - p.X64 @ theta)[:, None]
        a = a - a.mean(0)
        return (N / n) * a.T @ a

    theta = p.mu + delta
    idx = rng.integers(0, N, size=(100_000, n))
    a = p.X64 * (p.y64 - p.X64 @ theta)[:, None]
    g = (N / n) * a[idx].sum(1)
    np.testing.assert_allclose(np.cov(g.T), V_exact(theta), rtol=0.03, atol=0.03 * np.abs(V_exact(theta)).max())
    V0, K = B.noise_moments(p, n)
    avg = 0.5 * (V_exact(p.mu + delta) + V_exact(p.mu - delta))
    np.testing.assert_allclose(V0 + K(np.outer(delta, delta)), avg, rtol=1e-10)
    # control variates at a centre theta*: the error is -(D_B)(theta - theta*), E V = K(S + e e^T)
    centre = p.mu + 0.01
    V0c, _ = B.noise_moments(p, n, centre)
    np.testing.assert_allclose(V0c, K(np.outer(p.mu - centre, p.mu - centre)), rtol=1e-12)


def test_closed_forms(problem):
    p, d = problem, 3
    h, T = 0.2 / p.lam[-1], 0.5
    # SGLD: the discrete Lyapunov equation with the noise folded in (fixed point by iteration)
    A = np.eye(d) - h * p.H
    V0, K = B.noise_moments(p, 10)
    S = sl.solve_discrete_lyapunov(A, 2 * h * T * np.eye(d))
    for _ in range(300):
        S = sl.solve_discrete_lyapunov(A, 2 * h * T * np.eye(d) + h * h * (V0 + K(S)))
    np.testing.assert_allclose(B.stationary(p, "sgld", h, 10, T), S, rtol=1e-9)
    # where heatbath evaluates the gradient: Euler at the start, FSAL words after the last A
    assert [c for c, _ in B.pieces("euler", 1.0)] == list("EGBA")
    assert [c for c, _ in B.pieces("obabo", 1.0)] == list("OBAGBO")
    assert [c for c, _ in B.pieces("baoab", 1.0)] == list("BAOAGB")
    assert [c for c, _ in B.pieces("lie_trotter", 1.0)] == list("BAGBO")
    # exact gradients (n = N and no noise): BAOAB is exact in theta; OBABO's theta bias is O(h^2)
    hh = 0.2 / np.sqrt(p.lam[-1])
    for sampler, exact_theta in (("baoab", True), ("obabo", False)):
        S = B.stationary(p, sampler, hh, 10, T, friction=B.friction_of(p), exact_gradients=True)
        ratio = np.diag(S) / (T * np.diag(np.linalg.inv(p.H)))
        if exact_theta:
            np.testing.assert_allclose(ratio, 1.0, rtol=1e-9)
        else:
            assert 1.0 < ratio.max() < 1.01
    # unstable settings are reported as such
    assert B.stationary(p, "sgld", 2.5 / p.lam[-1], 10, 1.0) is None


@pytest.mark.slow
@pytest.mark.parametrize("sampler,c,n,T", [
    ("sgld", 0.2, 10, 1.0),
    ("sgld_cv", 0.2, 10, 1.0),
    ("euler", 0.2, 100, 1.0),
    ("obabo", 0.2, 10, 0.25),
    ("baoab", 0.05, 10, 1.0),
])
def test_measured_matches_closed_form(problem, sampler, c, n, T):
    """hb.sample, 32 chains x 11,000 steps: the stationary mean is mu and the variances are the
    closed-form ones, within 4.5 Monte Carlo errors (per coordinate, the worst of three)."""
    p = problem
    cell = B.Cell(sampler, c / p.lam[-1], n, T)
    meas = B.measure(p, cell, num_chains=32, num_steps=11_000, burn=1_000, seed=3)
    r = B.row(p, cell, meas)
    assert not r["diverged"]
    assert r["z_mean"] < 4.5, r
    assert r["z_var"] is not None and r["z_var"] < 4.5, (r["sd_closed"], r["sd_meas"], r["z_var"])
