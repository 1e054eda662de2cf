"""Optimizers as the zero-temperature limits of the samplers, and optax interop."""

from heatbath.optim.optax_bridge import from_optax

__all__ = ["from_optax"]
