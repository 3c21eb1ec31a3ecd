"""The benchmark scripts' command lines: a bad number or name is argparse's one-line error
(exit 2) before anything runs, never a traceback or a silently different run.

Each script's expensive work is replaced by a function that fails the test, so a value that
is wrongly accepted shows up at once instead of starting a benchmark.
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._cli import (TORCH_INSTALL, nonnegative_float, nonnegative_int, positive_float,
                             positive_int)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# Modules that import PyTorch when they are imported (the others only when they run).
IMPORT_TORCH = {"torch_arrhythmia", "bench_train_step", "bench_gemm_floor", "torch_models"}


def test_the_shared_types_accept_good_values_and_name_bad_ones():
    assert positive_int("3") == 3 and nonnegative_int("0") == 0
    assert positive_float("0.5") == 0.5 and nonnegative_float("0") == 0.0
    for fn, text in [(positive_int, "0"), (positive_int, "-5"), (positive_int, "abc"),
                     (positive_int, "2.5"), (nonnegative_int, "-1"), (positive_float, "0"),
                     (positive_float, "nan"), (positive_float, "inf"), (positive_float, "x"),
                     (nonnegative_float, "-0.1")]:
        with pytest.raises(argparse.ArgumentTypeError, match=repr(text).replace(".", r"\.")):
            fn(text)


def _ran(*args, **kwargs):
    pytest.fail("the benchmark ran: a bad argument was accepted")


# (module, its expensive entry point to stub, argv, a fragment of the one-line error)
CASES = [
    ("bench_arrhythmia", "run_tolljax", ["--repeat", "0"], "argument --repeat: expected a positive integer, got '0'"),
    ("bench_arrhythmia", "run_tolljax", ["--steps", "30"], "--steps 30 is not a multiple of the validation interval 20"),
    ("bench_arrhythmia", "run_tolljax", ["--seed-counts", "1", "0"], "argument --seed-counts"),
    ("bench_arrhythmia", "run_tolljax", ["--seeds", "3", "--seed-counts", "1"], "--seeds and --seed-counts"),
    ("torch_arrhythmia", "run_protocol", ["--seeds", "0"], "argument --seeds: expected a positive integer"),
    ("torch_arrhythmia", "run_protocol", ["--steps", "10"], "--steps 10 is not a multiple"),
    ("torch_arrhythmia", "run_protocol", ["--steps", "30"], "--steps 30 is not a multiple"),
    ("bench_train_step", "bench_one", ["--repeats", "0"], "argument --repeats"),
    ("bench_train_step", "bench_one", ["--steps", "0", "--min-round-s", "0"], "argument --steps"),
    ("bench_train_step", "bench_one", ["--peak-tflops", "0"], "argument --peak-tflops: expected a positive number"),
    ("bench_train_step", "bench_one", ["--batches", "abc"], "argument --batches: expected a positive integer, got 'abc'"),
    ("bench_train_step", "bench_one", ["--batches", "-5"], "argument --batches"),
    ("bench_train_step", "bench_one", ["--batches", "paper", "0"], "argument --batches"),
    ("bench_train_step", "bench_one", ["--scan", "-3"], "argument --scan"),
    ("bench_train_step", "bench_one", ["--min-round-s", "-1"], "argument --min-round-s"),
    ("bench_train_step", "bench_one", ["--warmup", "-1"], "argument --warmup"),
    ("bench_sweep", "score_flops", ["--dataset", "foo"], "--dataset: unknown dataset 'foo'"),
    ("bench_sweep", "score_flops", ["--classes", "x"], "--classes takes comma-separated integers, got 'x'"),
    ("bench_sweep", "score_flops", ["--classes", "0,10"], "mnist has normal classes 0..9"),
    ("bench_sweep", "score_flops", ["--dataset", "arrhythmia", "--classes", "3"], "--classes is for image datasets"),
    ("bench_sweep", "score_flops", ["--seeds", "0"], "argument --seeds"),
    ("bench_sweep", "score_flops", ["--peak-tflops", "-1"], "argument --peak-tflops"),
    ("bench_sweep", "score_flops", ["--target-min", "0"], "argument --target-min"),
    ("bench_sweep", "score_flops", ["--score-chunk", "0"], "argument --score-chunk"),
    ("memory", "analyse", ["--batch", "0"], "argument --batch: expected a positive integer, got '0'"),
    ("profile_step", "JaxRunner", ["--batch", "0"], "argument --batch"),
    ("profile_step", "JaxRunner", ["--scan", "0"], "argument --scan"),
    ("profile_step", "JaxRunner", ["--calls", "-1"], "argument --calls"),
    ("bench_conv_layers", "model_layers", ["--batch", "0"], "argument --batch"),
    ("bench_conv_layers", "model_layers", ["--reps", "0"], "argument --reps"),
    ("bench_gemm_floor", "bench_model", ["--repeats", "0"], "argument --repeats"),
    ("bench_gemm_floor", "bench_model", ["--scan", "-1"], "argument --scan"),
]


@pytest.mark.parametrize("module, heavy, argv, message", CASES,
                         ids=[f"{m}{' '.join(a)}" for m, _, a, _ in CASES])
def test_bad_arguments_are_one_line_errors(monkeypatch, capsys, module, heavy, argv, message):
    if module in IMPORT_TORCH:
        pytest.importorskip("torch", reason=f"benchmarks/{module}.py needs PyTorch ({TORCH_INSTALL})")
    mod = importlib.import_module(f"benchmarks.{module}")
    monkeypatch.setattr(mod, heavy, _ran)
    if module == "bench_sweep":  # it would start the CLI first
        monkeypatch.setattr(mod.subprocess, "run", _ran)
    with pytest.raises(SystemExit) as exc:
        mod.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


def _run_without_torch(script: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``benchmarks/script`` as ``python script argv`` would, with ``import torch`` failing
    as it does where PyTorch is not installed."""
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            f"sys.argv = [{script!r}, *{argv!r}]; "
            f"runpy.run_path({str(BENCHMARKS / script)!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=BENCHMARKS.parent, timeout=120)


@pytest.mark.parametrize("script", ["bench_train_step.py", "bench_gemm_floor.py",
                                    "torch_arrhythmia.py", "torch_models.py",
                                    "bench_conv_layers.py", "bench_arrhythmia.py"])
def test_scripts_that_compare_with_pytorch_say_in_one_line_that_it_is_missing(script):
    proc = _run_without_torch(script, [])  # no arguments: the defaults would start the benchmark
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == (f"{script}: this benchmark compares against PyTorch, which is not "
                           f"installed here; install it with: {TORCH_INSTALL}\n")
    assert proc.stdout == ""


@pytest.mark.parametrize("script", ["memory.py", "profile_step.py", "bench_sweep.py"])
def test_scripts_without_pytorch_comparison_run_without_it(script):
    proc = _run_without_torch(script, ["--help"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:")


def test_timed_steps_refuses_zero_steps():
    from benchmarks.jax_steps import timed_steps

    with pytest.raises(ValueError, match="steps must be at least 1"):
        timed_steps(lambda: None, 0, 0.0)


def test_impl_labels_say_which_path_a_dtype_runs():
    # oneDNN takes float32 only (tolljax.ops sends other dtypes to the GEMM path): bfloat16
    # rows were labelled "onednn" with no oneDNN call in their program
    from benchmarks.jax_steps import impl_label
    from tolljax import onednn, ops

    f32 = impl_label("cifar10", "onednn", "onednn")
    bf16 = impl_label("cifar10", "onednn", "onednn", "bfloat16")
    assert bf16 == "tolljax[convT fast, conv fast]"
    expected = "onednn" if ops.resolve_impl("onednn") == "onednn" else "fast"
    assert f32 == f"tolljax[convT {expected}, conv {expected}]", onednn.available()
    assert impl_label("arrhythmia", "auto", "auto", "bfloat16") == "tolljax"
