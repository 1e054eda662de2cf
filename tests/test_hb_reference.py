"""hb.reference: NUTS reference moments for any model, its checks and its on-disk cache.

Fast tests replace the NUTS runner by a stand-in (iid draws) where only the plumbing is under
test; two short real runs (one per backend) check a model with a closed-form posterior; the
slow test reproduces posteriordb's eight schools (non-centred) within 3 Monte Carlo errors.
"""

import warnings
import json
import os

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import heatbath as hb
from heatbath.diagnostics import reference_cache, reference_nuts
from heatbath.diagnostics.reference import Reference, ReferenceCheckError

Y = np.array([0.3, -1.2, 0.8, 1.9, 0.4, -0.1, 1.1, 0.6, 0.2, 1.5], np.float32)
PRIOR_SD = 10.0


def model(y):
    """mu ~ N(0, 10^2), y_i ~ N(mu, 1); s ~ HalfNormal(2) unobserved (its posterior is its prior)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    numpyro.sample("s", dist.HalfNormal(2.0))
    numpyro.deterministic("mu2", 2.0 * mu)
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def exact(y):
    prec = 1 / PRIOR_SD**2 + len(y)
    mu_mean, mu_sd = np.sum(np.asarray(y, np.float64)) / prec, prec**-0.5
    s_mean, s_sd = 2 * np.sqrt(2 / np.pi), 2 * np.sqrt(1 - 2 / np.pi)
    return {"mu": (mu_mean, mu_sd), "s": (s_mean, s_sd), "mu2": (2 * mu_mean, 2 * mu_sd)}


class Fake:
    """A stand-in runner: iid N(0, 1) unconstrained draws (chain c shifted by shift * c)."""

    def __init__(self, shift=0.0, divergent=0):
        self.calls, self.shift, self.divergent = 0, shift, divergent

    def __call__(self, logdensity, x0, key, num_warmup, num_samples, target_accept):
        self.calls += 1
        if hasattr(self, "x0"):
            self.x0.append(np.asarray(x0))
        assert x0.dtype == np.float64  # x64 inside the call
        c, d = x0.shape
        x = np.random.default_rng(self.calls).normal(size=(c, num_samples, d)) + self.shift * np.arange(c)[:, None, None]
        div = np.zeros((c, num_samples), bool)
        div[0, : self.divergent] = True
        return {"positions": x, "diverging": div, "accept_rate": np.full((c, num_samples), 0.9),
                "num_steps": np.full((c, num_samples), 3), "step_size": np.full(c, 0.5)}


def failing(*args):
    raise AssertionError("the runner ran: the cache was not used")


@pytest.fixture
def fake(monkeypatch):
    f = Fake()
    monkeypatch.setitem(reference_nuts.RUNNERS, "blackjax", f)
    return f


SMALL = dict(num_chains=2, num_warmup=10, num_samples=200)


def test_cache_hit_without_running(tmp_path, fake, monkeypatch):
    r1 = hb.reference(model, {"y": Y}, cache_dir=tmp_path, **SMALL)
    assert fake.calls == 1 and not r1.from_cache and r1.ok
    assert set(r1.params) == {"mu", "s", "mu2"} and r1.draws["mu"].shape == (2, 200)
    assert not jax.config.jax_enable_x64  # enabled inside the call only
    monkeypatch.setitem(reference_nuts.RUNNERS, "blackjax", failing)
    r2 = hb.reference(model, {"y": Y}, cache_dir=tmp_path, **SMALL)
    assert r2.from_cache and r2.key == r1.key
    for site in r1.params:
        for stat in r1.reference[site]:
            np.testing.assert_array_equal(r2.reference[site][stat], r1.reference[site][stat])
        np.testing.assert_array_equal(r2.draws[site], r1.draws[site])
    assert r2.diagnostics == r1.diagnostics and r2.settings == r1.settings
    # HEATBATH_CACHE is the default root; keep_draws=False reuses a record with draws
    monkeypatch.setenv("HEATBATH_CACHE", str(tmp_path / "root"))
    monkeypatch.setitem(reference_nuts.RUNNERS, "blackjax", fake)
    hb.reference(model, {"y": Y}, **SMALL)
    assert os.path.exists(tmp_path / "root" / "reference" / f"{r1.key}.json")
    monkeypatch.setitem(reference_nuts.RUNNERS, "blackjax", failing)
    assert hb.reference(model, {"y": Y}, keep_draws=False, **SMALL).draws is None
    # cache=False runs
    with pytest.raises(AssertionError, match="runner ran"):
        hb.reference(model, {"y": Y}, cache=False, **SMALL)


def test_key_follows_data_model_and_settings(tmp_path, fake):
    keys = {hb.reference(model, {"y": Y}, cache_dir=tmp_path, **SMALL).key}
    keys.add(hb.reference(model, {"y": Y + 1}, cache_dir=tmp_path, **SMALL).key)
    keys.add(hb.reference(model, {"y": Y[:-1]}, cache_dir=tmp_path, **SMALL).key)
    keys.add(hb.reference(model, {"y": Y}, cache_dir=tmp_path, **dict(SMALL, seed=1)).key)
    keys.add(hb.reference(model, {"y": Y}, cache_dir=tmp_path, **dict(SMALL, num_samples=300)).key)

    def model2(y):  # same names, another prior scale
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        numpyro.sample("s", dist.HalfNormal(2.0))
        numpyro.deterministic("mu2", 2.0 * mu)
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    keys.add(hb.reference(model2, {"y": Y}, cache_dir=tmp_path, **SMALL).key)
    assert len(keys) == 6 and fake.calls == 6


def tamperings(directory, key):
    rec_path = os.path.join(directory, f"{key}.json")

    def npz_path():
        return os.path.join(directory, json.load(open(rec_path))["arrays"]["file"])

    def flip_npz():
        p = npz_path()
        blob = bytearray(open(p, "rb").read())
        blob[len(blob) // 2] ^= 1
        open(p, "wb").write(bytes(blob))

    def edit_mean():
        rec = json.load(open(rec_path))
        rec["run"]["divergences"] = 0
        rec["wall_time"] = 1.0
        json.dump(rec, open(rec_path, "w"))

    def truncate_json():
        open(rec_path, "w").write(open(rec_path).read()[:50])

    def remove_npz():
        os.unlink(npz_path())

    def symlink_npz():
        p = npz_path()
        os.replace(p, p + ".moved")
        os.symlink(p + ".moved", p)

    return [flip_npz, edit_mean, truncate_json, remove_npz, symlink_npz]


def test_tampered_cache_is_recomputed(tmp_path, fake):
    r1 = hb.reference(model, {"y": Y}, cache_dir=tmp_path, **SMALL)
    for i, tamper in enumerate(tamperings(str(tmp_path), r1.key)):
        tamper()
        with pytest.warns(UserWarning, match="cached reference is invalid"):
            r = hb.reference(model, {"y": Y}, cache_dir=tmp_path, **SMALL)
        assert not r.from_cache and fake.calls == i + 2, tamper.__name__
        assert isinstance(reference_cache.load(str(tmp_path), r1.key, True), tuple)  # rewritten, valid
    npz = [n for n in os.listdir(tmp_path) if n.endswith(".npz")]
    assert len(npz) == 1  # superseded array files are removed


def test_checks_refuse_or_warn(tmp_path, monkeypatch):
    monkeypatch.setitem(reference_nuts.RUNNERS, "blackjax", Fake(shift=1.0))
    with pytest.raises(ReferenceCheckError, match="R-hat") as err:
        hb.reference(model, {"y": Y}, cache_dir=tmp_path, **SMALL)
    assert isinstance(err.value.reference, Reference) and not err.value.reference.ok
    assert err.value.reference.diagnostics["max_rhat"] > 1.01
    with pytest.warns(UserWarning, match="failed its checks"):
        r = hb.reference(model, {"y": Y}, cache_dir=tmp_path, on_fail="warn", **SMALL)
    assert r.from_cache and not r.ok  # the failed run was cached; the checks are applied again
    monkeypatch.setitem(reference_nuts.RUNNERS, "blackjax", Fake(divergent=3))
    with pytest.raises(ReferenceCheckError, match="3 divergent"):
        hb.reference(model, {"y": Y}, cache=False, **SMALL)
    monkeypatch.setitem(reference_nuts.RUNNERS, "blackjax", Fake())
    with pytest.raises(ReferenceCheckError, match="ESS"):
        hb.reference(model, {"y": Y}, cache=False, min_ess=1e6, **SMALL)


def test_bad_input(tmp_path, fake):
    def bad(match, *args, **kw):
        with pytest.raises((ValueError, TypeError), match=match):
            hb.reference(*(args or (model, {"y": Y})), cache_dir=tmp_path, **{**SMALL, **kw})

    bad("unknown backend", backend="stan")
    bad("num_chains must be an integer >= 1", num_chains=0)
    bad("num_chains", num_chains=2.5)
    bad("num_chains", num_chains=True)
    bad("num_samples must be", num_samples=50)
    bad("num_warmup", num_warmup=-1)
    bad("seed", seed=-3)
    bad("target_accept", target_accept=1.0)
    bad("on_fail", on_fail="ignore")
    bad("max_rhat", max_rhat=0.9)
    bad("not sites of the model", sites=["nope"])
    bad("callable", 3.0, {"y": Y})
    bad("dict of keyword arguments", model, Y)

    def discrete(y):
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    bad("NUTS needs gradients", discrete, {"y": Y})

    def nowhere(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.factor("f", jax.numpy.where(mu < 5.0, -jax.numpy.inf, 0.0))

    bad("not finite at the starting points", nowhere, {"y": Y})
    assert fake.calls == 0


def test_starting_points_redrawn(tmp_path, fake):
    def half(y):  # log density -inf for mu > 0: half of the uniform(-2, 2) starts are redrawn
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.factor("f", jax.numpy.where(mu > 0.0, -jax.numpy.inf, 0.0))

    fake.x0 = []
    r = hb.reference(half, {"y": Y}, cache=False, num_chains=8, num_warmup=10, num_samples=100, min_ess=100)
    assert np.all(fake.x0[0] < 0) and r.ok


def test_sites_summary_compare(tmp_path, fake):
    r = hb.reference(model, {"y": Y}, cache_dir=tmp_path, sites=["mu", "s"], **SMALL)
    assert r.params == ("mu", "s")
    table = r.summary()
    assert list(table.index) == ["mu", "s"] and "r_hat" in table.columns
    np.testing.assert_allclose(table.loc["mu", "mean"], r.mean["mu"])
    out = r.compare(r.draws)
    assert out["max_abs_z"] < 1e-12 and abs(out["sd_ratio_max"] - 1) < 1e-12
    with pytest.raises(ValueError, match="no reference for"):
        r.compare(r.draws, params=["mu2"])
    # the draws are the Target's constrained values of the runner's unconstrained draws
    assert np.all(r.draws["s"] > 0)
    assert "Reference(name='model'" in repr(r)


@pytest.mark.parametrize("backend", ["blackjax", pytest.param("numpyro", marks=pytest.mark.slow)])
def test_real_run_matches_closed_form(tmp_path, backend):
    """A short real NUTS run (2 x 300 warmup x 1000) on a model with a closed-form posterior:
    means within 4 MC errors, sds within 4 MC errors (MCSE from ArviZ). About 10 s, mostly
    compilation (20 s with NumPyro: slow-marked)."""
    r = hb.reference(model, {"y": Y}, backend=backend, num_chains=2, num_warmup=300, num_samples=1000,
                     cache_dir=tmp_path)
    assert r.ok and r.draws["mu"].dtype == np.float64
    for site, (m, s) in exact(Y).items():
        assert abs(r.mean[site] - m) < 4 * r.mcse_mean[site], (site, r.mean[site], m)
        assert abs(r.sd[site] - s) < 4 * r.mcse_sd[site], (site, r.sd[site], s)
    assert r.diagnostics["divergences"] == 0 and 0.5 < r.diagnostics["accept_rate"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["blackjax", "numpyro"])
def test_eight_schools_matches_posteriordb(tmp_path, backend):
    """Default settings (4 x 2,000 warmup x 5,000 draws) on the bundled non-centred eight schools
    (the NumPyro transcription of posteriordb's Stan program, heatbath.models.reference_models)
    reproduce posteriordb's means and sds within 3 combined Monte Carlo errors:
    |ours - theirs| <= 3 sqrt(mcse_ours^2 + mcse_theirs^2), posteriordb's MCSE of the mean as
    published, the MCSE of its sd computed by ArviZ from its 10 x 1,000 reference draws."""
    import arviz as az

    pdb = hb.models.reference("eight_schools_noncentered")
    r = hb.reference(pdb.model, pdb.data, backend=backend, cache_dir=tmp_path)
    assert r.ok, r.diagnostics["problems"]
    ds = az.convert_to_dataset({k: np.asarray(v, np.float64) for k, v in pdb.draws.items()})
    pdb_mcse_sd = az.mcse(ds, method="sd")
    worst = 0.0
    for site in ("mu", "tau", "theta"):
        ref = pdb.reference[site]
        err_m = np.sqrt(r.mcse_mean[site] ** 2 + ref["mcse_mean"] ** 2)
        err_s = np.sqrt(r.mcse_sd[site] ** 2 + np.asarray(pdb_mcse_sd[site].values) ** 2)
        z_m = np.abs(r.mean[site] - ref["mean"]) / err_m
        z_s = np.abs(r.sd[site] - ref["sd"]) / err_s
        worst = max(worst, z_m.max(), z_s.max())
        assert np.all(z_m <= 3) and np.all(z_s <= 3), (site, z_m, z_s)
    print(f"{backend}: worst |difference| / combined MC error {worst:.2f}, wall {r.wall_time:.1f} s")


def test_cache_hit_with_sites_in_any_order(tmp_path, fake, monkeypatch):
    """The cache numbers its arrays in the record's (sorted) site order, whatever order was asked."""
    r1 = hb.reference(model, {"y": Y}, cache_dir=tmp_path, sites=["s", "mu2", "mu"], **SMALL)
    monkeypatch.setitem(reference_nuts.RUNNERS, "blackjax", failing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an "invalid cache" warning would fail here
        r2 = hb.reference(model, {"y": Y}, cache_dir=tmp_path, sites=["s", "mu2", "mu"], **SMALL)
    assert r2.from_cache
    for site in ("s", "mu2", "mu"):
        np.testing.assert_array_equal(r2.reference[site]["mean"], r1.reference[site]["mean"])
        np.testing.assert_array_equal(r2.draws[site], r1.draws[site])
