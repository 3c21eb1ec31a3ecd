"""Readers for the CIFAR-10 / CIFAR-100 "python version" pickles.

CIFAR-10 (``cifar-10-batches-py``): ``data_batch_1`` … ``data_batch_5`` and ``test_batch``, each
a dict with ``b"data"`` (N × 3072 uint8, rows in CHW order: 1024 red, 1024 green, 1024 blue
values, each 32 × 32 row-major) and ``b"labels"`` (N ints in 0–9). CIFAR-100
(``cifar-100-python``): ``train`` and ``test`` with ``b"data"``, ``b"fine_labels"`` and
``b"coarse_labels"`` (the 20 superclasses the paper uses).

The folder may be the data directory itself or its ``cifar-10-batches-py`` /
``cifar-100-python`` subfolder; the unextracted ``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz`` archive in the data directory is read as well.

The pickles are loaded with a restricted unpickler that only builds plain containers and
numpy arrays, so a foreign pickle in the data directory cannot run code.
"""
from __future__ import annotations

import importlib
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tolljax.data.split import folders_named_like, unreadable
from tolljax.errors import TollError


@dataclass(frozen=True)
class CifarLayout:
    name: str             # "cifar10" / "cifar100"
    subfolder: str        # folder name inside the official archive
    archive: str          # official archive file name
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    num_classes: int
    url: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file)


CIFAR10 = CifarLayout("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                      tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels", 10,
                      "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
CIFAR100 = CifarLayout("cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
                       ("train",), "test", b"coarse_labels", 20,
                       "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz")
LAYOUTS = {"cifar10": CIFAR10, "cifar100": CIFAR100}

_ALLOWED_GLOBALS = {
    ("_codecs", "encode"),                        # bytes pickled by Python 3 at protocol < 3
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    # protocol 5 (Python's HIGHEST_PROTOCOL) stores arrays through numpy's _frombuffer
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("__builtin__", "bytes"), ("builtins", "bytes"),  # empty bytes at protocol 2: bytes()
    ("builtins", "bytearray"),
}


class _ForeignGlobal(pickle.UnpicklingError):
    pass


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR pickle needs (numpy arrays, bytes)."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _ForeignGlobal(f"{module}.{name}")
        if module.startswith("numpy.core"):  # numpy >= 2 renamed numpy.core to numpy._core
            try:
                return getattr(importlib.import_module("numpy._core" + module[10:]), name)
            except ImportError:
                pass
        return super().find_class(module, name)


def unpickle(buf: bytes, source: str) -> dict:
    """Decode one CIFAR pickle (Python 2 or 3, any protocol) into a dict with bytes keys."""
    try:
        obj = _SafeUnpickler(io.BytesIO(buf), encoding="bytes").load()
    except _ForeignGlobal as exc:
        raise TollError(f"refusing to load {source}: it references {exc}, which a CIFAR python "
                        "pickle never does; use the official CIFAR 'python version' files") from None
    except Exception as exc:  # pickle raises many types on damaged data
        raise TollError(f"cannot read {source} as a CIFAR python pickle ({type(exc).__name__}: "
                        f"{exc}); the file is truncated or corrupt, download it again") from None
    if not isinstance(obj, dict):
        raise TollError(f"{source} holds a {type(obj).__name__}, expected the dict of a CIFAR "
                        "python batch; use the CIFAR 'python version' files")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}


def _batch_arrays(batch: dict, layout: CifarLayout, source: str) -> tuple[np.ndarray, np.ndarray]:
    missing = [k.decode() for k in (b"data", layout.label_key) if k not in batch]
    if missing:
        keys = sorted(k.decode("latin1") if isinstance(k, bytes) else repr(k) for k in batch)
        raise TollError(f"{source} has no {' / '.join(missing)} entry (keys: "
                        f"{', '.join(keys)}); expected a "
                        f"{layout.name} python batch, check the --dataset and the files")
    arrays = []
    for key, what in ((b"data", "data"), (layout.label_key, "labels")):
        try:
            arrays.append(np.asarray(batch[key]))
        except (ValueError, TypeError) as exc:  # ragged lists: "inhomogeneous shape"
            raise TollError(f"{source}: {what} is not a regular array ({type(exc).__name__}); the "
                            "file is corrupt or not a CIFAR batch") from None
    data, labels = arrays
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise TollError(f"{source}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072) "
                        "rows of 32x32x3 images; the file is corrupt or not a CIFAR batch")
    if data.shape[0] == 0:  # (its empty label list would read as float64, a wrong message)
        raise TollError(f"{source} holds no images; the file is corrupt, download it again")
    if labels.dtype.kind not in "iu":  # as in the official files: a list of ints
        raise TollError(f"{source}: labels are {labels.dtype}, expected integer class numbers; "
                        "the file is corrupt or not a CIFAR batch")
    if labels.shape != (data.shape[0],):
        raise TollError(f"{source}: labels have shape {labels.shape} for {data.shape[0]} images, "
                        "expected one class number per image; the file is corrupt, download it "
                        "again")
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise TollError(f"{source}: labels outside 0..{layout.num_classes - 1}; the file is "
                        f"corrupt or not {layout.name}")
    return data, labels.astype(np.int64)


def to_nhwc(rows: np.ndarray) -> np.ndarray:
    """(N, 3072) CHW rows → contiguous (N, 32, 32, 3) uint8."""
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def locate(layout: CifarLayout, data_dir: Path) -> Path:
    """The folder holding every file of ``layout`` or the official archive; else a TollError."""
    folders = [data_dir, data_dir / layout.subfolder]
    for folder in folders:
        if all((folder / f).is_file() for f in layout.files):
            return folder
    if (data_dir / layout.archive).is_file():
        return data_dir / layout.archive
    # Report against the folder that has the most of the files.
    best = max(folders, key=lambda d: sum((d / f).is_file() for f in layout.files))
    missing = [f for f in layout.files if not (best / f).is_file()]
    raise TollError(f"{layout.name}: missing {', '.join(missing)} in {best} (looked for "
                    f"{', '.join(layout.files)} in {folders[0]} and {folders[1]}, and for "
                    f"{layout.archive} in {folders[0]}){folders_named_like(best, missing)}; "
                    f"download the CIFAR python version ({layout.url}) and pass --data-dir "
                    "pointing at it")


def read_cifar(layout: CifarLayout, where: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Raw ``(train_x, train_y, test_x, test_y)``: NHWC uint8 images and int64 labels.

    ``where``: a folder holding the pickles, or the official ``.tar.gz`` archive.
    """
    blobs = {}
    if where.is_file():
        try:
            with tarfile.open(where, "r:gz") as tar:
                for f in layout.files:
                    member = f"{layout.subfolder}/{f}"
                    try:
                        fh = tar.extractfile(member)
                    except KeyError:
                        fh = None
                    if fh is None:
                        raise TollError(f"{where} has no member {member}; expected the official "
                                        f"{layout.archive} ({layout.url})")
                    blobs[f] = (fh.read(), f"{where}:{member}")
        except PermissionError as exc:  # not damage: another download would not mend it
            raise unreadable(where, exc) from None
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise TollError(f"cannot read {where} as a .tar.gz archive ({type(exc).__name__}: "
                            f"{exc}); the archive is truncated or corrupt, download it again") from None
    else:
        for f in layout.files:
            path = where / f
            try:
                blobs[f] = (path.read_bytes(), str(path))
            except OSError as exc:
                raise unreadable(path, exc) from None
    parts = {f: _batch_arrays(unpickle(*blobs[f]), layout, blobs[f][1]) for f in layout.files}
    rows = [parts[f][0] for f in layout.train_files]
    train_x = to_nhwc(rows[0] if len(rows) == 1 else np.concatenate(rows))
    train_y = np.concatenate([parts[f][1] for f in layout.train_files])
    test_x = to_nhwc(parts[layout.test_file][0])
    test_y = parts[layout.test_file][1]
    return train_x, train_y, test_x, test_y
