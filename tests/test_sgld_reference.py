"""SGLD family on the gold-standard reference posteriors (issue 2's accuracy bars).

The bars are the issue's: German credit (25 weights, batch 100, at most 100k steps),
SGLD-CV max |mean - ref| / ref_sd <= 0.15 with sd ratios in [0.9, 1.1]; plain SGLD <= 0.25
and [0.9, 1.2]. With 4 chains the Monte Carlo error of a mean is sd / sqrt(ESS); the runs
below have min ESS >= ~150 (SGLD) and ~600 (CV) even in the short default-suite version,
so the MC part of |z| stays below ~0.08 and ~0.04: the bars test the bias, not luck.
"""

import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import heatbath as hb


@pytest.fixture(scope="module")
def german():
    return hb.models.reference("german_credit")


def run(ref, sampler, steps, seed=0, batching="uniform"):
    return hb.sample(ref.model, sampler, data=ref.data, batch_size=100, num_samples=steps, num_warmup=steps // 10,
                     num_chains=4, seed=seed, progress_bar=False, batching=batching)


@pytest.mark.parametrize(
    "name, sampler, z_max, lo, hi",
    [
        ("sgld", hb.samplers.sgld(1e-4), 0.25, 0.9, 1.2),
        ("sgld-cv", hb.samplers.sgld(4e-4, gradient="cv"), 0.15, 0.9, 1.1),
        # reshuffling: also the slow 100k-step tests below
        pytest.param("sgld-reshuffle", hb.samplers.sgld(1e-4), 0.25, 0.9, 1.2, marks=pytest.mark.slow),
    ],
)
def test_german_credit_bars_short(german, name, sampler, z_max, lo, hi):
    res = run(german, sampler, 30_000, batching="reshuffle" if name.endswith("reshuffle") else "uniform")
    cmp = german.compare(res.samples)
    assert cmp["max_abs_z"] <= z_max, cmp
    assert lo <= cmp["sd_ratio_min"] and cmp["sd_ratio_max"] <= hi, cmp


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, sampler, z_max, lo, hi",
    [
        ("sgld", hb.samplers.sgld(1e-4), 0.25, 0.9, 1.2),
        ("sgld-cv", hb.samplers.sgld(4e-4, gradient="cv"), 0.15, 0.9, 1.1),
        ("psgld", hb.samplers.psgld(5e-3), 0.25, 0.9, 1.2),
        ("sgld-svrg", hb.samplers.sgld(4e-4, gradient=hb.kernels.gradients.svrg(1000)), 0.15, 0.9, 1.1),
        # reshuffling: also the slow 100k-step tests below
        pytest.param("sgld-reshuffle", hb.samplers.sgld(1e-4), 0.25, 0.9, 1.2, marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_german_credit_bars_100k(german, name, sampler, z_max, lo, hi, seed):
    res = run(german, sampler, 100_000, seed, batching="reshuffle" if name.endswith("reshuffle") else "uniform")
    cmp = german.compare(res.samples)
    print(name, seed, cmp["max_abs_z"], cmp["sd_ratio_min"], cmp["sd_ratio_max"], res.data_passes)
    assert cmp["max_abs_z"] <= z_max, cmp
    assert lo <= cmp["sd_ratio_min"] and cmp["sd_ratio_max"] <= hi, cmp


def test_german_credit_by_hand_gives_the_same_draws(german):
    X, y = german.data["X"], german.data["y"]

    def logprior(p):
        return jnp.sum(dist.Normal(0, 1).log_prob(p["weights"]))

    def loglik(p, batch):
        return jnp.sum(dist.Bernoulli(logits=batch["X"] @ p["weights"]).log_prob(batch["y"]))

    by_hand = hb.models.from_logdensity(logprior, loglik, {"X": X, "y": y}, params={"weights": jnp.zeros(25)})
    s = hb.samplers.sgld(1e-4)
    a = hb.sample(german.model, s, data=german.data, batch_size=100, num_samples=500, num_chains=2, seed=5,
                  progress_bar=False)
    b = hb.sample(by_hand, s, batch_size=100, num_samples=500, num_chains=2, seed=5, progress_bar=False)
    np.testing.assert_allclose(a.samples["weights"], b.samples["weights"], rtol=1e-4, atol=1e-5)


def test_eight_schools_noncentered_through_the_bridge():
    ref = hb.models.reference("eight_schools_noncentered")
    res = hb.sample(ref.model, hb.samplers.sgld(0.03), data=ref.data, num_samples=100_000, num_warmup=5_000,
                    num_chains=4, seed=0, progress_bar=False)
    assert res.samples["theta"].shape == (4, 100_000, 8)  # the deterministic site comes back
    cmp = ref.compare(res.samples, params=["mu", "tau"])
    # Means within 0.2 reference sd (issue 2); min ESS here is ~600 (mu), so MC error ~0.04 sd.
    for p in ("mu", "tau"):
        assert float(np.max(cmp["per_param"][p]["z"])) <= 0.2, cmp["per_param"][p]
