"""A Bayesian neural network sampled with each SGHMC integrator and with SGLD, at equal gradient budget.

    /work/venv/bin/python examples/bnn_integrators.py                    # plot in examples/out/
    /work/venv/bin/python examples/bnn_integrators.py --out /tmp/plots --steps 20000

Data: scikit-learn's bundled digits (1,797 8x8 images, 10 classes), 80% train / 20% test.
Model: one hidden layer of 50 tanh units, softmax output, N(0, 1) priors on every weight and
bias (3,760 parameters), written in plain JAX and turned into a target with
``hb.models.from_logdensity``. Every method gets the same budget: ``--steps`` minibatch
gradients of ``--batch`` rows (one gradient per step for every integrator, see
:mod:`heatbath.kernels.integrators`), one chain from the same start.

Methods: SGLD (Welling & Teh 2011) and SGHMC (Chen et al. 2014) with the integrators
``euler`` (Chen et al.), ``lie_trotter`` (Franzese et al. 2022), ``obabo``, ``baoab``,
``aboba``, all with the same step size h and friction C. Predictions are the posterior
predictive p(y | x) = mean over kept draws of softmax(f_theta(x)), the draws of the last 80%
of the run (one every ``--thinning`` steps). Reported on the test set: the mean log
predictive probability of the true label (test log-likelihood), the accuracy, and their
curves against epochs for the running ensemble.

The step sizes are a small hand search on this data (SGLD h in {1e-4, 3e-4, 1e-3}; SGHMC
(h, C) in {(0.01, 1), (0.02, 2), (0.03, 10)}), not tuned per integrator.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import jax
import jax.numpy as jnp

import heatbath as hb

HIDDEN = 50


def load(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return train_test_split(X, y.astype(np.int32), test_size=0.2, random_state=seed)


def init_params(key, d_in: int, d_out: int):
    k1, k2 = jax.random.split(key)
    return {
        "W1": jax.random.normal(k1, (d_in, HIDDEN)) / np.sqrt(d_in),
        "b1": jnp.zeros(HIDDEN),
        "W2": jax.random.normal(k2, (HIDDEN, d_out)) / np.sqrt(HIDDEN),
        "b2": jnp.zeros(d_out),
    }


def forward(p, x):
    return jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def logprior(p):
    return sum(-0.5 * jnp.sum(v**2) for v in jax.tree.leaves(p))


def loglik(p, batch):
    x, t = batch
    logp = jax.nn.log_softmax(forward(p, x))
    return jnp.sum(jnp.take_along_axis(logp, t[:, None], axis=1))


def metrics_along_the_run(draws, X_test, y_test, burn: int):
    """Test log-likelihood and accuracy of the running ensemble of draws[burn:k+1], for each k."""
    probs = jax.vmap(lambda p: jax.nn.softmax(forward(p, X_test)))(draws)  # (draws, test, classes)
    kept = np.asarray(probs[burn:], np.float64)
    running = np.cumsum(kept, axis=0) / np.arange(1, kept.shape[0] + 1)[:, None, None]
    true = running[:, np.arange(len(y_test)), y_test]
    ll = np.log(np.maximum(true, 1e-300)).mean(axis=1)
    acc = (running.argmax(axis=2) == y_test[None]).mean(axis=1)
    return ll, acc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join("examples", "out"), help="folder for the plot")
    ap.add_argument("--steps", type=int, default=10_000, help="gradient evaluations per method")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--thinning", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sgld-step", type=float, default=3e-4)
    ap.add_argument("--step", type=float, default=0.03, help="SGHMC step size h")
    ap.add_argument("--friction", type=float, default=10.0, help="SGHMC friction C")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.steps % args.thinning:
        ap.error("--steps must be a multiple of --thinning")

    X_tr, X_te, y_tr, y_te = load(args.seed)
    n_classes = int(y_tr.max()) + 1
    target = hb.models.from_logdensity(logprior, loglik, (X_tr, y_tr),
                                       params=init_params(jax.random.key(0), X_tr.shape[1], n_classes))
    start = init_params(jax.random.key(args.seed + 1), X_tr.shape[1], n_classes)
    methods = {"sgld": hb.samplers.sgld(args.sgld_step)}
    for scheme in ("euler", "lie_trotter", "obabo", "baoab", "aboba"):
        methods[f"sghmc-{scheme}"] = hb.samplers.sghmc(args.step, args.friction, scheme)

    num_draws = args.steps // args.thinning
    burn = num_draws // 5
    epochs = (burn + 1 + np.arange(num_draws - burn)) * args.thinning * args.batch / len(y_tr)
    curves, rows = {}, []
    print(f"digits: {len(y_tr)} train / {len(y_te)} test rows, {hb.kernels.tree.size(start)} parameters; "
          f"{args.steps} gradients of {args.batch} rows ({args.steps * args.batch / len(y_tr):.0f} epochs) per method")
    for name, sampler in methods.items():
        t0 = time.perf_counter()
        res = hb.sample(target, sampler, batch_size=args.batch, num_samples=num_draws, thinning=args.thinning,
                        num_chains=1, init=start, seed=args.seed, progress_bar=False, num_warmup=0)
        draws = {k: v[0] for k, v in res.samples.items()}
        ll, acc = metrics_along_the_run(draws, X_te, y_te, burn)
        curves[name] = (ll, acc)
        diverged = bool(res.stats["diverging"].any())
        rows.append((name, ll[-1], acc[-1], res.data_passes, time.perf_counter() - t0, diverged))
    print(f"{'method':20s} {'test log-lik':>12s} {'accuracy':>9s} {'data passes':>11s} {'seconds':>8s}")
    for name, ll, acc, passes, secs, diverged in rows:
        flag = "  (diverged)" if diverged else ""
        print(f"{name:20s} {ll:12.4f} {acc:9.4f} {passes:11.1f} {secs:8.1f}{flag}")

    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name, (ll, acc) in curves.items():
            style = "k--" if name == "sgld" else "-"
            axes[0].plot(epochs, ll, style, label=name)
            axes[1].plot(epochs, acc, style, label=name)
        axes[0].set(xlabel="epochs", ylabel="test log-likelihood (running ensemble)", title="digits BNN, 50 hidden")
        axes[1].set(xlabel="epochs", ylabel="test accuracy (running ensemble)")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "bnn_integrators.png")
        fig.savefig(path, dpi=120)
        print(f"plot: {path}")
    return rows


if __name__ == "__main__":
    main()
