"""Diagnostics: ArviZ export (and, later, Stein discrepancies, W2/MMD, predictive metrics)."""

from heatbath.diagnostics.arviz import to_arviz

__all__ = ["to_arviz"]
