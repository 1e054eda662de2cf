"""keep="moments": the host's float64 merge of the chunks' moments equals the moments of the kept draws.

The first chunk's moments are taken as they are and the last chunk's device accumulator is not
reset (``moments.merge_moments``); one chunk, several chunks and a checkpointed run must all give
the mean and variance of the draws a ``keep="all"`` run with the same seed records.
"""

import numpy as np
import pytest

import jax.numpy as jnp

import heatbath as hb
from small_targets import logistic
from heatbath.drivers import moments as _moments


def _target():
    return logistic(200, 4, 1)


KW = dict(batch_size=20, init=jnp.full(4, 3.0), seed=5, num_samples=30, num_chains=2, progress_bar=False,
          checks="off")


@pytest.mark.parametrize("chunk_size,warmup", [(None, 0), (7, 0), (10, 0), (None, 9), (7, 13)])
def test_merged_moments_equal_the_draws_moments(chunk_size, warmup, tmp_path):
    """With a warmup too: its states are not draws. (Before 2026-12-04 a warmup chunk folded its
    states into the moments: count num_samples + num_warmup, the mean pulled towards the start.)"""
    t = _target()
    extra = {"num_warmup": warmup} if chunk_size is None else {"chunk_size": chunk_size, "num_warmup": warmup}
    draws = np.asarray(hb.sample(t, hb.samplers.sgld(1e-2), **KW, **extra).samples["theta"], np.float64)
    m = hb.sample(t, hb.samplers.sgld(1e-2), keep="moments", **KW, **extra).moments
    assert int(m["count"]) == 30
    np.testing.assert_allclose(np.asarray(m["mean"]["theta"]), draws.mean(axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(m["var"]["theta"]), draws.var(axis=1, ddof=1), rtol=1e-4, atol=1e-9)
    if chunk_size:  # with a checkpoint every chunk's accumulator is reset and saved: the same moments
        c = hb.sample(t, hb.samplers.sgld(1e-2), keep="moments", checkpoint=str(tmp_path / "c"), **KW, **extra).moments
        for k in ("mean", "var"):
            np.testing.assert_array_equal(np.asarray(c[k]["theta"]), np.asarray(m[k]["theta"]))


def test_the_first_merge_is_the_chunk_itself_and_the_last_leaves_the_device_accumulator():
    acc = {"count": jnp.asarray(3), "mean": {"a": jnp.asarray([1.0, 2.0], jnp.float32)},
           "m2": {"a": jnp.asarray([0.5, 0.25], jnp.float32)}, "ring": ()}
    host = _moments.host_moments(acc)
    h1, kept = _moments.merge_moments(host, acc, reset=False)
    assert kept is acc
    np.testing.assert_array_equal(h1["mean"]["a"], [1.0, 2.0])
    np.testing.assert_array_equal(h1["m2"]["a"], [0.5, 0.25])
    h2, zeroed = _moments.merge_moments(h1, acc)  # a second chunk with the same moments: Chan's merge
    assert int(zeroed["count"]) == 0 and not np.any(np.asarray(zeroed["mean"]["a"]))
    np.testing.assert_allclose(h2["mean"]["a"], [1.0, 2.0])
    np.testing.assert_allclose(h2["m2"]["a"], [1.0, 0.5])
    assert int(h2["count"]) == 6


def _setter():
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # NumPy < 2
        from numpy.core.multiarray import _set_madvise_hugepage
    return _set_madvise_hugepage


def test_the_huge_page_advice_is_off_inside_and_restored_after_nested_blocks():
    """``hostmem.no_huge_pages`` (around ``hb.sample``, and the draws' buffer): off inside, nested
    blocks counted, the setting found restored by the outermost, whichever it was."""
    from heatbath.drivers import hostmem

    setter = _setter()
    before = setter(True)
    try:
        with hostmem.no_huge_pages():
            assert setter(False) is False  # off inside
            with hostmem.no_huge_pages():
                a = _moments.empty_host((3, 5), np.float32)
            assert setter(False) is False  # the inner block did not restore
        assert setter(False) is True  # restored: it was on
        with hostmem.no_huge_pages():
            pass
        assert setter(False) is False  # restored: it was off
    finally:
        setter(before)
    assert a.shape == (3, 5) and a.dtype == np.float32
    c = _moments.Collector(4)
    c.add({"x": np.arange(6.0).reshape(2, 3)})
    c.add({"x": np.arange(6.0, 12.0).reshape(2, 3)})
    np.testing.assert_array_equal(c.result()["x"], np.arange(12.0).reshape(4, 3))


def test_the_huge_page_setting_survives_threads_and_a_sample_call():
    """Threads allocating draw buffers at once, and ``hb.sample``, leave NumPy's huge-page setting
    as it was (their set / restore pairs must not interleave: a helper's review found the flag
    left off). A race: without the lock this failed in 1 of 3 runs here."""
    import threading

    setter = _setter()
    before = setter(True)
    try:
        def work():
            for _ in range(3000):
                _moments.empty_host((1 << 12,), np.float32)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert setter(True) is True
        hb.sample(logistic(200, 3, 0), hb.samplers.sgld(1e-3), batch_size=8, num_samples=20, num_warmup=0,
                  progress_bar=False, checks="off")
        assert setter(True) is True
    finally:
        setter(before)


def test_sample_warnings_still_point_at_the_callers_line():
    """The huge-page context wraps the end-of-run checks, not ``hb.sample`` itself: a wrapper
    would move the frame every ``hb.sample`` warning points at (it did, for one commit)."""
    import warnings

    import jax.numpy as jnp

    target = hb.models.from_logdensity(lambda p: -0.5 * jnp.sum(p**2), lambda p, b: 0.0 * jnp.sum(b),
                                       np.zeros((4, 1), np.float32), params=jnp.zeros(2))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        hb.sample(target, hb.samplers.sgld(2.5), num_samples=50, num_warmup=0, num_chains=2, progress_bar=False,
                  checks="basic")
    ours = [w for w in rec if issubclass(w.category, RuntimeWarning) and str(w.message).startswith("sgld")]
    assert ours and all(w.filename == __file__ for w in ours), [(w.filename, str(w.message)[:60]) for w in rec]
