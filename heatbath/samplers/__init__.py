"""Samplers: one module per family, each constructor returning ``Sampler(init, step)``."""

from heatbath.samplers.base import Info, Sampler
from heatbath.samplers.langevin import langevin
from heatbath.samplers.sghmc import sghmc, sgnht
from heatbath.samplers.sgld import psgld, sgld

__all__ = ["Sampler", "Info", "sgld", "psgld", "langevin", "sghmc", "sgnht"]
