"""No needless recompiles: the compiled chunk of a run is keyed on settings, not objects.

A second ``hb.sample`` call with a new sampler object of the same settings, with ``data=`` on
a Target holding the same arrays (a new Target around the same functions), or with another
``num_samples`` / ``num_warmup`` reuses the compiled step (counted with ``jax.log_compiles``:
XLA compilations of the loop's ``chunk``). Other settings do compile (the key is not too
coarse).
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb


class _Compiles(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.names = []

    def emit(self, record):
        msg = record.getMessage()
        if msg.startswith("Compiling "):
            self.names.append(msg.split(" with")[0].removeprefix("Compiling "))


def _compiled_names(fn):
    handler, logger = _Compiles(), logging.getLogger("jax")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with jax.log_compiles():
            out = fn()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return handler.names, out


def _count_chunk_compiles(fn):
    names, out = _compiled_names(fn)
    return sum(1 for n in names if n == "jit(chunk)"), out


X = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)


def _target(data=X):
    return hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), _loglik, data, params=jnp.zeros(3))


def _loglik(p, b):
    return -0.5 * jnp.sum((b - p) ** 2)


def test_second_calls_do_not_recompile_the_step():
    target = _target()

    def run(sampler=None, tgt=target, **kw):
        kw = {"num_samples": 100, "num_warmup": 0, **kw}
        return hb.sample(tgt, sampler or hb.samplers.sgld(1e-3), batch_size=20, progress_bar=False, checks="off",
                         seed=0, **kw)

    first, a = _count_chunk_compiles(run)
    assert first == 1
    counts = {}
    counts["new sampler, same settings"], b = _count_chunk_compiles(run)
    counts["data= with the same arrays"], c = _count_chunk_compiles(lambda: run(tgt=target, data=X.copy()))
    counts["another num_samples"], d = _count_chunk_compiles(lambda: run(num_samples=150))
    # warmup: its first use compiles the warmup chunk, another num_warmup does not
    _count_chunk_compiles(lambda: run(num_warmup=30))
    counts["another num_warmup"], _ = _count_chunk_compiles(lambda: run(num_warmup=70))
    assert counts == {k: 0 for k in counts}, counts
    assert b.compile_time == 0.0
    # Same seed, same draws, whatever the compiled capacity: the first 100 of 150 are the 100.
    np.testing.assert_array_equal(a.samples["theta"], b.samples["theta"])
    np.testing.assert_array_equal(a.samples["theta"], c.samples["theta"])
    np.testing.assert_array_equal(d.samples["theta"][:, :100], a.samples["theta"])
    assert d.samples["theta"].shape == (1, 150, 3)
    # Different settings do compile: another step size is another program.
    other, _ = _count_chunk_compiles(lambda: run(hb.samplers.sgld(2e-3)))
    assert other == 1


def test_a_second_call_with_automatic_settings_compiles_nothing():
    """Defaults (MAP search, Newton, estimator choice, Laplace metric, step-size pilot, end-of-run
    check): the second call on the same target reuses every compiled program, the control
    variates' full-data pass at the new centre included (the centre is its argument; it closed
    over the centre and compiled at every call, 0.15 s of a 0.2 s call at N = 2,000)."""
    target = _target()

    def run():
        return hb.sample(target, hb.samplers.sgld(), batch_size=20, num_samples=100, num_chains=2,
                         progress_bar=False, checks="off", seed=0)

    first, a = _compiled_names(run)
    assert "jit(chunk)" in first and a.tuning["gradient"]["chosen"] == "control_variates"
    second, b = _compiled_names(run)
    assert second == [], second
    np.testing.assert_array_equal(a.samples["theta"], b.samples["theta"])
    assert b.tuning["step_size"] == a.tuning["step_size"]


def test_another_seed_reuses_every_measurement_and_equals_a_fresh_target():
    """With the default settings the chains run on a whitened copy of the target (the Laplace
    metric), a new copy for every metric: every seed. The copies share the compiled
    measurements (estimator choice, step size, curvature rows, the control variates' full-data
    pass) with the metric an argument (they compiled again at every call: 6 s of a 7 s call at
    N = 2,000). The shared programs give the draws a fresh target's first call gives."""
    def run(target, seed):
        return hb.sample(target, hb.samplers.sgld(), batch_size=20, num_samples=100, num_chains=2,
                         progress_bar=False, checks="off", seed=seed)

    target = _target()
    run(target, 0)
    names, reused = _compiled_names(lambda: run(target, 1))
    assert names == [], names
    fresh = run(_target(), 1)
    assert reused.tuning["metric"]["kind"] == fresh.tuning["metric"]["kind"] != "identity"
    assert reused.tuning["step_size"] == fresh.tuning["step_size"]
    np.testing.assert_array_equal(reused.samples["theta"], fresh.samples["theta"])


def _another_seed_reuses_the_chunks(make, **kw):
    target = _target()

    def run(seed):
        return hb.sample(target, make(), batch_size=20, num_samples=100, num_chains=2, progress_bar=False,
                         checks="off", seed=seed, **kw)

    a = run(0)
    n, b = _count_chunk_compiles(lambda: run(1))
    assert n == 0  # before: every chunk compiled again (3.4-9.4 s), the tuned values were constants in it
    assert b.tuning["step_size"] != a.tuning["step_size"] or kw.get("metric") != "identity"
    hb.clear_caches()
    fresh = run(1)  # compiled for seed 1's own values: the reused code read them right
    np.testing.assert_array_equal(b.samples["theta"], fresh.samples["theta"])
    assert b.tuning["step_size"] == fresh.tuning["step_size"]


TUNED_TARGET = _target()


def _tuned_run(sampler, target=TUNED_TARGET):
    return hb.sample(target, sampler, batch_size=20, num_samples=50, num_chains=2, progress_bar=False,
                     checks="off", seed=0, init=jnp.zeros(3))


def _reused_equals_fresh(make, first, second):
    """Run make(*first), then make(*second): the second compiles no chunk and its draws equal
    those of a chunk compiled for it (after clearing the caches). Returns the reused run."""
    _tuned_run(make(*first))
    n, reused = _count_chunk_compiles(lambda: _tuned_run(make(*second)))
    assert n == 0
    hb.clear_caches()
    np.testing.assert_array_equal(reused.samples["theta"], _tuned_run(make(*second)).samples["theta"])
    return reused


def test_tuned_values_are_arguments_of_the_compiled_chunk():
    """A step size and friction the driver chose (schedules.Tuned) are arguments of the compiled
    chunk: other values reuse it, and give the draws of a chunk compiled for them."""
    from heatbath.kernels.schedules import Tuned

    def make(h, C):
        return hb.samplers.sghmc(Tuned(h, "step_size"), Tuned(C, "friction"))

    b = _reused_equals_fresh(make, (0.01, 2.0), (0.02, 3.0))
    np.testing.assert_array_equal(b.stats["step_size"], np.full_like(b.stats["step_size"], np.float32(0.02)))


def test_whitened_targets_share_the_compiled_chunk_and_keep_their_own_metric():
    """Two whitened targets (metrics) of one target share the compiled chunk, mu and L being its
    arguments; the metric travels with the target's functions, so a copy with data= keeps it.
    A Tuned value the loop does not pass, or a whitened target whitened again, is refused."""
    from heatbath.drivers import metric
    from heatbath.kernels.schedules import Tuned
    from heatbath.optim.averaging import averaged

    t = _target()
    unravel = metric._unravel(t)
    a1 = metric.Affine(np.zeros(3), np.eye(3), np.eye(3), unravel)
    a2 = metric.Affine(np.ones(3), 2 * np.eye(3), 0.5 * np.eye(3), unravel)
    w1, w2 = metric.whiten(t, a1).with_data(X), metric.whiten(t, a2).with_data(X)

    def run(target):
        return hb.sample(target, hb.samplers.sgld(0.01), num_samples=3, num_chains=1, progress_bar=False,
                         checks="off", seed=0, init=jnp.zeros(3))

    run(w1)
    n, reused = _count_chunk_compiles(lambda: run(w2))
    assert n == 0
    hb.clear_caches()
    np.testing.assert_array_equal(reused.samples["theta"], run(w2).samples["theta"])
    with pytest.raises(ValueError, match="whiten a target once"):
        metric.whiten(w1, a2)
    with pytest.raises(RuntimeError, match="does not take it as an argument"):
        hb.sample(t, averaged(hb.samplers.sgld(Tuned(0.01, "step_size"))), num_samples=3, num_chains=1,
                  progress_bar=False, checks="off", init=jnp.zeros(3), batch_size=10)


@pytest.mark.slow  # three runs with every automatic setting (about 25 s)
def test_another_seed_reuses_the_compiled_chunks_with_its_own_tuned_values():
    """The automatic step size and the Laplace metric (mu, L) are arguments of the compiled chunk
    (schedules.Tuned, metric.tuned_metric): another seed's values reuse it, and the draws equal
    those of a chunk compiled for them."""
    _another_seed_reuses_the_chunks(lambda: hb.samplers.sgld())


@pytest.mark.slow
def test_another_seed_reuses_the_compiled_chunks_sghmc():
    """SGHMC's automatic friction as well (identity metric: the step sizes differ between seeds)."""
    _another_seed_reuses_the_chunks(lambda: hb.samplers.sghmc(), metric="identity")


@pytest.mark.slow
def test_another_seed_reuses_the_compiled_chunks_psgld():
    """pSGLD's automatic RMSprop window (decay) as well."""
    _another_seed_reuses_the_chunks(lambda: hb.samplers.psgld(), metric="identity")


def test_fit_trace_is_bounded_by_the_state_bytes(monkeypatch):
    """hb.fit's default trace keeps at most TRACE_BYTES of recorded states: with room for 4
    states of FB-GVI (d = 3) a 200-step fit records 4 trace points (every 50 steps), not 100."""
    from heatbath.drivers import fitting

    method = hb.vi.fbgvi(0.1, 200)
    state_bytes = fitting._bytes(jax.eval_shape(method.init, jnp.zeros(3), jax.random.key(0)))
    monkeypatch.setattr(fitting, "TRACE_BYTES", 4 * state_bytes)
    target = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: 0.0 * jnp.sum(b),
                                       np.zeros((1, 1), np.float32), params=jnp.zeros(3))
    q = hb.fit(target, method, elbo_samples=0, check=False)
    assert len(q.trace["step"]) == 4, q.trace["step"]
    np.testing.assert_array_equal(q.trace["step"], [50, 100, 150, 200])


def test_the_last_shorter_chunk_reuses_the_compiled_chunk():
    """Chunks of 300, 300 and 100 draws: one compiled chunk (the last runs a traced count in the
    full chunks' code; it compiled a second, smaller capacity before), the same draws as one chunk."""
    target = _target()

    def run(**kw):
        return hb.sample(target, hb.samplers.sgld(1.5e-3), batch_size=20, num_samples=700, progress_bar=False,
                         checks="off", seed=3, **kw, num_warmup=0)

    count, chunked = _count_chunk_compiles(lambda: run(chunk_size=300))
    assert count == 1
    whole = run(chunk_size=700)
    np.testing.assert_array_equal(chunked.samples["theta"], whole.samples["theta"])


def test_the_end_of_run_bias_check_measures_only_what_it_reads():
    """checks="full" with a given step size measures lambda_max(H + V/T) alone: the same value as
    the full four-eigenvalue measurement (its own key split), compiled smaller."""
    from heatbath.drivers import autotune

    sampler = hb.samplers.sgld(1e-3)
    est = hb.kernels.gradients.naive().build(_target().terms, 200)
    positions = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3)), jnp.float32)
    key = jax.random.key(5)
    st = est.init(positions[0], X)
    full, cost_full = autotune._measure(_target(), sampler, "sgld", est, st, positions, key, 20, 1.0)
    t = _target()
    _, (sub, cost_sub) = _compiled_names(
        lambda: autotune._measure(t, sampler, "sgld", est, st, positions, key, 20, 1.0, need=("lam_hv",)))
    assert set(sub) == {"lam_hv"} and set(full) == set(autotune.MEASURED)
    np.testing.assert_allclose(sub["lam_hv"], full["lam_hv"], rtol=1e-5)
    assert cost_sub < cost_full
    # once the full measurement is compiled for a target, a subset reuses it
    autotune._measure(t, sampler, "sgld", est, st, positions, key, 20, 1.0)
    again, (sub2, _) = _compiled_names(
        lambda: autotune._measure(t, sampler, "sgld", est, st, positions, key, 20, 1.0, need=("lam_hv",)))
    assert "jit(one)" not in again and set(sub2) == set(autotune.MEASURED)


def test_a_tuned_psgld_window_is_an_argument_of_the_compiled_chunk():
    """pSGLD's RMSprop decay as hb.sample chooses it (a Tuned value): another window reuses the
    compiled chunk and gives the draws of a chunk compiled for it; with the divergence correction
    (whose start step the decay sets) it is a constant again."""
    from heatbath.kernels.schedules import Tuned

    def make(h, a):
        return hb.samplers.psgld(Tuned(h, "step_size"), decay=Tuned(a, "decay"))

    b = _reused_equals_fresh(make, (0.01, 0.995), (0.01, 0.9))
    # Not the 0.995 window's draws: the decay is read, not compiled in.
    assert not np.array_equal(b.samples["theta"], _tuned_run(make(0.01, 0.995)).samples["theta"])
    assert not isinstance(hb.samplers.psgld(0.01, decay=Tuned(0.9, "decay"), correction=True)
                          .hyperparameters["decay"], Tuned)


def test_caches_are_emptied_near_the_kernel_limit_on_memory_mappings(monkeypatch):
    """Each compiled CPU program maps its code into the process, and the caches keep them: past
    Linux's vm.max_map_count the next compile fails (LLVM "Cannot allocate memory", then a
    crash, seen after 17 defaults-table runs in one process). At the start of a call that
    follows a compile, heatbath empties the caches, with a warning, once the process holds more
    than half of the limit; never within a call, and without counting after calls that built nothing."""
    from heatbath.drivers import cache

    real = cache._mapping_counts()  # read from /proc on Linux
    assert real is None or (real[0] > 0 and real[1] > 0)
    monkeypatch.setattr(cache, "MAPPING_FRACTION", 0.5)
    held = cache.IdentityCache(4)
    held.get("a", (), lambda: 1)
    checking = cache.IdentityCache(4, check_mappings=True)
    reads = []

    def counts(value):
        def read():
            reads.append(value)
            return value
        return read

    monkeypatch.setattr(cache, "_mapping_counts", counts((100, 65530)))
    cache.relieve_mapping_pressure()  # whatever was built before this test: seen now (far from the limit)
    monkeypatch.setattr(cache, "_mapping_counts", counts((40000, 65530)))
    reads.clear()
    assert cache.relieve_mapping_pressure() is False and reads == []  # nothing built since: not counted
    checking.get("b", (), lambda: 2)  # a build: no count within the call
    assert reads == [] and "a" in held.entries
    monkeypatch.setattr(cache, "_mapping_counts", counts((100, 65530)))
    assert cache.relieve_mapping_pressure() is False and reads == [(100, 65530)] and "a" in held.entries
    checking.get("c", (), lambda: 3)
    monkeypatch.setattr(cache, "_mapping_counts", counts((40000, 65530)))
    with pytest.warns(UserWarning, match=r"emptied its caches.*40000 memory mappings of the kernel's limit of 65530"):
        assert cache.relieve_mapping_pressure() is True
    assert not held.entries and not checking.entries
    checking.get("d", (), lambda: 4)
    monkeypatch.setattr(cache, "_mapping_counts", lambda: None)  # not Linux: nothing to read
    assert cache.relieve_mapping_pressure() is False


def test_the_full_data_pass_cache_is_emptied_by_clear_caches_and_takes_unhashable_terms():
    """The control variates' compiled full-data pass is cached by the identity of the target's
    terms (pinned; a NumPyro target's terms hold its data) in one of the drivers' caches:
    hb.clear_caches() releases it, and terms that cannot be hashed work (a review found an
    lru_cache doing neither)."""
    import dataclasses

    from heatbath.drivers.cache import clear_caches
    from heatbath.kernels import gradients

    @dataclasses.dataclass  # not frozen: __hash__ is None
    class Terms:
        def __call__(self, p, b):
            return -0.5 * jnp.sum(p**2), _loglik(p, b)

    terms = Terms()
    with pytest.raises(TypeError):
        hash(terms)
    target = dataclasses.replace(_target(), terms=terms)
    spec = hb.kernels.gradients.control_variates(centre=jnp.zeros(3))
    r = hb.sample(target, hb.samplers.sgld(1e-3, gradient=spec), batch_size=20, num_samples=20, num_warmup=0,
                  progress_bar=False, checks="off", seed=0)
    assert np.all(np.isfinite(r.samples["theta"]))
    assert len(gradients._passes()) >= 1
    clear_caches()
    assert len(gradients._passes()) == 0
