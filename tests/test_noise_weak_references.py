"""Issue 15: the cheaper noise keeps the answers on real posteriors. German credit at the
foundation's settings and bars (tests/test_sgld_reference.py: SGLD h = 1e-4, batch 100, 30,000
steps, max |z| <= 0.25, sd ratios in [0.9, 1.2]) and arK with the default settings and the
defaults table's bars (max |z| <= 0.2, sd ratios in [0.8, 1.25]), each with Rademacher and
8-bit uniform noise as well as the default Gaussian."""

import numpy as np
import pytest

import heatbath as hb
from heatbath.kernels import noise_weak

NOISES = {"gaussian": None, "rademacher": noise_weak.rademacher(), "uniform8": noise_weak.uniform()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NOISES))
def test_german_credit_bars_with_each_noise(name):
    ref = hb.models.reference("german_credit")
    res = hb.sample(ref.model, hb.samplers.sgld(1e-4, noise=NOISES[name]), data=ref.data, batch_size=100,
                    num_samples=30_000, num_warmup=3_000, num_chains=4, seed=0, progress_bar=False)
    cmp = ref.compare(res.samples)
    assert cmp["max_abs_z"] <= 0.25, (name, cmp)
    assert 0.9 <= cmp["sd_ratio_min"] and cmp["sd_ratio_max"] <= 1.2, (name, cmp)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rademacher", "uniform8"])
def test_arK_defaults_with_weak_noise(name):
    ref = hb.models.reference("arK")
    assert not getattr(ref, "requires_x64", False)
    res = hb.sample(ref.model, hb.samplers.sgld(noise=NOISES[name]), data=ref.data, num_samples=10_000,
                    num_chains=4, seed=0, progress_bar=False)
    cmp = ref.compare(res.samples)
    assert cmp["max_abs_z"] <= 0.2, (name, cmp)
    assert 0.8 <= cmp["sd_ratio_min"] and cmp["sd_ratio_max"] <= 1.25, (name, cmp)
    assert np.isfinite(res.tuning["step_size"])
