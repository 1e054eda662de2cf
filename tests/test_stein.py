"""Kernel Stein discrepancies (heatbath.diagnostics.stein): exactness against direct float64
computations, the behaviour that makes them useful (falls with n on exact draws, ranks biased
samplers above exact ones), the stochastic KSD's convergence to the full one, and bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb
from heatbath.diagnostics import fssd, ksd, ksd_result, scores, stochastic_ksd
from heatbath.diagnostics._draws import x64


# ------------------------------------------------------------------------------------------
# Independent reference implementations
# ------------------------------------------------------------------------------------------
def direct_ksd2(x, s, c=1.0, beta=-0.5, ustat=False):
    """O(n^2) NumPy float64, all pairs broadcast at once, from the IMQ Stein kernel."""
    n, d = x.shape
    r = x[:, None, :] - x[None, :, :]
    r2 = np.sum(r * r, axis=2)
    u = c * c + r2
    # grad_x k . s_y + grad_y k . s_x = 2 beta u^(beta-1) (x - y) . (s_y - s_x)
    drift = np.einsum("ijk,jk->ij", r, s) - np.einsum("ijk,ik->ij", r, s)
    kp = (u**beta * (s @ s.T) + 2 * beta * u ** (beta - 1) * drift
          - 2 * beta * d * u ** (beta - 1) - 4 * beta * (beta - 1) * u ** (beta - 2) * r2)
    if ustat:
        return (kp.sum() - np.trace(kp)) / (n * (n - 1))
    return kp.sum() / n**2


def autodiff_stein_kernel(x, s, kernel):
    """k_p(x_i, x_j) for all pairs from the definition, by automatic differentiation in float64."""
    def kp(xi, xj, si, sj):
        gx = jax.grad(kernel, 0)(xi, xj)
        gy = jax.grad(kernel, 1)(xi, xj)
        trace = jnp.trace(jax.jacfwd(jax.grad(kernel, 1), 0)(xi, xj))
        return trace + gx @ sj + gy @ si + kernel(xi, xj) * (si @ sj)

    with x64():
        xj, sj = jnp.asarray(x, jnp.float64), jnp.asarray(s, jnp.float64)
        row = jax.vmap(kp, (None, 0, None, 0))
        return np.asarray(jax.jit(jax.vmap(row, (0, None, 0, None)))(xj, xj, sj, sj))


def gauss_mean_target(num_data=1000, noise_var=1000.0, prior_var=100.0, seed=0):
    """y_j ~ N(theta, noise_var I_2), theta ~ N(0, prior_var I_2): posterior N(mean, I / prec)."""
    rng = np.random.default_rng(seed)
    y = (np.array([1.0, -2.0]) + np.sqrt(noise_var) * rng.normal(size=(num_data, 2))).astype(np.float32)
    target = hb.models.from_logdensity(
        lambda p: -0.5 * jnp.sum(p**2) / prior_var,
        lambda p, b: -0.5 * jnp.sum((b - p) ** 2) / noise_var,
        y,
        params=jnp.zeros(2),
    )
    prec = num_data / noise_var + 1.0 / prior_var
    mean = y.astype(np.float64).sum(axis=0) / noise_var / prec
    return target, mean, prec


def ula_draws(step, num_chains=20, num_keep=250, burn=200, dim=2, seed=1):
    """Unadjusted Langevin on N(0, I): x <- x - step x / 2 + sqrt(step) xi; stationary variance
    1 / (1 - step / 4), a biased sampler. Returns (chain, draw, dim)."""
    rng = np.random.default_rng(seed)
    x = 3.0 * rng.normal(size=(num_chains, dim))
    kept = []
    for t in range(burn + num_keep):
        x = x - 0.5 * step * x + np.sqrt(step) * rng.normal(size=x.shape)
        if t >= burn:
            kept.append(x.copy())
    return np.stack(kept, axis=1)


# ------------------------------------------------------------------------------------------
# Exactness
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [512, 37])  # one block; several, the last one padded
@pytest.mark.parametrize("ustat", [False, True])
def test_ksd_matches_direct_numpy_float64(chunk_size, ustat):
    rng = np.random.default_rng(0)
    x = 2.0 + 1.3 * rng.normal(size=(150, 3))
    s = -(x - 2.0) + 0.2 * rng.normal(size=x.shape)
    got = ksd(x, s, squared=True, ustat=ustat, chunk_size=chunk_size)
    want = direct_ksd2(x, s, ustat=ustat)
    assert abs(got - want) <= 1e-8 * abs(want)
    got_c = ksd(x, s, squared=True, ustat=ustat, c=0.7, beta=-0.3, chunk_size=chunk_size)
    assert abs(got_c - direct_ksd2(x, s, c=0.7, beta=-0.3, ustat=ustat)) <= 1e-8 * abs(got_c)
    assert ksd(x, s, ustat=ustat, chunk_size=chunk_size) == pytest.approx(np.sqrt(max(want, 0)), rel=1e-8)


@pytest.mark.parametrize("kernel", ["imq", "gaussian"])
def test_stein_kernels_match_their_definition_by_autodiff(kernel):
    rng = np.random.default_rng(1)
    x, s = rng.normal(size=(25, 3)), rng.normal(size=(25, 3))
    c, beta = 1.4, -0.5
    if kernel == "imq":
        def k(a, b):
            return (c**2 + jnp.sum((a - b) ** 2)) ** beta
    else:
        def k(a, b):
            return jnp.exp(-0.5 * jnp.sum((a - b) ** 2) / c**2)
    kp = autodiff_stein_kernel(x, s, k)
    assert ksd(x, s, kernel=kernel, c=c, squared=True, chunk_size=8) == pytest.approx(kp.mean(), rel=1e-10)
    u = (kp.sum() - np.trace(kp)) / (25 * 24)
    assert ksd(x, s, kernel=kernel, c=c, squared=True, ustat=True) == pytest.approx(u, rel=1e-10)


def test_draw_layouts_give_the_same_ksd():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 30, 3))  # (chain, draw, d)
    s = -x
    flat = ksd(x.reshape(120, 3), s.reshape(120, 3))
    assert ksd(x, s) == flat
    tree_x = {"a": x[..., 0], "b": x[..., 1:]}
    tree_s = {"a": s[..., 0], "b": s[..., 1:]}
    assert ksd(tree_x, tree_s, sample_axes=2) == pytest.approx(flat, rel=1e-12)
    assert ksd({"a": x.reshape(120, 3)}, {"a": s.reshape(120, 3)}) == flat
    assert ksd(x.astype(np.float32), s.astype(np.float32), precision="float32") == pytest.approx(flat, rel=1e-4)


# ------------------------------------------------------------------------------------------
# What makes it a diagnostic
# ------------------------------------------------------------------------------------------
def test_ksd_on_exact_draws_falls_as_n_grows():
    """For exact draws KSD_V^2 ~ E k_p(x, x) / n = 2d / n (the off-diagonal mean is zero):
    sqrt(4 / n) = 0.063 at n = 1e3 and 0.020 at n = 1e4 (d = 2)."""
    rng = np.random.default_rng(3)
    small, big = rng.normal(size=(1000, 2)), rng.normal(size=(10_000, 2))
    k_small, k_big = ksd(small, -small), ksd(big, -big)
    assert 0.5 * np.sqrt(4 / 1000) < k_small < 2.0 * np.sqrt(4 / 1000)
    assert 0.5 * np.sqrt(4 / 10_000) < k_big < 2.0 * np.sqrt(4 / 10_000)
    assert k_big < 0.5 * k_small


def test_ksd_ranks_biased_samplers_above_exact_draws():
    exact = np.random.default_rng(4).normal(size=(5000, 2))
    ula = ula_draws(step=1.0)  # (20, 250, 2): stationary variance 4/3 instead of 1
    wide = 1.3 * np.random.default_rng(5).normal(size=(5000, 2))
    k_exact, k_ula, k_wide = ksd(exact, -exact), ksd(ula, -ula), ksd(wide, -wide)
    assert k_ula > 2.5 * k_exact and k_wide > 2.5 * k_exact
    # FSSD's unbiased estimate ranks them the same way
    f_exact = fssd(exact, -exact, seed=0).fssd2_unbiased
    f_wide = fssd(wide, -wide, seed=0).fssd2_unbiased
    assert f_wide > 10 * abs(f_exact)


def test_fssd_matches_direct_numpy():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 3))
    s = -x + 0.3
    v = rng.normal(size=(4, 3))
    out = fssd(x, s, locations=v, bandwidth=0.9, chunk_size=7)
    k = np.exp(-np.sum((x[:, None] - v[None]) ** 2, axis=2) / (2 * 0.81))  # (n, J)
    tau = np.stack([k[:, j, None] * (s - (x - v[j]) / 0.81) for j in range(4)], axis=1) / np.sqrt(12)
    tau = tau.reshape(60, -1)
    gram = tau @ tau.T
    assert out.fssd2 == pytest.approx(gram.mean(), rel=1e-12)
    assert out.fssd2_unbiased == pytest.approx((gram.sum() - np.trace(gram)) / (60 * 59), rel=1e-12)
    assert out.bandwidth == 0.9 and out.locations.shape == (4, 3)
    auto = fssd(x, s, num_locations=5, seed=1)
    assert auto.locations.shape == (5, 3) and auto.bandwidth > 0
    assert np.array_equal(auto.locations, fssd(x, s, num_locations=5, seed=1).locations)


# ------------------------------------------------------------------------------------------
# Scores on a Target and the stochastic KSD
# ------------------------------------------------------------------------------------------
def test_scores_on_a_target_and_stochastic_ksd_converges_to_the_full_ksd():
    target, mean, prec = gauss_mean_target()
    draws = (mean + np.random.default_rng(7).normal(size=(400, 2)) / np.sqrt(prec)).astype(np.float32)
    full = scores(target, draws)
    exact = -(draws.astype(np.float64) - mean) * prec
    np.testing.assert_allclose(full, exact, rtol=1e-3, atol=1e-3)
    k_full = ksd(draws, full)
    assert k_full == pytest.approx(ksd(draws, exact), rel=1e-3)
    # m = N rows without replacement: the full-data score (up to float32 summation order)
    assert stochastic_ksd(draws, target, batch_size=1000) == pytest.approx(k_full, rel=1e-4)
    sizes = np.array([5, 20, 80])
    gap, gap2 = [], []
    for m in sizes:
        vals = np.array([stochastic_ksd(draws, target, batch_size=int(m), seed=r) for r in range(4)])
        gap.append(np.mean(np.abs(vals - k_full)))
        gap2.append(np.mean(np.abs(vals**2 - k_full**2)))
    slope = np.polyfit(np.log(sizes), np.log(gap), 1)[0]
    slope2 = np.polyfit(np.log(sizes), np.log(gap2), 1)[0]
    print(f"|SKSD - KSD| ~ m^{slope:.2f}, |SKSD^2 - KSD^2| ~ m^{slope2:.2f}; gaps {np.round(gap, 4)}")
    assert np.all(np.diff(gap) < 0)
    # The score noise has variance ~ N^2 / m, so KSD^2 moves by O(1/m) (the V-statistic's diagonal
    # picks up E|noise|^2 / n); KSD itself by m^-1/2 while the noise dominates, m^-1 once it is
    # small (measured: see the README's Diagnostics section).
    assert -1.5 < slope2 < -0.8
    assert -1.1 < slope < -0.4
    # the U-statistic has no diagonal: the stochastic KSD^2_U is unbiased for KSD^2_U
    u_full = ksd(draws, full, ustat=True, squared=True)
    u_noisy = np.array([stochastic_ksd(draws, target, batch_size=20, seed=r, ustat=True, squared=True)
                        for r in range(8)])
    assert abs(u_noisy.mean() - u_full) < 4 * u_noisy.std(ddof=1) / np.sqrt(8)


def test_stochastic_ksd_with_a_score_function():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 2))

    def noisy(xi, key):
        return -xi + 2.0 * jax.random.normal(key, xi.shape)

    a = stochastic_ksd(x, noisy, seed=1)
    assert a == stochastic_ksd(x, noisy, seed=1) and a > ksd(x, -x)
    assert stochastic_ksd(x, lambda xi, key: -xi) == pytest.approx(ksd(x, -x), rel=1e-6)


@pytest.fixture(scope="module")
def small_run():
    """A Result as hb.sample(..., record_unconstrained=True) returns it (exact posterior draws
    stand in for a run: the KSD code only reads ``unconstrained`` and ``target``)."""
    target, mean, prec = gauss_mean_target(num_data=200, noise_var=200.0)
    draws = (mean + np.random.default_rng(9).normal(size=(2, 300, 2)) / np.sqrt(prec)).astype(np.float32)
    stats = {"diverging": np.zeros((2, 300), bool)}
    result = hb.Result(samples={"theta": draws}, stats=stats, final_state=None, grad_evals=0.0, num_data=200,
                       wall_time=0.0, compile_time=0.0, sampler_name="exact", unconstrained=draws, target=target)
    return target, mean, prec, result


def test_ksd_of_a_result(small_run):
    target, mean, prec, result = small_run
    draws = result.unconstrained  # (2, 300, 2)
    exact = -(np.asarray(draws, np.float64) - mean) * prec
    assert ksd_result(result) == pytest.approx(ksd(np.asarray(draws), exact), rel=1e-3)
    noisy = ksd_result(result, batch_size=20, seed=3)
    assert noisy == stochastic_ksd(draws, target, batch_size=20, seed=3)


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------
def test_bad_input_gets_clear_errors(small_run):
    x = np.zeros((10, 2))
    with pytest.raises(ValueError, match="different shapes"):
        ksd(x, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="different shapes"):
        ksd(x, np.zeros((9, 2)))
    with pytest.raises(ValueError, match="different structures"):
        ksd({"a": x}, {"b": x})
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite.*draw 3"):
        ksd(bad, x)
    with pytest.raises(ValueError, match="no draws"):
        ksd(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="beta"):
        ksd(x, x, beta=0.5)
    with pytest.raises(ValueError, match="kernel"):
        ksd(x, x, kernel="rbf")
    target, _, _, result = small_run
    with pytest.raises(ValueError, match="record_unconstrained=True"):
        ksd_result(dataclasses.replace(result, unconstrained=None))
    with pytest.raises(ValueError, match="no draws"):
        ksd_result(dataclasses.replace(result, unconstrained=np.zeros((2, 0, 2), np.float32)))
    with pytest.raises(ValueError, match="keep='moments'"):
        ksd_result(dataclasses.replace(result, samples={}, unconstrained=None, moments={"count": 3}))
    with pytest.raises(ValueError, match="exceeds"):
        scores(target, np.zeros((5, 2), np.float32), batch_size=10_000)
    with pytest.raises(ValueError, match="shape"):
        scores(target, np.zeros((5, 3), np.float32))
