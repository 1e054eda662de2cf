"""Diverged chains never silently enter a summary (issue 18).

``Result.summary``, ``to_arviz``, ``get_samples`` and the CLI table leave out the chains with a
divergence (under ``on_divergence="stop"``/``"flag"``; restarted chains keep valid draws), with
a RuntimeWarning naming them; when every chain diverged they refuse unless
``include_diverged=True``. heatbath's NumPyro kernels report divergences to ``MCMC``.
"""

import io
import re
import warnings
from contextlib import redirect_stdout

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC

import heatbath as hb
from heatbath.drivers.results import Result


def _result(diverging, mode=None, nan_chains=(), draws=200, seed=0):
    """A Result of 4 chains of N(c, 1) draws (chain c centred at c), without running anything."""
    rng = np.random.default_rng(seed)
    chains = len(diverging)
    x = rng.normal(size=(chains, draws, 2)) + np.arange(chains)[:, None, None]
    div = np.zeros((chains, draws), bool)
    for c, first in enumerate(diverging):
        if first is not None:
            div[c, first:] = True
            x[c, first:] = np.nan if c in nan_chains else x[c, first - 1]
    stats = {"diverging": div, "lp": rng.normal(size=(chains, draws))}
    return Result(samples={"x": x}, stats=stats, final_state=None, grad_evals=1.0, num_data=1, wall_time=0.0,
                  compile_time=0.0, sampler_name="sgld", on_divergence=mode)


@pytest.mark.parametrize("mode", [None, "stop", "flag"])
def test_diverged_chains_are_left_out_with_a_warning(mode):
    r = _result([None, 50, None, 10], mode=mode, nan_chains=(3,) if mode == "flag" else ())
    assert r.excluded_chains() == [1, 3]
    with pytest.warns(RuntimeWarning, match=r"chains \[1, 3\] \(2 of 4\) diverged.*left out of the ArviZ export"):
        idata = r.to_arviz()
    assert idata.posterior["x"].shape == (2, 200, 2)
    np.testing.assert_array_equal(idata.posterior["x"].values, r.samples["x"][[0, 2]])
    assert idata.sample_stats["diverging"].shape == (2, 200)
    with pytest.warns(RuntimeWarning, match=r"chains \[1, 3\] \(2 of 4\).*left out of the samples"):
        flat = r.get_samples()
    np.testing.assert_array_equal(flat["x"], r.samples["x"][[0, 2]].reshape(400, 2))
    with pytest.warns(RuntimeWarning, match=r"chains \[1, 3\]") as rec:
        s = r.summary(kind="stats", round_to="none")
    # The summary's mean is that of chains 0 and 2 only (centred at 0 and 2).
    np.testing.assert_allclose(s["mean"].values, r.samples["x"][[0, 2]].mean(axis=(0, 1)))
    assert rec[0].filename == __file__  # the warning points at the caller's line
    # Kept on request, with a warning that says so.
    with pytest.warns(RuntimeWarning, match="include_diverged=True"):
        assert r.to_arviz(include_diverged=True).posterior["x"].shape == (4, 200, 2)
    with pytest.warns(RuntimeWarning, match="include_diverged=True"):
        assert r.get_samples(group_by_chain=True, include_diverged=True)["x"].shape == (4, 200, 2)


def test_all_chains_diverged_is_refused_unless_asked():
    r = _result([5, 60], mode="stop")
    for call in (r.summary, r.to_arviz, r.get_samples):
        with pytest.raises(ValueError, match="all 2 chains diverged.*include_diverged=True"):
            call()
    with pytest.warns(RuntimeWarning, match=r"chains \[0, 1\] \(2 of 2\) diverged.*include_diverged=True"):
        s = r.summary(include_diverged=True, kind="stats")
    assert len(s) == 2


def test_restarted_chains_keep_their_valid_draws():
    # Under on_divergence="restart" a diverging step was rejected and the chain went on: its draws
    # are valid, so it stays (with a warning that says so); a chain with non-finite draws does not.
    r = _result([None, 50], mode="restart")
    r.samples["x"][1, 50:] += np.random.default_rng(1).normal(size=(150, 2))  # it moved on
    assert r.diverged_chains() == [1] and r.excluded_chains() == []
    with pytest.warns(RuntimeWarning, match=r"chains \[1\] had diverging steps that were rejected and restarted"):
        assert r.to_arviz().posterior["x"].shape == (2, 200, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _result([None, None], mode="restart").summary(kind="stats").shape[0] == 2  # no warning
    bad = _result([None, 50], mode="restart", nan_chains=(1,))
    assert bad.excluded_chains() == [1]


def test_a_real_run_leaves_its_diverged_chain_out():
    # U = theta^4/4 with h = 0.01 is unstable beyond |theta| ~ 14: the chain started at 40 diverges.
    t = hb.models.from_logdensity(lambda p: -0.25 * jnp.sum(p**4), lambda p, b: 0.0 * jnp.sum(b),
                                  jnp.zeros((4,)), params=jnp.zeros(1))
    init = jnp.array([[0.5], [40.0]])
    with pytest.warns(RuntimeWarning, match=r"chains \[1\]"):
        r = hb.sample(t, hb.samplers.sgld(0.01), num_samples=300, num_chains=2, init=init, progress_bar=False)
    assert r.excluded_chains() == [1]
    with pytest.warns(RuntimeWarning, match=r"chains \[1\] \(1 of 2\) diverged"):
        s = r.summary(kind="stats", round_to="none")
    np.testing.assert_allclose(s.loc["theta[0]", "mean"], r.samples["theta"][0].mean(), rtol=1e-6)


def test_moments_runs_have_no_draws_to_export():
    r = _result([None, None])
    r.samples, r.moments = {}, {"count": 10, "mean": {"x": np.zeros((2, 2))}, "var": {"x": np.ones((2, 2))}}
    for call in (r.get_samples, r.to_arviz, r.summary):
        with pytest.raises(ValueError, match="keep='moments'"):
            call()


def _moments_result(draws, diverging, mode="stop", rank=3):
    """A keep="moments" Result whose moments are those of ``draws`` (chain, draw, ...)."""
    n = draws.shape[1]
    mom = {"count": n, "mean": {"x": draws.mean(1)}, "var": {"x": draws.var(1, ddof=1)},
           "deviations": {"x": draws[:, -rank:] - draws.mean(1)[:, None]}}
    return Result(samples={}, stats={"diverging": diverging}, final_state=None, grad_evals=1.0, num_data=1,
                  wall_time=0.0, compile_time=0.0, sampler_name="sgld", moments=mom, on_divergence=mode)


def test_moments_of_diverged_chains_are_left_out():
    rng = np.random.default_rng(3)
    draws = rng.normal(size=(4, 500, 2)) * [1.0, 2.0] + np.arange(4)[:, None, None]
    draws[2] = 1e30  # chain 2 ran away (frozen at a huge finite state)
    div = np.zeros((4, 500), bool)
    div[2, 0:] = True
    r = _moments_result(draws, div)
    with pytest.warns(RuntimeWarning, match=r"chains \[2\] \(1 of 4\) diverged.*left out of the moments") as rec:
        pooled = r.get_moments()
    assert rec[0].filename == __file__
    kept = draws[[0, 1, 3]].reshape(-1, 2)
    # pooled over the kept chains = the moments of all their draws together
    np.testing.assert_allclose(pooled["mean"]["x"], kept.mean(0), rtol=1e-12)
    np.testing.assert_allclose(pooled["var"]["x"], kept.var(0, ddof=1), rtol=1e-12)
    assert pooled["count"] == 1500 and "deviations" not in pooled
    with pytest.warns(RuntimeWarning):
        by_chain = r.get_moments(group_by_chain=True)
    np.testing.assert_array_equal(by_chain["deviations"]["x"], r.moments["deviations"]["x"][[0, 1, 3]])
    # SWAG leaves the chain out too (its mixture would otherwise put a third of its draws at 1e30)
    with pytest.warns(RuntimeWarning, match=r"chains \[2\].*left out of the moments") as rec:
        q = hb.vi.swag(r)
    assert rec[0].filename == __file__ and q.num_chains == 3
    assert np.abs(q.sample(0, 1000)["x"]).max() < 50
    with pytest.warns(RuntimeWarning, match="include_diverged=True"):
        assert hb.vi.swag(r, include_diverged=True).num_chains == 4
    # every chain diverged: refused; a kept chain with non-finite moments: a ValueError naming it
    with pytest.raises(ValueError, match="all 4 chains diverged"):
        _moments_result(draws, np.ones((4, 500), bool)).get_moments()
    nan = draws.copy()
    nan[1, 10] = np.nan
    with pytest.raises(ValueError, match=r"mean of 'x' is not finite in chain\(s\) \[1\]"):
        hb.vi.swag(_moments_result(nan, np.zeros((4, 500), bool)))
    # the chain is named by its index in the run, also when an earlier chain was left out
    nan2 = draws.copy()
    nan2[3, 10] = np.nan
    with pytest.warns(RuntimeWarning, match=r"chains \[2\]"):
        with pytest.raises(ValueError, match=r"not finite in chain\(s\) \[3\]"):
            hb.vi.swag(_moments_result(nan2, div))
    # a restarted chain is kept when its moments are finite, left out when they are not
    assert _moments_result(draws[[0, 1]], div[[2, 0]], mode="restart").excluded_chains() == []
    assert _moments_result(nan[[1, 0]], div[[2, 0]], mode="restart").excluded_chains() == [0]
    with pytest.raises(ValueError, match="keep='moments'"):
        _result([None, None]).get_moments()


# -- the CLI table ------------------------------------------------------------------------------


def test_cli_row_leaves_diverged_chains_out():
    from heatbath.cli import _excluded_note, _print_table, _row

    ref = hb.models.reference("german_credit")
    rng = np.random.default_rng(0)
    mean, sd = ref.reference["weights"]["mean"], ref.reference["weights"]["sd"]
    w = mean + sd * rng.normal(size=(3, 2000, 25))
    div = np.zeros((3, 2000), bool)
    w[2, 100:], div[2, 100:] = 1e3, True  # chain 2 diverged (frozen far away)
    r = Result(samples={"weights": w}, stats={"diverging": div}, final_state=None, grad_evals=2e6, num_data=1000,
               wall_time=1.0, compile_time=0.1, sampler_name="sgld", on_divergence="stop")
    row = _row("sgld (h=1e-4)", r, ref)
    assert row["max |mean-ref|/sd"] < 0.2  # chain 2 (|z| ~ 1e3) is not in it
    assert row["diverged chains"] == "1 of 3 (left out)"
    assert row["min ESS"] > 1000 and row["max R-hat"] < 1.01
    r.stats["diverging"][:, 5] = True  # now every chain diverged
    row = _row("sgld (h=1e-4)", r, ref)
    assert row["diverged chains"] == "3 of 3 (all)" and row["max |mean-ref|/sd"] == "-"
    out = io.StringIO()
    _print_table([row], file=out)
    _excluded_note([row], file=out)
    assert "| 3 of 3 (all)" in out.getvalue() and "left out of its accuracy" in out.getvalue()


def test_cli_sample_with_all_chains_diverged_prints_a_row_of_dashes(capsys):
    from heatbath.cli import main

    with pytest.warns(RuntimeWarning, match="diverged"):
        assert main(["sample", "german_credit", "--step-size", "10", "--batch-size", "100", "--steps", "50",
                     "--chains", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| sgld \(h=10\).*\| -\s+\|.*\| 2 of 2 \(all\)", out), out


# -- the NumPyro kernels ------------------------------------------------------------------------


def _linear():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 3)).astype(np.float32)
    y = (X @ np.ones(3) + rng.normal(size=100)).astype(np.float32)

    def model(X, y=None):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([3]).to_event(1))
        with numpyro.plate("data", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)

    return model, X, y


@pytest.mark.parametrize("num_chains, chain_method", [(2, "vectorized"), (1, "sequential")])
def test_numpyro_kernel_reports_divergences(num_chains, chain_method):
    # One chain runs the kernel's transition unbatched, two vectorized chains run it under vmap.
    model, X, y = _linear()
    mcmc = MCMC(hb.numpyro.SGLD(model, 10.0), num_warmup=0, num_samples=40, num_chains=num_chains,
                progress_bar=False, chain_method=chain_method)
    with pytest.warns(RuntimeWarning, match="a chain of the heatbath sgld kernel diverged at step"):
        mcmc.run(jax.random.key(0), X, y)
        w = np.asarray(mcmc.get_samples(group_by_chain=True)["w"])
        jax.effects_barrier()
    div = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"])
    assert div.any(axis=1).all()
    for c in range(num_chains):
        # From the first divergence (a log density that overflowed to -inf) every draw is flagged,
        # and the chain ends non-finite; the draws before it are finite.
        first = int(np.argmax(div[c]))
        assert div[c, first:].all() and np.isfinite(w[c, :first]).all()
        assert not np.isfinite(w[c, -10:]).any()
    buf = io.StringIO()
    with redirect_stdout(buf):
        mcmc.print_summary()
    assert f"Number of divergences: {int(div.sum())}" in buf.getvalue()
    if num_chains == 1:
        return
    # A stable step size: no warning, no divergence.
    mcmc = MCMC(hb.numpyro.SGLD(model, 1e-3), num_warmup=0, num_samples=40, num_chains=2, progress_bar=False,
                chain_method=chain_method)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        mcmc.run(jax.random.key(0), X, y)
        mcmc.get_samples()
        jax.effects_barrier()
    assert not np.asarray(mcmc.get_extra_fields()["diverging"]).any()
