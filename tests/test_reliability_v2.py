"""Reliability v2 (issue 17): divergence on a non-finite log density."""

import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb


def _gamma_target():
    """log p = log x - x (Gamma(2, 1)) on the raw x: a step that lands at x < 0 keeps a finite
    state and a finite gradient (1/x - 1) but a NaN log density."""
    return hb.models.from_logdensity(lambda p: jnp.sum(jnp.log(p) - p), lambda p, b: 0.0 * jnp.sum(b),
                                     np.zeros((4, 1), np.float32), params=jnp.ones(1))


@pytest.mark.parametrize("mode", ["stop", "restart", "flag"])
def test_a_nan_log_density_with_a_finite_gradient_is_a_divergence(mode):
    with pytest.warns(RuntimeWarning, match="non-finite state or log density"):
        r = hb.sample(_gamma_target(), hb.samplers.sgld(0.3), num_samples=2000, num_chains=2, seed=1,
                      init=jnp.ones(1), on_divergence=mode, progress_bar=False)
    x = r.samples["theta"][..., 0]
    div = r.stats["diverging"]
    assert div.any(axis=1).all()
    # Every draw at x <= 0 (a NaN log density) is flagged in every mode.
    assert div[x <= 0].all()
    assert (x[~div] > 0).all()
    if mode != "flag":
        # The chain falls back to its last state with a finite log density: at most one draw (the
        # state whose log density turned out NaN at the next step) is outside the support.
        assert (x <= 0).sum(axis=1).max() <= (1 if mode == "stop" else div.sum())
    if mode == "stop":
        first = np.argmax(div, axis=1)
        for c in range(2):
            np.testing.assert_array_equal(x[c, first[c] + 1:], x[c, first[c] + 1])
            assert x[c, first[c] + 1] > 0
    if mode == "restart":
        # The chains go on moving after a rejected step.
        assert all(len(np.unique(x[c, np.argmax(div[c, :]):])) > 10 for c in range(2))


# ----------------------------------------------------------------------------------------
# Class 2: a resume is refused when the model is not the same
# ----------------------------------------------------------------------------------------
def _regression(scale, mean=None):
    import numpyro
    import numpyro.distributions as dist

    def model(X, y, prior_scale=1.0, prior_mean=None):
        loc = 0.0 if prior_mean is None else prior_mean
        w = numpyro.sample("w", dist.Normal(loc, prior_scale).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ w, scale), obs=y)

    return model


def _edited_body():
    import numpyro
    import numpyro.distributions as dist

    def model(X, y, prior_scale=1.0, prior_mean=None):  # same name, another likelihood
        w = numpyro.sample("w", dist.Normal(0.0, prior_scale).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.StudentT(4.0, X @ w, 1.0), obs=y)

    return model


def test_a_resume_with_another_model_or_other_non_data_arguments_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -1.0, 0.5]) + rng.normal(size=60)).astype(np.float32)
    kw = dict(batch_size=10, num_samples=20, chunk_size=5, progress_bar=False)
    path = str(tmp_path / "c")
    base = _regression(1.0)
    hb.sample(base, hb.samplers.sgld(1e-3), data={"X": X, "y": y}, checkpoint=path, **kw)
    cases = [
        (_edited_body(), {"X": X, "y": y}),                                   # edited body, same name
        (_regression(2.0), {"X": X, "y": y}),                                 # a constant in the body
        (base, {"X": X, "y": y, "prior_scale": 3.0}),                         # a non-data scalar argument
        (base, {"X": X, "y": y, "prior_mean": np.ones(3, np.float32)}),       # a non-data array argument
    ]
    for model, data in cases:
        with pytest.raises(ValueError, match="different run.*model"):
            hb.sample(model, hb.samplers.sgld(1e-3), data=data, resume=path, **kw)
    # The same model and arguments resume (the finished run's draws come back).
    again = hb.sample(base, hb.samplers.sgld(1e-3), data={"X": X, "y": y}, resume=path, **kw)
    assert again.samples["w"].shape == (1, 20, 3)


def test_a_resume_under_another_jax_version_warns_instead_of_comparing_the_jaxpr(tmp_path, monkeypatch):
    import json

    X = np.random.default_rng(1).normal(size=(40, 2)).astype(np.float32)
    y = X[:, 0].copy()
    kw = dict(data={"X": X, "y": y}, batch_size=8, num_samples=10, chunk_size=5, progress_bar=False)
    path = str(tmp_path / "c")
    first = hb.sample(_regression(1.0), hb.samplers.sgld(1e-3), checkpoint=path, **kw)
    meta_path = tmp_path / "c" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["settings"]["jax"] = "0.0.1"
    meta["settings"]["model"] = "another-printing-of-the-same-model"
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="written with JAX 0.0.1"):
        again = hb.sample(_regression(1.0), hb.samplers.sgld(1e-3), resume=path, **kw)
    np.testing.assert_array_equal(again.samples["w"], first.samples["w"])


# ----------------------------------------------------------------------------------------
# Class 5: chunks sized by time, warmup chunked by its own length, a prompt Ctrl-C
# ----------------------------------------------------------------------------------------
def _quadratic():
    return hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p ** 2), lambda p, b: 0.0 * jnp.sum(b),
                                     np.zeros((4, 1), np.float32), params=jnp.zeros(3))


def test_a_long_warmup_is_not_cut_into_one_step_chunks(tmp_path):
    """num_warmup=100000, num_samples=1 used to run 100,000 one-step chunks (and a checkpointed
    warmup committed at every step)."""
    path = str(tmp_path / "c")
    r = hb.sample(_quadratic(), hb.samplers.sgld(1e-2), num_warmup=100_000, num_samples=1, progress_bar=False,
                  checkpoint=path)
    meta = hb.checkpoint.Checkpoint.read_meta(path)
    # A timed first chunk, then chunks of about CHUNK_SECONDS: a handful of commits, not 100,001.
    assert meta["segments_done"] <= 6, meta["segments_done"]
    assert r.samples["theta"].shape == (1, 1, 3)


def test_chunks_are_sized_by_time_and_the_plan_survives_a_resume(tmp_path, monkeypatch):
    from heatbath.drivers import plan

    monkeypatch.setattr(plan, "CHUNK_SECONDS", 0.05)  # tiny chunks: many commits in a short test
    kw = dict(num_samples=60_000, num_chains=2, seed=4, progress_bar=False)
    straight = hb.sample(_quadratic(), hb.samplers.sgld(1e-2), **kw)
    path = str(tmp_path / "c")
    real_commit = hb.checkpoint.Checkpoint.commit

    def crash(self, segments_done, *args, **kwargs):
        meta = real_commit(self, segments_done, *args, **kwargs)
        if segments_done == 3:
            raise RuntimeError("simulated crash after the 3rd commit")
        return meta

    monkeypatch.setattr(hb.checkpoint.Checkpoint, "commit", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        hb.sample(_quadratic(), hb.samplers.sgld(1e-2), checkpoint=path, **kw)
    monkeypatch.setattr(hb.checkpoint.Checkpoint, "commit", real_commit)
    settings = hb.checkpoint.Checkpoint.read_meta(path)["settings"]
    assert settings["first_segment"] is not None and settings["chunk_size"] < 60_000
    monkeypatch.setattr(plan, "CHUNK_SECONDS", 30.0)  # another timing: the recorded plan is kept
    resumed = hb.sample(_quadratic(), hb.samplers.sgld(1e-2), resume=path, **kw)
    np.testing.assert_array_equal(resumed.samples["theta"], straight.samples["theta"])
    assert hb.checkpoint.Checkpoint.read_meta(path)["segments_done"] > 3


CTRL_C = """
import sys, time, json, warnings
import numpy as np, jax.numpy as jnp
import heatbath as hb
t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p ** 2), lambda p, b: 0.0 * jnp.sum(b),
                              np.zeros((4, 1), np.float32), params=jnp.zeros(3))
from heatbath.drivers import plan
plan.CHUNK_SECONDS = 1.0
ckpt = sys.argv[1] or None
print("start", flush=True)
t0 = time.perf_counter()
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    r = hb.sample(t, hb.samplers.sgld(1e-2), num_samples=200_000_000, num_warmup=0, num_chains=2, seed=3,
                  progress_bar=False, checkpoint=ckpt)
np.save(sys.argv[2] if len(sys.argv) > 2 else "/dev/null", r.samples["theta"])
print(json.dumps({"draws": int(r.samples["theta"].shape[1]), "seconds": time.perf_counter() - t0,
                  "warning": [str(x.message) for x in w if "interrupted" in str(x.message)]}), flush=True)
"""


def _interrupted_run(tmp_path, ckpt):
    import json
    import signal
    import subprocess
    import sys
    import time

    out_file = str(tmp_path / "draws.npy")
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C, ckpt or "", out_file], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "start"
    time.sleep(8.0)  # compiled and running
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    waited = time.perf_counter() - sent
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1]), np.load(out_file), waited


def test_ctrl_c_stops_within_about_a_chunk_and_returns_the_draws(tmp_path):
    info, draws, waited = _interrupted_run(tmp_path, None)
    assert waited < 10.0, waited  # 1-second chunks (a loaded 2-core machine: generous bound)
    assert info["draws"] > 1000 and info["warning"], info
    # The draws are the run's first draws: equal to a run asked for exactly that many.
    same = hb.sample(_quadratic(), hb.samplers.sgld(1e-2), num_samples=info["draws"], num_chains=2, seed=3,
                     progress_bar=False, num_warmup=0)
    np.testing.assert_array_equal(draws, same.samples["theta"])


@pytest.mark.slow
def test_ctrl_c_in_the_default_warmup_says_that_no_draws_were_made(monkeypatch):
    """A given step size now has a warmup by default: Ctrl-C there ends the call with a clear
    KeyboardInterrupt (it crashed on assembling zero draws' statistics)."""
    from heatbath.drivers import plan

    class Requested(plan.Interrupt):  # as if Ctrl-C came during the first chunk
        def __enter__(self):
            self.requested = True
            return self

    monkeypatch.setattr(plan, "Interrupt", Requested)
    with pytest.raises(KeyboardInterrupt, match="during the warmup, after 500 of 500 steps"):
        hb.sample(_quadratic(), hb.samplers.sgld(1e-2), num_samples=2000, num_chains=2, seed=3, progress_bar=False)


def test_ctrl_c_with_a_checkpoint_commits_and_the_run_resumes(tmp_path):
    path = str(tmp_path / "c")
    info, draws, _ = _interrupted_run(tmp_path, path)
    meta = hb.checkpoint.Checkpoint.read_meta(path)
    assert "committed to the checkpoint" in info["warning"][0]
    assert sum(d["segment"] >= 0 for d in meta["draws"]) >= 1


# ----------------------------------------------------------------------------------------
# Class 8, second half: the NumPyro kernel under MCMC(jit_model_args=True)
# ----------------------------------------------------------------------------------------
def test_the_numpyro_kernel_never_reuses_a_compiled_step_across_non_data_arguments():
    import jax
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC

    def model(X, y, prior_scale):
        w = numpyro.sample("w", dist.Normal(0.0, prior_scale).expand([X.shape[1]]).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2)).astype(np.float32)
    y = (X @ np.array([3.0, -3.0]) + rng.normal(size=50)).astype(np.float32)

    def run(mcmc, scale, Xy=(X, y)):
        mcmc.run(jax.random.key(0), *Xy, scale)
        return np.asarray(mcmc.get_samples()["w"])

    # jit_model_args=False: a new prior scale gives a new (right) chain.
    plain = MCMC(hb.numpyro.SGLD(model, step_size=1e-3, batch_size=10), num_warmup=0, num_samples=200,
                 progress_bar=False)
    a, b = run(plain, 1.0), run(plain, 0.05)
    assert not np.allclose(a, b) and np.abs(b).mean() < np.abs(a).mean()
    # jit_model_args=True: NumPyro reuses the compiled step, which bakes the prior scale in: refused.
    jitted = MCMC(hb.numpyro.SGLD(model, step_size=1e-3, batch_size=10), num_warmup=0, num_samples=200,
                  progress_bar=False, jit_model_args=True)
    first = run(jitted, 1.0)
    np.testing.assert_allclose(first, a, rtol=1e-5, atol=1e-6)
    # New data with the same non-data arguments is fine (the data are traced arguments).
    X2 = X[::-1].copy()
    run(jitted, 1.0, (X2, y[::-1].copy()))
    with pytest.raises(ValueError, match="jit_model_args=True"):
        run(jitted, 0.05)


# ----------------------------------------------------------------------------------------
# Class 9: clear errors for devices and the CLI's figure path
# ----------------------------------------------------------------------------------------
def test_bad_devices_are_clear_errors_before_compiling():
    import jax

    t = _quadratic()
    kw = dict(num_samples=2, num_chains=2, progress_bar=False, shard="chains")
    with pytest.raises(TypeError, match=r"jax.devices\('cpu'\)"):
        hb.sample(t, hb.samplers.sgld(1e-2), devices="cpu", **kw)
    with pytest.raises(ValueError, match="more than once"):
        hb.sample(t, hb.samplers.sgld(1e-2), devices=[jax.devices()[0]] * 2, **kw)
    with pytest.raises(TypeError, match="JAX devices"):
        hb.sample(t, hb.samplers.sgld(1e-2), devices=[0, 1], **kw)


def test_the_cli_refuses_an_unwritable_figure_path_before_the_run(tmp_path, capsys):
    from heatbath import cli

    t0 = __import__("time").perf_counter()
    code = cli.main(["sample", "sblri", "--step-size", "1e-6", "--steps", "2000", "--quiet", "--figure", str(tmp_path / "no" / "f.png")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert __import__("time").perf_counter() - t0 < 5  # before the run
    code = cli.main(["sample", "sblri", "--step-size", "1e-6", "--steps", "10", "--quiet", "--figure", str(tmp_path / "f.xyz")])
    assert code == 2 and "unknown image format" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# Adversarial: SIGKILL at random moments (before the first commit, between commits, during a
# write), then the same command line finishes the run with the uninterrupted draws
# ----------------------------------------------------------------------------------------
KILLED = """
import sys
import numpy as np, jax.numpy as jnp
import heatbath as hb
from heatbath.drivers import plan
plan.CHUNK_SECONDS = 0.3   # many short chunks: many commits to be killed between or during
t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p ** 2), lambda p, b: 0.0 * jnp.sum(b),
                              np.zeros((4, 1), np.float32), params=jnp.zeros(3))
r = hb.sample(t, hb.samplers.sgld(1e-2), num_samples=400_000, num_chains=2, seed=7, progress_bar=False,
              checkpoint=sys.argv[1], resume="auto")
np.save(sys.argv[2], r.samples["theta"][:, ::1000])
print("finished", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_moments_then_the_same_command_finishes_the_run(tmp_path, seed):
    import os
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(seed)
    path, out = str(tmp_path / "ckpt"), str(tmp_path / "draws.npy")
    sentinel = tmp_path / "outside.txt"
    sentinel.write_text("not heatbath's")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", KILLED, path, out], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        if attempt < 3:
            # Before compilation ends (no commit yet) on the first try of some seeds, later mid-run.
            time.sleep(float(rng.uniform(0.5, 9.0)))
            if proc.poll() is None:
                proc.kill()
                kills += 1
            proc.communicate(timeout=60)
            continue
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        assert "finished" in stdout
        break
    assert kills >= 1
    assert sentinel.read_text() == "not heatbath's"
    # The uninterrupted run, in this process.
    from heatbath.drivers import plan

    t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p ** 2), lambda p, b: 0.0 * jnp.sum(b),
                                  np.zeros((4, 1), np.float32), params=jnp.zeros(3))
    straight = hb.sample(t, hb.samplers.sgld(1e-2), num_samples=400_000, num_chains=2, seed=7, progress_bar=False)
    np.testing.assert_array_equal(np.load(out), straight.samples["theta"][:, ::1000])
    del plan
