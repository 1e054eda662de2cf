"""heatbath.kernels.linalg: PSD square root (values and derivatives), SPD checks, Gaussian KL and
2-Wasserstein distance, Woodbury helpers. Exact comparisons run in float64 (jax.enable_x64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from heatbath.kernels import linalg


def _spd(rng, d, low=0.5, high=3.0, eigs=None):
    q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    lam = rng.uniform(low, high, d) if eigs is None else np.asarray(eigs, float)
    return (q * lam) @ q.T


def test_sqrtm_psd_matches_scipy_and_squares_back():
    rng = np.random.default_rng(0)
    a = _spd(rng, 6)
    with jax.enable_x64(True):
        r = np.asarray(linalg.sqrtm_psd(jnp.asarray(a)))
    np.testing.assert_allclose(r, np.real(scipy.linalg.sqrtm(a)), atol=1e-12)
    np.testing.assert_allclose(r @ r, a, atol=1e-12)
    assert np.array_equal(r, r.T)  # symmetric by construction, to the bit


def test_sqrtm_psd_clips_roundoff_negative_eigenvalues_and_batches():
    a = np.diag([4.0, -1e-9])  # PSD up to roundoff
    r = np.asarray(linalg.sqrtm_psd(jnp.asarray(a, jnp.float32)))
    np.testing.assert_array_equal(r, np.diag([2.0, 0.0]).astype(np.float32))
    stack = jnp.stack([jnp.eye(3) * 4.0, jnp.eye(3) * 9.0])
    np.testing.assert_allclose(np.asarray(linalg.sqrtm_psd(stack)), np.stack([2 * np.eye(3), 3 * np.eye(3)]), rtol=1e-6)


def test_sqrtm_psd_jvp_solves_the_sylvester_equation():
    """d sqrt(A)[E] is the X with sqrt(A) X + X sqrt(A) = E (Daleckii-Krein)."""
    rng = np.random.default_rng(1)
    a = _spd(rng, 5)
    e = rng.normal(size=(5, 5))
    e = e + e.T
    with jax.enable_x64(True):
        root, tangent = jax.jvp(linalg.sqrtm_psd, (jnp.asarray(a),), (jnp.asarray(e),))
    root = np.asarray(root)
    expected = scipy.linalg.solve_sylvester(root, root, e)
    np.testing.assert_allclose(np.asarray(tangent), expected, atol=1e-11)


def test_sqrtm_psd_derivative_is_stable_at_repeated_eigenvalues():
    """At A = 4 I every eigenvalue repeats: eigh's own derivative divides by lam_i - lam_j = 0,
    the Daleckii-Krein JVP gives exactly E / (2 * 2). Gradients match central differences."""
    e = np.arange(9.0).reshape(3, 3)
    e = e + e.T
    with jax.enable_x64(True):
        _, tangent = jax.jvp(linalg.sqrtm_psd, (4.0 * jnp.eye(3),), (jnp.asarray(e),))
        np.testing.assert_allclose(np.asarray(tangent), e / 4.0, rtol=1e-14)

        rng = np.random.default_rng(2)
        a = _spd(rng, 4, eigs=[1.0, 1.0, 2.0, 2.0])  # two repeated pairs
        w = jnp.asarray(rng.normal(size=(4, 4)))

        def f(x):
            return jnp.sum(w * linalg.sqrtm_psd(x))

        grad = np.asarray(jax.grad(f)(jnp.asarray(a)))
        assert np.all(np.isfinite(grad))
        # f depends on the symmetric part of its input only; compare along symmetric directions
        for i, j in [(0, 0), (1, 2), (3, 0)]:
            direction = np.zeros((4, 4))
            direction[i, j] += 1.0
            direction[j, i] += 1.0
            eps = 1e-6
            fd = (f(jnp.asarray(a + eps * direction)) - f(jnp.asarray(a - eps * direction))) / (2 * eps)
            np.testing.assert_allclose(np.sum(grad * direction), float(fd), rtol=1e-7, atol=1e-9)


def test_logdet():
    rng = np.random.default_rng(3)
    a = _spd(rng, 5)
    with jax.enable_x64(True):
        np.testing.assert_allclose(float(linalg.logdet_spd(jnp.asarray(a))), np.linalg.slogdet(a)[1], rtol=1e-13)


def test_check_spd_errors_name_the_problem():
    with pytest.raises(ValueError, match="square"):
        linalg.check_spd(np.ones((2, 3)), "init_cov")
    with pytest.raises(ValueError, match="symmetric"):
        linalg.check_spd(np.array([[1.0, 0.5], [0.0, 1.0]]), "init_cov")
    with pytest.raises(ValueError, match=r"positive definite: its smallest eigenvalue is -1"):
        linalg.check_spd(np.diag([2.0, -1.0]), "init_cov")
    with pytest.raises(ValueError, match="non-finite"):
        linalg.check_spd(np.array([[1.0, np.inf], [np.inf, 1.0]]), "init_cov")
    with pytest.raises(ValueError, match="3 x 3"):
        linalg.check_spd(np.eye(2), "init_cov", dim=3)
    np.testing.assert_array_equal(linalg.check_spd(np.eye(2)), np.eye(2))


def test_gaussian_kl_closed_form():
    rng = np.random.default_rng(5)
    d = 4
    s0, s1 = _spd(rng, d), _spd(rng, d)
    m0, m1 = rng.normal(size=d), rng.normal(size=d)
    inv1 = np.linalg.inv(s1)
    expected = 0.5 * (
        np.trace(inv1 @ s0) + (m1 - m0) @ inv1 @ (m1 - m0) - d + np.linalg.slogdet(s1)[1] - np.linalg.slogdet(s0)[1]
    )
    with jax.enable_x64(True):
        kl = float(linalg.gaussian_kl(*(jnp.asarray(x) for x in (m0, s0, m1, s1))))
        self_kl = float(linalg.gaussian_kl(*(jnp.asarray(x) for x in (m0, s0, m0, s0))))
    np.testing.assert_allclose(kl, expected, rtol=1e-12)
    assert abs(self_kl) < 1e-12


def test_gaussian_w2_closed_forms_and_gradient():
    """W2 between Gaussians: |m0 - m1|^2 + |S0^(1/2) - S1^(1/2)|_F^2 when S0 and S1 commute
    (same eigenvectors); against scipy's sqrtm for a general pair; symmetric; 0 on itself; its
    gradient in S0 matches a central finite difference."""
    rng = np.random.default_rng(7)
    d = 4
    q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    l0, l1 = rng.uniform(0.5, 3, d), rng.uniform(0.5, 3, d)
    s0, s1 = (q * l0) @ q.T, (q * l1) @ q.T
    m0, m1 = rng.normal(size=d), rng.normal(size=d)
    commuting = np.sum((m0 - m1) ** 2) + np.sum((np.sqrt(l0) - np.sqrt(l1)) ** 2)
    a, b = _spd(rng, d), _spd(rng, d)
    rb = np.real(scipy.linalg.sqrtm(b))
    general = np.sum((m0 - m1) ** 2) + np.trace(a + b - 2 * np.real(scipy.linalg.sqrtm(rb @ a @ rb)))
    with jax.enable_x64(True):
        w2 = lambda *x: float(linalg.gaussian_w2(*(jnp.asarray(v) for v in x)))  # noqa: E731
        np.testing.assert_allclose(w2(m0, s0, m1, s1) ** 2, commuting, rtol=1e-11)
        np.testing.assert_allclose(w2(m0, a, m1, b) ** 2, general, rtol=1e-11)
        np.testing.assert_allclose(w2(m1, b, m0, a), w2(m0, a, m1, b), rtol=1e-11)
        assert w2(m0, a, m0, a) < 1e-6
        f = lambda x: linalg.gaussian_w2(jnp.asarray(m0), x, jnp.asarray(m1), jnp.asarray(b))  # noqa: E731
        grad = np.asarray(jax.grad(f)(jnp.asarray(a)))
        e = rng.normal(size=(d, d))
        e = e + e.T
        fd = (float(f(jnp.asarray(a + 1e-6 * e))) - float(f(jnp.asarray(a - 1e-6 * e)))) / 2e-6
        np.testing.assert_allclose(np.sum(grad * e), fd, rtol=1e-6)


def test_diagonal_plus_low_rank_woodbury():
    rng = np.random.default_rng(6)
    d, r = 7, 3
    diag = rng.uniform(0.2, 2.0, d)
    u = rng.normal(size=(d, r))
    s = np.diag(diag) + u @ u.T
    inv = np.linalg.inv(s)
    v = rng.normal(size=(d, 2))
    with jax.enable_x64(True):
        inv_diag, apply_inv = linalg.dplr_inverse_parts(jnp.asarray(diag), jnp.asarray(u))
        np.testing.assert_allclose(np.asarray(inv_diag), np.diag(inv), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(apply_inv(jnp.asarray(v))), inv @ v, rtol=1e-11)
        np.testing.assert_allclose(np.asarray(apply_inv(jnp.asarray(v[:, 0]))), inv @ v[:, 0], rtol=1e-11)
        np.testing.assert_allclose(
            float(linalg.dplr_logdet(jnp.asarray(diag), jnp.asarray(u))), np.linalg.slogdet(s)[1], rtol=1e-12
        )
