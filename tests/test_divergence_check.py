"""The per-step divergence check: exact finiteness of a state, SGLD's check through its
gradient (``Sampler.checks_state``), and the end-of-run check of positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb
from heatbath.drivers import cache, divergence
from heatbath.kernels import tree


def test_all_finite_is_exact():
    big = jnp.full((1000,), 3e38, jnp.float32)  # finite, but its sum overflows
    assert bool(tree.all_finite({"a": big, "b": -big}))
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        x = jnp.zeros((7, 3)).at[4, 1].set(bad)
        assert not bool(tree.all_finite({"a": jnp.ones(2), "b": x}))
    both = jnp.array([jnp.inf, -jnp.inf, 1.0])  # +inf and -inf together: still caught
    assert not bool(tree.all_finite(both))
    assert bool(tree.all_finite({"n": jnp.arange(3), "flag": jnp.array([True]), "h": jnp.float16(6e4) * jnp.ones(40)}))
    assert not bool(tree.all_finite(jnp.array([1.0, jnp.nan], jnp.bfloat16)))
    assert bool(tree.all_finite({}))


def gaussian(d=2):
    return hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: 0.0 * jnp.sum(b),
                                     jnp.zeros((4,)), params=jnp.zeros(d))


def test_sgld_flags_an_update_that_overflows_with_a_finite_gradient():
    # g = -theta = -2 is finite, h g = -6e38 is not: the gradient's sum of squares alone would
    # miss it, h * |g| does not.
    with pytest.warns(RuntimeWarning, match="diverged"):
        r = hb.sample(gaussian(), hb.samplers.sgld(3e38), num_samples=5, num_chains=1, init=2 * jnp.ones(2),
                      on_divergence="stop", progress_bar=False, checks="off")
    assert r.stats["diverging"][0].all()
    np.testing.assert_array_equal(r.samples["theta"][0], np.full((5, 2), 2.0))


def support_target():
    # log theta_0: NaN log density and gradient for theta_0 < 0, reached by a large step.
    return hb.models.from_logdensity(lambda p: jnp.log(p[0]) - 0.5 * jnp.sum(p**2) + 2.0 * p[0],
                                     lambda p, b: 0.0 * jnp.sum(b), jnp.zeros((4,)), params=jnp.ones(2))


SAMPLERS = {
    "sgld": lambda h: hb.samplers.sgld(h),
    "sghmc-obabo": lambda h: hb.samplers.sghmc(h, 1.0),  # FSAL: the cache's gradient and log density
    "sghmc-euler": lambda h: hb.samplers.sghmc(h, 0.3, integrator="euler"),  # h C <= 1
    "sghmc-baoab-fused": lambda h: hb.samplers.sghmc(h, 1.0, integrator="baoab", fuse_noise=True),
}


def _default_suite(kind, mode):
    # SGLD in every mode and SGHMC OBABO with restarts in the default suite; the rest with -m slow.
    return kind == "sgld" or (kind == "sghmc-obabo" and mode == "restart")


@pytest.mark.parametrize("make", [lambda: gaussian(), support_target], ids=["overflow", "nan"])
@pytest.mark.parametrize("kind, mode", [
    pytest.param(k, m, id=f"{k}-{m}", marks=() if _default_suite(k, m) else pytest.mark.slow)
    for k in SAMPLERS for m in ("stop", "restart", "flag")
])
def test_the_sampler_check_gives_the_full_pass_answers(mode, make, kind):
    """The sampler's own check against the finiteness pass over the new state it replaces
    (the same sampler with ``checks_state=False``): the same draws and the same flags, on a
    chain whose state leaves the support (NaN) and on one that blows up (h = 2.5 on N(0, I) is
    unstable; the sampler check stops it earlier, when |g|^2 overflows or SGLD's update passes
    ``UPDATE_BOUND`` or SGHMC's r^2 overflows, so there only the draws before either check
    fires and the flags from then on are compared). SGLD reads its gradient's sum of squares;
    SGHMC one pass over the position, the kinetic energy and the gradient's sum of squares."""
    h = 2.5 if make is not support_target else 0.9
    kw = dict(num_samples=120, num_warmup=0, num_chains=3, seed=5, init=jnp.ones((3, 2)), on_divergence=mode,
              progress_bar=False, checks="off")
    fast = SAMPLERS[kind](h)
    slow = fast._replace(checks_state=False)
    assert fast.checks_state and cache.sampler_key(fast)[0] != cache.sampler_key(slow)[0]
    with pytest.warns(RuntimeWarning, match="diverged"):
        a = hb.sample(make(), fast, **kw)
    with pytest.warns(RuntimeWarning, match="diverged"):
        b = hb.sample(make(), slow, **kw)
    da, db = a.stats["diverging"], b.stats["diverging"]
    assert da.any() and db.any()
    first_a, first_b = np.argmax(da, axis=1), np.argmax(db, axis=1)
    if make is support_target:
        np.testing.assert_array_equal(da, db)
        np.testing.assert_array_equal(a.samples["theta"], b.samples["theta"])
    else:
        assert (first_a <= first_b).all()
        for c in range(3):
            np.testing.assert_array_equal(a.samples["theta"][c, : first_a[c]], b.samples["theta"][c, : first_a[c]])
            if mode != "flag":
                assert da[c, first_a[c]:].all() and db[c, first_b[c]:].all()
    if mode != "flag":
        assert np.isfinite(a.samples["theta"]).all()


def test_end_of_run_check_sees_a_non_finite_position_with_a_finite_log_density():
    # The log density reads only theta_0: theta_1 = inf leaves it finite.
    t = hb.models.from_logdensity(lambda p: -0.5 * p[0] ** 2, lambda p, b: 0.0 * jnp.sum(b), jnp.zeros((4,)),
                                  params=jnp.zeros(2))
    pos = jnp.array([[0.5, 1.0], [0.5, jnp.inf], [jnp.nan, 0.0]])
    np.testing.assert_array_equal(divergence.finite_log_density(t, pos), [True, False, False])


@pytest.mark.parametrize("mode", ["stop", "restart"])
def test_sgld_flags_a_noise_scale_gone_nan(mode):
    # A temperature schedule that turns negative at step 3: sqrt(2 h T) is NaN while the
    # gradient is finite. No NaN may enter the draws or the moments.
    s = hb.samplers.sgld(0.1, temperature=lambda k: 1.0 - k / 3.0)
    kw = dict(num_samples=8, num_chains=1, init=jnp.ones(2), on_divergence=mode, progress_bar=False, checks="off",
              seed=2)
    with pytest.warns(RuntimeWarning, match="diverged"):
        r = hb.sample(gaussian(), s, **kw)
    assert np.isfinite(r.samples["theta"]).all() and r.stats["diverging"][0, 3:].all()
    with pytest.warns(RuntimeWarning, match="diverged"):
        m = hb.sample(gaussian(), s, keep="moments", **kw)
    assert np.isfinite(m.moments["mean"]["theta"]).all()


def test_moments_never_read_the_state_before_the_first_draw():
    """The moments fold each draw at the next step; the state before the first draw (the init,
    or the warmup's last state) is skipped exactly, even where its recorded values are not
    finite: here a deterministic site 1 / theta at theta = 0."""
    import numpyro
    import numpyro.distributions as dist

    def model():
        th = numpyro.sample("th", dist.Normal(0.0, 1.0))
        numpyro.deterministic("inv", 1.0 / th)

    kw = dict(num_samples=50, num_warmup=0, num_chains=1, init={"th": 0.0}, progress_bar=False, checks="off", seed=1)
    d = hb.sample(model, hb.samplers.sgld(0.05), **kw)
    m = hb.sample(model, hb.samplers.sgld(0.05), keep="moments", **kw)
    for site in ("th", "inv"):
        x = np.asarray(d.samples[site][0], np.float64)
        got = np.asarray(m.moments["mean"][site]).ravel()
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, x.mean(), rtol=1e-4, atol=1e-5)


def test_a_chain_that_does_not_move_is_named_and_its_draws_called_unusable():
    """A start where every step is below the coordinates' float32 rounding (at 1e8, steps of
    about 1e-6): R-hat and ESS leave constant coordinates out, the frozen check names them."""
    t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum((p - 1e8) ** 2), lambda p, b: 0.0 * jnp.sum(b),
                                  jnp.zeros((4,)), params=jnp.zeros(2))
    kw = dict(num_samples=50, num_chains=2, progress_bar=False, seed=0, checks="full")  # keeps the unconstrained draws
    init = jnp.stack([jnp.full(2, 1e8), jnp.array([1e8, 1e8 + 8.0])])
    with pytest.warns(RuntimeWarning, match=r"chain\(s\) \[0, 1\] did not move: 2 of 2 .*step size \(1e-12\)"):
        r = hb.sample(t, hb.samplers.sgld(1e-12), init=init, **kw)
    assert r.checks["frozen_coordinates"] == {0: 2, 1: 2}
    ok = hb.sample(gaussian(), hb.samplers.sgld(0.1), init=jnp.zeros((2, 2)), **kw)  # moving chains: no report
    assert "frozen_coordinates" not in ok.checks


def test_a_severe_r_hat_says_the_draws_are_not_usable():
    kw = dict(num_samples=50, num_chains=2, progress_bar=False, seed=0, checks="basic")
    with pytest.warns(RuntimeWarning, match="R-hat .* do not use them as they are"):
        hb.sample(gaussian(), hb.samplers.sgld(1e-6), init=jnp.array([[-5.0, -5.0], [5.0, 5.0]]), **kw)
    with pytest.warns(RuntimeWarning, match="R-hat") as record:  # mildly unmixed: the usual advice only
        hb.sample(gaussian(), hb.samplers.sgld(0.3), init=jnp.array([[-1.0, -1.0], [1.0, 1.0]]), **{**kw, "num_samples": 100})
    assert not any("do not use them" in str(w.message) for w in record)


@pytest.mark.parametrize("kind, h", [("sghmc-obabo", 0.1), ("sgld", 0.5)])
def test_stop_freezes_the_position_and_leaves_the_other_chains_alone(kind, h):
    """Under "stop" the guard keeps and freezes the position only (the rest of a stopped
    chain's state is its rejected steps'): from its first flagged draw on, a stopped chain's
    draws and its final position are its last draw before the divergence; a chain that never
    diverges has the same draws as under "flag" (no guard), bit for bit."""
    init = jnp.array([[2.0, 1.0], [1e-4, 1.0], [2.5, -0.5]])  # chain 1 leaves the support (NaN)
    kw = dict(num_samples=60, num_warmup=0, num_chains=3, seed=2, init=init, progress_bar=False, checks="off")
    with pytest.warns(RuntimeWarning, match="diverged"):
        stop = hb.sample(support_target(), SAMPLERS[kind](h), on_divergence="stop", **kw)
    with pytest.warns(RuntimeWarning, match="diverged"):
        flag = hb.sample(support_target(), SAMPLERS[kind](h), on_divergence="flag", **kw)
    div = stop.stats["diverging"]
    bad = div.any(axis=1)
    assert bad[1] and not bad[2]
    theta, last = stop.samples["theta"], np.asarray(stop.final_state.position)
    for c in range(3):
        if bad[c]:
            first = int(np.argmax(div[c]))
            assert div[c, first:].all()
            frozen = theta[c, first - 1] if first else np.asarray(init[c])
            assert np.isfinite(frozen).all()
            # The first flagged draw may be the state whose log density turned out NaN (SGLD
            # reads it at the next step's start); the chain is frozen from the next draw on.
            assert (theta[c, first] == frozen).all() or theta[c, first, 0] < 0
            np.testing.assert_array_equal(theta[c, first + 1:], np.broadcast_to(frozen, theta[c, first + 1:].shape))
            np.testing.assert_array_equal(last[c], frozen)
        else:
            np.testing.assert_array_equal(theta[c], flag.samples["theta"][c])


@pytest.mark.parametrize("kind", ["sghmc-obabo", "psgld"])
def test_a_chain_dead_in_a_window_is_handed_on_with_a_fresh_state(kind):
    """Under "stop" only the position of a dead chain is frozen, so a metric window
    (``adapt.window``) hands the chain on with a fresh sampler state at that position: finite
    momentum, cache and preconditioner, so that the run that starts from the window's states
    (sampling's path when the window changes nothing) moves the chain again instead of flagging
    it at once. A divergence here is one rare minibatch (one outlier row out of 500, batch 1)
    from a harmless state."""
    from heatbath.drivers import adapt, loop
    from heatbath.drivers.batching import as_batching
    from heatbath.kernels import tree as _tree

    n_rows, chains = 500, 8
    data = jnp.zeros((n_rows,)).at[7].set(1e30)
    target = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2),
                                       lambda p, b: -0.5 * jnp.sum(b) * jnp.sum(p**2), data, params=jnp.ones(2))
    sampler = {"sghmc-obabo": lambda: hb.samplers.sghmc(0.1, 1.0), "psgld": lambda: hb.samplers.psgld(0.1)}[kind]()
    est = sampler.gradient.build(target.terms, target.num_data)
    keys = loop.chain_keys(jax.random.key(0), chains)
    init = jnp.ones((chains, 2))
    states = jax.vmap(sampler.init)(init, loop.fold_each(keys, 1))
    states, draws, alive, _, _ = adapt.window(target, sampler, est, states, init, keys, steps=300, batch_size=1,
                                              batching=as_batching("uniform"), progress_bar=False)
    dead = np.nonzero(~alive)[0]
    assert dead.size and alive.any()
    for leaf in jax.tree.leaves(states):
        leaf = np.asarray(leaf)
        if np.issubdtype(leaf.dtype, np.inexact):
            assert np.isfinite(leaf).all()
    for c in dead:  # the frozen position: its last draw
        np.testing.assert_array_equal(np.asarray(states.position)[c], draws[c, -1].astype(np.float32))
    cfg = loop.LoopConfig(batching=as_batching("uniform"), batch_size=1, num_draws=60, thinning=1, num_warmup=0,
                          desc="main", record=lambda position, data: position, on_divergence="stop", states=states)
    out = loop.run(target, sampler, est, states.position, loop.fold_each(keys, 7), cfg)
    moved = np.asarray(out.draws)  # (draw, chain, 2)
    for c in dead:
        assert len(np.unique(moved[:10, c, 0])) > 1, f"chain {c} did not move after the window"
    assert _tree.size(jax.tree.map(lambda x: x[0], states.position)) == 2
