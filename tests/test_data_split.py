import numpy as np
import pytest

from tolljax.data import limit_split, pad_rows
from tolljax.errors import TollError


def test_limit_split_is_stratified_seeded_and_a_subset(arrhythmia):
    small = limit_split(arrhythmia, val_limit=30, test_limit=45, seed=0)
    assert small.val_y.size == 30 and small.test_y.size == 45
    assert small.val_y.sum() == round(30 * 13 / 90) and small.test_y.sum() == round(45 * 13 / 90)
    rows = {r.tobytes() for r in arrhythmia.test_x}
    assert all(r.tobytes() in rows for r in small.test_x)
    for part in (small.val_x, small.test_x):  # drawn without replacement
        assert len({r.tobytes() for r in part}) == part.shape[0]
    again = limit_split(arrhythmia, val_limit=30, test_limit=45, seed=0)
    np.testing.assert_array_equal(small.test_x, again.test_x)
    np.testing.assert_array_equal(small.train, arrhythmia.train)  # training data untouched
    assert limit_split(arrhythmia, val_limit=1000).val_y.size == 90  # larger than the set: all


def test_limit_split_rejects_tiny_limits(arrhythmia):
    with pytest.raises(TollError, match="--test-limit must be at least 2"):
        limit_split(arrhythmia, test_limit=1)


def test_pad_rows_zero_pads_to_a_common_row_count():
    train = np.arange(6, dtype=np.float64).reshape(3, 2)
    padded = pad_rows(train, 5)
    assert padded.dtype == np.float32 and padded.shape == (5, 2)
    np.testing.assert_array_equal(padded[:3], train)
    np.testing.assert_array_equal(padded[3:], 0)
    with pytest.raises(TollError, match="cannot pad 3 training rows to 2"):
        pad_rows(train, 2)


def test_fingerprint_follows_the_contents_not_the_object(arrhythmia):
    import dataclasses
    import hashlib

    same = dataclasses.replace(arrhythmia, train=arrhythmia.train.copy())
    assert same.fingerprint() == arrhythmia.fingerprint()
    # an independent reference: sha256 over the name, then each array's header and bytes
    digest = hashlib.sha256(b"arrhythmia")
    for field in ("train", "val_x", "val_y", "test_x", "test_y"):
        a = getattr(arrhythmia, field)
        digest.update(f"{field}:{a.dtype.str}:{a.shape}".encode() + a.tobytes())
    assert arrhythmia.fingerprint() == digest.hexdigest()[:16]
    one_value = arrhythmia.train.copy()
    one_value[5, 7] = np.nextafter(one_value[5, 7], np.float32(np.inf))
    assert dataclasses.replace(arrhythmia, train=one_value).fingerprint() != arrhythmia.fingerprint()
    # the same bytes under another dtype or shape are other data
    as_ints = arrhythmia.test_y.view(np.uint32)
    assert dataclasses.replace(arrhythmia, test_y=as_ints).fingerprint() != arrhythmia.fingerprint()
    flat = arrhythmia.val_x.reshape(-1, 2 * arrhythmia.val_x.shape[1]) \
        if arrhythmia.val_x.shape[0] % 2 == 0 else arrhythmia.val_x[None]
    assert dataclasses.replace(arrhythmia, val_x=flat).fingerprint() != arrhythmia.fingerprint()
    # a column-ordered copy has the same values: the same fingerprint
    fortran = np.asfortranarray(arrhythmia.train)
    assert dataclasses.replace(arrhythmia, train=fortran).fingerprint() == arrhythmia.fingerprint()
