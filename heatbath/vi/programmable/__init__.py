"""Programmable variational inference on NumPyro models (Becker et al., PLDI 2024: genjax.vi).

Objectives are programs: ``objective(ctx) -> scalar`` written with the primitives of
:mod:`.context` (sample the guide or the model, log densities at a trace, particles and
expectations, :func:`marginal` with :func:`sir` for auxiliary-variable guides); each random
choice picks its gradient estimator (:mod:`.estimators`: reparam, reinforce with or without a
baseline, enum, mvd), and :mod:`.surrogate` turns the program into an unbiased gradient
estimator (a surrogate loss; the module argues the choice against the paper's ADEV).

    import heatbath as hb, optax
    from heatbath.vi import programmable as pvi

    q = hb.fit(model, hb.vi.programmable(pvi.iwae(5), guide, optimizer=optax.adam(1e-3),
                                         num_steps=2000), data=(x,), batch_size=128)
    q.params, q.sample(key, 1000), q.to_arviz(1000), q.trace["objective"]
    numpyro.infer.Predictive(model, guide=q.guide, params=q.params, num_samples=100)

Without ``hb.fit``: ``gradient_estimator(objective, model, guide, *args)`` is the estimator as
a plain JAX function.

The package itself is callable: ``hb.vi.programmable(...)`` is :func:`.method.programmable`,
and ``hb.vi.programmable.elbo()`` etc. are its primitives and objectives.
"""

import sys as _sys
import types as _types

from heatbath.vi.programmable.approximation import Fitted
from heatbath.vi.programmable.context import Context
from heatbath.vi.programmable.estimators import Estimator, enum, estimate, mvd, reinforce, reparam
from heatbath.vi.programmable.marginal import Marginal, marginal, sir
from heatbath.vi.programmable.method import programmable
from heatbath.vi.programmable.objectives import diwhvi, elbo, hvi, iwae, iwhvi, log_weight, renyi, rws
from heatbath.vi.programmable.program import Program, Trace
from heatbath.vi.programmable.transform import ObjectiveEstimator, gradient_estimator

__all__ = ["programmable", "gradient_estimator", "ObjectiveEstimator", "Fitted", "Context", "Program", "Trace",
           "Estimator", "reparam", "reinforce", "enum", "mvd", "estimate", "marginal", "sir", "Marginal",
           "elbo", "iwae", "renyi", "hvi", "iwhvi", "diwhvi", "rws", "log_weight"]


class _CallablePackage(_types.ModuleType):
    """``hb.vi.programmable(objective, guide, ...)`` builds the VI method; attributes are the package's."""

    def __call__(self, objective, guide, **kwargs):
        return programmable(objective, guide, **kwargs)


_sys.modules[__name__].__class__ = _CallablePackage
