"""Annealing and cyclical schedules applied to any sampler.

The temperature dial (DESIGN.md): every sampler moves theta along h P grad log p~ plus noise
sqrt(2 h T P) xi, whose stationary law is p^(1/T) (up to the step-size bias).

- T = 1: the posterior.
- 0 < T < 1: a *cold* (tempered) posterior p(theta | D)^(1/T), i.e. prior and likelihood
  both raised to 1/T: as if the data set were repeated 1/T times and the prior sharpened
  by as much. Bayesian deep learning often finds T < 1 predicts better (Wenzel et al., ICML
  2020, "How good is the Bayes posterior in deep neural networks really?"); it is then no
  longer the Bayes posterior of the stated model (a likelihood tempering of 1/T, or data
  augmentation and a misspecified prior, are the usual explanations; Aitchison, ICLR 2021;
  Izmailov et al., ICML 2021). In heatbath it is one argument: ``sgld(h, temperature=0.1)``.
  Variances shrink by T: on a Gaussian posterior N(m, S) the cold posterior is N(m, T S).
- T_k -> 0 along a schedule: simulated annealing (Geman & Hwang 1986 for the Langevin
  version): the chain tracks p^(1/T_k) while it can still cross barriers, so it settles in
  the global mode's basin far more often than a descent from the same start;
  ``hb.optimize(target, sgld(h, temperature=polynomial_cooling(T0, num_steps)))`` returns
  the annealed MAP and its trace.
- T = 0: the optimizer, exactly.

``cyclical(sampler, ...)`` is cSG-MCMC (Zhang, Li, Zhang, Chen & Wilson, ICLR 2020): cosine
step-size cycles, with the noise off during the large-step exploration phase (an optimizer
finding a new mode) and on during the small-step sampling phase, whose draws are kept.
"""

from __future__ import annotations

import numpy as np

from heatbath.kernels import schedules as _schedules
from heatbath.samplers.base import Sampler

__all__ = ["cyclical", "anneal", "sampling_phase"]


def anneal(sampler: Sampler, temperature) -> Sampler:
    """``sampler`` rebuilt with a temperature schedule (e.g. a cooling schedule to 0).

        T_k = temperature(k)   (``polynomial_cooling(T0, K)``: T_k = T0 (1 - k/K)^p;
                                ``geometric_cooling(T0, r)``: T_k = T0 r^k)

    Simulated annealing with Langevin dynamics (Geman & Hwang, SIAM J. Control Optim. 1986).
    Refuses a constant nonzero temperature (that is a tempered sampler, not annealing).
    """
    if not isinstance(sampler, Sampler):
        raise TypeError(f"anneal needs a heatbath Sampler, got {type(sampler).__name__}")
    T = _schedules.as_schedule(temperature, "temperature", positive=False)
    value = _schedules.is_constant(T)
    if value is not None and value != 0.0:
        raise ValueError(
            f"anneal needs a temperature schedule that cools (e.g. polynomial_cooling(1.0, num_steps)), got the "
            f"constant {value}; a constant T is a tempered sampler: build it with temperature={value}"
        )
    if sampler.rebuild is None:
        raise ValueError(f"the {sampler.name} sampler cannot be rebuilt with another temperature")
    return sampler.rebuild(temperature=temperature)


def cyclical(
    sampler: Sampler,
    step_size: float,
    num_steps: int,
    num_cycles: int,
    *,
    exploration: float = 0.8,
    temperature: float = 1.0,
) -> Sampler:
    """cSG-MCMC (Zhang et al., ICLR 2020): ``sampler`` with cyclical step size and temperature.

        r_k = mod(k, L) / L,  L = ceil(num_steps / num_cycles)
        h_k = h0 / 2 (cos(pi r_k) + 1)
        T_k = 0 if r_k < exploration else T       (explore with the optimizer, then sample)

    Keep the draws of the sampling phase: ``sampling_phase(result)`` (or
    ``result.stats["temperature"] > 0``). The step count k starts at 0 at ``init``.

    Args:
      sampler: any sampler whose ``rebuild`` takes ``step_size`` and ``temperature``
        (``sgld``, ``psgld``, ``sghmc``, ``langevin(...)``): cSGLD, cSGHMC, ...
      step_size: h0 > 0, the step size at the start of each cycle.
      num_steps, num_cycles: the run's total steps (warmup included) and number of cycles.
      exploration: the fraction of each cycle run at T = 0 (the paper: 0.8 to 0.94).
      temperature: T of the sampling phase (1: the posterior; < 1: a cold posterior).
    """
    if not isinstance(sampler, Sampler):
        raise TypeError(f"cyclical needs a heatbath Sampler, got {type(sampler).__name__}")
    if sampler.rebuild is None:
        raise ValueError(f"the {sampler.name} sampler cannot be rebuilt with cyclical schedules")
    h = _schedules.cyclical(step_size, num_steps, num_cycles)
    T = _schedules.cyclical_temperature(temperature, num_steps, num_cycles, exploration)
    out = sampler.rebuild(step_size=h, temperature=T)
    hyper = dict(out.hyperparameters, cycles=dict(num_steps=num_steps, num_cycles=num_cycles, exploration=exploration))
    return out._replace(name=f"c{out.name}", hyperparameters=hyper)


def sampling_phase(result) -> np.ndarray:
    """Boolean mask (chain, draw) of the draws of ``result`` taken with the noise on (T > 0).

    For a cSG-MCMC run these are the sampling-phase draws: ``result.samples[name][mask]``
    (flattened over chains) keeps only them.
    """
    stats = getattr(result, "stats", None)
    if not isinstance(stats, dict) or "temperature" not in stats:
        raise TypeError("sampling_phase needs a Result of hb.sample (with stats['temperature'])")
    return np.asarray(stats["temperature"]) > 0
