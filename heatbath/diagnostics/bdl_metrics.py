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
