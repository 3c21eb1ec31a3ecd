import jax
import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from tolljax.errors import TollError
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
    # Anomalies shifted by a whole level: they tie with normal samples, and carry signal.
    scores = (rng.integers(0, levels, n) + labels).astype(np.float32)
    assert np.intersect1d(scores[labels == 0], scores[labels == 1]).size > 0
    assert abs(float(auroc(scores, labels)) - roc_auc_score(labels, scores)) < 1e-6


@pytest.mark.parametrize("n", [65_535, 66_000, 200_000])
def test_auroc_beyond_the_int32_count_matches_sklearn(n):
    # 2·wins passes 2**31 from ~65,536 samples: the int32 sum wrapped (AUROC -0.97 at 66,000).
    rng = np.random.default_rng(n)
    labels = (rng.random(n) < 0.5).astype(int)
    scores = (labels + 0.1 * rng.standard_normal(n)).astype(np.float32)
    scores[: n // 10] = np.round(scores[: n // 10], 1)  # ties
    assert float(auroc(scores, labels)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert float(jax.jit(auroc)(scores, labels)) == pytest.approx(roc_auc_score(labels, scores),
                                                                 abs=1e-6)


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


# ------------------------------------------------------------------ input validation

Y5 = np.array([0, 0, 0, 1, 1])


@pytest.mark.parametrize("scores", [
    np.full(5, np.nan),                     # was 1.1667 (an AUROC above 1)
    np.array([0.0, 1.0, np.nan, 2.0, 3.0]),  # was a plausible 0.667
    np.array([0.0, 1.0, 2.0, np.inf, 3.0]),  # was 1.1667
    np.array([np.inf, 0.0, 0.0, 1.0, 1.0]),  # was a plausible 0.667
    np.array([0.0, 1.0, 2.0, 1e39, 3.0]),    # finite, but inf in the float32 it is computed in
])
def test_nonfinite_scores_are_an_error_not_a_number(scores):
    with pytest.raises(TollError, match=r"scores contain \d+ NaN/inf values"):
        auroc(scores, Y5)
    with pytest.raises(TollError, match=r"scores contain \d+ NaN/inf values"):
        f1_top_fraction(scores, Y5, 0.6)


def test_subnormal_scores_are_an_error_not_ties():
    # XLA flushes float32 subnormals to 0: four distinct scores became ties (AUROC 0.5 where
    # sklearn gives 1.0; F1 1.0 for anomalies scored lowest, where the exact F1 is 0)
    y = np.array([0, 0, 1, 1])
    for scores in (np.array([1e-40, 2e-40, 3e-40, 4e-40], np.float32), np.array([1e-50, 1.0, 2.0, 3.0])):
        with pytest.raises(TollError, match=r"nonzero but smaller in magnitude than float32's "
                                            r"smallest normal number .* rescale the scores"):
            auroc(scores, y)
        with pytest.raises(TollError, match="smallest normal number"):
            f1_top_fraction(scores[::-1], y, 0.5)
    # zero and the smallest normal float32 are ordinary scores
    tiny = np.finfo(np.float32).tiny
    assert float(auroc(np.array([0.0, tiny, 2 * tiny, 3 * tiny], np.float32), y)) == 1.0


def test_all_nan_scores_do_not_give_a_perfect_f1():
    with pytest.raises(TollError, match=r"5 NaN/inf values .* positions \[0, 1, 2, 3, 4\]"):
        f1_top_fraction(np.full(5, np.nan), Y5, 0.6)  # was 1.0


@pytest.mark.parametrize("fraction", [-1, 2, 1.01, float("nan"), "0.5", True])
def test_normal_fraction_outside_0_1_is_an_error(fraction):
    with pytest.raises(TollError, match=r"normal_fraction must be a number in \[0, 1\]"):
        f1_top_fraction(np.arange(5.0), Y5, fraction)


@pytest.mark.parametrize("fn", [auroc, f1_top_fraction])
@pytest.mark.parametrize("scores, labels, message", [
    (np.arange(4.0), Y5, r"4 scores but labels of shape \(5,\)"),
    (np.ones((5, 2)), Y5, r"scores have shape \(5, 2\); pass one score per sample"),
    (np.arange(5.0), Y5.reshape(5, 1), r"5 scores but labels of shape \(5, 1\)"),
    (np.zeros(0), np.zeros(0), "no samples"),
    (np.arange(5.0), np.array([0, 0, 2, 1, 1]), "labels must be 0 .* or 1"),
    (np.array(["a"] * 5), Y5, "scores has dtype <U1"),
])
def test_bad_shapes_and_labels_are_toll_errors(fn, scores, labels, message):
    with pytest.raises(TollError, match=message) as err:
        fn(scores, labels)
    assert "\n" not in str(err.value)


def test_auroc_needs_both_classes():
    with pytest.raises(TollError, match="only one class"):
        auroc(np.arange(4.0), np.zeros(4, int))


def test_traced_metrics_still_work_and_give_nan_for_nonfinite_scores():
    # Under jit/vmap values cannot be checked: the metric is NaN instead of a plausible number
    # (NaN is never selected as the best checkpoint), and shapes are still checked.
    scores = np.array([[0.0, 1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, np.inf, 4.0],
                       [np.nan] * 5], np.float32)
    got = np.asarray(jax.jit(jax.vmap(auroc, in_axes=(0, None)))(scores, Y5))
    assert got[0] == 1.0 and np.isnan(got[1:]).all()
    f1 = jax.jit(f1_top_fraction, static_argnums=2)
    assert float(f1(scores[0], Y5, 0.6)) == 1.0 and np.isnan(float(f1(scores[2], Y5, 0.6)))
    with pytest.raises(TollError, match=r"4 scores but labels of shape \(5,\)"):
        jax.jit(auroc)(np.arange(4.0), Y5)


def test_f1_compares_integer_scores_in_float32():
    # int64 scores above 2**31 became int32 (x64 off) and wrapped: 3e9 ranked lowest, F1 0.0.
    scores, labels = np.array([3_000_000_000, 1, 2, 3]), np.array([1, 0, 0, 0])
    expected = f1_score(labels, np.array([1, 0, 0, 0]))  # the rule flags the top quarter
    assert float(f1_top_fraction(scores, labels, 0.75)) == expected == 1.0
    assert float(f1_top_fraction(scores, labels, 0.75)) == float(
        f1_top_fraction(scores.astype(np.float32), labels, 0.75))


def test_auroc_compares_integer_scores_in_float32():
    # As f1_top_fraction: int64 scores above 2**31 became int32 (x64 off) and wrapped, so
    # 3e9 would rank lowest. Reference: sklearn on the exact integers.
    scores, labels = np.array([3_000_000_000, 1, 2, 3]), np.array([1, 0, 0, 1])
    assert float(auroc(scores, labels)) == roc_auc_score(labels, scores) == 1.0
