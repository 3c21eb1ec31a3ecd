import numpy as np
import pytest

from tolljax.data import AnomalySplit, limit_split, pad_rows, validate_split
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


def test_limit_split_rounds_to_the_nearest_anomaly_count_and_keeps_both_classes(arrhythmia):
    # 13 of 90 validation samples are anomalies: 40 · 13/90 = 5.78 → 6 anomalies (not 5);
    # 3 · 13/90 = 0.43 → 0, raised to 1 so that both classes remain.
    assert arrhythmia.val_y.sum() == 13 and arrhythmia.val_y.size == 90
    assert limit_split(arrhythmia, val_limit=40).val_y.sum() == 6
    small = limit_split(arrhythmia, val_limit=3, test_limit=2)
    assert small.val_y.tolist().count(1) == 1 and small.val_y.size == 3
    assert sorted(small.test_y.tolist()) == [0, 1]
    # mostly anomalies: 2 · 9/10 = 1.8 → 2, lowered to 1 so that one normal sample remains
    y = np.array([0] + [1] * 9)
    x = np.arange(10, dtype=np.float32)[:, None]
    split = AnomalySplit("t", x, x, y, x, y)
    assert sorted(limit_split(split, val_limit=2).val_y.tolist()) == [0, 1]


def test_validate_split_label_checks_and_batch_size_boundary(arrhythmia):
    s = arrhythmia
    with pytest.raises(TollError, match=r"validation labels have shape \(89,\), expected \(90,\)"):
        validate_split(AnomalySplit("t", s.train, s.val_x, s.val_y[:-1], s.test_x, s.test_y))
    two = s.test_y.copy()
    two[0] = 2
    with pytest.raises(TollError, match=r"test labels must be 0 \(normal\) or 1 \(anomaly\)"):
        validate_split(AnomalySplit("t", s.train, s.val_x, s.val_y, s.test_x, two))
    validate_split(s, batch_size=232)  # each step draws every one of the 232 rows: allowed
    with pytest.raises(TollError, match="only 232 normal training samples but --batch-size 233"):
        validate_split(s, batch_size=233)


def test_limit_split_keeps_the_original_sample_order():
    # The subset is a sorted index set: F1 breaks score ties by sample order, so a shuffled
    # subset would change results. x = row index makes the order visible.
    y = np.array([0, 1] * 10)
    x = np.arange(20, dtype=np.float32)[:, None]
    small = limit_split(AnomalySplit("t", x, x, y, x, y), val_limit=8, test_limit=6, seed=3)
    for part_x, part_y in ((small.val_x, small.val_y), (small.test_x, small.test_y)):
        idx = part_x[:, 0].astype(int)
        assert np.all(np.diff(idx) > 0)
        np.testing.assert_array_equal(part_y, y[idx])  # each label stays with its sample


def test_pad_rows_to_its_own_row_count_and_keeps_float32_values():
    # the largest normal class is "padded" to its own size; values are cast to float32 only
    train = np.array([[1 / 3, 70000.5], [-1e-3, 2.0**-20]], np.float64)
    same = pad_rows(train, 2)
    np.testing.assert_array_equal(same, train.astype(np.float32))
    assert same.dtype == np.float32 and same.shape == (2, 2)
