"""Fast tests of the reference-posteriors suite (heatbath.models.references).

The log densities below are written independently, from the Stan / inference_gym programs and
the raw data files (scipy.stats, float64), and compared with NumPyro's log joint of each model
through differences between two points (so additive constants cancel).
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import pathlib

import numpy as np
import pytest
from scipy import stats

import jax
import jax.numpy as jnp
from numpyro import handlers
from numpyro.infer.util import log_density

# the module that holds the reference posteriors (``heatbath.models.reference`` is the function)
R = importlib.import_module("heatbath.models.references")

NAMES = R.list_references()
ALIASES = {
    "german_credit": "ig_german_credit_numeric_logistic_regression",
    "eight_schools_noncentered": "eight_schools-eight_schools_noncentered",
    "eight_schools": "ig_eight_schools",
    "brownian_motion": "ig_brownian_motion_missing_middle_observations",
    "arK": "arK-arK",
    "gp_pois_regr": "gp_pois_regr-gp_pois_regr",
    "low_dim_gauss_mix": "low_dim_gauss_mix-low_dim_gauss_mix",
    "diamonds": "diamonds-diamonds",
    "sblri": "sblri-blr",
}
POSTERIORDB = [n for n in NAMES if not n.startswith("ig_")]


def x64():
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()


def maybe_x64(ref):
    return x64() if ref.requires_x64 else contextlib.nullcontext()


def trace(ref):
    with maybe_x64(ref):
        return handlers.trace(handlers.seed(ref.model, 0)).get_trace(**ref.data)


# ------------------------------------------------------------------------------------------
# Loading, registry, data
# ------------------------------------------------------------------------------------------


def test_list_and_aliases():
    assert len(NAMES) == 9 and len(set(NAMES)) == 9
    for alias, folder in ALIASES.items():
        assert R.reference(alias) is R.reference(folder)  # cached, one object
        assert R.reference(alias).name == folder


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="unknown reference posterior.*german_credit"):
        R.reference("no_such_target")


@pytest.mark.parametrize("name", NAMES)
def test_loads_and_shapes_match_model_sites(name):
    ref = R.reference(name)
    tr = trace(ref)
    assert ref.reference, name
    for p, st in ref.reference.items():
        assert p in tr, (name, p)
        shape = tr[p]["value"].shape
        for key in ("mean", "sd"):
            assert st[key].shape == shape, (name, p, key)
            assert np.all(np.isfinite(st[key]))
        assert np.all(st["sd"] > 0)
        for key in ("q05", "q50", "q95", "mcse_mean"):
            if key in st:
                assert st[key].shape == shape
        if ref.draws is not None:
            assert ref.draws[p].shape[2:] == shape
            assert ref.draws[p].shape[:2] == (10, 1000)
    assert isinstance(ref.meta, dict) and ref.meta
    assert (ref.draws is not None) == (name in POSTERIORDB)
    assert repr(ref).startswith("ReferencePosterior(")


@pytest.mark.parametrize("name", NAMES)
def test_data_contract(name):
    """One data plate of size N; every array kwarg has leading axis N; no NaN; no discrete
    latent; observed sites all in the data plate."""
    ref = R.reference(name)
    tr = trace(ref)
    plates = {k: s for k, s in tr.items() if s["type"] == "plate"}
    assert list(plates) == [R.DATA_PLATE], name
    N = plates[R.DATA_PLATE]["args"][0]
    assert N == ref.num_data
    for k, v in ref.data.items():
        if isinstance(v, np.ndarray) and v.ndim > 0:
            assert v.shape[0] == N, (name, k, v.shape)
            assert not v.flags.writeable
            if np.issubdtype(v.dtype, np.floating):
                assert not np.isnan(v).any(), (name, k)
                assert v.dtype == np.float32
        else:
            assert isinstance(v, (int, float)) and np.isfinite(v), (name, k)
    n_obs, local = 0, set()
    for k, s in tr.items():
        if s["type"] != "sample":
            continue
        frames = [f.name for f in s["cond_indep_stack"]]
        if s["is_observed"]:
            n_obs += 1
            assert frames == [R.DATA_PLATE], (name, k)
            assert s["value"].shape[0] == N
        else:
            assert not s["fn"].support.is_discrete, (name, k)
            if frames:
                local.add(k)
    assert n_obs >= 1
    assert local == LOCAL_LATENTS.get(name, set()), (name, local)


# per-observation latent sites: inside the data plate, so these targets are full-batch only
LOCAL_LATENTS = {
    "eight_schools-eight_schools_noncentered": {"theta_trans"},
    "gp_pois_regr-gp_pois_regr": {"f_tilde"},
    "ig_eight_schools": {"school_effects"},
}


def test_preprocessing():
    g = R.reference("german_credit")
    X, y = g.data["X"], g.data["y"]
    raw = np.asarray(g.raw_data["raw_german_data_numeric"], dtype=float)
    assert X.shape == (1000, 25) and np.all(X[:, -1] == 1.0)
    np.testing.assert_allclose(X[:, :-1].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(X[:, :-1].std(0), 1.0, atol=1e-5)  # population sd
    np.testing.assert_array_equal(y, (raw[:, -1] == 2).astype(int))
    assert y.sum() == 300

    d = R.reference("diamonds")
    Xraw = np.asarray(d.raw_data["X"])
    assert d.data["Xc"].shape == (5000, 24)
    np.testing.assert_allclose(d.data["Xc"].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.data["Xc"][:, 3] - Xraw[:, 4], -Xraw[:, 4].mean(), atol=1e-5)

    a = R.reference("arK")
    yraw = np.asarray(a.raw_data["y"])
    assert a.data["y_lags"].shape == (195, 5)
    # row n models y_t, t = n + K (0-based); lag k is y_{t-k}
    np.testing.assert_allclose(a.data["y"][7], yraw[12], rtol=1e-6)
    np.testing.assert_allclose(a.data["y_lags"][7], yraw[[11, 10, 9, 8, 7]], rtol=1e-6)

    b = R.reference("brownian_motion")
    assert b.data["num_timesteps"] == 30
    np.testing.assert_array_equal(b.data["obs_index"], [*range(10), *range(20, 30)])


def test_package_data_declared():
    """Every bundled file is matched by pyproject's package-data patterns (wheel install)."""
    tomllib = pytest.importorskip("tomllib")
    root = pathlib.Path(R.__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not a source checkout")
    cfg = tomllib.loads(pyproject.read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["heatbath.models"]
    data_root = pathlib.Path(R.__file__).parent
    files = [p.relative_to(data_root).as_posix() for p in (data_root / "data").rglob("*")
             if p.is_file()]
    assert len(files) >= 9 * 2 + 2
    # setuptools globs: "*" does not cross "/"
    unmatched = [f for f in files
                 if not any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/")
                            for pat in patterns)]
    assert not unmatched, f"not declared as package-data: {unmatched}"


# ------------------------------------------------------------------------------------------
# compare()
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POSTERIORDB)
def test_compare_on_reference_draws(name):
    ref = R.reference(name)
    out = ref.compare(ref.draws)
    assert set(out["per_param"]) == set(ref.reference)
    assert out["max_abs_z"] < 1e-9
    assert abs(out["sd_ratio_min"] - 1) < 1e-9 and abs(out["sd_ratio_max"] - 1) < 1e-9
    for p, st in out["per_param"].items():
        assert st["z"].shape == ref.reference[p]["mean"].shape


@pytest.mark.parametrize("name", NAMES)
def test_compare_exact_two_point_samples(name):
    """Draws m -+ sd/sqrt(2) have mean m and sd (ddof=1) sd exactly."""
    ref = R.reference(name)
    samples = {
        p: np.stack([st["mean"] - st["sd"] / np.sqrt(2), st["mean"] + st["sd"] / np.sqrt(2)])[None]
        for p, st in ref.reference.items()
    }
    out = ref.compare(samples)
    assert out["max_abs_z"] < 1e-9
    np.testing.assert_allclose([out["sd_ratio_min"], out["sd_ratio_max"]], 1.0, rtol=1e-9)

    p0 = next(iter(ref.reference))
    shifted = dict(samples)
    shifted[p0] = samples[p0] + 2.0 * ref.reference[p0]["sd"]
    out = ref.compare(shifted, params=[p0])
    assert set(out["per_param"]) == {p0}
    np.testing.assert_allclose(out["max_abs_z"], 2.0, rtol=1e-9)


def test_compare_errors():
    ref = R.reference("eight_schools_noncentered")
    draws = dict(ref.draws)
    with pytest.raises(ValueError, match="no reference"):
        ref.compare(draws, params=["theta_trans"])
    with pytest.raises(ValueError, match="not in samples"):
        ref.compare({"mu": draws["mu"]}, params=["tau"])
    with pytest.raises(ValueError, match="shape"):
        ref.compare({"theta": draws["theta"][..., :4]})
    with pytest.raises(ValueError, match="no reference parameter"):
        ref.compare({"foo": draws["mu"]})
    out = ref.compare({"mu": draws["mu"], "junk": draws["tau"]})
    assert set(out["per_param"]) == {"mu"}


def test_extra():
    s = R.reference("sblri")
    m = s.extra["exact_semi_analytic"]["moments"]
    assert m["beta"]["mean"].shape == (5,) and m["sigma"]["sd"].shape == ()
    b = R.reference("brownian_motion")
    assert b.extra["locs_exact_gaussian"]["cov"].shape == (30, 30)
    assert b.extra["meanfield_gaussian_vi_optimum"]["sd"].shape == (30,)
    assert "locs_exact_gaussian" not in b.reference


# ------------------------------------------------------------------------------------------
# Log densities: NumPyro model == hand-written density, up to a constant
# ------------------------------------------------------------------------------------------

norm, halfnorm, halfcauchy = stats.norm, stats.halfnorm, stats.halfcauchy


def lp_eight_schools_nc(raw, p):
    y, s = np.asarray(raw["y"], float), np.asarray(raw["sigma"], float)
    theta = p["theta_trans"] * p["tau"] + p["mu"]
    return (norm.logpdf(p["theta_trans"]).sum() + norm.logpdf(y, theta, s).sum()
            + norm.logpdf(p["mu"], 0, 5) + halfcauchy.logpdf(p["tau"], scale=5))


def lp_sblri(raw, p):
    X, y = np.asarray(raw["X"], float), np.asarray(raw["y"], float)
    return (norm.logpdf(p["beta"], 0, 10).sum() + halfnorm.logpdf(p["sigma"], scale=10)
            + norm.logpdf(y, X @ p["beta"], p["sigma"]).sum())


def lp_arK(raw, p):
    K, T, y = raw["K"], raw["T"], raw["y"]
    lp = norm.logpdf(p["alpha"], 0, 10) + norm.logpdf(p["beta"], 0, 10).sum()
    lp += stats.cauchy.logpdf(p["sigma"], 0, 2.5)
    for t in range(K + 1, T + 1):  # Stan's 1-based loop
        mu = p["alpha"]
        for k in range(1, K + 1):
            mu = mu + p["beta"][k - 1] * y[t - k - 1]
        lp += norm.logpdf(y[t - 1], mu, p["sigma"])
    return lp


def lp_gp(raw, p):
    x, k = np.asarray(raw["x"], float), np.asarray(raw["k"])
    N = len(x)
    cov = np.empty((N, N))
    for i in range(N):
        for j in range(N):
            cov[i, j] = p["alpha"] ** 2 * np.exp(-0.5 * (x[i] - x[j]) ** 2 / p["rho"] ** 2)
    f = np.linalg.cholesky(cov + 1e-10 * np.eye(N)) @ p["f_tilde"]
    return (stats.gamma.logpdf(p["rho"], 25, scale=1 / 4) + norm.logpdf(p["alpha"], 0, 2)
            + norm.logpdf(p["f_tilde"]).sum() + stats.poisson.logpmf(k, np.exp(f)).sum())


def lp_gauss_mix(raw, p):
    y = np.asarray(raw["y"], float)
    mu, sg, th = p["mu"], p["sigma"], p["theta"]
    assert mu[0] < mu[1]
    ll = np.logaddexp(np.log(th) + norm.logpdf(y, mu[0], sg[0]),
                      np.log1p(-th) + norm.logpdf(y, mu[1], sg[1]))
    return (norm.logpdf(sg, 0, 2).sum() + norm.logpdf(mu, 0, 2).sum()
            + stats.beta.logpdf(th, 5, 5) + ll.sum())


def lp_diamonds(raw, p):
    X, Y = np.asarray(raw["X"], float), np.asarray(raw["Y"], float)
    Xc = X[:, 1:] - X[:, 1:].mean(axis=0)
    t = stats.t
    return (norm.logpdf(p["b"], 0, 1).sum() + t.logpdf(p["Intercept"], 3, 8, 10)
            + t.logpdf(p["sigma"], 3, 0, 10) - t.logsf(0, 3, 0, 10)
            + norm.logpdf(Y, p["Intercept"] + Xc @ p["b"], p["sigma"]).sum())


def lp_german(raw, p):
    D = np.asarray(raw["raw_german_data_numeric"], float)
    F = D[:, :24]
    X = np.column_stack([(F - F.mean(0)) / F.std(0, ddof=0), np.ones(len(D))])
    y = (D[:, 24] == 2).astype(float)
    logits = X @ p["weights"]
    return (norm.logpdf(p["weights"]).sum()
            + np.sum(y * logits - np.logaddexp(0.0, logits)))


def lp_ig_eight_schools(raw, p):
    y, s = np.asarray(raw["treatment_effects"], float), np.asarray(raw["treatment_stddevs"], float)
    e = p["school_effects"]
    return (norm.logpdf(p["avg_effect"], 0, 10) + norm.logpdf(p["log_stddev"], 5, 1)
            + norm.logpdf(e, p["avg_effect"], np.exp(p["log_stddev"])).sum()
            + norm.logpdf(y, e, s).sum())


def lp_brownian(raw, p):
    x, obs = p["locs"], raw["observed_locs"]
    s_in, s_obs = raw["innovation_noise_scale"], raw["observation_noise_scale"]
    lp = norm.logpdf(x[0], 0, s_in) + norm.logpdf(x[1:], x[:-1], s_in).sum()
    for t, o in enumerate(obs):
        if o is not None:
            lp += norm.logpdf(o, x[t], s_obs)
    return lp


HAND = {
    "eight_schools-eight_schools_noncentered": lp_eight_schools_nc,
    "sblri-blr": lp_sblri,
    "arK-arK": lp_arK,
    "gp_pois_regr-gp_pois_regr": lp_gp,
    "low_dim_gauss_mix-low_dim_gauss_mix": lp_gauss_mix,
    "diamonds-diamonds": lp_diamonds,
    "ig_german_credit_numeric_logistic_regression": lp_german,
    "ig_eight_schools": lp_ig_eight_schools,
    "ig_brownian_motion_missing_middle_observations": lp_brownian,
}


def test_hand_densities_cover_all():
    assert set(HAND) == set(NAMES)


def points(ref, rng):
    """Four parameter points (latent sites, constrained scale), three in the posterior bulk."""
    pts = []
    for c, d in ((0, 0), (7, 611), (3, 100)):
        if ref.draws is not None:
            p = {k: np.asarray(v[c, d], float) for k, v in ref.draws.items()}
        else:
            p = {k: st["mean"] + st["sd"] * rng.uniform(-1.5, 1.5, np.shape(st["mean"]))
                 for k, st in ref.reference.items()}
        if ref.name.startswith("eight_schools-"):
            p["theta_trans"] = (p.pop("theta") - p["mu"]) / p["tau"]
        if ref.name.startswith("gp_pois_regr"):
            p.pop("f")
            p["f_tilde"] = rng.normal(size=ref.num_data) * 0.5
        pts.append(p)
    # and one point away from the bulk: every site scaled by 1.1 (keeps positivity, order, <1)
    pts.append({k: 1.1 * v for k, v in pts[0].items()})
    return pts


@pytest.mark.parametrize("name", NAMES)
def test_log_density_matches_hand_written(name):
    ref = R.reference(name)
    rng = np.random.default_rng(0)
    pts = points(ref, rng)
    hand = np.array([HAND[name](ref.raw_data, p) for p in pts])
    data64 = ref.data_as(np.float64)
    with x64():
        lp = jax.jit(lambda p: log_density(ref.model, (), data64, p)[0])
        model = np.array([float(lp({k: jnp.asarray(v) for k, v in p.items()})) for p in pts])
    assert np.isfinite(hand).all() and np.isfinite(model).all()
    assert np.abs(hand[1:] - hand[0]).max() > 1.0, "degenerate test points"
    # same differences <=> same density up to an additive constant (float64 throughout)
    err = (model[1:] - model[0]) - (hand[1:] - hand[0])
    assert np.abs(err).max() < 1e-9 * np.abs(hand).max() + 1e-9, (model, hand)

    if not ref.requires_x64:  # the float32 data and float32 evaluation agree too
        f0 = float(log_density(ref.model, (), ref.data, {k: jnp.asarray(v, jnp.float32)
                                                         for k, v in pts[0].items()})[0])
        assert abs(f0 - model[0]) < 1e-4 * abs(model[0]) + 1e-3, (f0, model[0])


@pytest.mark.parametrize("name", NAMES)
def test_data_as(name):
    ref = R.reference(name)
    d32, d64 = ref.data_as(np.float32), ref.data_as(np.float64)
    assert d32.keys() == d64.keys() == ref.data.keys()
    for k, v in ref.data.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(d32[k], v)
            assert d64[k].dtype == (np.float64 if v.dtype == np.float32 else v.dtype)
            np.testing.assert_allclose(d64[k], v, rtol=1e-6, atol=1e-6)
        else:
            assert d64[k] == v


def test_gp_needs_float64():
    """The GP kernel matrix is too ill-conditioned for a float32 Cholesky at posterior values:
    the target is flagged requires_x64 and refuses float32 with a clear error."""
    ref = R.reference("gp_pois_regr")
    assert ref.requires_x64
    assert sum(R.reference(n).requires_x64 for n in NAMES) == 1
    with pytest.raises(ValueError, match="needs float64"):
        handlers.trace(handlers.seed(ref.model, 0)).get_trace(**ref.data)
    # an explicit larger jitter is the documented float32 escape hatch
    tr = handlers.trace(handlers.seed(ref.model, 0)).get_trace(**ref.data, jitter=1e-4)
    assert bool(jnp.all(jnp.isfinite(tr["f"]["value"])))


def test_brownian_motion_exact_posterior():
    """The model's log density is quadratic; its mean and covariance equal the closed-form
    posterior bundled in extra (computed independently by the data set's author)."""
    ref = R.reference("brownian_motion")
    exact = ref.extra["locs_exact_gaussian"]
    with x64():
        def lp(x):
            return log_density(ref.model, (), ref.data, {"locs": x})[0]

        z = jnp.zeros(30)
        H = np.asarray(jax.jit(jax.hessian(lp))(z))
        g = np.asarray(jax.jit(jax.grad(lp))(z))
    cov = np.linalg.inv(-H)
    mean = cov @ g
    np.testing.assert_allclose(mean, exact["mean"], atol=1e-6)
    np.testing.assert_allclose(cov, exact["cov"], atol=1e-8)
    np.testing.assert_allclose(1 / np.sqrt(np.diag(-H)),
                               ref.extra["meanfield_gaussian_vi_optimum"]["sd"], rtol=1e-6)


# ------------------------------------------------------------------------------------------
# SortedNormal (the ordered prior of low_dim_gauss_mix)
# ------------------------------------------------------------------------------------------


def test_sorted_normal():
    d = R.SortedNormal(0.0, 2.0, 3)
    x = d.sample(jax.random.PRNGKey(0), (1000,))
    assert x.shape == (1000, 3)
    assert bool(jnp.all(jnp.diff(x, axis=-1) > 0))
    v = jnp.array([-1.0, 0.5, 2.0])
    expected = norm.logpdf(np.asarray(v), 0, 2).sum() + np.log(6.0)
    np.testing.assert_allclose(float(d.log_prob(v)), expected, rtol=1e-6)
    # marginal moments of order statistics of 3 iid N(0, 4): E[max] = 2 * 0.8463
    np.testing.assert_allclose(float(x[:, 2].mean()), 2 * 0.8463, atol=0.15)
