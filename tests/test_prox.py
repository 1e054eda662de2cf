"""Proximity operators (heatbath.kernels.prox) against brute-force minimisation in float64.

Each prox is checked against an independent minimiser of its defining problem (ternary search
on the 1-D convex objective for separable terms, projected gradient on the dual of 1-D total
variation with an exact KKT certificate, ISTA for the group lasso in a diagonal metric), to
1e-6; the Bregman prox of lam a |.| under hypentropy is exactly 0 in the middle region.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heatbath.kernels import mirror as M
from heatbath.kernels import prox as P
from heatbath.kernels.gradients import Nonsmooth



@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def ternary(f, lo, hi, iters=300):
    """argmin of a convex 1-D function on [lo, hi] (float64)."""
    for _ in range(iters):
        a, b = lo + (hi - lo) / 3, hi - (hi - lo) / 3
        if f(a) < f(b):
            hi = b
        else:
            lo = a
    return 0.5 * (lo + hi)


def d_psi(psi_value, psi_grad):
    return lambda y, x: psi_value(y) - psi_value(x) - psi_grad(x) * (y - x)


def hyp(beta):
    return (lambda t: t * np.arcsinh(t / beta) - np.sqrt(t * t + beta * beta), lambda t: np.arcsinh(t / beta))


def burg_fns():
    return (lambda t: -np.log(t), lambda t: -1.0 / t)


def box_fns(a, b):
    return (lambda t: -np.log(b - t) - np.log(t - a), lambda t: 1 / (b - t) - 1 / (t - a))


RNG = np.random.default_rng(0)
XS = np.concatenate([RNG.normal(size=12) * 2, [0.0, 1e-3, -1e-3, 0.05, -0.05]])


def test_l1_soft_thresholding_against_brute_force():
    w = np.abs(RNG.normal(size=XS.size)) + 0.1
    lam = 0.37
    got = np.asarray(P.l1(w).prox(jnp.asarray(XS), lam))
    for x, wi, g in zip(XS, w, got):
        ref = ternary(lambda y: wi * abs(y) + (y - x) ** 2 / (2 * lam), x - 10, x + 10)
        assert abs(g - ref) < 1e-6


@pytest.mark.parametrize("kind", ["hypentropy", "euclidean_metric", "burg", "box"])
def test_l1_bregman_prox_against_brute_force(kind):
    lam, a = 0.3, 1.7
    if kind == "hypentropy":
        beta = 0.8
        mirror, (v, g), xs, dom = M.hypentropy(beta), hyp(beta), XS, (-50, 50)
    elif kind == "euclidean_metric":
        m = 2.5
        mirror, (v, g), xs, dom = M.euclidean(m), (lambda t: 0.5 * m * t * t, lambda t: m * t), XS, (-50, 50)
    elif kind == "burg":
        mirror, (v, g), xs, dom = M.burg(), burg_fns(), np.abs(XS) + 0.01, (1e-12, 100)
    else:
        lo, hi = -1.5, 3.0
        mirror, (v, g), dom = M.box(lo, hi), box_fns(lo, hi), (lo + 1e-13, hi - 1e-13)
        xs = np.clip(XS, lo + 0.01, hi - 0.01)
    got = np.asarray(P.l1(a).bregman_prox(jnp.asarray(xs), lam, mirror))
    D = d_psi(v, g)
    for x, gx in zip(xs, got):
        ref = ternary(lambda y: a * abs(y) + D(y, x) / lam, *dom)
        assert abs(gx - ref) < 1e-6, (kind, x, gx, ref)


def test_hypentropy_bregman_prox_of_l1_is_exactly_zero_in_the_middle_region():
    s, lam, a = 0.7, 0.4, 1.3
    edge = s * np.sinh(lam * a)
    xs = jnp.asarray(np.linspace(-edge, edge, 101)[1:-1])
    out = np.asarray(P.l1(a).bregman_prox(xs, lam, M.hypentropy(s)))
    assert np.all(out == 0.0)
    # ... and the closed form outside it
    x = jnp.asarray([2 * edge, -3 * edge])
    out = np.asarray(P.l1(a).bregman_prox(x, lam, M.hypentropy(s)))
    np.testing.assert_allclose(out, [s * np.sinh(np.arcsinh(2 * edge / s) - lam * a),
                                     s * np.sinh(np.arcsinh(-3 * edge / s) + lam * a)], rtol=1e-12)


def test_simplex_bregman_prox_of_l1_satisfies_its_optimality_condition():
    x = jnp.asarray([0.2, 0.3, 0.1])
    w, lam = jnp.asarray([1.0, 0.5, 2.0]), 0.3
    mirror = M.simplex()
    p = P.l1(w).bregman_prox(x, lam, mirror)
    # g is linear on the simplex: grad psi(P) = grad psi(x) - lam w exactly
    np.testing.assert_allclose(mirror.grad(p), mirror.grad(x) - lam * w, atol=1e-12)
    assert bool(jnp.all(p > 0)) and float(jnp.sum(p)) < 1


def test_box_and_nonnegative_projection_and_bregman_projection():
    lo, hi = -0.5, 1.2
    x = jnp.asarray(XS)
    np.testing.assert_array_equal(P.box(lo, hi).prox(x, 0.1), np.clip(XS, lo, hi))
    np.testing.assert_array_equal(P.nonnegative().prox(x, 0.1), np.maximum(XS, 0))
    beta = 0.6
    v, g = hyp(beta)
    D = d_psi(v, g)
    got = np.asarray(P.box(lo, hi).bregman_prox(x, 0.1, M.hypentropy(beta)))
    for xi, gi in zip(XS, got):
        assert abs(gi - ternary(lambda y: D(y, xi), lo, hi)) < 1e-6
    assert float(P.box(lo, hi).value(jnp.asarray([0.0, 2.0]))) == np.inf


def tv_brute(y, t, iters=15000):
    """prox of t TV by projected gradient on the dual min |y - D^T u|^2/2, |u|_inf <= t (float64)."""
    n = y.size
    u = np.zeros(n - 1)
    for _ in range(iters):
        x = y.copy()
        x[:-1] += u
        x[1:] -= u  # x = y - D^T u with (D x)_i = x_{i+1} - x_i
        u = np.clip(u + 0.25 * (x[1:] - x[:-1]), -t, t)
    x = y.copy()
    x[:-1] += u
    x[1:] -= u
    return x


@pytest.mark.parametrize("seed,n,t", [(1, 9, 0.3), (2, 14, 1.0), (3, 12, 0.05), (4, 6, 5.0)])
def test_tv1d_prox_against_the_dual_and_its_kkt_certificate(seed, n, t):
    rng = np.random.default_rng(seed)
    y = np.cumsum(rng.normal(size=n)) + rng.normal(size=n)
    got = np.asarray(P.tv1d(1.0).prox(jnp.asarray(y), t))
    assert np.max(np.abs(got - tv_brute(y, t))) < 1e-6
    # KKT: u_i = sum_{j <= i} (y_j - x_j), |u| <= t, u_i = -t sign(x_{i+1} - x_i) where they differ
    u = np.cumsum(y - got)[:-1]
    assert abs(np.sum(y - got)) < 1e-9 and np.all(np.abs(u) <= t + 1e-9)
    jumps = np.abs(np.diff(got)) > 1e-9
    np.testing.assert_allclose(u[jumps], -t * np.sign(np.diff(got))[jumps], atol=1e-9)


def test_tv1d_on_a_batch_of_signals_and_trivial_cases():
    rng = np.random.default_rng(5)
    y = rng.normal(size=(3, 2, 7))
    got = np.asarray(P.tv1d(2.0).prox(jnp.asarray(y), 0.2))
    for i, j in ((0, 0), (2, 1)):
            assert np.max(np.abs(got[i, j] - tv_brute(y[i, j], 0.4))) < 1e-6
    np.testing.assert_allclose(P.tv1d(1.0).prox(jnp.asarray(y), 100.0), np.broadcast_to(y.mean(-1, keepdims=True),
                                                                                       y.shape), atol=1e-9)
    np.testing.assert_allclose(P.tv1d(1.0).prox(jnp.asarray(y), 0.0), y, atol=1e-12)


def ista_group(x, m, t, lam, iters=20000):
    """argmin t|y| + (y - x)^T M (y - x) / (2 lam) by ISTA with the Euclidean group prox."""
    y = x.copy()
    s = lam / m.max()
    for _ in range(iters):
        z = y - s * m * (y - x) / lam
        r = np.linalg.norm(z)
        y = z * max(0.0, 1 - s * t / r) if r > 0 else z
    return y


def test_group_lasso_prox_and_diagonal_metric_bregman_prox_against_ista():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 5))
    lam, w = 0.5, 1.3
    got = np.asarray(P.group_lasso(w).prox(jnp.asarray(x), lam))
    for row, g in zip(x, got):
        np.testing.assert_allclose(g, row * max(0, 1 - lam * w / np.linalg.norm(row)), atol=1e-12)
        assert np.max(np.abs(g - ista_group(row, np.ones(5), w, lam))) < 1e-6
    m = np.abs(rng.normal(size=5)) + 0.3
    x = x * np.array([[1.0], [0.3], [2.0], [0.1]])  # a row inside the zero region too
    got = np.asarray(P.group_lasso(w).bregman_prox(jnp.asarray(x), lam, M.euclidean(jnp.asarray(m))))
    for row, g in zip(x, got):
        assert np.max(np.abs(g - ista_group(row, m, w, lam))) < 1e-6


def test_envelope_gradients_are_the_gradients_of_the_envelopes():
    x = jnp.asarray([0.9, -0.2, 0.01, -2.0])
    g, lam = P.l1(jnp.asarray([1.0, 2.0, 3.0, 0.5])), 0.2
    val, grad = P.moreau_envelope(g, x, lam)
    num = jax.grad(lambda z: P.moreau_envelope(g, z, lam)[0])(x)
    np.testing.assert_allclose(grad, num, atol=1e-9)
    mirror = M.hypentropy(0.5)
    val, grad = P.bregman_moreau_envelope(g, mirror, x, lam)
    # central differences of the envelope value (the prox has a kink: differentiate numerically)
    eps = 1e-6
    env = jax.jit(jax.vmap(lambda z: P.bregman_moreau_envelope(g, mirror, z, lam)[0]))
    shifts = eps * np.eye(4)
    num = (env(x + shifts) - env(x - shifts)) / (2 * eps)
    np.testing.assert_allclose(grad, num, atol=1e-6)


def test_sites_applies_terms_by_name():
    t = P.sites(w=P.l1(1.0))
    x = {"w": jnp.asarray([2.0, -0.5]), "b": jnp.asarray(3.0)}
    out = t.prox(x, 1.0)
    np.testing.assert_allclose(out["w"], [1.0, 0.0])
    assert float(out["b"]) == 3.0 and float(t.value(x)) == 2.5
    out = t.bregman_prox(x, 1.0, M.hypentropy({"w": jnp.ones(2), "b": jnp.ones(())}))
    assert float(out["b"]) == 3.0


def test_wrong_shape_or_structure_is_a_clear_value_error():
    x = jnp.zeros(3)
    with pytest.raises(ValueError, match="l1 weights leaf of shape"):
        P.check(P.l1(jnp.ones(5)), x)
    with pytest.raises(ValueError, match="tree structure"):
        P.check(P.l1({"a": 1.0, "b": 2.0}), {"a": jnp.zeros(2)})
    with pytest.raises(ValueError, match="needs a dict position"):
        P.check(P.sites(w=P.l1()), x)
    with pytest.raises(ValueError, match="no site"):
        P.check(P.sites(w=P.l1()), {"v": x})
    bad = Nonsmooth(value=lambda z: jnp.abs(z), prox=lambda z, lam: z)
    with pytest.raises(ValueError, match="must be a scalar"):
        P.check(bad, x)
    bad = Nonsmooth(value=lambda z: jnp.sum(jnp.abs(z)), prox=lambda z, lam: z[:2])
    with pytest.raises(ValueError, match="leaf of shape"):
        P.check(bad, x)
    with pytest.raises(ValueError, match="no Bregman prox"):
        P.check(Nonsmooth(value=lambda z: jnp.sum(jnp.abs(z)), prox=lambda z, lam: z), x, M.hypentropy())
    with pytest.raises(ValueError, match="not available"):
        P.check(P.tv1d(), x, M.hypentropy())
    with pytest.raises(ValueError, match="lower < upper"):
        P.box(1.0, 0.0)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        P.l1(-1.0)
