"""Sample distances (heatbath.diagnostics.distances) against SciPy and direct NumPy computations,
and the reference comparison (heatbath.diagnostics.compare)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

import heatbath as hb
from heatbath.diagnostics import compare, energy_distance, mmd, w2, w2_gaussian, wasserstein_1d


def random_spd(rng, d, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T + (1e-3 * np.eye(d) if rank is None else 0.0)


def sqrtm_w2(m1, s1, m2, s2):
    """The textbook formula with SciPy's general matrix square root."""
    r = scipy.linalg.sqrtm(s2)
    cross = scipy.linalg.sqrtm(r @ s1 @ r)
    return np.sqrt(np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross).real)


# ------------------------------------------------------------------------------------------
# W2
# ------------------------------------------------------------------------------------------
def test_w2_gaussian_matches_the_sqrtm_formula():
    rng = np.random.default_rng(0)
    for d in (1, 3, 6):
        m1, m2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = random_spd(rng, d), random_spd(rng, d)
        assert w2_gaussian(m1, s1, m2, s2) == pytest.approx(sqrtm_w2(m1, s1, m2, s2), rel=1e-9)
    # 1-D: |m1 - m2|^2 + (sd1 - sd2)^2; commuting covariances: the Frobenius distance of roots
    assert w2_gaussian(1.0, 4.0, -1.0, 9.0) == pytest.approx(np.sqrt(4 + 1), rel=1e-12)
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    assert w2_gaussian(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(np.sqrt(4 + 1), rel=1e-12)
    # a singular covariance (rank 2 of 4) is fine; identical Gaussians are at distance 0
    s = random_spd(rng, 4, rank=2)
    assert w2_gaussian(np.zeros(4), s, np.zeros(4), s) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="positive semi-definite"):
        w2_gaussian(0.0, -1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="shapes"):
        w2_gaussian(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))


@pytest.mark.parametrize("n, m", [(40, 40), (37, 53), (100, 7)])
def test_wasserstein_1d_matches_scipy_and_replicated_samples(n, m):
    rng = np.random.default_rng(n + m)
    x, y = rng.normal(size=n), 0.4 + 1.5 * rng.standard_t(4, size=m)
    assert wasserstein_1d(x, y, p=1) == pytest.approx(scipy.stats.wasserstein_distance(x, y), rel=1e-12)
    # W2: each x repeated m times and each y n times is the same pair of distributions, of
    # equal sizes, whose optimal coupling matches sorted values
    xr, yr = np.sort(np.repeat(x, m)), np.sort(np.repeat(y, n))
    assert wasserstein_1d(x, y) == pytest.approx(np.sqrt(np.mean((xr - yr) ** 2)), rel=1e-12)
    assert w2(x, y) == wasserstein_1d(x, y) == w2(x[:, None], y[:, None])


def test_sliced_w2_matches_numpy_with_the_same_directions():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 3)), rng.normal(size=(300, 3)) @ np.diag([1.0, 2.0, 0.5])
    theta = rng.normal(size=(25, 3))
    unit = theta / np.linalg.norm(theta, axis=1, keepdims=True)
    px, py = np.sort(x @ unit.T, axis=0), np.sort(y @ unit.T, axis=0)
    want = np.sqrt(np.mean((px - py) ** 2))
    assert w2(x, y, directions=theta) == pytest.approx(want, rel=1e-12)
    # a pure shift delta: each projection is moved by theta . delta, so
    # SW2^2 = mean (theta . delta)^2 -> |delta|^2 / d over uniform directions
    delta = np.array([1.0, -2.0, 0.5])
    sw = w2(x, x + delta, num_projections=4000, seed=2)
    assert sw**2 == pytest.approx(np.sum(delta**2) / 3, rel=0.05)
    assert w2(x, y, seed=3) == w2(x, y, seed=3)


# ------------------------------------------------------------------------------------------
# MMD and energy distance
# ------------------------------------------------------------------------------------------
def direct_kernel_sums(x, y, kern):
    def gram(a, b):
        return kern(np.sqrt(np.sum((a[:, None] - b[None]) ** 2, axis=2)))
    return gram(x, x), gram(y, y), gram(x, y)


@pytest.mark.parametrize("dim, chunk", [(2, 2048), (2, 7), (12, 9)])  # exact differences / expansion
def test_mmd_matches_direct_numpy(dim, chunk):
    rng = np.random.default_rng(dim + chunk)
    x, y = rng.normal(size=(70, dim)), 0.3 + rng.normal(size=(45, dim))
    h = 1.7
    kernels = {"gaussian": lambda r: np.exp(-r**2 / (2 * h**2)), "laplace": lambda r: np.exp(-r / h),
               "imq": lambda r: 1 / np.sqrt(1 + r**2 / h**2)}
    for name, kern in kernels.items():
        kxx, kyy, kxy = direct_kernel_sums(x, y, kern)
        n, m = 70, 45
        unbiased = ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                    - 2 * kxy.mean())
        biased = kxx.mean() + kyy.mean() - 2 * kxy.mean()
        assert mmd(x, y, kernel=name, bandwidth=h, chunk_size=chunk) == pytest.approx(unbiased, rel=1e-10)
        assert mmd(x, y, kernel=name, bandwidth=h, unbiased=False, chunk_size=chunk) == pytest.approx(biased, rel=1e-10)
    # the median heuristic: median pairwise distance of the pooled sample
    pooled = np.concatenate([x, y])
    dist = np.sqrt(np.sum((pooled[:, None] - pooled[None]) ** 2, axis=2))[np.triu_indices(115, 1)]
    assert mmd(x, y) == pytest.approx(mmd(x, y, bandwidth=np.median(dist)), rel=1e-12)


def test_mmd_separates_distributions():
    rng = np.random.default_rng(4)
    a, b, c = rng.normal(size=(500, 2)), rng.normal(size=(500, 2)), 0.5 + rng.normal(size=(500, 2))
    same, shifted = mmd(a, b), mmd(a, c)
    assert abs(same) < 0.005 < 0.02 < shifted


@pytest.mark.parametrize("n, m", [(50, 50), (37, 81)])
def test_energy_distance_matches_scipy_in_1d_and_numpy_in_nd(n, m):
    rng = np.random.default_rng(n * m)
    x, y = rng.normal(size=n), 0.5 + 2.0 * rng.normal(size=m)
    assert energy_distance(x, y) == pytest.approx(scipy.stats.energy_distance(x, y), rel=1e-10)
    assert energy_distance(x, y, chunk_size=8) == pytest.approx(scipy.stats.energy_distance(x, y), rel=1e-10)
    for dim, chunk in ((3, 2048), (10, 13)):
        xs, ys = rng.normal(size=(n, dim)), rng.normal(size=(m, dim)) * 1.5
        dxx, dyy, dxy = direct_kernel_sums(xs, ys, lambda r: r)
        want = np.sqrt(2 * dxy.mean() - dxx.mean() - dyy.mean())
        assert energy_distance(xs, ys, chunk_size=chunk) == pytest.approx(want, rel=1e-10)


def test_distance_input_errors():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="different dimensions"):
        mmd(x, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="no draws"):
        energy_distance(np.zeros((0, 2)), x)
    bad = x.copy()
    bad[1, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        w2(bad, x)
    with pytest.raises(ValueError, match="kernel"):
        mmd(np.eye(3), np.eye(3), kernel="cosine", bandwidth=1.0)
    with pytest.raises(ValueError, match=r"\(n,\) or \(n, d\)"):
        w2(np.zeros((2, 3, 4)), np.zeros((2, 3, 4)))


# ------------------------------------------------------------------------------------------
# compare
# ------------------------------------------------------------------------------------------
def fake_result(samples, unconstrained=None):
    chains, draws = next(iter(samples.values())).shape[:2]
    return hb.Result(samples=samples, stats={"diverging": np.zeros((chains, draws), bool)}, final_state=None,
                     grad_evals=0.0, num_data=1, wall_time=0.0, compile_time=0.0, sampler_name="fake",
                     unconstrained=unconstrained)


def test_compare_with_moments_and_draws():
    rng = np.random.default_rng(5)
    samples = {"mu": 1.0 + rng.normal(size=(4, 250)), "beta": rng.normal(size=(4, 250, 3)) * [1.0, 2.0, 0.5]}
    moments = {"mu": {"mean": 1.1, "sd": 0.9}, "beta": {"mean": np.zeros(3), "sd": np.array([1.0, 2.0, 0.5])}}
    out = compare(samples, moments)
    mu = samples["mu"].ravel()
    assert out["per_param"]["mu"]["z"] == pytest.approx(abs(mu.mean() - 1.1) / 0.9, rel=1e-12)
    assert out["per_param"]["mu"]["sd_ratio"] == pytest.approx(mu.std(ddof=1) / 0.9, rel=1e-12)
    assert out["per_param"]["beta"]["z"].shape == (3,)
    assert out["max_abs_z"] == pytest.approx(max(np.max(v["z"]) for v in out["per_param"].values()))
    assert out["distances"] == {} and out["num_draws"] == 1000
    # the reference's own draws, as a dict and as a Result: identical distributions
    ref = {"mu": samples["mu"], "beta": samples["beta"].reshape(1000, 3)}
    same = compare(fake_result(samples), ref)
    assert same["max_abs_z"] == 0.0 and same["sd_ratio_min"] == same["sd_ratio_max"] == 1.0
    assert same["distances"]["sliced_w2"] == 0.0 and same["distances"]["energy"] == 0.0
    again = compare(samples, fake_result(samples))
    assert again["distances"]["sliced_w2"] == 0.0
    # shift every coordinate by half a reference sd: z = 0.5 and sliced W2 ~ |delta| / sqrt(d)
    sd = np.concatenate([[mu.std(ddof=1)], samples["beta"].reshape(-1, 3).std(axis=0, ddof=1)])
    shifted = {"mu": samples["mu"] + 0.5 * sd[0], "beta": samples["beta"] + 0.5 * sd[1:]}
    moved = compare(shifted, ref, num_projections=2000)
    np.testing.assert_allclose(moved["per_param"]["beta"]["z"], 0.5, rtol=1e-9)
    assert moved["distances"]["sliced_w2"] == pytest.approx(0.5, rel=0.05)
    assert moved["distances"]["mmd2"] > 0.05 and moved["distances"]["energy"] > 0.3
    text = repr(moved)
    assert "beta[2]" in text and "max |z| = 0.5" in text and "sliced_w2" in text
    frame = moved.to_dataframe()
    assert list(frame.index) == ["mu", "beta[0]", "beta[1]", "beta[2]"]
    assert frame.loc["beta[1]", "z"] == pytest.approx(0.5)


def test_compare_with_a_bundled_reference_agrees_with_reference_compare():
    ref = hb.models.reference("eight_schools_noncentered")
    rng = np.random.default_rng(6)
    samples = {k: np.asarray(v)[:4] + 0.1 * rng.normal(size=np.shape(v[:4])) for k, v in ref.draws.items()}
    out = compare(samples, "eight_schools_noncentered")
    want = ref.compare(samples)
    assert out["max_abs_z"] == pytest.approx(want["max_abs_z"], rel=1e-12)
    assert out["sd_ratio_min"] == pytest.approx(want["sd_ratio_min"], rel=1e-12)
    assert out["sd_ratio_max"] == pytest.approx(want["sd_ratio_max"], rel=1e-12)
    assert set(out["distances"]) == {"sliced_w2", "mmd2", "energy"} and out["num_ref_draws"] == 10_000
    assert 0 < out["distances"]["sliced_w2"] < 0.5


def test_compare_errors():
    samples = {"mu": np.zeros((2, 10)) + np.arange(10)}
    with pytest.raises(ValueError, match="no parameter in common"):
        compare(samples, {"tau": {"mean": 0.0, "sd": 1.0}})
    with pytest.raises(ValueError, match="shape"):
        compare(samples, {"mu": {"mean": np.zeros(2), "sd": np.ones(2)}})
    with pytest.raises(ValueError, match="shape"):
        compare(samples, {"mu": np.zeros((10, 3, 2))})  # (chain, draw, 2) or (n, 3, 2): not scalar draws
    with pytest.raises(ValueError, match="the draws have no 'sigma'"):
        compare(samples, {"mu": {"mean": 0.0, "sd": 1.0}, "sigma": {"mean": 1.0, "sd": 1.0}}, params=["sigma"])
    empty = fake_result({"mu": np.zeros((2, 3))})
    empty.samples = {}
    with pytest.raises(ValueError, match="kept no draws"):
        compare(empty, {"mu": {"mean": 0.0, "sd": 1.0}})
    with pytest.raises(ValueError, match="non-finite"):
        compare({"mu": np.full((2, 10), np.nan)}, {"mu": {"mean": 0.0, "sd": 1.0}})
    with pytest.raises(ValueError, match="unknown reference posterior"):
        compare(samples, "no_such_posterior")
    with pytest.raises(TypeError, match="reference must be"):
        compare(samples, 3.0)
