"""Gaussian VI in the Bures-Wasserstein space (heatbath.vi.gaussian, hb.fit): FB-GVI and BW-SGD.

What is checked, with numbers:
- one step equals the paper's formulas (Diao et al. 2023; Lambert et al. 2022) to 1e-12;
- the expectation oracles: deterministic cubature + Stein exact on quadratics (and the gradient
  on cubic gradients), stochastic estimates unbiased (tolerances from the Monte Carlo standard
  error), antithetic pairs exact on quadratics, the structured variants never form d x d;
- Gaussian targets: FB-GVI converges to (mu, T A^-1) to 1e-6 for every h < 1/lambda_max, to its
  closed-form (biased but stable) fixed point above it where BW-SGD blows up; the paper's d = 10
  set-up; stochastic FB-GVI vs BW-SGD;
- reference posteriors: Brownian motion (Gaussian posterior, exact moments; mean-field optimum
  for the diagonal variant), German credit (means within 0.1 sd, sds within 10%);
- low rank + diagonal: exact when the target is in the family, stationary otherwise;
- doubly stochastic minibatch VI, the Gaussian result object, cost accounting, bad input.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.linalg
from scipy.stats import ortho_group

import heatbath as hb
from heatbath.vi import gaussian as G


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def quadratic_target(a, mu):
    """pi ~ exp(-(x - mu)^T A (x - mu) / 2) as a data-free target (dtype from the x64 mode)."""
    a_j, mu_j = jnp.asarray(a), jnp.asarray(mu)
    return hb.models.from_logdensity(
        lambda p: -0.5 * (p - mu_j) @ a_j @ (p - mu_j),
        lambda p, b: 0.0 * jnp.sum(b),
        jnp.zeros((1, 1)),
        params=jnp.zeros(len(mu), a_j.dtype),
    )


def spd(rng, eigs):
    q = np.linalg.qr(rng.normal(size=(len(eigs), len(eigs))))[0]
    a = (q * np.asarray(eigs, float)) @ q.T
    return 0.5 * (a + a.T), q


def paper_target():
    """Diao et al.'s Gaussian experiment: d = 10, Sigma's spectrum geometric from 1 to 200."""
    d = 10
    q = ortho_group.rvs(d, random_state=1)
    sigma = q @ np.diag(np.geomspace(1.0, 200.0, d)) @ q.T
    sigma = 0.5 * (sigma + sigma.T)
    a = np.linalg.inv(sigma)
    mu = np.random.default_rng(0).uniform(size=d)
    return 0.5 * (a + a.T), sigma, mu


def fit_final(target, method, d, **kw):
    kw.setdefault("elbo_samples", 0)
    kw.setdefault("trace_every", method.hyperparameters["num_steps"])
    return hb.fit(target, method, init=jnp.zeros(d), **kw)


def value_and_grad_of(logp):
    vg = jax.value_and_grad(logp)
    return lambda p, batch: vg(p)


# ----------------------------------------------------------------------------------------
# one step = the paper's formulas
# ----------------------------------------------------------------------------------------
def test_one_step_matches_the_papers_formulas():
    rng = np.random.default_rng(0)
    d, h, T = 4, 0.3, 0.7
    a, _ = spd(rng, [0.5, 1.0, 2.0, 3.0])
    s0, _ = spd(rng, [0.2, 0.5, 1.0, 2.0])
    mu, m = rng.normal(size=d), rng.normal(size=d)
    g = a @ (m - mu)
    eye = np.eye(d)
    # FB-GVI (Diao et al. 2023, with the entropy weighted by T)
    s_half = (eye - h * a) @ s0 @ (eye - h * a)
    s_fb = 0.5 * (s_half + 2 * h * T * eye + np.real(scipy.linalg.sqrtm(s_half @ (s_half + 4 * h * T * eye))))
    # BW-SGD (Lambert et al. 2022)
    mm = eye - h * (a - T * np.linalg.inv(s0))
    s_bw = mm @ s0 @ mm
    with jax.enable_x64(True):
        grad_fn = value_and_grad_of(lambda p: -0.5 * (p - mu) @ a @ (p - mu))
        for ctor, expected in [(hb.vi.fbgvi, s_fb), (hb.vi.bwsgd, s_bw)]:
            method = ctor(h, 1, mode="deterministic", init_cov=s0, temperature=T)
            state = method.init(jnp.asarray(m), jax.random.key(0))
            new, info = method.step(jax.random.key(1), state, None, grad_fn)
            np.testing.assert_allclose(np.asarray(new.position), m - h * g, atol=1e-12)
            np.testing.assert_allclose(np.asarray(G.covariance(new)), expected, atol=1e-12)
            assert int(new.step) == 1 and not bool(info.diverging)
            assert float(info.min_variance) == pytest.approx(np.linalg.eigvalsh(expected)[0], rel=1e-10)
        # the backward step is the matrix function of S_half computed with one eigh
        lam = np.linalg.eigvalsh(s_half)
        np.testing.assert_allclose(
            np.sort(np.asarray(G.jko_entropy_eigenvalues(jnp.asarray(lam), h * T))),
            np.linalg.eigvalsh(s_fb),
            rtol=1e-12,
        )


# ----------------------------------------------------------------------------------------
# expectation oracles
# ----------------------------------------------------------------------------------------
def _states(d, r=2, seed=0):
    rng = np.random.default_rng(seed)
    m = jnp.asarray(rng.normal(size=d) * 0.5)
    s, q = spd(rng, rng.uniform(0.3, 1.5, d))
    lam, vecs = np.linalg.eigh(s)
    step = jnp.zeros((), jnp.int32)
    return [
        G.FullState(m, step, jnp.asarray(vecs), jnp.asarray(lam)),
        G.DiagState(m, step, jnp.asarray(rng.uniform(0.3, 1.5, d))),
        G.LowRankState(m, step, jnp.asarray(rng.uniform(0.5, 1.0, d)), jnp.asarray(0.5 * rng.normal(size=(d, r)))),
    ]


def test_deterministic_oracle_is_exact_on_quadratics_and_cubic_gradients():
    rng = np.random.default_rng(1)
    d = 5
    a, _ = spd(rng, rng.uniform(0.5, 3.0, d))
    mu = rng.normal(size=d)
    with jax.enable_x64(True):
        quad = value_and_grad_of(lambda p: -0.5 * (p - mu) @ a @ (p - mu))
        quartic = value_and_grad_of(lambda p: -0.25 * jnp.sum(p**4))  # grad V = x^3
        for state in _states(d):
            m = np.asarray(state.position)
            _, g, curv = G.deterministic_moments(state, None, quad)
            np.testing.assert_allclose(np.asarray(g), -a @ (m - mu), atol=1e-12)
            if isinstance(state, G.FullState):
                np.testing.assert_allclose(np.asarray(curv), -a, atol=1e-12)
            elif isinstance(state, G.DiagState):
                np.testing.assert_allclose(np.asarray(curv), -np.diag(a), atol=1e-12)
            else:
                np.testing.assert_allclose(np.asarray(curv[0]), -a @ np.asarray(state.factor), atol=1e-12)
                np.testing.assert_allclose(np.asarray(curv[1]), -np.diag(a), atol=1e-12)
            # degree-3 exactness of the cubature: E[X_i^3] = m_i^3 + 3 m_i S_ii
            _, g, _ = G.deterministic_moments(state, None, quartic)
            var = np.asarray(G.variance(state))
            np.testing.assert_allclose(np.asarray(g), -(m**3 + 3 * m * var), atol=1e-12)


def test_stochastic_oracle_is_unbiased():
    """Quartic V = sum x^4 / 4: E grad V = m^3 + 3 m s, E hess V = diag(3 (m^2 + s)) with s = diag(S).
    Averages of K = 4000 single-draw estimates must sit within 5 standard errors (the SE is
    the sample sd / sqrt(K) of each entry) of the closed forms."""
    d, num = 4, 4000
    grad_fn = value_and_grad_of(lambda p: -0.25 * jnp.sum(p**4))
    keys = jax.random.split(jax.random.key(7), num)
    for state in _states(d, seed=3):
        m = np.asarray(state.position, np.float64)
        var = np.asarray(G.variance(state), np.float64)
        g_true = -(m**3 + 3 * m * var)
        h_diag_true = -3.0 * (m**2 + var)

        def one(key):
            return G.stochastic_moments(key, state, None, grad_fn, 1, False, 1)

        _, g, curv = jax.jit(jax.vmap(one))(keys)
        checks = [(np.asarray(g, np.float64), g_true)]
        if isinstance(state, G.FullState):
            checks.append((np.asarray(curv, np.float64), np.diag(h_diag_true)))
        elif isinstance(state, G.DiagState):
            checks.append((np.asarray(curv, np.float64), h_diag_true))
        else:
            checks.append((np.asarray(curv[0], np.float64), h_diag_true[:, None] * np.asarray(state.factor)))
            checks.append((np.asarray(curv[1], np.float64), h_diag_true))
        for draws, truth in checks:
            se = draws.std(axis=0) / np.sqrt(num) + 1e-6
            assert np.all(np.abs(draws.mean(axis=0) - truth) < 5 * se), (type(state).__name__, draws.mean(0), truth)


def test_antithetic_pairs_are_exact_on_quadratics():
    rng = np.random.default_rng(2)
    d = 5
    a, _ = spd(rng, rng.uniform(0.5, 3.0, d))
    mu = rng.normal(size=d)
    with jax.enable_x64(True):
        grad_fn = value_and_grad_of(lambda p: -0.5 * (p - mu) @ a @ (p - mu))
        state = _states(d)[0]
        for seed in range(3):
            _, g, h = G.stochastic_moments(jax.random.key(seed), state, None, grad_fn, 2, True, 1)
            np.testing.assert_allclose(np.asarray(g), -a @ (np.asarray(state.position) - mu), atol=1e-12)
            np.testing.assert_allclose(np.asarray(h), -a, atol=1e-12)


def _shapes_in(jaxpr, out):
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            out.add(tuple(getattr(v.aval, "shape", ())))
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else [p]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    _shapes_in(getattr(inner, "jaxpr", inner), out)
    return out


@pytest.mark.parametrize("covariance,forms_dxd", [("full", True), ("diag", False), ("lowrank", False)])
def test_structured_variants_never_form_a_d_by_d_matrix(covariance, forms_dxd):
    """The step's jaxpr (model, HVPs and update) has no d x d array for diag / low rank (d = 37);
    the full variant, the positive control, has."""
    d = 37
    method = hb.vi.fbgvi(1e-2, 1, covariance=covariance, rank=3)
    state = method.init(jnp.zeros(d), jax.random.key(0))
    grad_fn = value_and_grad_of(lambda p: -jnp.sum(jnp.log(jnp.cosh(p))) - 0.5 * jnp.sum(p**2))
    closed = jax.make_jaxpr(lambda k, s: method.step(k, s, None, grad_fn))(jax.random.key(1), state)
    shapes = _shapes_in(closed.jaxpr, set())
    has_dxd = any(len(s) >= 2 and s.count(d) >= 2 for s in shapes)
    assert has_dxd == forms_dxd, sorted(shapes)


# ----------------------------------------------------------------------------------------
# Gaussian targets
# ----------------------------------------------------------------------------------------
def test_deterministic_fbgvi_converges_to_the_target_for_every_h_below_one_over_lambda_max():
    """A with spectrum [0.5, 2]: 1/lambda_max = 0.5. Mean error contracts like (1 - h lam_min)^k,
    covariance like ((1 - h lam)/(1 + h lam))^k: 1500 steps reach 1e-6 at h = 0.05 with room to
    spare (0.975^1500 ~ 3e-17). T = 0.5 checks the tempered fixed point T A^-1."""
    rng = np.random.default_rng(0)
    d = 6
    a, _ = spd(rng, np.linspace(0.5, 2.0, d))
    mu = rng.normal(size=d)
    with jax.enable_x64(True):
        target = quadratic_target(a, mu)
        for h, T in [(0.05, 1.0), (0.3, 1.0), (0.49, 1.0), (0.3, 0.5)]:
            q = fit_final(target, hb.vi.fbgvi(h, 1500, mode="deterministic", temperature=T), d)
            assert np.max(np.abs(q.mean_flat - mu)) < 1e-6
            assert np.max(np.abs(q.cov - T * np.linalg.inv(a))) < 1e-6
            assert q.trace["min_variance"][-1] > 0 and not q.trace["diverging"].any()


def test_fbgvi_is_stable_above_one_over_lambda_max_where_bwsgd_is_not():
    """For 1 < h lam < 2 the FB-GVI covariance still converges, to s = h / (2 - h lam) along that
    eigenvector (the positive root of |s - h| = |1 - h lam| s), and the mean to mu; BW-SGD's
    covariance map has slope 1 - 2 h lam < -1 there and never settles."""
    rng = np.random.default_rng(0)
    d = 6
    lam = np.linspace(0.5, 2.0, d)
    a, q = spd(rng, lam)
    mu = rng.normal(size=d)
    h = 0.6  # h lam_max = 1.2
    s_fixed = np.where(h * lam <= 1, 1 / lam, h / (2 - h * lam))
    with jax.enable_x64(True):
        target = quadratic_target(a, mu)
        fb = fit_final(target, hb.vi.fbgvi(h, 600, mode="deterministic"), d, exact=(mu, np.linalg.inv(a)))
        np.testing.assert_allclose(fb.cov, (q * s_fixed) @ q.T, atol=1e-8)
        np.testing.assert_allclose(fb.mean_flat, mu, atol=1e-8)
        bw = fit_final(target, hb.vi.bwsgd(h, 600, mode="deterministic"), d, exact=(mu, np.linalg.inv(a)),
                       trace_every=50)
    assert fb.trace["kl"][-1] < 0.05
    # BW-SGD wanders (chaotically, staying finite): measured KL between 0.5 and 6 over the last
    # 300 steps, never settling
    kl_bw = bw.trace["kl"][6:]
    # (chaotic: the exact values depend on the CPU's last bits; one machine's minimum was 0.02, a
    # passage near the solution, so the test reads where it stays, not its closest pass)
    assert not np.all(np.isfinite(kl_bw)) or (np.median(kl_bw) > 0.3 and kl_bw.max() > 0.5)


def test_paper_setup_deterministic_budget_200():
    """Diao et al.'s d = 10 experiment, total time 200 with 180 iterations (h = 1.11 > 1/lam_max = 1).
    Measured (float32): FB-GVI KL 0.019, decreasing; BW-SGD's KL jumps chaotically (0.12 to 3.7
    over steps 100-180; its final value depends on float32 rounding, 3.3 or 0.96 in two
    builds), so the test asserts it never meets FB-GVI's bar (0.05) there and exceeds 1 at
    some point (the other budgets are in the benchmark)."""
    a, sigma, mu = paper_target()
    target = quadratic_target(a.astype(np.float32), mu.astype(np.float32))
    h = 200 / 180
    fb = fit_final(target, hb.vi.fbgvi(h, 180, mode="deterministic"), 10, exact=(mu, sigma), trace_every=20)
    bw = fit_final(target, hb.vi.bwsgd(h, 180, mode="deterministic"), 10, exact=(mu, sigma), trace_every=20)
    assert fb.trace["kl"][-1] < 0.05
    assert np.all(np.diff(fb.trace["kl"]) < 1e-4)  # monotone (up to float32 noise)
    kl_bw = bw.trace["kl"][4:]  # steps 100 to 180
    assert not np.all(np.isfinite(kl_bw)) or (kl_bw.min() > 0.05 and kl_bw.max() > 1.0), kl_bw


def test_stochastic_fbgvi_kl_not_above_bwsgd():
    """Same target, one draw per step, same seeds. At h = 400/360 > 1/lam_max BW-SGD's covariance
    is unstable (chaotic: measured over seeds 0-3, its KL every 30 steps reaches 20 to 820, its
    final value anywhere from 2.3 to 820 depending on float32 rounding) while FB-GVI's KL stays
    below 5 (at most 2.4 for seed 0, 4.5 over seeds 0-3); at h = 0.5 both covariance iterations
    reach A^-1 exactly (the Hessian of a Gaussian is constant) and the runs then share their
    mean noise, so the KLs agree (measured: equal to 4 digits) -- FB-GVI is never above."""
    a, sigma, mu = paper_target()
    target = quadratic_target(a.astype(np.float32), mu.astype(np.float32))
    for iters in (360, 800):
        h = 400 / iters
        every = 30 if iters == 360 else iters
        fb = fit_final(target, hb.vi.fbgvi(h, iters), 10, exact=(mu, sigma), trace_every=every)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # BW-SGD may hit non-finite states
            bw = fit_final(target, hb.vi.bwsgd(h, iters), 10, exact=(mu, sigma), trace_every=every)
        kl_fb, kl_bw = fb.trace["kl"][-1], bw.trace["kl"][-1]
        if iters == 360:  # h = 1.11
            assert np.max(fb.trace["kl"]) < 5.0
            assert not np.all(np.isfinite(bw.trace["kl"])) or np.max(bw.trace["kl"]) > 10.0
        else:
            assert kl_fb <= kl_bw * (1 + 1e-3) + 1e-6


@pytest.mark.slow
def test_stochastic_fbgvi_vs_bwsgd_paper_budgets_over_seeds():
    """The paper's stochastic budgets (time 400; 360, 400, 800, 6400 iterations), 5 seeds each.
    At h = 1.11 FB-GVI's KL is below BW-SGD's on every seed (BW-SGD 2-821). At h <= 1 = 1/lam_max
    both covariances reach A^-1 and the final KL is the mean's noise: the paired difference
    KL_FB - KL_BW has mean within 2 standard errors of 0 or below (measured at h = 1: 0.75 +- 0.46
    vs 0.66 +- 0.42, FB-GVI lower on 2 of 5 seeds; at h = 0.5 and 0.0625 equal on every seed)."""
    a, sigma, mu = paper_target()
    target = quadratic_target(a.astype(np.float32), mu.astype(np.float32))
    for iters in (360, 400, 800, 6400):
        h = 400 / iters
        fb, bw = [], []
        for seed in range(5):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                fb.append(fit_final(target, hb.vi.fbgvi(h, iters), 10, exact=(mu, sigma), seed=seed).trace["kl"][-1])
                bw.append(fit_final(target, hb.vi.bwsgd(h, iters), 10, exact=(mu, sigma), seed=seed).trace["kl"][-1])
        fb, bw = np.asarray(fb, np.float64), np.asarray(bw, np.float64)
        if iters == 360:
            # BW-SGD is unstable here and its final KL is chaotic across seeds and machines
            # (measured 2.3, 589, 821, 50, 76 on one machine and 28.4, 5.5, 4.3, 7.5, 6.5 on
            # another, against FB-GVI's 0.73-1.58), so the bar is the paired comparison (a bar
            # on the ratio of means, 10x, failed on the second machine: 9.3x).
            assert np.all(fb < 3.0) and np.all(~np.isfinite(bw) | (bw > fb)), (fb, bw)
        else:
            diff = fb - bw
            assert diff.mean() <= 2 * diff.std(ddof=1) / np.sqrt(len(diff)) + 1e-6, (iters, fb, bw)


def test_lowrank_is_exact_in_its_family_and_stationary_outside():
    """Target covariance D + U U^T with rank 3: rank-3 FB-GVI recovers it (KL ~ 0); rank 2 stops at
    a stationary point of the KL over the family: diag(A - S^-1) = 0 and (A - S^-1) U = 0."""
    rng = np.random.default_rng(0)
    d, r = 12, 3
    sigma = np.diag(rng.uniform(0.5, 2.0, d)) + (lambda u: u @ u.T)(rng.normal(size=(d, r)))
    a = np.linalg.inv(sigma)
    mu = rng.normal(size=d)
    with jax.enable_x64(True):
        target = quadratic_target(0.5 * (a + a.T), mu)
        exact = fit_final(target, hb.vi.fbgvi(0.5, 2000, mode="deterministic", covariance="lowrank", rank=3), d,
                          exact=(mu, sigma))
        lower = fit_final(target, hb.vi.fbgvi(0.5, 2000, mode="deterministic", covariance="lowrank", rank=2), d,
                          exact=(mu, sigma))
        diag = fit_final(target, hb.vi.fbgvi(0.5, 2000, mode="deterministic", covariance="diag"), d,
                         exact=(mu, sigma))
        cov_exact, cov_lower, var_diag = exact.cov, lower.cov, diag.variance
    assert exact.trace["kl"][-1] < 1e-8
    np.testing.assert_allclose(cov_exact, sigma, atol=1e-6)
    resid = a - np.linalg.inv(cov_lower)
    assert np.max(np.abs(np.diag(resid))) < 1e-6  # |A| ~ 1; measured 2e-7 after 2000 steps
    assert np.max(np.abs(resid @ np.asarray(lower.state.factor))) < 1e-6
    # mean-field optimum: S = diag(1 / A_ii)
    np.testing.assert_allclose(var_diag, 1 / np.diag(a), rtol=1e-8)
    assert 0 < lower.trace["kl"][-1] < diag.trace["kl"][-1]


# ----------------------------------------------------------------------------------------
# reference posteriors
# ----------------------------------------------------------------------------------------
def _reference(name):
    from heatbath.models.references import reference

    return reference(name)


def test_brownian_motion_exact_posterior_moments():
    """The posterior is Gaussian (precision spectrum [5.6, 438]); h = 0.9 / 438, so the slowest
    direction contracts by 1 - 0.9 * 5.6 / 438 = 0.9885 per step: 1e-5 after 1000 steps.
    Full-covariance FB-GVI, deterministic and stochastic with antithetic pairs (both exact on
    quadratics): mean within 0.05 sd, sd within 5% (measured: 1e-5 sd and 1e-5 relative)."""
    ref = _reference("brownian_motion")
    exact = ref.extra["locs_exact_gaussian"]
    h = 0.9 / 437.8
    for kw in [dict(mode="deterministic"), dict(antithetic=True)]:
        q = hb.fit(ref.model, hb.vi.fbgvi(h, 1000, **kw), data=dict(ref.data), init={"locs": np.zeros(30)},
                   exact=(exact["mean"], exact["cov"]), elbo_samples=0, trace_every=500)
        z = np.abs(q.mean_flat - exact["mean"]) / exact["sd"]
        assert z.max() < 0.05, kw
        assert np.max(np.abs(q.sd / exact["sd"] - 1)) < 0.05, kw
        assert q.trace["kl"][-1] < 1e-3
    # the diagonal variant finds the exact mean-field optimum
    mf = ref.extra["meanfield_gaussian_vi_optimum"]
    q = hb.fit(ref.model, hb.vi.fbgvi(h, 1000, mode="deterministic", covariance="diag"), data=dict(ref.data),
               init={"locs": np.zeros(30)}, elbo_samples=0, trace_every=1000)
    mf_mean = np.asarray(mf["mean"] if "mean" in mf else mf["locs"]["mean"])
    mf_sd = np.asarray(mf["sd"] if "sd" in mf else mf["locs"]["sd"])
    assert np.max(np.abs(q.mean_flat - mf_mean) / mf_sd) < 0.01
    np.testing.assert_allclose(q.sd, mf_sd, rtol=0.01)


def constant_then_decay(h0, k0, gamma=2.0):
    def schedule(k):
        k = jnp.asarray(k, jnp.float32)
        return h0 * jnp.minimum(1.0, (k0 / jnp.maximum(k, 1.0)) ** gamma)

    return schedule


def test_german_credit_matches_the_reference():
    """Stochastic FB-GVI (one antithetic pair, full covariance) from N(0, 0.01 I), h = 2.2e-3 <
    1/lambda_max = 1/379 for 100 steps then decaying like (100/k)^2: means within 0.1 reference
    sd, sds within 10% after 300 steps (600 gradient calls, 15000 HVPs); measured over seeds 0-4
    with the same schedule: accurate for good from step 80-150 on, final max z 0.01-0.04. The
    comparison uses 20000 draws of q (MC error of a mean: 0.007 sd)."""
    ref = _reference("german_credit")
    method = hb.vi.fbgvi(constant_then_decay(2.2e-3, 100), 300, antithetic=True, init_cov=0.01)
    q = hb.fit(ref.model, method, data=dict(ref.data), init={"weights": np.zeros(25)}, elbo_samples=64, seed=1)
    cmp = ref.compare({k: v[None] for k, v in q.sample(0, 20000).items()})
    assert cmp["max_abs_z"] < 0.1
    assert 0.9 < cmp["sd_ratio_min"] and cmp["sd_ratio_max"] < 1.1
    assert q.grad_calls == 600 and q.hvp_calls == 300 * 2 * 25
    assert q.grad_evals == 600 * 1000 and q.hvp_evals == 15000 * 1000
    # the ELBO trace (64 common draws per point) rises and ends near its maximum (measured: from
    # -541.8 at step 4 to -529.3)
    elbo = q.trace["elbo"]
    assert elbo[-1] > elbo[0] + 5 and elbo[-1] > elbo.max() - 1.0


# ----------------------------------------------------------------------------------------
# doubly stochastic VI, the result object, costs
# ----------------------------------------------------------------------------------------
def _linear_regression(n=400, d=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=n)
    prec = np.eye(d) + x.T @ x  # prior N(0, I), noise sd 1
    cov = np.linalg.inv(prec)
    return x.astype(np.float32), y.astype(np.float32), cov @ x.T @ y, cov


def test_doubly_stochastic_minibatch_fbgvi():
    """Conjugate linear regression (N = 400): minibatches of 40 with SVRG gradients (refreshed
    every 50 steps), one antithetic pair per step, h decaying like 1/k after 100 steps. The
    exact posterior is Gaussian; after 1500 steps the mean is within 0.05 posterior sd and the
    sds within 10% (measured over seeds 0-3: mean error < 1e-3 sd, sds within 3.6%, KL < 0.003;
    the sd error is the minibatch Hessian's noise)."""
    x, y, mean, cov = _linear_regression()
    target = hb.models.from_logdensity(
        lambda p: -0.5 * jnp.sum(p**2),
        lambda p, b: -0.5 * jnp.sum((b[1] - b[0] @ p) ** 2),
        (x, y),
        params=jnp.zeros(3),
    )
    lam_max = np.linalg.eigvalsh(np.linalg.inv(cov)).max()
    step = hb.kernels.schedules.polynomial_decay(0.5 / lam_max * 100, 100, 1.0)
    method = hb.vi.fbgvi(step, 1500, antithetic=True, gradient=hb.kernels.gradients.svrg(50))
    q = hb.fit(target, method, batch_size=40, init=jnp.zeros(3), elbo_samples=0, exact=(mean, cov), seed=3)
    sd = np.sqrt(np.diag(cov))
    assert np.max(np.abs(q.mean_flat - mean) / sd) < 0.05
    assert np.max(np.abs(q.sd / sd - 1)) < 0.1
    assert q.trace["kl"][-1] < 0.01
    # cost: 2 minibatch rows per datum (SVRG evaluates position and centre), a full pass at init
    # and one at each re-centring, steps 50, 100, ..., 1450 (29 of them)
    assert q.grad_evals == 1500 * 2 * 40 * 2 + 400 + 29 * 400
    assert q.hvp_calls == 1500 * 2 * 3


# slow: 3 structured fits of a 200-weight network
@pytest.mark.slow
def test_structured_variants_on_a_small_bayesian_neural_network():
    """A one-hidden-layer classifier (d = 141) with minibatches of 50 out of 500: the diagonal and
    the low-rank (r = 5) variants run doubly stochastic, keep S positive definite, and raise the
    ELBO (64 common draws on the full data) far above its starting value (measured: from -360
    at step 5 to -165 (diag) and -168 (low rank) at step 600)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)).astype(np.float32)
    t = (np.sin(x[:, 0]) + x[:, 1] * x[:, 2] > 0).astype(np.float32)
    params = {"w1": jnp.zeros((4, 20)), "b1": jnp.zeros(20), "w2": jnp.zeros((20, 1)), "b2": jnp.zeros(1)}

    def loglik(p, b):
        logit = (jnp.tanh(b[0] @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])[:, 0]
        return jnp.sum(b[1] * jax.nn.log_sigmoid(logit) + (1 - b[1]) * jax.nn.log_sigmoid(-logit))

    target = hb.models.from_logdensity(
        lambda p: -0.5 * sum(jnp.sum(v**2) for v in jax.tree.leaves(p)), loglik, (x, t), params=params
    )
    init = jax.tree.map(lambda v: jnp.asarray(0.1 * rng.normal(size=v.shape), jnp.float32), params)
    for kw in [dict(covariance="diag"), dict(covariance="lowrank", rank=5)]:
        q = hb.fit(target, hb.vi.fbgvi(2e-3, 600, init_cov=0.01, **kw), batch_size=50, init=init, elbo_samples=64,
                   trace_every=5, seed=0)
        elbo = q.trace["elbo"]
        assert np.all(np.isfinite(elbo)) and not q.trace["diverging"].any()
        assert np.all(q.trace["min_variance"] > 0)
        assert elbo[-1] > elbo[0] + 100 and elbo[-1] > -1000, (kw, elbo)
        assert q.hvp_calls == 600 * (1 if kw["covariance"] == "diag" else 6)


def _scale_model(y):
    loc = numpyro.sample("loc", dist.Normal(0.0, 10.0))
    scale = numpyro.sample("scale", dist.HalfNormal(5.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(loc, scale), obs=y)


def test_gaussian_result_samples_constrained_and_exports_to_arviz():
    y = np.random.default_rng(0).normal(1.0, 2.0, size=200).astype(np.float32)
    # curvature: loc 200 / 4 = 50, log-scale about 2 n = 400: h = 1e-3 < 1/400
    q = hb.fit(_scale_model, hb.vi.fbgvi(1e-3, 400, antithetic=True), data={"y": y}, elbo_samples=8, seed=0,
               init={"loc": 0.0, "scale": 2.0})
    assert q.dim == 2 and set(q.mean) == {"loc", "scale"}
    draws = q.sample(jax.random.key(1), 4000)
    assert draws["scale"].shape == (4000,) and np.all(draws["scale"] > 0)
    # loc is unconstrained: its draws have q's marginal moments (SE of the mean: sd / sqrt(4000))
    i = 0 if q.unravel(jnp.arange(2.0))["loc"] == 0 else 1
    assert abs(draws["loc"].mean() - q.mean_flat[i]) < 5 * q.sd[i] / np.sqrt(4000)
    # posterior of loc ~ N(ybar, s^2 / n)
    assert abs(q.mean_flat[i] - y.mean()) < 0.05
    np.testing.assert_allclose(q.sd[i], y.std() / np.sqrt(200), rtol=0.1)
    unc = q.sample(1, 10, constrained=False)
    assert unc["scale"].shape == (10,)
    idata = q.to_arviz(500)
    assert idata.posterior["scale"].shape == (1, 500)
    assert "observed_data" in idata.groups()
    assert np.isfinite(q.elbo(0, 200)) and np.isfinite(q.trace["elbo"]).all()
    assert q.kl_to(q.mean_flat, q.cov) == pytest.approx(0.0, abs=1e-5)
    s = q.cov
    assert np.array_equal(s, s.T) and np.all(np.linalg.eigvalsh(s) > 0)
    assert "fbgvi" in repr(q)


def test_rebuild_changes_only_what_is_asked():
    m = hb.vi.bwsgd(0.1, 10, covariance="diag").rebuild(num_steps=5)
    assert m.hyperparameters["num_steps"] == 5 and m.name == "bwsgd-diag"
    m = hb.vi.fbgvi(0.1, 10, covariance="lowrank", rank=3).rebuild(step_size=0.2)
    assert m.hyperparameters["step_size"] == 0.2 and m.hyperparameters["rank"] == 3


def test_calls_per_step():
    assert G.calls_per_step(hb.vi.fbgvi(0.1, 1), 10) == (1, 10)
    assert G.calls_per_step(hb.vi.fbgvi(0.1, 1, num_mc=3, antithetic=True), 10) == (6, 60)
    assert G.calls_per_step(hb.vi.fbgvi(0.1, 1, mode="deterministic"), 10) == (20, 0)
    assert G.calls_per_step(hb.vi.fbgvi(0.1, 1, covariance="diag", num_probes=2), 10) == (1, 2)
    assert G.calls_per_step(hb.vi.fbgvi(0.1, 1, covariance="lowrank", rank=4), 10) == (1, 5)
    assert G.calls_per_step(hb.vi.fbgvi(0.1, 1, covariance="lowrank", rank=4, mode="deterministic"), 10) == (28, 0)


# ----------------------------------------------------------------------------------------
# bad input: clear errors before any compilation
# ----------------------------------------------------------------------------------------
def _discrete_model(y):
    z = numpyro.sample("z", dist.Bernoulli(0.5))
    numpyro.sample("y", dist.Normal(z, 1.0), obs=y)


def test_bad_input():
    with pytest.raises(ValueError, match="step_size must be > 0"):
        hb.vi.fbgvi(0.0, 10)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        hb.vi.bwsgd(-1e-3, 10)
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        hb.vi.fbgvi(0.1, 0)
    with pytest.raises(ValueError, match="mode"):
        hb.vi.fbgvi(0.1, 10, mode="exact")
    with pytest.raises(ValueError, match="covariance"):
        hb.vi.fbgvi(0.1, 10, covariance="banded")
    with pytest.raises(ValueError, match="low-rank"):
        hb.vi.bwsgd(0.1, 10, covariance="lowrank")
    with pytest.raises(ValueError, match="init_cov is not positive definite: its smallest eigenvalue is -1"):
        hb.vi.fbgvi(0.1, 10, init_cov=np.diag([1.0, -1.0]))
    with pytest.raises(ValueError, match="not symmetric"):
        hb.vi.fbgvi(0.1, 10, init_cov=np.array([[1.0, 0.3], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="positive number"):
        hb.vi.fbgvi(0.1, 10, init_cov=-2.0)
    with pytest.raises(ValueError, match="variances"):
        hb.vi.fbgvi(0.1, 10, covariance="diag", init_cov=np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="not a matrix"):
        hb.vi.fbgvi(0.1, 10, covariance="diag", init_cov=np.eye(2))
    y = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="discrete"):
        hb.fit(_discrete_model, hb.vi.fbgvi(0.1, 10), data={"y": y})
    with pytest.raises(ValueError, match=r"init_cov must be 2 x 2"):
        hb.fit(_scale_model, hb.vi.fbgvi(0.1, 10, init_cov=np.eye(3)), data={"y": y})
    with pytest.raises(ValueError, match="rank=5 must be smaller"):
        hb.fit(_scale_model, hb.vi.fbgvi(0.1, 10, covariance="lowrank", rank=5), data={"y": y})
    with pytest.raises(TypeError, match="Gaussian VI method"):
        hb.fit(_scale_model, hb.samplers.sgld(1e-3), data={"y": y})
    with pytest.raises(ValueError, match="exact mean must have shape"):
        hb.fit(_scale_model, hb.vi.fbgvi(0.1, 10), data={"y": y}, exact=(np.zeros(3), np.eye(2)))
    with pytest.raises(TypeError, match="flat parameter vector"):
        hb.vi.fbgvi(0.1, 10).init(jnp.zeros((2, 2)))
