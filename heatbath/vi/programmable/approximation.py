"""What ``hb.fit`` returns for programmable VI: the fitted guide (:class:`Fitted`)."""

from __future__ import annotations

import numpy as np

import jax

from heatbath.kernels.validate import check_count, seed_key

__all__ = ["Fitted", "finalize"]


class Fitted:
    """The guide at the fitted params.

    Attributes: ``guide``, ``model``, ``params`` (constrained ``numpyro.param`` values of the
    guide and the model: ``Predictive(model, guide=q.guide, params=q.params, ...)`` works as for
    NumPyro's SVI), ``unconstrained`` (what the optimizer moved, with learned baselines),
    ``trace`` (``step``, ``objective``: the objective's estimate at each recorded step,
    ``grad_norm``, ``diverging``), ``state`` (the final method state), costs and times.
    """

    def __init__(self, program, state, trace, run):
        self.program = program
        self.guide, self.model = program.guide, program.model
        self.unconstrained = state.position
        self.params = {k: np.asarray(v) for k, v in program.constrain(state.position["params"]).items()}
        self.state = state
        self.trace = trace
        self.method_name = run.method_name
        self.num_steps = run.num_steps
        self.wall_time, self.compile_time = run.wall_time, run.compile_time
        self.observed_data = run.observed_data

    def sample(self, key, num: int, *, constrained: bool = True):
        """``num`` draws of the guide's latent sites on the full data (dict site -> (num, ...))."""
        from numpyro.infer import Predictive

        del constrained  # guide sites are drawn on their own (constrained) support
        num = check_count(num, "num", 1)
        pred = Predictive(self.guide, params=self.params, num_samples=num)
        out = pred(seed_key(key), *self.program.args, **self.program.kwargs)
        return {k: v for k, v in out.items() if k not in self.params}

    def predictive(self, key, num: int, *args, **kwargs):
        """``numpyro.infer.Predictive(model, guide=guide, params=params)`` draws (the model's
        arguments default to the fitted data's)."""
        from numpyro.infer import Predictive

        pred = Predictive(self.model, guide=self.guide, params=self.params, num_samples=check_count(num, "num", 1))
        if not args and not kwargs:
            args, kwargs = self.program.args, self.program.kwargs
        return pred(seed_key(key), *args, **kwargs)

    def to_arviz(self, num_samples: int = 1000, seed=0):
        """An ArviZ object with ``num_samples`` guide draws (one chain) and the objective trace."""
        from heatbath.diagnostics.arviz import to_arviz

        draws = self.sample(seed, num_samples)
        return to_arviz({k: np.asarray(v)[None] for k, v in draws.items()}, None, self.observed_data,
                        attrs={"inference_library": "heatbath", "method": self.method_name})

    def __repr__(self):
        last = self.trace["objective"][-1] if len(self.trace["objective"]) else float("nan")
        return f"Fitted({self.method_name}, {self.num_steps} steps, objective {last:.4g}, params {sorted(self.params)})"


def finalize(run, options):
    del options
    raise TypeError("programmable VI must be bound to a model first (hb.fit does it)")  # replaced when bound


def make_finalize(program):
    def finalize_bound(run, options):
        del options
        infos = run.infos
        trace = {"step": np.asarray(run.steps), "objective": np.asarray(infos["objective"], np.float64),
                 "grad_norm": np.asarray(infos["grad_norm"]), "diverging": np.asarray(infos["diverging"])}
        state = jax.tree.map(lambda x: x, run.final_state)
        return Fitted(program, state, trace, run)

    return finalize_bound
