"""Datasets and the paper's fixed splits.

Every loader returns an :class:`AnomalySplit`: the normal-class training samples, a labelled
validation set (for checkpoint selection) and a labelled test set, label 1 = anomaly.
"""
from __future__ import annotations

from tolljax.data.split import AnomalySplit, validate_split, shipped_file
from tolljax.data.arrhythmia import load_arrhythmia, ARRHYTHMIA_FEATURES
from tolljax.errors import TollError

DATASETS = ("arrhythmia",)


def load_dataset(name: str, *, data_dir=None, normal_class: int | None = None) -> AnomalySplit:
    """Load ``name`` with the paper's split (SPEC "How the authors' released code runs the protocol")."""
    if name == "arrhythmia":
        if normal_class not in (None, 0):
            raise TollError("arrhythmia has one fixed normal set; do not pass a normal class")
        return load_arrhythmia(data_dir)
    raise TollError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


__all__ = [
    "AnomalySplit", "validate_split", "shipped_file", "load_arrhythmia", "load_dataset",
    "ARRHYTHMIA_FEATURES", "DATASETS",
]
