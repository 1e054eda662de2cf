"""Shared JAX kernels: pure functions on pytrees, with no knowledge of models or drivers."""

from heatbath.kernels import gradients, integrators, linalg, noise, preconditioners, schedules, tree, validate

__all__ = ["gradients", "integrators", "linalg", "noise", "preconditioners", "schedules", "tree", "validate"]
