"""Optimizers as the zero-temperature limits of the samplers, and optax interop."""

from heatbath.optim.optax_bridge import as_optax, from_optax

__all__ = ["from_optax", "as_optax"]
