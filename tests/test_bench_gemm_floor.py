"""benchmarks/bench_gemm_floor.py: how its summary line reads its measurements."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")  # the script imports PyTorch, its other side

from benchmarks.bench_gemm_floor import _print, _rest  # noqa: E402


def test_the_rest_of_a_step_is_never_negative():
    assert _rest(1.3, 1.1) == "0.2 ms"
    assert _rest(1.0, 1.0) == "0.0 ms"
    # Arrhythmia's small products, timed alone, can sum to more than the step ran: that was
    # printed as a negative rest ("-0.2 ms")
    assert _rest(1.0, 1.25) == "none (the products alone took 0.2 ms more than the step)"


def test_the_summary_names_a_step_faster_than_its_products(capsys):
    gemm = {"mkn": (100, 274, 256), "count": 1, "a_t": False, "b_t": False, "gflop": 0.014,
            "xla_ms": 1.5, "torch_ms": 0.5}
    _print({"model": "arrhythmia", "batch": 100, "gemms": [gemm], "step_flops": 2e7,
            "step_ms": {"tolljax": 1.2, "torch": 2.6}, "step_label": "tolljax scan×5"})
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith("the rest of tolljax's step none (the products alone took 0.3 ms more "
                         "than the step), of PyTorch's 2.1 ms")
