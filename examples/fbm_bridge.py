"""The fractional bridge of Daems et al. (ICLR 2024), Sec. 5.1, with heatbath's neural-SDE VI.

Prior dX = dB_H on [0, 2] (theta = 0; type I Markov-approximate fBM, K = 5, gamma_max = 20,
omega on a horizon of 2), X(0) = 0, X(2) = 0 observed with noise sd 0.1. For each H the control
network is trained by ``hb.fit`` and the posterior sd of X(t) (4000 paths) is compared with the
analytic conditional sd of two Gaussian processes:

- the Markov approximation itself (what VI can reach exactly): Cov(B^(s), B^(t)) =
  sum_ij w_i w_j [c_ij(s, t) - e^{-g_i s} - e^{-g_j t} + 1] / (g_i + g_j), c_ij = e^{-g_j (t-s)}
  for s <= t (stationary OU states);
- fBM (Mandelbrot-van Ness, in the approximation's normalisation):
  Cov = V_H (s^2H + t^2H - |t - s|^2H) / 2, V_H = 1 / (Gamma(2H + 1) sin(pi H)).

Usage: python examples/fbm_bridge.py OUT.png [--steps 2000] [--hursts 0.1,0.3,...]
(the figure goes to OUT.png; the table is printed).
"""

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import heatbath as hb
from heatbath.kernels import fbm

T, DT, SD = 2.0, 0.01, 0.1


def conditional_sd(cov, ts):
    """sd of X(t) | X(T) + noise = 0, for a covariance function ``cov(s, t)``."""
    out = []
    for t in ts:
        k_tt, k_tT, k_TT = cov(t, t), cov(t, T), cov(T, T) + SD**2
        out.append(math.sqrt(max(k_tt - k_tT**2 / k_TT, 0.0)))
    return np.asarray(out)


def approx_cov(hurst):
    a = fbm.markov_fbm(hurst, kind=1, horizon=T)
    g = a.gamma
    w = np.asarray(fbm.weights(a), np.float64)
    if a.exact:
        return lambda s, t: min(s, t)
    gs = g[:, None] + g[None, :]

    def cov(s, t):
        if s > t:
            s, t = t, s
        c = np.exp(-g[None, :] * (t - s))
        m = (c - np.exp(-g[:, None] * s) - np.exp(-g[None, :] * t) + 1) / gs
        return float(w @ m @ w)

    return cov


def fbm_cov(hurst):
    v = 1.0 / (math.gamma(2 * hurst + 1) * math.sin(math.pi * hurst))
    return lambda s, t: v * 0.5 * (s ** (2 * hurst) + t ** (2 * hurst) - abs(t - s) ** (2 * hurst))


def fit(hurst, steps, seed=0):
    ctl, cp = hb.vi.sde.mlp_control(jax.random.key(seed), 1, 5 if hurst != 0.5 else 1, 3, horizon=T, width=32)
    sde = hb.vi.sde.latent_sde(lambda p, t, x, c: jnp.zeros_like(x), 1.0, span=(0, T), dt=DT, hurst=hurst, kind=1,
                               control=ctl, params={"control": cp}, likelihood=hb.vi.sde.gaussian(SD))
    opt = optax.adam(optax.cosine_decay_schedule(1e-2, steps, 0.05))
    return hb.fit(hb.models.from_latent_sde(sde, [T], [0.0]), hb.vi.sde.fbm_vi(sde, num_steps=steps, num_paths=64,
                                                                                optimizer=opt), seed=seed)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--hursts", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    args = ap.parse_args()
    hursts = [float(h) for h in args.hursts.split(",")]
    check = [0.5, 1.0, 1.5]
    rows, curves = [], []
    for h in hursts:
        t0 = time.perf_counter()
        q = fit(h, args.steps)
        bands = q.predictive(1, 4000)
        ts = bands["t"].astype(np.float64)
        sd_vi = bands["sd"][:, 0]
        sd_ma = conditional_sd(approx_cov(h), ts)
        sd_fbm = conditional_sd(fbm_cov(h), ts)
        idx = [int(round(t / DT)) for t in check]
        rows.append((h, [sd_vi[i] / sd_ma[i] for i in idx], [sd_ma[i] / sd_fbm[i] for i in idx], time.perf_counter() - t0))
        curves.append((h, ts, sd_vi, sd_ma, sd_fbm))
        print(f"H={h:.1f}  sd_VI / sd_approx at t=0.5,1,1.5: " + " ".join(f"{r:.3f}" for r in rows[-1][1])
              + "   sd_approx / sd_fBM: " + " ".join(f"{r:.3f}" for r in rows[-1][2]) + f"   ({rows[-1][3]:.0f} s)",
              flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    cols = min(n, 3)
    fig, axes = plt.subplots(math.ceil(n / cols), cols, figsize=(4 * cols, 3 * math.ceil(n / cols)), squeeze=False)
    for ax, (h, ts, a, b, c) in zip(axes.ravel(), curves):
        ax.plot(ts, a, label="VI posterior sd (4000 paths)")
        ax.plot(ts, b, "--", label="analytic, Markov approx.")
        ax.plot(ts, c, ":", label="analytic, fBM")
        ax.set_title(f"H = {h:.1f}")
        ax.set_xlabel("t")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print("figure:", args.out)


if __name__ == "__main__":
    main()
