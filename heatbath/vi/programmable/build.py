"""Building a :class:`~.program.Program` from a NumPyro model, a guide and their arguments.

One prior run of the model and the guide (seed 0, before anything is compiled) finds

- the ``numpyro.param`` sites of both, with their initial values and constraints (the optimizer
  moves u = T^{-1}(value), T = ``biject_to(constraint)``);
- the data plate(s): a plate with a user ``subsample_size`` below its size, else the plates
  that hold an observed site and whose size N is the leading length of an array argument; the
  data arguments are the arrays with leading length N (positional ``"arg<i>"`` or keyword).
  A minibatch is their rows, and the plate then scales its sites by N/n (NumPyro's own
  subsample scaling), so local latent variables in the data plate (a VAE's codes) are
  minibatched with their rows, in the model and in the guide;
- the deepest plate nesting (for enumerating a model site).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.distributions import biject_to, constraints

from heatbath.vi.programmable.program import Program

__all__ = ["build_program", "data_layout"]


def _trace(fn, args, kwargs, params=None):
    m = handlers.seed(fn, 0)
    if params:
        m = handlers.substitute(m, data=params)
    with handlers.block():
        return handlers.trace(m).get_trace(*args, **kwargs)


def _is_array(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array)) and np.ndim(x) >= 1


def data_layout(model_trace, guide_trace, args, kwargs):
    """(row argument keys, row plate names, N) or ((), frozenset(), None) when there is no data plate."""
    plates = {}
    for tr in (model_trace, guide_trace):
        for name, site in tr.items():
            if site["type"] == "plate":
                plates[name] = site
    observed_plates = set()
    for name, site in model_trace.items():
        if site["type"] == "sample" and site.get("is_observed"):
            observed_plates.update(f.name for f in site["cond_indep_stack"])
    inputs = [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    lengths = {int(np.shape(a)[0]) for _, a in inputs if _is_array(a)}
    user = {n for n, s in plates.items() if s["args"][1] is not None and s["args"][1] < s["args"][0]}
    if user:
        rows = user
    else:
        rows = {n for n in observed_plates if n in plates and int(plates[n]["args"][0]) in lengths}
    if not rows:
        return (), frozenset(), None
    sizes = {int(plates[n]["args"][0]) for n in rows}
    if len(sizes) > 1:
        raise ValueError(f"data plates {sorted(rows)} have different sizes {sorted(sizes)}: programmable VI "
                         "minibatches one data set (one N)")
    (num,) = sizes
    keys = tuple(k for k, a in inputs if _is_array(a) and int(np.shape(a)[0]) == num)
    return keys, frozenset(rows), num


def build_program(model, guide, args=(), kwargs=None, *, estimators: Optional[dict] = None,
                  minibatch: bool = True) -> Program:
    """A :class:`Program` (see the module docstring); ``minibatch=False`` skips the data layout."""
    if not callable(model) or not callable(guide):
        raise TypeError("programmable VI needs a NumPyro model and a guide (callables)")
    kwargs = dict(kwargs or {})
    try:
        guide_trace = _trace(guide, args, kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise ValueError(f"the guide failed when run on the model's arguments: {type(err).__name__}: {err}") from err
    guide_params = {n: s["value"] for n, s in guide_trace.items() if s["type"] == "param"}
    latent = {n: s["value"] for n, s in guide_trace.items() if s["type"] == "sample" and not s.get("is_observed")}
    try:
        model_trace = _trace(handlers.substitute(model, data=latent), args, kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise ValueError(f"the model failed when run on its arguments: {type(err).__name__}: {err}") from err
    constraints_, init = {}, {}
    for tr in (guide_trace, model_trace):
        for name, site in tr.items():
            if site["type"] != "param" or name in init:
                continue
            c = site["kwargs"].get("constraint", constraints.real)
            constraints_[name] = c
            value = jnp.asarray(site["value"])
            if not jnp.issubdtype(value.dtype, jnp.floating):
                value = value.astype(jnp.result_type(float))
            init[name] = biject_to(c).inv(value)
    del guide_params
    nesting = 0
    for tr in (guide_trace, model_trace):
        for site in tr.values():
            if site["type"] == "sample":
                for f in site["cond_indep_stack"]:
                    if f.dim is not None:
                        nesting = max(nesting, -f.dim)
    row_keys, row_plates, num = data_layout(model_trace, guide_trace, args, kwargs) if minibatch else ((), frozenset(), None)
    model_latent = tuple(n for n, s in model_trace.items() if s["type"] == "sample" and not s.get("is_observed"))
    observed = {n: np.asarray(s["value"]) for n, s in model_trace.items()
                if s["type"] == "sample" and s.get("is_observed")}
    return Program(model, guide, args, kwargs, row_keys=row_keys, row_plates=row_plates, num_data=num,
                   estimators=estimators, max_plate_nesting=nesting, param_constraints=constraints_, param_init=init,
                   model_latent=model_latent, observed=observed)
