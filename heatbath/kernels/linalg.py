"""Dense linear algebra for Gaussian methods: the symmetric PSD square root, SPD checks,
the Gaussian KL divergence and 2-Wasserstein (Bures) distance, and diagonal-plus-low-rank
(Woodbury) helpers.

Everything here acts on *flat* matrices: a covariance over d parameters is a d x d array
(inherently flat, whatever pytree the parameters form). Functions are pure JAX and go
through ``jit``, ``vmap`` and ``grad``, except ``check_spd`` which validates user input on
the host before anything compiles.

The square root of a symmetric A = Q diag(lam) Q^T is computed from one ``eigh`` of the
symmetrised matrix (A + A^T)/2: A^(1/2) = Q diag(sqrt(lam)) Q^T. Differentiating ``eigh`` itself is
unstable when eigenvalues repeat (its derivative has 1/(lam_i - lam_j) terms), so
``sqrtm_psd`` carries its own derivative, the Daleckii-Krein formula

    d sqrt(A) = Q [ (Q^T dA Q)_ij / (sqrt(lam_i) + sqrt(lam_j)) ] Q^T,

i.e. the solution X of the Sylvester equation sqrt(A) X + X sqrt(A) = dA. Its denominators
are >= 2 sqrt(lam_min) whatever the multiplicities, so the derivative is exact and stable for
repeated eigenvalues and blows up only as A approaches singularity (where sqrt is not
differentiable).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "symmetrize",
    "eigh_sym",
    "sqrtm_psd",
    "check_spd",
    "logdet_spd",
    "gaussian_kl",
    "gaussian_w2",
    "dplr_inverse_parts",
    "dplr_logdet",
]


def symmetrize(a: jax.Array) -> jax.Array:
    """(A + A^T) / 2 over the last two axes."""
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def eigh_sym(a: jax.Array):
    """Eigen-decomposition (lam ascending, Q) of the symmetric part of ``a``."""
    return jnp.linalg.eigh(symmetrize(a))


@jax.custom_jvp
def sqrtm_psd(a: jax.Array) -> jax.Array:
    """The symmetric PSD square root of a symmetric PSD matrix (eigh-based).

    A^(1/2) = Q diag(sqrt(max(lam, 0))) Q^T from one ``eigh`` of (A + A^T)/2, so the result
    is exactly symmetric and PSD even when roundoff makes A slightly indefinite. The JVP is
    the Daleckii-Krein / Sylvester formula of the module docstring (stable for repeated
    eigenvalues). Works on stacks of matrices (leading batch axes).
    """
    lam, q = eigh_sym(a)
    root = jnp.sqrt(jnp.maximum(lam, 0.0))
    return symmetrize((q * root[..., None, :]) @ jnp.swapaxes(q, -1, -2))


@sqrtm_psd.defjvp
def _sqrtm_psd_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    lam, q = eigh_sym(a)
    root = jnp.sqrt(jnp.maximum(lam, 0.0))
    qt = jnp.swapaxes(q, -1, -2)
    out = symmetrize((q * root[..., None, :]) @ qt)
    denom = root[..., :, None] + root[..., None, :]
    tiny = jnp.finfo(denom.dtype).tiny
    inner = (qt @ symmetrize(da) @ q) / jnp.maximum(denom, tiny)
    return out, symmetrize(q @ inner @ qt)


def check_spd(a, name: str = "covariance", dim: int | None = None) -> np.ndarray:
    """Validate a user-supplied SPD matrix on the host; return it as a float numpy array.

    Raises ``ValueError`` naming ``name`` when it is not a square 2-D array (of size ``dim``
    when given), has non-finite entries, is not symmetric (to 1e-6 relative), or is not
    positive definite (its smallest eigenvalue is reported).
    """
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {arr.shape}")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"{name} must be {dim} x {dim} (the number of parameters), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has non-finite entries")
    scale = max(float(np.max(np.abs(arr))), np.finfo(np.float64).tiny)
    asym = float(np.max(np.abs(arr - arr.T)))
    if asym > 1e-6 * scale:
        raise ValueError(f"{name} is not symmetric (max |S - S^T| = {asym:.3g})")
    lam_min = float(np.linalg.eigvalsh(0.5 * (arr + arr.T))[0])
    if lam_min <= 0:
        raise ValueError(f"{name} is not positive definite: its smallest eigenvalue is {lam_min:.3g}")
    return arr


def logdet_spd(a: jax.Array) -> jax.Array:
    """log det A for SPD A via Cholesky (NaN when A is not PD)."""
    chol = jnp.linalg.cholesky(symmetrize(a))
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)


def gaussian_kl(mean0: jax.Array, cov0: jax.Array, mean1: jax.Array, cov1: jax.Array) -> jax.Array:
    """KL(N(m0, S0) || N(m1, S1)) = [tr(S1^-1 S0) + (m1 - m0)^T S1^-1 (m1 - m0) - d
    + log det S1 - log det S0] / 2, through Cholesky solves (no explicit inverse)."""
    d = cov0.shape[-1]
    l1 = jnp.linalg.cholesky(symmetrize(cov1))
    solve = lambda b: jax.scipy.linalg.cho_solve((l1, True), b)  # noqa: E731
    tr = jnp.trace(solve(cov0))
    diff = mean1 - mean0
    maha = diff @ solve(diff)
    return 0.5 * (tr + maha - d + logdet_spd(cov1) - logdet_spd(cov0))


def gaussian_w2(mean0: jax.Array, cov0: jax.Array, mean1: jax.Array, cov1: jax.Array) -> jax.Array:
    """The 2-Wasserstein distance between N(m0, S0) and N(m1, S1) (Dowson & Landau 1982;
    the Bures metric on covariances, the geometry of FB-GVI and BW-SGD):

        W2^2 = |m0 - m1|^2 + tr(S0 + S1 - 2 (S1^(1/2) S0 S1^(1/2))^(1/2)),

    with both square roots from :func:`sqrtm_psd` (so it is differentiable where W2 > 0 and
    S1 S0 is nonsingular, also at repeated eigenvalues). Returns W2 (W2^2 clipped at 0
    against roundoff).
    """
    root1 = sqrtm_psd(cov1)
    cross = sqrtm_psd(root1 @ cov0 @ root1)
    diff = mean0 - mean1
    sq = diff @ diff + jnp.trace(cov0) + jnp.trace(cov1) - 2.0 * jnp.trace(cross)
    return jnp.sqrt(jnp.maximum(sq, 0.0))


def dplr_inverse_parts(diag: jax.Array, factor: jax.Array):
    """Woodbury pieces of S = diag(D) + U U^T (D > 0, U of shape (d, r)).

    S^-1 = D^-1 - D^-1 U K^-1 U^T D^-1 with the r x r capacitance K = I + U^T D^-1 U.
    Returns ``(inv_diag, apply_inv)``: the diagonal of S^-1 (O(d r^2)) and a function
    v -> S^-1 v for v of shape (d,) or (d, k) (O(d r k)). Note S^-1 U = D^-1 U K^-1.
    """
    dinv = 1.0 / diag
    du = factor * dinv[:, None]  # D^-1 U
    r = factor.shape[1]
    cap = jnp.eye(r, dtype=factor.dtype) + factor.T @ du
    chol = jnp.linalg.cholesky(symmetrize(cap))
    # rows of D^-1 U L^-T: diag(S^-1)_i = 1/D_i - |(D^-1 U L^-T)_i|^2
    w = jax.scipy.linalg.solve_triangular(chol, du.T, lower=True).T
    inv_diag = dinv - jnp.sum(w * w, axis=1)

    def apply_inv(v):
        vv = v if v.ndim == 2 else v[:, None]
        out = dinv[:, None] * vv - du @ jax.scipy.linalg.cho_solve((chol, True), du.T @ vv)
        return out if v.ndim == 2 else out[:, 0]

    return inv_diag, apply_inv


def dplr_logdet(diag: jax.Array, factor: jax.Array) -> jax.Array:
    """log det(diag(D) + U U^T) = sum log D + log det(I + U^T D^-1 U) (matrix determinant lemma)."""
    r = factor.shape[1]
    cap = jnp.eye(r, dtype=factor.dtype) + factor.T @ (factor / diag[:, None])
    return jnp.sum(jnp.log(diag)) + logdet_spd(cap)
