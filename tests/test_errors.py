import os

import numpy as np
import pytest

from tolljax.errors import TollError, index_list, numeric_array, output_dir


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
