"""User-facing errors.

Every problem a user can cause (bad data, bad flags, missing files) is raised as
:class:`TollError` with a one-line message that names the problem and the fix. The CLI
prints the message and exits with status 2 instead of showing a traceback from JAX.
"""
from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # imported where used: this module loads before NumPy is needed
    import os
    from pathlib import Path

    import numpy as np


class TollError(ValueError):
    """A problem with the user's input, data or configuration (message says how to fix it)."""


def positive_int(name: str, value: object) -> int:
    """``value`` as an int >= 1, else :class:`TollError` "``name`` must be a positive integer"
    (a bool, a float such as 2.5 or a string such as "40" is refused, not converted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise TollError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def finite_float(value: object) -> float | None:
    """``value`` as a finite Python float, or None (bools, non-numbers, NaN/inf, and integers
    too large for a float, on which ``math.isfinite`` raises OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        out = float(value)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


def real_hyperparameter(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a finite Python float >= 0 (> 0 with ``positive``) that float32 keeps
    finite and, when nonzero, nonzero; else :class:`TollError` "``name`` must be a finite
    number > 0" (or ">= 0"). Strings, bools and NumPy 0-d arrays of those are refused."""
    number = finite_float(value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0
                          else value)
    if number is None or number < 0 or (positive and number == 0):
        raise TollError(f"{name} must be a finite number {'>' if positive else '>='} 0, "
                        f"got {value!r}")
    check_float32(name, number)
    return number


def numeric_array(x: object, what: str, *, kinds: str, shape_hint: str,
                  dtype_hint: str) -> np.ndarray:
    """``x`` as a NumPy array whose dtype kind is one of ``kinds`` (``np.dtype.kind`` letters;
    "f" includes ml_dtypes' floats such as bfloat16), else :class:`TollError`: "``what``
    cannot be converted to an array (…); ``shape_hint``" for ragged lists and the like,
    "``what`` is a masked array …" where entries are masked (a mask would be dropped
    silently), "``what`` has dtype …; ``dtype_hint``" otherwise."""
    import numpy as np

    if np.ma.isMaskedArray(x) and np.ma.is_masked(x):
        raise TollError(f"{what} is a masked array with {int(np.ma.count_masked(x))} masked "
                        "entries; fill them (X.filled(value)) or drop those rows first")
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise TollError(f"{what} cannot be converted to an array ({type(exc).__name__}); "
                        f"{shape_hint}") from None
    kind = arr.dtype.kind
    if kind == "V" and "f" in kinds:  # bfloat16 & co. (ml_dtypes) report kind "V"
        import jax.numpy as jnp

        kind = "f" if jnp.issubdtype(arr.dtype, jnp.floating) else kind
    if kind not in kinds:
        raise TollError(f"{what} has dtype {arr.dtype}; {dtype_hint}")
    return arr


def check_float32(name: str, value: float) -> None:
    """:class:`TollError` where ``value`` cannot be the float32 hyperparameter ``name``
    training runs with: it would become inf there (an overflow at the first step) or 0 (an lr
    that trains nothing)."""
    import numpy as np

    with np.errstate(over="ignore"):  # the overflow is what is reported
        as32 = np.float32(value)
    if not np.isfinite(as32):
        raise TollError(f"{name}={value!r} is beyond the float32 range training runs in")
    if value != 0 and as32 == 0:
        raise TollError(f"{name}={value!r} is 0 in the float32 arithmetic training runs in")


def index_list(indices: Sequence[int] | np.ndarray, shown: int = 5) -> str:
    """The first ``shown`` of ``indices`` as a list, ``…`` marking more: "[2, 3, 4]",
    "[0, 1, 2, 3, 4]...", for messages that name offending rows."""
    return f"{[int(i) for i in indices[:shown]]}{'...' if len(indices) > shown else ''}"


def output_dir(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """``path`` as a :class:`pathlib.Path` to a folder that exists (created if needed) and is
    writable, else :class:`TollError` naming ``what``.

    Called before any long work, so that an unusable output path fails in a second instead
    of as a traceback after the training it was meant to keep.
    """
    import os
    from pathlib import Path

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise TollError(f"{what} {folder}: is a file, not a folder; pass a folder path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TollError(f"{what} {folder}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise TollError(f"{what} {folder}: the folder is not writable")
    return folder
