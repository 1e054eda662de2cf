"""hb.sample's default warmup: also for a given step size at a constant T > 0 (the chains'
way from their start is not a posterior draw), none at T = 0 or on a schedule; a resume takes
the checkpoint's warmup; an automatic run's checkpoint records what the tuning chose."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb
from heatbath.kernels import schedules

KW = dict(num_samples=400, num_chains=2, seed=3, progress_bar=False, checks="off")


def _target():
    return hb.models.from_logdensity(lambda p: -0.5 * jnp.sum((p - 3.0) ** 2), lambda p, b: 0.0 * jnp.sum(b),
                                     np.zeros((4, 1), np.float32), params=jnp.zeros(2))


def test_a_given_step_size_gets_a_quarter_of_the_steps_at_least_200_as_warmup():
    t = _target()
    default = hb.sample(t, hb.samplers.sgld(1e-2), **KW).samples["theta"]
    np.testing.assert_array_equal(default, hb.sample(t, hb.samplers.sgld(1e-2), num_warmup=200, **KW).samples["theta"])
    long = dict(KW, num_samples=1200)
    np.testing.assert_array_equal(hb.sample(t, hb.samplers.sgld(1e-2), **long).samples["theta"],
                                  hb.sample(t, hb.samplers.sgld(1e-2), num_warmup=300, **long).samples["theta"])
    # Started at 0 with the mode at 3 (relaxation time 1 / h = 100 steps): without a warmup the
    # first draws are still on their way; after the warmup they are in the typical set.
    cold = hb.sample(t, hb.samplers.sgld(1e-2), num_warmup=0, init=jnp.zeros(2), **KW).samples["theta"]
    warm = hb.sample(t, hb.samplers.sgld(1e-2), init=jnp.zeros(2), **KW).samples["theta"]
    assert cold[:, :20].mean() < 1.5 and abs(warm[:, :20].mean() - 3.0) < 1.0


def test_no_default_warmup_at_zero_temperature_or_on_a_step_size_schedule():
    t = _target()
    for s in (hb.samplers.sgld(1e-2, temperature=0.0), hb.samplers.sgld(schedules.cyclical(1e-2, 400, 2))):
        np.testing.assert_array_equal(hb.sample(t, s, **KW).samples["theta"],
                                      hb.sample(t, s, num_warmup=0, **KW).samples["theta"])


def test_a_resume_takes_the_checkpoints_warmup(tmp_path):
    t, path = _target(), str(tmp_path / "ck")
    kw = dict(KW, chunk_size=100)
    full = hb.sample(t, hb.samplers.sgld(1e-2), num_warmup=0, checkpoint=path, **kw)
    # The same call without num_warmup (whose default is now 200) resumes it instead of refusing.
    again = hb.sample(t, hb.samplers.sgld(1e-2), checkpoint=path, resume=True, **kw)
    np.testing.assert_array_equal(full.samples["theta"], again.samples["theta"])
    with pytest.raises(ValueError, match="num_warmup"):
        hb.sample(t, hb.samplers.sgld(1e-2), num_warmup=10, checkpoint=path, resume=True, **kw)


def test_an_automatic_runs_checkpoint_records_the_tuned_settings_and_a_resume_checks_them(tmp_path):
    t, path = _target(), str(tmp_path / "ck")
    kw = dict(KW, chunk_size=100)
    full = hb.sample(t, hb.samplers.sgld(), checkpoint=path, **kw)
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    tuned = meta["settings"]["tuned"]
    assert float(tuned["step_size"]) == full.tuning["step_size"]
    again = hb.sample(t, hb.samplers.sgld(), checkpoint=path, resume=True, **kw)  # tuned again: the same
    np.testing.assert_array_equal(full.samples["theta"], again.samples["theta"])
    # A checkpoint whose tuning differs from what this code chooses (another version) is refused.
    meta["settings"]["tuned"]["step_size"] = repr(float(tuned["step_size"]) * 1.5)
    with open(os.path.join(path, "meta.json"), "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="tuned"):
        hb.sample(t, hb.samplers.sgld(), checkpoint=path, resume=True, **kw)


@pytest.mark.parametrize("thinning, chains, div", [(1, 2, "stop"), (3, 1, "flag")])
def test_a_short_runs_warmup_in_its_sampling_chunk_gives_the_same_chains_with_one_compile(thinning, chains, div):
    """The warmup run by the sampling chunk's compiled code (draws dropped) equals the dedicated
    warmup chunk bit for bit, and the call compiles one chunk instead of two."""
    import jax

    from heatbath.drivers import loop

    t = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum((p - 3.0) ** 2), lambda p, b: -0.5 * jnp.sum((b - p) ** 2),
                                  np.ones((50, 2), np.float32), params=jnp.zeros(2))
    kw = dict(batch_size=10, num_samples=300, thinning=thinning, num_chains=chains, seed=5, progress_bar=False,
              checks="off", on_divergence=div)
    compiles = []

    def run(flag, step):
        before = loop.WARMUP_IN_DRAWS
        loop.WARMUP_IN_DRAWS = flag
        try:
            with jax.log_compiles(True):
                import logging

                class H(logging.Handler):
                    def emit(self, record):
                        if "Finished XLA compilation of jit(chunk)" in record.getMessage():
                            compiles.append(flag)

                h = H()
                logging.getLogger("jax").addHandler(h)
                try:
                    return hb.sample(t, hb.samplers.sgld(step), **kw)
                finally:
                    logging.getLogger("jax").removeHandler(h)
        finally:
            loop.WARMUP_IN_DRAWS = before

    # Distinct step sizes per parametrisation: nothing compiled before is reused.
    step = 1e-2 + 1e-4 * thinning
    a, b = run(True, step), run(False, step)
    assert a.samples["theta"].shape[:2] == (chains, 300)
    np.testing.assert_array_equal(a.samples["theta"], b.samples["theta"])
    np.testing.assert_array_equal(a.stats["lp"], b.stats["lp"])
    assert compiles.count(True) == 1 and compiles.count(False) == 1  # the second run compiled only the warmup
