"""Targets: the NumPyro bridge, plain log-density targets and the reference posteriors."""

from heatbath.models.numpyro_bridge import from_numpyro
from heatbath.models.target import Target, from_logdensity
from heatbath.models.references import ReferencePosterior, list_references, reference

__all__ = ["Target", "from_numpyro", "from_logdensity", "reference", "list_references", "ReferencePosterior"]
