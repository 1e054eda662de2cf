"""The Bayesian deep learning scoreboard: every method on one Bayesian MLP, scored on held-out
data against a NUTS reference predictive (Izmailov et al. 2021's agreement and total variation,
plus accuracy, NLL, Brier and ECE; for regression the 2-Wasserstein distance to the reference's
predictive, RMSE, NLL and the calibration error of central intervals).

Data (``--data``): scikit-learn's bundled breast cancer set (569 rows, 30 features, 2 classes;
the default) or digits (1797 rows, 8x8 images as 64 features, 10 classes), standardised with the
training rows' mean and sd (sd 1 for a column constant on them: digits has all-zero pixels),
split ``--n-train`` train / the rest test with a fixed permutation. ``--data moons``: scikit-learn's
two interleaved half-moons with label noise, ``make_moons(1000, noise=0.3, random_state=0)``
(generated, the same 1000 rows for every seed; 2 features, 2 overlapping classes; default 100
train / 900 test, H = 50: few rows and a wide layer, where a point estimate overfits). Model: the MLP D-H-K (tanh)
of ``heatbath.models.network`` (D features, H = ``--hidden``, K classes) with N(0, 1/fan_in)
priors on weights, N(0, 1) on biases, a categorical likelihood; ``--prior-sd S`` puts N(0, S^2)
on every weight and bias instead (Izmailov et al. 2021 use S^2 = 1/5, ``--prior-sd 0.447``).

Regression (``--data diabetes``: 442 rows, 10 features, a real target; default 300 train / 142
test, H = 16): the targets are standardised with the training rows' mean and sd too (every number
is in those units), the MLP D-H-1 has a Normal likelihood with a learned noise sd sigma
(a ``noise_sd`` site, HalfNormal(1) prior). Each method's predictive at x is scored as the
Gaussian with its mean and variance: mean E f(x; theta), variance Var f(x; theta) + E sigma^2
over the method's draws (Laplace: the linearised f ~ N(f*, J Sigma J') and E sigma^2 under q;
the MAP: N(f*, sigma*^2)). Default step sizes are smaller than for classification (``STEPS``;
the classification ones diverged), mean-field VI starts from covariance 0.01 I. Columns: W2/sd (mean over test points of the 2-Wasserstein distance
to the NUTS predictive, in units of its sd), RMSE, NLL, the 90% interval's coverage and the
calibration error (mean |coverage - nominal| of central intervals at 0.1, ..., 0.9). The
Laplace rows use the exact Hessian there (the GGN of ``hb.vi.laplace`` takes a fixed sigma).

Reference: NumPyro NUTS (``--nuts-chains`` chains of ``--nuts-warmup`` + ``--nuts-samples``).
Its own Monte Carlo error is reported two ways: the agreement and TV between the predictives
of its two halves of chains (what any method can at best be told apart from the reference by)
and the MCSE of its predictive probabilities (ArviZ, per test point and class; mean and max).

Methods, all at the same budget of per-datum gradient evaluations (``--epochs`` passes over the
training data, split over 4 chains / members where a method has several; minibatch 50):
SGLD, cyclical SGLD (cSG-MCMC), SGHMC (and SGHMC at a cold temperature, ``--cold``), SWAG (SGD iterates kept as keep="moments" moments and
deviations, sampled), the Laplace approximation at the MAP (last-layer full GGN and diagonal GGN,
linearised probit predictive), mean-field Gaussian VI (FB-GVI, diagonal covariance), a deep
ensemble (4 chains of SGD: SGLD at T = 0 from prior draws) and the MAP (Adam, ``hb.optimize``).
Cyclical SGLD: ``--cycles`` cosine cycles from ``--h-csgld``, the noise off for the first
``--exploration`` of each cycle (default 0.8; moons: h0 1e-2 and 0.5, ``DATA_STEPS``).
``--only "cyclical SGLD,SGHMC"`` runs only those methods (the MAP and NUTS always run).
The table counts each method's measured gradient evaluations (``grad_evals`` of its result,
MAP searches and curvature excluded where noted). ``--paired`` adds each method's NLL and ECE
(regression: calibration error) minus the MAP's on the same test points, with the paired
standard error over test points (NLL) and a bootstrap standard error over test points (ECE,
1000 resamples).

    python benchmarks/bdl_scoreboard.py                   # the README table (a few minutes, 2 cores)
    python benchmarks/bdl_scoreboard.py --figure bdl.png  # and reliability diagrams
    python benchmarks/bdl_scoreboard.py --n-train 100 --hidden 16   # fewer rows, a wider network
    python benchmarks/bdl_scoreboard.py --data digits --n-train 500 --hidden 16   # 10 classes
    python benchmarks/bdl_scoreboard.py --prior-sd 0.447 --paired   # Izmailov et al.'s prior; vs the MAP
    python benchmarks/bdl_scoreboard.py --data diabetes --paired   # regression, 10-16-1
    python benchmarks/bdl_scoreboard.py --data moons --paired   # noisy overlapping classes, 2-50-2 on 100 rows
    python benchmarks/bdl_scoreboard.py --data diabetes --seeds 0,1,2,3,4 --jobs 2   # 5 splits, pooled
    python benchmarks/bdl_scoreboard.py --data moons --seeds 10,11,12 --only "cyclical SGLD" \
        --h-csgld 3e-3 --exploration 0.5 --cycles 10   # one method's setting, against the MAP

``--seed`` sets the train/test split and the methods' keys; ``--seeds`` runs several and pools
each method's paired differences against the MAP over them (independent splits: SE = sd over
seeds / sqrt(number of seeds)).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import heatbath as hb
from heatbath.diagnostics import bdl_metrics as M
from heatbath.diagnostics.predictive_mean import predictive_moments
from heatbath.kernels import schedules
from heatbath.models.network import network_model

BATCH = 50
CHAINS = 4


DATASETS = {"breast_cancer": "breast cancer", "digits": "digits", "diabetes": "diabetes",
            "moons": "two moons (noise 0.3)"}  # --data -> printed
REGRESSION = ("diabetes",)
DEFAULTS = {"breast_cancer": (400, 8), "digits": (400, 8), "diabetes": (300, 16),
            "moons": (100, 50)}  # (--n-train, --hidden)
# step sizes when not given: a Normal likelihood at sigma ~ 0.7 is ~10x as curved as a logistic one
STEPS = {"classification": dict(h_sgld=2e-4, h_sghmc=1e-2, h_csgld=1e-3, h_swag=2e-4),
         "regression": dict(h_sgld=5e-5, h_sghmc=3e-3, h_csgld=1e-4, h_swag=5e-5)}
# per-data-set overrides of STEPS (and of cyclical SGLD's exploration fraction, default 0.8).
# moons: h0 = 1e-2 with exploration 0.5, chosen out of h0 in {1e-3, 3e-3, 1e-2} x exploration in
# {0.8, 0.5} x cycles in {4, 10} on the selection splits --seeds 10,11,12 (pooled NLL - MAP).
# At 1e-3 / 0.8 the sampling phase's steps are under 1e-4, the draws stayed near SGD points and
# lost to the MAP; at 1e-2 / 0.5 the noise is on from h = 5e-3 down (TV to NUTS 3-4x the MAP's).
DATA_STEPS = {"moons": dict(h_csgld=1e-2, exploration=0.5)}
# the methods --only can pick (the MAP and the NUTS reference always run: the paired differences need them)
METHODS = ("SGLD", "SGHMC", "SGHMC cold", "cyclical SGLD", "SWAG", "deep ensemble", "Laplace last-layer full",
           "Laplace diag", "mean-field VI")


def load(data="breast_cancer", seed=0, n_train=400):
    """(X_train, y_train, X_test, y_test): a fixed permutation, the first n_train rows for
    training, features standardised with the training rows' mean and sd (sd 1 where it is 0);
    regression targets (float32) standardised with the training rows' mean and sd too."""
    import sklearn.datasets

    if data not in DATASETS:
        raise ValueError(f"data must be one of {sorted(DATASETS)}, got {data!r}")
    if data == "moons":  # generated with a fixed random_state: the same rows for every seed
        X, y = sklearn.datasets.make_moons(n_samples=1000, noise=0.3, random_state=0)
    else:
        X, y = getattr(sklearn.datasets, f"load_{data}")(return_X_y=True)
    if not 0 < n_train < len(y):
        raise ValueError(f"n_train must lie in 1..{len(y) - 1} ({data} has {len(y)} rows), got {n_train}")
    perm = np.random.default_rng(seed).permutation(len(y))
    X, y = X[perm], y[perm]
    mu, sd = X[:n_train].mean(0), X[:n_train].std(0)
    sd = np.where(sd > 0, sd, 1.0)  # columns constant on the training rows (digits' blank pixels)
    X = ((X - mu) / sd).astype(np.float32)
    if data in REGRESSION:
        y = ((y - y[:n_train].mean()) / y[:n_train].std()).astype(np.float32)
    else:
        y = y.astype(np.int32)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def make_net(d_in, hidden, classes=2, prior_sd=None, regression=False):
    """The MLP; prior N(0, prior_sd^2) on every weight and bias, or by default N(0, 1/fan_in) on
    weights and N(0, 1) on biases. ``regression``: one output, a Normal likelihood with a learned
    noise sd (HalfNormal(1) prior; ``classes`` is ignored)."""
    params = {"l1": {"w": jnp.zeros((hidden, d_in)), "b": jnp.zeros(hidden)},
              "l2": {"w": jnp.zeros((classes, hidden)), "b": jnp.zeros(classes)}}

    def apply(p, x):
        return p["l2"]["w"] @ jnp.tanh(p["l1"]["w"] @ x + p["l1"]["b"]) + p["l2"]["b"]

    def scale(path, leaf):
        return 1.0 / np.sqrt(leaf.shape[-1]) if leaf.ndim == 2 else 1.0

    prior_scale = scale if prior_sd is None else prior_sd
    if regression:
        import numpyro.distributions as dist

        params["l2"] = {"w": jnp.zeros((1, hidden)), "b": jnp.zeros(1)}
        return network_model(apply, params, prior_scale=prior_scale, likelihood="normal",
                             noise_scale=dist.HalfNormal(1.0))
    return network_model(apply, params, prior_scale=prior_scale)


def gaussian_predictive(source, bn, X, **kw):
    """(mean, var) of a regression predictive: E f(x) and Var f(x) + E sigma^2 over the draws of
    ``source`` (a Result, an approximation with ``num_draws=``, or a dict of draws)."""
    def f_and_noise(draw, x):
        f = bn.predict(draw, x)[:, 0]
        return jnp.stack([f, jnp.broadcast_to(bn.noise_sd(draw) ** 2, f.shape)], axis=1)

    mo = predictive_moments(source, f_and_noise, X, probabilities=False, **kw)
    return mo.mean[:, 0], mo.var[:, 0] + mo.mean[:, 1]


def laplace_regression(q, bn, X, num_draws=400):
    """(mean, var) of the linearised Laplace predictive: f ~ N(f*, J Sigma J') at the MAP theta*
    (J the Jacobian of f in the approximation's coordinates), plus E sigma^2 under q."""
    theta, idx = jnp.asarray(q.mean_flat), jnp.asarray(q.index)

    def f_sub(z):
        return bn.logits(q.unravel(theta.at[idx].set(z)), X)[:, 0]

    z0 = theta[idx]
    J = np.asarray(jax.jit(jax.jacfwd(f_sub))(z0), np.float64)  # (n, m)
    S = np.diag(q.variance_sub) if q.structure == "diag" else q.cov_sub
    var_f = np.einsum("nm,ml,nl->n", J, S, J)
    noise_var = np.mean(np.asarray(q.sample(1, num_draws)[bn.noise_site], np.float64) ** 2)
    return np.asarray(f_sub(z0), np.float64), var_f + noise_var


def paired_vs(p, p_ref, y, num_bins=10, num_boot=1000, seed=0):
    """(NLL difference, its paired SE, ECE difference, its bootstrap SE) of predictive p minus
    p_ref on the same test points y."""
    def point_nll(q):
        return -np.log(np.maximum(q[np.arange(len(y)), y], np.finfo(np.float64).tiny))

    dn = point_nll(p) - point_nll(p_ref)
    boot = np.random.default_rng(seed).integers(0, len(y), (num_boot, len(y)))
    de = [M.ece(p[i], y[i], num_bins) - M.ece(p_ref[i], y[i], num_bins) for i in boot]
    ece_diff = M.ece(p, y, num_bins) - M.ece(p_ref, y, num_bins)
    return dn.mean(), dn.std(ddof=1) / np.sqrt(len(y)), ece_diff, np.std(de, ddof=1)


def paired_vs_regression(pred, pred_ref, y, num_boot=1000, seed=0):
    """(NLL difference, its paired SE, calibration error difference, its bootstrap SE) of the
    Gaussian predictive pred = (mean, var) minus pred_ref on the same test points y."""
    dn = M.gaussian_nll(*pred, y, pointwise=True) - M.gaussian_nll(*pred_ref, y, pointwise=True)
    boot = np.random.default_rng(seed).integers(0, len(y), (num_boot, len(y)))

    def ce(p, i=slice(None)):
        return M.regression_calibration_error(p[0][i], p[1][i], y[i])

    de = [ce(pred, i) - ce(pred_ref, i) for i in boot]
    return dn.mean(), dn.std(ddof=1) / np.sqrt(len(y)), ce(pred) - ce(pred_ref), np.std(de, ddof=1)


def nuts_reference(bn, Xtr, ytr, Xte, args):
    from numpyro.infer import MCMC, NUTS

    t0 = time.perf_counter()
    mcmc = MCMC(NUTS(bn.model), num_warmup=args.nuts_warmup, num_samples=args.nuts_samples,
                num_chains=args.nuts_chains, chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.key(args.seed), Xtr, ytr, extra_fields=("num_steps",))
    wall = time.perf_counter() - t0
    s = mcmc.get_samples(group_by_chain=True)
    steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"]).sum()
    per_draw = jax.jit(jax.vmap(jax.vmap(lambda d: bn.predict(d, Xte))))
    sites = bn.sites + ((bn.noise_site,) if bn.noise_site else ())
    p = np.asarray(per_draw({k: s[k] for k in sites}), np.float64)  # (chain, draw, n, K)
    half = args.nuts_chains // 2
    import arviz as az

    mcse = np.asarray(az.mcse(az.convert_to_dataset({"p": p}))["p"])  # (n, K): every point and class
    info = {"wall_s": wall, "leapfrog_per_chain": steps / args.nuts_chains,
            "grad_evals_total": float(steps) * len(ytr)}  # sampling phase only (warmup not counted)
    if bn.noise_site:  # regression: Gaussian predictives (mean, var), MCSE of E f(x) in reference sds
        f, s2 = p[..., 0], np.asarray(s[bn.noise_site], np.float64)[..., None] ** 2

        def moments(c):
            return f[c].mean((0, 1)), f[c].var((0, 1)) + s2[c].mean()

        ref = moments(slice(None))
        info.update(halves_w2=M.gaussian_w2(*moments(slice(None, half)), *moments(slice(half, None))),
                    mcse_mean=float((mcse[:, 0] / np.sqrt(ref[1])).mean()),
                    mcse_max=float((mcse[:, 0] / np.sqrt(ref[1])).max()))
        return ref, info
    ref = p.mean((0, 1))
    pa, pb = p[:half].mean((0, 1)), p[half:].mean((0, 1))
    info.update(halves_agreement=M.agreement(pa, pb), halves_tv=M.total_variation(pa, pb),
                mcse_mean=float(mcse.mean()), mcse_max=float(mcse.max()))
    return ref, info


def run_methods(bn, Xtr, ytr, Xte, args):
    N = len(ytr)
    data = {"X": Xtr, "y": ytr}
    total_steps = args.epochs * N // BATCH  # over all chains
    S = total_steps // CHAINS  # per chain
    thin = max(1, S // 2 // 100)  # ~100 kept draws per chain from the second half
    out = {}
    regression = bn.noise_site is not None
    sites = bn.sites + ((bn.noise_site,) if regression else ())

    def pm(source, **kw):  # class probabilities, or (mean, var) of a regression predictive
        if regression:
            return gaussian_predictive(source, bn, Xte, **kw)
        return predictive_moments(source, bn.predict, Xte, **kw).mean

    only = getattr(args, "only", None)

    def want(name):  # --only: a method's name without its parenthesised tail ("SGHMC cold", "deep ensemble")
        return only is None or name.split(" (")[0] in only

    common = dict(data=data, batch_size=BATCH, num_chains=CHAINS, seed=args.seed, progress_bar=False,
                  init="sample", checks=False)

    def sampled(name, sampler, **kw):
        t0 = time.perf_counter()
        r = hb.sample(bn.model, sampler, num_warmup=S // 2, num_samples=(S - S // 2) // thin, thinning=thin,
                      **{**common, **kw})
        out[name] = (pm(r), r.grad_evals * CHAINS / N, time.perf_counter() - t0)
        return r

    if want("SGLD"):
        sampled("SGLD", hb.samplers.sgld(args.h_sgld))
    if want("SGHMC"):
        sampled("SGHMC", hb.samplers.sghmc(args.h_sghmc, friction=args.friction))
    if want("SGHMC cold"):
        sampled(f"SGHMC cold (T = {args.cold})", hb.samplers.sghmc(args.h_sghmc, friction=args.friction,
                                                                  temperature=args.cold))

    # cyclical SGLD: cosine step size, noise on in the last 1 - exploration of each cycle (default
    # the last 20%), draws kept there
    if want("cyclical SGLD"):
        t0 = time.perf_counter()
        cyc = hb.samplers.sgld(schedules.cyclical(args.h_csgld, S, args.cycles),
                               temperature=schedules.cyclical_temperature(1.0, S, args.cycles, args.exploration))
        r = hb.sample(bn.model, cyc, num_warmup=0, num_samples=S // thin, thinning=thin, **common)
        mask = hb.optim.sampling_phase(r)
        draws = {k: np.asarray(r.samples[k])[mask] for k in sites}
        out["cyclical SGLD"] = (pm(draws), r.grad_evals * CHAINS / N, time.perf_counter() - t0)

    # SWAG: SGD iterates (SGLD at T = 0), moments and the last 20 deviations of the thinned draws
    if want("SWAG"):
        t0 = time.perf_counter()
        r = hb.sample(bn.model, hb.samplers.sgld(args.h_swag, temperature=0.0), num_warmup=S // 2,
                      num_samples=(S - S // 2) // thin, thinning=thin, keep="moments", swag_rank=20, **common)
        q = hb.vi.swag(r, sites=sites)
        out["SWAG"] = (pm(q, num_draws=400, seed=1), r.grad_evals * CHAINS / N, time.perf_counter() - t0)

    # deep ensemble: 4 SGD chains (T = 0) from prior draws; each member's last state
    if want("deep ensemble"):
        t0 = time.perf_counter()
        r = hb.sample(bn.model, hb.samplers.sgld(args.h_swag, temperature=0.0), num_warmup=0, num_samples=1,
                      thinning=S, **common)
        out["deep ensemble (4)"] = (pm(r), r.grad_evals * CHAINS / N, time.perf_counter() - t0)

    # the MAP: Adam over the whole budget
    t0 = time.perf_counter()
    opt = hb.optimize(bn.model, data=data, batch_size=BATCH, num_steps=total_steps, seed=args.seed)
    p_map = np.asarray(bn.predict(opt.values, Xte), np.float64)
    if regression:
        p_map = (p_map[:, 0], np.full(len(p_map), float(opt.values[bn.noise_site]) ** 2))
    out["MAP"] = (p_map, opt.grad_evals / N, time.perf_counter() - t0)

    # Laplace at the MAP (Adam through hb.fit), linearised predictive: classification GGN and
    # probit; regression the exact Hessian (sigma is a site; the GGN takes a fixed sigma)
    curvature = dict(curvature="hessian") if regression else dict(curvature="ggn", network=bn)
    for name, kw in [("Laplace last-layer full", dict(structure="full", subset=("l2.b", "l2.w"))),
                     ("Laplace diag", dict(structure="diag"))]:
        if not want(name):
            continue
        t0 = time.perf_counter()
        q = hb.fit(bn.model, hb.vi.laplace(args.h_map, total_steps, **curvature, **kw),
                   data=data, batch_size=BATCH, seed=args.seed, progress_bar=False)
        pred = laplace_regression(q, bn, Xte) if regression else q.linearised_predictive(Xte)
        out[name] = (pred, q.grad_evals / N, time.perf_counter() - t0)

    # mean-field Gaussian VI (FB-GVI with a diagonal covariance), automatic step size
    if not want("mean-field VI"):
        return out
    t0 = time.perf_counter()
    # antithetic pairs: 2 gradients per step; regression starts narrow (sd 0.1: a unit-sd start
    # in log sigma reaches sigma ~ 0.1, gradients ~ 100x as large, and diverged)
    vi = hb.vi.fbgvi(None, total_steps, covariance="diag", init_cov=1e-2 if regression else None)
    vi = vi.rebuild(num_steps=max(1, int(total_steps / vi.grads_per_step)))
    q = hb.fit(bn.model, vi, data=data, batch_size=BATCH, seed=args.seed, progress_bar=False)
    out["mean-field VI"] = (pm(q, num_draws=400, seed=1), q.grad_evals / N, time.perf_counter() - t0)
    return out


def report_regression(args, rows, info, Xtr, ytr, yte, d, prior):
    """The regression table (and the paired table, the calibration curves) of main()."""
    ref = rows["NUTS (reference)"][0]
    print(f"\nBayesian MLP {Xtr.shape[1]}-{args.hidden}-1 (d = {d} weights + the noise sd, prior {prior}, "
          f"noise sd ~ HalfNormal(1)), {DATASETS[args.data]} (standardised target): {len(ytr)} train / "
          f"{len(yte)} test; budget {args.epochs} passes per method, batch {BATCH}; seed {args.seed}")
    print(f"NUTS reference: {args.nuts_chains} chains x ({args.nuts_warmup} + {args.nuts_samples}), "
          f"{info['leapfrog_per_chain']:.0f} leapfrog steps per chain, {info['wall_s']:.0f} s. "
          f"Its MC error: W2/sd between halves {info['halves_w2']:.4f}; MCSE of E f(x) over test points, "
          f"in predictive sds, mean {info['mcse_mean']:.4f}, max {info['mcse_max']:.4f}\n")
    print("| method | W2/sd to ref | RMSE | NLL | 90% coverage | calibration error | data passes | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (pred, passes, wall) in rows.items():
        s = M.regression_scores(*pred, yte, reference=ref)
        print(f"| {name} | {s['w2']:.4f} | {s['rmse']:.4f} | {s['nll']:.4f} | {s['coverage_90']:.3f} | "
              f"{s['calibration_error']:.4f} | {passes:.0f} | {wall:.0f} |")
    diffs = {}
    if args.paired:
        print("\nAgainst the MAP on the same test points (negative: better than the MAP; NLL: paired SE over "
              "test points; calibration error: bootstrap SE over test points, 1000 resamples):\n")
        print("| method | NLL - MAP | SE | calibration error - MAP | SE |")
        print("|---|---|---|---|---|")
        for name, (pred, _, _) in rows.items():
            if name != "MAP":
                dn, sn, de, se = paired_vs_regression(pred, rows["MAP"][0], yte)
                diffs[name] = (float(dn), float(de))
                print(f"| {name} | {dn:+.4f} | {sn:.4f} | {de:+.4f} | {se:.4f} |")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 5))
        for name, (pred, _, _) in rows.items():
            err, levels, cov = M.regression_calibration_error(*pred, yte, curve=True)
            ax.plot(levels, cov, "o-", ms=3, lw=1, label=f"{name} ({err:.3f})")
        ax.plot([0, 1], [0, 1], "k--", lw=1)
        ax.set_xlabel("nominal level of the central interval")
        ax.set_ylabel("fraction of test targets inside")
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(args.figure, dpi=100)
        print(f"\ncalibration curves: {args.figure}")
    return diffs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=sorted(DATASETS), default="breast_cancer",
                    help="scikit-learn's bundled data set (diabetes: regression; moons: generated)")
    ap.add_argument("--hidden", type=int, default=None, help="hidden units (default 8; diabetes 16; moons 50)")
    ap.add_argument("--n-train", type=int, default=None,
                    help="training rows, the rest are the test set (default 400; diabetes 300; moons 100)")
    ap.add_argument("--epochs", type=int, default=2000, help="gradient budget per method, in passes over the data")
    ap.add_argument("--nuts-warmup", type=int, default=500)
    ap.add_argument("--nuts-samples", type=int, default=500)
    ap.add_argument("--nuts-chains", type=int, default=4)
    ap.add_argument("--h-sgld", type=float, default=None, help="default 2e-4 (diabetes: see STEPS)")
    ap.add_argument("--h-sghmc", type=float, default=None, help="default 1e-2 (diabetes: see STEPS)")
    ap.add_argument("--friction", type=float, default=10.0)
    ap.add_argument("--h-csgld", type=float, default=None, help="default 1e-3 (diabetes, moons: see STEPS, DATA_STEPS)")
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--exploration", type=float, default=None,
                    help="cyclical SGLD: the fraction of each cycle run without noise, the rest sampled "
                         "(default 0.8; moons 0.5)")
    ap.add_argument("--cold", type=float, default=0.1, help="temperature of the cold-posterior SGHMC row")
    ap.add_argument("--h-swag", type=float, default=None, help="default 2e-4 (diabetes: see STEPS)")
    ap.add_argument("--h-map", type=float, default=1e-2)
    ap.add_argument("--prior-sd", type=float, default=None,
                    help="N(0, S^2) on every weight and bias (default: N(0, 1/fan_in) weights, N(0, 1) biases)")
    ap.add_argument("--seed", type=int, default=0, help="the train/test split and the methods' keys")
    ap.add_argument("--seeds", default=None, metavar="S1,S2,...",
                    help="run each seed (split) in turn and pool the paired differences against the MAP over them "
                         "(implies --paired)")
    ap.add_argument("--jobs", type=int, default=1, help="with --seeds: seeds run side by side in this many processes")
    ap.add_argument("--paired", action="store_true",
                    help="also print each method's NLL and ECE minus the MAP's, with paired / bootstrap SEs")
    ap.add_argument("--figure", default=None, help="write reliability diagrams to this file")
    ap.add_argument("--only", default=None, metavar="M1,M2,...",
                    help=f"run only these methods (of {', '.join(METHODS)}); the MAP and NUTS always run")
    args = ap.parse_args(argv)
    if args.only is not None:
        args.only = tuple(m.strip() for m in args.only.split(",") if m.strip())
        unknown = [m for m in args.only if m not in METHODS]
        if unknown:
            ap.error(f"--only: unknown method(s) {unknown}; choose from {list(METHODS)}")
    if args.seeds:
        from bdl_seeds import pooled

        return pooled(args, argv)
    n_train, hidden = DEFAULTS[args.data]
    args.n_train = n_train if args.n_train is None else args.n_train
    args.hidden = hidden if args.hidden is None else args.hidden
    steps = {**STEPS["regression" if args.data in REGRESSION else "classification"], "exploration": 0.8,
             **DATA_STEPS.get(args.data, {})}
    for k, v in steps.items():
        setattr(args, k, v if getattr(args, k) is None else getattr(args, k))

    regression = args.data in REGRESSION
    Xtr, ytr, Xte, yte = load(args.data, seed=args.seed, n_train=args.n_train)
    K = 1 if regression else int(max(ytr.max(), yte.max())) + 1
    bn = make_net(Xtr.shape[1], args.hidden, K, args.prior_sd, regression=regression)
    d = sum(int(np.prod(v.shape)) for v in bn.init.values())
    ref, info = nuts_reference(bn, Xtr, ytr, Xte, args)
    rows = {"NUTS (reference)": (ref, info["grad_evals_total"] / len(ytr), info["wall_s"])}
    rows.update(run_methods(bn, Xtr, ytr, Xte, args))

    prior = "N(0, 1/fan_in) weights, N(0, 1) biases" if args.prior_sd is None else f"N(0, {args.prior_sd:g}^2)"
    if regression:
        return report_regression(args, rows, info, Xtr, ytr, yte, d, prior)
    print(f"\nBayesian MLP {Xtr.shape[1]}-{args.hidden}-{K} (d = {d} weights, prior {prior}), "
          f"{DATASETS[args.data]}: {len(ytr)} train / {len(yte)} test; "
          f"budget {args.epochs} passes per method, batch {BATCH}; seed {args.seed}")
    print(f"NUTS reference: {args.nuts_chains} chains x ({args.nuts_warmup} + {args.nuts_samples}), "
          f"{info['leapfrog_per_chain']:.0f} leapfrog steps per chain, {info['wall_s']:.0f} s. "
          f"Its MC error: halves agree {info['halves_agreement']:.3f}, TV between halves {info['halves_tv']:.4f}; "
          f"MCSE of p(y=k|x) over test points and the {K} classes mean {info['mcse_mean']:.4f}, "
          f"max {info['mcse_max']:.4f}\n")
    print("| method | agreement | TV | accuracy | NLL | Brier | ECE | data passes | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (p, passes, wall) in rows.items():
        s = M.scores(p, yte, reference=ref, num_bins=10)
        print(f"| {name} | {s['agreement']:.3f} | {s['tv']:.4f} | {s['accuracy']:.3f} | {s['nll']:.4f} | "
              f"{s['brier']:.4f} | {s['ece']:.4f} | {passes:.0f} | {wall:.0f} |")
    diffs = {}
    if args.paired:
        print("\nAgainst the MAP on the same test points (negative: better than the MAP; NLL: paired SE over "
              "test points; ECE: bootstrap SE over test points, 1000 resamples):\n")
        print("| method | NLL - MAP | SE | ECE - MAP | SE |")
        print("|---|---|---|---|---|")
        p_map = np.asarray(rows["MAP"][0], np.float64)
        for name, (p, _, _) in rows.items():
            if name != "MAP":
                dn, sn, de, se = paired_vs(np.asarray(p, np.float64), p_map, yte)
                diffs[name] = (float(dn), float(de))
                print(f"| {name} | {dn:+.4f} | {sn:.4f} | {de:+.4f} | {se:.4f} |")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, (len(rows) + 1) // 2, figsize=(3 * ((len(rows) + 1) // 2), 6))
        for ax, (name, (p, _, _)) in zip(axes.ravel(), rows.items()):
            M.plot_reliability(M.reliability_diagram(p, yte, num_bins=10), ax=ax, label=name)
            ax.set_title(f"{name}\nECE {M.ece(p, yte, 10):.3f}", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.figure, dpi=100)
        print(f"\nreliability diagrams: {args.figure}")
    return diffs


if __name__ == "__main__":
    main()
