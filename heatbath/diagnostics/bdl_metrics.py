"""Metrics of predictive distributions, as Bayesian deep learning compares methods.

Every function takes predictive class probabilities ``probs`` of shape (n, K) (the posterior
predictive p(y | x_i, D) of n inputs over K classes, e.g. the output of
:func:`heatbath.diagnostics.predictive_moments`) and, where needed, integer ``labels`` of
shape (n,) or a reference predictive of the same shape. Everything is computed in float64 on
the host (numpy).

- :func:`accuracy`: mean 1[argmax_k p_ik = y_i].
- :func:`nll`: mean -log p_{i, y_i} (a probability of 0 is clipped at the smallest normal
  float64, so a confident miss costs ~708 nats instead of inf).
- :func:`brier`: mean_i sum_k (p_ik - 1[k = y_i])^2 (Brier 1950; the multi-class form, in [0, 2]).
- :func:`ece`: expected calibration error (Naeini et al. 2015; Guo et al. 2017): confidences
  c_i = max_k p_ik binned into ``num_bins`` equal-width bins (0, 1/B], (1/B, 2/B], ...;
  ECE = sum_b (n_b / n) |acc_b - conf_b|. :func:`reliability_diagram` returns the bins'
  accuracies, confidences and counts; :func:`plot_reliability` draws them.
- :func:`predictive_entropy`: H_i = -sum_k p_ik log p_ik (0 log 0 = 0), in nats.
- :func:`ood_auroc`: the AUROC of predictive entropy as a detector of out-of-distribution
  inputs (positives: the OOD inputs; the Mann-Whitney U statistic, ties counting 1/2).
- :func:`agreement`: mean 1[argmax_k p_ik = argmax_k q_ik] against a reference q (Izmailov
  et al. 2021, "What are Bayesian neural network posteriors really like?", eq. 4).
- :func:`total_variation`: mean_i (1/2) sum_k |p_ik - q_ik| (ibid., eq. 5).
- :func:`scores`: all of them in one dict.

Ties in argmax go to the lowest class index (numpy's argmax), for accuracy and agreement alike.

Regression: a Gaussian predictive N(m_i, v_i) per test point, given by its ``mean`` and ``var``
(arrays of one shape, e.g. (n,)) against real targets ``y`` of that shape. For a Bayesian network
with a Normal likelihood, m_i = E_s f(x_i; theta_s) and v_i = Var_s f(x_i; theta_s) +
E_s sigma_s^2 over the draws s (the spread of the network outputs plus the mean noise variance:
the mean and variance of the predictive mixture, which is then scored as the Gaussian with those
two moments).

- :func:`rmse`: sqrt(mean_i (m_i - y_i)^2).
- :func:`gaussian_nll`: mean_i [log(2 pi v_i) / 2 + (y_i - m_i)^2 / (2 v_i)], in nats.
- :func:`interval_coverage`: the fraction of y_i inside the central interval
  m_i +- z_{(1+a)/2} sqrt(v_i) of nominal level a (z the standard normal quantile).
- :func:`regression_calibration_error`: mean_a |coverage(a) - a| over the levels a = 0.1, ...,
  0.9 (central intervals; Kuleshov, Fenner & Ermon 2018 compare the same curve of empirical
  against nominal probability).
- :func:`gaussian_w2`: mean_i W2(N(m_i, v_i), N(r_i, w_i)) / sqrt(w_i) against a reference
  predictive N(r_i, w_i), where W2 = sqrt((m_i - r_i)^2 + (sqrt(v_i) - sqrt(w_i))^2) (the
  2-Wasserstein distance of two univariate Gaussians): in units of the reference's sd.
- :func:`regression_scores`: all of them in one dict.

Shapes that differ, variances <= 0, and NaN or infinite values are ValueErrors.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "accuracy",
    "nll",
    "brier",
    "ece",
    "reliability_diagram",
    "plot_reliability",
    "predictive_entropy",
    "ood_auroc",
    "agreement",
    "total_variation",
    "scores",
    "check_probs",
    "rmse",
    "gaussian_nll",
    "interval_coverage",
    "regression_calibration_error",
    "gaussian_w2",
    "regression_scores",
]

_TINY = np.finfo(np.float64).tiny


def check_probs(probs, name: str = "probs", atol: float = 1e-4) -> np.ndarray:
    """``probs`` as a float64 (n, K) array of probabilities, or a ValueError saying what is wrong.

    Rows must be finite, >= 0 and sum to 1 within ``atol`` (float32 softmax outputs do).
    """
    p = np.asarray(probs)
    if p.ndim != 2:
        raise ValueError(f"{name} must be an (n, K) array of class probabilities, got shape {p.shape}")
    if p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"{name} needs at least one row and two classes, got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        raise ValueError(f"{name} must hold floating-point probabilities, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} holds non-finite values ({int(np.sum(~np.isfinite(p)))} of them)")
    if np.any(p < -atol) or np.any(p > 1 + atol):
        raise ValueError(f"{name} holds values outside [0, 1] (min {p.min():.3g}, max {p.max():.3g}): "
                         "pass probabilities, not logits (jax.nn.softmax(logits))")
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1.0) > atol
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"{name}: row {i} sums to {sums[i]:.6g}, not 1 ({int(bad.sum())} rows off by more "
                         f"than {atol}): pass probabilities, not logits")
    return np.clip(p, 0.0, 1.0)


def _check_labels(labels, n: int, k: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one per row of probs), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if np.any(y < 0) or np.any(y >= k):
        raise ValueError(f"labels must lie in 0..{k - 1} (K = {k} classes), got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _pair(probs, ref):
    p = check_probs(probs, "probs")
    q = check_probs(ref, "reference")
    if p.shape != q.shape:
        raise ValueError(f"probs {p.shape} and reference {q.shape} must have the same shape")
    return p, q


def accuracy(probs, labels) -> float:
    """Fraction of rows whose most probable class is the label."""
    p = check_probs(probs)
    y = _check_labels(labels, *p.shape)
    return float(np.mean(np.argmax(p, axis=1) == y))


def nll(probs, labels) -> float:
    """Mean negative log predictive probability of the labels, in nats."""
    p = check_probs(probs)
    y = _check_labels(labels, *p.shape)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], _TINY))))


def brier(probs, labels) -> float:
    """Multi-class Brier score: mean_i sum_k (p_ik - onehot(y_i)_k)^2."""
    p = check_probs(probs)
    y = _check_labels(labels, *p.shape)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def reliability_diagram(probs, labels, num_bins: int = 15) -> dict:
    """The data of a reliability diagram: equal-width confidence bins (lo, hi] (the first bin
    also holds 0) with, per bin, ``count``, mean ``confidence`` and ``accuracy`` (NaN for an
    empty bin), plus ``edges`` (num_bins + 1) and ``ece``."""
    if not isinstance(num_bins, (int, np.integer)) or isinstance(num_bins, bool) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
    p = check_probs(probs)
    y = _check_labels(labels, *p.shape)
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    idx = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count = np.bincount(idx, minlength=num_bins).astype(np.int64)
    sum_conf = np.bincount(idx, weights=conf, minlength=num_bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, sum_conf / np.maximum(count, 1), np.nan)
        mean_acc = np.where(count > 0, sum_acc / np.maximum(count, 1), np.nan)
    ece_value = float(np.sum(np.abs(sum_acc - sum_conf)) / len(y))
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": mean_acc, "ece": ece_value}


def ece(probs, labels, num_bins: int = 15) -> float:
    """Expected calibration error: sum_b (n_b / n) |acc_b - conf_b| over equal-width bins."""
    return reliability_diagram(probs, labels, num_bins)["ece"]


def plot_reliability(diagram: dict, ax=None, label=None):
    """Draw a reliability diagram (from :func:`reliability_diagram`): bin accuracy against bin
    confidence as bars, the diagonal of perfect calibration, the ECE in the title. Returns the
    matplotlib Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    edges = np.asarray(diagram["edges"])
    width = np.diff(edges)
    acc = np.nan_to_num(np.asarray(diagram["accuracy"], np.float64))
    ax.bar(edges[:-1], acc, width=width, align="edge", edgecolor="k", alpha=0.6, label=label or "accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"ECE = {diagram['ece']:.4f}")
    ax.legend(loc="upper left")
    return ax


def predictive_entropy(probs) -> np.ndarray:
    """Entropy of each row's predictive, -sum_k p_k log p_k in nats (0 log 0 = 0), shape (n,)."""
    p = check_probs(probs)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=1)


def ood_auroc(probs_in, probs_out) -> float:
    """AUROC of predictive entropy for telling out-of-distribution inputs (``probs_out``) from
    in-distribution ones (``probs_in``): P(H_out > H_in) + P(H_out = H_in) / 2 over all pairs
    (the Mann-Whitney U statistic / (n_in n_out)). 1: every OOD input is more uncertain."""
    h_in = predictive_entropy(probs_in)
    h_out = predictive_entropy(probs_out)
    allh = np.concatenate([h_in, h_out])
    order = np.argsort(allh, kind="mergesort")
    ranks = np.empty(len(allh), np.float64)
    sorted_h = allh[order]
    # average ranks over ties
    i = 0
    while i < len(sorted_h):
        j = i
        while j + 1 < len(sorted_h) and sorted_h[j + 1] == sorted_h[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    n_in, n_out = len(h_in), len(h_out)
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_in * n_out))


def agreement(probs, ref) -> float:
    """Fraction of rows where the top class of ``probs`` equals that of the reference."""
    p, q = _pair(probs, ref)
    return float(np.mean(np.argmax(p, axis=1) == np.argmax(q, axis=1)))


def total_variation(probs, ref) -> float:
    """Mean over rows of the total-variation distance (1/2) sum_k |p_k - q_k|."""
    p, q = _pair(probs, ref)
    return float(np.mean(0.5 * np.abs(p - q).sum(axis=1)))


def scores(probs, labels, reference=None, num_bins: int = 15) -> dict:
    """accuracy, nll, brier, ece (and agreement, tv against ``reference`` when given)."""
    out = {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels), "brier": brier(probs, labels),
           "ece": ece(probs, labels, num_bins)}
    if reference is not None:
        out["agreement"] = agreement(probs, reference)
        out["tv"] = total_variation(probs, reference)
    return out


# --- regression: Gaussian predictives N(mean, var) --------------------------------------------

LEVELS = tuple(np.round(np.arange(1, 10) / 10, 1))  # nominal levels of the calibration error


def _real(x, name: str, shape=None) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    if a.ndim == 0 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty array (one value per test point), got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, the mean has {shape}: they must have the same shape")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds non-finite values ({int(np.sum(~np.isfinite(a)))} of them)")
    return a


def _gaussian(mean, var, name: str = ""):
    m = _real(mean, f"{name}mean")
    v = _real(var, f"{name}var", m.shape)
    if np.any(v <= 0):
        raise ValueError(f"{name}var must be > 0 (a predictive variance), got {int(np.sum(v <= 0))} values <= 0 "
                         f"(min {v.min():.3g}); pass variances, not log variances or sds")
    return m.ravel(), v.ravel()


def rmse(mean, y) -> float:
    """Root mean squared error of the predictive mean: sqrt(mean_i (m_i - y_i)^2)."""
    m = _real(mean, "mean")
    t = _real(y, "y", m.shape)
    return float(np.sqrt(np.mean((m - t) ** 2)))


def gaussian_nll(mean, var, y, *, pointwise: bool = False):
    """Mean negative log density of y under N(m_i, v_i): mean_i [log(2 pi v_i) / 2 +
    (y_i - m_i)^2 / (2 v_i)], in nats (``pointwise=True``: the (n,) terms, for paired tests)."""
    m, v = _gaussian(mean, var)
    t = _real(y, "y", np.shape(mean)).ravel()
    terms = 0.5 * np.log(2 * np.pi * v) + 0.5 * (t - m) ** 2 / v
    return terms if pointwise else float(terms.mean())


def _coverages(m, v, t, levels) -> np.ndarray:
    from scipy.special import ndtri

    lv = np.asarray(levels, np.float64).ravel()
    if lv.size == 0 or not np.all(np.isfinite(lv)) or np.any(lv <= 0) or np.any(lv >= 1):
        raise ValueError(f"levels must lie strictly between 0 and 1, got {levels!r}")
    z = ndtri(0.5 + lv / 2)  # half-widths in sds of the central intervals
    inside = np.abs(t - m)[None, :] <= z[:, None] * np.sqrt(v)[None, :]
    return inside.mean(axis=1)


def interval_coverage(mean, var, y, level: float = 0.9) -> float:
    """Fraction of y_i in the central interval m_i +- z_{(1+level)/2} sqrt(v_i) (endpoints count
    as inside); ``level`` in (0, 1). A calibrated predictive covers a fraction ``level``."""
    m, v = _gaussian(mean, var)
    t = _real(y, "y", np.shape(mean)).ravel()
    return float(_coverages(m, v, t, [level])[0])


def regression_calibration_error(mean, var, y, levels=LEVELS, *, curve: bool = False):
    """mean_a |coverage(a) - a| over the nominal levels a (default 0.1, 0.2, ..., 0.9) of
    central intervals; 0 for perfect calibration. ``curve=True``: (error, levels, coverages)."""
    m, v = _gaussian(mean, var)
    t = _real(y, "y", np.shape(mean)).ravel()
    cov = _coverages(m, v, t, levels)
    lv = np.asarray(levels, np.float64).ravel()
    err = float(np.mean(np.abs(cov - lv)))
    return (err, lv, cov) if curve else err


def gaussian_w2(mean, var, ref_mean, ref_var, *, scaled: bool = True) -> float:
    """Mean over points of the 2-Wasserstein distance between N(m_i, v_i) and the reference
    N(r_i, w_i), sqrt((m_i - r_i)^2 + (sqrt(v_i) - sqrt(w_i))^2), divided by the reference sd
    sqrt(w_i) when ``scaled`` (default): 0 for the reference itself, |m - r| / sd_ref for a
    shifted predictive of the right width."""
    m, v = _gaussian(mean, var)
    r, w = _gaussian(ref_mean, ref_var, "reference ")
    if np.shape(mean) != np.shape(ref_mean):
        raise ValueError(f"mean {np.shape(mean)} and reference mean {np.shape(ref_mean)} must have the same shape")
    d = np.sqrt((m - r) ** 2 + (np.sqrt(v) - np.sqrt(w)) ** 2)
    return float(np.mean(d / np.sqrt(w) if scaled else d))


def regression_scores(mean, var, y, reference=None, levels=LEVELS) -> dict:
    """rmse, nll, coverage_90 (interval_coverage at 0.9), calibration_error (and w2, the
    scaled :func:`gaussian_w2`, against ``reference`` = (ref_mean, ref_var) when given)."""
    out = {"rmse": rmse(mean, y), "nll": gaussian_nll(mean, var, y),
           "coverage_90": interval_coverage(mean, var, y, 0.9),
           "calibration_error": regression_calibration_error(mean, var, y, levels)}
    if reference is not None:
        out["w2"] = gaussian_w2(mean, var, *reference)
    return out
