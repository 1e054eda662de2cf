"""Programmable VI overhead: ms per minibatch gradient of the digits VAE (examples/vae_digits.py).

Contenders, each a jitted lax.scan of S steps on fresh keys and minibatches (so the per-call
dispatch is amortised and nothing is hoisted out of the loop), timed interleaved in one
process (benchmarks/common.py: min over repeats, per-round paired ratios):

- "programmable ELBO grad": hb.vi.programmable's estimator of the ELBO gradient
  (``gradient_estimator(elbo(), model, guide).value_and_grad``) on a minibatch, N/n scaled;
- "hand-coded ELBO grad": the same single-sample reparameterised ELBO written by hand in JAX
  (encoder, reparameterisation, Bernoulli decoder, N/n scaling), ``jax.value_and_grad``;
- "hand-coded ELBO grad (A/A)": an independent copy of it (the timing noise floor);
- "programmable step (grad + adam)": the gradient plus an optax Adam update, and
- "numpyro SVI Trace_ELBO update": ``numpyro.infer.SVI(model, guide, Adam, Trace_ELBO()).update``;
- "programmable step (numpyro.optim.Adam)": the gradient plus the optimizer SVI uses
  (``hb.vi.programmable(..., optimizer=numpyro.optim.Adam(1e-3))``).

Goals (issue 12): programmable / hand-coded <= 1.1x, programmable step / numpyro SVI update
<= 1.0x, batch sizes 64 to 1024.

    python benchmarks/bench_programmable_vi.py [--repeats 7] [--steps 50]
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from common import interleaved, machine_info, markdown_table, paired_ratio  # noqa: E402

import vae_digits as vae  # noqa: E402
from heatbath.vi import programmable as pvi  # noqa: E402


def hand_elbo(params, key, xb, num_data):
    loc, scale = vae.encode(params, xb)
    z = loc + scale * jax.random.normal(key, loc.shape)
    log_q = dist.Normal(loc, scale).to_event(1).log_prob(z)
    log_p = dist.Normal(0.0, 1.0).expand([vae.LATENT]).to_event(1).log_prob(z)
    log_p = log_p + dist.Bernoulli(logits=vae.decode(params, z)).to_event(1).log_prob(xb)
    return (num_data / xb.shape[0]) * jnp.sum(log_p - log_q)


def build(batch, steps, x):
    N = x.shape[0]
    xj = jnp.asarray(x)
    est = pvi.gradient_estimator(pvi.elbo(), vae.model, vae.guide, xj)
    params = est.init_params()
    weights = dict(params["params"])

    def rows(key):
        return xj[jax.random.randint(key, (batch,), 0, N)]

    def prog_loop(p, key):
        def body(acc, k):
            k1, k2 = jax.random.split(k)
            v, g = est.value_and_grad(p, k2, {"arg0": rows(k1)})
            return acc + v + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(g)), None

        return jax.lax.scan(body, 0.0, jax.random.split(key, steps))[0]

    def make_hand():
        vg = jax.value_and_grad(hand_elbo)

        def hand_loop(w, key):
            def body(acc, k):
                k1, k2 = jax.random.split(k)
                v, g = vg(w, k2, rows(k1), N)
                return acc + v + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(g)), None

            return jax.lax.scan(body, 0.0, jax.random.split(key, steps))[0]

        return jax.jit(hand_loop)

    opt = optax.adam(1e-3)

    def prog_step_loop(p, key):
        def body(carry, k):
            p, s = carry
            k1, k2 = jax.random.split(k)
            _, g = est.value_and_grad(p, k2, {"arg0": rows(k1)})
            u, s = opt.update(jax.tree.map(jnp.negative, g), s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(body, (p, opt.init(p)), jax.random.split(key, steps))[0][0]

    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import Adam

    np_adam = Adam(1e-3)

    def prog_np_step_loop(p, key):  # what hb.vi.programmable(..., optimizer=numpyro.optim.Adam(1e-3)) steps
        def body(s, k):
            k1, k2 = jax.random.split(k)
            _, g = est.value_and_grad(np_adam.get_params(s), k2, {"arg0": rows(k1)})
            return np_adam.update(jax.tree.map(jnp.negative, g), s), None

        return np_adam.get_params(jax.lax.scan(body, np_adam.init(p), jax.random.split(key, steps))[0])

    svi = SVI(vae.model, vae.guide, Adam(1e-3), Trace_ELBO())
    svi_state0 = svi.init(jax.random.key(0), xj[:batch])

    def svi_loop(state, key):
        def body(s, k):
            s, _ = svi.update(s, rows(k))
            return s, None

        return jax.lax.scan(body, state, jax.random.split(key, steps))[0]

    prog_j, step_j, svi_j = jax.jit(prog_loop), jax.jit(prog_step_loop), jax.jit(svi_loop)
    np_step_j = jax.jit(prog_np_step_loop)
    hand_j, hand_aa = make_hand(), make_hand()
    keys = iter(jax.random.split(jax.random.key(batch), 10_000))
    return {
        "programmable ELBO grad": lambda: prog_j(params, next(keys)),
        "hand-coded ELBO grad": lambda: hand_j(weights, next(keys)),
        "hand-coded ELBO grad (A/A)": lambda: hand_aa(weights, next(keys)),
        "programmable step (grad + adam)": lambda: step_j(params, next(keys)),
        "numpyro SVI Trace_ELBO update": lambda: svi_j(svi_state0, next(keys)),
        "programmable step (numpyro.optim.Adam)": lambda: np_step_j(params, next(keys)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batches", default="64,256,1024")
    args = ap.parse_args()
    x_train, _ = vae.load_digits()
    x = np.concatenate([x_train] * 2)  # 3,000 rows so that batch 1024 is a minibatch
    print(machine_info())
    table = []
    for b in [int(v) for v in args.batches.split(",")]:
        print(f"\n## batch {b}: {args.steps} steps per call, {args.repeats} interleaved repeats")
        t = interleaved(build(b, args.steps, x), repeats=args.repeats)
        ms = {k: 1e3 * v.best / args.steps for k, v in t.items()}
        r_hand = paired_ratio(t, "programmable ELBO grad", "hand-coded ELBO grad")[0]
        r_aa = paired_ratio(t, "hand-coded ELBO grad (A/A)", "hand-coded ELBO grad")[0]
        r_svi = paired_ratio(t, "programmable step (grad + adam)", "numpyro SVI Trace_ELBO update")[0]
        r_np = paired_ratio(t, "programmable step (numpyro.optim.Adam)", "numpyro SVI Trace_ELBO update")[0]
        table.append([b, f"{ms['programmable ELBO grad']:.3f}", f"{ms['hand-coded ELBO grad']:.3f}",
                      f"{r_hand:.2f}x", f"{r_aa:.2f}x", f"{ms['programmable step (grad + adam)']:.3f}",
                      f"{ms['numpyro SVI Trace_ELBO update']:.3f}", f"{r_svi:.2f}x",
                      f"{ms['programmable step (numpyro.optim.Adam)']:.3f}", f"{r_np:.2f}x"])
    print()
    print(markdown_table(["batch", "programmable grad (ms)", "hand-coded grad (ms)", "ratio (goal <= 1.1)",
                          "A/A ratio", "programmable step, optax.adam (ms)", "NumPyro SVI update (ms)",
                          "ratio (goal <= 1.0)", "programmable step, numpyro.optim.Adam (ms)",
                          "ratio (goal <= 1.0)"], table))


if __name__ == "__main__":
    main()
