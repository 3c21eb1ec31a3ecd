"""benchmarks/peaks.py: which datasheet peak a device and arithmetic get (used for MFU)."""
import pytest

from benchmarks.peaks import arithmetic, peak_tflops


@pytest.mark.parametrize("kind, dtype, precision, expected", [
    ("NVIDIA H100 80GB HBM3", "float32", "default", 494.7),   # SXM, TF32 tensor cores
    ("NVIDIA H100 80GB HBM3", "float32", "highest", 66.9),    # true float32
    ("NVIDIA H100 80GB HBM3", "bfloat16", "default", 989.4),
    ("NVIDIA H100 PCIe", "float32", "default", 378.0),        # not the SXM entry it contains
    ("NVIDIA H100 NVL", "bfloat16", "highest", 835.5),        # bf16 whatever the precision
    ("NVIDIA H200", "float32", "default", 494.7),
    ("NVIDIA H200 NVL", "float32", "default", 417.5),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", "default", 312.0),
])
def test_known_gpus_get_their_datasheet_peak(kind, dtype, precision, expected):
    assert peak_tflops(kind, dtype, precision) == expected


def test_unknown_devices_have_no_peak_and_bad_precision_is_named():
    assert peak_tflops("cpu") is None and peak_tflops("NVIDIA GeForce RTX 4090") is None
    assert arithmetic("float32", "default") == "tf32"
    with pytest.raises(ValueError, match="precision 'high'"):
        arithmetic("float32", "high")
