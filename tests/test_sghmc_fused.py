"""SGHMC with fused O/E pieces (``fuse_noise=True``): one noise draw per run of O/E pieces.

OBABO's last O(h/2) and the next step's first O(h/2) compose exactly into one O(h), so the
chain of positions keeps its law and the momentum is recorded after the next lead (OBABO
fused records Lie-Trotter's momentum; OABAO fused records ABAO's). Closed forms are the
discrete Lyapunov values of ``stationary_variances`` (test_integrators.py); MC errors from
batch means, one batch per independent chain.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import heatbath as hb
from heatbath.kernels import integrators, noise as noise_mod
from heatbath.kernels import integrators_fused as fused
from test_integrators import stationary_variances
from test_sghmc import BATCH, NOISE_VAR, _noisy_gaussian_target, _se


def test_draw_counts_and_boundaries():
    cases = {"obabo": (2, 1), "OABAO": (2, 1), "BOOBA": (2, 1), "baoab": (1, 1), "lie_trotter": (1, 1), "EBAE": (2, 1),
             "OBOAOBO": (4, 3)}
    for word, (plain, fused_count) in cases.items():
        split = integrators.get(word)
        assert (fused.num_draws(split), fused.num_draws(split, True)) == (plain, fused_count), word
    assert fused.fused_boundary(integrators.obabo) == ((("O", 0.5),), (("O", 0.5),))
    assert fused.fused_boundary(integrators.baoab) == ((), ())


def _counting_source(calls):
    base = noise_mod.brownian()

    def draws(key, like, num):
        calls.append(num)
        return base.draws(key, like, num)

    return noise_mod.NoiseSource("counting", base.draw, draws)


def test_one_draw_per_step_and_t0_positions_unchanged():
    """One ``draws(.., 1)`` per OBABO step (two without fusing); at T = 0 the fused chains of
    positions equal the plain ones to float tolerance (OBABO, OABAO, BOOBA); the FSAL priming
    step still does not move."""
    calls = []
    s = hb.samplers.sghmc(0.1, 1.0, "obabo", noise=_counting_source(calls), fuse_noise=True)
    g = lambda x, b: (-0.5 * jnp.sum(x**2), -x)  # noqa: E731
    st = s.init(jnp.array([1.0, 2.0]), jax.random.key(0))
    st1, _ = s.step(jax.random.key(1), st, None, g)
    np.testing.assert_array_equal(st1.position, st.position)
    st2, _ = s.step(jax.random.key(2), st1, None, g)
    assert calls == [1, 1] and not np.allclose(st2.position, st1.position)
    for word in ("obabo", "OABAO", "BOOBA"):
        a = hb.samplers.sghmc(0.1, 1.0, word, temperature=0.0)
        b = hb.samplers.sghmc(0.1, 1.0, word, temperature=0.0, fuse_noise=True)
        sa, sb = a.init(jnp.array([1.0, 2.0])), b.init(jnp.array([1.0, 2.0]))
        for i in range(6):
            sa, _ = a.step(jax.random.key(i), sa, None, g)
            sb, _ = b.step(jax.random.key(i), sb, None, g)
        np.testing.assert_allclose(sb.position, sa.position, rtol=1e-6, atol=1e-7)


def test_fused_obabo_with_minibatch_noise_matches_lyapunov():
    """hb.sample, fused OBABO on the noisy Gaussian (gradient noise 1, h = 0.2): Var(theta) at
    OBABO's Lyapunov value and Var(r) = 2 E[kinetic energy] at Lie-Trotter's (the momentum
    after the composed O(h)), each within 4.5 SE (100 chains x 1000 draws after 200). Power:
    the exact-gradient Var(theta) is > 6 SE away."""
    h = 0.2
    sampler = hb.samplers.sghmc(h, 1.0, "obabo", fuse_noise=True)
    res = hb.sample(_noisy_gaussian_target(), sampler, batch_size=BATCH, num_samples=1200, num_chains=100, seed=1,
                    progress_bar=False, checks="off", num_warmup=0)
    want_t = stationary_variances("obabo", h, NOISE_VAR)[0]
    want_r = stationary_variances("lie_trotter", h, NOISE_VAR)[1]
    assert want_t == pytest.approx(stationary_variances("lie_trotter", h, NOISE_VAR)[0], rel=1e-12)
    got_t, se_t = _se((res.samples["theta"][:, 200:] ** 2).mean(axis=1))
    got_r, se_r = _se((2.0 * res.stats["kinetic_energy"][:, 200:]).mean(axis=1))
    assert abs(got_t - want_t) < 4.5 * se_t, (got_t, want_t, se_t)
    assert abs(got_r - want_r) < 4.5 * se_r, (got_r, want_r, se_r)
    assert abs(stationary_variances("obabo", h)[0] - got_t) > 6 * se_t
    assert res.grad_evals == 1200 * BATCH and not res.stats["diverging"].any()


@pytest.mark.slow
def test_fused_oabao_pytree_mass_full_batch():
    """Non-FSAL OABAO fused (its lead applied by ``init``), pytree mass, T = 0.5, exact
    gradients, h = 0.3: each coordinate's Var(theta) at OABAO's Lyapunov value and the mean
    kinetic energy at ABAO's (the momentum after the composed O(h)), within 4.5 SE."""
    k = {"a": jnp.array([1.0, 4.0]), "b": jnp.array(0.25)}
    m = {"a": jnp.array([1.0, 2.0]), "b": 4.0}
    T, h = 0.5, 0.3
    target = hb.models.from_logdensity(
        lambda p: -0.5 * (jnp.sum(k["a"] * p["a"] ** 2) + k["b"] * p["b"] ** 2),
        lambda p, b: 0.0 * jnp.sum(b),
        np.zeros(3, np.float32),
        params={"a": jnp.zeros(2), "b": jnp.zeros(())},
    )
    sampler = hb.samplers.sghmc(h, 1.0, "OABAO", mass=m, temperature=T, fuse_noise=True)
    res = hb.sample(target, sampler, num_samples=1300, num_chains=100, seed=2, progress_bar=False,
                    checks="off")
    draws = {"a0": res.samples["a"][:, 300:, 0], "a1": res.samples["a"][:, 300:, 1], "b": res.samples["b"][:, 300:]}
    kk = {"a0": 1.0, "a1": 4.0, "b": 0.25}
    mm = {"a0": 1.0, "a1": 2.0, "b": 4.0}
    for name, x in draws.items():
        want = stationary_variances("OABAO", h, mass=mm[name], precision=kk[name], temperature=T)[0]
        got, se = _se((x**2).mean(axis=1))
        assert abs(got - want) < 4.5 * se, (name, got, want, se)
    want_k = sum(stationary_variances("ABAO", h, mass=mm[c], precision=kk[c], temperature=T)[1] / (2 * mm[c])
                 for c in kk)
    got_k, se_k = _se(res.stats["kinetic_energy"][:, 300:].mean(axis=1))
    assert abs(got_k - want_k) < 4.5 * se_k, (got_k, want_k, se_k)


def test_fuse_noise_bad_input_and_default_unchanged():
    with pytest.raises(ValueError, match="resample_momentum"):
        hb.samplers.sghmc(0.1, 1.0, fuse_noise=True, resample_momentum=True)
    with pytest.raises(TypeError, match="fuse_noise"):
        hb.samplers.sghmc(0.1, 1.0, fuse_noise=1)
    assert "fuse_noise" not in hb.samplers.sghmc(0.1, 1.0).hyperparameters
    assert hb.samplers.sghmc(0.1, 1.0, fuse_noise=True).rebuild(step_size=0.2).hyperparameters["fuse_noise"] is True
