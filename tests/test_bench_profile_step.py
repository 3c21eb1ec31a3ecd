"""benchmarks/profile_step.py and the FLOP count of benchmarks/jax_steps.py."""
from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import pytest

from benchmarks.jax_steps import on_host_cpu, xla_flops
from benchmarks.profile_step import kind_of, summarize

# Kernel names as an H200's trace of the MNIST train step named them (jax 0.11.2, cuDNN).
H200_KERNELS = [
    ("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_s1688fprop_optimized_tf32_128x128_16x4_"
     "nhwc_align4>(cutlass_tensorop_s1688fprop_optimized_tf32_128x128_16x4_nhwc_align4::Params)",
     "convolution (cuDNN)"),
    ("sm90_xmma_dgrad_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize256x128x32_"
     "warpgroupsize2x1x1_g1_execute_segment_k_off_kernel__5x_cudnn", "convolution (cuDNN)"),
    ("void fft2d_r2c_32x32<float, false, 0u, false>(float2*, float const*, int, int, int, int, "
     "int, int, int, int, int, cudnn::reduced_divisor, bool, int2, int, int)",
     "convolution (cuDNN)"),
    ("sm80_xmma_gemm_cf32cf32_f32f32_cf32_tn_n_tilesize64x64x8_stage3_warpsize2x2x1_ffma_"
     "aligna8_alignc8_execute_kernel__5x_cublas", "convolution (cuDNN)"),  # FFT convolution
    ("void cutlass__5x_cudnn::Kernel<cutlass__5x_cudnn::reduction::kernel::ReduceSplitK<"
     "cutlass__5x_cudnn::MatrixShape<4, 256>>(...)", "convolution (cuDNN)"),
    ("void cudnn::engines_precompiled::convertTensor_kernel<float, float, float, "
     "(cudnnKernelDataType_t)2>(float, float const*, float, float*, unsigned long)",
     "layout change"),
    ("input_select_transpose_fusion_1", "layout change"),
    ("input_add_reduce_fusion_5", "XLA fusion with a reduction (BatchNorm statistics, loss)"),
    ("loop_add_fusion_1", "XLA elementwise fusion (BatchNorm, LeakyReLU, Adam)"),
    ("wrapped_convert", "XLA elementwise fusion (BatchNorm, LeakyReLU, Adam)"),
    ("gemm_fusion_dot", "matrix product (cuBLAS)"),
    ("Memset", "copy"),
]


@pytest.mark.parametrize("name, kind", H200_KERNELS)
def test_gpu_kernels_are_grouped_by_what_they_do(name, kind):
    assert kind_of(name) == kind


def test_hlo_names_keep_their_op_kind():  # CPU traces: XLA's thunks and the oneDNN calls
    assert kind_of("ffi_call.12") == "ffi_call"
    assert kind_of("fusion.3") == "fusion"
    assert kind_of("convolution.2") == "convolution"


def _line(name, *events):
    return SimpleNamespace(name=name, events=[SimpleNamespace(name=n, duration_ns=ns)
                                              for n, ns in events])


def test_cpu_operations_on_every_xla_thread_count_once():
    # The lines of a CPU trace (names as jax 0.10.2 writes them): the client thread runs the
    # executable's outer while, some small operations itself, and waits for the worker pool.
    host = SimpleNamespace(name="/host:CPU", lines=[
        _line("python", ("PjitFunction(jit(steps))", 9_000_000)),
        _line("tf_XLAEigen/1", ("dot.1", 2_000_000), ("ThunkExecutor::Execute", 500_000)),
        _line("tf_XLAEigen/2", ("fusion.4", 1_000_000)),
        _line("tf_XLAPjRtCpuClient/7", ("while.2", 4_000_000), ("dot.32", 300_000),
              ("copy.9", 100_000), ("ThunkExecutor::Execute (wait for completion)", 8_000_000)),
    ])
    res = summarize(SimpleNamespace(planes=[host]), steps=2)
    # the client thread's dot.32 and copy.9 were left out; its while.2 encloses the others
    assert res["ms_per_step_by_op"] == pytest.approx(
        {"dot.1": 1.0, "fusion.4": 0.5, "dot.32": 0.15, "copy.9": 0.05})
    assert res["ms_per_step_by_kind"] == pytest.approx({"dot": 1.15, "fusion": 0.5, "copy": 0.05})


def test_flops_are_counted_on_the_host_cpu_and_include_convolutions():
    n, h, w, c_in, c_out, k = 4, 9, 9, 3, 5, 3
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    x = jax.ShapeDtypeStruct((n, h, w, c_in), jnp.float32)
    kernel = jax.ShapeDtypeStruct((k, k, c_in, c_out), jnp.float32)
    out_positions = n * (h - k + 1) * (w - k + 1)
    assert xla_flops(conv, x, kernel) == 2 * out_positions * c_out * c_in * k * k
    placed = on_host_cpu({"x": x})["x"]
    assert placed.shape == x.shape and placed.sharding.device_set == {jax.devices("cpu")[0]}
