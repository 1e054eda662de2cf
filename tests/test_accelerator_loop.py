"""The accelerator's chunk loop (blocks of draws with a static trip count) gives the CPU loop's draws.

On a GPU, ``make_chunk`` runs its draws in blocks (``block_for``): a ``while_loop`` with a traced
trip count stalls the device at every iteration there (measured on an H200: 36 us per step
against 10 us for a static ``lax.scan``, benchmarks/RESULTS.md). The CI machine has no GPU, so
these tests force the blocked loop on the CPU and check that every recorded value is the same
bit for bit as the per-draw loop's: the same steps read the same keys by their draw index.
"""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import heatbath as hb
from small_targets import logistic
from heatbath.drivers import loop, step


def _target():
    return logistic(300, 3, 0)


def _run(monkeypatch, block, sampler, **kw):
    monkeypatch.setattr(loop, "block_for", lambda platform: block)
    opts = dict(batch_size=30, init=jnp.zeros(3), seed=3, progress_bar=False, checks="off")
    opts.update(kw)
    return hb.sample(_target(), sampler, **opts)


def test_block_is_zero_on_the_cpu_and_positive_elsewhere():
    assert step.block_for("cpu") == 0
    assert step.block_for("gpu") == step.BLOCK > 1
    assert step.block_for("tpu") == step.BLOCK


@pytest.mark.parametrize("kw", [
    dict(num_samples=70),  # 8 blocks of 8 and 6 single draws
    dict(num_samples=70, num_warmup=13, thinning=2, num_chains=2),
    dict(num_samples=5),  # fewer draws than a block
    dict(num_samples=64, on_divergence="restart", progress_bar=True),  # whole blocks only; the bar ticks per block
])
def test_blocked_loop_records_the_same_draws_and_infos(monkeypatch, kw):
    a = _run(monkeypatch, 0, hb.samplers.sgld(1e-3), **kw)
    b = _run(monkeypatch, 8, hb.samplers.sgld(1e-3), **kw)
    assert a.samples["theta"].shape == b.samples["theta"].shape == (kw.get("num_chains", 1), kw["num_samples"], 3)
    np.testing.assert_array_equal(np.asarray(a.samples["theta"]), np.asarray(b.samples["theta"]))
    for name in a.stats:  # step size, temperature, gradient norm, log density, diverging
        np.testing.assert_array_equal(np.asarray(a.stats[name]), np.asarray(b.stats[name]), err_msg=name)
    # Different compiled chunks (the block is in the cache key), not one reused.
    assert a.compile_time > 0 and b.compile_time > 0


@pytest.mark.parametrize("swag_rank", [0, 3])
def test_blocked_loop_keeps_the_same_moments_with_a_select(monkeypatch, swag_rank):
    kw = dict(num_samples=70, num_chains=2, num_warmup=11, keep="moments", swag_rank=swag_rank)
    a = _run(monkeypatch, 0, hb.samplers.sghmc(0.03, 2.0), **kw)
    b = _run(monkeypatch, 8, hb.samplers.sghmc(0.03, 2.0), **kw)
    for name in ("mean", "var"):
        np.testing.assert_array_equal(np.asarray(a.moments[name]["theta"]), np.asarray(b.moments[name]["theta"]))
    if swag_rank:  # the SWAG deviations (the ring of the last draws, selected at its written slot)
        np.testing.assert_array_equal(a.moments["deviations"]["theta"], b.moments["deviations"]["theta"])
        assert a.moments["deviations"]["theta"].shape == (2, swag_rank, 3)
    assert int(np.asarray(b.moments["count"])) == 70  # the warmup's states are not draws


def test_blocked_loop_progress_bar_never_passes_the_steps_done(monkeypatch):
    """Ticks once per block and not for the leftover draws, whose per-draw count would restart at
    the chunk's start and count the blocks' steps again: the ticks never add up to more than the
    run's steps (180 warmup + 70 draws: 22 + 8 blocks of 8 steps tick, 240 of 250)."""
    ticks = []
    orig = step.tick
    monkeypatch.setattr(step, "tick", lambda n: (ticks.append(int(n)), orig(n))[1])
    _run(monkeypatch, 8, hb.samplers.sgld(1e-3), num_samples=70, num_warmup=180, progress_bar=True)
    jax.effects_barrier()
    assert sum(ticks) == 240, ticks


def test_blocked_chunk_runs_a_traced_count(monkeypatch):
    """One compiled blocked chunk serves a shorter run (a traced count): 20 draws in a chunk of 256."""
    a = _run(monkeypatch, 8, hb.samplers.sgld(1e-3), num_samples=20)
    b = _run(monkeypatch, 8, hb.samplers.sgld(1e-3), num_samples=21)
    np.testing.assert_array_equal(np.asarray(a.samples["theta"]), np.asarray(b.samples["theta"])[:, :20])
