"""The MAP, found and checked: a convergence criterion and a search that meets it.

**The criterion: the Newton decrement.** At a point x of the unconstrained space, with g the
full-data gradient of V = -log p and H its Hessian,

    lambda(x) = sqrt(g' H^-1 g).

Where H is positive definite it is the length of the Newton step H^-1 g measured in the metric
of H, i.e. in *posterior standard deviations* when H is read as the posterior precision (the
Laplace approximation): x is about lambda sds (Mahalanobis distance) from the stationary
point, and one Newton step would raise log p by about lambda^2 / 2. It is invariant under any
linear reparameterisation, so one tolerance (``TOL`` = 0.05 sd) fits every model and every
scale of the data, unlike a gradient norm (whose size grows with N and with the units of the
parameters). It is computed with at most ``MAX_HVPS`` conjugate-gradient iterations, each a
Hessian-vector product on the full data; negative curvature met on the way means the point is
not a local maximum (a saddle, or a flat or unbounded direction), and is reported as such. A
minibatch optimizer with a constant step ends in a noise ball around the mode: measured this way
(full data) the criterion says how many sds the returned point is from it.

**The search** (:func:`find_map`, several chains at once): full-batch L-BFGS (optax's, with its
zoom line search) in a ``lax.while_loop`` when the full-data gradient is cheap (N d <=
``FULL_BATCH_WORK``, or no ``batch_size``), else Adam on minibatches in segments of 2000,
4000, ... steps, checked between segments; at each check up to two Newton steps (the CG
solve the check has already made) polish a point inside the quadratic region (decrement < 1):
float32 line searches cannot resolve it further, and a minibatch optimizer's noise ball is
left in one step. In the Adam search the steps are also taken from further out (at large N
Adam's noise ball is several posterior sds wide), where CG solved a positive definite system,
and kept only where the log density rises and the decrement falls. A chain whose search ends non-finite, or whose log density is
still climbing when the budget ends (no mode: e.g. a hierarchical scale going to 0), gets its
start point back, with ``usable`` False and the reason.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from heatbath.drivers.newton_decrement import decrement, solved as _solved, verdict  # noqa: F401 - re-exported
from heatbath.kernels import tree as _tree
from heatbath.kernels.gradients import full_data_value_and_grad, minibatch_logdensity

__all__ = ["TOL", "MAX_HVPS", "FULL_BATCH_WORK", "find_map", "search", "diagnose", "decrement", "verdict",
           "unravel_of", "flat_positions", "flat_names", "chunk_rows"]

TOL = 0.05  # posterior sds (Newton decrement) below which a point counts as a mode
MAX_HVPS = 50  # conjugate-gradient iterations (Hessian-vector products) of one check
FULL_BATCH_WORK = 10_000_000  # N * d up to which the full-data gradient is cheap: L-BFGS
HVP_COST = 2.0  # a Hessian-vector product counted as this many gradients (forward over reverse)


# ----------------------------------------------------------------------------------------
# The potential V = -log p on a flat vector, over the full data (in chunks when it is large)
# ----------------------------------------------------------------------------------------
def chunk_rows(target, batch_size):
    """Rows per chunk of a full-data pass: all at once for small data or a full-batch-only
    target, else a few minibatches' worth (memory stays that of a minibatch step)."""
    if target.minibatch_error or batch_size is None or target.num_data <= 4 * batch_size:
        return None
    return 4 * batch_size


def unravel_of(target, positions):
    """flat vector -> one chain's parameter pytree."""
    one = jax.tree.map(lambda x: x[0], positions)
    return ravel_pytree(one)[1]


def flat_positions(positions):
    """Positions (leading axis chain) as a (chain, d) matrix of flat vectors."""
    return jax.vmap(lambda p: ravel_pytree(p)[0])(positions)


def _potential(target, unravel, chunk_rows):
    """(value_and_grad of V, hvp of V) on a flat x, over ``data`` (an argument, not a constant)."""

    def value_and_grad(x, data):
        lp, g = full_data_value_and_grad(target.terms, unravel(x), data, target.num_data, chunk_rows)
        return -lp, -ravel_pytree(g)[0]

    def hvp(x, v, data):
        return jax.jvp(lambda y: value_and_grad(y, data)[1], (x,), (v,))[1]

    return value_and_grad, hvp


def diagnose(target, params, *, batch_size=None, tol=TOL, max_hvps=MAX_HVPS):
    """The convergence check of one unconstrained point (a pytree without chain axis).

    Returns a dict: ``converged``, ``reason``, ``lp`` and ``grad_norm`` (full data),
    ``decrement`` (posterior sds), ``cg_iters``, ``negative_curvature``, ``tol``, ``cost``
    (per-datum gradients: one gradient and the HVPs on the full data).
    """
    positions = jax.tree.map(lambda x: jnp.asarray(x)[None], params)
    fns = _functions(target, positions, batch_size, max_hvps)
    x = flat_positions(positions)
    check = jax.device_get(fns["check"](x, target.data))
    conv, reasons = verdict(check, tol)
    out = {k: (v[0].item() if np.ndim(v[0]) == 0 else v[0]) for k, v in check.items() if k != "step"}
    out.update(converged=bool(conv[0]), reason=reasons[0], tol=float(tol),
               cost=float(target.num_data * (1 + HVP_COST * int(check["cg_iters"][0]))))
    return out


def _functions(target, positions, batch_size, max_hvps):
    """The jitted, chain-vmapped check and Newton polish (memoised on the target)."""
    unravel = unravel_of(target, positions)
    dim = int(flat_positions(positions).shape[1])
    chunk = chunk_rows(target, batch_size)
    iters = int(min(2 * dim + 2, max_hvps))  # CG in float32 may need more than d steps

    def build():
        vg, hvp = _potential(target, unravel, chunk)
        check = jax.vmap(lambda x, data: decrement(vg, hvp, x, data, iters), in_axes=(0, None))

        def polish(x, data, rounds, far):
            """The check, then up to ``rounds`` Newton steps, each kept when it lowers the
            decrement (``rounds`` = 0: the check of x). One copy of the check in the compiled
            graph: round 0 checks x itself. A step is tried from inside the quadratic region
            (decrement < 1 sd); with ``far`` also from further out, where CG solved a positive
            definite system, and then kept only when the log density rises too."""

            def body(i, carry):
                x, c = carry
                inside = c["decrement"] < 1.0
                ok = (i == 0) | ((inside | far) & ~c["negative_curvature"] & _solved(c))
                x_new = jnp.where((i == 0) | ~ok[:, None], x, x - c["step"])
                c_new = check(x_new, data)
                better = (i == 0) | (ok & jnp.isfinite(c_new["lp"]) & (c_new["decrement"] < c["decrement"])
                                     & (inside | (c_new["lp"] > c["lp"])))
                return _tree.where_leading(better, x_new, x), _tree.where_leading(better, c_new, c)

            c0 = jax.eval_shape(check, x, data)
            c0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), c0)
            return jax.lax.fori_loop(0, rounds + 1, body, (x, c0))

        polish_jit = jax.jit(polish)  # one program: rounds and far are arguments
        no, yes = np.bool_(False), np.bool_(True)
        return {"vg": vg, "hvp": hvp, "key": key, "check": lambda x, data: polish_jit(x, data, 0, no)[1],
                "polish": lambda x, data, far=False: polish_jit(x, data, 2, yes if far else no), "dim": dim}

    key = ("mapsearch", jax.tree.structure(positions), tuple((x.shape[1:], x.dtype) for x in jax.tree.leaves(positions)),
           chunk, iters)
    return target.memo(key, build)


# ----------------------------------------------------------------------------------------
# The searches
# ----------------------------------------------------------------------------------------
def _lbfgs(vg, x0, data, max_iters, tol):
    """Full-batch L-BFGS from each row of ``x0`` (vmapped ``lax.while_loop``s).

    A step that does not lower V (the zoom line search gives up and returns a step anyway) is
    rejected and the L-BFGS memory reset. Stops at the quasi-Newton decrement 0.1 tol, after
    three rejected or stalled steps in a row, or at ``max_iters``. Returns (x, lp trace,
    gradient-norm trace, iterations, gradient evaluations).
    """
    import optax
    import optax.tree_utils as otu

    opt = optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one"))

    def one(x0):
        fun = lambda x: vg(x, data)[0]  # noqa: E731
        fresh = opt.init(x0)

        def cond(c):
            k, stall, qn = c[2], c[3], c[4]
            return (k < max_iters) & (stall < 3) & (qn > 0.1 * tol)

        def body(c):
            (x, v, g), state, k, stall, _, lps, gns, evals = c
            u, new_state = opt.update(g, state, x, value=v, grad=g, value_fn=fun)
            x_new = x + u
            v_new, g_new = otu.tree_get(new_state, "value"), otu.tree_get(new_state, "grad")
            lr = otu.tree_get(new_state, "learning_rate")
            ok = jnp.isfinite(v_new) & (v_new <= v) & jnp.all(jnp.isfinite(x_new)) & jnp.all(jnp.isfinite(g_new))
            progress = v_new < v - 4 * jnp.finfo(v.dtype).eps * jnp.abs(v)
            qn = jnp.sqrt(jnp.maximum(-jnp.vdot(g, u), 0.0) / jnp.where(lr > 0, lr, 1.0))
            pick = lambda a, b: jnp.where(ok, a, b)  # noqa: E731
            point = (pick(x_new, x), pick(v_new, v), pick(g_new, g))
            state = jax.tree.map(pick, new_state, fresh)
            stall = jnp.where(ok & progress, 0, stall + 1).astype(stall.dtype)
            evals = evals + jnp.asarray(otu.tree_get(new_state, "num_linesearch_steps"), evals.dtype)
            return (point, state, k + 1, stall, jnp.where(ok & (lr > 0), qn, jnp.inf),
                    lps.at[k].set(-point[1]), gns.at[k].set(jnp.linalg.norm(point[2])), evals)

        v0, g0 = vg(x0, data)
        nan = jnp.full((max_iters,), jnp.nan, x0.dtype)
        init = ((x0, v0, g0), fresh, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                jnp.asarray(jnp.inf, x0.dtype), nan, nan, jnp.ones((), jnp.int32))
        (x, _, _), _, k, _, _, lps, gns, evals = jax.lax.while_loop(cond, body, init)
        return x, lps, gns, k, evals

    return jax.vmap(one)(x0)


def _adam_segment(target, unravel, batch_size, num_steps):
    """Adam (the default optimizer's cosine schedule over ``num_steps``) on uniform minibatches,
    vmapped over chains; returns x and the trace of minibatch lp estimates."""
    import optax

    from heatbath.drivers.optimizing import default_optimizer

    opt = default_optimizer(num_steps)
    logdensity = minibatch_logdensity(target.terms, target.num_data)
    grad = jax.value_and_grad(lambda x, batch: -logdensity(unravel(x), batch))

    def one(x, key, data):
        def step(carry, k):
            x, state = carry
            idx = jax.random.randint(k, (batch_size,), 0, target.num_data)
            v, g = grad(x, jax.tree.map(lambda a: a[idx], data))
            u, state = opt.update(g, state, x)
            return (optax.apply_updates(x, u), state), -v

        (x, _), lps = jax.lax.scan(step, (x, opt.init(x)), jax.random.split(key, num_steps))
        return x, lps

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


def find_map(target, positions, keys, batch_size=None, max_steps=None, tol=TOL, method="auto", max_hvps=MAX_HVPS):
    """Modes of the posterior from several starting points at once, each checked.

    Args:
      target: a :class:`~heatbath.models.Target`.
      positions: unconstrained starting points, a pytree with leading axis chain.
      keys: one PRNG key per chain (the minibatches of the Adam search).
      batch_size: the run's minibatch size; with N d > ``FULL_BATCH_WORK`` the search is Adam
        on minibatches of this size (None: always full-batch L-BFGS).
      max_steps: the budget: L-BFGS iterations (default 1000) or Adam steps (default 64000).
      tol: the Newton decrement (posterior sds) below which a chain has converged.
      method: ``"auto"``, ``"lbfgs"`` or ``"adam"``.
      max_hvps: the most conjugate-gradient steps of one check.

    Returns:
      (params, outcome): params like ``positions`` (a failed chain's start point), and a dict
      of per-chain numpy arrays: ``converged``, ``usable`` (False: the search failed and the
      chain got its start back), ``decrement`` (posterior sds), ``grad_norm``, ``lp`` (full
      data), ``steps``, ``cost`` (per-datum gradients), ``negative_curvature``, and the lists
      ``reason`` ("" when converged) and ``method``.
    """
    x, outcome, _ = search(target, positions, keys, batch_size, max_steps, tol, method, max_hvps)
    x = jnp.where(jnp.asarray(outcome["usable"])[:, None], x, flat_positions(positions))
    return jax.vmap(unravel_of(target, positions))(x), outcome


def search(target, positions, keys, batch_size=None, max_steps=None, tol=TOL, method="auto", max_hvps=MAX_HVPS):
    """:func:`find_map`'s search: (flat points reached (chain, d), outcome, trace), the trace a
    dict of (chain, step) arrays: ``lp`` (full data for L-BFGS, minibatch estimates for Adam)."""
    n, flat0 = target.num_data, flat_positions(positions)
    chains, dim = flat0.shape
    if method == "auto":
        method = "lbfgs" if batch_size is None or batch_size >= n or n * dim <= FULL_BATCH_WORK else "adam"
    if method not in ("lbfgs", "adam") or (method == "adam" and batch_size is None):
        raise ValueError(f"method must be 'auto', 'lbfgs' or 'adam' (with a batch_size), got {method!r}")
    fns = _functions(target, positions, batch_size, max_hvps)
    data, cost = target.data, np.zeros(chains)
    if method == "lbfgs":
        max_steps = 1000 if max_steps is None else int(max_steps)
        run = target.memo(("mapsearch-lbfgs", fns["key"], max_steps, float(tol)),
                          lambda: jax.jit(lambda x, d: _lbfgs(fns["vg"], x, d, max_steps, tol)))
        x, lps, gns, steps, evals = jax.device_get(run(flat0, data))
        cost += np.asarray(evals, np.float64) * n
        steps = np.asarray(steps, np.int64)
        rising = np.array([_still_rising(lps[i, : steps[i]]) for i in range(chains)])
        trace = {"lp": lps[:, : steps.max(initial=0)], "grad_norm": gns[:, : steps.max(initial=0)]}
    else:
        x, steps, rising, seg = flat0, np.zeros(chains, np.int64), np.zeros(chains, bool), 2000
        done, last_lp, lps = np.zeros(chains, bool), None, []
        max_steps = 64000 if max_steps is None else int(max_steps)
        while steps.max(initial=0) < max_steps and not done.all():
            seg = min(seg, max_steps - int(steps.max()))
            run = target.memo(("mapsearch-adam", fns["key"], batch_size, seg),
                              lambda: _adam_segment(target, unravel_of(target, positions), batch_size, seg))
            x_new, lp_seg = run(x, jax.vmap(lambda k: jax.random.fold_in(k, int(steps.max())))(keys), data)
            x = jnp.where(jnp.asarray(done)[:, None], x, x_new)
            lps.append(np.where(done[:, None], np.nan, np.asarray(lp_seg)))
            steps = np.where(done, steps, steps + seg)
            cost += np.where(done, 0.0, float(seg * batch_size))
            # Newton steps from Adam's noise ball: at large N its radius is several posterior sds
            # (N = 1e6, batch 1,000: 6-8 sd after 64,000 steps), outside the quadratic region.
            x_polished, check = fns["polish"](x, data, far=True)
            x = jnp.where(jnp.asarray(done)[:, None], x, x_polished)
            check = jax.device_get(check)
            cost += np.where(done, 0.0, 3 * n * (1 + HVP_COST * np.asarray(check["cg_iters"])))
            lp = np.asarray(check["lp"], np.float64)
            rising = ~done & (last_lp is not None) & (lp - (lp if last_lp is None else last_lp) > 1.0)
            last_lp = lp
            done |= verdict(check, tol)[0] | ~np.isfinite(lp)
            seg *= 2
        trace = {"lp": np.concatenate(lps, axis=1)}
    x, check = fns["polish"](jnp.asarray(x), data, far=method == "adam")
    check = jax.device_get(check)
    cost += n * (1 + HVP_COST * np.asarray(check["cg_iters"])) * 3  # the check and up to two Newton steps
    conv, reasons = verdict(check, tol)
    x = np.asarray(x)
    finite = (np.isfinite(np.asarray(check["lp"])) & np.all(np.isfinite(x), axis=1)
              & np.isfinite(np.asarray(check["grad_norm"])))
    # No mode to climb to: still rising when the budget ran out, outside the quadratic region.
    near = (np.asarray(check["decrement"]) < 1.0) & ~np.asarray(check["negative_curvature"]) & np.asarray(_solved(check))
    usable = finite & (conv | near | ~rising)
    names = flat_names(jax.tree.map(lambda a: a[0], positions))
    for i in range(chains):
        if not finite[i]:
            reasons[i] = ("the search ended at a non-finite point or gradient (no mode: the density may grow "
                          "without bound; or it overflowed where it started)")
        elif not usable[i]:
            far = names[int(np.argmax(np.abs(x[i] - np.asarray(flat0[i]))))]
            reasons[i] = (f"no mode found: the log density was still rising after {int(steps[i])} steps, with "
                          f"{far} moving most (e.g. a hierarchical scale going to 0), and {reasons[i]}")
    outcome = {
        "converged": conv, "usable": usable, "decrement": np.asarray(check["decrement"], np.float64),
        "grad_norm": np.asarray(check["grad_norm"], np.float64), "lp": np.asarray(check["lp"], np.float64),
        "steps": steps, "cost": cost, "negative_curvature": np.asarray(check["negative_curvature"]),
        "reason": reasons, "method": [method] * chains,
    }
    return jnp.asarray(x), outcome, trace


def flat_names(params) -> list:
    """The name of every coordinate of ``ravel_pytree(params)`` (e.g. ``tau``, ``w[2]``), in the
    unconstrained space."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        base = "".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) if i == 0 else
                       f".{getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))}"
                       for i, k in enumerate(path)) or "theta"
        size = int(np.prod(np.shape(leaf)))
        idx = list(np.ndindex(np.shape(leaf)))
        out += [base] if size == 1 and not np.shape(leaf) else [f"{base}[{','.join(map(str, j))}]" for j in idx]
    return out


def _still_rising(lps) -> bool:
    """The log density rose by more than 1 over the last fifth of an L-BFGS run."""
    lps = np.asarray(lps, np.float64)
    lps = lps[np.isfinite(lps)]
    if lps.size < 10:
        return False
    k = max(2, lps.size // 5)
    return bool(lps[-1] - lps[-k] > 1.0)
