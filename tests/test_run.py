"""The drivers: reproducibility, chains, thinning, chunks, ArviZ, divergence, optimize."""


import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import heatbath as hb


def logistic_data(N=500, D=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, D)).astype(np.float32)
    w = np.array([1.0, -1.0, 0.5, 0.0])[:D]
    y = (rng.random(N) < 1 / (1 + np.exp(-X @ w))).astype(np.float32)
    return X, y


def logistic(X, y):
    w = numpyro.sample("w", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


X, Y = logistic_data()
DATA = {"X": X, "y": Y}
KW = dict(data=DATA, batch_size=50, progress_bar=False)


def test_same_seed_same_draws_and_chains_do_not_depend_on_num_chains():
    s = hb.samplers.sgld(1e-3)
    a = hb.sample(logistic, s, num_samples=200, num_chains=1, seed=3, **KW)
    b = hb.sample(logistic, s, num_samples=200, num_chains=3, seed=3, **KW)
    c = hb.sample(logistic, s, num_samples=200, num_chains=3, seed=3, **KW)
    np.testing.assert_allclose(a.samples["w"][0], b.samples["w"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.samples["w"], c.samples["w"])
    assert not np.allclose(b.samples["w"][0], b.samples["w"][1])
    d = hb.sample(logistic, s, num_samples=200, num_chains=1, seed=4, **KW)
    assert not np.allclose(a.samples["w"], d.samples["w"])


def test_thinning_warmup_and_chunks_keep_the_same_chain():
    s = hb.samplers.sgld(1e-3)
    full = hb.sample(logistic, s, num_samples=60, num_chains=2, seed=1, **KW, num_warmup=0)
    thin = hb.sample(logistic, s, num_samples=20, thinning=3, num_chains=2, seed=1, **KW, num_warmup=0)
    np.testing.assert_allclose(thin.samples["w"], full.samples["w"][:, 2::3], rtol=1e-5, atol=1e-6)
    warm = hb.sample(logistic, s, num_samples=40, num_warmup=20, num_chains=2, seed=1, **KW)
    np.testing.assert_allclose(warm.samples["w"], full.samples["w"][:, 20:], rtol=1e-5, atol=1e-6)
    chunked = hb.sample(logistic, s, num_samples=60, num_chains=2, seed=1, chunk_size=7, **KW, num_warmup=0)
    np.testing.assert_allclose(chunked.samples["w"], full.samples["w"], rtol=1e-5, atol=1e-6)
    assert chunked.stats["lp"].shape == (2, 60)
    # Thinned diverging flags cover every step since the previous draw; step sizes are recorded.
    assert thin.stats["step_size"][0, 0] == pytest.approx(1e-3)


def test_to_arviz_summary_ess_rhat_with_four_chains():
    r = hb.sample(logistic, hb.samplers.sgld(2e-3), num_samples=1000, num_warmup=500, num_chains=4, seed=0, **KW)
    idata = r.to_arviz()
    assert set(idata.groups()) >= {"posterior", "sample_stats", "observed_data"}
    assert idata.posterior["w"].shape == (4, 1000, 4)
    assert idata.sample_stats["diverging"].dtype == bool
    summ = az.summary(idata, var_names=["w"])
    assert {"ess_bulk", "r_hat"} <= set(summ.columns)
    # Four chains of a well-mixed logistic posterior: R-hat below 1.05 and a real ESS.
    assert summ["r_hat"].max() < 1.05 and summ["ess_bulk"].min() > 100
    assert r.grad_evals == pytest.approx(4 * 0 + 1500 * 50)
    assert "sgld" in repr(r)


def test_divergence_is_flagged_and_warned_and_other_chains_unaffected():
    target = hb.models.from_numpyro(logistic, X, Y)
    init = {"w": jnp.zeros(4)}
    ok = hb.sample(target, hb.samplers.sgld(1e-3), num_samples=50, num_chains=1, seed=0, init=init,
                   progress_bar=False, batch_size=50)
    with pytest.warns(RuntimeWarning, match="diverged"):
        bad = hb.sample(target, hb.samplers.sgld(10.0), num_samples=50, num_chains=2, seed=0, init=init,
                        progress_bar=False, batch_size=50)
    assert bad.stats["diverging"].any(axis=1).all()
    assert bad.diverged_chains() == [0, 1]
    assert not ok.stats["diverging"].any()
    with pytest.raises(ValueError, match="all 2 chains diverged"):
        bad.summary()
    with pytest.warns(RuntimeWarning, match="diverged"):
        bad.summary(include_diverged=True)


def test_optimize_finds_the_map():
    # Gaussian linear model: the MAP is the ridge solution, in closed form.
    rng = np.random.default_rng(1)
    Xr = rng.normal(size=(300, 3)).astype(np.float32)
    yr = (Xr @ np.array([1.0, 2.0, -1.0]) + 0.5 * rng.normal(size=300)).astype(np.float32)

    def model(X, y):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([3]).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)

    ridge = np.linalg.solve(Xr.T @ Xr / 0.25 + np.eye(3), Xr.T @ yr / 0.25)
    opt = hb.optimize(model, data={"X": Xr, "y": yr}, num_steps=3000)
    np.testing.assert_allclose(opt.values["w"], ridge, atol=2e-3)
    assert opt.trace["lp"].shape[0] == 200 and opt.trace["lp"][-1] > opt.trace["lp"][0]
    # A heatbath sampler at T = 0 (gradient ascent) finds it too; full batch.
    gd = hb.optimize(model, hb.samplers.sgld(1e-4, temperature=0.0), data={"X": Xr, "y": yr}, num_steps=2000)
    np.testing.assert_allclose(gd.values["w"], ridge, atol=2e-3)
    with pytest.raises(ValueError, match="temperature"):
        hb.optimize(model, hb.samplers.sgld(1e-4), data={"X": Xr, "y": yr})


def test_control_variates_use_the_map_and_count_its_cost():
    cv = hb.samplers.sgld(2e-3, gradient="cv")
    r = hb.sample(logistic, cv, num_samples=200, seed=0, **KW)
    assert r.centre is not None and r.samples["w"].shape == (1, 200, 4)
    # MAP search (find_map: full-batch L-BFGS on 500 rows, its evaluations counted) + full gradient
    # + 2 minibatch gradients per step.
    map_cost = r.grad_evals - (500 + 200 * 2 * 50)
    assert map_cost > 0 and map_cost % 500 == 0 and map_cost < 2000 * 50
    opt = hb.optimize(logistic, data=DATA, num_steps=3000)
    np.testing.assert_allclose(r.centre["w"], opt.params["w"], atol=0.05)


def test_progress_bar_runs():
    r = hb.sample(logistic, hb.samplers.sgld(1e-3), data=DATA, batch_size=50, num_samples=100, progress_bar=True)
    assert r.samples["w"].shape == (1, 100, 4)


def test_num_steps_per_sample_is_driver_level_thinning():
    t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: 0.0 * jnp.sum(b), jnp.zeros((4,)),
                                  params=jnp.zeros(2))
    a = hb.sample(t, hb.samplers.sghmc(0.1, 1.0, num_steps_per_sample=3), num_samples=10, progress_bar=False)
    b = hb.sample(t, hb.samplers.sghmc(0.1, 1.0), num_samples=30, progress_bar=False)
    # The same keys and steps: equal up to float32 rounding (the thinned run's steps are compiled
    # inside an inner scan, where XLA fuses the Gaussian noise into other kernels: last-bit differences)
    np.testing.assert_allclose(a.samples["theta"], b.samples["theta"][:, 2::3], rtol=1e-6, atol=1e-6)
    assert a.grad_evals == b.grad_evals


def test_svrg_refresh_stays_a_cond_under_the_chain_vmap():
    """A batched predicate would turn SVRG's refresh into a select that computes the full-data
    gradient at every step; the driver passes an unbatched global step so it stays a cond."""
    from heatbath.drivers import batching, loop

    t = hb.models.from_numpyro(logistic, X, Y)
    counts = {}
    batcher = batching.uniform().build(50, t.num_data, 8)
    for name, spec in [("naive", hb.kernels.gradients.naive()), ("svrg", hb.kernels.gradients.svrg(10))]:
        s = hb.samplers.sgld(1e-3, gradient=spec)
        est = spec.build(t.terms, t.num_data)
        chunk = loop.make_chunk(loop.make_step(s, est, batcher, t, "stop"), 4, 2, None, None)
        pos = jax.vmap(t.init_params)(jax.random.split(jax.random.key(0), 3))
        ests = () if est.shared else jax.vmap(est.init, in_axes=(0, None))(pos, t.data)
        shared = est.init(pos, t.data) if est.shared else ()
        states = jax.vmap(s.init)(pos)
        carry = (states, ests, jax.random.split(jax.random.key(1), 3), (jnp.ones(3, bool), states.position), ())
        counts[name] = str(jax.make_jaxpr(chunk)(carry, (), shared, t.data, jnp.int32(0))).count("cond[")
    assert counts == {"naive": 0, "svrg": 1}


def test_repeated_calls_reuse_the_compiled_loop_and_see_new_data():
    s = hb.samplers.sgld(1e-3)
    Xc = X.copy()
    a = hb.sample(logistic, s, data={"X": Xc, "y": Y}, batch_size=50, num_samples=100, seed=0, progress_bar=False)
    b = hb.sample(logistic, s, data={"X": Xc, "y": Y}, batch_size=50, num_samples=100, seed=0, progress_bar=False)
    assert b.compile_time == 0.0
    np.testing.assert_array_equal(a.samples["w"], b.samples["w"])
    Xc[:, 0] += 1.0  # edited in place: a new fingerprint, a new target
    c = hb.sample(logistic, s, data={"X": Xc, "y": Y}, batch_size=50, num_samples=100, seed=0, progress_bar=False)
    assert not np.allclose(a.samples["w"], c.samples["w"])
    hb.clear_caches()
    d = hb.sample(logistic, s, data={"X": X, "y": Y}, batch_size=50, num_samples=100, seed=0, progress_bar=False)
    assert d.compile_time > 0


def test_numpyro_arguments_are_cached_by_contents():
    """Equal data passed as new JAX arrays finds the cached target and compiled loop; a JAX
    array that shares memory with a NumPy array edited in place is new data."""
    from heatbath.drivers import inputs

    s = hb.samplers.sgld(1e-3)
    kw = dict(batch_size=50, num_samples=50, seed=0, progress_bar=False)
    hb.clear_caches()
    a = hb.sample(logistic, s, data={"X": jnp.asarray(X), "y": jnp.asarray(Y)}, **kw)
    b = hb.sample(logistic, s, data={"X": jnp.asarray(X), "y": jnp.asarray(Y)}, **kw)
    assert b.compile_time == 0.0 and len(inputs.TARGETS) == 1
    np.testing.assert_array_equal(a.samples["w"], b.samples["w"])

    host = np.array(X, dtype=np.float32)
    shared = jax.dlpack.from_dlpack(host)  # on the CPU: the same memory as `host`
    c = hb.sample(logistic, s, data={"X": shared, "y": jnp.asarray(Y)}, **kw)
    host[:, 0] += 1.0
    if not np.array_equal(np.asarray(shared), host):
        pytest.skip("this platform copied the DLPack array")
    d = hb.sample(logistic, s, data={"X": shared, "y": jnp.asarray(Y)}, **kw)
    ref = hb.sample(logistic, s, data={"X": np.array(host), "y": Y}, **kw)
    assert not np.allclose(c.samples["w"], d.samples["w"])
    np.testing.assert_array_equal(d.samples["w"], ref.samples["w"])


def test_ctrl_c_between_chunks_keeps_every_chunk_run(monkeypatch):
    """A sampling chunk's draws are copied to the host while the next chunk runs (loop.run's
    ``overlap``). Ctrl-C after the second chunk: the run returns both chunks' draws (the second
    one's copy still waiting when the loop stops), equal to the uninterrupted run's first draws."""
    from heatbath.drivers import plan

    class Requested(plan.Interrupt):  # as if Ctrl-C came during the second chunk
        reads = 0

        @property
        def requested(self):
            Requested.reads += 1
            return Requested.reads > 2  # the loop reads it twice per chunk

        @requested.setter
        def requested(self, value):
            pass

    s = hb.samplers.sgld(1e-3)
    full = hb.sample(logistic, s, num_samples=60, num_chains=2, seed=1, chunk_size=7, **KW, num_warmup=0)
    monkeypatch.setattr(plan, "Interrupt", Requested)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        cut = hb.sample(logistic, s, num_samples=60, num_chains=2, seed=1, chunk_size=7, **KW, num_warmup=0)
    assert cut.samples["w"].shape[1] == 14 and cut.stats["lp"].shape == (2, 14)
    np.testing.assert_array_equal(cut.samples["w"], full.samples["w"][:, :14])
