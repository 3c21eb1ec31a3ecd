"""ODDS Arrhythmia with the Toll authors' split (SPEC; paper §4.1, Table 4)."""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse

from tolljax.data.split import (AnomalySplit, data_folder, folders_named_like, shipped_file,
                                 unreadable)
from tolljax.errors import TollError, index_list

ARRHYTHMIA_FEATURES = 274
ARRHYTHMIA_FILE = "arrhythmia.mat"
# Fraction of each class sent to test, then (the same count again) to validation. The paper
# text says 20 % test / 30 % validation; the authors' code uses round(0.2 * n) for both.
_HOLDOUT_FRACTION = 0.2


# Sparse variables as sparse arrays: scipy 1.18 deprecates the spmatrix default (a warning on
# every sparse file) and 1.20 changes it; older scipy has no such keyword. Both kinds are
# densified below.
_SPARSE_ARRAYS = ({"spmatrix": False}
                  if "spmatrix" in inspect.signature(scipy.io.loadmat).parameters else {})


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise TollError(f"arrhythmia data file not found: {path}"
                        f"{folders_named_like(path.parent, [path.name])}; pass --data-dir "
                        f"pointing at a folder with {ARRHYTHMIA_FILE} (ODDS format) or omit it "
                        "to use the shipped copy")
    try:
        mat = scipy.io.loadmat(str(path), **_SPARSE_ARRAYS)
    except PermissionError as exc:  # not a damaged file: say so
        raise unreadable(path, exc) from None
    except Exception as exc:  # scipy raises several types for damaged files
        raise TollError(f"cannot read {path} as a MATLAB .mat file ({type(exc).__name__}: {exc}); "
                        "the file is corrupt or not the ODDS arrhythmia.mat") from None
    if "X" not in mat or "y" not in mat:
        raise TollError(f"{path} has no 'X' and 'y' arrays; expected the ODDS arrhythmia.mat")
    # A MATLAB sparse matrix loads as scipy.sparse; as np.asarray it would be a 0-d object.
    x, y = (np.asarray(v.toarray() if scipy.sparse.issparse(v) else v)
            for v in (mat["X"], mat["y"]))
    # Checked before the float64 cast: text or a cell array would fail inside NumPy, and
    # complex values would be cast to their real part with only a ComplexWarning.
    for name, arr in (("X", x), ("y", y)):
        if arr.dtype.kind == "c":
            raise TollError(f"{path}: {name} holds complex numbers; expected the real-valued "
                            "ODDS arrhythmia.mat")
        if arr.dtype.kind not in "biuf":
            kind = ("a cell array" if arr.dtype == object else "text" if arr.dtype.kind in "US"
                    else f"{arr.dtype} data")
            raise TollError(f"{path}: {name} is {kind}, not a numeric matrix; expected the ODDS "
                            "arrhythmia.mat")
    x = x.astype(np.float64)
    y = y.reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise TollError(f"{path}: X has shape {x.shape} and y has {y.shape[0]} labels; they must "
                        "agree (one row per sample)")
    return x, y


def split_arrhythmia(x: np.ndarray, y: np.ndarray, normal_perm: np.ndarray,
                     anomalous_perm: np.ndarray) -> AnomalySplit:
    """Split rows as the authors' code does (SPEC).

    Normal rows (y == 0), permuted by ``normal_perm``: the first ``round(0.2 n)`` go to test,
    the next as many to validation, the rest to training. Anomalous rows, permuted by
    ``anomalous_perm``: first ``round(0.2 n)`` to test, the next as many to validation, the
    rest unused. Features are used raw (no scaling), as in the authors' code.
    """
    normal = x[y == 0]
    anomalous = x[y == 1]
    if normal_perm.shape != (normal.shape[0],) or anomalous_perm.shape != (anomalous.shape[0],):
        raise TollError(f"split indices do not match the data: {normal.shape[0]} normal and "
                        f"{anomalous.shape[0]} anomalous rows, but permutations of length "
                        f"{normal_perm.shape[0]} and {anomalous_perm.shape[0]}; use the ODDS "
                        "arrhythmia.mat the split was made for")
    normal = normal[normal_perm]
    anomalous = anomalous[anomalous_perm]
    k_n = int(round(_HOLDOUT_FRACTION * normal.shape[0]))
    k_a = int(round(_HOLDOUT_FRACTION * anomalous.shape[0]))

    def part(lo_n, hi_n, lo_a, hi_a):
        xs = np.concatenate([normal[lo_n:hi_n], anomalous[lo_a:hi_a]]).astype(np.float32)
        ys = np.concatenate([np.zeros(hi_n - lo_n, np.int32), np.ones(hi_a - lo_a, np.int32)])
        return xs, ys

    test_x, test_y = part(0, k_n, 0, k_a)
    val_x, val_y = part(k_n, 2 * k_n, k_a, 2 * k_a)
    train = normal[2 * k_n:].astype(np.float32)
    return AnomalySplit("arrhythmia", train, val_x, val_y, test_x, test_y)


def load_arrhythmia(data_dir: str | os.PathLike[str] | None = None) -> AnomalySplit:
    """Load Arrhythmia (452 × 274, 66 anomalies) with the paper's fixed split.

    ``data_dir``: folder holding ``arrhythmia.mat``; ``None`` uses the copy shipped with the
    package. Sizes: 232 training normals; validation 77 + 13; test 77 + 13.
    """
    path = (data_folder(data_dir, "ODDS arrhythmia") / ARRHYTHMIA_FILE if data_dir is not None
            else shipped_file(ARRHYTHMIA_FILE))
    x, y = _read_mat(path)
    if x.shape[1] != ARRHYTHMIA_FEATURES:
        raise TollError(f"{path}: {x.shape[1]} features per row, expected {ARRHYTHMIA_FEATURES} "
                        "(ODDS arrhythmia)")
    if not np.isin(y, (0, 1)).all():
        raise TollError(f"{path}: labels must be 0 (normal) or 1 (anomaly)")
    if not np.all(np.isfinite(x)):
        rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise TollError(f"{path}: X contains {int((~np.isfinite(x)).sum())} NaN/inf values "
                        f"(rows {index_list(rows)}); clean or impute the data before training")
    # The split is float32: larger finite values would become inf there and be reported as
    # NaN/inf values the file does not contain.
    too_big = np.abs(x) > np.finfo(np.float32).max
    if too_big.any():
        rows = np.flatnonzero(too_big.any(axis=1))
        raise TollError(f"{path}: X holds {int(too_big.sum())} values beyond the float32 range "
                        f"(|x| > 3.4e38, rows {index_list(rows)}); rescale the data before training")
    normal_perm = np.load(shipped_file("randomized_normal_indices_arrhythmia.npy"))
    anomalous_perm = np.load(shipped_file("randomized_anomalous_indices_arrhythmia.npy"))
    return split_arrhythmia(x, y, normal_perm, anomalous_perm)
