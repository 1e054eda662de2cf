"""The spine's seams: batchers, the oracle (with the nonsmooth term's prox), the VI-method
contract, noise sources, unconstrained draws and float64 summaries."""

import os
import subprocess
import sys
import textwrap
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb
from heatbath.drivers import batching
from heatbath.kernels.gradients import Nonsmooth
from heatbath.samplers.base import Info, Sampler


# ----------------------------------------------------------------------------------------
# Batchers
# ----------------------------------------------------------------------------------------
def _rows_seen(spec, n, N, steps, key=0):
    """The row indices the batcher hands to steps 0..steps-1 of one chain (data = arange(N))."""
    b = spec.build(n, N, steps)
    data = jnp.arange(N)

    def body(state, step):
        batch, info, state = b.next(state, jax.random.fold_in(jax.random.key(key + 1), step), data, step)
        return state, (batch, info)

    _, (rows, infos) = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(steps, dtype=jnp.int32)))(
        b.init(jax.random.key(key)))
    return np.asarray(rows), jax.tree.map(np.asarray, infos)


@pytest.mark.parametrize("n, N", [(7, 30), (10, 30), (30, 30), (4, 9)])
def test_reshuffle_visits_every_row_exactly_once_per_epoch(n, N):
    epochs = 7
    steps = epochs * N // np.gcd(n, N) * n // n  # whole epochs in whole steps: lcm(n, N) / n per cycle
    steps = (epochs * np.lcm(n, N)) // n
    rows, _ = _rows_seen(batching.reshuffle(), n, N, steps)
    stream = rows.reshape(-1)
    assert stream.size % N == 0
    perms = stream.reshape(-1, N)
    for p in perms:
        np.testing.assert_array_equal(np.sort(p), np.arange(N))
    # Epochs are reshuffled: not all epochs in the same order.
    assert len({tuple(p) for p in perms}) > 1


def test_reshuffle_differs_across_chains_and_resumes_exactly(tmp_path):
    def logprior(p):
        return -0.5 * jnp.sum(p["x"] ** 2)

    def loglik(p, batch):
        return -0.5 * jnp.sum((batch - p["x"]) ** 2)

    data = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    t = hb.models.from_logdensity(logprior, loglik, data, params={"x": jnp.zeros(2)})
    kw = dict(batch_size=8, num_samples=40, num_chains=2, seed=3, progress_bar=False, batching="reshuffle")
    a = hb.sample(t, hb.samplers.sgld(1e-2), **kw)
    u = hb.sample(t, hb.samplers.sgld(1e-2), **{**kw, "batching": "uniform"})
    assert not np.array_equal(a.samples["x"], u.samples["x"])
    ckpt = str(tmp_path / "c")
    b = hb.sample(t, hb.samplers.sgld(1e-2), checkpoint=ckpt, chunk_size=10, **kw)
    np.testing.assert_array_equal(a.samples["x"], b.samples["x"])
    # Resuming the finished run's checkpoint after dropping its last commit: the draws of the
    # resumed run equal the uninterrupted ones (the batcher's state is in the checkpoint).
    c = hb.sample(t, hb.samplers.sgld(1e-2), resume=ckpt, chunk_size=10, **kw)
    np.testing.assert_array_equal(a.samples["x"], c.samples["x"])
    with pytest.raises(ValueError, match="different run"):
        hb.sample(t, hb.samplers.sgld(1e-2), resume=ckpt, chunk_size=10, **{**kw, "batching": "uniform"})


def test_reshuffle_is_refused_when_the_int32_row_count_would_wrap():
    if jax.config.jax_enable_x64:
        pytest.skip("with x64 the row count is int64")
    with pytest.raises(ValueError, match="reshuffle"):
        batching.reshuffle().build(1000, 5000, 3_000_000)


def test_federated_rounds_keep_a_shard_for_local_steps_and_follow_probs():
    N, K, local = 60, 3, 4
    labels = np.repeat(np.arange(K), [10, 20, 30])
    probs = np.array([0.5, 0.3, 0.2])
    spec = batching.federated(labels, local_steps=local, probs=probs)
    steps = 4000
    rows, info = _rows_seen(spec, 5, N, steps)
    shard = info["shard"]
    # Each round of `local` steps sees one shard, and only its rows.
    np.testing.assert_array_equal(shard.reshape(-1, local), np.repeat(shard[::local, None], local, axis=1))
    np.testing.assert_array_equal(labels[rows], np.repeat(shard[:, None], 5, axis=1))
    np.testing.assert_array_equal(info["shard_size"], np.bincount(labels)[shard])
    np.testing.assert_allclose(info["shard_prob"], probs[shard], rtol=1e-6)
    freq = np.bincount(shard[::local], minlength=K) / (steps // local)
    se = np.sqrt(probs * (1 - probs) / (steps // local))
    assert np.all(np.abs(freq - probs) < 4 * se), (freq, probs)


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        (([0, 2, 2],), {}, ValueError, r"shard\(s\) \[1\] have no rows"),
        (([0.5, 1.0],), {}, TypeError, "integer"),
        (([0, 1],), {"probs": [0.5, 0.6]}, ValueError, "sum to 1"),
        (([0, 1],), {"probs": [1.0]}, ValueError, "one entry per shard"),
        (([0, 1],), {"local_steps": 0}, ValueError, "local_steps"),
    ],
)
def test_federated_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        batching.federated(np.asarray(args[0]), **kwargs)


def test_batching_bad_name_and_wrong_length():
    t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p ** 2), lambda p, b: -0.5 * jnp.sum((b - p) ** 2),
                                  np.zeros((10, 1), np.float32), params=jnp.zeros(1))
    with pytest.raises(ValueError, match="batching must be"):
        hb.sample(t, hb.samplers.sgld(1e-2), batch_size=2, num_samples=2, progress_bar=False, batching="epochs")
    with pytest.raises(ValueError, match="shards has 3 entries"):
        hb.sample(t, hb.samplers.sgld(1e-2), batch_size=2, num_samples=2, progress_bar=False,
                  batching=batching.federated(np.array([0, 1, 1])))


# ----------------------------------------------------------------------------------------
# The oracle: a toy proximal sampler (MYULA's update) reaching the prox through it
# ----------------------------------------------------------------------------------------
class ToyState(NamedTuple):
    position: jax.Array
    step: jax.Array


def toy_myula(h, lam, temperature=1.0):
    """theta <- theta + h grad log p~ - (h / lam) (theta - prox_{lam g}(theta)) + sqrt(2 h T) xi."""

    def init(position, key=None):
        return ToyState(position, jnp.zeros((), jnp.int32))

    def step(key, state, batch, oracle):
        lp, g = oracle(state.position, batch)
        x = state.position
        moreau = (x - oracle.prox(x, lam)) / lam
        xi = hb.kernels.noise.brownian().draw(key, x)
        new = x + h * g - h * moreau + jnp.sqrt(2 * h * temperature) * xi
        info = Info(jnp.asarray(h), jnp.asarray(temperature), jnp.linalg.norm(g), lp,
                    jnp.logical_not(jnp.all(jnp.isfinite(new))))
        return ToyState(new, state.step + 1), info

    return Sampler(init=init, step=step, name="toy-myula", temperature=hb.kernels.schedules.constant(temperature),
                   uses=("nonsmooth",))


def _laplace_target():
    a = jnp.array([1.0, 2.0, 4.0])
    l1 = Nonsmooth(value=lambda x: jnp.sum(a * jnp.abs(x)),
                   prox=lambda x, lam: jnp.sign(x) * jnp.maximum(jnp.abs(x) - lam * a, 0.0))
    return hb.models.from_logdensity(lambda p: jnp.zeros(()), lambda p, b: jnp.zeros(()) * jnp.sum(b),
                                     np.zeros((4, 1), np.float32), params=jnp.zeros(3), nonsmooth=l1), a


def test_oracle_prox_reaches_the_step_exactly():
    target, a = _laplace_target()
    x0 = np.array([[0.3, -2.0, 5.0], [1.0, 0.01, -0.2]], np.float32)
    h, lam = 0.1, 0.05
    res = hb.sample(target, toy_myula(h, lam, temperature=0.0), num_samples=1, num_chains=2, init=x0,
                    progress_bar=False, num_warmup=0)
    soft = np.sign(x0) * np.maximum(np.abs(x0) - lam * np.asarray(a), 0)
    expected = x0 - (h / lam) * (x0 - soft)
    np.testing.assert_allclose(res.samples["theta"][:, 0], expected, rtol=1e-6)


def test_oracle_prox_sampler_samples_the_laplace_target():
    """MYULA on pi ~ exp(-sum a_i |x_i|): E|x_i| = 1/a_i up to the O(lam + h) bias."""
    target, a = _laplace_target()
    res = hb.sample(target, toy_myula(0.005, 0.01), num_samples=40_000, num_warmup=1000, num_chains=4,
                    progress_bar=False)
    x = res.samples["theta"].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(np.mean(np.abs(x), axis=0), 1 / np.asarray(a), rtol=0.1)


def test_oracle_without_a_nonsmooth_term_says_so():
    t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p ** 2), lambda p, b: jnp.zeros(()) * jnp.sum(b),
                                  np.zeros((4, 1), np.float32), params=jnp.zeros(3))
    with pytest.raises(ValueError, match="no nonsmooth term"):
        hb.sample(t, toy_myula(0.1, 0.1), num_samples=1, progress_bar=False)
    with pytest.raises(TypeError, match="Nonsmooth"):
        hb.models.from_logdensity(lambda p: 0.0, lambda p, b: 0.0, np.zeros((4, 1)), nonsmooth=lambda x: x)


def test_a_sampler_that_would_ignore_the_nonsmooth_term_or_the_shard_scaling_is_refused():
    target, _ = _laplace_target()
    with pytest.raises(ValueError, match="nonsmooth term .* sgld would ignore"):
        hb.sample(target, hb.samplers.sgld(1e-3), num_samples=2, progress_bar=False)
    with pytest.raises(ValueError, match="nonsmooth term"):
        hb.optimize(target, hb.samplers.sgld(1e-3, temperature=0.0), num_steps=2)
    t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p ** 2), lambda p, b: -0.5 * jnp.sum((b - p) ** 2),
                                  np.zeros((10, 1), np.float32), params=jnp.zeros(1))
    labels = np.repeat([0, 1], 5)
    with pytest.raises(ValueError, match="biased"):
        hb.sample(t, hb.samplers.sgld(1e-3), batch_size=2, num_samples=2, progress_bar=False,
                  batching=batching.federated(labels, probs=[0.9, 0.1]))
    # Proportional probabilities (the default) keep N/n unbiased: accepted.
    hb.sample(t, hb.samplers.sgld(1e-3), batch_size=2, num_samples=2, progress_bar=False,
              batching=batching.federated(labels, local_steps=3))


def test_oracle_prox_sampler_under_chain_sharding_equals_one_device():
    script = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np, jax
        import heatbath as hb
        from test_spine import toy_myula, _laplace_target
        assert len(jax.devices()) == 8
        target, _ = _laplace_target()
        kw = dict(num_samples=50, num_chains=8, seed=1, progress_bar=False)
        one = hb.sample(target, toy_myula(0.01, 0.05), **kw)
        many = hb.sample(target, toy_myula(0.01, 0.05), shard="chains", **kw)
        np.testing.assert_array_equal(one.samples["theta"], many.samples["theta"])
        print("ok")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


# ----------------------------------------------------------------------------------------
# The VI contract: a toy mean-field method (reparameterised SGD on the ELBO) under hb.fit
# ----------------------------------------------------------------------------------------
class MFState(NamedTuple):
    position: jax.Array  # the mean
    log_sd: jax.Array
    step: jax.Array


class MFInfo(NamedTuple):
    lp: jax.Array
    diverging: jax.Array


class MeanField:
    """The approximation of the toy method: N(m, diag(exp(2 s))) on the flat unconstrained space."""

    def __init__(self, run):
        self.mean = np.asarray(run.final_state.position)
        self.sd = np.exp(np.asarray(run.final_state.log_sd))
        self.run = run

    @property
    def cov(self):
        return np.diag(self.sd ** 2)

    def sample(self, key, num, *, constrained=True):
        z = self.mean + self.sd * np.asarray(jax.random.normal(hb.kernels.validate.seed_key(key), (num, self.mean.size)))
        if not constrained:
            return z
        values = jax.vmap(self.run.target.constrain_fn, in_axes=(0, None))(jnp.asarray(z), self.run.target.data)
        return {k: np.asarray(v) for k, v in values.items()}

    def to_arviz(self, num_samples=1000, seed=0):
        draws = self.sample(seed, num_samples)
        return hb.diagnostics.arviz.to_arviz({k: v[None] for k, v in draws.items()})


def toy_meanfield(step_size, num_steps):
    def init(position, key=None):
        return MFState(position, jnp.full_like(position, -1.0), jnp.zeros((), jnp.int32))

    def step(key, state, batch, oracle):
        eps = jax.random.normal(key, state.position.shape, state.position.dtype)
        sd = jnp.exp(state.log_sd)
        lp, g = oracle(state.position + sd * eps, batch)
        mean = state.position + step_size * g
        log_sd = state.log_sd + step_size * (g * eps * sd + 1.0)
        new = MFState(mean, log_sd, state.step + 1)
        return new, MFInfo(lp, jnp.logical_not(jnp.all(jnp.isfinite(mean))))

    return hb.vi.VIMethod(init=init, step=step, gradient=hb.kernels.gradients.naive(),
                          temperature=hb.kernels.schedules.constant(1.0), name="toy-meanfield", num_steps=num_steps,
                          hyperparameters={"step_size": step_size, "num_steps": num_steps},
                          finalize=lambda run, options: MeanField(run))


def _gaussian_target():
    mu = jnp.array([1.0, -2.0, 0.5])
    var = jnp.array([0.25, 1.0, 4.0])
    return hb.models.from_logdensity(lambda p: -0.5 * jnp.sum((p["x"] - mu) ** 2 / var),
                                     lambda p, b: jnp.zeros(()) * jnp.sum(b), np.zeros((8, 1), np.float32),
                                     params={"x": jnp.zeros(3)}), np.asarray(mu), np.sqrt(np.asarray(var))


def test_toy_vi_method_runs_under_fit_with_checkpoint_resume_and_arviz(tmp_path, monkeypatch):
    target, mu, sd = _gaussian_target()
    method = toy_meanfield(0.01, 4000)
    q = hb.fit(target, method, seed=1, trace_every=100)
    # Robbins-Monro noise at a constant step: mean within ~0.1 sd, sd within ~15%.
    np.testing.assert_allclose(q.mean, mu, atol=0.15 * sd.max())
    np.testing.assert_allclose(q.sd, sd, rtol=0.2)
    assert q.run.infos["lp"].shape == (40,) and q.run.grad_calls == 4000
    idata = q.to_arviz(num_samples=500)
    assert idata.posterior["x"].shape == (1, 500, 3) and idata.posterior["x"].dtype == np.float64
    assert isinstance(q, hb.vi.Approximation)

    ckpt = str(tmp_path / "fit")
    real_commit = hb.checkpoint.Checkpoint.commit

    def crash(self, segments_done, *args, **kwargs):
        meta = real_commit(self, segments_done, *args, **kwargs)
        if segments_done == 7:
            raise KeyboardInterrupt("simulated crash")
        return meta

    monkeypatch.setattr(hb.checkpoint.Checkpoint, "commit", crash)
    with pytest.raises(KeyboardInterrupt):
        hb.fit(target, method, seed=1, trace_every=100, checkpoint=ckpt)
    monkeypatch.setattr(hb.checkpoint.Checkpoint, "commit", real_commit)
    resumed = hb.fit(target, method, seed=1, trace_every=100, resume=ckpt)
    np.testing.assert_array_equal(resumed.mean, q.mean)
    np.testing.assert_array_equal(resumed.sd, q.sd)


def test_old_module_paths_still_import():
    import heatbath.checkpoint
    import heatbath.numpyro

    assert heatbath.numpyro.SGLD is hb.numpyro.SGLD and heatbath.checkpoint.Checkpoint is hb.checkpoint.Checkpoint


def test_fit_refuses_samplers_and_unknown_options_and_sample_refuses_vi():
    target, _, _ = _gaussian_target()
    with pytest.raises(TypeError, match="variational method"):
        hb.fit(target, hb.samplers.sgld(1e-3))
    with pytest.raises(TypeError, match="unknown option"):
        hb.fit(target, toy_meanfield(0.01, 10), elbo_samples=3)
    with pytest.raises(TypeError, match="hb.fit"):
        hb.sample(target, toy_meanfield(0.01, 10), num_samples=2, progress_bar=False)


# ----------------------------------------------------------------------------------------
# Noise sources
# ----------------------------------------------------------------------------------------
ZERO = hb.kernels.noise.NoiseSource("zero", lambda key, like: jax.tree.map(jnp.zeros_like, like),
                                    lambda key, like, num: [jax.tree.map(jnp.zeros_like, like)] * num)


@pytest.mark.parametrize(
    "noisy, cold",
    [
        (hb.samplers.sgld(1e-2, noise=ZERO), hb.samplers.sgld(1e-2, temperature=0.0)),
        (hb.samplers.sghmc(0.1, 1.0, "euler", noise=ZERO), hb.samplers.sghmc(0.1, 1.0, "euler", temperature=0.0)),
        (hb.samplers.sghmc(0.1, 1.0, "obabo", noise=ZERO), hb.samplers.sghmc(0.1, 1.0, "obabo", temperature=0.0)),
        (hb.samplers.psgld(1e-2, noise=ZERO), hb.samplers.psgld(1e-2, temperature=0.0)),
    ],
)
def test_a_noise_source_replaces_every_kernels_noise(noisy, cold):
    """With a noise source that draws zeros, a sampler at T = 1 moves like its T = 0 limit
    (the initial momentum aside, which SGHMC draws at T: both start from init momentum 0 here)."""
    target, _, _ = _gaussian_target()
    kw = dict(num_samples=20, num_warmup=0, seed=0, progress_bar=False,
              init={"x": np.array([0.3, 0.1, -0.4], np.float32)})
    if "momentum" in noisy.init(jnp.zeros(3), None)._fields:
        # SGHMC/SGNHT draw r ~ N(0, T M) at init with the init key; without a key it is 0 for both.
        noisy = noisy._replace(init=lambda p, key=None, f=noisy.init: f(p, None))
        cold = cold._replace(init=lambda p, key=None, f=cold.init: f(p, None))
    a = hb.sample(target, noisy, **kw)
    b = hb.sample(target, cold, **kw)
    np.testing.assert_allclose(a.samples["x"], b.samples["x"], rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="NoiseSource"):
        hb.samplers.sgld(1e-2, noise="pink")


def test_sgnht_draws_its_noise_from_the_source():
    """SGNHT's thermostat depends on T, so its T = 0 limit differs; with zero noise (and the
    initial momentum drawn without a key: 0) its full-batch chain no longer depends on the seed."""
    target, _, _ = _gaussian_target()
    kw = dict(num_samples=20, progress_bar=False, init={"x": np.array([0.3, 0.1, -0.4], np.float32)})
    runs = []
    for noise in (ZERO, None):
        s = hb.samplers.sgnht(0.05, noise=noise)
        s = s._replace(init=lambda p, key=None, f=s.init: f(p, None))
        runs.append([hb.sample(target, s, seed=seed, **kw).samples["x"] for seed in (0, 1)])
    np.testing.assert_array_equal(runs[0][0], runs[0][1])
    assert not np.allclose(runs[1][0], runs[1][1])


# ----------------------------------------------------------------------------------------
# Unconstrained draws and float64 summaries
# ----------------------------------------------------------------------------------------
def test_record_unconstrained_gives_the_positions_the_sampler_moved():
    import numpyro
    import numpyro.distributions as dist

    def model(y):
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(0.0, s), obs=y)

    y = np.random.default_rng(0).normal(size=40).astype(np.float32)
    kw = dict(data={"y": y}, num_samples=30, num_chains=2, progress_bar=False)
    a = hb.sample(model, hb.samplers.sgld(1e-3), record_unconstrained=True, **kw)
    b = hb.sample(model, hb.samplers.sgld(1e-3), **kw)
    np.testing.assert_array_equal(a.samples["s"], b.samples["s"])
    assert b.unconstrained is None
    np.testing.assert_allclose(np.exp(a.unconstrained["s"]), a.samples["s"], rtol=1e-5)
    np.testing.assert_array_equal(a.unconstrained["s"][:, -1], a.final_state.position["s"])
    m = hb.sample(model, hb.samplers.sgld(1e-3), record_unconstrained=True, keep="moments", **kw)
    np.testing.assert_allclose(m.moments["mean"]["s"], a.samples["s"].astype(np.float64).mean(axis=1), rtol=1e-5)


def test_arviz_summary_means_are_right_on_a_long_float32_run():
    """4 x 40,000 float32 draws of a well-identified linear regression (sd << |mean|): ArviZ
    used to average them in float32 and reported means up to 1.3 sd off; the export is float64."""
    import arviz as az

    rng = np.random.default_rng(0)
    N, d = 20_000, 6
    X = rng.normal(size=(N, d)).astype(np.float32)
    w_true = np.array([2.0, -3.0, 4.0, 5.0, -2.5, 3.5])
    y = (X @ w_true + rng.normal(size=N)).astype(np.float32)
    prior_var = 100.0
    prec = X.astype(np.float64).T @ X + np.eye(d) / prior_var
    cov = np.linalg.inv(prec)
    mean = cov @ (X.astype(np.float64).T @ y)
    sd = np.sqrt(np.diag(cov))

    t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p["w"] ** 2) / prior_var,
                                  lambda p, b: -0.5 * jnp.sum((b[1] - b[0] @ p["w"]) ** 2), (X, y),
                                  params={"w": jnp.zeros(d)})
    res = hb.sample(t, hb.samplers.sgld(2e-6, gradient=hb.kernels.gradients.control_variates(centre={"w": mean})),
                    batch_size=100, num_samples=40_000, num_warmup=2000, num_chains=4, progress_bar=False,
                    init={"w": mean.astype(np.float32)})
    summary = az.summary(res.to_arviz(), kind="stats", round_to="none")
    means = summary["mean"].to_numpy()
    own = res.samples["w"].astype(np.float64).mean(axis=(0, 1))
    np.testing.assert_allclose(means, own, atol=1e-3 * sd.min())  # ArviZ agrees with a float64 mean
    z = np.abs(means - mean) / sd
    assert z.max() <= 0.05, z
