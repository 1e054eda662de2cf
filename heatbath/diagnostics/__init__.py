"""Diagnostics: ArviZ export (and, later, Stein discrepancies, W2/MMD, predictive metrics)."""

from heatbath.diagnostics.arviz import to_arviz

__all__ = ["to_arviz"]
from heatbath.diagnostics.reference import Reference, ReferenceCheckError, reference  # noqa: E402

__all__ += ["reference", "Reference", "ReferenceCheckError"]
