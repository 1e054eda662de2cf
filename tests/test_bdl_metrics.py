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
