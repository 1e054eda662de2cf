"""The NUTS runs behind :func:`heatbath.diagnostics.reference`: BlackJAX or NumPyro.

Both runners take the same arguments and return the same dict, so the reference does not care
which one ran:

    runner(logdensity, x0, key, num_warmup, num_samples, target_accept) -> {
        "positions": (chain, draw, d) unconstrained draws,
        "diverging": (chain, draw) bool, "accept_rate": (chain, draw),
        "num_steps": (chain, draw) leapfrog steps per transition, "step_size": (chain,)}

``logdensity`` maps a flat parameter vector of length d to the exact (full-data) log density;
``x0`` is ``(chain, d)``. Each chain adapts its own step size and diagonal inverse mass matrix
(Stan's windowed adaptation: a fast step-size window, slow mass-matrix windows doubling in
length, a final step-size window), then runs ``num_samples`` NUTS transitions with them.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["RUNNERS", "run_blackjax", "run_numpyro", "starting_points"]


def run_blackjax(logdensity: Callable, x0, key, num_warmup: int, num_samples: int, target_accept: float) -> dict:
    """``blackjax.window_adaptation(blackjax.nuts, ...)`` then ``blackjax.nuts`` per chain,
    the chains under ``vmap`` in one compiled program (Hoffman & Gelman 2014, NUTS with
    multinomial sampling as in Stan; Stan's window adaptation)."""
    import blackjax
    from blackjax.adaptation.base import get_filter_adapt_info_fn

    def one_chain(key, x):
        k_warm, k_draw = jax.random.split(key)
        warmup = blackjax.window_adaptation(
            blackjax.nuts, logdensity, target_acceptance_rate=target_accept,
            adaptation_info_fn=get_filter_adapt_info_fn(),  # keep no per-step warmup trace
        )
        (state, params), _ = warmup.run(k_warm, x, num_steps=num_warmup)
        step = blackjax.nuts(logdensity, **params).step

        def body(state, k):
            state, info = step(k, state)
            return state, (state.position, info.is_divergent, info.acceptance_rate, info.num_integration_steps)

        _, out = jax.lax.scan(body, state, jax.random.split(k_draw, num_samples))
        return out, params["step_size"]

    keys = jax.random.split(key, x0.shape[0])
    (pos, div, acc, steps), h = jax.jit(jax.vmap(one_chain))(keys, jnp.asarray(x0))
    return {"positions": np.asarray(pos), "diverging": np.asarray(div, bool), "accept_rate": np.asarray(acc),
            "num_steps": np.asarray(steps), "step_size": np.asarray(h)}


def run_numpyro(logdensity: Callable, x0, key, num_warmup: int, num_samples: int, target_accept: float) -> dict:
    """``numpyro.infer.NUTS(potential_fn=-logdensity)`` under ``MCMC(chain_method="vectorized")``
    (NumPyro's Stan-style windowed adaptation, diagonal mass matrix)."""
    from numpyro.infer import MCMC, NUTS

    chains = x0.shape[0]
    kernel = NUTS(potential_fn=lambda x: -logdensity(x), target_accept_prob=target_accept)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    init = jnp.asarray(x0) if chains > 1 else jnp.asarray(x0[0])
    mcmc.run(key, init_params=init, extra_fields=("diverging", "accept_prob", "num_steps", "adapt_state.step_size"))
    pos = np.asarray(mcmc.get_samples(group_by_chain=True))
    extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    return {"positions": pos.reshape(chains, num_samples, -1), "diverging": extra["diverging"].astype(bool),
            "accept_rate": extra["accept_prob"], "num_steps": extra["num_steps"],
            "step_size": extra["adapt_state.step_size"][:, -1]}


RUNNERS = {"blackjax": run_blackjax, "numpyro": run_numpyro}


def starting_points(target, logdensity: Callable, ravel: Callable, key, num_chains: int, tries: int = 20):
    """``(chain, d)`` starting points: chain c draws ``target.init_params`` (uniform(-2, 2) in the
    unconstrained space) from ``fold_in(key, c)``, redrawn (up to ``tries`` times) where the
    log density or its gradient is not finite there, as NumPyro's initialisation does."""

    @jax.jit
    def draw(keys):  # one compiled program: the points and the density's value and gradient there
        x = jax.vmap(lambda k: ravel(target.init_params(k)))(keys)
        lp, g = jax.vmap(jax.value_and_grad(logdensity))(x)
        return x, jnp.isfinite(lp) & jnp.all(jnp.isfinite(g), axis=1)

    chains = jnp.arange(num_chains)
    x, ok = (np.array(a) for a in draw(jax.vmap(lambda c: jax.random.fold_in(key, c))(chains)))
    for attempt in range(1, tries):
        if ok.all():
            return x
        keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.fold_in(key, c), attempt))(chains)
        x_new, ok_new = (np.array(a) for a in draw(keys))
        x, ok = np.where(ok[:, None], x, x_new), ok | ok_new
    if ok.all():
        return x
    bad = ~ok
    raise ValueError(
        f"the log density or its gradient is not finite at the starting points of chains {np.flatnonzero(bad).tolist()} "
        f"after {tries} draws uniform in (-2, 2) on the unconstrained scale: check the model's supports and data"
    )
