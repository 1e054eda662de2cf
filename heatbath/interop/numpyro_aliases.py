"""The NumPyro kernel aliases ``hb.numpyro.SGLD``, ``PSGLD`` and ``SGHMC``: a heatbath sampler
wrapped in :class:`~heatbath.interop.numpyro.HeatbathKernel`."""

from __future__ import annotations

from heatbath.interop.numpyro import HeatbathKernel
from heatbath.samplers.hamiltonian import sghmc
from heatbath.samplers.overdamped import psgld, sgld

__all__ = ["SGLD", "PSGLD", "SGHMC"]


def SGLD(model, step_size=None, *, temperature=1.0, batch_size=None, gradient=None) -> HeatbathKernel:  # noqa: N802
    """SGLD as a NumPyro kernel: theta <- theta + h grad log p~(theta) + sqrt(2 h T) xi.

    Welling & Teh (ICML 2011). ``HeatbathKernel(model, hb.samplers.sgld(step_size,
    temperature, gradient=gradient), batch_size=batch_size)``; see :class:`HeatbathKernel`
    and :func:`heatbath.samplers.sgld` for the arguments. ``step_size=None`` (default): chosen when
    the kernel is initialised (see :meth:`HeatbathKernel.init`).
    """
    return HeatbathKernel(model, sgld(step_size, temperature=temperature, gradient=gradient), batch_size=batch_size)


def PSGLD(  # noqa: N802
    model,
    step_size=None,
    *,
    temperature=1.0,
    batch_size=None,
    decay: float = 0.99,
    eps: float = 1e-5,
    correction: bool = False,
    gradient=None,
    preconditioner=None,
) -> HeatbathKernel:
    """pSGLD as a NumPyro kernel (Li, Chen, Carlson & Carin, AAAI 2016).

        V <- a V + (1 - a) g^2;  G = 1 / (eps + sqrt(V));
        theta <- theta + h (G g + T Gamma) + sqrt(2 h T G) xi

    ``HeatbathKernel(model, hb.samplers.psgld(...), batch_size=batch_size)``; see
    :func:`heatbath.samplers.psgld` for the arguments.
    """
    sampler = psgld(
        step_size,
        temperature=temperature,
        decay=decay,
        eps=eps,
        correction=correction,
        gradient=gradient,
        preconditioner=preconditioner,
    )
    return HeatbathKernel(model, sampler, batch_size=batch_size)


def SGHMC(model, step_size=None, friction=None, integrator="obabo", *, batch_size=None, **kwargs) -> HeatbathKernel:  # noqa: N802
    """SGHMC with a splitting integrator as a NumPyro kernel (Chen et al. 2014; Franzese et al. 2022).

        d theta = M^-1 r dt;  dr = grad log p(theta) dt - C M^-1 r dt + sqrt(2 C T) dW,

    integrated by ``integrator`` ("obabo", "baoab", "aboba", "lie_trotter", "euler", or a
    word in A, B, O, E). ``HeatbathKernel(model, hb.samplers.sghmc(step_size, friction,
    integrator, **kwargs), batch_size=batch_size)``; see :func:`heatbath.samplers.sghmc` for
    the other arguments (``mass``, ``temperature``, ``gradient_noise``, ...). Each MCMC
    sample is one integrator step: for ``num_steps_per_sample=k`` pass ``thinning=k`` to
    ``numpyro.infer.MCMC``.
    """
    return HeatbathKernel(model, sghmc(step_size, friction, integrator, **kwargs), batch_size=batch_size)
