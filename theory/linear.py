"""Gradient-flow dynamics of linear, bias-free encoders and autoencoders (paper §3.3, App. A).

Notation as in the paper: ``X`` (m × n) holds n zero-mean samples of dimension m as columns,
``S = X Xᵀ / n`` is their (empirical or population) covariance, ``W`` / ``W1`` (d × m) is the
encoder and ``W2`` (m × d) the decoder; ``Z = W1 X`` and ``X̂ = W2 W1 X``.

- Lemma 1 (eq. 6): under gradient flow on ``L_norm = ||W X||²_F / (2n)`` (eq. 5),
  ``Ẇ = −W S``.
- Theorem 1 (eq. 7): ``W(t) = W(0) U exp(−Λ t) Uᵀ`` with ``S = U Λ Uᵀ``: every principal
  direction of the code collapses at a rate equal to its variance (high variance first).
- Theorem 2 (eq. 10): under gradient flow on eq. 9,
  ``L = r·||W2 W1 X − X||²_F/(2n) + β·||W1 X||²_F/(2n)`` (the paper has ``r = 1``),
  ``Ẇ1 = [r (W2ᵀ − W2ᵀ W2 W1) − β W1] S`` and ``Ẇ2 = r [I − W2 W1] S W1ᵀ``.
  Figure 2 weights the terms as ``(1 − β)·rec + β·norm``, i.e. ``r = 1 − β``.

A consequence of eq. 10 used as a check (derived here, not in the paper): the "balance"
``G = W1 W1ᵀ − W2ᵀ W2`` obeys ``Ġ = −2β W1 S W1ᵀ`` for every ``r`` — the reconstruction
terms cancel exactly, as they do for any loss of the product ``W2 W1`` alone, and only the
norm term (which acts on ``W1`` only) unbalances the layers. For β > 0, ``G`` therefore
decreases forever: the encoder keeps shrinking and the decoder keeps growing, so the flow
has no finite non-trivial equilibrium (see :mod:`theory.figure2`).

Precision: every public function that takes concrete arrays computes in float64 under the
``jax.enable_x64(True)`` context manager and returns NumPy float64 arrays; x64 is never turned
on globally. The loss functions are plain ``jax.numpy`` code so that ``jax.grad`` can trace
them; when traced they compute in the caller's precision (run them inside
``jax.enable_x64(True)`` for float64, as :mod:`theory.checks` does).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Tuple, Union

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from theory import TheoryInputError
from theory._validation import (
    check_decoder,
    check_encoder,
    covariance_matrix,
    finite_result,
    integer,
    is_traced,
    loss_covariance,
    loss_matrix,
    loss_scalar,
    real_array,
    real_matrix,
    real_scalar,
    times,
)

ArrayLike = Union[np.ndarray, jax.Array, float, list]

# Solver settings. Dopri8 (8th order) rather than Tsit5: at tolerances near 1e-12 a 5th-order
# method needs ~10x more steps for the same global error. The local error allowed per entry is
# ATOL + RTOL·|entry|, so an entry stays within ~1e-12 relative error while it is above
# ATOL/RTOL = 1e-2 and within ~1e-14 absolute below that. Decaying components (Theorem 1
# shrinks W exponentially) therefore lose relative accuracy once they are tiny: measured
# against 50-digit expm, Lemma 1 with λ = (2, 1, 0.5) was 7e-12 off (relative, Frobenius) at
# t = 20, 5e-5 at t = 50 and 42 at t = 80 (‖W‖ ≈ 3e-18), where the closed form stays ≤ 1e-14.
RTOL = 1e-12
ATOL = 1e-14
# Default step budget of the solvers (overridable per call with ``max_steps``). Explicit Dopri8
# needs roughly t·λ_max(S) steps for stability alone, so this covers t·λ_max up to ~1e6; the
# budget also bounds how long a hopeless (too long or too stiff) solve runs before failing.
MAX_STEPS = 1_000_000


def _x64(fn: Callable) -> Callable:
    """Run ``fn`` with 64-bit JAX types enabled for its duration only (never globally)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return finite_result(f"{fn.__name__}'s result", fn(*args, **kwargs))

    return wrapper


# --------------------------------------------------------------------------------------------
# covariance, right-hand sides (Lemma 1, Theorem 2)
# --------------------------------------------------------------------------------------------


@_x64
def covariance(X: ArrayLike) -> np.ndarray:
    """``S = X Xᵀ / n`` for zero-mean data ``X`` of shape (m, n) (paper, below eq. 6).

    ``X`` holds the samples as *columns*, as in the paper. The mean is not subtracted (the
    theory assumes zero-mean data); a clearly non-centred ``X`` is rejected because ``X Xᵀ/n``
    would then not be the covariance the theorems are about. "Clearly": a row's one-sample
    t statistic ``mean / (s/√n)`` beyond Student's t two-sided 1e-6 quantile with n − 1
    degrees of freedom (≈ 6.2 for n = 30, 49 for n = 5, 1000 for n = 3; one sample is not tested).
    """
    X = real_matrix("X", X)
    m, n = X.shape
    if n >= 2:
        import scipy.stats

        # A t-test, not |mean| against the RMS: |mean| ≤ RMS always, so a bound of
        # 5·RMS/√n could never reject anything for n ≤ 25 (100 + randn(2, 20) passed).
        # constant rows: s = 0; entries beyond ~1e154 overflow s (reported after the product)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            mean = X.mean(axis=1)
            spread = X.std(axis=1, ddof=1) / np.sqrt(n)
            t = np.where(mean == 0, 0.0, np.abs(mean) / spread)
        if np.any(t > scipy.stats.t.isf(0.5e-6, n - 1)):
            raise TheoryInputError(
                "X must be zero-mean along its columns (the theory's assumption): subtract "
                "X.mean(axis=1, keepdims=True) first; X is m × n with samples as columns")
    Xj = jnp.asarray(X)
    return np.asarray(Xj @ Xj.T / n)


def _lemma1_vf(t, W, S):
    del t  # autonomous
    return -W @ S


def _theorem2_vf(t, state, args):
    del t  # autonomous
    W1, W2 = state
    S, beta, rec_weight = args
    eye = jnp.eye(W2.shape[0], dtype=W2.dtype)
    # eq. 10a with the reconstruction term weighted: r (W2ᵀ − W2ᵀ W2 W1) − β W1, times S
    dW1 = (rec_weight * (W2.T - W2.T @ W2 @ W1) - beta * W1) @ S
    # eq. 10b: only the reconstruction term depends on W2
    dW2 = rec_weight * (eye - W2 @ W1) @ S @ W1.T
    return dW1, dW2


@_x64
def lemma1_rhs(W: ArrayLike, S: ArrayLike) -> np.ndarray:
    """Right-hand side of Lemma 1 (eq. 6): ``Ẇ = −W S``, for ``W`` (d × m) and ``S`` (m × m)."""
    S = covariance_matrix(S)
    W = real_matrix("W", W)
    check_encoder("W", W.shape, S.shape[0])
    return np.asarray(_lemma1_vf(0.0, jnp.asarray(W), jnp.asarray(S)))


def _theorem2_inputs(S, W1, W2, beta, rec_weight, name1: str, name2: str):
    """Validated ``(S, W1, W2, beta, rec_weight)`` of a Theorem-2 call (errors name the argument)."""
    S = covariance_matrix(S)
    W1 = real_matrix(name1, W1)
    W2 = real_matrix(name2, W2)
    check_encoder(name1, W1.shape, S.shape[0])
    check_decoder(name2, W2.shape, W1.shape, name1)
    return S, W1, W2, real_scalar("beta", beta), real_scalar("rec_weight", rec_weight)


@_x64
def theorem2_rhs(W1: ArrayLike, W2: ArrayLike, S: ArrayLike, beta: float,
                 rec_weight: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """Right-hand side of Theorem 2 (eq. 10a, 10b) with the reconstruction term weighted.

    ``dW1 = [r (W2ᵀ − W2ᵀ W2 W1) − β W1] S`` and ``dW2 = r [I − W2 W1] S W1ᵀ`` with
    ``r = rec_weight`` (the paper's eq. 10 is ``r = 1``; Figure 2's ``(1 − β)·rec + β·norm``
    is ``r = 1 − β``). Shapes: ``W1`` (d × m), ``W2`` (m × d), ``S`` (m × m).
    """
    S, W1, W2, beta, rec_weight = _theorem2_inputs(S, W1, W2, beta, rec_weight, "W1", "W2")
    dW1, dW2 = _theorem2_vf(0.0, (jnp.asarray(W1), jnp.asarray(W2)),
                            (jnp.asarray(S), jnp.float64(beta), jnp.float64(rec_weight)))
    return np.asarray(dW1), np.asarray(dW2)


# --------------------------------------------------------------------------------------------
# losses (the objectives the flows descend)
# --------------------------------------------------------------------------------------------


def _maybe_x64(fn: Callable) -> Callable:
    """float64 for concrete inputs; under a JAX trace (``jax.grad``) keep the caller's mode."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if is_traced(*args, *kwargs.values()):
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return finite_result(f"{fn.__name__}'s result", np.float64(fn(*args, **kwargs)))

    return wrapper


def _data_matrix(X: ArrayLike) -> Union[np.ndarray, jax.Array]:
    """The loss's data ``X`` (m × n, samples as columns), validated like the other matrices.

    Empty data is refused here (``loss_matrix`` does that) because the mean over n = 0
    samples would be 0/0 = NaN.
    """
    return loss_matrix("X", X)


@_maybe_x64
def lemma1_loss(W: ArrayLike, X: ArrayLike) -> jax.Array:
    """Paper eq. 5: ``L_norm = (1/2n) Σ_ij Z_ij²`` with ``Z = W X``; its flow is Lemma 1.

    ``W`` is d × m, ``X`` is m × n (samples as columns). Concrete inputs are fully validated
    (finite, non-empty, matching shapes); under ``jax.grad`` / ``jax.jit`` only the shapes of
    traced arguments can be checked.
    """
    X = _data_matrix(X)
    W = loss_matrix("W", W)
    check_encoder("W", W.shape, X.shape[0], "the number of rows of X")
    W, X = jnp.asarray(W), jnp.asarray(X)
    Z = W @ X
    return jnp.sum(Z**2) / (2 * X.shape[1])


@_maybe_x64
def lemma1_loss_cov(W: ArrayLike, S: ArrayLike) -> jax.Array:
    """Eq. 5 written through the covariance: ``L_norm = ½ tr(W S Wᵀ)`` (``S = X Xᵀ/n``).

    A concrete ``S`` must be symmetric positive semi-definite, like every covariance here.
    """
    S = loss_covariance(S)
    W = loss_matrix("W", W)
    check_encoder("W", W.shape, S.shape[0])
    W, S = jnp.asarray(W), jnp.asarray(S)
    return 0.5 * jnp.trace(W @ S @ W.T)


def _theorem2_loss_args(W1: Any, W2: Any, m: int, beta: Any, rec_weight: Any,
                        m_from: str = "the size of S"):
    """``W1``, ``W2`` (as JAX arrays), β and r of a Theorem-2 loss on m-dimensional data,
    checked as :func:`theorem2_rhs` checks them (shapes always, values when concrete)."""
    W1 = loss_matrix("W1", W1)
    W2 = loss_matrix("W2", W2)
    check_encoder("W1", W1.shape, m, m_from)
    check_decoder("W2", W2.shape, W1.shape)
    return (jnp.asarray(W1), jnp.asarray(W2), loss_scalar("beta", beta),
            loss_scalar("rec_weight", rec_weight))


@_maybe_x64
def theorem2_loss(W1: ArrayLike, W2: ArrayLike, X: ArrayLike, beta: float,
                  rec_weight: float = 1.0) -> jax.Array:
    """Paper eq. 9 with a reconstruction weight ``r``; its gradient flow is Theorem 2.

    ``L = r·(1/2n) Σ (X̂ − X)²_ij + β·(1/2n) Σ Z²_ij`` with ``Z = W1 X``, ``X̂ = W2 Z``.
    """
    X = _data_matrix(X)
    W1, W2, beta, rec_weight = _theorem2_loss_args(W1, W2, X.shape[0], beta, rec_weight,
                                                   "the number of rows of X")
    X = jnp.asarray(X)
    n = X.shape[1]
    Z = W1 @ X
    rec = jnp.sum((W2 @ Z - X) ** 2) / (2 * n)
    norm = jnp.sum(Z**2) / (2 * n)
    return rec_weight * rec + beta * norm


@_maybe_x64
def theorem2_loss_cov(W1: ArrayLike, W2: ArrayLike, S: ArrayLike, beta: float,
                      rec_weight: float = 1.0) -> jax.Array:
    """Eq. 9 through the covariance: ``r/2 tr((P − I) S (P − I)ᵀ) + β/2 tr(W1 S W1ᵀ)``, ``P = W2 W1``.

    This is the population loss that Figure 2's flow (``S`` = the Gaussian's covariance) descends.
    """
    S = loss_covariance(S)
    W1, W2, beta, rec_weight = _theorem2_loss_args(W1, W2, S.shape[0], beta, rec_weight)
    S = jnp.asarray(S)
    E = W2 @ W1 - jnp.eye(S.shape[0], dtype=S.dtype)
    return 0.5 * rec_weight * jnp.trace(E @ S @ E.T) + 0.5 * beta * jnp.trace(W1 @ S @ W1.T)


# --------------------------------------------------------------------------------------------
# Theorem 1 closed form
# --------------------------------------------------------------------------------------------


@_x64
def theorem1_closed_form(W0: ArrayLike, S: ArrayLike, t: ArrayLike) -> np.ndarray:
    """Theorem 1 (eq. 7): ``W(t) = W(0) U exp(−Λ t) Uᵀ`` with ``S = U Λ Uᵀ``.

    ``t`` is a non-negative scalar (result d × m) or a 1-D array of times (result
    len(t) × d × m, stacked over the first axis).
    """
    S = covariance_matrix(S)
    W0 = real_matrix("W0", W0)
    check_encoder("W0", W0.shape, S.shape[0])
    ts, scalar = times(t, "t")
    lam, U = jnp.linalg.eigh(jnp.asarray(S))
    # S is PSD, but eigh returns ~−1e-17 (and the check lets −1e-10·scale through) for a
    # rank-deficient S, and exp(−λt) of a negative λ grows without bound at long times.
    lam = jnp.maximum(lam, 0.0)
    decay = jnp.exp(-jnp.asarray(ts)[:, None] * lam[None, :])  # (T, m): exp(−λ_k t)
    WU = jnp.asarray(W0) @ U
    out = np.asarray(jnp.einsum("dk,tk,mk->tdm", WU, decay, U))
    return out[0] if scalar else out


# --------------------------------------------------------------------------------------------
# ODE integration (diffrax)
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("vf", "max_steps"))
def _integrate(vf: Callable, y0: Any, args: Any, ts: jax.Array, max_steps: int) -> Any:
    """Integrate ``ẏ = vf(t, y, args)`` from t = 0; return (y at the sorted ``ts``, result).

    Adaptive Dopri8 with a PID step-size controller at rtol 1e-12 / atol 1e-14. ``throw=False``:
    a failed solve (``max_steps`` reached, …) is reported through diffrax's ``result`` instead
    of a runtime error raised from inside the compiled program (an equinox callback traceback
    that the caller cannot turn into a clear message); :func:`integrate` checks it.
    """
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        diffrax.Dopri8(),
        t0=jnp.zeros((), ts.dtype),
        t1=ts[-1],
        dt0=None,  # let the controller pick the first step from the local error estimate
        y0=y0,
        args=args,
        saveat=diffrax.SaveAt(ts=ts),
        # step_ts makes the solver step exactly onto every requested time, so outputs are
        # solver steps, not dense-output interpolants (which are one order less accurate).
        stepsize_controller=diffrax.ClipStepSizeController(
            diffrax.PIDController(rtol=RTOL, atol=ATOL), step_ts=ts),
        max_steps=max_steps,
        throw=False,
    )
    return sol.ys, sol.result


@_x64
def integrate(vf: Callable, y0: Any, args: Any, ts: ArrayLike, *,
              max_steps: int = MAX_STEPS) -> Any:
    """Integrate an autonomous flow ``vf(t, y, args)`` (a pytree state) at times ``ts`` ≥ 0.

    The building block of :func:`solve_lemma1` / :func:`solve_theorem2`, exposed so that
    checks can integrate augmented systems with the same solver (``vf`` must be a hashable,
    module-level function: it is a static argument of the jitted solver). Pass float64 arrays
    in ``y0`` / ``args``. Times may be in any order; results follow the input order, as NumPy
    arrays.

    Raises :class:`TheoryInputError` rather than returning a truncated or overflowed solution
    when the solver needs more than ``max_steps`` steps (horizon too long or flow too stiff),
    fails otherwise, or produces non-finite values. Each distinct ``max_steps`` compiles the
    solver once more (it sizes the solver's loop).
    """
    ts_arr, scalar = times(ts, "ts")
    # diffrax counts steps in int32: a larger budget was an OverflowError from inside JAX.
    max_steps = integer("max_steps", max_steps, minimum=1, maximum=2**31 - 1)
    # diffrax's SaveAt needs non-decreasing times: solve at the sorted times, then restore order.
    order = np.argsort(ts_arr, kind="stable")
    ys, result = _integrate(vf, y0, args, jnp.asarray(ts_arr[order]), max_steps)
    t_end = float(ts_arr.max())
    if result == diffrax.RESULTS.max_steps_reached:
        raise TheoryInputError(
            f"the ODE solver used all max_steps={max_steps} steps before reaching t = {t_end:g}: "
            "the time horizon is too long or the flow too stiff (large eigenvalues of S, β or "
            "weights) for this step budget; use a shorter time or pass a larger max_steps")
    if result != diffrax.RESULTS.successful:
        raise TheoryInputError(
            f"the ODE solver failed before reaching t = {t_end:g}: {diffrax.RESULTS[result]}")
    leaves = [np.asarray(a) for a in jax.tree_util.tree_leaves(ys)]
    if not all(np.all(np.isfinite(a)) for a in leaves):
        # A flow that overflows float64 (enormous weights or β) would otherwise come back as
        # inf / NaN matrices that look like results.
        raise TheoryInputError(
            f"the ODE solution overflowed to non-finite values before t = {t_end:g}: "
            "the initial weights, S or β are too large; rescale them or use a shorter time")
    inverse = np.argsort(order, kind="stable")
    ys = jax.tree_util.tree_map(lambda a: np.asarray(a)[inverse], ys)
    if scalar:
        ys = jax.tree_util.tree_map(lambda a: a[0], ys)
    return ys


@_x64
def solve_lemma1(W0: ArrayLike, S: ArrayLike, ts: ArrayLike, *,
                 max_steps: int = MAX_STEPS) -> np.ndarray:
    """Integrate Lemma 1's flow ``Ẇ = −W S`` (eq. 6) from ``W(0) = W0``.

    Returns ``W(t)`` for each time in ``ts`` (≥ 0), stacked over the first axis
    (len(ts) × d × m); a scalar ``ts`` returns a single d × m matrix. Compare with
    :func:`theorem1_closed_form`. The error is ~1e-14 absolute (``ATOL``) once entries of
    ``W`` fall below ~1e-2, so components that have decayed to near ``ATOL`` are not tracked
    to a small *relative* error; the closed form is. The explicit solver needs roughly
    ``max(ts)·λ_max(S)`` steps; more than ``max_steps`` raises :class:`TheoryInputError`
    (use the closed form for very long horizons).
    """
    S = covariance_matrix(S)
    W0 = real_matrix("W0", W0)
    check_encoder("W0", W0.shape, S.shape[0])
    times(ts, "ts")
    return integrate(_lemma1_vf, jnp.asarray(W0), jnp.asarray(S), ts, max_steps=max_steps)


@_x64
def solve_theorem2(W1_0: ArrayLike, W2_0: ArrayLike, S: ArrayLike, beta: float, ts: ArrayLike,
                   rec_weight: float = 1.0, *, max_steps: int = MAX_STEPS
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Integrate Theorem 2's coupled flow (eq. 10a, 10b; reconstruction weighted by ``rec_weight``).

    Returns ``(W1(ts), W2(ts))``, each stacked over the first axis (len(ts) × d × m and
    len(ts) × m × d); a scalar ``ts`` returns single matrices. A solve that needs more than
    ``max_steps`` steps (long horizon, large β·λ_max(S) or a very ill-conditioned ``S``)
    raises :class:`TheoryInputError`.
    """
    S, W1_0, W2_0, beta, rec_weight = _theorem2_inputs(S, W1_0, W2_0, beta, rec_weight,
                                                       "W1_0", "W2_0")
    times(ts, "ts")
    args = (jnp.asarray(S), jnp.float64(beta), jnp.float64(rec_weight))
    W1s, W2s = integrate(_theorem2_vf, (jnp.asarray(W1_0), jnp.asarray(W2_0)), args, ts,
                         max_steps=max_steps)
    return W1s, W2s


def balance(W1: ArrayLike, W2: ArrayLike) -> np.ndarray:
    """``G = W1 W1ᵀ − W2ᵀ W2`` (d × d); along Theorem 2's flow ``Ġ = −2β W1 S W1ᵀ``.

    Accepts single matrices or equally stacked ones (…, d, m) / (…, m, d). Shapes must match
    exactly: NumPy would otherwise broadcast mismatched stacks into a wrong result.
    """
    W1 = real_array("W1", W1)
    W2 = real_array("W2", W2)
    for name, A in (("W1", W1), ("W2", W2)):
        if A.ndim < 2:
            raise TheoryInputError(f"{name} must be a matrix or a stack of matrices, got shape {A.shape}")
    check_decoder("W2", W2.shape, W1.shape)
    if W1.shape[:-2] != W2.shape[:-2]:
        raise TheoryInputError(
            f"shape mismatch: W1 and W2 must be stacked alike, got leading shapes "
            f"{W1.shape[:-2]} and {W2.shape[:-2]}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
        G = W1 @ np.swapaxes(W1, -1, -2) - np.swapaxes(W2, -1, -2) @ W2
    return finite_result("balance's result", G)
