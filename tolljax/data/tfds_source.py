"""tensorflow-datasets as a second source for the image datasets (``--source tfds``).

For users who already have the datasets prepared by TFDS (``tfds build mnist`` or an earlier
``tfds.load``). Nothing is downloaded: ``tfds.load(..., download=False)``. ``tfds.load`` needs
TensorFlow (``pip install tensorflow-cpu``); both are imported only when this source is used.

TFDS orders the training examples differently from the original files, so the authors'
validation indices do not apply; :func:`tolljax.data.images.tfds_val_indices` picks a seeded
random 10,000 instead (seed 0). Preprocessing is the same as for the original files.
"""
from __future__ import annotations

import os

import numpy as np

from tolljax.errors import TollError

# our name -> (TFDS name, label feature); CIFAR-100 uses the 20 superclasses.
TFDS_NAMES = {
    "mnist": ("mnist", "label"),
    "fmnist": ("fashion_mnist", "label"),
    "cifar10": ("cifar10", "label"),
    "cifar100": ("cifar100", "coarse_label"),
}
_BATCH = 4096


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as exc:
        raise TollError(f"--source tfds needs tensorflow-datasets ({exc}); pip install "
                        "tensorflow-datasets tensorflow-cpu, or use --source files --data-dir "
                        "<folder with the original files>") from None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # silence TensorFlow's start-up chatter
    try:
        import tensorflow  # noqa: F401  (tfds.load builds a tf.data pipeline)
    except ImportError as exc:
        raise TollError(f"--source tfds needs TensorFlow for tfds.load ({exc}); pip install "
                        "tensorflow-cpu, or use --source files --data-dir <folder with the "
                        "original files>") from None
    return tfds


def _read_split(tfds, dataset: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    tfds_name, label_key = TFDS_NAMES[dataset]
    where = data_dir if data_dir is not None else "the default TFDS folder"
    try:
        ds = tfds.load(tfds_name, split=split, data_dir=None if data_dir is None else str(data_dir),
                       download=False, shuffle_files=False)
    except Exception as exc:  # tfds raises AssertionError / DatasetNotFoundError / OSError
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise TollError(f"{dataset}: no TFDS data for {tfds_name!r} ({split}) in {where} "
                        f"({type(exc).__name__}: {first}); run `tfds build {tfds_name}` (or "
                        "point --data-dir at your TFDS folder), or use --source files --data-dir "
                        "<folder with the original files>") from None
    images, labels = [], []
    # Batched iteration: loading the split as one tensor (batch_size=-1) aborts the process on
    # tfds mock data with TensorFlow 2.21.
    for batch in tfds.as_numpy(ds.batch(_BATCH)):
        images.append(np.asarray(batch["image"], np.uint8))
        labels.append(np.asarray(batch[label_key], np.int64))
    if not images:
        raise TollError(f"{dataset}: the TFDS {split} split of {tfds_name!r} in {where} is empty; "
                        f"rebuild it with `tfds build {tfds_name}`")
    return np.concatenate(images), np.concatenate(labels)


def read_tfds(dataset: str, data_dir: str | os.PathLike[str] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw ``(train_x, train_y, test_x, test_y)`` from TFDS: NHWC uint8 images, int64 labels."""
    if dataset not in TFDS_NAMES:
        raise TollError(f"unknown image dataset {dataset!r}; choose one of: "
                        f"{', '.join(TFDS_NAMES)}")
    tfds = _import_tfds()
    train_x, train_y = _read_split(tfds, dataset, "train", data_dir)
    test_x, test_y = _read_split(tfds, dataset, "test", data_dir)
    return train_x, train_y, test_x, test_y
