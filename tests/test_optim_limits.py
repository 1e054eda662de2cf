"""Optimizers are the T = 0 limits of the samplers: step-by-step equality with optax.

Every equality test runs 100 minibatch steps of a small MLP in float64 (``jax.enable_x64``),
feeds optax and the heatbath sampler the same minibatches (and the sampler the same keys),
and compares the parameters after EVERY step: max abs difference <= 1e-10. The two sides
differ only by floating-point reassociation (e.g. (1 - a) g g vs (1 - a) g^2), 1e-16 per
step, so 1e-10 leaves six orders of magnitude and still catches any real difference (a
wrong sign, a missing bias correction, eps in the wrong place, noise left on: all >= 1e-4).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import heatbath as hb
from heatbath.kernels import preconditioners as P
from heatbath.optim import as_optax
from heatbath.samplers.optax_langevin import adam_langevin, read_optax

NUM_STEPS = 100
TOL = 1e-10


# ----------------------------------------------------------------------------------------
# The problem: a 4-16-1 tanh MLP, squared loss, minibatches of 16 out of 128 rows
# ----------------------------------------------------------------------------------------
def _problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(128, 4))
    y = np.sin(X @ rng.normal(size=4))
    k1, k2 = jax.random.split(jax.random.key(1))
    params = {
        "W1": 0.5 * jax.random.normal(k1, (4, 16)),
        "b1": jnp.zeros(16),
        "W2": 0.5 * jax.random.normal(k2, (16,)),
        "b2": jnp.zeros(()),
    }

    def loss(p, batch):
        xb, yb = batch
        hidden = jnp.tanh(xb @ p["W1"] + p["b1"])
        return jnp.mean((hidden @ p["W2"] + p["b2"] - yb) ** 2)

    idx = rng.integers(0, 128, size=(NUM_STEPS, 16))
    batches = [(jnp.asarray(X[i]), jnp.asarray(y[i])) for i in idx]
    return params, loss, batches


def _optax_path(tx, params, loss, batches):
    @jax.jit
    def update(p, state, batch):
        grads = jax.grad(loss)(p, batch)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    state = tx.init(params)
    path = []
    for batch in batches:
        params, state = update(params, state, batch)
        path.append(params)
    return path


def _sampler_path(sampler, params, loss, batches):
    def grad_fn(p, batch):  # heatbath convention: (log density, grad log density) = (-loss, -grad loss)
        value, grad = jax.value_and_grad(loss)(p, batch)
        return -value, jax.tree.map(jnp.negative, grad)

    step = jax.jit(lambda key, state, batch: sampler.step(key, state, batch, grad_fn))
    state = sampler.init(params, jax.random.key(0))
    path = []
    for i, batch in enumerate(batches):
        state, info = step(jax.random.fold_in(jax.random.key(7), i), state, batch)
        assert float(info.temperature) == 0.0
        path.append(state.position)
    return path


def _max_step_diff(a, b):
    """Max over steps and coordinates of |a_k - b_k|."""
    assert len(a) == len(b) == NUM_STEPS
    return max(
        float(jnp.max(jnp.abs(x - y)))
        for pa, pb in zip(a, b)
        for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb))
    )


def _assert_moves(path, params):
    # Guard against a vacuous equality: the optimizer really moved the parameters.
    moved = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(path[-1]), jax.tree.leaves(params)))
    assert moved > 1e-2


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        yield _problem()


LIMITS = {
    # name: (optax optimizer, heatbath sampler at T = 0)
    "sgld=sgd": (lambda: optax.sgd(0.1), lambda: hb.samplers.sgld(0.1, temperature=0.0)),
    "sgld=sgd(schedule)": (
        lambda: optax.sgd(optax.exponential_decay(0.2, 10, 0.9)),
        lambda: hb.samplers.langevin(optax.sgd(optax.exponential_decay(0.2, 10, 0.9)), temperature=0.0),
    ),
    "psgld=rmsprop": (
        lambda: optax.rmsprop(1e-2, decay=0.9, eps=1e-8),  # optax's default: eps inside the sqrt
        lambda: hb.samplers.psgld(1e-2, temperature=0.0, decay=0.9, eps=1e-8,
                                  preconditioner=P.rmsprop(0.9, 1e-8, eps_in_sqrt=True)),
    ),
    "psgld(default)=rmsprop(eps_in_sqrt=False)": (
        lambda: optax.rmsprop(1e-2, decay=0.99, eps=1e-5, eps_in_sqrt=False),
        lambda: hb.samplers.psgld(1e-2, temperature=0.0),  # pSGLD's own default: eps outside the sqrt
    ),
    # The divergence correction enters as T Gamma: at T = 0 the corrected pSGLD is RMSprop,
    # whether T is the constant 0 (Gamma skipped) or a schedule that is 0 (Gamma computed, x 0).
    "psgld(correction)=rmsprop(eps_in_sqrt=False)": (
        lambda: optax.rmsprop(1e-2, decay=0.99, eps=1e-5, eps_in_sqrt=False),
        lambda: hb.samplers.psgld(1e-2, temperature=0.0, correction=True),
    ),
    "psgld(correction, T(k) = 0)=rmsprop(eps_in_sqrt=False)": (
        lambda: optax.rmsprop(1e-2, decay=0.9, eps=1e-5, eps_in_sqrt=False),
        lambda: hb.samplers.psgld(1e-2, temperature=lambda k: 0.0 * k, decay=0.9, correction=True),
    ),
    "adam_langevin(correction, T(k) = 0)=adam": (
        lambda: optax.adam(1e-2, b2=0.9),
        lambda: adam_langevin(1e-2, temperature=lambda k: 0.0 * k, b2=0.9, correction=True),
    ),
    "langevin(rmsprop)=rmsprop": (
        lambda: optax.rmsprop(1e-2),
        lambda: hb.samplers.langevin(optax.rmsprop(1e-2), temperature=0.0),
    ),
    "langevin(rmsprop, bias_correction)=rmsprop": (
        lambda: optax.rmsprop(1e-2, bias_correction=True, eps_in_sqrt=False, initial_scale=0.1),
        lambda: hb.samplers.langevin(optax.rmsprop(1e-2, bias_correction=True, eps_in_sqrt=False,
                                                   initial_scale=0.1), temperature=0.0),
    ),
    "langevin(adam)=adam": (
        lambda: optax.adam(1e-2),
        lambda: hb.samplers.langevin(optax.adam(1e-2), temperature=0.0),
    ),
    "langevin(adam, nesterov, eps_root, schedule)=adam": (
        lambda: optax.adam(optax.cosine_decay_schedule(2e-2, NUM_STEPS), b1=0.8, b2=0.99, eps_root=1e-8,
                           nesterov=True),
        lambda: hb.samplers.langevin(optax.adam(optax.cosine_decay_schedule(2e-2, NUM_STEPS), b1=0.8, b2=0.99,
                                                eps_root=1e-8, nesterov=True), temperature=0.0),
    ),
    "adam_langevin=adam": (
        lambda: optax.adam(1e-2, b1=0.9, b2=0.999, eps=1e-8),
        lambda: adam_langevin(1e-2, temperature=0.0),
    ),
}


@pytest.mark.parametrize("name", list(LIMITS))
def test_sampler_at_zero_temperature_is_the_optimizer(problem, name):
    make_tx, make_sampler = LIMITS[name]
    params, loss, batches = problem
    with jax.enable_x64(True):
        ref = _optax_path(make_tx(), params, loss, batches)
        got = _sampler_path(make_sampler(), params, loss, batches)
        _assert_moves(ref, params)
        assert jax.tree.leaves(got[-1])[0].dtype == jnp.float64
        assert _max_step_diff(ref, got) <= TOL


def test_zero_temperature_schedule_is_noiseless(problem):
    """A temperature schedule that is 0 at every step (not the constant 0.0) is SGD too."""
    params, loss, batches = problem
    with jax.enable_x64(True):
        ref = _optax_path(optax.sgd(0.1), params, loss, batches)
        got = _sampler_path(hb.samplers.sgld(0.1, temperature=lambda k: 0.0 * k), params, loss, batches)
        assert _max_step_diff(ref, got) <= TOL


@pytest.mark.parametrize("name", ["sgld=sgd", "langevin(adam)=adam", "psgld=rmsprop"])
def test_as_optax_at_zero_temperature_is_the_optimizer(problem, name):
    """as_optax(sampler, 0.0) inside a plain optax loop reproduces the optax optimizer."""
    make_tx, make_sampler = LIMITS[name]
    params, loss, batches = problem
    with jax.enable_x64(True):
        sampler = make_sampler().rebuild(temperature=1.0)  # as_optax rebuilds it at T = 0
        ref = _optax_path(make_tx(), params, loss, batches)
        got = _optax_path(as_optax(sampler, temperature=0.0, seed=3), params, loss, batches)
        # params + (new - params) may differ from new by one rounding per step.
        assert _max_step_diff(ref, got) <= TOL


def test_optimize_drives_the_langevin_limit_like_optax():
    """hb.optimize with langevin(adam) at T = 0 and with optax.adam: same minibatches, same MAP."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        X = rng.normal(size=(200, 3))
        y = (X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=200) > 0).astype(np.float64)
        target = hb.models.from_logdensity(
            lambda w: -0.5 * jnp.sum(w**2),
            lambda w, b: jnp.sum(b[1] * (b[0] @ w) - jnp.logaddexp(0.0, b[0] @ w)),
            (X, y),
            params=jnp.zeros(3),
        )
        kw = dict(batch_size=20, num_steps=100, seed=4, init=jnp.zeros(3), trace_every=10)
        a = hb.optimize(target, optax.adam(0.05), **kw)
        b = hb.optimize(target, hb.samplers.langevin(optax.adam(0.05), temperature=0.0), **kw)
        assert np.asarray(a.params).dtype == np.float64
        assert float(jnp.max(jnp.abs(a.params - b.params))) <= TOL
        assert float(jnp.max(jnp.abs(a.params))) > 0.5  # it moved
        np.testing.assert_array_equal(b.trace["temperature"], 0.0)


# ----------------------------------------------------------------------------------------
# Euler SGHMC at T = 0 is heavy-ball momentum (optax.sgd(momentum=...))
# ----------------------------------------------------------------------------------------
_SGHMC = getattr(hb.samplers, "sghmc", None)


@pytest.mark.skipif(_SGHMC is None, reason="hb.samplers.sghmc (Euler SGHMC) has not landed yet")
@pytest.mark.parametrize("via", ["langevin", "sghmc"])
def test_euler_sghmc_at_zero_temperature_is_momentum_sgd(problem, via):
    """optax.sgd(lr, momentum=mu): m <- g + mu m, theta <- theta - lr m. With v = -lr m this is
    v <- mu v - lr grad U, theta <- theta + v: Euler SGHMC (Chen et al. 2014) with
    eta = h^2 / M = lr and alpha = h C / M = 1 - mu, i.e. M = 1, h = sqrt(lr), C = (1 - mu) / h."""
    params, loss, batches = problem
    lr, mu = 0.05, 0.9
    with jax.enable_x64(True):
        ref = _optax_path(optax.sgd(lr, momentum=mu), params, loss, batches)
        if via == "langevin":
            sampler = hb.samplers.langevin(optax.sgd(lr, momentum=mu), temperature=0.0)
        else:
            h = math.sqrt(lr)
            sampler = _SGHMC(h, (1.0 - mu) / h, integrator="euler", mass=1.0, temperature=0.0)
        got = _sampler_path(sampler, params, loss, batches)
        _assert_moves(ref, params)
        assert _max_step_diff(ref, got) <= TOL


@pytest.mark.skipif(_SGHMC is None, reason="hb.samplers.sghmc (Euler SGHMC) has not landed yet")
def test_as_optax_euler_sghmc_is_momentum_sgd(problem):
    params, loss, batches = problem
    with jax.enable_x64(True):
        ref = _optax_path(optax.sgd(0.05, momentum=0.9), params, loss, batches)
        sampler = hb.samplers.langevin(optax.sgd(0.05, momentum=0.9))  # T = 1, rebuilt at T = 0
        got = _optax_path(as_optax(sampler, temperature=0.0), params, loss, batches)
        assert _max_step_diff(ref, got) <= TOL

@pytest.mark.parametrize(
    "build, why",
    [
        # FSAL splittings evaluate their gradient after the drift A (the default sghmc too).
        (lambda: _SGHMC(0.1, 1.0), "sghmc-obabo"),
        (lambda: _SGHMC(0.1, 1.0, integrator="baoab"), "sghmc-baoab"),
        (lambda: _SGHMC(0.1, 1.0, integrator="lie_trotter"), "sghmc-lie_trotter"),
        (lambda: _SGHMC(0.1, 1.0, integrator="aboba"), "sghmc-aboba"),
        # the position is the average; the gradient is at the wrapped iterate
        (lambda: hb.optim.averaged(hb.samplers.sgld(0.1)), "averaged-sgld"),
        (lambda: hb.optim.entropy_sgd(0.1, 1.0, inner_step_size=0.01), "entropy-sgd"),
        # the divergence correction differentiates the gradient (a Hessian-vector product)
        (lambda: hb.samplers.psgld(1e-3, correction=True), "psgld"),
        (lambda: adam_langevin(1e-3, drift="gradient", correction=True), "adam-psgld"),
        (lambda: hb.vi.fbgvi(0.1, 10, num_mc=1, antithetic=False), "fbgvi"),
    ],
)
def test_as_optax_refuses_samplers_that_need_a_gradient_elsewhere_at_construction(build, why):
    """Each of these used to be accepted and failed on the first update; now as_optax refuses
    it when the transformation is built, naming the sampler (Sampler.gradient_at_position)."""
    sampler = build()
    assert not sampler.gradient_at_position
    with pytest.raises(ValueError, match=f"one gradient per step, at the current parameters.*{why}"):
        as_optax(sampler)


def test_as_optax_accepts_what_it_can_run():
    # At T = 0 the correction vanishes (T Gamma), so the corrected pSGLD is RMSprop, one gradient.
    assert as_optax(hb.samplers.psgld(1e-3, correction=True), temperature=0.0) is not None
    # (a temperature schedule that happens to be 0 still computes Gamma, and is refused)
    assert hb.samplers.psgld(1e-3, temperature=lambda k: 0.0 * k, correction=True).grads_per_step == 3.0
    for sampler in (_SGHMC(0.1, 1.0, integrator="euler"), hb.samplers.sgnht(0.1),
                    _SGHMC(0.1, 1.0, integrator=hb.kernels.integrators.gradient_first("obabo"))):
        assert sampler.gradient_at_position and sampler.grads_per_step == 1.0
        as_optax(sampler)


@pytest.mark.parametrize("scheme", ["baoab", "obabo"])
def test_as_optax_sghmc_rotated_splitting_samples_the_splittings_law(scheme):
    """A splitting rotated to start at its gradient (gradient_first: BAOAB -> "BBAOA",
    OBABO -> "BOOBA"), run inside a plain optax loop (one gradient of the loss
    U = a theta^2 / 2 per update, at params), has the stationary Var(theta) of the original
    splitting, from its Lyapunov equation (tests/test_integrators.py): T / a exactly for BAOAB
    at any h (Leimkuhler & Matthews 2013), T / (a (1 - h^2 a / 4)) = 4/3 T / a for OBABO at
    h sqrt(a) = 1. (Euler at this step, alpha = 1, has twice the variance.)

    Monte Carlo error: 1000 independent chains (one optax state each, under vmap) of 400
    updates, the last 200 kept; with C = 2, a = 4 the autocorrelation time of theta^2 is a
    few steps, so 200 000 draws hold >= 20 000 effective ones: the relative standard error of
    the variance is sqrt(2 / 20 000) = 1%; tolerance 5% (5 standard errors), while the two
    schemes' values differ by 33%.
    """
    from test_integrators import stationary_variances

    a, T, h, C = 4.0, 0.5, 0.5, 2.0
    split = hb.kernels.integrators.gradient_first(scheme)
    expected = stationary_variances(scheme, h, friction=C, precision=a, temperature=T)[0]
    assert expected == pytest.approx(T / a if scheme == "baoab" else T / (a * (1 - h * h * a / 4)), rel=1e-9)

    def chain(key):
        tx = as_optax(_SGHMC(h, C, integrator=split, temperature=T), seed=key)
        params = jnp.zeros(())

        def body(carry, _):
            params, state = carry
            updates, state = tx.update(a * params, state, params)  # grad U = a theta
            params = optax.apply_updates(params, updates)
            return (params, state), params

        return jax.lax.scan(body, (params, tx.init(params)), None, length=400)[1][200:]

    draws = jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(0), 1000))
    var = float(jnp.mean(draws**2))
    assert abs(var / expected - 1) < 0.05, (var, expected)


# ----------------------------------------------------------------------------------------
# What the Adam-type Langevin samples at T > 0 (module docstring of samplers/optax_langevin.py)
# ----------------------------------------------------------------------------------------
def _gaussian_target(a):
    return hb.models.from_logdensity(
        lambda x: -0.5 * a * jnp.sum(x**2), lambda x, b: 0.0 * jnp.sum(b), jnp.zeros((1, 1)), params=jnp.zeros(())
    )


def _lyapunov_variance(gamma, a, b1, T):
    """Stationary Var(theta) of theta' = theta + gamma m' + sqrt(2 gamma T) xi,
    m' = b1 m - (1 - b1) a theta (the momentum drift with a frozen preconditioner)."""
    from scipy.linalg import solve_discrete_lyapunov

    A = np.array([[1 - gamma * (1 - b1) * a, gamma * b1], [-(1 - b1) * a, b1]])
    Q = np.array([[2 * gamma * T, 0.0], [0.0, 0.0]])
    return float(solve_discrete_lyapunov(A, Q)[0, 0])


@pytest.mark.parametrize("drift", ["momentum", "gradient"])
def test_adam_langevin_stationary_variance(drift):
    """1-D Gaussian, precision a = 1, T = 0.5. With eps = 100 >> sqrt(nu) ~ 0.7 the Adam
    preconditioner G = 1 / (sqrt(nu^) + eps) is constant to 0.1%, so the chain is linear and
    its stationary variance is a closed form: for drift="gradient" the SGLD one
    2 g T / (1 - (1 - g a)^2) with g = h G; for drift="momentum" the Lyapunov solution
    above, (T / a)(1 + g a (1/2 + b1 / (1 - b1))) to first order: 1.475 T/a at g a = 0.05,
    b1 = 0.9, i.e. the momentum lag inflates the variance by 44% where SGLD's bias is 2.6%.

    Monte Carlo error: 16 chains x 20000 draws, integrated autocorrelation time of theta^2
    about 1 / (2 g a (1 - b1-lag)) <= 40 steps, so the relative standard error of the
    variance is sqrt(2 * 40 / 320000) = 1.6%; tolerance 6% (about 4 sigma), while the two
    drifts' predictions differ by 44%, and T/a (the exact target) differs from the momentum
    prediction by 32%, so the test separates them.
    """
    a, T, b1, eps = 1.0, 0.5, 0.9, 100.0
    gamma = 0.05
    sd = math.sqrt(T / a)
    h = gamma * (eps + sd)  # h G = gamma with G = 1 / (eps + sqrt(E g^2)), E g^2 = a^2 Var ~ T a
    sampler = adam_langevin(h, temperature=T, b1=b1, b2=0.999, eps=eps, drift=drift)
    res = hb.sample(_gaussian_target(a), sampler, num_samples=20000, num_warmup=3000, num_chains=16, seed=11,
                    progress_bar=False, init=jnp.zeros(()))
    draws = np.asarray(res.samples["theta"])
    var = float(np.mean(draws**2))
    if drift == "momentum":
        expected = _lyapunov_variance(gamma, a, b1, T)
        assert abs(expected / (T / a) - 1.4756) < 1e-3
    else:
        expected = 2 * gamma * T / (1 - (1 - gamma * a) ** 2)
    assert abs(var / expected - 1) < 0.06, (var, expected)


# ----------------------------------------------------------------------------------------
# Reading optax, and bad input
# ----------------------------------------------------------------------------------------
def test_read_optax_hyperparameters():
    info = read_optax(optax.adam(3e-3, b1=0.8, b2=0.95, eps=1e-6, eps_root=1e-9))
    assert info["kind"] == "adam" and info["learning_rate"] == pytest.approx(3e-3)
    assert (info["b1"], info["b2"], info["eps"], info["eps_root"]) == (0.8, 0.95, 1e-6, 1e-9)
    info = read_optax(optax.rmsprop(1e-2, decay=0.95, eps=1e-7, eps_in_sqrt=False))
    assert info["kind"] == "rmsprop" and (info["decay"], info["eps"], info["eps_in_sqrt"]) == (0.95, 1e-7, False)
    assert read_optax(optax.sgd(0.1, momentum=0.7)) == {"kind": "momentum", "momentum": 0.7, "learning_rate": 0.1}
    sched = read_optax(optax.sgd(optax.linear_schedule(1.0, 0.0, 10)))["learning_rate"]
    assert float(sched(jnp.asarray(5))) == pytest.approx(0.5)


def test_langevin_rejects_what_it_cannot_map():
    with pytest.raises(TypeError, match="weight decay"):
        hb.samplers.langevin(optax.adamw(1e-3))
    with pytest.raises(TypeError, match="Nesterov"):
        hb.samplers.langevin(optax.sgd(0.1, momentum=0.9, nesterov=True))
    with pytest.raises(TypeError, match="cannot map the optax building block"):
        hb.samplers.langevin(optax.lion(1e-3))
    with pytest.raises(TypeError, match="GradientTransformation"):
        hb.samplers.langevin("adam")
    with pytest.raises(ValueError, match="drift"):
        hb.samplers.langevin(optax.adam(1e-3), drift="heavy")


@pytest.mark.parametrize(
    "build",
    [
        lambda: hb.samplers.langevin(optax.adam(1e-3), temperature=-1.0),
        lambda: hb.samplers.sgld(1e-3, temperature=-0.1),
        lambda: as_optax(hb.samplers.sgld(1e-3), temperature=-2.0),
        lambda: adam_langevin(1e-3, temperature=lambda k: -1.0 + 0.0 * k),
    ],
)
def test_negative_temperature_is_refused(build):
    with pytest.raises(ValueError, match="temperature"):
        build()


@pytest.mark.parametrize(
    "schedule, error",
    [
        (lambda: 1.0, TypeError),  # not a function of the step
        (lambda step, epoch: 1.0, TypeError),  # needs two arguments
        (lambda step: 1.0 if step < 10 else 0.0, TypeError),  # Python branching on the traced step
        (lambda step: jnp.ones(3), ValueError),  # not a scalar
        ("cold", TypeError),
    ],
)
def test_temperature_that_is_not_a_schedule_is_refused(schedule, error):
    for build in (
        lambda: hb.samplers.langevin(optax.adam(1e-3), temperature=schedule),
        lambda: as_optax(hb.samplers.sgld(1e-3), temperature=schedule),
    ):
        with pytest.raises(error, match="temperature"):
            build()


def test_as_optax_bad_input():
    with pytest.raises(TypeError, match="Sampler"):
        as_optax(optax.sgd(0.1))
    with pytest.raises(ValueError, match="one gradient per step"):
        as_optax(hb.samplers.psgld(1e-3, correction=True))
    tx = as_optax(hb.samplers.sgld(1e-3))
    state = tx.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="needs params"):
        tx.update(jnp.ones(2), state)


def test_as_optax_state_carries_key_and_step():
    """The state holds the step count and a key that advances: two updates draw different noise,
    and the same seed gives the same noise (reproducible)."""
    tx = as_optax(hb.samplers.sgld(0.5, temperature=1.0), seed=5)
    params = jnp.zeros(1000)
    state = tx.init(params)
    u1, state1 = tx.update(jnp.zeros(1000), state, params)
    u2, state2 = tx.update(jnp.zeros(1000), state1, params)
    assert int(state2.sampler_state.step) == 2 and state2.sampler_state.position is None
    # With zero gradient the update is pure noise sqrt(2 h T) xi: sd 1 (sd of the sample sd: 2.2%).
    assert abs(float(jnp.std(u1)) - 1.0) < 0.1
    assert float(jnp.max(jnp.abs(u1 - u2))) > 0.1
    u1_again, _ = as_optax(hb.samplers.sgld(0.5, temperature=1.0), seed=5).update(jnp.zeros(1000), tx.init(params), params)
    np.testing.assert_array_equal(np.asarray(u1), np.asarray(u1_again))


def test_as_optax_in_an_equinox_training_loop():
    """The usual Equinox loop (eqx.filter, eqx.apply_updates, non-array leaves in the model):
    as_optax(sgld, 0.0) trains exactly like optax.sgd, and at T > 0 it runs and keeps the model
    finite while adding the Langevin noise (the trajectories then differ)."""
    eqx = pytest.importorskip("equinox")
    with jax.enable_x64(True):
        params, loss_fn, batches = _problem()
        model = eqx.nn.MLP(4, 1, 16, 1, activation=jnp.tanh, key=jax.random.key(2))

        def loss(m, batch):
            xb, yb = batch
            return jnp.mean((jax.vmap(m)(xb)[:, 0] - yb) ** 2)

        def train(tx):
            m = model
            state = tx.init(eqx.filter(m, eqx.is_array))

            @eqx.filter_jit
            def step(m, state, batch):
                grads = eqx.filter_grad(loss)(m, batch)
                updates, state = tx.update(grads, state, eqx.filter(m, eqx.is_array))
                return eqx.apply_updates(m, updates), state

            path = []
            for batch in batches:
                m, state = step(m, state, batch)
                path.append(eqx.filter(m, eqx.is_array))
            return path

        ref = train(optax.sgd(0.1))
        got = train(as_optax(hb.samplers.sgld(0.1), temperature=0.0))
        assert _max_step_diff(ref, got) <= TOL
        hot = train(as_optax(hb.samplers.sgld(0.1, temperature=1e-4), seed=1))
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(hot[-1]))
        assert _max_step_diff(ref, hot) > 1e-4
