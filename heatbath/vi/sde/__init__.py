"""Neural-SDE variational inference driven by Markov-approximate fractional Brownian motion
(Daems, Opper, Crevecoeur & Birdal, ICLR 2024).

``model`` builds the latent SDE (:func:`latent_sde`: drift, diffusion, control, likelihood,
context as functions of (params, t, state, context), small MLPs provided), ``solver`` the
Euler-Maruyama paths and the ELBO with its Girsanov term, ``method`` the
:class:`~heatbath.vi.base.VIMethod` :func:`fbm_vi` and the target :func:`observations`,
``posterior`` the :class:`SDEPosterior` that ``hb.fit`` returns::

    sde = hb.vi.sde.latent_sde(lambda p, t, x, c: -x, 1.0, span=(0, 2), dt=0.01, hurst=None)
    q = hb.fit(hb.models.from_latent_sde(sde, times, values), hb.vi.sde.fbm_vi(sde, num_steps=2000))
    q.hurst, q.predictive(0), q.to_arviz()
"""

from heatbath.vi.sde import method, model, posterior, solver
from heatbath.vi.sde.method import SDEInfo, SDEState, fbm_vi
from heatbath.vi.sde.model import (
    LatentSDE,
    gaussian,
    latent_sde,
    mlp_apply,
    mlp_control,
    mlp_drift,
    mlp_init,
    next_observation,
    next_observations,
    no_context,
)
from heatbath.vi.sde.posterior import SDEPosterior

__all__ = [
    "latent_sde", "LatentSDE", "fbm_vi", "SDEPosterior", "SDEState", "SDEInfo", "gaussian",
    "mlp_init", "mlp_apply", "mlp_control", "mlp_drift", "next_observation", "next_observations", "no_context", "method", "model",
    "posterior", "solver",
]
