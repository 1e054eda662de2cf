"""heatbath.diagnostics.rank_stats: ArviZ's rank-normalised split R-hat and bulk ESS in NumPy.

The end-of-run checks use it so that a first call does not import ArviZ; the numbers must be
ArviZ's (compared here to float64 rounding on chains of several kinds)."""

import numpy as np
import pytest

az = pytest.importorskip("arviz")

from heatbath.diagnostics import rank_stats  # noqa: E402


def _ar1(rng, chains, draws, coords, phi, shift=0.0):
    x = np.zeros((chains, draws, coords))
    e = rng.normal(size=(chains, draws, coords))
    for t in range(1, draws):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x + shift * np.arange(chains)[:, None, None]


def _cases():
    rng = np.random.default_rng(7)
    return {
        "iid": rng.normal(size=(4, 1000, 5)),
        "ar 0.95": _ar1(rng, 4, 1000, 6, 0.95),
        "ar 0.999, odd draws": _ar1(rng, 2, 501, 3, 0.999),
        "antithetic": _ar1(rng, 4, 100, 2, -0.7),
        "ties": np.round(rng.normal(size=(3, 300, 4)), 1),
        "chains apart": _ar1(rng, 4, 400, 3, 0.5, shift=2.0),
        "few draws": rng.normal(size=(4, 7, 3)),
        "one chain": _ar1(rng, 1, 200, 3, 0.5),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_rhat_and_bulk_ess_equal_arviz(name):
    x = _cases()[name]
    ds = az.convert_to_dataset({"x": x})
    with np.errstate(all="ignore"):
        ref_r = np.asarray(az.rhat(ds)["x"], np.float64)
        ref_e = np.asarray(az.ess(ds, method="bulk")["x"], np.float64)
    r, e = rank_stats.rhat_and_bulk_ess(x)
    np.testing.assert_array_equal(np.isnan(r), np.isnan(ref_r))
    np.testing.assert_allclose(r[~np.isnan(r)], ref_r[~np.isnan(ref_r)], rtol=1e-12)
    np.testing.assert_allclose(e, ref_e, rtol=1e-10)
    np.testing.assert_array_equal(rank_stats.rank_rhat(x), r)
    np.testing.assert_array_equal(rank_stats.bulk_ess(x), e)


def test_rhat_flags_chains_apart_and_ess_sees_autocorrelation():
    rng = np.random.default_rng(0)
    r, e = rank_stats.rhat_and_bulk_ess(_ar1(rng, 4, 2000, 1, 0.0, shift=0.5))
    assert r[0] > 1.1 and e[0] < 4 * 2000 / 10  # separate chains: large R-hat, low ESS
    r, e = rank_stats.rhat_and_bulk_ess(_ar1(rng, 4, 2000, 1, 0.9))
    # AR(1) with phi = 0.9: tau = (1 + phi) / (1 - phi) = 19, so ESS ~ 8000 / 19 = 421
    assert r[0] < 1.03 and 300 < e[0] < 600


def test_ranks_average_ties():
    y = np.array([[3.0, 1.0, 3.0, 2.0, 3.0]])
    np.testing.assert_array_equal(rank_stats._average_ranks(y), [[4.0, 1.0, 4.0, 2.0, 4.0]])


def test_bad_shapes_and_nonfinite_columns():
    with pytest.raises(ValueError, match="shape"):
        rank_stats.rank_rhat(np.zeros(5))
    x = np.random.default_rng(1).normal(size=(2, 50, 2))
    x[0, 3, 1] = np.nan
    r, e = rank_stats.rhat_and_bulk_ess(x)
    assert np.isfinite(r[0]) and np.isfinite(e[0]) and np.isnan(r[1]) and np.isnan(e[1])


def test_blocks_of_coordinates_give_the_same_numbers(monkeypatch):
    """Coordinates are processed in blocks (bounded memory): blocks of 3 columns give exactly
    the numbers of one block."""
    x = _cases()["ar 0.95"]
    whole = rank_stats.rhat_and_bulk_ess(x)
    monkeypatch.setattr(rank_stats, "BLOCK_BYTES", 8 * x.shape[0] * x.shape[1] * 3)
    blocked = rank_stats.rhat_and_bulk_ess(x)
    np.testing.assert_array_equal(whole[0], blocked[0])
    np.testing.assert_array_equal(whole[1], blocked[1])


def _tau_one(rho, n):
    """ArviZ's loop on one coordinate (the reference of rank_stats._taus)."""
    r = rho.tolist()
    kept = [0.0] * n
    kept[0] = 1.0
    even, odd = 1.0, r[1]
    kept[1] = odd
    t = 1
    while t < n - 3 and even + odd > 0.0:
        even, odd = r[t + 1], r[t + 2]
        if even + odd >= 0:
            kept[t + 1], kept[t + 2] = even, odd
        t += 2
    max_t = t - 2
    if even > 0:
        kept[max_t + 1] = even
    t = 1
    while t <= max_t - 2:
        if kept[t + 1] + kept[t + 2] > kept[t - 1] + kept[t]:
            kept[t + 1] = kept[t + 2] = (kept[t - 1] + kept[t]) / 2.0
        t += 2
    return -1.0 + 2.0 * sum(kept[: max_t + 1]) + sum(kept[max_t + 1: max_t + 2])


def test_vectorised_geyer_sequences_equal_the_loop():
    # autocorrelations that stop early, late, at the last lag, at pair 0, rise again (monotone
    # step), on odd and even lengths down to 4
    rng = np.random.default_rng(3)
    for trial in range(200):
        n = int(rng.integers(4, 200))
        phi = rng.uniform(-0.9, 0.999, size=12)
        rho = phi[None, :] ** np.arange(n)[:, None] + rng.normal(scale=[0, 0.01, 0.1, 0.5][trial % 4], size=(n, 12))
        rho[0] = 1.0
        rho[1, 0] = -1.5  # P_0 <= 0
        rho[2:, 1] = 0.9  # never stops
        rho[2::2, 2], rho[3::2, 2] = 0.3, 0.0  # pair sums tied at 0.3 (no monotone step)
        want = np.array([_tau_one(rho[:, j], n) for j in range(12)])
        np.testing.assert_allclose(rank_stats._taus(rho, n), want, rtol=1e-13, atol=1e-13)
