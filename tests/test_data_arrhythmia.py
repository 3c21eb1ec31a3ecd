import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from tolljax.data import AnomalySplit, load_arrhythmia, load_dataset, shipped_file, validate_split
from tolljax.errors import TollError


def test_split_sizes_match_the_authors_code(arrhythmia):
    assert arrhythmia.sizes() == {"train": 232, "val_normal": 77, "val_anomalous": 13,
                                  "test_normal": 77, "test_anomalous": 13}
    assert arrhythmia.train.dtype == np.float32 and arrhythmia.sample_shape == (274,)


def test_split_follows_the_shipped_permutations(arrhythmia):
    mat = scipy.io.loadmat(str(shipped_file("arrhythmia.mat")))
    x, y = mat["X"].astype(np.float32), mat["y"].ravel()
    normal = x[y == 0][np.load(shipped_file("randomized_normal_indices_arrhythmia.npy"))]
    anomalous = x[y == 1][np.load(shipped_file("randomized_anomalous_indices_arrhythmia.npy"))]
    np.testing.assert_array_equal(arrhythmia.test_x[:77], normal[:77])
    np.testing.assert_array_equal(arrhythmia.val_x[:77], normal[77:154])
    np.testing.assert_array_equal(arrhythmia.train, normal[154:])
    np.testing.assert_array_equal(arrhythmia.test_x[77:], anomalous[:13])
    np.testing.assert_array_equal(arrhythmia.val_x[77:], anomalous[13:26])
    # No row is used twice; raw features (no scaling).
    rows = {r.tobytes() for part in (arrhythmia.train, arrhythmia.val_x, arrhythmia.test_x) for r in part}
    assert len(rows) == 232 + 90 + 90
    assert arrhythmia.train.max() > 100


def test_data_dir_reads_the_same_file(tmp_path, arrhythmia):
    (tmp_path / "arrhythmia.mat").write_bytes(shipped_file("arrhythmia.mat").read_bytes())
    again = load_dataset("arrhythmia", data_dir=tmp_path)
    np.testing.assert_array_equal(again.train, arrhythmia.train)


def test_data_dir_is_checked_as_the_image_loaders_check_it(tmp_path, arrhythmia, monkeypatch):
    shipped = shipped_file("arrhythmia.mat")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "arrhythmia.mat").write_bytes(shipped.read_bytes())
    monkeypatch.setenv("HOME", str(tmp_path))  # "~" was not expanded (the image loaders did)
    np.testing.assert_array_equal(load_arrhythmia("~/data").train, arrhythmia.train)
    # these were "arrhythmia data file not found: …/nowhere/arrhythmia.mat" and
    # "…/arrhythmia.mat/arrhythmia.mat"
    with pytest.raises(TollError, match=r"data dir .*nowhere does not exist"):
        load_arrhythmia(tmp_path / "nowhere")
    with pytest.raises(TollError, match="is a file, not a folder") as err:
        load_arrhythmia(tmp_path / "data" / "arrhythmia.mat")
    assert f"the folder holding this file is {tmp_path / 'data'}" in str(err.value)
    (tmp_path / "unpacked" / "arrhythmia.mat").mkdir(parents=True)
    with pytest.raises(TollError, match="arrhythmia.mat is a folder, not a file: move the file "
                                        "inside up one level"):
        load_arrhythmia(tmp_path / "unpacked")


def _write_mat(path, x, y):
    scipy.io.savemat(str(path / "arrhythmia.mat"), {"X": x, "y": y.reshape(-1, 1)})


def test_a_sparse_x_loads_as_its_dense_matrix(tmp_path, arrhythmia):
    import scipy.sparse

    mat = scipy.io.loadmat(str(shipped_file("arrhythmia.mat")))
    # was "X is a cell array, not a numeric matrix"
    scipy.io.savemat(str(tmp_path / "arrhythmia.mat"),
                     {"X": scipy.sparse.csc_matrix(mat["X"]), "y": mat["y"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy 1.18 warned that its sparse default changes
        again = load_arrhythmia(tmp_path)
    np.testing.assert_array_equal(again.train, arrhythmia.train)
    np.testing.assert_array_equal(again.test_x, arrhythmia.test_x)


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("corrupt", "cannot read"),
    ("features", "273 features per row, expected 274"),
    ("keys", "no 'X' and 'y'"),
    ("labels", "labels must be 0"),
    ("rows", "split indices do not match"),
])
def test_bad_files_give_clear_errors(tmp_path, case, message):
    mat = scipy.io.loadmat(str(shipped_file("arrhythmia.mat")))
    x, y = mat["X"], mat["y"].ravel()
    if case == "corrupt":
        (tmp_path / "arrhythmia.mat").write_bytes(b"MATLAB 5.0 garbage" * 10)
    elif case == "features":
        _write_mat(tmp_path, x[:, :273], y)
    elif case == "keys":
        scipy.io.savemat(str(tmp_path / "arrhythmia.mat"), {"data": x})
    elif case == "labels":
        _write_mat(tmp_path, x, np.where(y == 1, 2, 0))
    elif case == "rows":
        _write_mat(tmp_path, x[:400], y[:400])
    with pytest.raises(TollError, match=message):
        load_arrhythmia(tmp_path)


def test_an_unreadable_file_is_not_called_corrupt(tmp_path, arrhythmia, deny_reading):
    # Was: "cannot read … as a MATLAB .mat file (PermissionError …); the file is corrupt".
    (tmp_path / "arrhythmia.mat").write_bytes(shipped_file("arrhythmia.mat").read_bytes())
    deny_reading(tmp_path / "arrhythmia.mat")
    with pytest.raises(TollError) as err:
        load_arrhythmia(tmp_path)
    assert str(err.value) == (f"cannot read {tmp_path / 'arrhythmia.mat'} (Permission denied); "
                              "check the file's permissions or copy it again")


def test_an_unreadable_data_dir_is_not_called_missing(tmp_path, monkeypatch):
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and real_access(p, mode))
    for name in ("arrhythmia", "mnist"):  # every loader checks its folder the same way
        with pytest.raises(TollError, match=f"data dir {tmp_path} cannot be read \\(permission "
                                            "denied\\); check the folder's permissions"):
            load_dataset(name, data_dir=tmp_path, normal_class=None if name == "arrhythmia" else 0)


@pytest.mark.parametrize("case, message", [
    ("text", "X is text, not a numeric matrix"),
    ("cell", "X is a cell array, not a numeric matrix"),
    ("complex", "X holds complex numbers"),
    # finite float64 values that float32 cannot hold: not "NaN/inf values" (the file has none)
    ("overflow", r"X holds \d+ values beyond the float32 range .*rows \[0, 1, 2, 3, 4\]\.\.\.\); "
                 "rescale"),
])
def test_unusable_values_name_the_file_and_the_problem(tmp_path, case, message):
    mat = scipy.io.loadmat(str(shipped_file("arrhythmia.mat")))
    x, y = mat["X"], mat["y"].ravel()
    bad = {"text": "hello", "cell": np.array([[1.0, "a"]], dtype=object),
           "complex": x * (1 + 1j), "overflow": x * 1e300}[case]
    scipy.io.savemat(str(tmp_path / "arrhythmia.mat"), {"X": bad, "y": y.reshape(-1, 1)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. no ComplexWarning from a silent cast to real
        with pytest.raises(TollError, match=message) as err:
            load_arrhythmia(tmp_path)
    assert str(tmp_path / "arrhythmia.mat") in str(err.value) and "\n" not in str(err.value)


def test_validate_split_names_each_problem(arrhythmia):
    s = arrhythmia
    bad = s.train.copy()
    bad[3, 5] = np.nan
    with pytest.raises(TollError, match="train set contains 1 NaN/inf"):
        validate_split(AnomalySplit("t", bad, s.val_x, s.val_y, s.test_x, s.test_y))
    test_x = s.test_x.copy()
    test_x[0, 0] = np.inf
    with pytest.raises(TollError, match="test set contains 1 NaN/inf"):
        validate_split(AnomalySplit("t", s.train, s.val_x, s.val_y, test_x, s.test_y))
    with pytest.raises(TollError, match="model expects"):
        validate_split(s, sample_shape=(275,))
    with pytest.raises(TollError, match="only 232 normal training samples but --batch-size 300"):
        validate_split(s, batch_size=300)
    with pytest.raises(TollError, match="train set is empty"):
        validate_split(AnomalySplit("t", s.train[:0], s.val_x, s.val_y, s.test_x, s.test_y))
    with pytest.raises(TollError, match="only one class"):
        validate_split(AnomalySplit("t", s.train, s.val_x, np.zeros_like(s.val_y), s.test_x, s.test_y))
    # were "the train set is empty (shape (232,))", and accepted (inf in float32; a set of
    # other samples than train's without sample_shape)
    with pytest.raises(TollError, match=r"the train set has shape \(232,\); expected one sample per row"):
        validate_split(AnomalySplit("t", s.train[:, 0], s.val_x, s.val_y, s.test_x, s.test_y))
    with pytest.raises(TollError, match="validation set contains 1 NaN/inf values or values beyond "
                                        "the float32 range"):
        huge = s.val_x.astype(np.float64)
        huge[2, 3] = 1e39
        validate_split(AnomalySplit("t", s.train, huge, s.val_y, s.test_x, s.test_y))
    with pytest.raises(TollError, match=r"validation samples have shape \(273,\), the training "
                                        r"samples have \(274,\)"):
        validate_split(AnomalySplit("t", s.train, s.val_x[:, :273], s.val_y, s.test_x, s.test_y))
    validate_split(s, sample_shape=(274,), batch_size=100)  # the real split is fine
    validate_split(s)


def test_unknown_dataset():
    with pytest.raises(TollError, match="unknown dataset 'mnits'"):
        load_dataset("mnits")


def test_split_rounds_each_holdout_count_to_nearest():
    from tolljax.data.arrhythmia import split_arrhythmia

    # 8 normal rows (0.2·8 = 1.6 → 2) and 3 anomalous rows (0.2·3 = 0.6 → 1): floor would
    # give 1 and 0. Row i holds the value i, so every part can be named by hand.
    x = np.arange(11, dtype=np.float64)[:, None] * np.ones((1, 2))
    y = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0])     # normal rows 0,2,3,5,6,7,9,10
    normal_perm = np.array([7, 6, 5, 4, 3, 2, 1, 0])    # → rows 10,9,7,6,5,3,2,0
    anomalous_perm = np.array([2, 0, 1])                # → rows 8,1,4
    s = split_arrhythmia(x, y, normal_perm, anomalous_perm)
    np.testing.assert_array_equal(s.test_x[:, 0], [10, 9, 8])
    np.testing.assert_array_equal(s.test_y, [0, 0, 1])
    np.testing.assert_array_equal(s.val_x[:, 0], [7, 6, 1])
    np.testing.assert_array_equal(s.val_y, [0, 0, 1])
    np.testing.assert_array_equal(s.train[:, 0], [5, 3, 2, 0])
    assert s.train.dtype == s.val_x.dtype == s.test_x.dtype == np.float32


@pytest.mark.parametrize("case, message", [
    # a NaN in the file: was carried into the split without a word
    ("nan", r"X contains 1 NaN/inf values \(rows \[3\]\); clean or impute"),
    # a large *negative* value: float32 would turn it into -inf
    ("negative_overflow", r"X holds 1 values beyond the float32 range \(\|x\| > 3.4e38, rows "
                          r"\[2\]\)"),
    # one label fewer than rows: was an IndexError from the boolean mask
    ("rows", r"X has shape \(452, 274\) and y has 451 labels; they must agree"),
])
def test_file_values_and_shapes_the_split_cannot_use_are_named(tmp_path, case, message):
    mat = scipy.io.loadmat(str(shipped_file("arrhythmia.mat")))
    x, y = mat["X"].astype(np.float64), mat["y"].ravel()
    if case == "nan":
        x[3, 5] = np.nan
    elif case == "negative_overflow":
        x[2, 0] = -1e300
    else:
        y = y[:-1]
    scipy.io.savemat(str(tmp_path / "arrhythmia.mat"), {"X": x, "y": y.reshape(-1, 1)})
    with pytest.raises(TollError, match=message):
        load_arrhythmia(tmp_path)
