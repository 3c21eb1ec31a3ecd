"""Peak arithmetic rates of accelerators, for model-FLOP utilisation (MFU) in the benchmarks.

MFU = achieved FLOP/s ÷ the device's peak for the arithmetic the program runs. FLOPs are
XLA's cost analysis of the program (:func:`benchmarks.jax_steps.step_flops`), so MFU here
counts the model's own FLOPs, not recomputation or padding.

Which peak applies depends on how float32 matmuls and convolutions run:

* ``--dtype bfloat16``: bfloat16 tensor cores;
* float32 at JAX's default precision: on Ampere and newer NVIDIA GPUs XLA runs float32 dots
  and convolutions on TF32 tensor cores (JAX's "Matmul precision" docs), so the TF32 peak;
* float32 at ``JAX_DEFAULT_MATMUL_PRECISION=highest``: true float32, the CUDA-core FP32 peak.

The numbers are NVIDIA's datasheet peaks without structured sparsity, in TFLOP/s. Devices not
listed (CPUs included) have no entry: pass ``--peak-tflops`` to the benchmark instead.
"""
from __future__ import annotations

# Matched against jax.Device.device_kind (e.g. "NVIDIA H100 80GB HBM3", "NVIDIA H200") in
# this order, so the NVL/PCIe variants come before the plain names they contain.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    ("H200", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    ("H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.5}),
    ("H100", {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4}),  # SXM5
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
)
PRECISIONS = ("default", "highest")


def arithmetic(dtype: str, precision: str) -> str:
    """The arithmetic a GPU uses for the program's matmuls and convolutions: ``"bf16"``,
    ``"tf32"`` (float32 at JAX's default precision) or ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {PRECISIONS}")
    if dtype == "bfloat16":
        return "bf16"
    return "tf32" if precision == "default" else "fp32"


def peak_tflops(device_kind: str, dtype: str = "float32", precision: str = "default") -> float | None:
    """The datasheet peak (TFLOP/s) of ``device_kind`` for this dtype and precision, or None
    for a device not in :data:`PEAK_TFLOPS`."""
    kind = arithmetic(dtype, precision)
    for name, peaks in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peaks[kind]
    return None
