"""Shared JAX kernels: pure functions on pytrees, with no knowledge of models or drivers."""

from heatbath.kernels import (gradients, integrators, linalg, mirror, noise, preconditioners, prox, schedules, tree,
                              validate)

__all__ = ["gradients", "integrators", "linalg", "mirror", "noise", "preconditioners", "prox", "schedules", "tree",
           "validate"]
