"""A VAE on scikit-learn's bundled digits (8x8), fitted by programmable VI with ELBO and IWAE.

The model is a NumPyro program with the decoder's weights as ``numpyro.param`` sites; the guide
an amortised Gaussian encoder. Both objectives run through ``hb.fit`` with minibatches of the
data plate (the codes z are local latent variables, minibatched with their rows). We report
the test-set IWAE bound (K = 100 particles, per image, in nats) of each fit and write a figure
of test images beside their reconstructions (the decoder's Bernoulli means at the encoder's
mean code) to the path given on the command line.

    python examples/vae_digits.py --figure /tmp/vae_digits.png [--steps 20000]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

LATENT, HIDDEN, PIXELS = 8, 128, 64


def load_digits(seed=0):
    """Binarised digits (pixel > 8 of 16), split 1,500 train / 297 test."""
    from sklearn.datasets import load_digits as _load

    x = (_load().data > 8).astype(np.float32)
    idx = np.random.default_rng(seed).permutation(len(x))
    return x[idx[:1500]], x[idx[1500:]]


def _dense(key, n_in, n_out):
    return jax.random.normal(key, (n_in, n_out)) * jnp.sqrt(1.0 / n_in), jnp.zeros((n_out,))


def init_weights(seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    e1, eb1 = _dense(k[0], PIXELS, HIDDEN)
    e2, eb2 = _dense(k[1], HIDDEN, 2 * LATENT)
    d1, db1 = _dense(k[2], LATENT, HIDDEN)
    d2, db2 = _dense(k[3], HIDDEN, PIXELS)
    return {"enc_w1": e1, "enc_b1": eb1, "enc_w2": e2, "enc_b2": eb2,
            "dec_w1": d1, "dec_b1": db1, "dec_w2": d2, "dec_b2": db2}


WEIGHTS = init_weights()


def decode(w, z):
    return jnp.tanh(z @ w["dec_w1"] + w["dec_b1"]) @ w["dec_w2"] + w["dec_b2"]


def encode(w, x):
    out = jnp.tanh(x @ w["enc_w1"] + w["enc_b1"]) @ w["enc_w2"] + w["enc_b2"]
    return out[..., :LATENT], jnp.exp(0.5 * out[..., LATENT:])


def model(x):
    w = {k: numpyro.param(k, WEIGHTS[k]) for k in ("dec_w1", "dec_b1", "dec_w2", "dec_b2")}
    with numpyro.plate("data", x.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
        numpyro.sample("x", dist.Bernoulli(logits=decode(w, z)).to_event(1), obs=x)


def guide(x):
    w = {k: numpyro.param(k, WEIGHTS[k]) for k in ("enc_w1", "enc_b1", "enc_w2", "enc_b2")}
    loc, scale = encode(w, x)
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("z", dist.Normal(loc, scale).to_event(1))


def iwae_bound(params, x, key, K=100):
    """Per-image IWAE bounds log (1/K) sum_k p(x, z_k) / q(z_k | x) (an array, one per image)."""
    loc, scale = encode(params, x)
    eps = jax.random.normal(key, (K,) + loc.shape)
    z = loc + scale * eps
    log_q = dist.Normal(loc, scale).to_event(1).log_prob(z)
    log_p = dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1).log_prob(z)
    log_p = log_p + dist.Bernoulli(logits=decode(params, z)).to_event(1).log_prob(x)
    return np.asarray(jax.nn.logsumexp(log_p - log_q, axis=0) - jnp.log(K), np.float64)


def fit(objective, x, steps, batch_size, seed=0):
    import optax

    import heatbath as hb

    method = hb.vi.programmable(objective, guide, optimizer=optax.adam(1e-3), num_steps=steps,
                                optimizer_name="adam(1e-3)")
    return hb.fit(model, method, data=(x,), batch_size=batch_size, seed=seed)


def figure(path, x_test, fits):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 10
    fig, axes = plt.subplots(1 + len(fits), n, figsize=(n, 1.1 * (1 + len(fits))))
    for j in range(n):
        axes[0, j].imshow(x_test[j].reshape(8, 8), cmap="gray_r")
    for i, (name, q) in enumerate(fits.items(), start=1):
        loc, _ = encode(q.params, x_test[:n])
        probs = jax.nn.sigmoid(decode(q.params, loc))
        for j in range(n):
            axes[i, j].imshow(np.asarray(probs[j]).reshape(8, 8), cmap="gray_r", vmin=0, vmax=1)
        axes[i, 0].set_ylabel(name, rotation=0, ha="right", va="center")
    axes[0, 0].set_ylabel("data", rotation=0, ha="right", va="center")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    from heatbath.vi import programmable as pvi

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--figure", required=True, help="where to write the reconstructions figure (PNG)")
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--k", type=int, default=5, help="IWAE particles in training")
    args = ap.parse_args()
    x_train, x_test = load_digits()
    fits = {}
    print(f"digits: {len(x_train)} train / {len(x_test)} test, {args.steps} Adam steps, batch {args.batch_size}")
    print("| objective | train time (s) | final objective (train, minibatch est.) | test IWAE bound, K=100 (nats/image) "
          "| SE over images |")
    print("|---|---:|---:|---:|---:|")
    bounds = {}
    for name, obj in (("ELBO", pvi.elbo()), (f"IWAE(K={args.k})", pvi.iwae(args.k))):
        t = time.perf_counter()
        q = fit(obj, x_train, args.steps, args.batch_size)
        t = time.perf_counter() - t
        fits[name] = q
        tail = np.mean(q.trace["objective"][-10:]) / len(x_train)
        bound = bounds[name] = iwae_bound(q.params, jnp.asarray(x_test), jax.random.key(1))
        print(f"| {name} | {t:.1f} | {tail:.2f} | {bound.mean():.2f} | {bound.std() / np.sqrt(len(bound)):.2f} |")
    (a, ea), (b, eb) = bounds.items()
    d = eb - ea  # paired over the same test images (the same key)
    print(f"{b} - {a}: {d.mean():.3f} +- {d.std() / np.sqrt(len(d)):.3f} nats/image (paired SE)")
    figure(args.figure, x_test, fits)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
