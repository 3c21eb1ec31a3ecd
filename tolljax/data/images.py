"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 with the Toll authors' split and preprocessing.

Split (SPEC "How the authors' released code runs the protocol"):

* validation: the 10,000 official training images at the shipped indices
  ``files/10000_val_indices_<dataset>.npy`` (all classes; label 0 = the normal class, 1 = any
  other class);
* training: the normal-class images among the remaining official training images;
* test: the 10,000 official test images, label 1 = anomaly.

Preprocessing (applied to training, validation and test alike):

* MNIST ``(x/255 − 0.1307)/0.3081``; Fashion-MNIST ``(x/255 − 0.2860)/0.3530``;
* CIFAR-10/-100: per image, subtract the mean of its 3072 values and divide by their mean
  absolute value (L1 global contrast normalisation), then ``(x − min)/(max − min)`` with the
  fixed constants for the normal class from ``files/cifar_minmax.json``. CIFAR-100 uses the 20
  coarse labels (superclasses).

Images come out NHWC float32: ``(N, 28, 28, 1)`` or ``(N, 32, 32, 3)``; labels int32.

Sources:

* ``"files"`` (default): the original distribution files in ``data_dir`` — IDX files for
  MNIST/Fashion-MNIST (gzipped or not, ``train-images-idx3-ubyte`` or
  ``train-images.idx3-ubyte`` naming), the CIFAR "python version" pickles (in ``data_dir`` or its
  ``cifar-10-batches-py`` / ``cifar-100-python`` subfolder, or the unextracted ``.tar.gz``).
  Parsed raw arrays are cached per file path, modification time and size, so loading the ten
  normal classes of one dataset reads the files once.
* ``"tfds"``: tensorflow-datasets (``tfds.load(..., download=False)``), see
  :mod:`tolljax.data.tfds_source`. TFDS orders the training examples differently from the
  original files, so the shipped indices do not apply: the validation set is a seeded random
  choice of 10,000 training examples (seed :data:`TFDS_VAL_SEED`).
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from tolljax.data import cifar as _cifar
from tolljax.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, idx_file_names, read_idx
from tolljax.data.split import AnomalySplit, data_folder, folders_named_like, shipped_file
from tolljax.errors import TollError

IMAGE_DATASETS = ("mnist", "fmnist", "cifar10", "cifar100")
SOURCES = ("files", "tfds")
VAL_SIZE = 10_000
TFDS_VAL_SEED = 0
# (train, test) image counts of the official files; the shipped indices refer to these.
OFFICIAL_SIZES = {"mnist": (60_000, 10_000), "fmnist": (60_000, 10_000),
                  "cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}
# Per-dataset (mean, std) of x/255 used by the authors' code.
STANDARDIZATION = {"mnist": (0.1307, 0.3081), "fmnist": (0.2860, 0.3530)}

CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fmnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"],
    # The 20 CIFAR-100 superclasses, in coarse-label order (the archive's ``meta`` file).
    "cifar100": ["aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
                 "household_electrical_devices", "household_furniture", "insects",
                 "large_carnivores", "large_man-made_outdoor_things",
                 "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
                 "medium_mammals", "non-insect_invertebrates", "people", "reptiles",
                 "small_mammals", "trees", "vehicles_1", "vehicles_2"],
}
_PRETTY = {"mnist": "MNIST", "fmnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
           "cifar100": "CIFAR-100"}
_IDX_HINT = {
    "mnist": "download the four MNIST IDX files (e.g. https://ossci-datasets.s3.amazonaws.com/mnist/)",
    "fmnist": "download the four Fashion-MNIST IDX files (https://github.com/zalandoresearch/fashion-mnist)",
}
_CHUNK = 4096  # images preprocessed at a time (bounds float temporaries)


def _check_dataset(dataset: str) -> None:
    if not isinstance(dataset, str) or dataset not in CLASS_NAMES:  # a list is not hashable
        raise TollError(f"unknown image dataset {dataset!r}; choose one of: "
                        f"{', '.join(IMAGE_DATASETS)}")


def num_classes(dataset: str) -> int:
    """Number of possible normal classes: 10, or 20 superclasses for CIFAR-100."""
    _check_dataset(dataset)
    return len(CLASS_NAMES[dataset])


def class_names(dataset: str) -> list[str]:
    """Names of the classes in label order (CIFAR-100: the 20 superclasses), for tables."""
    _check_dataset(dataset)
    return list(CLASS_NAMES[dataset])


def check_normal_class(dataset: str, normal_class: object) -> int:
    """``normal_class`` as an int, or a TollError if missing or out of range."""
    k = num_classes(dataset)
    if normal_class is None:
        raise TollError(f"{dataset}: no normal class given; pass a normal class 0..{k - 1} "
                        "(the class treated as normal)")
    if isinstance(normal_class, (bool, np.bool_)) or not isinstance(normal_class, (int, np.integer)):
        raise TollError(f"{dataset}: the normal class must be an integer 0..{k - 1}, got "
                        f"{normal_class!r}")
    if not 0 <= int(normal_class) < k:
        raise TollError(f"{dataset}: normal class {int(normal_class)} is out of range; "
                        f"{dataset} has normal classes 0..{k - 1}")
    return int(normal_class)


@functools.lru_cache(maxsize=None)
def _minmax_table() -> dict:
    with open(shipped_file("cifar_minmax.json")) as fh:
        return json.load(fh)


def cifar_minmax(dataset: str, normal_class: int) -> tuple[float, float]:
    """The fixed ``(min, max)`` of L1-GCN pixels for ``normal_class`` (``cifar_minmax.json``)."""
    lo, hi = _minmax_table()[dataset][check_normal_class(dataset, normal_class)]
    return float(lo), float(hi)


def gcn_l1(x: np.ndarray) -> np.ndarray:
    """Per-image L1 global contrast normalisation of float images ``(N, ...)`` (in place).

    Each image minus the mean of all its values, divided by the mean absolute value of the
    result. A constant image (mean absolute value 0) becomes all zeros instead of NaN.
    """
    flat = x.reshape(x.shape[0], -1)
    # Constant images are found on the input, not by a zero scale after centring: the float32
    # mean of a constant 77/255 image is off by an ulp, which made every deviation the same
    # ±ε and the image all ±1 instead of zeros. Other images are unchanged, bit for bit.
    constant = flat.max(axis=1) == flat.min(axis=1)
    flat -= flat.mean(axis=1, keepdims=True)
    flat[constant] = 0
    scale = np.abs(flat).mean(axis=1, keepdims=True)
    flat /= np.where(constant[:, None], 1, scale).astype(flat.dtype)
    return x


def preprocess(dataset: str, images: np.ndarray, normal_class: int | None = None) -> np.ndarray:
    """uint8 NHWC images → float32 as the authors' code does (see the module docstring).

    ``normal_class`` is needed for CIFAR (it selects the min-max constants).
    """
    _check_dataset(dataset)
    out = np.empty(images.shape, np.float32)
    if dataset in STANDARDIZATION:
        mean, std = (np.float32(v) for v in STANDARDIZATION[dataset])
        for i in range(0, images.shape[0], _CHUNK):
            x = images[i:i + _CHUNK].astype(np.float32) / np.float32(255)
            out[i:i + _CHUNK] = (x - mean) / std
        return out
    lo, hi = cifar_minmax(dataset, normal_class)
    lo32, span32 = np.float32(lo), np.float32(hi - lo)
    for i in range(0, images.shape[0], _CHUNK):
        x = gcn_l1(images[i:i + _CHUNK].astype(np.float32) / np.float32(255))
        out[i:i + _CHUNK] = (x - lo32) / span32
    return out


def shipped_val_indices(dataset: str) -> np.ndarray:
    """The authors' 10,000 validation indices into the official training split."""
    _check_dataset(dataset)
    return np.load(shipped_file(f"10000_val_indices_{dataset}.npy"))


def _check_val_indices(dataset: str, val_indices, n_train: int) -> np.ndarray:
    idx = np.asarray(val_indices)
    if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise TollError(f"{dataset}: validation indices must be a non-empty 1-D integer array, "
                        f"got {idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= n_train:
        raise TollError(f"{dataset}: validation index {int(idx.max() if idx.max() >= n_train else idx.min())} "
                        f"is out of range for a training split of {n_train} images; use "
                        "indices into that training split")
    if np.unique(idx).size != idx.size:
        raise TollError(f"{dataset}: the validation indices contain duplicates; each training "
                        "image can be in the validation set once")
    return idx.astype(np.int64)


def make_split(dataset: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
               test_y: np.ndarray, normal_class: int,
               val_indices: Sequence[int] | np.ndarray) -> AnomalySplit:
    """Build the :class:`AnomalySplit` from raw uint8 NHWC images and class labels.

    Validation = ``train_x[val_indices]`` (label 0 iff class == ``normal_class``); training =
    the normal-class images among the other training images (original order); test = all of
    ``test_x``. Only the selected images are converted to float32.
    """
    normal_class = check_normal_class(dataset, normal_class)
    idx = _check_val_indices(dataset, val_indices, train_x.shape[0])
    keep = np.ones(train_x.shape[0], bool)
    keep[idx] = False
    train_idx = np.flatnonzero(keep & (train_y == normal_class))
    if train_idx.size == 0:
        raise TollError(f"{dataset}: no training images of normal class {normal_class} "
                        f"({class_names(dataset)[normal_class]}) outside the validation set; "
                        "the data files hold no images of that class; check the files and the "
                        "normal class")
    # The validation metric picks the checkpoint and the test metric is the result: both
    # AUROCs are undefined without normal and anomalous images.
    name = f"normal class {normal_class} ({class_names(dataset)[normal_class]})"
    for part, labels in (("validation", train_y[idx]), ("test", test_y)):
        normal = labels == normal_class
        if normal.all() or not normal.any():
            lacking = name if not normal.any() else f"any class other than {name} (anomalies)"
            raise TollError(f"{dataset}: the {part} set holds no images of {lacking}, so its "
                            "AUROC is undefined; check the data files"
                            + (" and the validation indices" if part == "validation" else ""))
    return AnomalySplit(
        dataset,
        preprocess(dataset, train_x[train_idx], normal_class),
        preprocess(dataset, train_x[idx], normal_class),
        (train_y[idx] != normal_class).astype(np.int32),
        preprocess(dataset, test_x, normal_class),
        (test_y != normal_class).astype(np.int32),
    )


# ---------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------

def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def _find_idx_files(dataset: str, data_dir: Path) -> dict[tuple[str, str], Path]:
    found, missing, tried = {}, [], []
    for split in ("train", "t10k"):
        for kind in ("images", "labels"):
            names = idx_file_names(split, kind)
            tried += names
            hit = next((data_dir / n for n in names if (data_dir / n).is_file()), None)
            if hit is None:
                missing.append(f"{split}-{kind}")
            else:
                found[(split, kind)] = hit
    if missing:
        raise TollError(f"{dataset}: missing {', '.join(missing)} in {data_dir} (looked for "
                        f"{', '.join(tried)}){folders_named_like(data_dir, tried)}; "
                        f"{_IDX_HINT[dataset]} into that folder or pass --data-dir pointing "
                        "at them")
    return found


@functools.lru_cache(maxsize=4)
def _read_idx_dataset(dataset: str, keys: tuple) -> tuple[np.ndarray, ...]:
    (tr_x, _, _), (tr_y, _, _), (te_x, _, _), (te_y, _, _) = keys
    arrays = []
    for x_path, y_path in ((tr_x, tr_y), (te_x, te_y)):
        x = read_idx(x_path, magic=IDX_IMAGES_MAGIC)
        y = read_idx(y_path, magic=IDX_LABELS_MAGIC)
        if x.shape[1:] != (28, 28):
            raise TollError(f"{x_path}: images are {x.shape[1]}x{x.shape[2]}, expected 28x28; "
                            f"use the {_PRETTY[dataset]} files")
        if y.shape[0] != x.shape[0]:
            raise TollError(f"{y_path} holds {y.shape[0]} labels but {x_path} holds "
                            f"{x.shape[0]} images; the files do not belong together")
        if y.size and y.max() >= 10:
            raise TollError(f"{y_path}: label {int(y.max())} outside 0..9; the file is corrupt "
                            f"or not {_PRETTY[dataset]}")
        arrays += [x[..., None], y.astype(np.int64)]
    # MNIST and Fashion-MNIST share file names; their pixel means tell them apart (MNIST
    # 0.1307 train, 0.1325 test, measured on the real files; Fashion-MNIST 0.2860 train, the
    # authors' constant). Both splits are checked: one dataset's t10k files unpacked over the
    # other's folder trained on one and tested on the other, silently.
    other = {"mnist": "fmnist", "fmnist": "mnist"}[dataset]
    for images, path, official, which in ((arrays[0], tr_x, OFFICIAL_SIZES[dataset][0], "train"),
                                          (arrays[2], te_x, OFFICIAL_SIZES[dataset][1], "test")):
        if images.shape[0] != official:
            continue
        mean = float(images.mean(dtype=np.float64)) / 255
        if abs(mean - STANDARDIZATION[other][0]) < 0.01:
            raise TollError(f"{dataset}: the {which} files in {Path(path).parent} look like "
                            f"{_PRETTY[other]} (mean pixel {mean:.4f}); use --dataset {other} or "
                            f"point --data-dir at the {_PRETTY[dataset]} files")
    for a in arrays:
        a.flags.writeable = False
    return tuple(arrays)


@functools.lru_cache(maxsize=2)
def _read_cifar_dataset(dataset: str, where: str, keys: tuple) -> tuple[np.ndarray, ...]:
    arrays = _cifar.read_cifar(_cifar.LAYOUTS[dataset], Path(where))
    for a in arrays:
        a.flags.writeable = False
    return arrays


def read_raw(dataset: str, data_dir: str | os.PathLike[str] | None, *,
             tfds_hint: str = "") -> tuple[np.ndarray, ...]:
    """Raw ``(train_x, train_y, test_x, test_y)`` from the original files in ``data_dir``
    (``~`` expanded; for CIFAR, ``data_dir`` may also be the official ``.tar.gz`` itself).

    Images are read-only NHWC uint8, labels int64 class ids (CIFAR-100: coarse). Cached per
    file path, modification time and size. ``tfds_hint`` is appended to the "no data folder"
    message: only callers that offer the tfds source (and know how it is chosen) suggest it.
    """
    _check_dataset(dataset)
    if data_dir is None:
        what = "IDX files" if dataset in STANDARDIZATION else "python-version pickles"
        hint = f", {tfds_hint}" if tfds_hint else ""
        raise TollError(f"{dataset}: no data folder given; pass --data-dir pointing at the "
                        f"{_PRETTY[dataset]} {what}{hint}")
    given = Path(data_dir).expanduser()
    if dataset in _cifar.LAYOUTS and given.is_file() and given.name.endswith((".tar.gz", ".tgz")):
        where = given  # the CIFAR archive itself; read_cifar checks its members
    else:
        data_dir = data_folder(data_dir, _PRETTY[dataset])
        if dataset in STANDARDIZATION:
            files = _find_idx_files(dataset, data_dir)
            keys = tuple(_stat_key(files[(s, k)]) for s in ("train", "t10k")
                         for k in ("images", "labels"))
            return _read_idx_dataset(dataset, keys)
        where = _cifar.locate(_cifar.LAYOUTS[dataset], data_dir)
    layout = _cifar.LAYOUTS[dataset]
    paths = [where] if where.is_file() else [where / f for f in layout.files]
    return _read_cifar_dataset(dataset, str(where.resolve()), tuple(_stat_key(p) for p in paths))


def clear_cache() -> None:
    """Drop the cached raw arrays (they are re-read on the next load)."""
    _read_idx_dataset.cache_clear()
    _read_cifar_dataset.cache_clear()


def tfds_val_indices(n_train: int, seed: int = TFDS_VAL_SEED) -> np.ndarray:
    """Validation indices for the tfds source: a seeded random, sorted choice of training rows.

    ``min(10,000, n_train // 5)`` rows: 10,000 for the full MNIST/Fashion-MNIST/CIFAR train
    splits; smaller splits (e.g. tfds mock data) keep four fifths for training.
    """
    size = min(VAL_SIZE, n_train // 5)
    if size < 1:  # else the split's check would name indices the user never passed
        raise TollError(f"the tfds training split holds {n_train} images; at least 5 are "
                        "needed to hold out a fifth for validation")
    return np.sort(np.random.default_rng(seed).choice(n_train, size=size, replace=False))


def load_images(dataset: str, *, data_dir: str | os.PathLike[str] | None = None,
                normal_class: int | None = None, source: str = "files",
                val_indices: Sequence[int] | np.ndarray | None = None,
                offer_tfds: bool = True) -> AnomalySplit:
    """Load an image dataset with the paper's one-class split and preprocessing.

    Args:
      dataset: ``"mnist"``, ``"fmnist"``, ``"cifar10"`` or ``"cifar100"``.
      data_dir: folder with the original files (source ``"files"``), or the TFDS data folder
        (source ``"tfds"``; ``None`` = TFDS's default).
      normal_class: the normal class, 0..9 (CIFAR-100: superclass 0..19).
      source: ``"files"`` (default) or ``"tfds"``.
      val_indices: indices into the training split for validation. Default: the shipped
        indices for ``"files"`` (which requires the full official training files), or
        :func:`tfds_val_indices` for ``"tfds"``.
      offer_tfds: whether errors about missing or incomplete files suggest the ``"tfds"``
        source (off for callers that offer no way to choose it).
    """
    _check_dataset(dataset)
    if source not in SOURCES:
        raise TollError(f"unknown data source {source!r}; choose 'files' (the original "
                        "files in the data folder) or 'tfds' (tensorflow-datasets)")
    normal_class = check_normal_class(dataset, normal_class)
    if source == "tfds":
        from tolljax.data.tfds_source import read_tfds
        train_x, train_y, test_x, test_y = read_tfds(dataset, data_dir)
        if val_indices is None:
            val_indices = tfds_val_indices(train_x.shape[0])
    else:
        # Worded as this function's argument, not a CLI flag: the CLIs that call it name their
        # options differently, and those without a source option pass offer_tfds=False.
        tfds_hint = "or load it with tensorflow-datasets (source 'tfds')" if offer_tfds else ""
        train_x, train_y, test_x, test_y = read_raw(dataset, data_dir, tfds_hint=tfds_hint)
        tfds_alt = " (or the 'tfds' source)" if offer_tfds else ""
        if val_indices is None:  # the paper's split: the complete official files
            n_train, n_test = OFFICIAL_SIZES[dataset]
            if train_x.shape[0] != n_train:
                raise TollError(f"{dataset}: the training files hold {train_x.shape[0]} images, "
                                f"the official set has {n_train}; the shipped validation "
                                "indices refer to the official files, so use the complete "
                                f"originals{tfds_alt}")
            if test_x.shape[0] != n_test:  # a partial test set would pass as the paper's
                raise TollError(f"{dataset}: the test files hold {test_x.shape[0]} images, the "
                                f"official test set has {n_test}; use the complete "
                                f"originals{tfds_alt} (the CLIs' --test-limit scores a "
                                "stratified subset of it)")
            val_indices = shipped_val_indices(dataset)
    return make_split(dataset, train_x, train_y, test_x, test_y, normal_class, val_indices)
