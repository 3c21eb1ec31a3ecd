import os

import numpy as np
import pytest

from tolljax.errors import (TollError, check_float32, index_list, numeric_array, output_dir,
                            real_hyperparameter)


def test_output_dir_creates_nested_folders(tmp_path):
    folder = output_dir(tmp_path / "a" / "b")
    assert folder.is_dir() and folder == tmp_path / "a" / "b"
    assert output_dir(folder) == folder  # an existing folder is fine


def test_output_dir_rejects_a_file_naming_the_flag(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(TollError, match=r"^--save .*f: is a file, not a folder"):
        output_dir(tmp_path / "f", "--save")


def test_output_dir_below_a_file_cannot_be_created(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(TollError, match="cannot create the folder"):
        output_dir(tmp_path / "f" / "sub")


def test_output_dir_rejects_a_folder_without_write_permission(tmp_path, monkeypatch):
    # Permission bits do not bind root (CI may run as root): ask os.access as the code does.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(TollError, match="the folder is not writable"):
        output_dir(tmp_path)


def test_numeric_array_converts_and_names_what_is_wrong():
    import numpy as np

    hints = dict(shape_hint="pass rows", dtype_hint="pass numbers")
    np.testing.assert_array_equal(numeric_array([[1, 2]], "X", kinds="fiu", **hints), [[1, 2]])
    with pytest.raises(TollError, match=r"^X cannot be converted to an array \(ValueError\); pass rows$"):
        numeric_array([[1, 2], [3]], "X", kinds="fiu", **hints)
    with pytest.raises(TollError, match=r"^X has dtype <U1; pass numbers$"):
        numeric_array(["a"], "X", kinds="fiu", **hints)
    with pytest.raises(TollError, match="has dtype bool"):
        numeric_array([True], "X", kinds="fiu", **hints)
    assert numeric_array([True], "X", kinds="biuf", **hints).dtype == bool


def test_index_list_shows_the_first_indices_and_marks_more():
    assert index_list(np.array([2, 3, 4])) == "[2, 3, 4]"
    assert index_list(np.arange(5)) == "[0, 1, 2, 3, 4]"
    assert index_list(np.arange(6)) == "[0, 1, 2, 3, 4]..."
    assert index_list(np.array([7, 9], np.int64), shown=1) == "[7]..."
    assert index_list([]) == "[]"


@pytest.mark.parametrize("value, message", [
    (1e39, r"^--x=1e\+39 is beyond the float32 range"),
    (-3.5e38, "beyond the float32 range"),
    (1e-46, r"^--x=1e-46 is 0 in the float32 arithmetic"),  # below the smallest subnormal
])
def test_check_float32_refuses_values_float32_makes_inf_or_0(value, message):
    with pytest.raises(TollError, match=message):
        check_float32("--x", value)


@pytest.mark.parametrize("value", [0.0, 1e-45, 1e-3, 3.4e38, float(np.finfo(np.float32).max)])
def test_check_float32_accepts_values_float32_keeps(value):
    check_float32("--x", value)  # 1e-45 is float32's smallest subnormal: not 0


def test_numeric_array_takes_bfloat16_as_float_and_refuses_masked_entries():
    import ml_dtypes

    arr = numeric_array(np.ones(3, ml_dtypes.bfloat16), "x", kinds="f", shape_hint="", dtype_hint="")
    assert arr.dtype == ml_dtypes.bfloat16
    with pytest.raises(TollError, match="x has dtype bfloat16"):  # where floats are not asked for
        numeric_array(np.ones(3, ml_dtypes.bfloat16), "x", kinds="iu", shape_hint="", dtype_hint="")
    with pytest.raises(TollError, match="x is a masked array with 1 masked entries"):
        numeric_array(np.ma.masked_array([1.0, 2.0], mask=[0, 1]), "x", kinds="f",
                      shape_hint="", dtype_hint="")


@pytest.mark.parametrize("value, positive, message", [
    ("1", False, "must be a finite number >= 0, got '1'"),
    (True, False, "must be a finite number >= 0, got True"),
    (-0.5, False, "must be a finite number >= 0, got -0.5"),
    (0.0, True, "must be a finite number > 0, got 0.0"),
    (np.array(np.nan), True, "must be a finite number > 0, got array\\(nan\\)"),
    (1e39, False, "is beyond the float32 range"),
    (1e-50, True, "is 0 in the float32 arithmetic"),
])
def test_real_hyperparameter_refuses_what_training_cannot_use(value, positive, message):
    with pytest.raises(TollError, match=f"^w.*{message}"):
        real_hyperparameter("w", value, positive=positive)


def test_real_hyperparameter_returns_python_floats():
    for value, expected in ((0, 0.0), (np.float32(0.25), 0.25), (np.array(2.0), 2.0), (3, 3.0)):
        got = real_hyperparameter("w", value)
        assert type(got) is float and got == expected
