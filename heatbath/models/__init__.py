"""Targets: the NumPyro bridge, plain log-density targets and the reference posteriors."""

from heatbath.models.network import BayesianNetwork, network_model
from heatbath.models.numpyro_bridge import from_numpyro
from heatbath.models.target import Target, from_logdensity
from heatbath.models.latent_sde import from_latent_sde
from heatbath.models.references import ReferencePosterior, list_references, reference

__all__ = ["network_model", "BayesianNetwork", "Target", "from_numpyro", "from_logdensity", "reference", "list_references", "ReferencePosterior", "from_latent_sde"]
