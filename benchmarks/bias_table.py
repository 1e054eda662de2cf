r"""The bias table: stationary mean and sd of SG-MCMC samplers, measured and in closed form.

    /work/venv/bin/python benchmarks/bias_table.py            # writes benchmarks/bias_table.md
    /work/venv/bin/python benchmarks/bias_table.py --grid full

Model: Bayesian linear regression y = X beta + e, e ~ N(0, 1), beta ~ N(0, I), d = 3, N = 1000
(correlated covariates, condition number ~10). The posterior is N(mu, H^-1), H = I + X^T X.
Every sampler below is a linear recursion on it, so its stationary covariance has a closed
form, and its stationary mean is exactly mu.

Gradient noise (exact, nothing approximated). A minibatch of n rows drawn uniformly with
replacement estimates the gradient by grad log p(theta) + (N/n) sum_j a_{I_j}(theta), with
a_i(theta) = x_i (y_i - x_i^T theta). Its error eta has mean 0 and covariance

    V(theta) = (N/n) sum_i (c_i - D_i theta)(c_i - D_i theta)^T,
    c_i = x_i y_i - mean_k(x_k y_k),  D_i = x_i x_i^T - X^T X / N,

quadratic in theta (the noise is state dependent). With theta = mu + delta and E delta = 0 at
stationarity, E V(theta) = V(mu) + K(Sigma), K(S) = (N/n) sum_i D_i S D_i: linear in the
stationary covariance Sigma itself. Control variates (centre theta*) leave eta = -(D_B)(theta -
theta*), so E V = K(Sigma + e e^T), e = mu - theta* (theta* from the run's own MAP search).

Closed forms. The state z = (delta, r, eta_cached) evolves by affine maps per piece of a step,
with fresh Gaussian noise and a fresh gradient error at every gradient evaluation:
SGLD  delta <- delta + h(-H delta + eta) + sqrt(2hT) xi   (SGLD-CV: the same, its own eta);
SGHMC pieces A: delta += h r/M; B: r += h(-H delta + eta); O: r <- e r + sqrt(TM(1-e^2)) xi;
E: r <- (1 - hC/M) r + sqrt(2ChT) xi; the gradient is evaluated where heatbath's integrator
evaluates it (Euler "EBA": at the step's start; the FSAL splittings "BABO", "OBABO",
"BAOAB": right after the last A, on a fresh minibatch, and that one error eta is reused by the
step's last half-kick and the next step's first, exactly as heatbath does). The second moments
then obey Sigma_z' = L(Sigma_z) + c exactly (the new eta is uncorrelated with the state and has
covariance V(mu) + K(Sigma_delta)); the stationary Sigma_z solves (I - L) vec Sigma_z = vec c,
the discrete Lyapunov equation Sigma = A Sigma A^T + Q with the state-dependent noise folded
in. pSGLD's preconditioner G = 1/(eps + sqrt(v)) tracks the gradients, which makes it
nonlinear: its column is the linear recursion with G frozen at its self-consistent stationary
value (G = 1/(eps + sqrt(diag E g g^T))), an approximation, marked "~".

Settings. Each row has an SGLD-equivalent step eps (the step of SGLD; SGHMC takes friction
C = 2 sqrt(lambda_min(H)), critical damping of the softest direction, and h = eps C, the
high-friction match; pSGLD takes h = eps times the median stationary gradient rms, so h G ~
eps). Measured: 32 chains started at mu, 21,000 steps (the first 1,000 dropped), thinning 4.
Monte Carlo errors come from the spread of the 32 independent per-chain estimates.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import NamedTuple, Optional

import numpy as np

SAMPLERS = ("sgld", "psgld", "sgld_cv", "euler", "lie_trotter", "obabo", "baoab")
WORDS = {"euler": "EBA", "lie_trotter": "BABO", "obabo": "OBABO", "baoab": "BAOAB"}
PSGLD_EPS = 1e-5  # heatbath's psgld default eps


class Problem(NamedTuple):
    X: np.ndarray  # float32, the data the samplers see
    y: np.ndarray
    X64: np.ndarray  # the same values in float64, for the closed forms
    y64: np.ndarray
    H: np.ndarray
    mu: np.ndarray
    lam: np.ndarray  # eigenvalues of H, ascending


class Cell(NamedTuple):
    sampler: str  # one of SAMPLERS
    eps: float  # the SGLD-equivalent step
    n: int  # batch size
    T: float  # temperature


def make_problem(d: int = 3, num_data: int = 1000, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    corr = 0.6 + 0.4 * np.eye(d)
    scales = np.linspace(1.0, 0.5, d)
    X = ((rng.normal(size=(num_data, d)) @ np.linalg.cholesky(corr).T) * scales).astype(np.float32)
    beta = np.linspace(1.0, -0.5, d)
    y = (X.astype(np.float64) @ beta + rng.normal(size=num_data)).astype(np.float32)
    X64, y64 = X.astype(np.float64), y.astype(np.float64)
    H = np.eye(d) + X64.T @ X64
    return Problem(X, y, X64, y64, H, np.linalg.solve(H, X64.T @ y64), np.linalg.eigvalsh(H))


# --------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------


def noise_moments(p: Problem, n: int, centre: Optional[np.ndarray] = None):
    """(V0, K): E[eta eta^T] = V0 + K(Sigma_delta) at stationarity (naive, or CV at ``centre``)."""
    N = len(p.y64)
    P = p.X64.T @ p.X64 / N

    def K(S):
        q = np.einsum("ij,jk,ik->i", p.X64, S, p.X64)
        return (N / n) * ((p.X64 * q[:, None]).T @ p.X64 - N * P @ S @ P)

    if centre is not None:
        e = p.mu - np.asarray(centre, np.float64)
        return K(np.outer(e, e)), K
    res = p.y64 - p.X64 @ p.mu  # c_i - D_i mu = x_i r_i - mean(x r)
    m = (p.X64 * res[:, None]).mean(0)
    V0 = (N / n) * ((p.X64 * res[:, None] ** 2).T @ p.X64 - N * np.outer(m, m))
    return V0, K


def pieces(sampler: str, h: float):
    """The step as pieces (letter, duration) with "G" where the gradient is evaluated, as
    heatbath's integrators do (:func:`heatbath.kernels.integrators.build`)."""
    if sampler in ("sgld", "psgld", "sgld_cv"):
        return [("G", 0.0), ("L", h)]
    word = WORDS[sampler]
    fsal = word.index("B") < word.index("A") and word.rindex("B") > word.rindex("A")
    counts = {c: word.count(c) for c in word}
    out, valid = [], fsal
    for c in word:
        if c == "A":
            valid = False
        elif c == "B" and not valid:
            out.append(("G", 0.0))
            valid = True
        out.append((c, h / counts[c]))
    return out


def step_moments(S, steps, d, H, V0, K, T, friction=1.0, mass=1.0, precond=None):
    """One step of the second moments of z = (delta, r, eta): S -> L(S) + c (affine in S)."""
    D = 3 * d
    x, r, e = slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d)
    I = np.eye(d)
    G = np.ones(d) if precond is None else precond
    for letter, dt in steps:
        L, Q = np.eye(D), np.zeros((D, D))
        if letter == "G":
            L[e, e] = 0.0
            Q[e, e] = V0 + K(S[x, x])
        elif letter == "L":  # (preconditioned) Langevin step; r is unused
            L[x, x] = I - dt * G[:, None] * H
            L[x, e] = dt * np.diag(G)
            L[r, r] = 0.0
            Q[x, x] = np.diag(2 * dt * T * G)
        elif letter == "A":
            L[x, r] = dt / mass * I
        elif letter == "B":
            L[r, x], L[r, e] = -dt * H, dt * I
        elif letter == "O":
            a = np.exp(-friction * dt / mass)
            L[r, r], Q[r, r] = a * I, T * mass * (1 - a * a) * I
        elif letter == "E":
            L[r, r], Q[r, r] = (1 - friction * dt / mass) * I, 2 * friction * dt * T * I
        S = L @ S @ L.T + Q
    return S


def stationary(p: Problem, sampler: str, h: float, n: int, T: float, *, centre=None, friction=1.0,
               precond=None, exact_gradients=False) -> Optional[np.ndarray]:
    """The stationary covariance of theta (d x d), None if the recursion is unstable."""
    d = len(p.mu)
    V0, K = noise_moments(p, n, centre)
    if exact_gradients:
        V0, K = np.zeros((d, d)), (lambda S: np.zeros((d, d)))
    steps = pieces(sampler, h)
    D = 3 * d

    def f(S):
        return step_moments(S, steps, d, p.H, V0, K, T, friction, 1.0, precond)

    c = f(np.zeros((D, D)))
    basis = np.eye(D * D)
    L = np.stack([(f(basis[k].reshape(D, D)) - c).ravel() for k in range(D * D)], axis=1)
    if np.max(np.abs(np.linalg.eigvals(L))) >= 1.0:
        return None
    S = np.linalg.solve(np.eye(D * D) - L, c.ravel()).reshape(D, D)
    return 0.5 * (S + S.T)[:d, :d]


def friction_of(p: Problem) -> float:
    return 2.0 * float(np.sqrt(p.lam[0]))


def gradient_rms(p: Problem, Sigma: np.ndarray, n: int, centre=None) -> np.ndarray:
    """sqrt(diag E[g g^T]) at stationarity, g = -H delta + eta."""
    V0, K = noise_moments(p, n, centre)
    return np.sqrt(np.diag(p.H @ Sigma @ p.H + V0 + K(Sigma)))


def hyper(p: Problem, cell: Cell) -> dict:
    """The sampler's own hyperparameters for a cell (see the module docstring)."""
    if cell.sampler in ("sgld", "sgld_cv"):
        return {"h": cell.eps}
    if cell.sampler == "psgld":
        Sigma = stationary(p, "sgld", cell.eps, cell.n, cell.T)
        rms = gradient_rms(p, Sigma if Sigma is not None else np.linalg.inv(p.H), cell.n)
        return {"h": cell.eps * float(np.median(rms))}
    C = friction_of(p)
    return {"h": cell.eps * C, "friction": C}


def closed_form(p: Problem, cell: Cell, centre=None) -> Optional[np.ndarray]:
    """Stationary covariance of theta (pSGLD: with G frozen at its self-consistent value)."""
    hp = hyper(p, cell)
    if cell.sampler == "psgld":
        G = 1.0 / (PSGLD_EPS + np.sqrt(np.diag(p.H)) * 30)  # any start; the fixed point is reached
        for _ in range(200):
            Sigma = stationary(p, "psgld", hp["h"], cell.n, cell.T, precond=G)
            if Sigma is None:
                return None
            G_new = 1.0 / (PSGLD_EPS + gradient_rms(p, Sigma, cell.n))
            if np.allclose(G_new, G, rtol=1e-10):
                break
            G = 0.5 * (G + G_new)
        return Sigma
    return stationary(p, cell.sampler, hp["h"], cell.n, cell.T, centre=centre if cell.sampler == "sgld_cv" else None,
                      friction=hp.get("friction", 1.0))


# --------------------------------------------------------------------------------------------
# Measurement with hb.sample
# --------------------------------------------------------------------------------------------


def target_of(p: Problem):
    import jax.numpy as jnp

    import heatbath as hb

    def logprior(b):
        return -0.5 * jnp.sum(b**2)

    def loglik(b, batch):
        Xb, yb = batch
        return -0.5 * jnp.sum((yb - Xb @ b) ** 2)

    return hb.models.from_logdensity(logprior, loglik, (p.X, p.y), params=jnp.zeros(len(p.mu), jnp.float32))


def sampler_of(p: Problem, cell: Cell):
    import heatbath as hb

    hp = hyper(p, cell)
    if cell.sampler == "sgld":
        return hb.samplers.sgld(hp["h"], temperature=cell.T)
    if cell.sampler == "sgld_cv":
        return hb.samplers.sgld(hp["h"], temperature=cell.T, gradient="cv")
    if cell.sampler == "psgld":
        return hb.samplers.psgld(hp["h"], temperature=cell.T)
    return hb.samplers.sghmc(hp["h"], hp["friction"], cell.sampler, temperature=cell.T)


def measure(p: Problem, cell: Cell, *, target=None, num_chains=32, num_steps=21_000, burn=1_000, thinning=4,
            seed=0) -> dict:
    """Pooled mean and variance of theta over ``num_chains`` chains started at mu, with Monte
    Carlo errors from the spread of the per-chain estimates (chains are independent)."""
    import heatbath as hb

    target = target_of(p) if target is None else target
    draws = num_steps // thinning
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = hb.sample(target, sampler_of(p, cell), batch_size=cell.n, num_samples=draws, thinning=thinning,
                        num_warmup=0, chunk_size=draws, num_chains=num_chains, init=p.mu.astype(np.float32),
                        seed=seed, progress_bar=False, checks="off")  # biased on purpose: no self-diagnosis
    seconds = time.perf_counter() - start
    diverged = [str(w.message) for w in caught if "diverg" in str(w.message)]
    th = np.asarray(res.samples["theta"], np.float64)[:, burn // thinning:]
    m_k = th.mean(axis=1)
    m = m_k.mean(0)
    v_k = ((th - m) ** 2).mean(axis=1)
    centre = None if res.centre is None else np.asarray(res.centre, np.float64)
    return {"mean": m, "se_mean": m_k.std(0, ddof=1) / np.sqrt(num_chains), "var": v_k.mean(0),
            "se_var": v_k.std(0, ddof=1) / np.sqrt(num_chains), "centre": centre, "seconds": seconds,
            "diverged": diverged}


def row(p: Problem, cell: Cell, meas: dict) -> dict:
    """Closed form against measured: standardised mean error, sd ratios, agreement in MC errors."""
    Sigma = closed_form(p, cell, meas["centre"])
    post_var = cell.T * np.diag(np.linalg.inv(p.H))  # the (tempered) posterior's variances
    out = {"cell": cell, "h": hyper(p, cell)["h"], "approx": cell.sampler == "psgld", "seconds": meas["seconds"],
           "diverged": meas["diverged"],
           "mean_err": float(np.max(np.abs(meas["mean"] - p.mu) / np.sqrt(post_var))),
           "z_mean": float(np.max(np.abs(meas["mean"] - p.mu) / meas["se_mean"])),
           "sd_meas": np.sqrt(meas["var"] / post_var), "se_sd": 0.5 * meas["se_var"] / np.sqrt(meas["var"] * post_var)}
    if meas["centre"] is not None:  # the control-variates centre the driver found, in posterior sds
        out["centre_offset"] = float(np.max(np.abs(meas["centre"] - p.mu) / np.sqrt(np.diag(np.linalg.inv(p.H)))))
    if Sigma is None:
        out.update(sd_closed=None, z_var=None)
    else:
        out.update(sd_closed=np.sqrt(np.diag(Sigma) / post_var),
                   z_var=float(np.max(np.abs(meas["var"] - np.diag(Sigma)) / meas["se_var"])))
    return out


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def grid(p: Problem, which: str = "default") -> list:
    """Step sizes eps lambda_max in {0.05, 0.2}, batch sizes {10, 100}, temperatures {1, 0.25}:
    ``"default"`` varies one factor at a time around (0.2, 10, 1); ``"full"`` is the 2 x 2 x 2 grid."""
    lmax = float(p.lam[-1])
    if which == "full":
        settings = [(c, n, T) for c in (0.05, 0.2) for n in (10, 100) for T in (1.0, 0.25)]
    else:
        settings = [(0.2, 10, 1.0), (0.05, 10, 1.0), (0.2, 100, 1.0), (0.2, 10, 0.25)]
    return [Cell(s, c / lmax, n, T) for s in SAMPLERS for c, n, T in settings]


def _span(a) -> str:
    return "unstable" if a is None else f"{np.min(a):.3f} / {np.max(a):.3f}"


def markdown(p: Problem, rows: list, header: str = "") -> str:
    lmax = float(p.lam[-1])
    lines = [header,
             "| sampler | eps lambda_max | h | n | T | max mean error / sd | sd ratio min / max, closed form | "
             "sd ratio min / max, measured | max |meas - closed| / MC error (var) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cell"]
        closed = ("~ " if r["approx"] else "") + _span(r["sd_closed"])
        agree = "-" if r["z_var"] is None else f"{r['z_var']:.1f}" + (" (approx.)" if r["approx"] else "")
        se = float(np.max(r["se_sd"]))
        lines.append(f"| {c.sampler} | {c.eps * lmax:.2f} | {r['h']:.3g} | {c.n} | {c.T:g} | "
                     f"{r['mean_err']:.3f} ({r['z_mean']:.1f} MC err.) | {closed} | {_span(r['sd_meas'])} "
                     f"(+- {se:.3f}) | {agree} |" + (" diverged" if r["diverged"] else ""))
    offsets = [f"{r['centre_offset']:.2f}" for r in rows if "centre_offset" in r]
    if offsets:
        lines.append(f"\nSGLD-CV centres found by the driver's MAP search: max |theta* - mu| / posterior sd = "
                     f"{', '.join(offsets)} (the closed form includes the noise this leaves).")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", choices=("default", "full"), default="default")
    ap.add_argument("--d", type=int, default=3)
    ap.add_argument("--chains", type=int, default=32)
    ap.add_argument("--steps", type=int, default=21_000)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "bias_table.md"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    p = make_problem(args.d)
    target = target_of(p)
    rows = []
    for i, cell in enumerate(grid(p, args.grid)):
        rows.append(row(p, cell, measure(p, cell, target=target, num_chains=args.chains, num_steps=args.steps,
                                         seed=i)))
        r = rows[-1]
        print(f"{cell.sampler:12s} eps*lmax={cell.eps * p.lam[-1]:.2f} n={cell.n:3d} T={cell.T:g}: sd ratio closed "
              f"{_span(r['sd_closed'])}, measured {_span(r['sd_meas'])}, {r['seconds']:.1f} s", flush=True)
    total = time.perf_counter() - t0
    header = (f"Bias table (benchmarks/bias_table.py --grid {args.grid}): Bayesian linear regression, d = {args.d}, "
              f"N = {len(p.y)}, lambda(H) = {', '.join(f'{v:.0f}' for v in p.lam)}; {args.chains} chains x "
              f"{args.steps} steps; SGHMC friction C = {friction_of(p):.1f}. sd ratio = sd / posterior sd "
              f"(tempered: sqrt(T) x); closed-form mean error is 0 for every row. Total {total:.0f} s.\n")
    text = markdown(p, rows, header)
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    return rows


if __name__ == "__main__":
    main()
