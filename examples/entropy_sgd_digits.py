"""Entropy-SGD and Langevin averaging vs SGD on a small neural network (scikit-learn's digits).

A 64-32-10 tanh MLP with a N(0, 1) prior on the weights, trained on 1437 of the 1797 8x8
digit images (scikit-learn's bundled copy), tested on the other 360. Every method is a
heatbath Sampler run by ``hb.optimize`` on minibatches of 32, with the same budget of
minibatch gradients:

- SGD: ``sgld(h, temperature=0.0)``.
- Entropy-SGD (Chaudhari et al. 2017): ``hb.optim.entropy_sgd`` -- L inner SGLD steps on the
  coupled density log p~(theta') - gamma |theta' - theta|^2 / 2 at temperature T, then
  theta <- theta + eta gamma (mu - theta).
- SWA (Izmailov et al. 2018): ``hb.optim.averaged(sgld(h, 0.0), start)``, SGD's iterates averaged
  over the second half of the run.
- Langevin averaging: ``hb.optim.averaged(sgld(h, T), start)``, the iterates of SGLD at a
  temperature T averaged over the second half (the mean of p^(1/T) near the mode).

Reported: test accuracy and NLL, and the flatness of the training loss (mean cross-entropy)
at the final parameters: the Hessian trace (Hutchinson, 200 probes) and its top eigenvalue
(Lanczos, 40 steps). The figure shows the training loss along a random direction (scaled per
layer to the layer's norm) through each solution, and the bars.

    /work/venv/bin/python examples/entropy_sgd_digits.py [--out entropy_sgd_digits.png] [--steps 20000] [--seeds 3]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import heatbath as hb


def load():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    return train_test_split(X, y, test_size=360, random_state=0, stratify=y)


def init_params(key, sizes=(64, 32, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"W": jax.random.normal(k, (m, n)) / np.sqrt(m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]


def logits(params, X):
    h = X
    for layer in params[:-1]:
        h = jnp.tanh(h @ layer["W"] + layer["b"])
    return h @ params[-1]["W"] + params[-1]["b"]


def loglik_rows(params, X, y):
    return jnp.take_along_axis(jax.nn.log_softmax(logits(params, X)), y[:, None], axis=1)[:, 0]


def make_target(Xtr, ytr, example):
    def logprior(p):
        return -0.5 * sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(p))

    def loglik(p, batch):
        return jnp.sum(loglik_rows(p, batch[0], batch[1]))

    return hb.models.from_logdensity(logprior, loglik, (Xtr, ytr), params=example)


def evaluate(params, Xtr, ytr, Xte, yte, key):
    def train_loss(p):  # mean cross-entropy on the training set (the landscape whose flatness we measure)
        return -jnp.mean(loglik_rows(p, Xtr, ytr))

    acc = float(jnp.mean(jnp.argmax(logits(params, Xte), axis=1) == yte))
    nll = float(-jnp.mean(loglik_rows(params, Xte, yte)))
    k1, k2 = jax.random.split(key)
    trace, trace_se = hb.optim.hessian_trace(train_loss, params, k1, num_probes=200)
    top = hb.optim.hessian_top_eigenvalue(train_loss, params, k2, num_iters=40)
    return dict(test_acc=acc, test_nll=nll, train_loss=float(train_loss(params)), hessian_trace=float(trace),
                hessian_trace_se=float(trace_se), top_eigenvalue=float(top))


def profile(params, Xtr, ytr, key, radii):
    """Training loss along one random direction d, each layer's d scaled to the layer's norm."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    d = [jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)]
    d = [di * jnp.linalg.norm(leaf) / (jnp.linalg.norm(di) + 1e-12) for di, leaf in zip(d, leaves)]
    out = []
    for r in radii:
        p = jax.tree.unflatten(treedef, [leaf + r * di for leaf, di in zip(leaves, d)])
        out.append(float(-jnp.mean(loglik_rows(p, Xtr, ytr))))
    return np.array(out)


def methods(num_steps, n_train):
    """The contenders, in heatbath's scale: log p~ sums the N likelihood terms, so a learning
    rate lr on the mean loss is a step size h = lr / N.

    Entropy-SGD as in the paper's regime: a small thermal noise (T = 1e-3 here, the paper's
    eps = 1e-4 on a mean loss is T = N eps^2 ~ 1e-5), L = 20 inner steps with an exponential
    average beta = 0.75, a coupling gamma = 100 (local width sqrt(T / gamma) ~ 3e-3 plus the
    minibatch noise), inner steps 4x SGD's (the coupling stabilises them) and eta gamma = 1
    (theta <- mu). Same number of minibatch gradients for every method.
    """
    h = 0.05 / n_train  # lr 0.05 on the mean loss
    half = num_steps // 2
    gamma = 100.0
    return {
        "SGD": hb.samplers.sgld(h, temperature=0.0),
        "Entropy-SGD": hb.optim.entropy_sgd(
            step_size=1.0 / gamma, gamma=gamma, inner_step_size=4 * h, num_inner=20, temperature=1e-3,
            mean_decay=0.75),
        "SWA (SGD averaged)": hb.optim.averaged(hb.samplers.sgld(h, temperature=0.0), start=half),
        "Langevin averaging (T = 1)": hb.optim.averaged(hb.samplers.sgld(h, temperature=1.0), start=half),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="entropy_sgd_digits.png")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..seeds-1 (init and minibatches)")
    args = parser.parse_args()

    Xtr, Xte, ytr, yte = load()
    radii = np.linspace(-1.0, 1.0, 41)
    runs, profiles = {}, {}
    for seed in range(args.seeds):
        example = init_params(jax.random.key(seed))
        target = make_target(Xtr, ytr, example)
        for name, sampler in methods(args.steps, len(ytr)).items():
            t0 = time.perf_counter()
            res = hb.optimize(target, sampler, batch_size=32, num_steps=args.steps, init=example, seed=seed)
            ev = evaluate(res.params, Xtr, ytr, Xte, yte, jax.random.key(1))
            ev["seconds"] = time.perf_counter() - t0
            runs.setdefault(name, []).append(ev)
            if seed == 0:
                profiles[name] = profile(res.params, Xtr, ytr, jax.random.key(2), radii)
            print(f"seed {seed} {name:28s} " + ", ".join(f"{k} {v:.4g}" for k, v in ev.items()), flush=True)

    def fmt(name, key, digits):
        vals = np.array([ev[key] for ev in runs[name]])
        return f"{vals.mean():.{digits}f}" + (f" +- {vals.std(ddof=1):.{digits}f}" if len(vals) > 1 else "")

    results = {name: {k: float(np.mean([ev[k] for ev in evs])) for k in evs[0]} for name, evs in runs.items()}
    print()
    print(f"{args.seeds} seed(s), {args.steps} minibatch gradients (batch 32) per run; mean +- sd over seeds")
    print()
    print("| method | test accuracy | test NLL | train loss | Hessian trace (Hutchinson) | top eigenvalue (Lanczos) |")
    print("|---|---|---|---|---|---|")
    for name in runs:
        print(f"| {name} | {fmt(name, 'test_acc', 3)} | {fmt(name, 'test_nll', 3)} | {fmt(name, 'train_loss', 4)} | "
              f"{fmt(name, 'hessian_trace', 2)} | {fmt(name, 'top_eigenvalue', 3)} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, prof in profiles.items():
        axes[0].plot(radii, prof, label=name)
    axes[0].set(xlabel="distance along a random direction (x layer norm)", ylabel="training loss (mean NLL)",
                title="loss profile through each solution", yscale="log")
    axes[0].legend(fontsize=8)
    names = list(results)
    xs = np.arange(len(names))
    axes[1].bar(xs, [results[n]["hessian_trace"] for n in names],
                yerr=[2 * results[n]["hessian_trace_se"] for n in names], color="C1")  # 2 Hutchinson se
    axes[1].set_xticks(xs, [n.replace(" (", "\n(") for n in names], fontsize=8)
    axes[1].set(ylabel="Hessian trace of the training loss", title="flatness (lower is flatter; bars: 2 Hutchinson se)")
    axes[2].bar(xs, [results[n]["test_acc"] for n in names], color="C2")
    axes[2].set_xticks(xs, [n.replace(" (", "\n(") for n in names], fontsize=8)
    lo = min(results[n]["test_acc"] for n in names)
    axes[2].set(ylabel="test accuracy", title="test accuracy (360 digits)", ylim=(max(0.0, lo - 0.05), 1.0))
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
