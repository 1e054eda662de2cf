"""The NumPyro bridge minibatches only what is a sum over independent rows, gives clear errors
for inputs it cannot use, and traces safely from several threads (issue 17, classes 3, 8, 9)."""

import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.stats as st
from numpyro import handlers
from numpyro.distributions import constraints

import heatbath as hb
from heatbath.drivers.cache import clear_caches
from heatbath.models import numpyro_bridge

RNG = np.random.default_rng(17)


def assert_unbiased(target, seeds=(0, 1), batch_rows=None, rtol=2e-5):
    """The minibatch log density N/n * loglik(B) + logprior, averaged over the blocks of a random
    partition of the rows (block b drawn with probability n_b / N), equals the full log density:
    sum_b (n_b / N) * logdensity(u, B_b) == logdensity(u). Two random parameters and partitions."""
    assert target.minibatch_error is None, target.minibatch_error
    N = target.num_data
    n = batch_rows or max(d for d in range(1, N // 5 + 1) if N % d == 0)  # one batch shape: one compile
    terms = jax.jit(target.terms)
    for seed in seeds:
        u = target.init_params(jax.random.PRNGKey(100 + seed))
        lp_full, ll_full = terms(u, target.data)
        full = float(lp_full) + float(ll_full)
        perm = np.random.default_rng(seed).permutation(N)
        total, lik_sum = 0.0, 0.0
        for start in range(0, N, n):
            rows = perm[start:start + n]
            batch = jax.tree.map(lambda a: a[rows], target.data)
            lp, ll = terms(u, batch)
            assert float(lp) == pytest.approx(float(lp_full), rel=1e-5, abs=1e-4)  # the prior ignores the batch
            total += len(rows) / N * (float(lp) + N / len(rows) * float(ll))
            lik_sum += float(ll)
        assert lik_sum == pytest.approx(float(ll_full), rel=rtol, abs=1e-3)
        assert total == pytest.approx(full, rel=rtol, abs=1e-3)


def refused(target, *words):
    assert target.minibatch_error is not None
    for w in ("batch_size=None",) + words:
        assert w in target.minibatch_error, (w, target.minibatch_error)
    with pytest.raises(ValueError, match="cannot be minibatched"):
        hb.sample(target, hb.samplers.sgld(1e-3), batch_size=2, num_samples=2, progress_bar=False)


# -- class 3: only sums over independent rows are minibatched --------------------------------------------


REFERENCE_MINIBATCHABLE = {"sblri", "arK", "low_dim_gauss_mix", "diamonds", "german_credit", "brownian_motion"}
REFERENCE_FULL_BATCH = {"eight_schools_noncentered", "eight_schools", "gp_pois_regr"}  # per-row latents


@pytest.mark.parametrize("name", sorted(REFERENCE_MINIBATCHABLE | REFERENCE_FULL_BATCH))
def test_every_bundled_reference_model_minibatches_unbiasedly_or_refuses(name):
    ref = hb.models.reference(name)
    data = ref.data if not ref.requires_x64 else {**ref.data, "jitter": 1e-3}
    target = hb.models.from_numpyro(ref.model, **data)
    if name in REFERENCE_FULL_BATCH:
        assert "inside the data plate" in target.minibatch_error
        return
    assert_unbiased(target)


def two_data_sets(y1, y2):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("a", y1.shape[0]):
        numpyro.sample("y1", dist.Normal(mu, 1.0), obs=y1)
    with numpyro.plate("b", y2.shape[0]):
        numpyro.sample("y2", dist.Normal(mu, 2.0), obs=y2)


def test_two_observation_plates_of_the_same_size_are_both_scaled():
    N = 60
    y1 = RNG.normal(1.0, 1.0, N).astype(np.float32)
    y2 = RNG.normal(1.0, 2.0, N).astype(np.float32)
    target = hb.models.from_numpyro(two_data_sets, y1, y2)
    assert set(target.data) == {"arg0", "arg1"} and target.num_data == N
    u = {"mu": jnp.array(0.7)}
    rows = np.array([3, 11, 40])
    lp, ll = target.terms(u, jax.tree.map(lambda a: a[rows], target.data))
    assert float(lp) == pytest.approx(st.norm(0, 10).logpdf(0.7), rel=1e-6)
    expected = st.norm(0.7, 1).logpdf(y1[rows]).sum() + st.norm(0.7, 2).logpdf(y2[rows]).sum()
    assert float(ll) == pytest.approx(expected, rel=1e-5)  # both plates are likelihood, scaled by N/n
    assert_unbiased(target, batch_rows=7)
    # The SGLD posterior mean matches the exact one (it was 30 sd off when one plate went unscaled).
    precision = 1 / 100 + N / 1.0 + N / 4.0
    mean = (y1.sum() / 1.0 + y2.sum() / 4.0) / precision
    r = hb.sample(target, hb.samplers.sgld(2e-3), batch_size=10, num_warmup=500, num_samples=4000,
                  seed=1, progress_bar=False)
    assert abs(float(r.samples["mu"].mean()) - mean) < 0.5 / np.sqrt(precision)


def test_a_second_data_set_of_another_length_is_evaluated_whole():
    y1 = RNG.normal(size=40).astype(np.float32)
    y2 = RNG.normal(size=7).astype(np.float32)
    target = hb.models.from_numpyro(two_data_sets, y1, y2)
    assert set(target.data) == {"arg0"}  # y2 is not cut: its plate is part of the (exact) prior term
    assert_unbiased(target, batch_rows=8)


def observed_outside_the_plate(y1, y2):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", y1.shape[0]):
        numpyro.sample("y1", dist.Normal(mu, 1.0), obs=y1)
    numpyro.sample("y2", dist.Normal(mu, 1.0).expand([y2.shape[0]]).to_event(1), obs=y2)


def covariates_also_observed_outside_the_plate(x, y):
    m = numpyro.sample("m", dist.Normal(0.0, 10.0))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    numpyro.sample("x_obs", dist.Normal(m, 1.0).expand([x.shape[0]]).to_event(1), obs=x)
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(b * x, 1.0), obs=y)


def test_observations_of_the_rows_outside_every_plate():
    y1 = RNG.normal(size=30).astype(np.float32)
    y2 = RNG.normal(size=30).astype(np.float32)
    # y2 is not needed row by row: kept whole (an exact term of the prior), y1 minibatched.
    target = hb.models.from_numpyro(observed_outside_the_plate, y1, y2)
    assert set(target.data) == {"arg0"}
    assert_unbiased(target, batch_rows=6)
    # x is needed in the plate too: cutting it would cut the observation outside: refused.
    target = hb.models.from_numpyro(covariates_also_observed_outside_the_plate, y1, y2)
    refused(target, "observed site(s) ['x_obs'] are outside the data plate")


def prior_reads_rows(X, y):
    scale = 1.0 / jnp.sqrt(X.shape[0])
    w = numpyro.sample("w", dist.Normal(0.0, scale).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)


def prior_reads_a_constant(X, y, num_rows):
    scale = 1.0 / jnp.sqrt(num_rows)
    w = numpyro.sample("w", dist.Normal(0.0, scale).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)


def test_a_prior_that_reads_the_number_of_rows_is_refused():
    X = RNG.normal(size=(50, 2)).astype(np.float32)
    y = RNG.normal(size=50).astype(np.float32)
    target = hb.models.from_numpyro(prior_reads_rows, X, y)
    refused(target, "prior", "'w'", "X.shape[0]")
    r = hb.sample(target, hb.samplers.sgld(1e-3), num_samples=5, progress_bar=False)  # full batch runs
    assert r.samples["w"].shape == (1, 5, 2)
    # The valid variant: the prior reads a number passed as an argument.
    assert_unbiased(hb.models.from_numpyro(prior_reads_a_constant, X, y, 50), batch_rows=10)


def ar1_lag_inside(y):
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        mean = jnp.concatenate([jnp.zeros(1, y.dtype), a * y[:-1]])
        numpyro.sample("y", dist.Normal(mean, 1.0), obs=y)


def ar1_shifted_plate(y):
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0] - 1):
        numpyro.sample("y", dist.Normal(a * y[:-1], 1.0), obs=y[1:])


def ar1_lags_as_data(y_lag, y):
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(a * y_lag, 1.0), obs=y)


def trend_from_position(y):
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(b * jnp.arange(y.shape[0]) / y.shape[0], 1.0), obs=y)


def ar1_series(T=300, a=0.78, seed=3):
    rng = np.random.default_rng(seed)
    y = np.zeros(T)
    for t in range(1, T):
        y[t] = a * y[t - 1] + rng.normal()
    return y.astype(np.float32)


def test_a_lag_built_inside_the_model_is_refused_and_precomputed_lags_work():
    y = ar1_series()
    refused(hb.models.from_numpyro(ar1_lag_inside, y), "not a sum of independent per-row terms", "y[:-1]")
    refused(hb.models.from_numpyro(trend_from_position, y), "not a sum of independent per-row terms")
    shifted = hb.models.from_numpyro(ar1_shifted_plate, y)
    assert "no model argument is an array with leading axis 299" in shifted.minibatch_error
    assert "y[1:]" in shifted.minibatch_error
    # Full batches give the right answer for the lag-inside model ...
    r = hb.sample(ar1_lag_inside, hb.samplers.sgld(5e-4), data=(y,), num_warmup=300, num_samples=1000,
                  progress_bar=False)
    assert abs(float(r.samples["a"].mean()) - 0.78) < 0.1
    # ... and the precomputed lags minibatch, unbiasedly, to the same posterior.
    good = hb.models.from_numpyro(ar1_lags_as_data, y[:-1], y[1:])
    assert_unbiased(good, batch_rows=13)
    r = hb.sample(good, hb.samplers.sgld(5e-4), batch_size=30, num_warmup=300, num_samples=2000,
                  progress_bar=False)
    assert abs(float(r.samples["a"].mean()) - 0.78) < 0.1


# -- class 9: clear errors (or the right thing) instead of raw tracebacks --------------------------------


def column_plate(X, col_mean):
    N, D = X.shape
    mu = numpyro.sample("mu", dist.Normal(col_mean, 1.0).to_event(1))
    with numpyro.plate("cols", D, dim=-1):
        with numpyro.plate("rows", N, dim=-2):
            numpyro.sample("x", dist.Normal(mu, 1.0), obs=X)


def test_a_column_plate_larger_than_the_row_plate():
    X = RNG.normal(size=(6, 10)).astype(np.float32)
    target = hb.models.from_numpyro(column_plate, X, np.zeros(10, np.float32))
    assert target.num_data == 6 and set(target.data) == {"arg0"}  # the rows, not the 10 columns
    assert_unbiased(target, batch_rows=2)
    r = hb.sample(target, hb.samplers.sgld(1e-3), batch_size=2, num_samples=5, progress_bar=False)
    assert r.samples["mu"].shape == (1, 5, 10)


def latent_per_row_outside_the_plate(y):
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([y.shape[0]]).to_event(1))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(z, 1.0), obs=y)


def test_a_per_row_latent_outside_the_plate_is_refused_with_the_reason():
    y = RNG.normal(size=30).astype(np.float32)
    target = hb.models.from_numpyro(latent_per_row_outside_the_plate, y)
    refused(target, "['z']", "outside the data plate", "expand")
    r = hb.sample(target, hb.samplers.sgld(1e-3), num_samples=3, progress_bar=False)
    assert r.samples["z"].shape == (1, 3, 30)


def prior_mean_of_length_n(y, m0):
    z = numpyro.sample("z", dist.Normal(m0, 1.0).to_event(1))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.mean(z), 1.0), obs=y)


def two_vectors_of_length_n(y, m0, s0):
    z = numpyro.sample("z", dist.Normal(m0, s0).to_event(1))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.mean(z), 1.0), obs=y)


def test_a_non_data_argument_of_length_n():
    N = 20
    y = RNG.normal(size=N).astype(np.float32)
    m0 = np.linspace(-1, 1, N).astype(np.float32)
    # One such argument: found (the model is minibatched right only with it kept whole).
    target = hb.models.from_numpyro(prior_mean_of_length_n, y, m0)
    assert set(target.data) == {"arg0"}
    assert_unbiased(target, batch_rows=4)
    # Two: refused, naming the arguments taken as data and the way around.
    target = hb.models.from_numpyro(two_vectors_of_length_n, y, m0=m0, s0=np.ones(N, np.float32))
    refused(target, "['argument 0', 'm0', 's0']", "functools.partial")
    ok = hb.models.from_numpyro(functools.partial(two_vectors_of_length_n, m0=m0, s0=np.ones(N, np.float32)), y)
    assert_unbiased(ok, batch_rows=4)


def regression(X):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, 0.5))


def regression_obs(X, y):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("data", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)


def reg_data(N=40):
    X = RNG.normal(size=(N, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -1.0, 0.5]) + 0.5 * RNG.normal(size=N)).astype(np.float32)
    return X, y


def test_observations_supplied_through_handlers_condition_are_minibatched():
    X, y = reg_data()
    conditioned = handlers.condition(regression, data={"y": y})
    target = hb.models.from_numpyro(conditioned, X)
    plain = hb.models.from_numpyro(regression_obs, X, y)
    assert set(target.data) == {"arg0", "condition:y"} and target.minibatch_error is None
    u = {"w": jnp.array([0.3, -0.2, 0.1])}
    rows = np.array([1, 5, 9])
    for t in (target, plain):
        assert_unbiased(t, batch_rows=8)
    got = target.terms(u, jax.tree.map(lambda a: a[rows], target.data))
    want = plain.terms(u, jax.tree.map(lambda a: a[rows], plain.data))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    r = hb.sample(conditioned, hb.samplers.sgld(1e-3), data=(X,), batch_size=8, num_samples=5, progress_bar=False)
    assert r.samples["w"].shape == (1, 5, 3)


def test_pandas_and_lists_are_converted_and_sparse_and_masked_arrays_refused():
    pd = pytest.importorskip("pandas")
    sparse = pytest.importorskip("scipy.sparse")
    X, y = reg_data()
    reference = hb.models.from_numpyro(regression_obs, X, y)
    u = {"w": jnp.array([0.3, -0.2, 0.1])}
    want = reference.terms(u, reference.data)
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    for args in [(frame, y), (X, pd.Series(y)), (frame, list(y)), (X.tolist(), y)]:
        t = hb.models.from_numpyro(regression_obs, *args)
        assert t.minibatch_error is None and t.num_data == 40
        np.testing.assert_allclose(t.terms(u, t.data), want, rtol=1e-6)
    r = hb.sample(regression_obs, hb.samplers.sgld(1e-3), data={"X": frame, "y": pd.Series(y)}, batch_size=8,
                  num_samples=3, progress_bar=False)
    assert r.samples["w"].shape == (1, 3, 3)
    mixed = frame.assign(city=["x"] * 40)
    with pytest.raises(TypeError, match=r"pandas DataFrame.*non-numeric columns: \['city'\]"):
        hb.models.from_numpyro(regression_obs, mixed, y)
    with pytest.raises(TypeError, match="SciPy sparse matrix.*toarray"):
        hb.models.from_numpyro(regression_obs, sparse.csr_matrix(X), y)
    masked = np.ma.masked_array(y, mask=np.arange(40) % 7 == 0)
    with pytest.raises(TypeError, match="masked array with 6 masked value"):
        hb.models.from_numpyro(regression_obs, X, masked)
    unmasked = hb.models.from_numpyro(regression_obs, X, np.ma.masked_array(y))  # nothing masked: fine
    np.testing.assert_allclose(unmasked.terms(u, unmasked.data), want, rtol=1e-6)


def ordered_improper(y):
    mu = numpyro.sample("mu", dist.ImproperUniform(constraints.ordered_vector, (), event_shape=(3,)))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu[1], 1.0), obs=y)


def test_an_improper_prior_site_is_sampled_like_an_unconstrained_one():
    y = RNG.normal(2.0, 1.0, size=30).astype(np.float32)
    target = hb.models.from_numpyro(ordered_improper, y)
    assert target.minibatch_error is None
    u = {"mu": jnp.array([0.5, -0.3, 0.2])}
    lp, ll = target.terms(u, target.data)
    # log density 0 on the support: the prior is the log-Jacobian of the ordered transform.
    assert float(lp) == pytest.approx(-0.3 + 0.2, rel=1e-6)
    mu1 = 0.5 + np.exp(-0.3)
    assert float(ll) == pytest.approx(st.norm(mu1, 1.0).logpdf(y).sum(), rel=1e-5)
    assert_unbiased(target, batch_rows=6)
    init = target.unconstrain({"mu": jnp.array([-1.0, 0.0, 2.0])})
    np.testing.assert_allclose(init["mu"], [-1.0, 0.0, np.log(2.0)], rtol=1e-5)
    r = hb.sample(ordered_improper, hb.samplers.sgld(1e-3), data=(y,), batch_size=10, num_samples=200,
                  progress_bar=False)
    draws = r.samples["mu"][0]
    assert np.all(np.diff(draws, axis=-1) > 0)  # ordered
    assert abs(float(draws[100:, 1].mean()) - y.mean()) < 0.5


# -- class 8: several threads --------------------------------------------------------------------------


def make_model(prior_scale):
    def model(X, y):
        w = numpyro.sample("w", dist.Normal(0.0, prior_scale).expand([X.shape[1]]).to_event(1))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ w, sigma), obs=y)

    return model


@pytest.mark.slow  # 16 runs, each compiling its own loop (about a minute on two cores)
def test_threads_get_the_answers_of_sequential_calls():
    datas = [reg_data(N=30 + 5 * i) for i in range(8)]
    shared = make_model(1.0)

    def job(i, models):
        X, y = datas[i]
        r = hb.sample(models[i], hb.samplers.sgld(1e-4), data={"X": X, "y": y}, batch_size=10,
                      num_samples=50, seed=i, progress_bar=False)
        return r.samples

    def fresh():
        # Distinct model objects each time (no cache hit: every call traces), two calls of one model.
        models = [make_model(1.0 + 0.1 * i) for i in range(8)]
        models[6] = models[7] = shared
        return models

    clear_caches()
    sequential = [job(i, fresh()) for i in range(8)]
    clear_caches()
    models = fresh()
    results, errors = [None] * 8, []

    def worker(i):
        try:
            results[i] = job(i, models)
        except Exception as err:  # noqa: BLE001 - collected and reported below
            errors.append((i, repr(err)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for seq, par in zip(sequential, results):
        for k in seq:
            np.testing.assert_array_equal(seq[k], par[k])


def test_from_numpyro_and_terms_from_many_threads():
    X, y = reg_data()
    u = {"w": jnp.array([0.3, -0.2, 0.1]), "sigma": jnp.array(0.1)}
    expected = [np.asarray(hb.models.from_numpyro(make_model(1.0 + i), X, y).terms(u, {"arg0": X, "arg1": y}))
                for i in range(4)]
    out, errors = {}, []

    def worker(j):
        try:
            i = j % 4
            t = hb.models.from_numpyro(make_model(1.0 + i), X, y)
            a = t.terms(u, t.data)
            b = jax.jit(t.terms)(u, t.data)
            t.unconstrain({"sigma": 0.5})
            out[j] = (i, np.asarray(a), np.asarray(b))
        except Exception as err:  # noqa: BLE001
            errors.append((j, repr(err)))

    threads = [threading.Thread(target=worker, args=(j,)) for j in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(out) == 24
    for i, a, b in out.values():
        np.testing.assert_allclose(a, expected[i], rtol=1e-6)
        np.testing.assert_allclose(b, expected[i], rtol=1e-5)
    assert isinstance(numpyro_bridge.TRACE_LOCK, type(threading.RLock()))


def test_observations_that_are_not_model_arguments_are_refused_with_the_reason():
    X, y = reg_data()

    def closure(X):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)

    by_fn = handlers.condition(regression, condition_fn=lambda msg: y if msg["name"] == "y" else None)
    for model in (closure, by_fn):
        target = hb.models.from_numpyro(model, X)
        refused(target, "observed site 'y' still has 40 rows", "pass the observations as a model argument")
        r = hb.sample(target, hb.samplers.sgld(1e-3), num_samples=3, progress_bar=False)  # full batch runs
        assert r.samples["w"].shape == (1, 3, 3)


def test_a_prior_draw_that_makes_a_parameter_invalid_is_named_as_such():
    """Covariates of scale 100 under a log link: the model's trace at a prior draw of beta
    overflows exp(X @ beta) and NumPyro's validation rejects the Gamma rate. The error says the
    model ran at a prior draw and what to do, not only that it failed 'on its arguments'."""
    import numpyro
    import numpyro.distributions as dist

    def gamma_glm(X, y):
        beta = numpyro.sample("beta", dist.Normal(0, 1).expand([3]).to_event(1))
        shape = numpyro.sample("shape", dist.Gamma(2.0, 0.5))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Gamma(shape, shape / jnp.exp(X @ beta)), obs=y)

    rng = np.random.default_rng(0)
    X = (rng.normal(size=(300, 3)) * np.array([100.0, 1.0, 0.01])).astype(np.float32)
    y = rng.gamma(2.0, 1.0, size=300).astype(np.float32)
    with pytest.raises(ValueError, match=r"invalid rate parameter.*one draw from their priors.*rescale the covariates"):
        hb.sample(gamma_glm, hb.samplers.sgld(), data=dict(X=X, y=y), num_samples=10, progress_bar=False)
