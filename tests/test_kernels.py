"""Pytree kernels, schedules and preconditioners: exact values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from heatbath.kernels import preconditioners, schedules, tree


def test_tree_arithmetic_leaf_by_leaf():
    x = {"a": jnp.arange(3.0), "b": (jnp.ones((2, 2)), jnp.array(2.0))}
    y = jax.tree.map(lambda v: 2 * v + 1, x)
    np.testing.assert_allclose(tree.add(x, y)["a"], 3 * np.arange(3.0) + 1)
    np.testing.assert_allclose(tree.sub(y, tree.scale(2.0, x))["b"][1], 1.0)
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
    with pytest.raises(ValueError, match="diagonal must be > 0"):
        preconditioners.fixed(-1.0)
    for bad in (float("nan"), {"a": jnp.array([1.0, jnp.nan])}, {"a": jnp.array([1.0, jnp.inf])}):
        with pytest.raises(ValueError, match="diagonal.* must be > 0 and finite"):
            preconditioners.fixed(bad)
    with pytest.raises(TypeError, match="diagonal must be a number or a pytree"):
        preconditioners.fixed("2")
    pre = preconditioners.fixed({"a": jnp.ones(3)})
    with pytest.raises(ValueError, match="tree structure"):
        pre.init({"b": jnp.zeros(3)})
    assert pre.window == 0 and pre.correction is None


def _optax_scaling(tx, grads):
    """optax's update direction for successive gradients (the preconditioned gradient)."""
    state = tx.init(grads[0])
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update(g, state)
        out.append(u)
    return out


@pytest.mark.parametrize(
    "make_pre, make_tx",
    [
        (lambda: preconditioners.rmsprop(0.9, 1e-3), lambda: optax.scale_by_rms(0.9, 1e-3, eps_in_sqrt=False)),
        (lambda: preconditioners.rmsprop(0.9, 1e-3, eps_in_sqrt=True), lambda: optax.scale_by_rms(0.9, 1e-3)),
        (lambda: preconditioners.rmsprop(0.8, 1e-3, bias_correction=True, initial_scale=0.3),
         lambda: optax.scale_by_rms(0.8, 1e-3, initial_scale=0.3, eps_in_sqrt=False, bias_correction=True)),
        (lambda: preconditioners.adam(0.95, 1e-6, 1e-8), lambda: optax.scale_by_adam(b1=0.0, b2=0.95, eps=1e-6, eps_root=1e-8)),
    ],
)
def test_second_moment_preconditioners_are_optax_exactly(make_pre, make_tx):
    """G g of rmsprop(...) / adam(...) equals optax's scale_by_rms / scale_by_adam(b1=0) update,
    bit for bit, step after step (the preconditioner keeps optax's arithmetic; both sides
    compiled, as in a run), and G (the noise's diagonal) is the same scaling."""
    rng = np.random.default_rng(0)
    grads = [jnp.asarray(rng.normal(size=5), jnp.float32) for _ in range(6)]
    pre = make_pre()
    ref = _optax_scaling(make_tx(), grads)
    state = pre.init(jnp.zeros(5))

    @jax.jit
    def step(state, g):
        state = pre.update(state, g)
        return state, preconditioners.precondition(pre, state, g)

    for g, want in zip(grads, ref):
        state, got = step(state, g)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(pre.diagonal(state) * g, want, rtol=1e-6)
    assert int(state.count) == 6


def _fd_gamma(pre, state_prev, g, hess):
    """d G_i / d theta_i by central differences, with g_i(theta) = g_i + H_ii theta_i."""
    def G_of(t):
        return pre.diagonal(pre.update(state_prev, g + hess * t))

    return (G_of(1e-5) - G_of(-1e-5)) / 2e-5


@pytest.mark.parametrize(
    "make_pre",
    [
        lambda: preconditioners.rmsprop(0.9, 1e-3),
        lambda: preconditioners.rmsprop(0.9, 1e-3, eps_in_sqrt=True),
        lambda: preconditioners.rmsprop(0.9, 1e-3, bias_correction=True, initial_scale=0.2),
        lambda: preconditioners.adam(0.99, 1e-3, 1e-4),
    ],
)
def test_second_moment_correction_is_the_divergence_of_G(make_pre):
    """Gamma_i = d G_ii / d theta_i, V (and its bias correction) a function of theta through
    g: checked against a central finite difference of G in float64 (step 1e-5: truncation
    error ~1e-10 and roundoff ~1e-11 relative; tolerance 1e-7)."""
    with jax.enable_x64(True):
        pre = make_pre()
        g = jnp.array([2.0, -4.0, 0.5])
        hess = jnp.array([0.5, -3.0, 2.0])
        prev = pre.update(pre.init(jnp.zeros(3)), jnp.array([1.0, 1.5, -0.3]))  # some history
        state = pre.update(prev, g)
        np.testing.assert_allclose(pre.correction(state, g, hess), _fd_gamma(pre, prev, g, hess), rtol=1e-7)


def test_preconditioner_windows():
    """The correction starts once the averaging window is full: ceil(1 / (1 - decay))."""
    assert preconditioners.rmsprop(0.99).window == 100
    assert preconditioners.rmsprop(0.9).window == 10
    assert preconditioners.rmsprop(0.0).window == 1
    assert preconditioners.adam(0.999).window == 1000
    assert preconditioners.identity().window == 0


def test_preconditioner_argument_checks():
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\), got 1"):
        preconditioners.rmsprop(1.0)
    with pytest.raises(TypeError, match="decay must be a real number"):
        preconditioners.rmsprop("0.9")
    with pytest.raises(ValueError, match="eps must be > 0"):
        preconditioners.rmsprop(0.9, 0.0)
    with pytest.raises(TypeError, match="eps_in_sqrt must be True or False"):
        preconditioners.rmsprop(0.9, eps_in_sqrt="no")
    with pytest.raises(ValueError, match="b2 must be in"):
        preconditioners.adam(b2=-0.1)
    with pytest.raises(ValueError, match="eps_root must be >= 0"):
        preconditioners.adam(eps_root=-1.0)


# ----------------------------------------------------------------------------------------
# tree.leafwise and the shared argument checks
# ----------------------------------------------------------------------------------------
def test_leafwise():
    like = {"a": jnp.zeros(2), "b": jnp.zeros((), jnp.float16)}
    out = tree.leafwise(2.0, like, "mass")
    assert float(out["a"]) == 2.0 and out["b"].dtype == jnp.float16
    out = tree.leafwise({"a": jnp.array([1.0, 3.0]), "b": 2}, like, "mass")
    np.testing.assert_array_equal(out["a"], [1.0, 3.0])
    with pytest.raises(ValueError, match="mass has tree structure"):
        tree.leafwise({"a": 1.0}, like, "mass")
    with pytest.raises(ValueError, match=r"mass leaf of shape \(3,\) does not broadcast"):
        tree.leafwise({"a": jnp.ones(3), "b": 1.0}, like, "mass")


def test_validate_rules():
    """Wrong type: TypeError; wrong value: ValueError; the message names the argument."""
    from heatbath.kernels import validate as V
    assert V.check_int(3, "n", minimum=1) == 3 and V.check_int(np.int64(3), "n") == 3
    for bad in (2.5, "3", True, None):
        with pytest.raises(TypeError, match="n must be an integer"):
            V.check_int(bad, "n")
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        V.check_int(0, "n", minimum=1)
    assert V.check_real(1, "x") == 1.0 and V.check_real(jnp.asarray(0.5), "x") == 0.5
    for bad in ("1", True, None, jnp.ones(2)):
        with pytest.raises(TypeError, match="x must be a real number"):
            V.check_real(bad, "x")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="x must be finite"):
            V.check_real(bad, "x")
    with pytest.raises(ValueError, match=r"x must be > 0, got 0"):
        V.check_real(0.0, "x", low=0.0, low_open=True)
    assert V.check_unit(0.0, "a") == 0.0
    with pytest.raises(ValueError, match=r"a must be in \(0, 1\), got 0"):
        V.check_unit(0.0, "a", low_open=True)
    assert V.check_bool(np.bool_(True), "flag") is True
    with pytest.raises(TypeError, match="flag must be True or False"):
        V.check_bool(1, "flag")
    assert V.check_tree(2, "m", positive=True) == 2.0
    with pytest.raises(TypeError, match="m must be a number or a pytree"):
        V.check_tree(None, "m", positive=True)
    with pytest.raises(ValueError, match=r"m leaf \['b'\] must be >= 0 and finite"):
        V.check_tree({"a": 1.0, "b": -1.0}, "m", positive=False)
