"""Figure 2 of the paper: score contours of a linear 2 → 1 → 2 autoencoder, β = 0 vs β > 0.

Setting (paper §3.3, Figure 2): 2-D zero-mean Gaussian with diagonal covariance
``diag(4, 1)`` (std 2 along x1, 1 along x2); encoder ``W1`` (1 × 2), decoder ``W2`` (2 × 1),
no biases; training loss ``(1 − β)·rec + β·norm`` (eq. 9 with the reconstruction weighted by
``r = 1 − β``). Training is the gradient flow of Theorem 2 on the *population* covariance
(the limit of infinitely many samples and an infinitesimal learning rate), so the result is
deterministic given the initial weights.

Score (choice documented here): per point, the same weighting as the loss,

    s(x) = (1 − β)·||W2 W1 x − x||² + β·||W1 x||²     (squared, as in eq. 9),

i.e. twice the point's contribution to the training loss. It is a quadratic form
``s(x) = xᵀ Q x`` (:func:`score_matrix`), so its contours are ellipses (closed iff Q is
positive definite) or, when Q is singular, pairs of parallel lines ("bands"). With
``squared=False`` the Toll-style norm version ``(1 − β)·||·|| + β·||·||`` is returned instead:
a sum of seminorms, so its level sets are convex and, for β > 0, closed, but they are not
ellipses and their shape differs from the squared version's (the two terms are balanced
differently).

What the flow does (used to choose the training time):

- β = 0 (panel a): the flow converges to the PCA solution, ``W2 W1 → e1 e1ᵀ``, so
  ``s(x) = x2²``: contours are bands parallel to x1 (the score ignores x1 entirely).
- β > 0 (panel b): ``G = W1 W1ᵀ − W2ᵀ W2`` obeys ``Ġ = −2β W1 S W1ᵀ < 0`` (see
  :mod:`theory.linear`), so the flow has **no finite non-trivial equilibrium**: the encoder
  gain ``a`` along x1 keeps shrinking while the decoder gain ``b ≈ 1/a`` keeps growing
  (``W2 W1`` → the PCA projector). Along this drift ``Q ≈ diag(β a², 1 − β)`` and the
  contours' x1 : x2 half-axis ratio ``≈ sqrt((1 − β) / (β a²))`` grows without bound, slowly:
  restricted to x1, ``Ġ = −2βλ1 a²`` with ``G ≈ −1/a²`` gives ``a ≈ (4βλ1 t)^{-1/4}``, so the
  ratio grows like ``t^{1/4}`` (measured for β = 0.7: 2.1, 3.3, 4.9, 7.1, 10.1 at
  t = 20, 80, 320, 1280, 5120; ``a⁻⁴`` is within 3 % of ``4βλ1 t`` from t = 320 on).
  The contour shape is therefore a function of training time, not only of β;
  :func:`fit_path` and figure (c) of :mod:`theory.figures` show it.

Chosen training time and β (``T_TRAIN = 20``, ``DEFAULT_BETA = 0.7``), in units of
``1/λ_min`` (λ_min = 1 here):

- T = 20 is the time by which the *unregularised* flow of panel (a) has converged. Near the PCA
  solution the x2 parts (ε1, ε2) of encoder and decoder obey ``ε̇ = [[−λ2, λ2], [λ2, −λ1]] ε``,
  whose slowest rate is ``(λ1 + λ2)/2 − sqrt(((λ1 − λ2)/2)² + λ2²) ≈ 0.70``; after the escape from
  the small initialisation (t ≈ 2–5) they are below 1e-6 at T = 20 for seeds 0–9, so the β = 0
  score varies by ≤ 1.1e-5 relative along x1 ∈ [−6, 6] (≤ 4e-6 for 8 of the 10 seeds): panel (a) is the paper's converged
  solution, not an artefact of early stopping. Both panels use the same T, so the only
  difference between them is β.
- At T = 20, β = 0.7 gives closed elliptical contours whose x1 : x2 half-axis ratio is
  1.95–2.19 (seeds 0–9; the ellipse axes are tilted ≤ 6° from x1, x2), i.e. close to the
  data's std ratio 2: the score contours follow the data's density contours, which is the
  paper's claim for "a good choice of β".
  Smaller β at the same T gives longer ellipses (β = 0.6: ratio ≈ 2.7), longer training too.
- The initial weights are N(0, 0.1²) ("small init"), so the two layers start nearly balanced
  (G(0) ≈ 0) and the result depends little on the seed.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from theory import TheoryInputError
from theory._validation import (finite_result, integer, real_matrix, real_scalar,
                                seed as check_seed, times)
from theory.linear import MAX_STEPS, ArrayLike, solve_theorem2

VARIANCES = (4.0, 1.0)
COV = np.diag(VARIANCES)
STD_RATIO = float(np.sqrt(VARIANCES[0] / VARIANCES[1]))  # 2: x1 : x2 axis ratio of the density
DEFAULT_BETA = 0.7
T_TRAIN = 20.0
INIT_SCALE = 0.1


def _beta(beta: float) -> float:
    b = real_scalar("beta", beta)
    if b > 1:
        raise TheoryInputError(f"beta must be in [0, 1] (loss (1 − β)·rec + β·norm), got {b}")
    return b


def init_weights(seed: int = 0, init_scale: float = INIT_SCALE) -> Tuple[np.ndarray, np.ndarray]:
    """Initial ``(W1, W2)`` of shapes (1, 2) and (2, 1): i.i.d. N(0, init_scale²).

    ``seed`` is a non-negative integer (checked here: ``np.random.default_rng`` would raise
    its own ``ValueError`` for negative seeds and accept other objects as seeds).
    """
    init_scale = real_scalar("init_scale", init_scale)
    rng = np.random.default_rng(check_seed(seed))
    return init_scale * rng.standard_normal((1, 2)), init_scale * rng.standard_normal((2, 1))


def fit_path(beta: float, ts: ArrayLike, *, seed: int = 0, init_scale: float = INIT_SCALE,
             max_steps: int = MAX_STEPS) -> Tuple[np.ndarray, np.ndarray]:
    """``(W1(t), W2(t))`` at the times ``ts`` of Figure 2's gradient flow (Theorem 2, r = 1 − β).

    Stacked over the first axis: shapes (len(ts), 1, 2) and (len(ts), 2, 1). ``max_steps``
    is the solver's step budget (see :func:`theory.linear.solve_theorem2`).
    """
    beta = _beta(beta)
    W1_0, W2_0 = init_weights(seed, init_scale)
    return solve_theorem2(W1_0, W2_0, COV, beta, ts, rec_weight=1.0 - beta, max_steps=max_steps)


def fit(beta: float, *, seed: int = 0, t_train: float = T_TRAIN, init_scale: float = INIT_SCALE,
        max_steps: int = MAX_STEPS) -> Tuple[np.ndarray, np.ndarray]:
    """Train Figure 2's linear autoencoder by gradient flow; return ``(W1, W2)`` at ``t_train``.

    The flow is Theorem 2 (eq. 10) on the population covariance ``diag(4, 1)`` with loss
    ``(1 − β)·rec + β·norm``, from N(0, ``init_scale``²) weights drawn with ``seed``.
    The default ``t_train = 20`` and ``DEFAULT_BETA = 0.7`` are justified in the module
    docstring: β = 0 has converged to PCA by then, while for β > 0 there is no equilibrium
    and the contour shape keeps changing with ``t_train``.
    """
    ts, scalar = times(t_train, "t_train")
    if not scalar:
        raise TheoryInputError("t_train must be a single time; use fit_path for several")
    W1s, W2s = fit_path(beta, ts, seed=seed, init_scale=init_scale, max_steps=max_steps)
    return W1s[0], W2s[0]


def _weights(W1: ArrayLike, W2: ArrayLike) -> Tuple[np.ndarray, np.ndarray]:
    W1 = real_matrix("W1", W1)
    W2 = real_matrix("W2", W2)
    if W1.shape != (1, 2) or W2.shape != (2, 1):
        raise TheoryInputError(
            f"shape mismatch: Figure 2 needs W1 (1, 2) and W2 (2, 1), got {W1.shape} and {W2.shape}")
    return W1, W2


def score(W1: ArrayLike, W2: ArrayLike, beta: float, x: ArrayLike, *,
          squared: bool = True) -> np.ndarray:
    """Anomaly score of points ``x`` (N × 2), weighted like the training loss.

    ``squared=True`` (default): ``(1 − β)·||W2 W1 x − x||² + β·||W1 x||²``;
    ``squared=False``: ``(1 − β)·||W2 W1 x − x|| + β·||W1 x||`` (Toll's norm form).
    Returns shape (N,), float64.
    """
    W1, W2 = _weights(W1, W2)
    beta = _beta(beta)
    if not isinstance(squared, (bool, np.bool_)):  # "no" would be truthy: the squared score
        raise TheoryInputError(f"squared must be True or False, got {squared!r}")
    x = real_matrix("x", x)
    if x.shape[1] != 2:
        raise TheoryInputError(f"shape mismatch: x must be N × 2 points, got {x.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
        z = x @ W1.T                      # (N, 1) codes
        resid = z @ W2.T - x              # (N, 2) reconstruction errors
        rec = np.sum(resid**2, axis=1)
        norm = np.sum(z**2, axis=1)
        if not squared:
            rec, norm = np.sqrt(rec), np.sqrt(norm)
        s = (1.0 - beta) * rec + beta * norm
    return finite_result("score", s)


def score_matrix(W1: ArrayLike, W2: ArrayLike, beta: float) -> np.ndarray:
    """``Q`` (2 × 2) with ``score(x) = xᵀ Q x``: ``(1 − β)(P − I)ᵀ(P − I) + β W1ᵀ W1``, ``P = W2 W1``."""
    W1, W2 = _weights(W1, W2)
    beta = _beta(beta)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
        E = W2 @ W1 - np.eye(2)
        Q = (1.0 - beta) * E.T @ E + beta * W1.T @ W1
    return finite_result("score_matrix", Q)


def half_axis_ratio(W1: ArrayLike, W2: ArrayLike, beta: float) -> float:
    """x1 : x2 ratio of a score contour's half-axes (where it crosses the x1 and x2 axes).

    ``s(c·e_i) = c² Q_ii``, so the level-``ℓ`` contour crosses axis i at ``sqrt(ℓ / Q_ii)``;
    the ratio is ``sqrt(Q22 / Q11)`` for every level. It is ∞ only when ``Q11`` is exactly 0:
    β = 0's flow at ``T_TRAIN`` is within ~1e-7 of PCA, not on it, so its ``Q11`` is
    ~1e-17–1e-13 and the ratio a large finite number (~1e6–1e8 for seeds 0–2): bands within
    any plotted window.
    """
    Q = score_matrix(W1, W2, beta)
    return float(np.sqrt(Q[1, 1] / Q[0, 0])) if Q[0, 0] > 0 else float("inf")


def sample(n: int, seed: int = 0) -> np.ndarray:
    """``n`` points (n × 2) from the Gaussian N(0, diag(4, 1)) (for scatter plots)."""
    n = integer("n", n, minimum=0)
    rng = np.random.default_rng(check_seed(seed))
    return rng.standard_normal((n, 2)) * np.sqrt(np.asarray(VARIANCES))


def mahalanobis_sq(x: ArrayLike) -> np.ndarray:
    """``xᵀ Σ⁻¹ x`` for points ``x`` (N × 2): the density's level-set function."""
    x = real_matrix("x", x)
    if x.shape[1] != 2:  # the other columns would be dropped without a word
        raise TheoryInputError(f"shape mismatch: x must be N × 2 points, got {x.shape}")
    return x[:, 0] ** 2 / VARIANCES[0] + x[:, 1] ** 2 / VARIANCES[1]
