"""Neural networks as NumPyro models: Gaussian priors on every weight, a likelihood on outputs.

:func:`network_model` turns a network, given as ``apply(params, x) -> outputs`` and a parameter
pytree (any library: plain JAX, Flax's ``module.apply`` and variables, or an Equinox module,
which is split into its array leaves and its static rest with ``equinox.partition``), into a
NumPyro model ``model(X, y=None)`` that every heatbath method runs (``hb.sample``,
``hb.optimize``, ``hb.fit``):

    theta_l ~ N(0, sigma_l^2 I)            one sample site per array leaf l of the parameters
    y_i | x_i, theta ~ Categorical(softmax(f(x_i; theta)))       (or Bernoulli, or Normal)
    y_i | x_i, theta, sigma ~ N(f(x_i; theta), sigma^2)     (Normal: sigma fixed, or a site)

inside one data plate over the rows of X (so minibatches work). Layer-wise prior scales
sigma_l: one number for all leaves, a pytree with the parameters' structure holding one number
per leaf, or a function ``(path, leaf) -> scale`` of the leaf's key path (e.g. 1/sqrt(fan_in)).

Cold posteriors: the sampler's ``temperature`` T (``hb.samplers.sgld(h, temperature=T)``,
every heatbath sampler and ``hb.fit`` method has it) targets p(theta | D)^(1/T); T < 1 is the
"cold posterior" of Wenzel et al. (2020), T = 0 the MAP (``hb.optimize``, a deep ensemble).

The returned :class:`BayesianNetwork` holds ``model``, ``sites`` (the site names, one per leaf,
from the leaves' key paths), ``params(draw)`` (a draw's dict -> the parameter pytree),
``predict(draw, X)`` (class probabilities, or the mean for a Gaussian likelihood, of one draw;
what :func:`heatbath.diagnostics.predictive_moments` maps over draws) and ``logits``; for a
Normal likelihood ``noise_sd(draw)`` (sigma of one draw) and ``noise_site``.

Normal likelihood: ``noise_scale`` is sigma, a fixed positive number (default 1), or a NumPyro
distribution over positive numbers (e.g. ``dist.HalfNormal(1.0)``), the prior of a learned noise
scale: a sample site ``"noise_sd"`` outside the data plate (``noise_site``; not in ``sites``,
which are the weights). Samplers and optimizers move it in the unconstrained space (log sigma)
like any constrained NumPyro site.

``predict_at=X_test`` adds a deterministic site ``"probs"`` of the test predictions to the
model, so ``hb.sample(..., keep="moments")`` accumulates the predictive mean and variance inside
the scan as the draws are made (``Result.moments["mean"]["probs"]`` per chain, or
``Result.get_moments()["mean"]["probs"]`` pooled over the chains that did not diverge), keeping
no draw at all.
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from heatbath.models.target import SYMMETRIC_ATTR

__all__ = ["network_model", "BayesianNetwork", "LIKELIHOODS"]

LIKELIHOODS = ("categorical", "bernoulli", "normal")
NOISE_SITE = "noise_sd"


class BayesianNetwork(NamedTuple):
    model: Callable
    sites: tuple
    params: Callable
    predict: Callable
    logits: Callable
    init: dict
    likelihood: str
    noise_sd: Optional[Callable] = None  # draw -> sigma (Normal likelihood only)
    noise_site: Optional[str] = None  # "noise_sd" when sigma is learned


def _site_name(path) -> str:
    name = jax.tree_util.keystr(path)
    name = re.sub(r"[^0-9A-Za-z_]+", ".", name).strip(".")
    return name or "params"


def _split(network, params):
    """(apply, params) from an Equinox module or from (apply, params)."""
    if params is not None:
        if not callable(network):
            raise TypeError("network must be a function apply(params, x) when params are given")
        return network, params
    try:
        import equinox as eqx
    except ImportError:  # pragma: no cover
        eqx = None
    if eqx is not None and isinstance(network, eqx.Module):
        arrays, static = eqx.partition(network, eqx.is_array)
        return (lambda p, x: eqx.combine(p, static)(x)), arrays
    raise TypeError("network_model takes an Equinox module, or apply(params, x) together with params=")


def _scales(prior_scale, params, paths_leaves, treedef):
    if callable(prior_scale):
        scales = [prior_scale(path, leaf) for path, leaf in paths_leaves]
    elif isinstance(prior_scale, (int, float, np.number)) or (hasattr(prior_scale, "shape") and
                                                              np.ndim(prior_scale) == 0):
        scales = [prior_scale] * len(paths_leaves)
    else:
        try:
            s_leaves, s_def = jax.tree.flatten(prior_scale)
        except Exception as err:  # pragma: no cover
            raise ValueError(f"prior_scale could not be read as a pytree: {err}") from None
        if s_def != treedef:
            raise ValueError("prior_scale does not match the network's parameters: it must be one number, a "
                             "function (path, leaf) -> scale, or a pytree with the parameters' structure "
                             f"({len(paths_leaves)} leaves: {treedef}), got a pytree with {len(s_leaves)} leaves: "
                             f"{s_def}")
        scales = s_leaves
    out = []
    for (path, leaf), s in zip(paths_leaves, scales):
        s_arr = np.asarray(s, np.float64)
        if s_arr.ndim != 0 and s_arr.shape != np.shape(leaf):
            raise ValueError(f"prior scale of {_site_name(path)} has shape {s_arr.shape}; it must be a number or "
                             f"the leaf's shape {np.shape(leaf)}")
        if not np.all(np.isfinite(s_arr)) or np.any(s_arr <= 0):
            raise ValueError(f"prior scale of {_site_name(path)} must be finite and > 0, got {s}")
        out.append(s_arr)
    return out


def _noise_prior(noise_scale, likelihood, names):
    """None for a fixed noise scale (checked finite and > 0 for a Normal likelihood), or the
    prior distribution of a learned one."""
    import numpyro.distributions as dist

    if isinstance(noise_scale, dist.Distribution):
        if likelihood != "normal":
            raise ValueError(f"a noise scale prior needs likelihood='normal', got {likelihood!r}")
        if noise_scale.batch_shape or noise_scale.event_shape:
            raise ValueError("the noise scale prior must be a scalar distribution, got batch shape "
                             f"{noise_scale.batch_shape}, event shape {noise_scale.event_shape}")
        support = noise_scale.support
        lower = getattr(support, "lower_bound", None)
        if support.is_discrete or lower is None or not np.all(np.asarray(lower) >= 0):
            raise ValueError(f"the noise scale prior must be a continuous distribution over positive numbers "
                             f"(e.g. dist.HalfNormal(1.0)), got support {support}")
        if NOISE_SITE in names:
            raise ValueError(f"a parameter leaf is named {NOISE_SITE!r}, the learned noise scale's site")
        return noise_scale
    if likelihood == "normal":
        try:
            s = np.asarray(noise_scale, np.float64)
        except (TypeError, ValueError):
            s = np.asarray(np.nan)
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError("noise_scale must be finite and > 0 (a number or an array) or a distribution over positive numbers "
                             f"(a learned noise scale), got {noise_scale!r}")
    return None


def network_model(
    network,
    params: Any = None,
    *,
    prior_scale=1.0,
    likelihood: str = "categorical",
    noise_scale=1.0,
    predict_at=None,
) -> BayesianNetwork:
    """A NumPyro model with N(0, sigma_l^2) priors on every weight of a network (see module doc).

    Args:
      network: an Equinox module (its array leaves are the weights), or ``apply(params, x)``
        mapping the parameter pytree and ONE input row to the outputs (logits; for a
        ``"bernoulli"`` likelihood one logit, shape () or (1,); for ``"normal"`` the mean).
      params: the parameter pytree (the initial values and the structure), with ``apply``.
      prior_scale: a number, a pytree like ``params`` with one number per leaf, or
        ``(path, leaf) -> scale``.
      likelihood: ``"categorical"``, ``"bernoulli"`` or ``"normal"`` (with ``noise_scale``).
      noise_scale: for ``"normal"``: sigma, a positive number, or a NumPyro distribution over
        positive numbers: the prior of a learned sigma, sample site ``"noise_sd"``.
      predict_at: test inputs; adds a deterministic site ``"probs"`` of the predictions there.

    Errors (before anything runs): integer or boolean leaves in the parameters (a
    gradient-based method cannot move them: make them static, e.g. with ``equinox.partition``),
    a ``prior_scale`` that does not match the parameters' structure, an unknown likelihood, a
    noise scale that is not a positive number or a distribution over positive numbers.
    """
    import numpyro
    import numpyro.distributions as dist

    apply, params = _split(network, params)
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not paths_leaves:
        raise ValueError("the network has no parameters")
    for path, leaf in paths_leaves:
        dt = np.asarray(leaf).dtype if not hasattr(leaf, "dtype") else leaf.dtype
        if not jnp.issubdtype(dt, jnp.floating):
            raise TypeError(f"parameter leaf {_site_name(path)} has dtype {dt}: every parameter must be a "
                            "floating-point array (integer or boolean leaves cannot carry a prior or a gradient; "
                            "make them static, e.g. equinox.partition(net, equinox.is_inexact_array))")
    names = [_site_name(p) for p, _ in paths_leaves]
    if len(set(names)) != len(names):
        names = [f"{n}_{i}" for i, n in enumerate(names)]
    scales = _scales(prior_scale, params, paths_leaves, treedef)
    noise_prior = _noise_prior(noise_scale, likelihood, names)
    shapes = [tuple(np.shape(l)) for _, l in paths_leaves]
    dtypes = [l.dtype for _, l in paths_leaves]

    def to_params(draw: dict):
        missing = [n for n in names if n not in draw]
        if missing:
            raise KeyError(f"draw lacks the network's sites {missing[:3]}")
        return jax.tree.unflatten(treedef, [draw[n] for n in names])

    def logits_fn(draw, X):
        p = to_params(draw)
        return jax.vmap(lambda x: apply(p, x))(X)

    def predict(draw, X):
        out = logits_fn(draw, X)
        if likelihood == "categorical":
            return jax.nn.softmax(out, axis=-1)
        if likelihood == "bernoulli":
            z = jnp.reshape(out, (out.shape[0],))
            return jnp.stack([jax.nn.sigmoid(-z), jax.nn.sigmoid(z)], axis=-1)
        return out

    def model(X, y=None):
        draw = {}
        for n, s, shape, dt in zip(names, scales, shapes, dtypes):
            d = dist.Normal(jnp.zeros(shape, dt), jnp.asarray(s, dt) * jnp.ones(shape, dt))
            draw[n] = numpyro.sample(n, d.to_event(len(shape)) if shape else d)
        sigma = noise_scale if noise_prior is None else numpyro.sample(NOISE_SITE, noise_prior)
        if predict_at is not None:
            numpyro.deterministic("probs", predict(draw, predict_at))
        out = logits_fn(draw, X)
        with numpyro.plate("data", X.shape[0]):
            if likelihood == "categorical":
                numpyro.sample("y", dist.Categorical(logits=out), obs=y)
            elif likelihood == "bernoulli":
                numpyro.sample("y", dist.Bernoulli(logits=jnp.reshape(out, (X.shape[0],))), obs=y)
            else:
                numpyro.sample("y", dist.Normal(jnp.reshape(out, (X.shape[0],)), sigma), obs=y)

    # Hidden units can be permuted (and flipped, with odd activations) without changing the
    # function: the self-check reads R-hat and ESS from what the draws predict instead.
    setattr(model, SYMMETRIC_ATTR, tuple(names))

    def noise_sd(draw):
        return draw[NOISE_SITE] if noise_prior is not None else jnp.asarray(noise_scale)

    init = {n: jnp.asarray(l) for n, (_, l) in zip(names, paths_leaves)}
    return BayesianNetwork(model, tuple(names), to_params, predict, logits_fn, init, likelihood,
                           noise_sd if likelihood == "normal" else None,
                           NOISE_SITE if noise_prior is not None else None)
