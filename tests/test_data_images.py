"""Image dataset loaders: IDX / CIFAR pickle readers, the paper's split, preprocessing, errors.

The readers are tested on files written here in the real formats; real MNIST (if present in
``../shared/data/mnist``) checks the whole path end to end; the tfds source uses
``tfds.testing.mock_data`` (needs tensorflow, skipped without it).
"""
from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from tolljax.data import DATASETS, class_names, load_dataset, num_classes
from tolljax.data import images as img
from tolljax.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx
from tolljax.data.split import shipped_file, validate_split
from tolljax.errors import TollError

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


# --------------------------------------------------------------------------- file writers

def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data, compresslevel=1) if gz else data)
    return path


def idx_name(split: str, kind: str, style: str, gz: bool) -> str:
    rank = 3 if kind == "images" else 1
    sep = "-" if style == "dash" else "."
    return f"{split}-{kind}{sep}idx{rank}-ubyte" + (".gz" if gz else "")


def write_mnist(folder: Path, train_x, train_y, test_x, test_y, *, style="dash", gz=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, x, y in (("train", train_x, train_y), ("t10k", test_x, test_y)):
        write_idx(folder / idx_name(split, "images", style, gz), x, gz)
        write_idx(folder / idx_name(split, "labels", style, gz), y, gz)
    return folder


def cifar_rows(hwc: np.ndarray) -> np.ndarray:
    """NHWC uint8 images → the (N, 3072) CHW rows of the CIFAR pickles."""
    return np.ascontiguousarray(hwc.transpose(0, 3, 1, 2).reshape(hwc.shape[0], 3072))


def pickle_bytes(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


def cifar10_blobs(train_x, train_y, test_x, test_y) -> dict[str, bytes]:
    blobs = {}
    for i, part in enumerate(np.array_split(np.arange(train_x.shape[0]), 5), start=1):
        blobs[f"data_batch_{i}"] = pickle_bytes({
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": [int(v) for v in train_y[part]], b"data": cifar_rows(train_x[part])})
    blobs["test_batch"] = pickle_bytes({b"batch_label": b"testing batch 1 of 1",
                                        b"labels": [int(v) for v in test_y],
                                        b"data": cifar_rows(test_x)})
    return blobs


def cifar100_blobs(train_x, train_coarse, test_x, test_coarse) -> dict[str, bytes]:
    def batch(x, coarse):
        fine = (np.asarray(coarse) * 5 + 3) % 100  # differs from the coarse label
        return pickle_bytes({b"data": cifar_rows(x), b"fine_labels": [int(v) for v in fine],
                             b"coarse_labels": [int(v) for v in coarse]})
    return {"train": batch(train_x, train_coarse), "test": batch(test_x, test_coarse)}


class Py2Pickler(pickle._Pickler):
    """Writes strings as Python 2 ``str`` (BINSTRING) like the original CIFAR pickles."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        obj = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(obj)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256
                   else pickle.BINSTRING + struct.pack("<i", n) + obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def py2_pickle_bytes(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    # numpy 1.x (and the original files) name the array constructor numpy.core.multiarray
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def write_blobs(folder: Path, blobs: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
    return folder


def mnist_std(x_uint8, mean=MNIST_MEAN, std=MNIST_STD) -> np.ndarray:
    return (np.asarray(x_uint8, np.float64) / 255 - mean) / std


def cifar_by_hand(hwc_uint8: np.ndarray, lo: float, hi: float) -> np.ndarray:
    x = np.asarray(hwc_uint8, np.float64) / 255
    x = x - x.mean()
    x = x / np.abs(x).mean()
    return (x - lo) / (hi - lo)


def minmax(dataset: str, k: int) -> tuple[float, float]:
    return tuple(json.loads(shipped_file("cifar_minmax.json").read_text())[dataset][k])


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def small_mnist(rng):
    """200 train / 50 test random 28x28 images, labels cycling 0..9."""
    train_x = rng.integers(0, 256, (200, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    return train_x, np.arange(200) % 10, test_x, np.arange(50) % 10


@pytest.fixture(scope="module")
def full_mnist_dir(tmp_path_factory):
    """Official-size (60,000 / 10,000) IDX files, uncompressed, MNIST-like pixel mean."""
    rng = np.random.default_rng(1)
    train_x = np.where(rng.random((60_000, 28, 28)) < MNIST_MEAN, 255, 0).astype(np.uint8)
    train_y = rng.integers(0, 10, 60_000)
    test_x = rng.integers(0, 256, (10_000, 28, 28), dtype=np.uint8)
    test_y = rng.integers(0, 10, 10_000)
    folder = write_mnist(tmp_path_factory.mktemp("full_mnist"), train_x, train_y, test_x, test_y,
                         style="dot", gz=False)
    return folder, train_x, train_y, test_x, test_y


# --------------------------------------------------------------------------- metadata

def test_datasets_class_names_and_counts():
    assert set(DATASETS) >= {"arrhythmia", "mnist", "fmnist", "cifar10", "cifar100"}
    assert num_classes("mnist") == num_classes("fmnist") == num_classes("cifar10") == 10
    assert num_classes("cifar100") == 20
    assert class_names("mnist") == [str(d) for d in range(10)]
    assert class_names("fmnist")[0] == "T-shirt/top" and class_names("fmnist")[9] == "Ankle boot"
    assert class_names("cifar10")[0] == "airplane" and class_names("cifar10")[9] == "truck"
    names = class_names("cifar100")
    assert len(names) == 20 and names[0] == "aquatic_mammals" and names[19] == "vehicles_2"
    with pytest.raises(TollError, match="unknown image dataset"):
        num_classes("svhn")


# --------------------------------------------------------------------------- IDX readers

@pytest.mark.parametrize("style,gz", [("dash", True), ("dash", False), ("dot", True), ("dot", False)])
def test_idx_small_files_custom_val_indices(tmp_path, small_mnist, style, gz):
    train_x, train_y, test_x, test_y = small_mnist
    write_mnist(tmp_path, *small_mnist, style=style, gz=gz)
    val = np.array([5, 0, 13, 100, 199, 42, 77, 7])
    s = img.load_images("mnist", data_dir=tmp_path, normal_class=3, val_indices=val)

    expect_train = [i for i in range(200) if train_y[i] == 3 and i not in set(val)]
    assert s.train.shape == (len(expect_train), 28, 28, 1) and s.train.dtype == np.float32
    np.testing.assert_allclose(s.train[..., 0], mnist_std(train_x[expect_train]), rtol=1e-5, atol=1e-5)
    # validation: the images at the indices, in the given order, label 0 iff class 3
    assert s.val_x.shape == (8, 28, 28, 1) and s.val_x.dtype == np.float32
    np.testing.assert_allclose(s.val_x[..., 0], mnist_std(train_x[val]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(s.val_y, (train_y[val] != 3).astype(np.int32))
    assert s.val_y.dtype == np.int32 and s.val_y.tolist() == [1, 1, 0, 1, 1, 1, 1, 1]
    # test: all official test images
    assert s.test_x.shape == (50, 28, 28, 1)
    np.testing.assert_array_equal(s.test_y, (test_y != 3).astype(np.int32))
    np.testing.assert_allclose(s.test_x[..., 0], mnist_std(test_x), rtol=1e-5, atol=1e-5)
    # one pixel by hand
    v = int(test_x[4, 10, 20])
    assert s.test_x[4, 10, 20, 0] == pytest.approx((v / 255 - 0.1307) / 0.3081, abs=1e-5)


def test_fmnist_uses_its_own_standardisation(tmp_path, small_mnist):
    train_x, train_y, test_x, test_y = small_mnist
    write_mnist(tmp_path, *small_mnist, gz=True)
    s = img.load_images("fmnist", data_dir=tmp_path, normal_class=9, val_indices=np.arange(20))
    np.testing.assert_allclose(s.test_x[..., 0], mnist_std(test_x, FMNIST_MEAN, FMNIST_STD),
                               rtol=1e-5, atol=1e-5)
    assert s.train.shape[0] == int((train_y[20:] == 9).sum())


def test_idx_mixed_gzip_and_names(tmp_path, small_mnist):
    train_x, train_y, test_x, test_y = small_mnist
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_x, True)
    write_idx(tmp_path / "train-labels.idx1-ubyte", train_y, False)
    write_idx(tmp_path / "t10k-images.idx3-ubyte.gz", test_x, True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", test_y, False)
    s = img.load_images("mnist", data_dir=str(tmp_path), normal_class=0, val_indices=[0, 1, 2, 3])
    assert s.sizes() == {"train": 19, "val_normal": 1, "val_anomalous": 3,
                         "test_normal": 5, "test_anomalous": 45}


def test_idx_full_size_shipped_indices(full_mnist_dir):
    folder, train_x, train_y, test_x, test_y = full_mnist_dir
    val = np.load(shipped_file("10000_val_indices_mnist.npy"))
    s = load_dataset("mnist", data_dir=folder, normal_class=4)
    validate_split(s, sample_shape=(28, 28, 1), batch_size=100)
    in_val = np.zeros(60_000, bool)
    in_val[val] = True
    assert s.train.shape[0] == int(((train_y == 4) & ~in_val).sum())
    assert s.train.shape[0] == int((train_y == 4).sum() - (train_y[val] == 4).sum())
    np.testing.assert_allclose(s.train[..., 0], mnist_std(train_x[(train_y == 4) & ~in_val]),
                               rtol=1e-5, atol=1e-5)
    assert s.val_x.shape == (10_000, 28, 28, 1) and s.test_x.shape == (10_000, 28, 28, 1)
    np.testing.assert_array_equal(s.val_y, (train_y[val] != 4).astype(np.int32))
    np.testing.assert_allclose(s.val_x[:50, ..., 0], mnist_std(train_x[val[:50]]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(s.test_y, (test_y != 4).astype(np.int32))


def test_raw_arrays_are_cached_and_reread_on_change(tmp_path, small_mnist):
    write_mnist(tmp_path, *small_mnist)
    img.clear_cache()
    a = img.read_raw("mnist", tmp_path)
    b = img.read_raw("mnist", tmp_path)
    assert a[0] is b[0] and not a[0].flags.writeable
    train_x, train_y, test_x, test_y = small_mnist
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test_x[:10], True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", test_y[:10], True)
    c = img.read_raw("mnist", tmp_path)
    assert c[2].shape[0] == 10


# --------------------------------------------------------------------------- CIFAR readers

def test_cifar10_chw_to_nhwc_and_preprocessing_by_hand(tmp_path, rng):
    train_x = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    # handcrafted image 0: red plane 255 on the left half, green 0, blue 128 everywhere
    train_x[0] = 0
    train_x[0, :, :16, 0] = 255
    train_x[0, :, :, 2] = 128
    train_y = np.arange(30) % 10
    test_x = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    test_y = np.arange(12) % 10
    write_blobs(tmp_path / "cifar-10-batches-py", cifar10_blobs(train_x, train_y, test_x, test_y))

    raw = img.read_raw("cifar10", tmp_path)
    np.testing.assert_array_equal(raw[0], train_x)  # CHW rows came back as NHWC
    np.testing.assert_array_equal(raw[1], train_y)

    s = img.load_images("cifar10", data_dir=tmp_path, normal_class=0, val_indices=[0, 5, 29])
    lo, hi = minmax("cifar10", 0)
    assert (lo, hi) == img.cifar_minmax("cifar10", 0)
    # image 0 by hand: values/255 are 1 (512 red), 0 (512 red + 1024 green), 128/255 (1024 blue)
    vals = np.array([1.0] * 512 + [0.0] * 1536 + [128 / 255] * 1024)
    mean = vals.mean()
    scale = np.abs(vals - mean).mean()
    expect = lambda v: ((v - mean) / scale - lo) / (hi - lo)  # noqa: E731
    assert s.val_x.shape == (3, 32, 32, 3) and s.val_x.dtype == np.float32
    assert s.val_x[0, 7, 3, 0] == pytest.approx(expect(1.0), rel=1e-5)     # red, left half
    assert s.val_x[0, 7, 20, 0] == pytest.approx(expect(0.0), rel=1e-5)    # red, right half
    assert s.val_x[0, 31, 31, 1] == pytest.approx(expect(0.0), rel=1e-5)   # green
    assert s.val_x[0, 0, 0, 2] == pytest.approx(expect(128 / 255), rel=1e-5)  # blue
    np.testing.assert_array_equal(s.val_y, [0, 1, 1])  # classes 0, 5, 9
    # training: class 0 minus validation = images 10 and 20
    np.testing.assert_allclose(s.train, np.stack([cifar_by_hand(train_x[i], lo, hi) for i in (10, 20)]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.test_x[3], cifar_by_hand(test_x[3], lo, hi), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(s.test_y, (test_y != 0).astype(np.int32))


def test_cifar10_full_size_shipped_indices(tmp_path):
    rng = np.random.default_rng(2)
    train_x = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)
    train_y = rng.integers(0, 10, 50_000)
    test_x = rng.integers(0, 256, (10_000, 32, 32, 3), dtype=np.uint8)
    test_y = rng.integers(0, 10, 10_000)
    write_blobs(tmp_path, cifar10_blobs(train_x, train_y, test_x, test_y))  # data_dir itself
    val = np.load(shipped_file("10000_val_indices_cifar10.npy"))
    s = load_dataset("cifar10", data_dir=tmp_path, normal_class=8)
    validate_split(s, sample_shape=(32, 32, 3), batch_size=50)
    assert s.train.shape[0] == int((train_y == 8).sum() - (train_y[val] == 8).sum())
    assert s.val_x.shape == (10_000, 32, 32, 3) and s.test_x.shape == (10_000, 32, 32, 3)
    np.testing.assert_array_equal(s.val_y, (train_y[val] != 8).astype(np.int32))
    lo, hi = minmax("cifar10", 8)
    np.testing.assert_allclose(s.val_x[17], cifar_by_hand(train_x[val[17]], lo, hi), rtol=1e-5, atol=1e-5)
    first_train = np.flatnonzero((train_y == 8) & ~np.isin(np.arange(50_000), val))[0]
    np.testing.assert_allclose(s.train[0], cifar_by_hand(train_x[first_train], lo, hi), rtol=1e-5, atol=1e-5)
    img.clear_cache()


def test_cifar100_coarse_labels(tmp_path, rng):
    train_x = rng.integers(0, 256, (80, 32, 32, 3), dtype=np.uint8)
    coarse = np.arange(80) % 20
    test_x = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    test_coarse = np.arange(40) % 20
    write_blobs(tmp_path / "cifar-100-python", cifar100_blobs(train_x, coarse, test_x, test_coarse))
    s = img.load_images("cifar100", data_dir=tmp_path, normal_class=19, val_indices=[19, 0, 1])
    lo, hi = minmax("cifar100", 19)
    assert s.train.shape == (3, 32, 32, 3)  # images 39, 59, 79
    np.testing.assert_allclose(s.train[0], cifar_by_hand(train_x[39], lo, hi), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(s.val_y, [0, 1, 1])
    np.testing.assert_array_equal(s.test_y, (test_coarse != 19).astype(np.int32))
    with pytest.raises(TollError, match="normal class 20 is out of range; cifar100 has normal "
                                        "classes 0..19"):
        img.load_images("cifar100", data_dir=tmp_path, normal_class=20, val_indices=[0])


def test_cifar_python2_style_pickles(tmp_path, rng):
    train_x = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    test_x = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    blobs = {f"data_batch_{i}": py2_pickle_bytes({b"data": cifar_rows(train_x[4 * i - 4: 4 * i]),
                                                  b"labels": list(range(4)), b"batch_label": b"x"})
             for i in range(1, 6)}
    blobs["test_batch"] = py2_pickle_bytes({b"data": cifar_rows(test_x), b"labels": [1] * 10})
    assert b"numpy.core.multiarray" in blobs["test_batch"]
    write_blobs(tmp_path, blobs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation warning
        raw = img.read_raw("cifar10", tmp_path)
    np.testing.assert_array_equal(raw[0], train_x)
    np.testing.assert_array_equal(raw[1], np.tile(np.arange(4), 5))
    np.testing.assert_array_equal(raw[2], test_x)


def test_unreadable_files_are_not_called_damaged(tmp_path, rng, small_mnist, deny_reading):
    # A permission problem: "check the file's permissions", not "download it again".
    write_mnist(tmp_path / "mnist", *small_mnist, gz=False)
    locked = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    deny_reading(locked)
    with pytest.raises(TollError) as err:
        img.read_raw("mnist", tmp_path / "mnist")
    assert str(err.value) == (f"cannot read {locked} (Permission denied); check the file's "
                              "permissions or copy it again")
    blobs = cifar10_blobs(rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
                          np.arange(20) % 10, rng.integers(0, 256, (10, 32, 32, 3), np.uint8),
                          np.arange(10) % 10)
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
    deny_reading(folder / "data_batch_2")
    with pytest.raises(TollError, match=f"^cannot read {folder / 'data_batch_2'} \\(Permission "
                                        "denied\\); check the file's permissions"):
        img.read_raw("cifar10", tmp_path / "cifar")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    deny_reading(archive)
    with pytest.raises(TollError) as err:  # was: "the archive is truncated or corrupt"
        img.read_raw("cifar10", archive)
    assert str(err.value) == (f"cannot read {archive} (Permission denied); check the file's "
                              "permissions or copy it again")


def test_cifar_tar_gz_archive(tmp_path, rng):
    train_x = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    test_x = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    blobs = cifar10_blobs(train_x, np.arange(20) % 10, test_x, np.arange(10) % 10)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, data in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = img.read_raw("cifar10", tmp_path)
    np.testing.assert_array_equal(raw[0], train_x)
    np.testing.assert_array_equal(raw[2], test_x)
    # --data-dir may be the archive itself (it was "is a file, not a folder")
    img.clear_cache()
    direct = img.read_raw("cifar10", tmp_path / "cifar-10-python.tar.gz")
    for a, b in zip(direct, raw):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- errors

def test_error_no_data_dir_and_missing_dir(tmp_path):
    with pytest.raises(TollError, match="no data folder given; pass --data-dir") as err:
        load_dataset("mnist", normal_class=0)
    # Not every CLI has a --source flag: the tfds alternative is named as load_images' argument.
    assert "--source" not in str(err.value) and "source 'tfds'" in str(err.value)
    with pytest.raises(TollError, match="no data folder given") as err:
        img.read_raw("mnist", None)  # direct callers that offer no tfds source: no such hint
    assert "tfds" not in str(err.value)
    with pytest.raises(TollError, match="no data folder given") as err:
        load_dataset("mnist", normal_class=0, offer_tfds=False)  # callers without a tfds option
    assert "tfds" not in str(err.value)
    with pytest.raises(TollError, match="does not exist"):
        load_dataset("cifar10", data_dir=tmp_path / "nope", normal_class=0)
    (tmp_path / "f").write_text("x")
    with pytest.raises(TollError, match="is a file, not a folder") as err:
        load_dataset("mnist", data_dir=tmp_path / "f", normal_class=0)
    assert str(err.value).endswith(f"(the folder holding this file is {tmp_path})")
    with pytest.raises(TollError, match="is a file, not a folder"):  # a file, but no archive
        load_dataset("cifar10", data_dir=tmp_path / "f", normal_class=0)


def test_data_dir_with_a_tilde_is_the_home_folder(tmp_path, small_mnist, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_mnist(tmp_path / "mnist", *small_mnist)
    raw = img.read_raw("mnist", "~/mnist")
    np.testing.assert_array_equal(raw[0][..., 0], small_mnist[0])


def test_a_folder_named_like_a_data_file_is_named_in_the_error(tmp_path, small_mnist, rng):
    # some unpackers make train-images-idx3-ubyte/train-images-idx3-ubyte: the error listed
    # the names the user could see as missing
    write_mnist(tmp_path, *small_mnist, style="dash", gz=False)
    inner = tmp_path / "train-images-idx3-ubyte"
    inner.rename(tmp_path / "moved")
    inner.mkdir()
    (tmp_path / "moved").rename(inner / "train-images-idx3-ubyte")
    with pytest.raises(TollError) as err:
        img.read_raw("mnist", tmp_path)
    assert "missing train-images in" in str(err.value)
    assert (f"; {inner} is a folder, not a file: move the file inside up one level; "
            in str(err.value))
    blobs = cifar10_blobs(rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10),
                          rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8), np.arange(10))
    folder = write_blobs(tmp_path / "c", {k: v for k, v in blobs.items() if k != "test_batch"})
    (folder / "test_batch").mkdir()
    with pytest.raises(TollError, match="is a folder, not a file") as err:
        img.read_raw("cifar10", folder)
    assert f"missing test_batch in {folder}" in str(err.value)


def test_error_missing_idx_files_lists_names(tmp_path, small_mnist):
    train_x, train_y, _, _ = small_mnist
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_x, True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", train_y, True)
    with pytest.raises(TollError) as err:
        load_dataset("mnist", data_dir=tmp_path, normal_class=0)
    msg = str(err.value)
    assert "\n" not in msg and "missing t10k-images, t10k-labels" in msg
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte",
                 "t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte.gz", "train-images-idx3-ubyte"):
        assert name in msg
    assert "--data-dir" in msg


def test_error_wrong_magic(tmp_path, small_mnist):
    train_x, train_y, test_x, test_y = small_mnist
    write_mnist(tmp_path, *small_mnist, gz=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test_y, False)  # a labels file
    with pytest.raises(TollError, match=r"t10k-images-idx3-ubyte: IDX magic number 0x00000801, "
                                        r"expected 0x00000803"):
        img.load_images("mnist", data_dir=tmp_path, normal_class=0, val_indices=[0])


def test_error_truncated_idx_and_gzip(tmp_path, small_mnist):
    train_x, train_y, test_x, test_y = small_mnist
    plain = write_mnist(tmp_path / "plain", *small_mnist, gz=False)
    data = (plain / "train-images-idx3-ubyte").read_bytes()
    (plain / "train-images-idx3-ubyte").write_bytes(data[:-100])
    with pytest.raises(TollError, match=r"train-images-idx3-ubyte is truncated: the header declares "
                                        r"shape 200x28x28 = 156800 bytes"):
        img.load_images("mnist", data_dir=plain, normal_class=0, val_indices=[0])
    gz = write_mnist(tmp_path / "gz", *small_mnist, gz=True)
    data = (gz / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (gz / "t10k-labels-idx1-ubyte.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(TollError, match=r"t10k-labels-idx1-ubyte.gz is a damaged or truncated gzip"):
        img.load_images("mnist", data_dir=gz, normal_class=0, val_indices=[0])
    with pytest.raises(TollError, match="too short for an IDX header"):
        (tmp_path / "tiny").write_bytes(b"\x00\x00")
        read_idx(tmp_path / "tiny", magic=IDX_LABELS_MAGIC)
    mismatch = write_mnist(tmp_path / "mismatch", train_x, train_y[:199], test_x, test_y)
    with pytest.raises(TollError, match="holds 199 labels but .* holds 200 images"):
        img.load_images("mnist", data_dir=mismatch, normal_class=0, val_indices=[0])
    assert read_idx(plain / "t10k-images-idx3-ubyte", magic=IDX_IMAGES_MAGIC).shape == (50, 28, 28)


def test_error_cifar_missing_truncated_and_foreign_pickles(tmp_path, rng):
    x = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    blobs = cifar10_blobs(x, np.arange(10), x, np.arange(10))
    folder = write_blobs(tmp_path / "cifar-10-batches-py", {k: v for k, v in blobs.items()
                                                            if k != "data_batch_3"})
    with pytest.raises(TollError) as err:
        load_dataset("cifar10", data_dir=tmp_path, normal_class=0)
    msg = str(err.value)
    assert f"missing data_batch_3 in {folder}" in msg and "cifar-10-python.tar.gz" in msg
    assert "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch" in msg

    (folder / "data_batch_3").write_bytes(blobs["data_batch_3"][:-500])  # truncated
    with pytest.raises(TollError, match=r"cannot read .*data_batch_3 as a CIFAR python pickle"):
        img.load_images("cifar10", data_dir=tmp_path, normal_class=0, val_indices=[0])

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": print}, protocol=2))
    with pytest.raises(TollError, match=r"refusing to load .*data_batch_3: it references .*print"):
        img.load_images("cifar10", data_dir=tmp_path, normal_class=0, val_indices=[0])

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)},
                                                       protocol=2))
    with pytest.raises(TollError, match=r"data_batch_3 has no labels entry"):
        img.load_images("cifar10", data_dir=tmp_path, normal_class=0, val_indices=[0])

    c100 = write_blobs(tmp_path / "c100", {"train": blobs["data_batch_1"], "test": blobs["test_batch"]})
    with pytest.raises(TollError, match=r"has no coarse_labels entry"):  # CIFAR-10 files as CIFAR-100
        img.load_images("cifar100", data_dir=c100, normal_class=0, val_indices=[0])


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_pickles_of_any_protocol_load(protocol):
    # Protocol 5 (pickle.HIGHEST_PROTOCOL) stores arrays via numpy's _frombuffer, and protocol
    # 2 an empty bytes value via bytes(): both were refused as foreign globals.
    from tolljax.data.cifar import CIFAR10, _batch_arrays, unpickle

    rows = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    batch = unpickle(pickle.dumps({b"data": rows, b"labels": [3, 7], b"batch_label": b""},
                                  protocol=protocol), "data_batch_1")
    data, labels = _batch_arrays(batch, CIFAR10, "data_batch_1")
    np.testing.assert_array_equal(data, rows)
    assert labels.tolist() == [3, 7] and batch[b"batch_label"] == b""


@pytest.mark.parametrize("batch, message", [
    ({1: 2}, r"has no data / labels entry \(keys: 1\)"),  # was a TypeError building the message
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0.5, 1.0]},
     "labels are float64, expected integer class numbers"),  # was "2 labels for 2 images"
    # were a NumPy ValueError ("inhomogeneous shape") through the CLI
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, [2]]},
     r"labels is not a regular array \(ValueError\)"),
    ({b"data": [[0] * 3072, [0]], b"labels": [1, 2]}, r"data is not a regular array"),
    # were "2 labels for 2 images" / "labels are float64"
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [[1], [2]]},
     r"labels have shape \(2, 1\) for 2 images, expected one class number per image"),
    ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, "data_batch_1 holds no images"),
    ([1, 2], "data_batch_1 holds a list, expected the dict of a CIFAR python batch"),
    ({b"data": np.zeros((2, 3072), np.int16), b"labels": [1, 2]},
     r"data is int16 \(2, 3072\), expected uint8 \(N, 3072\)"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]},
     r"data is uint8 \(2, 100\), expected uint8 \(N, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 10]}, "labels outside 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 0]}, "labels outside 0..9"),
])
def test_cifar_batch_errors_name_the_problem(batch, message):
    from tolljax.data.cifar import CIFAR10, _batch_arrays, unpickle

    with pytest.raises(TollError, match=message):
        _batch_arrays(unpickle(pickle.dumps(batch, protocol=2), "data_batch_1"), CIFAR10,
                      "data_batch_1")


def test_idx_header_whose_size_overflows_int64_is_a_toll_error():
    from tolljax.data.idx import parse_idx

    with pytest.raises(TollError, match=r"truncated inside its IDX header \(8 bytes\)"):
        parse_idx(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big"), magic=IDX_IMAGES_MAGIC)

    # 2**31 × 2**31 × 4 wrapped to 0 in int64: the reshape failed inside NumPy
    header = bytes([0, 0, 8, 3]) + (2**31).to_bytes(4, "big") * 2 + (4).to_bytes(4, "big")
    with pytest.raises(TollError, match="truncated: the header declares shape"):
        parse_idx(header, magic=IDX_IMAGES_MAGIC)


def test_error_normal_class(tmp_path, small_mnist):
    write_mnist(tmp_path, *small_mnist)
    # The CLIs name the option differently (run.py --classes, beta_sweep --normal-class), so
    # the library's messages name no flag.
    with pytest.raises(TollError, match="no normal class given; pass a normal class 0..9") as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert "--" not in str(err.value)
    with pytest.raises(TollError, match="normal class 10 is out of range; fmnist has normal "
                                        "classes 0..9") as err:
        load_dataset("fmnist", data_dir=tmp_path, normal_class=10)
    assert "--" not in str(err.value)
    with pytest.raises(TollError, match="normal class -1 is out of range"):
        load_dataset("cifar10", data_dir=tmp_path, normal_class=-1)
    with pytest.raises(TollError, match="must be an integer"):
        load_dataset("mnist", data_dir=tmp_path, normal_class="3")
    train_x, train_y, test_x, test_y = small_mnist
    empty = write_mnist(tmp_path / "no7", train_x, np.where(train_y == 7, 1, train_y), test_x, test_y)
    with pytest.raises(TollError, match="no training images of normal class 7") as err:
        img.load_images("mnist", data_dir=empty, normal_class=7, val_indices=[0])
    assert "check the files and the normal class" in str(err.value) and "--" not in str(err.value)


def test_a_validation_or_test_set_of_one_kind_of_image_is_an_error():
    # Was: a split whose test AUROC is undefined, from the library (the CLIs caught it).
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28, 1), np.uint8)
    y = np.repeat(np.arange(4), 10)
    split = img.make_split("mnist", x, y, x, y, 1, [0, 15])  # validation: a 0 and a 1
    assert split.val_y.tolist() == [1, 0] and split.test_y.sum() == 30
    with pytest.raises(TollError, match=r"the test set holds no images of normal class 1 "
                                        r"\(1\), so its AUROC is undefined; check the "
                                        r"data files$"):
        img.make_split("mnist", x, y, x, np.where(y == 1, 2, y), 1, [0, 15])
    with pytest.raises(TollError, match=r"the test set holds no images of any class other than "
                                        r"normal class 1 \(1\) \(anomalies\)"):
        img.make_split("mnist", x, y, x, np.ones_like(y), 1, [0, 15])
    with pytest.raises(TollError, match=r"the validation set holds no images of normal class 1 "
                                        r".*; check the data files and the validation indices"):
        img.make_split("mnist", x, y, x, y, 1, [0, 1, 25])


def test_error_source_and_dataset_names(tmp_path):
    with pytest.raises(TollError, match="unknown data source 'hf'; choose 'files'"):
        load_dataset("mnist", data_dir=tmp_path, normal_class=0, source="hf")
    with pytest.raises(TollError, match="arrhythmia is only available from files"):
        load_dataset("arrhythmia", source="tfds")
    with pytest.raises(TollError, match="unknown dataset 'svhn'"):
        load_dataset("svhn", normal_class=0)


def test_error_paper_split_needs_the_whole_official_test_set(tmp_path, random_mnist_dir):
    # A consistent but partial t10k pair ran as the paper's protocol (only the training size
    # was checked against the official one).
    import shutil

    from tolljax.data.idx import read_idx

    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        shutil.copy(random_mnist_dir / name, tmp_path / name)
    test_x = read_idx(random_mnist_dir / "t10k-images-idx3-ubyte", magic=IDX_IMAGES_MAGIC)
    test_y = read_idx(random_mnist_dir / "t10k-labels-idx1-ubyte", magic=IDX_LABELS_MAGIC)
    write_mnist(tmp_path / "partial", np.zeros((1, 28, 28), np.uint8), np.zeros(1, np.uint8),
                test_x[:5000], test_y[:5000], gz=False)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.move(tmp_path / "partial" / name, tmp_path / name)
    with pytest.raises(TollError, match="the test files hold 5000 images, the official test set "
                                        "has 10000"):
        load_dataset("mnist", data_dir=tmp_path, normal_class=0)


def test_error_shipped_indices_need_official_files(tmp_path, small_mnist):
    write_mnist(tmp_path, *small_mnist)
    with pytest.raises(TollError, match="hold 200 images, the official set has 60000") as err:
        load_dataset("mnist", data_dir=tmp_path, normal_class=0)
    assert "--source" not in str(err.value)
    with pytest.raises(TollError, match="validation index 200 is out of range for a training "
                                        "split of 200 images"):
        img.load_images("mnist", data_dir=tmp_path, normal_class=0, val_indices=[3, 200])
    with pytest.raises(TollError, match="duplicates"):
        img.load_images("mnist", data_dir=tmp_path, normal_class=0, val_indices=[3, 3])


def test_error_mnist_files_loaded_as_fmnist(full_mnist_dir):
    with pytest.raises(TollError, match="the train files in .* look like MNIST .* use --dataset mnist"):
        load_dataset("fmnist", data_dir=full_mnist_dir[0], normal_class=0)


def test_error_fmnist_test_files_among_mnist_train_files(full_mnist_dir, tmp_path):
    # Was accepted: trained on MNIST, tested on Fashion-MNIST (both use t10k-* file names).
    folder, train_x, train_y, _, test_y = full_mnist_dir
    fmnist_like = np.where(np.random.default_rng(2).random((10_000, 28, 28)) < 0.2868, 255, 0)
    mixed = write_mnist(tmp_path / "mixed", train_x, train_y, fmnist_like.astype(np.uint8), test_y,
                        style="dot", gz=False)
    with pytest.raises(TollError, match="mnist: the test files in .* look like Fashion-MNIST "
                                        r"\(mean pixel 0.28"):
        load_dataset("mnist", data_dir=mixed, normal_class=0)


# --------------------------------------------------------------------------- real MNIST

@pytest.mark.skipif(not REAL_MNIST.is_dir(), reason=f"real MNIST not found at {REAL_MNIST}")
def test_real_mnist():
    s = load_dataset("mnist", data_dir=REAL_MNIST, normal_class=0)
    validate_split(s, sample_shape=(28, 28, 1), batch_size=1000)
    with gzip.open(REAL_MNIST / "train-labels-idx1-ubyte.gz") as fh:
        train_y = np.frombuffer(fh.read(), np.uint8, offset=8)
    with gzip.open(REAL_MNIST / "t10k-labels-idx1-ubyte.gz") as fh:
        test_y = np.frombuffer(fh.read(), np.uint8, offset=8)
    val = np.load(shipped_file("10000_val_indices_mnist.npy"))
    assert train_y.size == 60_000 and test_y.size == 10_000
    sizes = s.sizes()
    assert sizes["train"] == int((train_y == 0).sum() - (train_y[val] == 0).sum())
    assert sizes["val_normal"] + sizes["val_anomalous"] == 10_000
    assert sizes["test_normal"] == int((test_y == 0).sum()) == 980
    assert 0.85 < sizes["val_anomalous"] / 10_000 < 0.95
    assert 0.85 < sizes["test_anomalous"] / 10_000 < 0.95
    # the standardisation constants are the full training set's statistics
    raw_x, raw_y, _, _ = img.read_raw("mnist", REAL_MNIST)
    full = img.preprocess("mnist", raw_x)
    assert abs(float(full.mean(dtype=np.float64))) < 0.05
    assert abs(float(full.std(dtype=np.float64)) - 1) < 0.05
    np.testing.assert_array_equal(raw_y, train_y)
    with pytest.raises(TollError, match="look like MNIST"):
        load_dataset("fmnist", data_dir=REAL_MNIST, normal_class=0)


# --------------------------------------------------------------------------- tfds source

@pytest.fixture(scope="module")
def tfds():
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("tensorflow", reason="tfds.load (and tfds.testing.mock_data) need "
                                             "tensorflow: pip install tensorflow-cpu")
    return tfds


def test_tfds_mock_mnist(tfds):
    from tolljax.data.tfds_source import read_tfds
    with tfds.testing.mock_data(num_examples=60):
        raw = read_tfds("mnist")
        s = load_dataset("mnist", normal_class=int(np.bincount(raw[1]).argmax()), source="tfds")
        s2 = load_dataset("mnist", normal_class=int(np.bincount(raw[1]).argmax()), source="tfds")
    train_x, train_y, test_x, test_y = raw
    k = int(np.bincount(train_y).argmax())
    assert train_x.shape == (60, 28, 28, 1) and train_x.dtype == np.uint8
    val = img.tfds_val_indices(60)
    assert val.shape == (min(10_000, 60 // 5),)
    np.testing.assert_array_equal(val, img.tfds_val_indices(60, seed=img.TFDS_VAL_SEED))
    keep = np.ones(60, bool)
    keep[val] = False
    assert s.train.shape == (int((keep & (train_y == k)).sum()), 28, 28, 1)
    assert s.val_x.shape == (12, 28, 28, 1) and s.test_x.shape == (60, 28, 28, 1)
    np.testing.assert_array_equal(s.val_y, (train_y[val] != k).astype(np.int32))
    np.testing.assert_array_equal(s.test_y, (test_y != k).astype(np.int32))
    np.testing.assert_allclose(s.test_x[..., 0], mnist_std(test_x[..., 0]), rtol=1e-5, atol=1e-5)
    for a, b in ((s.train, s2.train), (s.val_x, s2.val_x), (s.test_x, s2.test_x)):
        np.testing.assert_array_equal(a, b)  # reproducible


def test_tfds_mock_cifar100_coarse(tfds):
    from tolljax.data.tfds_source import read_tfds
    with tfds.testing.mock_data(num_examples=40):
        raw = read_tfds("cifar100")
        # a class that the validation images (img.tfds_val_indices) hold, beside others
        val = raw[1][img.tfds_val_indices(40)]
        k = int(np.bincount(val, minlength=20).argmax())
        assert 0 < (val == k).sum() < val.size
        s = img.load_images("cifar100", normal_class=k, source="tfds")
    assert raw[0].shape == (40, 32, 32, 3) and raw[1].max() < 20
    lo, hi = minmax("cifar100", k)
    assert s.test_x.shape == (40, 32, 32, 3) and s.val_x.shape == (8, 32, 32, 3)
    np.testing.assert_allclose(s.test_x[5], cifar_by_hand(raw[2][5], lo, hi), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(s.test_y, (raw[3] != k).astype(np.int32))


def test_tfds_missing_data_error(tfds, tmp_path):
    with pytest.raises(TollError, match=r"no TFDS data for 'fashion_mnist' .*tfds build "
                                        r"fashion_mnist.*--source files --data-dir"):
        load_dataset("fmnist", data_dir=tmp_path, normal_class=0, source="tfds")


def test_tfds_validation_needs_five_training_images():
    assert img.tfds_val_indices(5).tolist() in ([0], [1], [2], [3], [4])
    with pytest.raises(TollError, match="the tfds training split holds 4 images; at least 5"):
        img.tfds_val_indices(4)  # was an empty array, then a message about the indices


def test_idx_files_of_another_size_or_label_range_are_named(tmp_path, small_mnist):
    train_x, train_y, test_x, test_y = small_mnist
    wide = write_mnist(tmp_path / "wide", np.zeros((200, 32, 32), np.uint8), train_y, test_x,
                       test_y)
    with pytest.raises(TollError, match="images are 32x32, expected 28x28; use the MNIST files"):
        img.read_raw("mnist", wide)
    img.clear_cache()
    labels = write_mnist(tmp_path / "labels", train_x, np.where(train_y == 3, 10, train_y),
                         test_x, test_y)
    with pytest.raises(TollError, match="label 10 outside 0..9; the file is corrupt or not MNIST"):
        img.read_raw("mnist", labels)


def test_a_cifar_archive_without_a_member_is_named(tmp_path, rng):
    x = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    blobs = cifar10_blobs(x, np.arange(10), x, np.arange(10))
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, data in blobs.items():
            if name != "test_batch":
                info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    with pytest.raises(TollError, match="has no member cifar-10-batches-py/test_batch; expected "
                                        "the official cifar-10-python.tar.gz"):
        img.read_raw("cifar10", tmp_path)


def test_idx_file_longer_than_its_header_says_is_named():
    from tolljax.data.idx import parse_idx

    # labels header for 3 items, then 4 data bytes: one byte more than declared
    buf = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3, 4])
    with pytest.raises(TollError, match=r"<bytes> is longer than its header says: the header "
                                        r"declares shape 3 = 3 bytes of data, the file holds 4"):
        parse_idx(buf, magic=IDX_LABELS_MAGIC)
    np.testing.assert_array_equal(parse_idx(buf[:-1], magic=IDX_LABELS_MAGIC), [1, 2, 3])


def test_gcn_of_a_constant_image_is_zero_not_nan():
    import warnings

    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[0] = 255  # constant: no deviation, so zeros before the min-max scaling
    images[1, :16] = 200                           # half 200, half 0: ±100/255 around the mean
    lo, hi = img.cifar_minmax("cifar100", 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")             # no "invalid value in divide"
        out = img.preprocess("cifar100", images, 4)
    np.testing.assert_allclose(out[0], np.full((32, 32, 3), -lo / (hi - lo)), rtol=1e-6)
    # image 1 by hand: deviations are ±(100/255), their mean absolute value 100/255 → ±1
    np.testing.assert_allclose(out[1, :16], np.full((16, 32, 3), (1 - lo) / (hi - lo)), rtol=1e-5)
    np.testing.assert_allclose(out[1, 16:], np.full((16, 32, 3), (-1 - lo) / (hi - lo)), rtol=1e-5)


def test_gcn_of_every_constant_image_is_zero():
    # Found by the mutation audit: the float32 mean of a constant 77/255 image is off by an
    # ulp, so centring left the same tiny ±ε everywhere and the image came out all ±1.
    images = np.repeat(np.arange(256, dtype=np.uint8), 32 * 32 * 3).reshape(256, 32, 32, 3)
    x = images.astype(np.float32) / np.float32(255)
    with np.errstate(all="raise"):
        out = img.gcn_l1(x.copy())
    assert not out.any()
    # a non-constant image is normalised as before: mean 0, mean absolute value 1
    y = img.gcn_l1(np.linspace(0, 1, 2 * 12, dtype=np.float32).reshape(2, 2, 2, 3) ** 2)
    flat = y.reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(flat.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(np.abs(flat).mean(axis=1), 1, rtol=1e-6)


def test_a_negative_validation_index_is_refused_not_wrapped():
    # -1 would select the last training image (NumPy wraps) and keep[-1] would drop it.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 28, 28, 1), np.uint8)
    y = np.repeat(np.arange(4), 10)
    with pytest.raises(TollError, match="mnist: validation index -1 is out of range for a "
                                        "training split of 40 images"):
        img.make_split("mnist", x, y, x, y, 1, [0, 15, -1])
    with pytest.raises(TollError, match="non-empty 1-D integer array"):
        img.make_split("mnist", x, y, x, y, 1, [0.0, 15.0])


def test_preprocess_converts_every_chunk(monkeypatch):
    # Images are converted _CHUNK at a time into an np.empty array; with a chunk of 4, 10
    # images take three chunks (the last partial). Every image must match the formula (a
    # skipped chunk would leave uninitialised memory, caught before only when it held NaN).
    rng = np.random.default_rng(5)
    monkeypatch.setattr(img, "_CHUNK", 4)
    gray = rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)
    np.testing.assert_allclose(img.preprocess("fmnist", gray),
                               (gray / 255 - 0.2860) / 0.3530, rtol=1e-5, atol=1e-5)
    color = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    lo, hi = img.cifar_minmax("cifar10", 3)
    x = color / 255
    x = x - x.mean(axis=(1, 2, 3), keepdims=True)
    x = x / np.abs(x).mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(img.preprocess("cifar10", color, 3), (x - lo) / (hi - lo),
                               rtol=1e-5, atol=1e-5)
