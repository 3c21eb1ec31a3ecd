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

ArrayLike = Union[np.ndarray, jax.Array, float, list]

# Solver settings. Dopri8 (8th order) rather than Tsit5: at tolerances near 1e-12 a 5th-order
# method needs ~10x more steps for the same global error. atol is below rtol so that decaying
# components (Theorem 1 shrinks W exponentially) are still tracked to ~1e-12 relative error.
RTOL = 1e-12
ATOL = 1e-14
MAX_STEPS = 1_000_000

# Relative tolerance for "S is symmetric / PSD". Covariances computed in floating point are
# symmetric only up to rounding, so exact equality would reject valid input.
_SYM_TOL = 1e-10


# --------------------------------------------------------------------------------------------
# input validation (NumPy, on concrete values; shapes are also checked for JAX tracers)
# --------------------------------------------------------------------------------------------


def _is_traced(*xs: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def _matrix(name: str, A: ArrayLike) -> np.ndarray:
    """Concrete 2-D finite float64 matrix, or a clear error."""
    try:
        arr = np.asarray(A, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TheoryInputError(f"{name} must be a real numeric array ({err})") from None
    if arr.ndim != 2:
        raise TheoryInputError(f"{name} must be a 2-D matrix, got shape {arr.shape}")
    if arr.size == 0:
        raise TheoryInputError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise TheoryInputError(f"{name} contains NaN or infinite entries")
    return arr


def _scalar(name: str, value: Any, *, nonnegative: bool = True) -> float:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TheoryInputError(f"{name} must be a real number, got {value!r}") from None
    if arr.ndim != 0:
        raise TheoryInputError(f"{name} must be a scalar, got shape {arr.shape}")
    v = float(arr)
    if not np.isfinite(v):
        raise TheoryInputError(f"{name} must be finite, got {v}")
    if nonnegative and v < 0:
        raise TheoryInputError(f"{name} must be >= 0, got {v}")
    return v


def _check_square(name: str, shape: Tuple[int, ...]) -> None:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise TheoryInputError(f"{name} must be a square m × m matrix, got shape {tuple(shape)}")


def _covariance_matrix(S: ArrayLike, name: str = "S") -> np.ndarray:
    """Validate a covariance: square, finite, symmetric and positive semi-definite.

    Returns the exactly symmetrised matrix ``(S + Sᵀ)/2`` (the difference is below the
    tolerance; symmetrising makes ``eigh`` and the flow see the same matrix).
    """
    S = _matrix(name, S)
    _check_square(name, S.shape)
    scale = max(1.0, float(np.max(np.abs(S))))
    asym = float(np.max(np.abs(S - S.T)))
    if asym > _SYM_TOL * scale:
        raise TheoryInputError(
            f"{name} must be symmetric (a covariance X Xᵀ/n); max |{name} − {name}ᵀ| = {asym:.3g}")
    S = 0.5 * (S + S.T)
    lam_min = float(np.linalg.eigvalsh(S)[0])
    if lam_min < -_SYM_TOL * scale:
        raise TheoryInputError(
            f"{name} must be positive semi-definite (a covariance); smallest eigenvalue {lam_min:.3g}")
    return S


def _check_encoder(name: str, W_shape: Tuple[int, ...], m: int) -> None:
    if len(W_shape) != 2 or W_shape[1] != m:
        raise TheoryInputError(
            f"shape mismatch: {name} must be d × m with m = {m} (the size of S), got {tuple(W_shape)}")


def _check_decoder(name: str, W2_shape: Tuple[int, ...], W1_shape: Tuple[int, ...]) -> None:
    d, m = W1_shape
    if len(W2_shape) != 2 or tuple(W2_shape) != (m, d):
        raise TheoryInputError(
            f"shape mismatch: {name} must be m × d = {(m, d)} (transpose shape of W1 {tuple(W1_shape)}),"
            f" got {tuple(W2_shape)}")


def _times(t: ArrayLike, name: str = "t") -> Tuple[np.ndarray, bool]:
    """Non-negative finite times as a 1-D float64 array, and whether the input was a scalar."""
    try:
        arr = np.asarray(t, dtype=np.float64)
    except (TypeError, ValueError):
        raise TheoryInputError(f"{name} must be a real number or 1-D array of times") from None
    if arr.ndim > 1:
        raise TheoryInputError(f"{name} must be a scalar or a 1-D array of times, got shape {arr.shape}")
    if arr.size == 0:
        raise TheoryInputError(f"{name} must contain at least one time")
    if not np.all(np.isfinite(arr)):
        raise TheoryInputError(f"{name} must be finite")
    if np.any(arr < 0):
        raise TheoryInputError(
            f"{name} must be >= 0 (gradient flow runs forward from t = 0); got min {arr.min():g}")
    return np.atleast_1d(arr), arr.ndim == 0


def _x64(fn: Callable) -> Callable:
    """Run ``fn`` with 64-bit JAX types enabled for its duration only (never globally)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------
# covariance, right-hand sides (Lemma 1, Theorem 2)
# --------------------------------------------------------------------------------------------


@_x64
def covariance(X: ArrayLike) -> np.ndarray:
    """``S = X Xᵀ / n`` for zero-mean data ``X`` of shape (m, n) (paper, below eq. 6).

    ``X`` holds the samples as *columns*, as in the paper. The mean is not subtracted (the
    theory assumes zero-mean data); a clearly non-centred ``X`` is rejected because ``X Xᵀ/n``
    would then not be the covariance the theorems are about.
    """
    X = _matrix("X", X)
    m, n = X.shape
    mean = X.mean(axis=1)
    # The tolerance allows finite-sample means of genuinely zero-mean data (e.g. Gaussian
    # samples, |mean| ~ std/sqrt(n)) but catches data that was never centred.
    std = np.sqrt(np.maximum((X**2).mean(axis=1), np.finfo(np.float64).tiny))
    if np.any(np.abs(mean) > 5.0 * std / np.sqrt(n) + 1e-12):
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
    S = _covariance_matrix(S)
    W = _matrix("W", W)
    _check_encoder("W", W.shape, S.shape[0])
    return np.asarray(_lemma1_vf(0.0, jnp.asarray(W), jnp.asarray(S)))


def _theorem2_inputs(S, W1, W2, beta, rec_weight, name1: str, name2: str):
    """Validated ``(S, W1, W2, beta, rec_weight)`` of a Theorem-2 call (errors name the argument)."""
    S = _covariance_matrix(S)
    W1 = _matrix(name1, W1)
    W2 = _matrix(name2, W2)
    _check_encoder(name1, W1.shape, S.shape[0])
    _check_decoder(name2, W2.shape, W1.shape)
    return S, W1, W2, _scalar("beta", beta), _scalar("rec_weight", rec_weight)


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


def _finite_if_concrete(**arrays) -> None:
    for name, a in arrays.items():
        if not _is_traced(a) and not np.all(np.isfinite(np.asarray(a))):
            raise TheoryInputError(f"{name} contains NaN or infinite entries")


def _maybe_x64(fn: Callable) -> Callable:
    """float64 for concrete inputs; under a JAX trace (``jax.grad``) keep the caller's mode."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _is_traced(*args, *kwargs.values()):
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return np.float64(fn(*args, **kwargs))

    return wrapper


@_maybe_x64
def lemma1_loss(W: ArrayLike, X: ArrayLike) -> jax.Array:
    """Paper eq. 5: ``L_norm = (1/2n) Σ_ij Z_ij²`` with ``Z = W X``; its flow is Lemma 1.

    ``W`` is d × m, ``X`` is m × n (samples as columns).
    """
    W, X = jnp.asarray(W), jnp.asarray(X)
    if X.ndim != 2:
        raise TheoryInputError(f"X must be a 2-D m × n data matrix, got shape {X.shape}")
    _check_encoder("W", W.shape, X.shape[0])
    _finite_if_concrete(W=W, X=X)
    Z = W @ X
    return jnp.sum(Z**2) / (2 * X.shape[1])


@_maybe_x64
def lemma1_loss_cov(W: ArrayLike, S: ArrayLike) -> jax.Array:
    """Eq. 5 written through the covariance: ``L_norm = ½ tr(W S Wᵀ)`` (``S = X Xᵀ/n``)."""
    W, S = jnp.asarray(W), jnp.asarray(S)
    _check_square("S", S.shape)
    _check_encoder("W", W.shape, S.shape[0])
    _finite_if_concrete(W=W, S=S)
    return 0.5 * jnp.trace(W @ S @ W.T)


@_maybe_x64
def theorem2_loss(W1: ArrayLike, W2: ArrayLike, X: ArrayLike, beta: float,
                  rec_weight: float = 1.0) -> jax.Array:
    """Paper eq. 9 with a reconstruction weight ``r``; its gradient flow is Theorem 2.

    ``L = r·(1/2n) Σ (X̂ − X)²_ij + β·(1/2n) Σ Z²_ij`` with ``Z = W1 X``, ``X̂ = W2 Z``.
    """
    W1, W2, X = jnp.asarray(W1), jnp.asarray(W2), jnp.asarray(X)
    if X.ndim != 2:
        raise TheoryInputError(f"X must be a 2-D m × n data matrix, got shape {X.shape}")
    _check_encoder("W1", W1.shape, X.shape[0])
    _check_decoder("W2", W2.shape, W1.shape)
    _finite_if_concrete(W1=W1, W2=W2, X=X)
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
    W1, W2, S = jnp.asarray(W1), jnp.asarray(W2), jnp.asarray(S)
    _check_square("S", S.shape)
    _check_encoder("W1", W1.shape, S.shape[0])
    _check_decoder("W2", W2.shape, W1.shape)
    _finite_if_concrete(W1=W1, W2=W2, S=S)
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
    S = _covariance_matrix(S)
    W0 = _matrix("W0", W0)
    _check_encoder("W0", W0.shape, S.shape[0])
    ts, scalar = _times(t, "t")
    lam, U = jnp.linalg.eigh(jnp.asarray(S))
    decay = jnp.exp(-jnp.asarray(ts)[:, None] * lam[None, :])  # (T, m): exp(−λ_k t)
    WU = jnp.asarray(W0) @ U
    out = np.asarray(jnp.einsum("dk,tk,mk->tdm", WU, decay, U))
    return out[0] if scalar else out


# --------------------------------------------------------------------------------------------
# ODE integration (diffrax)
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("vf",))
def _integrate(vf: Callable, y0: Any, args: Any, ts: jax.Array) -> Any:
    """Integrate ``ẏ = vf(t, y, args)`` from t = 0 and return y at the sorted times ``ts``.

    Adaptive Dopri8 with a PID step-size controller at rtol 1e-12 / atol 1e-14; diffrax raises
    if ``MAX_STEPS`` is exceeded rather than returning a truncated solution.
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
        max_steps=MAX_STEPS,
    )
    return sol.ys


@_x64
def integrate(vf: Callable, y0: Any, args: Any, ts: ArrayLike) -> Any:
    """Integrate an autonomous flow ``vf(t, y, args)`` (a pytree state) at times ``ts`` ≥ 0.

    The building block of :func:`solve_lemma1` / :func:`solve_theorem2`, exposed so that
    checks can integrate augmented systems with the same solver (``vf`` must be a hashable,
    module-level function: it is a static argument of the jitted solver). Pass float64 arrays
    in ``y0`` / ``args``. Times may be in any order; results follow the input order, as NumPy
    arrays.
    """
    ts_arr, scalar = _times(ts, "ts")
    # diffrax's SaveAt needs non-decreasing times: solve at the sorted times, then restore order.
    order = np.argsort(ts_arr, kind="stable")
    ys = _integrate(vf, y0, args, jnp.asarray(ts_arr[order]))
    inverse = np.argsort(order, kind="stable")
    ys = jax.tree_util.tree_map(lambda a: np.asarray(a)[inverse], ys)
    if scalar:
        ys = jax.tree_util.tree_map(lambda a: a[0], ys)
    return ys


@_x64
def solve_lemma1(W0: ArrayLike, S: ArrayLike, ts: ArrayLike) -> np.ndarray:
    """Integrate Lemma 1's flow ``Ẇ = −W S`` (eq. 6) from ``W(0) = W0``.

    Returns ``W(t)`` for each time in ``ts`` (≥ 0), stacked over the first axis
    (len(ts) × d × m); a scalar ``ts`` returns a single d × m matrix. Compare with
    :func:`theorem1_closed_form`.
    """
    S = _covariance_matrix(S)
    W0 = _matrix("W0", W0)
    _check_encoder("W0", W0.shape, S.shape[0])
    _times(ts, "ts")
    return integrate(_lemma1_vf, jnp.asarray(W0), jnp.asarray(S), ts)


@_x64
def solve_theorem2(W1_0: ArrayLike, W2_0: ArrayLike, S: ArrayLike, beta: float, ts: ArrayLike,
                   rec_weight: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """Integrate Theorem 2's coupled flow (eq. 10a, 10b; reconstruction weighted by ``rec_weight``).

    Returns ``(W1(ts), W2(ts))``, each stacked over the first axis (len(ts) × d × m and
    len(ts) × m × d); a scalar ``ts`` returns single matrices.
    """
    S, W1_0, W2_0, beta, rec_weight = _theorem2_inputs(S, W1_0, W2_0, beta, rec_weight,
                                                       "W1_0", "W2_0")
    _times(ts, "ts")
    args = (jnp.asarray(S), jnp.float64(beta), jnp.float64(rec_weight))
    W1s, W2s = integrate(_theorem2_vf, (jnp.asarray(W1_0), jnp.asarray(W2_0)), args, ts)
    return W1s, W2s


def balance(W1: ArrayLike, W2: ArrayLike) -> np.ndarray:
    """``G = W1 W1ᵀ − W2ᵀ W2`` (d × d); along Theorem 2's flow ``Ġ = −2β W1 S W1ᵀ``.

    Accepts single matrices or stacks (…, d, m) / (…, m, d).
    """
    W1 = np.asarray(W1, dtype=np.float64)
    W2 = np.asarray(W2, dtype=np.float64)
    return W1 @ np.swapaxes(W1, -1, -2) - np.swapaxes(W2, -1, -2) @ W2
