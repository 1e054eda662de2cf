"""BDL metrics against hand-computed values on fixed inputs, and their bad-input errors."""

import math

import numpy as np
import pytest

from heatbath.diagnostics import bdl_metrics as m

P = np.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8], [0.5, 0.5, 0.0]])
Y = np.array([0, 0, 2, 1])
REF = np.array([[0.2, 0.7, 0.1], [0.3, 0.4, 0.3], [0.1, 0.1, 0.8], [0.6, 0.4, 0.0]])


def test_accuracy_nll_brier_by_hand():
    # argmax 0, 1, 2, 0 (tie -> lowest index): right, wrong, right, wrong
    assert m.accuracy(P, Y) == 0.5
    assert m.nll(P, Y) == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.8) + math.log(0.5)) / 4,
                                        rel=1e-14)
    # rows: 0.09+0.04+0.01, 0.49+0.16+0.09, 0.01+0.01+0.04, 0.25+0.25+0
    assert m.brier(P, Y) == pytest.approx((0.14 + 0.74 + 0.06 + 0.5) / 4, rel=1e-14)


def test_ece_and_reliability_by_hand():
    # 5 bins of width 0.2: conf 0.7 and 0.8 in (0.6, 0.8] (both right), 0.4 in (0.2, 0.4]
    # (wrong), 0.5 in (0.4, 0.6] (wrong): ECE = (|2 - 1.5| + |0 - 0.4| + |0 - 0.5|) / 4
    d = m.reliability_diagram(P, Y, num_bins=5)
    assert d["ece"] == pytest.approx(0.35, abs=1e-14)
    assert m.ece(P, Y, num_bins=5) == pytest.approx(0.35, abs=1e-14)
    np.testing.assert_array_equal(d["count"], [0, 1, 1, 2, 0])
    np.testing.assert_allclose(d["confidence"][1:4], [0.4, 0.5, 0.75])
    np.testing.assert_allclose(d["accuracy"][1:4], [0.0, 0.0, 1.0])
    assert np.isnan(d["accuracy"][0]) and np.isnan(d["confidence"][4])
    np.testing.assert_allclose(d["edges"], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # perfectly calibrated: confidence 0.75 with 3 of 4 right
    p = np.tile([0.75, 0.25], (4, 1))
    assert m.ece(p, np.array([0, 0, 0, 1])) == pytest.approx(0.0, abs=1e-15)


def test_entropy_and_auroc_by_hand():
    h = m.predictive_entropy(P)
    assert h[3] == pytest.approx(math.log(2), rel=1e-14)
    assert h[0] == pytest.approx(-(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1)), rel=1e-14)
    # H_in = [0, h(.9)], H_out = [log 2, h(.9)]: pairs 1 + 1 + 1 + 1/2 (tie) of 4
    pin = np.array([[1.0, 0.0], [0.9, 0.1]])
    pout = np.array([[0.5, 0.5], [0.9, 0.1]])
    assert m.ood_auroc(pin, pout) == pytest.approx(0.875, abs=1e-15)
    assert m.ood_auroc(pout[:1], pin[:1]) == 0.0


def test_agreement_and_tv_by_hand():
    # top classes 0,1,2,0 vs 1,1,2,0; TV rows 0.5, 0, 0, 0.1
    assert m.agreement(P, REF) == 0.75
    assert m.total_variation(P, REF) == pytest.approx(0.15, abs=1e-15)
    assert m.total_variation(P, P) == 0.0
    s = m.scores(P, Y, reference=REF, num_bins=5)
    assert s["ece"] == pytest.approx(0.35) and s["tv"] == pytest.approx(0.15) and s["agreement"] == 0.75


def test_plot_reliability_runs():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = m.plot_reliability(m.reliability_diagram(P, Y, num_bins=5))
    assert "0.3500" in ax.get_title()


@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (P[0], Y, "shape"),
        (np.log(P + 1e-3), Y, "outside"),
        (P * 2, Y, "outside|sums"),
        (P * 0.9, Y, "sums to"),
        (np.where(P > 0.6, np.nan, P), Y, "non-finite"),
        (P, Y[:3], "labels must have shape"),
        (P, np.array([0, 1, 3, 0]), "0..2"),
        (P, np.array([0.5, 1, 2, 0]), "integer"),
        (P.astype(int), Y, "floating"),
    ],
)
def test_bad_input(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        m.nll(probs, labels)


def test_bad_reference_and_bins():
    with pytest.raises(ValueError, match="same shape"):
        m.agreement(P, REF[:3])
    with pytest.raises(ValueError, match="num_bins"):
        m.ece(P, Y, num_bins=0)


# --- regression ------------------------------------------------------------------------------

MU = np.array([0.0, 1.0, 2.0, 3.0])
VAR = np.array([1.0, 4.0, 1.0, 0.25])
T = np.array([0.5, -1.0, 2.0, 4.0])  # standardised errors |y - m| / sd: 0.5, 1, 0, 2


def test_rmse_and_gaussian_nll_by_hand():
    assert m.rmse(MU, T) == pytest.approx(math.sqrt((0.25 + 4 + 0 + 1) / 4), rel=1e-14)
    terms = [0.5 * math.log(2 * math.pi) + 0.125, 0.5 * math.log(8 * math.pi) + 0.5,
             0.5 * math.log(2 * math.pi), 0.5 * math.log(0.5 * math.pi) + 2.0]
    assert m.gaussian_nll(MU, VAR, T) == pytest.approx(sum(terms) / 4, rel=1e-14)
    np.testing.assert_allclose(m.gaussian_nll(MU, VAR, T, pointwise=True), terms, rtol=1e-14)


def test_coverage_and_calibration_error_by_hand():
    # central half-widths z_a: 0.126 0.253 0.385 0.524 0.674 0.842 1.036 1.282 1.645 (a = 0.1..0.9)
    assert m.interval_coverage(MU, VAR, T, 0.9) == 0.75  # 2 sd is outside
    assert m.interval_coverage(MU, VAR, T, 0.5) == 0.5  # 0 and 0.5 sd inside
    # coverages .25 .25 .25 .5 .5 .5 .75 .75 .75: |diffs| .15 .05 .05 .1 0 .1 .05 .05 .15
    err, levels, cov = m.regression_calibration_error(MU, VAR, T, curve=True)
    assert err == pytest.approx(0.7 / 9, abs=1e-14)
    np.testing.assert_allclose(levels, np.arange(1, 10) / 10)
    np.testing.assert_allclose(cov, [0.25] * 3 + [0.5] * 3 + [0.75] * 3)
    assert m.regression_calibration_error(MU, VAR, T, levels=[0.5]) == 0.0
    # a calibrated Gaussian predictive vs one whose sd is half the truth
    y = np.random.default_rng(0).normal(size=100_000)
    zero, one = np.zeros_like(y), np.ones_like(y)
    assert m.regression_calibration_error(zero, one, y) < 0.005
    assert m.interval_coverage(zero, 0.25 * one, y, 0.9) == pytest.approx(0.589, abs=0.005)


def test_gaussian_w2_by_hand():
    ref_mean, ref_var = np.array([0.0, 0.0, 2.0, 3.0]), np.array([1.0, 1.0, 4.0, 1.0])
    # per point: 0; sqrt(1^2 + (2-1)^2) / 1; |1 - 2| / 2; |0.5 - 1| / 1
    assert m.gaussian_w2(MU, VAR, ref_mean, ref_var) == pytest.approx((math.sqrt(2) + 0.5 + 0.5) / 4, rel=1e-14)
    assert m.gaussian_w2(MU, VAR, ref_mean, ref_var, scaled=False) == pytest.approx((math.sqrt(2) + 1.5) / 4,
                                                                                    rel=1e-14)
    assert m.gaussian_w2(MU, VAR, MU, VAR) == 0.0
    s = m.regression_scores(MU, VAR, T, reference=(ref_mean, ref_var))
    assert s["coverage_90"] == 0.75 and s["calibration_error"] == pytest.approx(0.7 / 9)
    assert s["w2"] == pytest.approx((math.sqrt(2) + 1) / 4) and s["rmse"] == pytest.approx(m.rmse(MU, T))


@pytest.mark.parametrize(
    "mean, var, y, match",
    [
        (MU[:, None], VAR, T, "var has shape"),
        (MU, VAR, T[:3], "y has shape"),
        (MU, -VAR, T, "var must be > 0"),
        (MU, VAR * 0, T, "var must be > 0"),
        (MU, VAR, np.where(T > 3, np.nan, T), "non-finite"),
        (np.where(MU > 2, np.inf, MU), VAR, T, "non-finite"),
        (MU > 1, VAR, T, "real numbers"),
        (np.float64(1.0), 1.0, 1.0, "non-empty"),
    ],
)
def test_regression_bad_input(mean, var, y, match):
    with pytest.raises(ValueError, match=match):
        m.gaussian_nll(mean, var, y)


def test_regression_bad_levels_and_reference():
    with pytest.raises(ValueError, match="levels"):
        m.regression_calibration_error(MU, VAR, T, levels=[0.5, 1.0])
    with pytest.raises(ValueError, match="levels"):
        m.interval_coverage(MU, VAR, T, level=0.0)
    with pytest.raises(ValueError, match="reference var must be > 0"):
        m.gaussian_w2(MU, VAR, MU, -VAR)
    with pytest.raises(ValueError, match="same shape"):
        m.gaussian_w2(MU, VAR, MU[:3], VAR[:3])
    with pytest.raises(ValueError, match="y has shape"):
        m.rmse(MU, T[:, None])
