"""Evaluation metrics of the paper's protocol (§4.1), in JAX so that checkpoint selection
runs on the device inside the compiled training program.

Both take per-sample anomaly scores (larger = more anomalous) and labels (1 = anomaly).
"""
from __future__ import annotations

import jax.numpy as jnp

# Arrhythmia (paper §4.1): "we label the expected 15 percent of samples with the highest
# anomaly scores as anomalous"; the authors' code predicts the round(0.854·N) lowest normal.
ARRHYTHMIA_NORMAL_FRACTION = 0.854


def auroc(scores: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Area under the ROC curve, ties counted as one half (as ``sklearn.metrics.roc_auc_score``).

    Computed as the Mann–Whitney statistic P(s_anomalous > s_normal) + ½ P(equal) with
    integer counts, so it is exact up to the final division even for 10,000 samples in
    float32. Shapes are static (jit-friendly); both classes must be present.
    """
    scores = jnp.asarray(scores, jnp.float32)
    is_anomaly = jnp.asarray(labels) == 1
    # Anomalies are pushed to +inf so the first n_normal sorted entries are the normal scores;
    # the counts below then only ever see normal samples (scores are finite).
    normal_sorted = jnp.sort(jnp.where(is_anomaly, jnp.inf, scores))
    below = jnp.searchsorted(normal_sorted, scores, side="left", method="sort")
    at_or_below = jnp.searchsorted(normal_sorted, scores, side="right", method="sort")
    n_anomalous = jnp.sum(is_anomaly)
    n_normal = scores.shape[0] - n_anomalous
    twice_wins = jnp.sum(jnp.where(is_anomaly, below + at_or_below, 0))
    return twice_wins.astype(jnp.float32) / (2.0 * n_anomalous * n_normal).astype(jnp.float32)


def f1_top_fraction(scores: jnp.ndarray, labels: jnp.ndarray,
                    normal_fraction: float = ARRHYTHMIA_NORMAL_FRACTION) -> jnp.ndarray:
    """F1 of the anomalous class when the ``round(normal_fraction·N)`` lowest scores are
    predicted normal and the rest anomalous (paper §4.1, Table 4; authors' code).

    Ties are broken by sample order (stable sort), as ``numpy.argsort(kind="stable")``.
    Returns 0 when there are no true or predicted anomalies.
    """
    n = scores.shape[0]
    n_predicted_normal = int(round(normal_fraction * n))
    order = jnp.argsort(jnp.asarray(scores), stable=True)
    predicted = jnp.zeros(n, jnp.int32).at[order[n_predicted_normal:]].set(1)
    actual = (jnp.asarray(labels) == 1).astype(jnp.int32)
    tp = jnp.sum(predicted * actual)
    fp = jnp.sum(predicted * (1 - actual))
    fn = jnp.sum((1 - predicted) * actual)
    denom = 2 * tp + fp + fn
    return jnp.where(denom > 0, 2.0 * tp / jnp.maximum(denom, 1), 0.0).astype(jnp.float32)


METRICS = {"auroc": auroc, "f1": f1_top_fraction}
