import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from tolljax.metrics import auroc, f1_top_fraction


def _reference_f1(scores, labels, fraction=0.854):
    k = int(round(fraction * len(scores)))
    predicted = np.zeros(len(scores), int)
    predicted[np.argsort(scores, kind="stable")[k:]] = 1
    return f1_score(labels, predicted, zero_division=0)


@pytest.mark.parametrize("n, levels", [(20, 3), (90, 1000), (1000, 5), (10000, 50)])
def test_auroc_matches_sklearn_with_ties(n, levels):
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = rng.integers(0, levels, n).astype(np.float32) + 0.3 * labels  # ties and signal
    assert abs(float(auroc(scores, labels)) - roc_auc_score(labels, scores)) < 1e-6


def test_auroc_extremes_and_all_ties():
    labels = np.array([0, 0, 1, 1])
    assert float(auroc(np.array([0.0, 1.0, 2.0, 3.0]), labels)) == 1.0
    assert float(auroc(np.array([3.0, 2.0, 1.0, 0.0]), labels)) == 0.0
    assert float(auroc(np.ones(4), labels)) == 0.5


@pytest.mark.parametrize("n", [10, 90, 452, 1000])
def test_f1_rule_matches_sklearn(n):
    rng = np.random.default_rng(n)
    labels = (rng.random(n) < 0.15).astype(int)
    labels[0] = 1
    scores = (rng.integers(0, 7, n) + 2.0 * labels).astype(np.float32)  # many ties
    np.testing.assert_allclose(float(f1_top_fraction(scores, labels)),
                               _reference_f1(scores, labels), atol=1e-6)


def test_f1_arrhythmia_sized_case_by_hand():
    # 90 samples: round(0.854 * 90) = 77 predicted normal, 13 anomalous. Put 7 of the 13
    # anomalies among the 13 highest scores: F1 = 2·7 / (2·7 + 6 + 6) = 7/13.
    labels = np.zeros(90, int)
    labels[[0, 1, 2, 3, 4, 5, 6, 20, 21, 22, 23, 24, 25]] = 1
    scores = np.arange(90, 0, -1).astype(np.float32)  # sample 0 has the highest score
    assert abs(float(f1_top_fraction(scores, labels)) - 7 / 13) < 1e-6


def test_f1_no_predicted_or_true_anomalies_is_zero():
    assert float(f1_top_fraction(np.arange(4.0), np.zeros(4, int), normal_fraction=1.0)) == 0.0
