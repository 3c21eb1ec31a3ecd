"""The split container shared by every dataset, and its validation."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np

from tolljax.errors import TollError


@dataclasses.dataclass(frozen=True)
class AnomalySplit:
    """One-class anomaly-detection split.

    Attributes:
      name: dataset name.
      train: normal-class training samples, float32, shape ``(n_train, *sample_shape)``.
      val_x, val_y: validation samples and labels (1 = anomaly), for checkpoint selection.
      test_x, test_y: test samples and labels (1 = anomaly).
    """

    name: str
    train: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of the split's contents: its name and every array's
        dtype, shape and bytes. Equal splits give equal fingerprints whatever files they were
        read from; any changed value gives another (``experiments.run`` keys its resumable
        chunks with it, so results are not reused after the data changed)."""
        digest = hashlib.sha256(self.name.encode())
        for field in ("train", "val_x", "val_y", "test_x", "test_y"):
            a = np.ascontiguousarray(getattr(self, field))
            digest.update(f"{field}:{a.dtype.str}:{a.shape}".encode())
            digest.update(memoryview(a).cast("B"))
        return digest.hexdigest()[:16]

    def sizes(self) -> dict[str, int]:
        """Counts per part: train normals, val/test normals and anomalies."""
        return {
            "train": int(self.train.shape[0]),
            "val_normal": int((self.val_y == 0).sum()),
            "val_anomalous": int((self.val_y == 1).sum()),
            "test_normal": int((self.test_y == 0).sum()),
            "test_anomalous": int((self.test_y == 1).sum()),
        }


def validate_split(split: AnomalySplit, *, sample_shape: tuple[int, ...] | None = None,
                   batch_size: int | None = None) -> None:
    """Raise :class:`TollError` naming the first problem found in ``split``.

    Checks: one sample per row of every set, all of the expected sample shape (or, without
    ``sample_shape``, the training samples' shape), values that are finite in the float32
    training runs in, labels in {0, 1} with both classes present in validation and test
    (AUROC/F1 are undefined otherwise), and at least ``batch_size`` normal training samples
    (each step draws ``batch_size`` distinct indices).
    """
    parts = {"train": split.train, "validation": split.val_x, "test": split.test_x}
    float32_max = float(np.finfo(np.float32).max)
    expected = tuple(split.train.shape[1:]) if sample_shape is None else tuple(sample_shape)
    whose = "the training samples have" if sample_shape is None else "the model expects"
    for part, x in parts.items():
        if x.ndim < 2:  # (a 1-D set was called empty)
            raise TollError(f"{split.name}: the {part} set has shape {x.shape}; expected one "
                            "sample per row (n_samples, features...)")
        if x.shape[0] == 0:
            raise TollError(f"{split.name}: the {part} set is empty (shape {x.shape}); "
                            "check the data files and the normal class")
        if tuple(x.shape[1:]) != expected:
            raise TollError(f"{split.name}: {part} samples have shape {tuple(x.shape[1:])}, "
                            f"{whose} {expected}; pass data with the right number of features"
                            + ("" if sample_shape is None else " or a matching --dataset"))
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(x) & (np.abs(x) <= float32_max)
        if not finite.all():
            bad = int(finite.size - finite.sum())
            raise TollError(f"{split.name}: the {part} set contains {bad} NaN/inf values or "
                            "values beyond the float32 range training runs in; clean, impute "
                            "or rescale the data before training")
    for part, x, y in (("validation", split.val_x, split.val_y), ("test", split.test_x, split.test_y)):
        if y.shape != (x.shape[0],):
            raise TollError(f"{split.name}: {part} labels have shape {y.shape}, "
                            f"expected ({x.shape[0]},)")
        if not np.isin(y, (0, 1)).all():
            raise TollError(f"{split.name}: {part} labels must be 0 (normal) or 1 (anomaly)")
        if y.min() == y.max():
            raise TollError(f"{split.name}: the {part} set has only one class; AUROC/F1 need "
                            "normal and anomalous samples")
    if batch_size is not None and split.train.shape[0] < batch_size:
        raise TollError(f"{split.name}: only {split.train.shape[0]} normal training samples but "
                        f"--batch-size {batch_size}; each step draws batch-size distinct samples, "
                        f"so use --batch-size <= {split.train.shape[0]}")


def pad_rows(train: np.ndarray, n_rows: int) -> np.ndarray:
    """``train`` as float32, zero-padded along its first axis to ``n_rows`` rows: normal
    classes of different sizes then share one compiled program, with the valid count passed
    alongside (``n_train``; :func:`tolljax.train.sample_batch_indices` draws only from it)."""
    if n_rows < train.shape[0]:
        raise TollError(f"cannot pad {train.shape[0]} training rows to {n_rows}")
    padded = np.zeros((n_rows, *train.shape[1:]), np.float32)
    padded[: train.shape[0]] = train
    return padded


def data_folder(data_dir: str | os.PathLike[str], pretty: str) -> Path:
    """``data_dir`` (``~`` expanded) as an existing folder; else a :class:`TollError` saying
    whether it does not exist or is a file (naming the folder that holds the file).
    ``pretty``: the dataset's name in the message."""
    folder = Path(data_dir).expanduser()
    if not folder.exists():
        raise TollError(f"data dir {folder} does not exist; pass --data-dir pointing at the "
                        f"folder with the {pretty} files")
    if not folder.is_dir():
        raise TollError(f"data dir {folder} is a file, not a folder; pass --data-dir "
                        f"pointing at the folder with the {pretty} files (the folder holding "
                        f"this file is {folder.parent})")
    if not os.access(folder, os.R_OK | os.X_OK):  # else its files would look missing
        raise TollError(f"data dir {folder} cannot be read (permission denied); check the "
                        "folder's permissions")
    return folder


def unreadable(path: str | os.PathLike[str], exc: OSError) -> TollError:
    """The error for a data file that is there but cannot be read (permissions, I/O): not to
    be confused with a damaged file, which another copy would mend."""
    return TollError(f"cannot read {path} ({exc.strerror or exc}); check the file's "
                     "permissions or copy it again")


def folders_named_like(folder: Path, names: Iterable[str]) -> str:
    """A sentence for a "missing file" error, naming each of ``names`` that exists in
    ``folder`` as a folder (some unpackers make ``x.gz/x``); "" when none does."""
    dirs = [str(folder / n) for n in names if (folder / n).is_dir()]
    if not dirs:
        return ""
    return (f"; {', '.join(dirs)} {'is a folder' if len(dirs) == 1 else 'are folders'}, not "
            "a file: move the file inside up one level")


def shipped_file(name: str) -> Path:
    """Path of a data file shipped inside the package (see ``files/SOURCES.md``)."""
    path = resources.files("tolljax.data").joinpath("files", name)
    return Path(str(path))


def _stratified(y: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``limit`` samples keeping the anomaly fraction (at least one of each)."""
    anomalous = np.flatnonzero(y == 1)
    normal = np.flatnonzero(y == 0)
    n_anom = int(np.clip(round(limit * anomalous.size / y.size), 1, min(anomalous.size, limit - 1)))
    n_norm = min(limit - n_anom, normal.size)
    return np.sort(np.concatenate([rng.choice(normal, n_norm, replace=False),
                                   rng.choice(anomalous, n_anom, replace=False)]))


def limit_split(split: AnomalySplit, *, val_limit: int | None = None,
                test_limit: int | None = None, seed: int = 0) -> AnomalySplit:
    """A seeded, stratified subset of the validation and/or test set (CPU budget runs only:
    not the paper's protocol, which scores all 10,000 images)."""
    rng = np.random.default_rng(seed)
    val_x, val_y, test_x, test_y = split.val_x, split.val_y, split.test_x, split.test_y
    for name, limit in (("--val-limit", val_limit), ("--test-limit", test_limit)):
        if limit is not None and limit < 2:
            raise TollError(f"{name} must be at least 2 (one normal and one anomalous sample), got {limit}")
    if val_limit is not None and val_limit < val_y.size:
        keep = _stratified(val_y, val_limit, rng)
        val_x, val_y = val_x[keep], val_y[keep]
    if test_limit is not None and test_limit < test_y.size:
        keep = _stratified(test_y, test_limit, rng)
        test_x, test_y = test_x[keep], test_y[keep]
    return dataclasses.replace(split, val_x=val_x, val_y=val_y, test_x=test_x, test_y=test_y)
