"""Targets: the NumPyro bridge, plain log-density targets and the reference posteriors."""

from heatbath.models.numpyro_bridge import from_numpyro
from heatbath.models.target import Target, from_logdensity

# The function `reference` shadows its module's name on purpose (hb.models.reference(name)).
from heatbath.models.reference import ReferencePosterior, list_references, reference  # noqa: E402

__all__ = ["Target", "from_numpyro", "from_logdensity", "reference", "list_references", "ReferencePosterior"]
