"""Samplers: one module per family, each constructor returning ``Sampler(init, step)``."""

from heatbath.samplers.base import Info, Sampler
from heatbath.samplers.bregman import bmula, bmumla, myula
from heatbath.samplers.federated import dsgld, fsgld
from heatbath.samplers.hamiltonian import sghmc
from heatbath.samplers.nose_hoover import sgnht
from heatbath.samplers.optax_langevin import langevin
from heatbath.samplers.overdamped import psgld, sgld

__all__ = ["Sampler", "Info", "sgld", "psgld", "langevin", "sghmc", "sgnht", "dsgld", "fsgld", "myula", "bmula", "bmumla"]
