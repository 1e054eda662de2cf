"""Pytree kernels, schedules and preconditioners: exact values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heatbath.kernels import preconditioners, schedules, tree


def test_tree_arithmetic_leaf_by_leaf():
    x = {"a": jnp.arange(3.0), "b": (jnp.ones((2, 2)), jnp.array(2.0))}
    y = jax.tree.map(lambda v: 2 * v + 1, x)
    np.testing.assert_allclose(tree.add(x, y)["a"], 3 * np.arange(3.0) + 1)
    np.testing.assert_allclose(tree.axpy(0.5, x, y)["b"][1], 0.5 * 2 + 5)
    assert float(tree.dot(x, x)) == pytest.approx(0 + 1 + 4 + 4 + 4)
    assert float(tree.norm(x)) == pytest.approx(np.sqrt(13.0))
    assert tree.size(x) == 8
    assert bool(tree.all_finite(x))
    assert not bool(tree.all_finite({"a": jnp.array([1.0, jnp.nan])}))


def test_normal_like_shapes_dtypes_and_moments():
    key = jax.random.key(0)
    t = {"w": jnp.zeros((200, 50)), "b": jnp.zeros((), jnp.float32)}
    n = tree.normal_like(key, t)
    assert n["w"].shape == (200, 50) and n["b"].shape == ()
    assert n["w"].dtype == jnp.float32
    # 10,000 standard normals: the mean is within 4 sd (0.04) of 0 and the variance within 4 sd (0.057) of 1.
    assert abs(float(n["w"].mean())) < 0.04
    assert abs(float(n["w"].var()) - 1) < 0.057
    # Leaves get independent streams: the same key, another tree, the same first leaf.
    n2 = tree.normal_like(key, {"b": jnp.zeros(()), "w": jnp.zeros((200, 50))})
    np.testing.assert_array_equal(n["w"], n2["w"])


def test_rademacher_and_uniform():
    key = jax.random.key(1)
    r = tree.rademacher_like(key, jnp.zeros(1000))
    assert set(np.unique(np.asarray(r))) == {-1.0, 1.0}
    u = tree.uniform_like(key, jnp.zeros(1000))
    assert float(u.min()) >= -2 and float(u.max()) <= 2


def test_schedules_values():
    assert float(schedules.constant(0.3)(7)) == pytest.approx(0.3)
    poly = schedules.polynomial_decay(1.0, 2.0, 0.5)
    assert float(poly(2)) == pytest.approx(4.0**-0.5)
    cyc = schedules.cyclical(1.0, num_steps=100, num_cycles=4)
    assert float(cyc(0)) == pytest.approx(1.0)
    assert float(cyc(25)) == pytest.approx(1.0)  # a new cycle restarts at the top
    assert float(cyc(12.5)) == pytest.approx(0.5, abs=1e-6)
    geo = schedules.geometric_cooling(2.0, 0.5)
    assert float(geo(3)) == pytest.approx(0.25)
    cool = schedules.polynomial_cooling(1.0, 10, 2.0)
    assert float(cool(5)) == pytest.approx(0.25) and float(cool(10)) == 0.0 and float(cool(20)) == 0.0


@pytest.mark.parametrize("bad", [0.0, -1e-3, float("nan"), float("inf")])
def test_as_schedule_rejects_bad_step_sizes(bad):
    with pytest.raises(ValueError, match="step_size"):
        schedules.as_schedule(bad, "step_size", positive=True)


def test_as_schedule_rejects_bad_callables():
    with pytest.raises(ValueError, match="temperature"):
        schedules.as_schedule(-0.5, "temperature", positive=False)
    with pytest.raises(TypeError, match="function of the step"):
        schedules.as_schedule(lambda a, b: a, "temperature", positive=False)
    with pytest.raises(ValueError, match="scalar"):
        schedules.as_schedule(lambda k: jnp.ones(3), "temperature", positive=False)
    with pytest.raises(ValueError, match="non-negative"):
        schedules.as_schedule(lambda k: -1.0 + 0 * k, "temperature", positive=False)
    assert schedules.as_schedule(0.0, "temperature", positive=False)(3) == 0.0


def test_rmsprop_preconditioner_update_and_correction():
    pre = preconditioners.rmsprop(decay=0.9, eps=1e-3)
    s = pre.init(jnp.zeros(2))
    g = jnp.array([2.0, -4.0])
    s = pre.update(s, g)
    V = 0.1 * g**2
    np.testing.assert_allclose(s.square_avg, V, rtol=1e-6)
    G = pre.diagonal(s)
    np.testing.assert_allclose(G, 1 / (1e-3 + np.sqrt(V)), rtol=1e-6)
    # Gamma_i = dG_i/dtheta_i with V_i = 0.9 V_prev + 0.1 g_i(theta)^2 and dg_i/dtheta_i = h_i:
    # check against a finite difference of G through g.
    h = jnp.array([0.5, -3.0])

    def G_of(theta):
        gg = g + h * theta
        return 1 / (1e-3 + jnp.sqrt(0.1 * gg**2))

    fd = (G_of(1e-3) - G_of(-1e-3)) / 2e-3
    gamma = pre.correction(s, g, h)
    np.testing.assert_allclose(gamma, fd, rtol=1e-2)


def test_fixed_preconditioner_checks():
    pre = preconditioners.fixed(2.0)
    np.testing.assert_allclose(pre.init({"a": jnp.zeros(3)})["a"], 2.0)
    with pytest.raises(ValueError, match="strictly positive"):
        preconditioners.fixed(-1.0)
    pre = preconditioners.fixed({"a": jnp.ones(3)})
    with pytest.raises(ValueError, match="tree structure"):
        pre.init({"b": jnp.zeros(3)})
