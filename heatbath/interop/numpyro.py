"""heatbath samplers as NumPyro ``MCMCKernel``s.

``numpyro.infer.MCMC`` drives any heatbath :class:`~heatbath.samplers.Sampler` through
:class:`HeatbathKernel`, so NumPyro's chain methods, ``Predictive``, ``print_summary`` and
``arviz.from_numpyro`` work unchanged::

    import heatbath as hb
    from numpyro.infer import MCMC, Predictive

    kernel = hb.numpyro.SGLD(model, step_size=1e-4, batch_size=100)
    mcmc = MCMC(kernel, num_warmup=1000, num_samples=2000, num_chains=4)
    mcmc.run(jax.random.key(0), X, y)
    idata = arviz.from_numpyro(mcmc)

One call of :meth:`HeatbathKernel.sample` is one transition of ``hb.sample``'s loop (the
same function, :func:`heatbath.drivers.loop.make_step`): draw n row indices uniformly with
replacement with the state's key, estimate the gradient of the log posterior on those rows
(naive, control variates or SVRG), and apply the sampler's update, e.g. SGLD
(Welling & Teh 2011)

    theta <- theta + h [grad log p(theta) + (N/n) sum_{i in B} grad log p(x_i | theta)]
             + sqrt(2 h T) xi.

A chain started from ``MCMC.run(k, ...)`` with one chain follows exactly the draws of chain 0
of ``hb.sample(..., seed=s, num_warmup=w)`` when ``k = jax.random.fold_in(jax.random.key(s), 0)``
and ``MCMC`` has the same ``num_warmup=w`` (``hb.sample``'s default warmup is its own).

The state (:class:`HeatbathState`) keeps the unconstrained position in ``z`` (the
``sample_field``; ``postprocess_fn`` maps it to the user's space with the deterministic
sites) and the last step's diagnostics ``diverging``, ``lp`` (the log-density estimate at
the start of the step), ``step_size``, ``temperature`` and ``grad_norm``, so
``MCMC.run(..., extra_fields=("lp", "step_size"))`` collects them and ArviZ puts them in
``sample_stats``. ``diverging`` is collected by default, so ``mcmc.print_summary()`` reports
the number of divergences. Chains are never stopped or restarted here (a diverged chain goes
on from its non-finite state), and the first divergence of a run raises a RuntimeWarning, as
``hb.sample`` does.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from heatbath.drivers import centre as _centre
from heatbath.drivers import inputs, loop
from heatbath.drivers.batching import as_batching
from heatbath.drivers.cache import fingerprint
from heatbath.kernels.validate import check_int
from heatbath.models.target import Target
from heatbath.samplers.base import Sampler

__all__ = ["HeatbathKernel", "HeatbathState", "SGLD", "PSGLD", "SGHMC"]

_MAP_SEED = 2**31 - 1  # seed of the MAP search for control variates (as hb.sample's centre.MAP_KEY)


class HeatbathState(NamedTuple):
    """State of :class:`HeatbathKernel` (one chain; a leading chain axis when vectorized).

    ``z``: the unconstrained position (the MCMC sample field). ``sampler_state``: the
    sampler's state with its ``position`` left out (it lives in ``z``). ``est_state``: the
    gradient estimator's state (e.g. the control-variate centre). ``rng_key``: the key the
    next transition splits. The rest: the diagnostics of the last transition.
    """

    z: Any
    sampler_state: Any
    est_state: Any
    rng_key: jax.Array
    diverging: jax.Array
    lp: jax.Array
    step_size: jax.Array
    temperature: jax.Array
    grad_norm: jax.Array
    info: Any  # the sampler's full Info (sampler-specific fields included)


def _state(sampler_state, est_state, key, info) -> HeatbathState:
    """The kernel's state from the sampler's state (its position moved to ``z``) and an Info."""
    return HeatbathState(
        z=sampler_state.position,
        sampler_state=sampler_state._replace(position=None),
        est_state=est_state,
        rng_key=key,
        diverging=info.diverging,
        lp=info.lp,
        step_size=info.step_size,
        temperature=info.temperature,
        grad_norm=info.grad_norm,
        info=info,
    )


def _is_tracer(x) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def _eager():
    """A context in which JAX runs eagerly even inside a trace (numpyro pmaps ``init``)."""
    try:
        from jax._src.core import eval_context

        return eval_context()
    except ImportError:  # pragma: no cover - older/newer JAX without it
        return jax.ensure_compile_time_eval()


def _reporting(kernel, transition):
    """``transition`` that warns (once per run, from a host callback) when a chain diverges: the
    callback sits in a ``lax.cond`` on "a chain diverged at this step and not at the previous
    one", outside the chain vmap, so it costs nothing while the chains are finite."""

    def report(step):
        if not kernel._warned:
            kernel._warned = True
            warnings.warn(
                f"a chain of the heatbath {kernel.sampler.name} kernel diverged at step {int(step)} (non-finite "
                "position or log density; its later draws are not posterior draws): mcmc.print_summary() counts "
                "the divergences, mcmc.get_extra_fields(group_by_chain=True)['diverging'] flags them; lower the "
                "step size", RuntimeWarning, stacklevel=2)

    def step_fn(state, data_):
        new = transition(state, data_)
        newly = jnp.any(jnp.logical_and(new.diverging, jnp.logical_not(state.diverging)))
        step = jnp.max(getattr(new.sampler_state, "step", jnp.int32(-1)))
        jax.lax.cond(newly, lambda s: jax.debug.callback(report, s), lambda s: None, step)
        return new

    return step_fn


def _check_batch_size(batch_size):
    return None if batch_size is None else check_int(batch_size, "batch_size", minimum=1)


class HeatbathKernel(MCMCKernel):
    """Any heatbath sampler as a ``numpyro.infer.MCMCKernel``.

    One ``sample`` call is one stochastic-gradient transition: with the state's key, draw a
    minibatch B of n rows uniformly with replacement, estimate g ~ grad log p(theta | x)
    (``sampler.gradient``: naive (N/n) scaling, control variates of Baker et al. 2019, SVRG)
    and apply ``sampler.step``, e.g. SGLD's theta <- theta + h g + sqrt(2 h T) xi
    (Welling & Teh 2011) or pSGLD's RMSprop-preconditioned update (Li et al. 2016).

    Args:
      model: a NumPyro model (its arguments are passed to ``MCMC.run``), or a heatbath
        :class:`~heatbath.models.Target` (then ``MCMC.run`` takes no model arguments).
      sampler: a :class:`~heatbath.samplers.Sampler`, e.g. ``hb.samplers.sgld(1e-4)``.
      batch_size: minibatch size n (rows of the model's data plate, drawn with replacement
        inside each step); None for full-batch gradients.

    ``MCMC.run(..., init_params=...)`` takes values in the unconstrained space (as for
    NumPyro's HMC); sites left out start at the default, uniform(-2, 2) unconstrained.
    Control variates without a centre find the MAP once, at the first ``init``, with
    ``hb.optimize`` (the same search ``hb.sample`` runs). Bad input (a model without a data
    plate when ``batch_size`` is given, discrete latent sites, a batch larger than the data)
    raises the same ``ValueError`` as ``hb.sample``, from ``MCMC.run`` before compiling.
    """

    sample_field = "z"

    def __init__(self, model, sampler: Sampler, *, batch_size: Optional[int] = None):
        if not isinstance(model, Target) and not callable(model):
            raise TypeError(
                "HeatbathKernel needs a NumPyro model (a callable) or a heatbath Target, "
                f"got {type(model).__name__}"
            )
        if not isinstance(sampler, Sampler):
            raise TypeError(
                "sampler must be a heatbath Sampler (e.g. hb.samplers.sgld(step_size=1e-4)), "
                f"got {type(sampler).__name__}"
            )
        self._model = model
        self._sampler = sampler
        self._batch_size = _check_batch_size(batch_size)
        self._setup_cache = None  # (key of the model arguments, target, estimator, one_step)
        self._sample_fn = None
        # With MCMC(..., jit_model_args=True) NumPyro compiles `sample` once, with the model's
        # arguments traced, and reuses it across runs; the non-data arguments (a prior scale)
        # are baked into that compiled step. The digest of those it was traced with:
        self._traced_nondata = None
        self._nondata_key = None
        self._warned = False  # this run's divergence was reported (_reporting)
        self.tuning = None  # what an automatic step size chose (set by init)

    # -- numpyro's interface -------------------------------------------------------------
    @property
    def model(self):
        """The NumPyro model (None when the kernel was built on a Target)."""
        return None if isinstance(self._model, Target) else self._model

    @property
    def sampler(self) -> Sampler:
        return self._sampler

    @property
    def batch_size(self) -> Optional[int]:
        return self._batch_size

    @property
    def default_fields(self):
        return ("z", "diverging")

    def get_diagnostics_str(self, state):
        return "lp={:.4g}, step size={:.2e}".format(float(np.mean(state.lp)), float(np.mean(state.step_size)))

    def postprocess_fn(self, model_args, model_kwargs):
        """z (unconstrained) -> the constrained sites and deterministic sites of the model."""
        model_kwargs = {} if model_kwargs is None else model_kwargs
        target = self._setup(model_args, model_kwargs)[0]
        data = self._data_from_args(target, model_args, model_kwargs)

        def postprocess(z):
            return target.constrain_fn(z, data)

        return postprocess

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        """The initial state of one chain (or of all chains when ``rng_key`` is a batch of keys).

        The chain key k gives the start ``fold_in(k, 0)`` (when ``init_params`` is None), the
        sampler's init key ``fold_in(k, 1)`` and the transition keys from ``fold_in(k, 2)``:
        the same derivation as ``hb.sample``.

        A sampler with an automatic step size (``hb.numpyro.SGLD(model)``) is tuned here, as
        ``hb.sample`` tunes it: the chains start at the MAP (unless ``init_params`` is given),
        ``num_warmup // 2`` steps of heatbath's tuning warmup run (measuring the curvature and
        the gradient noise; :mod:`heatbath.drivers.autotune`), and the chains start NumPyro's
        warmup where they ended, with the chosen step size (``kernel.tuning`` reports it).
        """
        model_kwargs = {} if model_kwargs is None else model_kwargs
        target, estimator, one_step = self._setup(model_args, model_kwargs)
        data = self._data_from_args(target, model_args, model_kwargs)
        vectorized = not is_prng_key(rng_key)
        keys = rng_key if vectorized else rng_key[None]
        num_chains = keys.shape[0]
        if vectorized and estimator.refresh_every:
            raise ValueError(
                f"the {estimator.name} gradient estimator re-centres every {estimator.refresh_every} steps; "
                "under NumPyro's chain_method='vectorized' that conditional would run at every step (a "
                "full-data gradient per step). Use chain_method='sequential' or 'parallel', or "
                "hb.sample(..., num_chains=...), which keeps it a conditional."
            )
        sampler = self._sampler
        if sampler.auto:
            sampler, one_step, positions = self._tune(target, estimator, keys, init_params, vectorized, num_chains,
                                                      num_warmup, data)
        else:
            positions = self._initial_positions(target, keys, init_params, vectorized, num_chains)
        concrete = not (_is_tracer(keys) or _is_tracer(positions) or _is_tracer(data))
        if concrete:
            inputs.check_init_finite(target, positions, data)

        def transition(state, data_):
            sampler_state = state.sampler_state._replace(position=state.z)
            shared = state.est_state if estimator.shared else ()
            # Divergences are only flagged here (the driver's default on_divergence="flag" for
            # this one_step): the chain is always alive.
            carry = (sampler_state, state.est_state, state.rng_key, jnp.ones((), bool), ())
            # The chain's own step count: unbatched here unless NumPyro vectorizes the chains,
            # which init refuses for estimators that refresh (SVRG).
            carry, info = one_step(carry, shared, data_, sampler_state.step)
            sampler_state, est_state, key = carry[:3]
            return _state(sampler_state, est_state, key, info)

        def init_one(position, key, data_):
            sampler_state = sampler.init(position, jax.random.fold_in(key, 1))
            est_state = estimator.init(position, data_)
            rng_key = jax.random.fold_in(key, 2)
            # The diagnostics before the first step: zeros shaped like one transition's Info.
            carry = (sampler_state, est_state, rng_key, jnp.ones((), bool), ())
            shared = est_state if estimator.shared else ()
            info_shape = jax.eval_shape(lambda c: one_step(c, shared, data_, sampler_state.step)[1], carry)
            info = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), info_shape)
            return _state(sampler_state, est_state, rng_key, info)

        states = jax.jit(jax.vmap(init_one, in_axes=(0, 0, None)))(positions, keys, data)
        self._warned = False
        if vectorized:
            self._sample_fn = _reporting(self, jax.vmap(transition, in_axes=(0, None)))
            return states
        self._sample_fn = _reporting(self, transition)
        return jax.tree.map(lambda x: x[0], states)

    def _tune(self, target, estimator, keys, init_params, vectorized, num_chains, num_warmup, data):
        """The automatic hyperparameters, chosen with hb.sample's tuning warmup (concrete inputs only)."""
        from heatbath.drivers import autotune, initialize
        from heatbath.drivers.sampling import estimator_state

        if _is_tracer(keys) or _is_tracer(data):
            raise ValueError(
                f"{self._sampler.name} has an automatic {' and '.join(self._sampler.auto)}, chosen by a warmup run "
                "when the kernel is initialised; under chain_method='parallel' (or a traced init) that cannot run: "
                "use chain_method='sequential' or 'vectorized', or give the step size"
            )
        if init_params is None:
            positions, _ = initialize.resolve(target, "map", loop.fold_each(keys, 0), num_chains, self._batch_size)
        else:
            positions = self._initial_positions(target, keys, init_params, vectorized, num_chains)
        inputs.check_init_finite(target, positions, data)
        est_state = estimator_state(estimator, positions, data)
        tuned, states, _, info, _, _, _ = autotune.warmup(
            target, self._sampler, estimator, est_state, positions, keys, batch_size=self._batch_size,
            batching=as_batching("uniform"), num_warmup=max(int(num_warmup), 4), progress_bar=False)
        self.tuning = info
        batcher = as_batching("uniform").build(self._batch_size, target.num_data, 0)
        return tuned, loop.make_step(tuned, estimator, batcher, target), states.position

    def sample(self, state, model_args, model_kwargs):
        """One transition: minibatch indices, gradient estimate, sampler step."""
        target, _, _ = self._setup(model_args, model_kwargs or {})
        if self._traced_nondata is None and _is_tracer((model_args, model_kwargs)):
            self._traced_nondata = self._nondata_key
        data = self._data_from_args(target, model_args, model_kwargs or {})
        return self._sample_fn(state, data)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_sample_fn"] = None
        state["_setup_cache"] = None
        return state

    # -- helpers -----------------------------------------------------------------------
    def _args_key(self, model_args, model_kwargs):
        """A digest of the arguments' contents (:func:`heatbath.drivers.cache.fingerprint`), or None."""
        if _is_tracer((model_args, model_kwargs)):
            return None
        return fingerprint(self._model, tuple(model_args), dict(model_kwargs))

    def _target_for(self, model_args, model_kwargs) -> Target:
        if isinstance(self._model, Target):
            if model_args or model_kwargs:
                raise TypeError(
                    "this kernel was built on a heatbath Target, which holds its data: call "
                    "MCMC.run(rng_key) without model arguments"
                )
            return self._model
        return inputs.numpyro_target(self._model, tuple(model_args), dict(model_kwargs))

    def _setup(self, model_args, model_kwargs):
        """(target, estimator, one_step) for these model arguments, built once and cached."""
        key = self._args_key(model_args, model_kwargs)
        cache = self._setup_cache
        if cache is not None and ((key is not None and cache[0] == key) or _is_tracer((model_args, model_kwargs))):
            return cache[1:]
        # Eagerly, even when MCMC calls init under a transform (pmap of "parallel" chains):
        # the target's data and the control-variate centre are concrete arrays.
        with _eager():
            out = self._build(model_args, model_kwargs)
        self._setup_cache = (key,) + out
        self._nondata_key = self._nondata_digest(out[0], model_args, model_kwargs)
        if self._traced_nondata is not None and self._nondata_key != self._traced_nondata:
            raise ValueError(
                "this kernel's step was compiled by MCMC(..., jit_model_args=True) with other non-data model "
                "arguments (they are baked into the compiled step, which NumPyro reuses across runs): create a new "
                "MCMC and kernel for the new arguments, or use jit_model_args=False"
            )
        return out

    def _nondata_digest(self, target: Target, model_args, model_kwargs):
        """A digest of the model arguments that are not the target's data (the ones a compiled
        step bakes in); None when they cannot be digested."""
        data_names = set(target.data) if isinstance(target.data, dict) else set()
        args = tuple(None if f"arg{i}" in data_names else a for i, a in enumerate(model_args))
        kwargs = {k: v for k, v in model_kwargs.items() if k not in data_names}
        return fingerprint(self._model, args, kwargs)

    def _build(self, model_args, model_kwargs):
        target = self._target_for(model_args, model_kwargs)
        batch_size = self._batch_size
        inputs.check_target_for_gradients(target, batch_size)
        spec = self._sampler.gradient
        if getattr(spec, "needs_centre", False) and spec.centre is None:
            # The centre search of hb.sample, from the default start of the key _MAP_SEED.
            keys = jax.random.fold_in(jax.random.key(_MAP_SEED), 0)[None]
            start = inputs.initial_positions(target, None, loop.fold_each(keys, 0), 1)
            centre, _, _ = _centre.search(target, spec.map_steps, start, keys, batch_size)
            spec = spec.with_centre(centre)
        estimator = spec.build(target.terms, target.num_data)
        batcher = as_batching("uniform").build(batch_size, target.num_data, 0)
        one_step = loop.make_step(self._sampler, estimator, batcher, target)
        return target, estimator, one_step

    @staticmethod
    def _data_from_args(target: Target, model_args, model_kwargs):
        """The target's data pytree, taken from the model arguments of this call.

        The NumPyro bridge names the data ``arg{i}`` (positional) or by keyword; taking the
        arrays from the call (not from the first trace) keeps ``jit_model_args=True`` right.
        """
        if not isinstance(target.data, dict):
            return target.data
        out = {}
        for name, leaf in target.data.items():
            if name in model_kwargs:
                out[name] = jnp.asarray(model_kwargs[name])
            elif name.startswith("arg") and name[3:].isdecimal() and int(name[3:]) < len(model_args):
                out[name] = jnp.asarray(model_args[int(name[3:])])
            else:
                out[name] = leaf
        return out

    def _initial_positions(self, target: Target, keys, init_params, vectorized: bool, num_chains: int):
        """Unconstrained starts with a leading chain axis."""
        default = jax.vmap(lambda k: target.init_params(jax.random.fold_in(k, 0)))
        if init_params is None:
            return default(keys)
        try:
            example = target.example_params()
        except ValueError:
            example = None
        if example is None:
            values = init_params
            return values if vectorized else jax.tree.map(lambda v: jnp.asarray(v)[None], values)
        if isinstance(example, dict):
            if not isinstance(init_params, dict):
                raise TypeError(
                    "init_params must be a dict site name -> unconstrained value, got "
                    f"{type(init_params).__name__}"
                )
            unknown = set(init_params) - set(example)
            if unknown:
                raise ValueError(
                    f"unknown site(s) in init_params: {sorted(unknown)}; latent sites are {sorted(example)}"
                )
            start = default(keys) if set(init_params) != set(example) else {}
            out = {}
            for name, e in example.items():
                if name not in init_params:
                    out[name] = start[name]
                    continue
                v = jnp.asarray(init_params[name], e.dtype)
                want = ((num_chains,) if vectorized else ()) + e.shape
                if v.shape != want:
                    raise ValueError(
                        f"init_params[{name!r}] has shape {v.shape}, expected {want} (unconstrained"
                        f"{', with a leading chain axis' if vectorized else ''})"
                    )
                out[name] = v if vectorized else v[None]
            return out
        if jax.tree.structure(init_params) != jax.tree.structure(example):
            raise ValueError(
                f"init_params has tree structure {jax.tree.structure(init_params)}, the target's "
                f"parameters have {jax.tree.structure(example)}"
            )
        return jax.tree.map(
            lambda v, e: jnp.asarray(v, e.dtype) if vectorized else jnp.asarray(v, e.dtype)[None],
            init_params,
            example,
        )


# The aliases live in their own module (which imports HeatbathKernel from this one).
from heatbath.interop.numpyro_aliases import PSGLD, SGHMC, SGLD  # noqa: E402
