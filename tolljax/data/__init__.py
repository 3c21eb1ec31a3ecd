"""Datasets and the paper's fixed splits.

Every loader returns an :class:`AnomalySplit`: the normal-class training samples, a labelled
validation set (for checkpoint selection) and a labelled test set, label 1 = anomaly.
"""
from __future__ import annotations

import os

from tolljax.data.split import AnomalySplit, limit_split, pad_rows, validate_split, shipped_file
from tolljax.data.arrhythmia import load_arrhythmia, ARRHYTHMIA_FEATURES
from tolljax.data.images import (
    IMAGE_DATASETS, SOURCES, class_names, load_images, num_classes,
)
from tolljax.errors import TollError

DATASETS = ("arrhythmia", *IMAGE_DATASETS)


def load_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None,
                 normal_class: int | None = None, source: str = "files",
                 offer_tfds: bool = True) -> AnomalySplit:
    """Load ``name`` with the paper's split (SPEC "How the authors' released code runs the protocol").

    ``source``: ``"files"`` (the original files in ``data_dir``) or, for the image datasets,
    ``"tfds"`` (tensorflow-datasets; ``data_dir`` = the TFDS folder). ``normal_class`` is
    required for the image datasets (see :func:`num_classes`). ``offer_tfds=False``: errors
    about missing image files do not suggest the ``"tfds"`` source (see :func:`load_images`).
    """
    if name == "arrhythmia":
        if normal_class not in (None, 0):
            raise TollError("arrhythmia has one fixed normal set; do not pass a normal class")
        if source != "files":
            raise TollError(f"arrhythmia is only available from files (source 'files'), not "
                            f"source {source!r}")
        return load_arrhythmia(data_dir)
    if name in IMAGE_DATASETS:
        return load_images(name, data_dir=data_dir, normal_class=normal_class, source=source,
                           offer_tfds=offer_tfds)
    raise TollError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")


__all__ = [
    "AnomalySplit", "limit_split", "pad_rows", "validate_split", "shipped_file", "load_arrhythmia", "load_dataset",
    "ARRHYTHMIA_FEATURES", "DATASETS", "IMAGE_DATASETS", "SOURCES", "load_images",
    "class_names", "num_classes",
]
