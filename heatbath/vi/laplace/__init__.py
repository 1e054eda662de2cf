"""The Laplace approximation at the MAP, as a VI method run by ``hb.fit``; SWAG from
``keep="moments"`` deviations. See :func:`laplace` and :func:`swag`."""

from heatbath.vi.laplace.approximation import Laplace
from heatbath.vi.laplace.method import laplace
from heatbath.vi.laplace.swag import SWAG, swag

__all__ = ["laplace", "Laplace", "swag", "SWAG"]
