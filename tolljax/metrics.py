"""Evaluation metrics of the paper's protocol (§4.1), in JAX so that checkpoint selection
runs on the device inside the compiled training program.

Both take per-sample anomaly scores (larger = more anomalous) and labels (1 = anomaly).

Validation: shapes are static, so they are checked (:class:`TollError`) whether the metric is
called on host arrays or traced inside ``jit``/``vmap``. Values can only be checked on the
host: called with concrete arrays, NaN/inf scores, labels other than 0/1, a single class
(AUROC) or a ``normal_fraction`` outside [0, 1] raise :class:`TollError`, as
``sklearn.metrics`` rejects NaN/inf input. Traced, the metric is NaN when any score is not
finite: a diverged or overflowing model's ranking is not a number to select or report, and
the protocol never keeps a checkpoint whose selection value is NaN.
"""
from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from tolljax.errors import TollError, index_list, numeric_array

# Arrhythmia (paper §4.1): "we label the expected 15 percent of samples with the highest
# anomaly scores as anomalous"; the authors' code predicts the round(0.854·N) lowest normal.
ARRHYTHMIA_NORMAL_FRACTION = 0.854


def _traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _host_array(x, fn: str, what: str) -> np.ndarray:
    """``x`` as a NumPy array, or a :class:`TollError` (ragged lists, non-numeric data)."""
    return numeric_array(x, f"{fn}: {what}", kinds="biuf", shape_hint="pass a 1-D numeric array",
                         dtype_hint="pass a numeric array")


def _check(fn: str, scores, labels):
    """Shape checks (static, also under ``jit``) and, for concrete inputs, value checks.

    Returns ``scores``/``labels`` unchanged for traced inputs and as NumPy arrays otherwise.
    """
    if not _traced(scores):
        scores = _host_array(scores, fn, "scores")
    if not _traced(labels):
        labels = _host_array(labels, fn, "labels")
    s_shape, y_shape = tuple(jnp.shape(scores)), tuple(jnp.shape(labels))
    if len(s_shape) != 1:
        raise TollError(f"{fn}: scores have shape {s_shape}; pass one score per sample, a 1-D "
                        "array of shape (n,)")
    if y_shape != s_shape:
        raise TollError(f"{fn}: {s_shape[0]} scores but labels of shape {y_shape}; pass one "
                        f"label per score, shape ({s_shape[0]},)")
    if s_shape[0] == 0:
        raise TollError(f"{fn}: no samples (empty scores); pass at least one score")
    if not _traced(scores):
        # Checked after the float32 cast the metric computes in: larger values overflow.
        with np.errstate(over="ignore", invalid="ignore"):
            bad = np.flatnonzero(~np.isfinite(scores.astype(np.float32)))
        if bad.size:
            raise TollError(f"{fn}: scores contain {bad.size} NaN/inf values (or values beyond "
                            f"the float32 range) at positions {index_list(bad)}; a diverged or "
                            "overflowing model cannot be evaluated, drop or fix those samples")
        tiny = np.finfo(np.float32).tiny
        with np.errstate(invalid="ignore"):
            subnormal = np.flatnonzero((scores != 0) & (np.abs(scores) < tiny))
        if subnormal.size:  # distinct on the host, equal (ties) on the device
            raise TollError(f"{fn}: {subnormal.size} scores are nonzero but smaller in magnitude "
                            f"than float32's smallest normal number ({tiny:.3g}) at positions "
                            f"{index_list(subnormal)}; XLA flushes them to 0, so they would "
                            "count as ties: rescale the scores")
    if not _traced(labels) and not np.isin(labels, (0, 1)).all():
        raise TollError(f"{fn}: labels must be 0 (normal) or 1 (anomaly) only")
    return scores, labels


def _nan_unless_finite(value: jnp.ndarray, scores: jnp.ndarray) -> jnp.ndarray:
    # Traced calls cannot raise on values: a NaN/inf score makes the metric NaN instead of a
    # plausible number (NaN/inf break the rank counts; NaN is never selected as "better").
    return jnp.where(jnp.all(jnp.isfinite(scores)), value, jnp.nan).astype(jnp.float32)


def auroc(scores: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Area under the ROC curve, ties counted as one half (as ``sklearn.metrics.roc_auc_score``).

    Computed as the Mann–Whitney statistic P(s_anomalous > s_normal) + ½ P(equal): up to
    65,535 samples from an exact int32 count of wins (2·wins ≤ n²/2 < 2³¹), with one rounding
    when it is divided in float32; beyond that, an int32 sum would wrap, so the per-anomaly
    win fractions are averaged in float32 instead. Scores are compared in float32 (the models'
    precision): scores that differ only below float32 resolution count as ties. Shapes are
    static (jit-friendly); both classes must be present (host calls raise :class:`TollError`
    otherwise; traced calls give NaN). NaN/inf scores: see the module docstring.
    """
    scores, labels = _check("auroc", scores, labels)
    if not _traced(labels) and np.unique(labels).size < 2:
        raise TollError("auroc: the labels hold only one class; AUROC needs normal (0) and "
                        "anomalous (1) samples")
    scores = jnp.asarray(scores, jnp.float32)
    is_anomaly = jnp.asarray(labels) == 1
    # Anomalies are pushed to +inf so the first n_normal sorted entries are the normal scores;
    # the counts below then only ever see normal samples (valid for finite scores; non-finite
    # ones make the result NaN below).
    normal_sorted = jnp.sort(jnp.where(is_anomaly, jnp.inf, scores))
    below = jnp.searchsorted(normal_sorted, scores, side="left", method="sort")
    at_or_below = jnp.searchsorted(normal_sorted, scores, side="right", method="sort")
    n = scores.shape[0]
    n_anomalous = jnp.sum(is_anomaly)
    n_normal = n - n_anomalous
    twice_wins = jnp.where(is_anomaly, below + at_or_below, 0)  # each ≤ 2·n_normal
    if n * n // 2 < 2**31:  # static: the total 2·wins ≤ 2·n_anomalous·n_normal ≤ n²/2 fits
        value = (jnp.sum(twice_wins).astype(jnp.float32)
                 / (2.0 * n_anomalous * n_normal).astype(jnp.float32))
    else:  # the int32 total would wrap (it gave -0.97 at n = 66,000)
        fractions = twice_wins.astype(jnp.float32) / (2.0 * n_normal)
        value = jnp.sum(fractions) / n_anomalous
    return _nan_unless_finite(value, scores)


def f1_top_fraction(scores: jnp.ndarray, labels: jnp.ndarray,
                    normal_fraction: float = ARRHYTHMIA_NORMAL_FRACTION) -> jnp.ndarray:
    """F1 of the anomalous class when the ``round(normal_fraction·N)`` lowest scores are
    predicted normal and the rest anomalous (paper §4.1, Table 4; authors' code).

    Ties are broken by sample order (stable sort), as ``numpy.argsort(kind="stable")``; scores
    are compared in float32, as in :func:`auroc`.
    Returns 0 when there are no true or predicted anomalies. ``normal_fraction`` is a Python
    number in [0, 1] (it fixes a static count). NaN/inf scores: see the module docstring.
    """
    if (isinstance(normal_fraction, (bool, np.bool_)) or not isinstance(normal_fraction, numbers.Real)
            or not math.isfinite(normal_fraction) or not 0 <= normal_fraction <= 1):
        raise TollError(f"f1_top_fraction: normal_fraction must be a number in [0, 1] (the "
                        f"fraction of samples predicted normal), got {normal_fraction!r}")
    scores, labels = _check("f1_top_fraction", scores, labels)
    n = scores.shape[0]
    n_predicted_normal = int(round(normal_fraction * n))
    # float32 as in auroc: int64 scores became int32 (x64 off) and wrapped above 2**31
    scores = jnp.asarray(scores, jnp.float32)
    order = jnp.argsort(scores, stable=True)
    predicted = jnp.zeros(n, jnp.int32).at[order[n_predicted_normal:]].set(1)
    actual = (jnp.asarray(labels) == 1).astype(jnp.int32)
    tp = jnp.sum(predicted * actual)
    fp = jnp.sum(predicted * (1 - actual))
    fn = jnp.sum((1 - predicted) * actual)
    denom = 2 * tp + fp + fn
    value = jnp.where(denom > 0, 2.0 * tp / jnp.maximum(denom, 1), 0.0)
    return _nan_unless_finite(value, scores)


METRICS = {"auroc": auroc, "f1": f1_top_fraction}
