"""Networks as NumPyro models (heatbath.models.network) and the chunked predictive
(heatbath.diagnostics.predictive_mean): equal to the all-draws predictive, in the scan with
keep="moments", and the bad-input errors. The memory measurement is a slow test."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density

import heatbath as hb
from heatbath.diagnostics.predictive_mean import predictive_moments
from heatbath.models.network import network_model

RNG = np.random.default_rng(0)
X = RNG.normal(size=(120, 3)).astype(np.float32)
Y = (X[:, 0] - X[:, 1] > 0).astype(np.int32)
XT = X[:40]


def mlp(params, x):
    h = jnp.tanh(params["l1"]["w"] @ x + params["l1"]["b"])
    return params["l2"]["w"] @ h + params["l2"]["b"]


PARAMS = {"l1": {"w": jnp.zeros((4, 3)), "b": jnp.zeros(4)}, "l2": {"w": jnp.zeros((2, 4)), "b": jnp.zeros(2)}}


def _normal_lp(x, s):
    x = np.asarray(x, np.float64)
    return float(np.sum(-0.5 * (x / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)))


def test_layerwise_prior_log_density():
    scales = {"l1": {"w": 0.5, "b": 1.0}, "l2": {"w": 0.25, "b": 2.0}}
    bn = network_model(mlp, PARAMS, prior_scale=scales)
    assert bn.sites == ("l1.b", "l1.w", "l2.b", "l2.w")
    draw = {n: jnp.asarray(RNG.normal(size=bn.init[n].shape), jnp.float32) for n in bn.sites}
    logits = np.asarray(jax.vmap(lambda x: mlp(bn.params(draw), x))(X), np.float64)
    loglik = float(np.sum(logits[np.arange(len(Y)), Y] - np.log(np.exp(logits).sum(1))))
    lp = jax.jit(lambda d: log_density(bn.model, (X,), {"y": Y}, d)[0])(draw)
    expect = loglik + sum(_normal_lp(draw[n], s) for n, s in [("l1.w", 0.5), ("l1.b", 1.0), ("l2.w", 0.25), ("l2.b", 2.0)])
    assert float(lp) == pytest.approx(expect, rel=1e-5)
    # a function of the leaf: 1/sqrt(fan_in) for weights, 1 for biases
    bn2 = network_model(mlp, PARAMS, prior_scale=lambda path, leaf: 1 / np.sqrt(leaf.shape[-1]) if leaf.ndim == 2 else 1.0)
    lp2 = jax.jit(lambda d: log_density(bn2.model, (X,), {"y": Y}, d)[0])(draw)
    expect2 = loglik + sum(_normal_lp(draw[n], s) for n, s in [("l1.w", 3**-0.5), ("l1.b", 1.0), ("l2.w", 0.5), ("l2.b", 1.0)])
    assert float(lp2) == pytest.approx(expect2, rel=1e-5)


def test_equinox_module():
    eqx = pytest.importorskip("equinox")
    net = eqx.nn.MLP(3, 2, 4, 1, key=jax.random.key(0))
    bn = network_model(net)
    assert bn.sites == ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias")
    np.testing.assert_allclose(bn.logits(bn.init, X[:5]), jax.vmap(net)(X[:5]), rtol=1e-6)


def test_network_bad_input():
    with pytest.raises(TypeError, match="l1.n.*int32.*floating-point"):
        network_model(mlp, {**PARAMS, "l1": {**PARAMS["l1"], "n": jnp.zeros(3, jnp.int32)}})
    with pytest.raises(ValueError, match="prior_scale does not match"):
        network_model(mlp, PARAMS, prior_scale={"l1": 1.0, "l2": 1.0})
    with pytest.raises(ValueError, match="prior scale of l1.w"):
        network_model(mlp, PARAMS, prior_scale={"l1": {"w": -1.0, "b": 1.0}, "l2": {"w": 1.0, "b": 1.0}})
    with pytest.raises(ValueError, match="likelihood"):
        network_model(mlp, PARAMS, likelihood="poisson")
    with pytest.raises(TypeError, match="Equinox module"):
        network_model(object())


def _draws(bn, S, seed=0):
    rng = np.random.default_rng(seed)
    return {n: (0.7 * rng.normal(size=(S,) + bn.init[n].shape)).astype(np.float32) for n in bn.sites}


def test_chunked_predictive_of_draws_equals_all_draws():
    bn = network_model(mlp, PARAMS)
    draws = _draws(bn, 300)
    allp = np.asarray(jax.vmap(lambda d: bn.predict(d, XT))(draws), np.float64)  # (S, n, K)
    pm = predictive_moments(draws, bn.predict, XT, chunk_size=64)  # chunks 64 x 4 + 44
    assert pm.num_draws == 300
    np.testing.assert_allclose(pm.mean, allp.mean(0), atol=1e-6)
    np.testing.assert_allclose(pm.second, (allp**2).mean(0), atol=1e-6)
    np.testing.assert_allclose(pm.var, allp.var(0), atol=1e-6)
    assert pm.var.max() > 1e-3  # the draws do differ
    with pytest.raises(ValueError, match=r"shape \(2,\).*\(n, K\)"):
        predictive_moments(draws, lambda d, x: bn.predict(d, x)[0], XT)
    with pytest.raises(ValueError, match="probabilities"):
        predictive_moments(draws, lambda d, x: bn.logits(d, x) + 3.0, XT)
    with pytest.raises(ValueError, match="chunk_size"):
        predictive_moments(draws, bn.predict, XT, chunk_size=0)
    with pytest.raises(TypeError, match="cannot take draws"):
        predictive_moments([1, 2], bn.predict, XT)


@pytest.fixture(scope="module")
def runs():
    bn = network_model(mlp, PARAMS, prior_scale=1.0, predict_at=XT)
    kw = dict(data={"X": X, "y": Y}, batch_size=40, num_samples=150, num_warmup=50, num_chains=2, seed=3,
              progress_bar=False, checks=False)
    r = hb.sample(bn.model, hb.samplers.sgld(2e-3), **kw)
    rm = hb.sample(bn.model, hb.samplers.sgld(2e-3), keep="moments", **kw)
    return bn, r, rm


@pytest.mark.slow
def test_chunked_predictive_of_a_result_and_in_the_scan(runs):
    bn, r, rm = runs
    draws = {n: np.asarray(r.samples[n]).reshape((-1,) + r.samples[n].shape[2:]) for n in bn.sites}
    allp = np.asarray(jax.vmap(lambda d: bn.predict(d, XT))(draws), np.float64)  # (S, n, K)
    pm = predictive_moments(r, bn.predict, XT, chunk_size=64)  # 2 chains x (64, 64, 22)
    assert pm.num_draws == 300
    np.testing.assert_allclose(pm.mean, allp.mean(0), atol=1e-6)
    np.testing.assert_allclose(pm.second, (allp**2).mean(0), atol=1e-6)
    np.testing.assert_allclose(pm.var, allp.var(0), atol=1e-6)
    assert pm.var.max() > 1e-4  # the draws do differ
    # a dict of draws, the same
    np.testing.assert_allclose(predictive_moments(draws, bn.predict, XT, chunk_size=7).mean, allp.mean(0), atol=1e-6)
    # inside the scan: keep="moments" of the deterministic "probs" site, the same chains
    m = rm.moments
    assert not rm.samples
    np.testing.assert_allclose(np.asarray(m["mean"]["probs"], np.float64).mean(0), allp.mean(0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(r.samples["probs"], np.float64).mean((0, 1)), allp.mean(0), atol=1e-6)
    with pytest.raises(ValueError, match="keep='moments'"):
        predictive_moments(rm, bn.predict, XT)


class _Approx:
    """An approximation (sample(key, num)) whose draws are made a chunk at a time."""

    def __init__(self, bn):
        self.bn = bn
        self.calls = []

    def sample(self, key, num, *, constrained=True):
        self.calls.append(num)
        rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))
        return {n: (0.3 * rng.normal(size=(num,) + self.bn.init[n].shape)).astype(np.float32) for n in self.bn.sites}


def test_predictive_of_an_approximation():
    bn = network_model(mlp, PARAMS)
    q = _Approx(bn)
    pm = predictive_moments(q, bn.predict, XT, num_draws=250, chunk_size=100, seed=1)
    assert q.calls == [100, 100, 50] and pm.num_draws == 250
    np.testing.assert_allclose(pm.mean.sum(1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="num_draws"):
        predictive_moments(q, bn.predict, XT)


_MEMORY_SCRIPT = r"""
import resource, sys, json
import jax, jax.numpy as jnp, numpy as np
from heatbath.diagnostics.predictive_mean import predictive_moments
mode, S = sys.argv[1], int(sys.argv[2])
n, d, H, K = 2000, 20, 64, 10
X = jnp.asarray(np.random.default_rng(0).normal(size=(n, d)), jnp.float32)
def predict(w, x):
    return jax.nn.softmax(jnp.tanh(x @ w["a"]) @ w["b"], axis=-1)
class Q:
    def sample(self, key, num):
        k1, k2 = jax.random.split(key)
        return {"a": 0.3 * jax.random.normal(k1, (num, d, H)), "b": 0.3 * jax.random.normal(k2, (num, H, K))}
def peak_mib():
    # VmHWM belongs to this process image (ru_maxrss carries the forking parent's peak across exec).
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if mode == "chunked":
    m = predictive_moments(Q(), predict, X, num_draws=S, chunk_size=100).mean
else:  # all draws' predictions at once, as Predictive does
    w = Q().sample(jax.random.key(0), S)
    m = np.asarray(jax.jit(jax.vmap(lambda a: predict(a, X)))(w)).mean(0)
print(json.dumps({"peak_mib": peak_mib(), "sum": float(m.sum())}))
"""


@pytest.mark.slow
def test_predictive_memory_flat_in_draws(tmp_path):
    """Peak RSS of the chunked predictive at 1e2, 1e3, 1e4 draws (n = 2000, K = 10), against
    materialising every draw's predictions (80 kB per draw: 800 MB at 1e4)."""
    script = tmp_path / "mem.py"
    script.write_text(_MEMORY_SCRIPT)
    out = {}
    for mode in ("chunked", "all"):
        for s in (100, 1000, 10000):
            if mode == "all" and s == 10000:
                continue
            res = subprocess.run([sys.executable, str(script), mode, str(s)], capture_output=True, text=True,
                                 env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True)
            out[(mode, s)] = json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]
    print("peak RSS MiB:", out)
    # Flat in the number of draws: 10x the draws adds nothing (measured 433, 453, 454 MiB at
    # 1e2, 1e3, 1e4: more than one chunk adds a second one in flight, once).
    assert out[("chunked", 10000)] - out[("chunked", 1000)] < 20
    assert out[("chunked", 10000)] - out[("chunked", 100)] < 50
    assert out[("all", 1000)] - out[("all", 100)] > 50


def test_normal_likelihood_learned_noise_scale():
    import numpyro.distributions as dist

    YR = X[:, 0] - 0.5 * X[:, 1]
    params = {"l1": PARAMS["l1"], "l2": {"w": jnp.zeros((1, 4)), "b": jnp.zeros(1)}}
    bn = network_model(mlp, params, prior_scale=0.5, likelihood="normal", noise_scale=dist.HalfNormal(2.0))
    assert bn.noise_site == "noise_sd" and "noise_sd" not in bn.sites
    draw = {n: jnp.asarray(RNG.normal(size=bn.init[n].shape), jnp.float32) for n in bn.sites}
    draw["noise_sd"] = jnp.asarray(0.3, jnp.float32)
    f = np.asarray(bn.predict(draw, X), np.float64)[:, 0]
    expect = (_normal_lp(YR - f, 0.3) + sum(_normal_lp(draw[n], 0.5) for n in bn.sites)
              + float(np.log(2) - 0.5 * np.log(2 * np.pi) - np.log(2.0) - 0.5 * (0.3 / 2.0) ** 2))  # HalfNormal(2)
    lp = jax.jit(lambda d: log_density(bn.model, (X,), {"y": YR}, d)[0])(draw)
    assert float(lp) == pytest.approx(expect, rel=1e-5)
    assert float(bn.noise_sd(draw)) == pytest.approx(0.3)
    # a fixed noise scale: no site, the number itself
    fixed = network_model(mlp, params, likelihood="normal", noise_scale=0.3)
    assert fixed.noise_site is None and float(fixed.noise_sd(draw)) == pytest.approx(0.3)
    lp_fixed = jax.jit(lambda d: log_density(fixed.model, (X,), {"y": YR}, d)[0])(draw)
    assert float(lp_fixed) == pytest.approx(_normal_lp(YR - f, 0.3) + sum(_normal_lp(draw[n], 1.0) for n in bn.sites),
                                            rel=1e-5)
    assert network_model(mlp, PARAMS).noise_sd is None
    with pytest.raises(ValueError, match="positive numbers"):
        network_model(mlp, params, likelihood="normal", noise_scale=dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="likelihood='normal'"):
        network_model(mlp, PARAMS, noise_scale=dist.HalfNormal(1.0))
    with pytest.raises(ValueError, match="noise_scale must be"):
        network_model(mlp, params, likelihood="normal", noise_scale=-1.0)
    with pytest.raises(ValueError, match="noise_scale must be"):
        network_model(mlp, params, likelihood="normal", noise_scale=np.array([0.3, 0.0]))
    with pytest.raises(ValueError, match="positive numbers"):  # support reaching below 0
        network_model(mlp, params, likelihood="normal", noise_scale=dist.Uniform(-0.5, 2.0))
    # A positive support that excludes 1, and a fixed sd per row, are fine.
    assert network_model(mlp, params, likelihood="normal", noise_scale=dist.Uniform(0.01, 0.5)).noise_site
    per_row = network_model(mlp, params, likelihood="normal", noise_scale=np.full(len(X), 0.3))
    assert per_row.noise_site is None


def test_rhat_and_ess_of_a_network_are_read_from_what_it_predicts():
    """A network's weights have exact symmetries (hidden units can be permuted), so chains from
    prior draws disagree in weight space whatever the sampler does. The end-of-run check reads
    R-hat and ESS from the log-likelihood of 32 training rows at every draw instead, and says
    so; these equal the statistics computed here by hand. Also through a Target given data=."""
    from heatbath.diagnostics import rank_stats
    from heatbath.drivers import selfcheck

    bn = network_model(mlp, PARAMS, prior_scale=1.0)
    assert selfcheck.SYMMETRIC_ATTR and getattr(bn.model, selfcheck.SYMMETRIC_ATTR) == bn.sites
    r = hb.sample(bn.model, hb.samplers.sgld(2e-3), data={"X": X, "y": Y}, batch_size=40, num_warmup=500,
                  num_samples=300, num_chains=3, init="sample", seed=1, progress_bar=False, checks="basic")
    assert "symmetries" in r.checks["rhat_over"] and "32 training rows" in r.checks["rhat_over"]
    idx = np.unique(np.linspace(0, len(X) - 1, 32).astype(int))
    def rows_ll(c, s):
        p = np.asarray(bn.predict({k: r.samples[k][c, s] for k in bn.sites}, X[idx]), np.float64)
        return np.log(p[np.arange(len(idx)), Y[idx]])

    ll = np.stack([np.stack([rows_ll(c, s) for s in range(300)]) for c in range(3)])  # (chain, draw, row)
    rhat, ess = rank_stats.rhat_and_bulk_ess(ll.astype(np.float64))
    assert r.checks["rhat_max"] == pytest.approx(float(np.max(rhat)), rel=1e-2)  # float32 log-likelihoods
    assert r.checks["ess_bulk_min"] == pytest.approx(float(np.min(ess)), rel=5e-2)
    # Weight space alone would read a much larger R-hat: the chains sit in permuted modes.
    weights = selfcheck._rhat_ess(r.samples, [0, 1, 2])
    assert weights["rhat_max"] > r.checks["rhat_max"]
    # A Target built from the model, given its data again with data= (Target.with_data), keeps the marking.
    t = hb.models.from_numpyro(bn.model, X=X, y=Y)
    assert t.symmetric_sites == bn.sites and t.with_data({"X": X, "y": Y}).symmetric_sites == bn.sites
