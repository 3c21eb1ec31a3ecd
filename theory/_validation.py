"""Input validation shared by every public :mod:`theory` function.

Project rule: bad input raises :class:`theory.TheoryInputError` with a one-line message that
names the argument and the problem, before any JAX / NumPy code can fail with a traceback of
its own or, worse, return a silently wrong number. All checks live here so that the
right-hand sides, losses, solvers, Figure 2 code and the CLI apply the *same* rules.

The loss functions are also traced by ``jax.grad`` / ``jax.jit``; a JAX tracer has a static
shape but no values, so the ``loss_*`` helpers check the shape of traced arguments and the full
contract (finite, symmetric PSD, …) of concrete ones.

This module deliberately does not import :mod:`tolljax`: the theory package shares no code
with the training core (see ``theory/README.md``).
"""
from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Any, Tuple, Union

import jax
import numpy as np

from theory import TheoryInputError

# Relative tolerance for "S is symmetric / PSD". Covariances computed in floating point are
# symmetric only up to rounding, so exact equality would reject valid input.
SYM_TOL = 1e-10

# dtype kinds accepted as real numbers: signed / unsigned int, float. Booleans are excluded
# (``t=True`` or a boolean matrix is a mistake, not 1 / 0, as β and the counts refuse them);
# complex because casting it to float64 silently drops the imaginary part; strings because
# NumPy would silently parse "1" as 1.0; objects because they are usually ragged or mixed.
_REAL_KINDS = "iuf"


def finite_result(name: str, value: Any) -> Any:
    """``value`` (an array or a tuple of them) unchanged if every entry is finite (or it is
    traced), else a clear error.

    Finite inputs can still overflow float64 (entries near 1e154 squared); the result would
    be inf or NaN without a word."""
    leaves = jax.tree_util.tree_leaves(value)
    if not is_traced(*leaves) and not all(np.all(np.isfinite(np.asarray(v))) for v in leaves):
        raise TheoryInputError(f"{name} overflowed float64 (inf/NaN) although the inputs are "
                               "finite; rescale the inputs")
    return value


def is_traced(*xs: Any) -> bool:
    """Whether any argument is a JAX tracer (inside ``jax.grad`` / ``jax.jit``: no values)."""
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def _float64(name: str, value: Any, what: str, kinds: str = _REAL_KINDS) -> np.ndarray:
    """``value`` as a float64 NumPy array if its dtype kind is one of ``kinds`` (default: real
    numeric data), else a clear error."""
    try:
        raw = np.asarray(value)
    except (TypeError, ValueError):  # e.g. ragged nested lists
        raise TheoryInputError(f"{name} must be {what}, got {_short(value)}") from None
    if raw.dtype.kind not in kinds:
        raise TheoryInputError(f"{name} must be {what}, got {_short(value)} (dtype {raw.dtype})")
    return raw.astype(np.float64, copy=False)


def _short(value: Any) -> str:
    """A short one-line ``repr`` for error messages (large arrays would flood the line)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= 60 else text[:57] + "..."


def real_array(name: str, A: Any) -> np.ndarray:
    """Concrete, non-empty, finite float64 array of any rank ≥ 1, or a clear error."""
    arr = _float64(name, A, "a real numeric array")
    if arr.size == 0:
        raise TheoryInputError(f"{name} must not be empty, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise TheoryInputError(f"{name} contains NaN or infinite entries")
    return arr


def real_matrix(name: str, A: Any) -> np.ndarray:
    """Concrete 2-D, non-empty, finite float64 matrix, or a clear error."""
    arr = _float64(name, A, "a real numeric 2-D matrix")
    if arr.ndim != 2:
        raise TheoryInputError(f"{name} must be a 2-D matrix, got shape {arr.shape}")
    return real_array(name, arr)


def real_scalar(name: str, value: Any, *, nonnegative: bool = True) -> float:
    """A finite real number (``>= 0`` unless ``nonnegative=False``) as a Python float; not a
    boolean (``beta=True`` is a mistake, not β = 1, as :func:`integer` refuses it too)."""
    arr = _float64(name, value, "a real number")
    if arr.ndim != 0:
        raise TheoryInputError(f"{name} must be a scalar, got shape {arr.shape}")
    v = float(arr)
    if not np.isfinite(v):
        raise TheoryInputError(f"{name} must be finite, got {v}")
    if nonnegative and v < 0:
        raise TheoryInputError(f"{name} must be >= 0, got {v}")
    return v


def integer(name: str, value: Any, *, minimum: int = 0, maximum: int | None = None) -> int:
    """An integer in ``minimum..maximum`` as a Python int (a seed, a count, a step budget).

    Floats are refused rather than truncated (``seed=1.5`` is a mistake, not seed 1), and so
    are booleans, which Python would otherwise treat as 0 / 1.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TheoryInputError(f"{name} must be an integer, got {value!r}")
    try:
        v = operator.index(value)  # accepts int and NumPy integers, refuses floats and strings
    except TypeError:
        raise TheoryInputError(f"{name} must be an integer, got {_short(value)}") from None
    if v < minimum:
        raise TheoryInputError(f"{name} must be an integer >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise TheoryInputError(f"{name} must be an integer <= {maximum}, got {v}")
    return v


def seed(value: Any, name: str = "seed") -> int:
    """A seed for ``np.random.default_rng``: a non-negative integer."""
    return integer(name, value, minimum=0)


def times(t: Any, name: str = "t") -> Tuple[np.ndarray, bool]:
    """Non-negative finite times as a 1-D float64 array, and whether the input was a scalar."""
    arr = _float64(name, t, "a real number or 1-D array of times")
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


# --------------------------------------------------------------------------------------------
# shapes of the linear model: S (m × m), encoder W / W1 (d × m), decoder W2 (m × d)
# --------------------------------------------------------------------------------------------


def check_square(name: str, shape: Tuple[int, ...]) -> None:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise TheoryInputError(f"{name} must be a square m × m matrix, got shape {tuple(shape)}")


def check_encoder(name: str, W_shape: Tuple[int, ...], m: int, m_from: str = "the size of S") -> None:
    """``m_from`` says where m comes from, for the message (S's size, or X's rows)."""
    if len(W_shape) != 2 or W_shape[1] != m:
        raise TheoryInputError(
            f"shape mismatch: {name} must be d × m with m = {m} ({m_from}), got {tuple(W_shape)}")


def check_decoder(name: str, W2_shape: Tuple[int, ...], W1_shape: Tuple[int, ...],
                  name1: str = "W1") -> None:
    d, m = W1_shape[-2:]
    if len(W2_shape) < 2 or tuple(W2_shape[-2:]) != (m, d):
        raise TheoryInputError(
            f"shape mismatch: {name} must be m × d = {(m, d)} (transpose shape of {name1}"
            f" {tuple(W1_shape[-2:])}), got {tuple(W2_shape)}")


def covariance_matrix(S: Any, name: str = "S") -> np.ndarray:
    """Validate a covariance: square, finite, symmetric and positive semi-definite.

    Returns the exactly symmetrised matrix ``(S + Sᵀ)/2`` (the difference is below the
    tolerance; symmetrising makes ``eigh`` and the flow see the same matrix).
    """
    S = real_matrix(name, S)
    check_square(name, S.shape)
    # relative to S's own scale: max(1, ·) made both tolerances an absolute 1e-10, which let
    # diag(1e-11, −1e-11) pass as PSD and an asymmetric 1e-11-scale S be symmetrised silently
    scale = float(np.max(np.abs(S)))
    asym = float(np.max(np.abs(S - S.T)))
    if asym > SYM_TOL * scale:
        raise TheoryInputError(
            f"{name} must be symmetric (a covariance X Xᵀ/n); max |{name} − {name}ᵀ| = {asym:.3g}")
    S = 0.5 * S + 0.5 * S.T  # not 0.5 * (S + Sᵀ): that overflows for entries near 1e308
    lam_min = float(np.linalg.eigvalsh(S)[0])
    if lam_min < -SYM_TOL * scale:
        raise TheoryInputError(
            f"{name} must be positive semi-definite (a covariance); smallest eigenvalue {lam_min:.3g}")
    return S


# --------------------------------------------------------------------------------------------
# loss arguments: full checks when concrete, shape checks when traced by jax.grad / jax.jit
# --------------------------------------------------------------------------------------------


def loss_matrix(name: str, A: Any) -> Union[np.ndarray, jax.Array]:
    """A loss's matrix argument: validated float64 if concrete; a tracer is shape-checked only."""
    if not is_traced(A):
        return real_matrix(name, A)
    if A.ndim != 2:
        raise TheoryInputError(f"{name} must be a 2-D matrix, got shape {A.shape}")
    if A.size == 0:
        raise TheoryInputError(f"{name} must not be empty, got shape {A.shape}")
    return A


def loss_covariance(S: Any, name: str = "S") -> Union[np.ndarray, jax.Array]:
    """A loss's covariance: symmetric PSD if concrete; a tracer is checked for squareness only."""
    if not is_traced(S):
        return covariance_matrix(S, name)
    S = loss_matrix(name, S)
    check_square(name, S.shape)
    return S


def loss_scalar(name: str, value: Any) -> Union[float, jax.Array]:
    """A loss's β or r: a finite number >= 0 if concrete; a tracer must be a scalar."""
    if not is_traced(value):
        return real_scalar(name, value)
    if value.ndim != 0:
        raise TheoryInputError(f"{name} must be a scalar, got shape {value.shape}")
    return value


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def output_dir(path: Any, what: str = "out") -> Path:
    """``path`` as a folder that exists (created if needed) and is writable, else an error.

    Checked before any figure is computed, so that an unusable path fails at once with one
    line instead of a ``FileExistsError`` traceback from ``mkdir`` after the work is done.
    (The same contract as ``tolljax.errors.output_dir``, reimplemented because the theory
    package does not depend on the training core.)
    """
    try:
        folder = Path(path)
    except TypeError:
        raise TheoryInputError(f"{what} must be a folder path, got {_short(path)}") from None
    if folder.exists() and not folder.is_dir():
        raise TheoryInputError(f"{what} {folder}: is a file, not a folder; pass a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TheoryInputError(
            f"{what} {folder}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TheoryInputError(f"{what} {folder}: the folder is not writable")
    return folder


def versions() -> dict:
    """Python, NumPy, SciPy, JAX and diffrax versions, recorded next to every result file."""
    import platform

    import diffrax
    import scipy

    return {"python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "jax": jax.__version__, "diffrax": diffrax.__version__}


def write_json(path: Path, record: dict) -> Path:
    """``record`` as indented JSON at ``path`` (the machine-readable copy of what a command
    printed); returns ``path``."""
    import json

    path.write_text(json.dumps(record, indent=1, allow_nan=True) + "\n")
    return path
