"""Targets: the NumPyro bridge, plain log-density targets and the reference posteriors."""

from heatbath.models.numpyro_bridge import from_numpyro
from heatbath.models.target import Target, from_logdensity

__all__ = ["Target", "from_numpyro", "from_logdensity", "reference", "list_references"]


def __getattr__(name):
    if name in ("reference", "list_references", "ReferencePosterior"):
        from heatbath.models import reference as _reference_module

        return getattr(_reference_module, name)
    raise AttributeError(f"module 'heatbath.models' has no attribute {name!r}")
