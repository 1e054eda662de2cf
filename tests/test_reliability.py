"""Reliability and scale: checkpoint/resume (a real SIGKILL), divergence handling, running
moments, sharding over 8 simulated devices, float64."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def german():
    return hb.models.reference("german_credit")


def gaussian():
    return hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: 0.0 * jnp.sum(b),
                                     jnp.zeros((4,)), params=jnp.zeros(2))


KILL_RUN = dict(batch_size=100, num_samples=6000, num_warmup=500, thinning=5, num_chains=2, chunk_size=100, seed=11)


def _child_script(ckpt, resume):
    return textwrap.dedent(f"""
        import heatbath as hb
        ref = hb.models.reference("german_credit")
        hb.sample(ref.model, hb.samplers.sgld(4e-4, gradient="cv"), data=ref.data, progress_bar=False,
                  checkpoint={ckpt!r}, resume={resume!r}, **{KILL_RUN!r})
    """)


def test_sigkill_then_resume_gives_the_uninterrupted_draws(german, tmp_path):
    ckpt = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", _child_script(ckpt, None)], env=env)
    meta_path = os.path.join(ckpt, "meta.json")
    killed_at = None
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None:
        try:
            with open(meta_path) as f:
                done = json.load(f)["segments_done"]
        except (OSError, ValueError):
            done = 0
        if done >= 3:
            child.send_signal(signal.SIGKILL)
            child.wait()
            killed_at = done
            break
        time.sleep(0.002)
    assert killed_at is not None, "the child finished before it could be killed: make the run longer"
    meta = hb.checkpoint.Checkpoint.read_meta(ckpt)
    total = 1 + 60  # one warmup chunk (500 steps), 60 chunks of 100 draws
    assert 3 <= meta["segments_done"] < total
    # Resume in this process; compare with an uninterrupted run.
    resumed = hb.sample(german.model, hb.samplers.sgld(4e-4, gradient="cv"), data=german.data, progress_bar=False,
                        resume=ckpt, **KILL_RUN)
    straight = hb.sample(german.model, hb.samplers.sgld(4e-4, gradient="cv"), data=german.data, progress_bar=False,
                         **KILL_RUN)
    assert resumed.samples["weights"].shape == (2, 6000, 25)
    np.testing.assert_array_equal(resumed.samples["weights"], straight.samples["weights"])
    np.testing.assert_array_equal(resumed.stats["lp"], straight.stats["lp"])
    assert hb.checkpoint.Checkpoint.read_meta(ckpt)["segments_done"] == total


def test_checkpoint_refuses_corruption_and_other_runs(german, tmp_path):
    ckpt = str(tmp_path / "c")
    kw = dict(data=german.data, batch_size=100, num_samples=200, num_chains=2, chunk_size=50, progress_bar=False)
    s = hb.samplers.sgld(1e-4)
    hb.sample(german.model, s, checkpoint=ckpt, **kw)
    ok = hb.sample(german.model, s, resume=ckpt, **kw)
    assert ok.samples["weights"].shape == (2, 200, 25)
    with pytest.raises(ValueError, match="different run"):
        hb.sample(german.model, s, resume=ckpt, **{**kw, "num_samples": 300})
    with pytest.raises(ValueError, match="different run"):
        hb.sample(german.model, hb.samplers.sgld(2e-4), resume=ckpt, **kw)
    meta = json.load(open(os.path.join(ckpt, "meta.json")))
    draws_file = os.path.join(ckpt, meta["draws"][1]["file"])
    raw = bytearray(open(draws_file, "rb").read())
    raw[-100] ^= 0xFF
    open(draws_file, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match="corrupted or was modified"):
        hb.sample(german.model, s, resume=ckpt, **kw)
    open(os.path.join(ckpt, "meta.json"), "w").write("{not json")
    with pytest.raises(ValueError, match="corrupted"):
        hb.sample(german.model, s, resume=ckpt, **kw)
    with pytest.raises(ValueError, match="no checkpoint"):
        hb.sample(german.model, s, resume=str(tmp_path / "nothing"), **kw)


@pytest.mark.parametrize("mode", ["stop", "restart", "flag"])
def test_divergence_modes(mode):
    with pytest.warns(RuntimeWarning, match="diverged"):
        r = hb.sample(gaussian(), hb.samplers.sgld(2.5), num_samples=300, num_chains=2, init=jnp.ones(2),
                      on_divergence=mode, progress_bar=False)
    div = r.stats["diverging"]
    first = np.argmax(div, axis=1)
    assert div.any(axis=1).all()
    x = r.samples["theta"]
    if mode == "flag":
        assert not np.isfinite(x[0, -1]).all()
    else:
        assert np.isfinite(x).all()
        # Every draw from the first divergence on is flagged (the unstable chain keeps failing).
        assert all(div[c, first[c]:].all() for c in range(2))
    if mode == "stop":
        # Frozen at the last state with a finite log density: the first flagged draw is the state
        # whose log density overflowed (flagged when the next step evaluated it), then the chain
        # stays at the state before it.
        f = first[0]
        np.testing.assert_array_equal(x[0, f + 1:], np.broadcast_to(x[0, f - 1], x[0, f + 1:].shape))


def test_a_diverging_chain_leaves_the_others_alone():
    # Two chains start far apart on a target where a large step is unstable only far out:
    # U = theta^4/4, gradient -theta^3; h = 0.01 is stable for |theta| < ~14, unstable beyond.
    t = hb.models.from_logdensity(lambda p: -0.25 * jnp.sum(p**4), lambda p, b: 0.0 * jnp.sum(b),
                                  jnp.zeros((4,)), params=jnp.zeros(1))
    init = jnp.array([[0.5], [40.0]])
    with pytest.warns(RuntimeWarning, match=r"chains \[1\]"):
        r = hb.sample(t, hb.samplers.sgld(0.01), num_samples=2000, num_chains=2, init=init, progress_bar=False)
    assert r.diverged_chains() == [1]
    alone = hb.sample(t, hb.samplers.sgld(0.01), num_samples=2000, num_chains=1, init=init[:1], progress_bar=False)
    np.testing.assert_array_equal(r.samples["theta"][0], alone.samples["theta"][0])


def test_running_moments_equal_the_draws_moments(german):
    kw = dict(data=german.data, batch_size=100, num_samples=1500, num_chains=2, seed=3, progress_bar=False)
    s = hb.samplers.sgld(1e-4)
    full = hb.sample(german.model, s, **kw)
    mom = hb.sample(german.model, s, keep="moments", swag_rank=4, **kw)
    x = full.samples["weights"]
    assert mom.moments["count"] == 1500 and mom.samples == {}
    np.testing.assert_allclose(mom.moments["mean"]["weights"], x.mean(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mom.moments["var"]["weights"], x.var(1, ddof=1), rtol=2e-3)
    # The SWAG buffer holds the last 4 draws (ring order), as deviations from the mean.
    last = mom.moments["deviations"]["weights"] + mom.moments["mean"]["weights"][:, None]
    np.testing.assert_allclose(np.sort(last, axis=1), np.sort(x[:, -4:], axis=1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="keep='moments'"):
        mom.to_arviz()
    with pytest.raises(ValueError, match="swag_rank needs"):
        hb.sample(german.model, s, swag_rank=2, **kw)
    with pytest.raises(ValueError, match="keep must be one of"):
        hb.sample(german.model, s, keep="everything", **kw)
    with pytest.raises(ValueError, match="on_divergence must be one of"):
        hb.sample(german.model, s, on_divergence="explode", **kw)


def _run_subprocess(code, env_extra):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_extra)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("estimators", [
    pytest.param("sgld", id="naive"),
    pytest.param("cv,svrg", id="cv-svrg", marks=pytest.mark.slow),  # full-data reductions: 6 more compilations
])
def test_eight_devices_sharded_chains_and_data_match_one_device(estimators):
    out = _run_subprocess(
        "        NAMES = " + repr(estimators.split(",")) + """
        import json, numpy as np, jax, heatbath as hb
        assert len(jax.devices()) == 8
        ref = hb.models.reference("german_credit")
        kw = dict(data=ref.data, batch_size=100, num_samples=500, num_chains=8, progress_bar=False, seed=1)
        try:
            hb.sample(ref.model, hb.samplers.sgld(1e-4), **{**kw, "num_chains": 3}, shard="chains")
            raise SystemExit("3 chains on 8 devices were accepted")
        except ValueError as err:
            assert "num_chains divisible" in str(err), err
        res = {}
        for name, s in [("sgld", hb.samplers.sgld(1e-4)), ("cv", hb.samplers.sgld(4e-4, gradient="cv")),
                        ("svrg", hb.samplers.sgld(4e-4, gradient=hb.kernels.gradients.svrg(50)))]:
            if name not in NAMES:
                continue
            base = hb.sample(ref.model, s, **kw).samples["weights"]
            for shard in ("chains", "data"):
                x = hb.sample(ref.model, s, shard=shard, **kw).samples["weights"]
                res[name + "-" + shard] = float(np.abs(x - base).max())
        print(json.dumps(res))
        """,
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
    )
    res = json.loads(out.strip().splitlines()[-1])
    # Sharded chains compute exactly what one device computes; sharded data too for the naive
    # estimator (a masked local gather + all-reduce of the batch); full-data gradients (CV, SVRG)
    # are sharded reductions, equal up to float32 summation order.
    # SVRG's in-scan full-data refresh is compiled for 1 chain per device instead of 8 under vmap,
    # which may reorder its float32 sums too.
    if "sgld" in estimators:
        assert res["sgld-chains"] == 0.0 and res["sgld-data"] == 0.0
    else:
        assert res["cv-chains"] == 0.0 and res["svrg-chains"] < 1e-5
        assert res["cv-data"] < 1e-4 and res["svrg-data"] < 1e-4


def test_float64_on_request():
    out = _run_subprocess(
        """
        import jax, jax.numpy as jnp, heatbath as hb
        t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: 0.0 * jnp.sum(b),
                                      jnp.zeros((4,)), params=jnp.zeros(2))
        r = hb.sample(t, hb.samplers.sgld(0.1), num_samples=10, progress_bar=False)
        print(r.samples["theta"].dtype, r.stats["lp"].dtype)
        """,
        {"JAX_ENABLE_X64": "1"},
    )
    assert out.split() == ["float64", "float64"]


def test_shard_errors():
    # (num_chains not divisible by the devices: checked in the 8-device subprocess test above)
    with pytest.raises(ValueError, match="more than once"):
        hb.sample(gaussian(), hb.samplers.sgld(0.1), num_samples=5, num_chains=3, shard="chains",
                  devices=[jax.devices()[0]] * 2, progress_bar=False)
    with pytest.raises(ValueError, match="shard must be"):
        hb.sample(gaussian(), hb.samplers.sgld(0.1), num_samples=5, shard="rows", progress_bar=False)


def test_optimize_checkpoint_resume_after_a_crash(german, tmp_path, monkeypatch):
    kw = dict(data=german.data, batch_size=100, num_steps=1000, trace_every=10, seed=2)
    straight = hb.optimize(german.model, **kw)
    ckpt = str(tmp_path / "opt")
    real_commit = hb.checkpoint.Checkpoint.commit

    def crash_after_five(self, segments_done, *args, **kwargs):
        meta = real_commit(self, segments_done, *args, **kwargs)
        if segments_done == 5:
            raise KeyboardInterrupt("simulated crash after the 5th commit")
        return meta

    monkeypatch.setattr(hb.checkpoint.Checkpoint, "commit", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        hb.optimize(german.model, checkpoint=ckpt, **kw)
    monkeypatch.setattr(hb.checkpoint.Checkpoint, "commit", real_commit)
    assert hb.checkpoint.Checkpoint.read_meta(ckpt)["segments_done"] == 5
    resumed = hb.optimize(german.model, resume=ckpt, **kw)
    np.testing.assert_array_equal(resumed.params["weights"], straight.params["weights"])
    np.testing.assert_array_equal(resumed.trace["lp"], straight.trace["lp"])
    assert hb.checkpoint.Checkpoint.read_meta(ckpt)["segments_done"] == 20


def test_fit_checkpoint_resume_after_a_crash(german, tmp_path, monkeypatch):
    method = hb.vi.fbgvi(step_size=2e-3, num_steps=200, antithetic=True)
    kw = dict(data=german.data, seed=4, trace_every=5, elbo_samples=0)
    straight = hb.fit(german.model, method, **kw)
    ckpt = str(tmp_path / "fit")
    real_commit = hb.checkpoint.Checkpoint.commit

    def crash(self, segments_done, *args, **kwargs):
        meta = real_commit(self, segments_done, *args, **kwargs)
        if segments_done == 7:
            raise KeyboardInterrupt("simulated crash")
        return meta

    monkeypatch.setattr(hb.checkpoint.Checkpoint, "commit", crash)
    with pytest.raises(KeyboardInterrupt):
        hb.fit(german.model, method, checkpoint=ckpt, **kw)
    monkeypatch.setattr(hb.checkpoint.Checkpoint, "commit", real_commit)
    resumed = hb.fit(german.model, method, resume=ckpt, **kw)
    np.testing.assert_array_equal(resumed.mean_flat, straight.mean_flat)
    np.testing.assert_array_equal(np.asarray(resumed.cov), np.asarray(straight.cov))


def test_resuming_a_finished_run_with_a_short_last_chunk(tmp_path):
    ckpt = str(tmp_path / "done")
    kw = dict(num_samples=5, chunk_size=2, num_chains=1, progress_bar=False, seed=0)
    first = hb.sample(gaussian(), hb.samplers.sgld(0.1), checkpoint=ckpt, **kw)
    again = hb.sample(gaussian(), hb.samplers.sgld(0.1), resume=ckpt, **kw)
    np.testing.assert_array_equal(first.samples["theta"], again.samples["theta"])


def test_chunks_are_sized_by_what_is_recorded():
    import numpyro
    import numpyro.distributions as dist

    from heatbath.drivers import loop

    def model(X, y):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([X.shape[1]]).to_event(1))
        mu = numpyro.deterministic("mu", X @ w)  # one value per row: 200,000 floats per draw
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    X = np.random.default_rng(0).normal(size=(200_000, 2)).astype(np.float32)
    y = X @ np.array([1.0, -1.0], np.float32)
    seen = []
    real = loop.make_chunk

    def spy(one_step, num_draws, *args, **kwargs):
        seen.append(num_draws)
        return real(one_step, num_draws, *args, **kwargs)

    import unittest.mock as mock

    with mock.patch.object(loop, "make_chunk", spy):
        hb.sample(model, hb.samplers.sgld(1e-6), data={"X": X, "y": y}, batch_size=100, num_samples=400,
                  progress_bar=False, num_warmup=0)
    # 800 kB per draw: the default 128 MiB chunk holds at most ~167 draws.
    assert max(seen) <= 170


def test_checkpoint_records_schedule_parameters_and_warns_about_functions(tmp_path):
    from heatbath.kernels.schedules import polynomial_decay

    ckpt = str(tmp_path / "sched")
    kw = dict(num_samples=20, chunk_size=5, progress_bar=False)
    hb.sample(gaussian(), hb.samplers.sgld(polynomial_decay(1e-2)), checkpoint=ckpt, **kw)
    with pytest.raises(ValueError, match="different run"):
        hb.sample(gaussian(), hb.samplers.sgld(polynomial_decay(5e-1)), resume=ckpt, **kw)
    with pytest.warns(UserWarning, match="cannot record"):
        hb.sample(gaussian(), hb.samplers.sgld(lambda k: 0.01 + 0.0 * k), checkpoint=str(tmp_path / "f"), **kw)
    other = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: 0.0 * jnp.sum(b),
                                      jnp.ones((4,)), params=jnp.zeros(2))
    with pytest.raises(ValueError, match="different run"):  # other data, same shapes
        hb.sample(other, hb.samplers.sgld(polynomial_decay(1e-2)), resume=ckpt, **kw)


def test_running_moments_merge_chunks_in_float64():
    """Each chunk's float32 moments are merged on the host in float64: over 25,000 draws in three
    chunks the variance equals the float64 variance of the kept draws to ~1e-6 (a single
    float32 Welford recursion drifts by ~1e-4 over 1e6 updates)."""
    kw = dict(num_samples=25_000, num_chains=2, seed=1, progress_bar=False)
    full = hb.sample(gaussian(), hb.samplers.sgld(0.1), **kw)
    mom = hb.sample(gaussian(), hb.samplers.sgld(0.1), keep="moments", swag_rank=3, **kw)
    x = full.samples["theta"].astype(np.float64)
    np.testing.assert_allclose(mom.moments["var"]["theta"], x.var(1, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(mom.moments["mean"]["theta"], x.mean(1), atol=1e-6)
    last = mom.moments["deviations"]["theta"] + mom.moments["mean"]["theta"][:, None]
    np.testing.assert_allclose(np.sort(last, 1), np.sort(x[:, -3:], 1), atol=1e-6)
