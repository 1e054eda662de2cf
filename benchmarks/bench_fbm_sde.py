"""Training-step time of heatbath's neural-SDE VI against the paper's official JAX code
(Daems et al., ICLR 2024, github.com/VideoNeuralSDE/MAFBM) on its fOU bridge experiment.

The experiment (their experiments/bridge/main.py): prior dX = -theta X dt + dB_H (theta = 0,
H = 0.7, type I, K = 5, gamma_max = 20, omega optimised on a horizon of 6), X(0) = 0, X(2)
observed at 0 with sd 0.1, 200 steps of dt = 0.01, a control MLP 8 -> 1000 -> 1000 -> 1 (tanh)
of (sin t, cos t, x, Y), 32 paths per step, Adam(1e-3).

Their code is NOT in this repository. Fetch and export it (any way that gives the files):

    # in a heatbath session: the `fetch` tool on github:VideoNeuralSDE/MAFBM gives a git dir
    git --git-dir=/work/.mirror/VideoNeuralSDE+MAFBM/repo archive HEAD sde | (mkdir -p /tmp/mafbm && tar -x -C /tmp/mafbm)
    # elsewhere: git clone https://github.com/VideoNeuralSDE/MAFBM /tmp/mafbm

then run ``python benchmarks/bench_fbm_sde.py --mafbm /tmp/mafbm``. Their
``sde/jax/markov_approximation.py`` (omega_optimized_1, gamma_by_gamma_max, solve_vector,
solve_diffrax) is imported from that copy and runs unchanged (it needs Diffrax: ``pip install
heatbath[sde-bench]``). Their ``sde/jax/models.py`` and the experiment script import Flax and
Distrax (and seaborn, tqdm), which are not installed here; the few lines of
``FractionalSDE.__call__`` they need (omega(H), the stationary Y(0) draw, the call to the
solver) are restated below as ``TheirModel``, with their Flax MLP replaced by the same
8-1000-1000-1 tanh network in plain JAX (the same arithmetic). Their training loop is timed
as written (jitted loss and gradient, optax's update outside jit) and as a fully jitted step.

Timings are interleaved (A B A B ...), best of ``--repeats`` blocks of ``--steps`` steps, in one
process; heatbath's time is ``hb.fit`` on the cached compiled loop (its second call), divided by
the steps. Output: one line per variant and the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import heatbath as hb

H, THETA, K, GAMMA_MAX, HORIZON, SIGMA, T, NSTEPS, PATHS, WIDTH = 0.7, 0.0, 5, 20.0, 6.0, 0.1, 2.0, 200, 32, 1000
DT = T / NSTEPS


def mlp_params(key):
    return hb.vi.sde.mlp_init(key, [1 * (K + 1) + 2, WIDTH, WIDTH, 1], zero_last=True)


def control_apply(p, t, x, y):
    t = jnp.asarray([t])
    return hb.vi.sde.mlp_apply(p, jnp.concatenate([jnp.sin(t), jnp.cos(t), x, y.reshape(-1)]))


def load_theirs(root):
    path = os.path.join(root, "sde", "jax", "markov_approximation.py")
    if not os.path.exists(path):
        sys.exit(f"their code is not at {path}: fetch and export it (see this script's docstring)")
    spec = importlib.util.spec_from_file_location("mafbm_markov_approximation", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class TheirModel:
    """FractionalSDE.__call__ of their models.py for type I, fixed H, restated (see docstring)."""

    def __init__(self, ma):
        self.ma = ma
        self.gamma = ma.gamma_by_gamma_max(K, GAMMA_MAX)
        self.num_k, self.num_latents = K, 1
        self.omega = ma.omega_optimized_1(self.gamma, H, HORIZON)

    def b(self, params, t, x, args):
        return -THETA * x

    def s(self, params, t, x, args):
        return jnp.array([1.0])

    def u(self, params, t, x, y, args):
        return control_apply(params["u"], t, x, y)

    def __call__(self, params, key, x0, ts, dt, solver="euler"):
        keys = jax.random.split(key, 4)
        cov = 1 / (self.gamma[None, :] + self.gamma[:, None])
        y0 = jax.random.multivariate_normal(keys[2], jnp.zeros((self.num_latents, self.num_k)), cov)
        if solver == "euler":
            num_steps = NSTEPS  # their int(jnp.ceil((ts[-1] - ts[0]) / dt)): ts is traced under jit in JAX 0.10
            ts_, xs_, log_path = self.ma.solve_vector(params, self, self.omega, x0, y0, ts[0], num_steps, dt, keys[3], None)
            xs = jax.vmap(jnp.interp, in_axes=(None, None, 1), out_axes=1)(ts, ts_, xs_)
        else:
            xs, log_path = self.ma.solve_diffrax(params, self, self.omega, x0, y0, ts, dt, keys[3], solver, None)
        return xs, log_path

    # solve_vector is jitted with the model as a static argument: hashable by identity
    __hash__ = object.__hash__


def their_step_fns(model, solver):
    x0 = jnp.array([0.0])

    def loss_fn(params, key):
        xs, kl = model(params, key, x0, jnp.array([0.0, T]), DT, solver)
        return (0.5 * xs[-1, 0] ** 2 / SIGMA**2).sum() + kl.sum()

    def batched(params, key):
        return jax.vmap(loss_fn, in_axes=(None, 0))(params, jax.random.split(key, PATHS)).mean()

    opt = optax.adam(1e-3)
    loss_grad = jax.jit(jax.value_and_grad(batched))

    @jax.jit
    def full_step(params, opt_state, key):
        loss, g = jax.value_and_grad(batched)(params, key)
        up, opt_state = opt.update(g, opt_state)
        return optax.apply_updates(params, up), opt_state, loss

    return opt, loss_grad, full_step


def time_theirs_as_written(opt, loss_grad, params, steps):
    opt_state = opt.init(params)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    for _ in range(steps):  # their main.py loop (tqdm removed)
        key, sub = jax.random.split(key)
        loss, grads = loss_grad(params, sub)
        updates, opt_state = opt.update(grads, opt_state)
        params = optax.apply_updates(params, updates)
    jax.block_until_ready(params)
    return (time.perf_counter() - t0) / steps


def time_theirs_jitted(opt, full_step, params, steps):
    opt_state = opt.init(params)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        key, sub = jax.random.split(key)
        params, opt_state, loss = full_step(params, opt_state, sub)
    jax.block_until_ready(params)
    return (time.perf_counter() - t0) / steps


def heatbath_fit(steps):
    ctl = lambda p, t, z, c: control_apply(p, t, z[:1], z[1:])  # noqa: E731
    sde = hb.vi.sde.latent_sde(lambda p, t, x, c: -THETA * x, 1.0, span=(0, T), dt=DT, hurst=H, kind=1,
                               horizon=HORIZON, control=ctl, context=hb.vi.sde.no_context,
                               params={"control": mlp_params(jax.random.key(1))},
                               likelihood=hb.vi.sde.gaussian(SIGMA))
    target = hb.models.from_latent_sde(sde, [T], [0.0])
    method = hb.vi.sde.fbm_vi(sde, num_steps=steps, num_paths=PATHS, learning_rate=1e-3)

    def run():
        t0 = time.perf_counter()
        q = hb.fit(target, method, seed=0, trace_every=steps)
        jax.block_until_ready(q.params)
        return (time.perf_counter() - t0) / steps

    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mafbm", default="/tmp/mafbm", help="the exported copy of VideoNeuralSDE/MAFBM")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--diffrax", action="store_true", help="also time their Diffrax StratonovichMilstein solve")
    args = ap.parse_args()
    ma = load_theirs(args.mafbm)
    model = TheirModel(ma)
    params = {"u": mlp_params(jax.random.key(1))}
    opt, loss_grad, full_step = their_step_fns(model, "euler")
    ours = heatbath_fit(args.steps)
    variants = {
        "heatbath fbm_vi (hb.fit, Euler)": ours,
        "MAFBM as written (Euler solve_vector)": lambda: time_theirs_as_written(opt, loss_grad, params, args.steps),
        "MAFBM fully jitted step (Euler)": lambda: time_theirs_jitted(opt, full_step, params, args.steps),
    }
    if args.diffrax:
        import diffrax

        opt_d, loss_grad_d, _ = their_step_fns(model, diffrax.StratonovichMilstein())
        variants["MAFBM as written (Diffrax StratonovichMilstein)"] = (
            lambda: time_theirs_as_written(opt_d, loss_grad_d, params, args.steps))
    for fn in variants.values():  # compile and warm up
        fn()
    best = {k: float("inf") for k in variants}
    for _ in range(args.repeats):
        for k, fn in variants.items():
            best[k] = min(best[k], fn())
    base = best["heatbath fbm_vi (hb.fit, Euler)"]
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cpus; {args.steps} steps x "
          f"{args.repeats} blocks, best block")
    for k, v in best.items():
        print(f"  {k:52s} {1e3 * v:9.2f} ms/step   heatbath / this = {base / v:.2f}x")


if __name__ == "__main__":
    main()
