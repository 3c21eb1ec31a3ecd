"""Train-step speed: tolljax's jitted ``train_step`` vs the same model in PyTorch, one run.

For each model (mnist, cifar10, arrhythmia) and batch size (the paper's — 1000 / 50 / 100 —
and 64) this times one Adam step on the Toll loss, the same work on both sides:

* tolljax: ``jax.jit(tolljax.train.train_step)`` on the Appendix-B model (state donated, as
  inside the protocol's scan); compile time is measured apart (``lower().compile()``), the
  warm-up steps are excluded and every timed step ends with ``block_until_ready``;
* tolljax, ``scan×K`` rows (``--scan K``, default 5): the same step, K of them in one
  ``lax.scan`` per call, as the protocol runs its 2000 steps. XLA:CPU allocates a program's
  temporaries when it is called, so per-call steps pay fresh (page-faulted) memory for every
  step: ~940 MB/step for MNIST at batch 64 (measured with ``getrusage``); a scan pays it
  once per call;
* PyTorch: ``benchmarks/torch_models.py`` — the authors' architecture in NCHW with PyTorch
  default init, ``torch.optim.Adam``, BatchNorm in train mode (eager, default threads).

Both see the same random batch. The two are timed alternately (``--repeats`` rounds of
``--steps`` steps each) so that both share whatever load the machine has; per step we report
the minimum and the median over rounds (ms/step), samples/s and achieved GFLOP/s from the
median, and the ratio tolljax / PyTorch of the medians (< 1: tolljax is faster). FLOPs come
from XLA's cost analysis of the tolljax step compiled with XLA's plain layers (see
:func:`step_flops`); every row's rate, PyTorch's included, uses that one count. A round runs
at least ``--steps`` steps and at least ``--min-round-s`` seconds (small models need many
steps for a stable time).

``--dtype float32,bfloat16`` also times tolljax with ``--dtype bfloat16``'s compute dtype
(activations and GEMMs in bfloat16, parameters and Adam state in float32); PyTorch stays in
float32, so those rows' ratios compare different arithmetic.

``--conv-transpose plain,fast`` times tolljax once per transposed-convolution implementation
(``tolljax.ops``; default ``auto``: oneDNN on CPU where installed, else the GEMM fast path);
``--conv plain,fast`` likewise for
regular convolutions, where the model builds them with ``tolljax.ops.Conv`` (the row label
says ``conv xla`` where the model uses flax's ``nn.Conv``). The plain transposed convolution
is very slow on CPU (tens of seconds per MNIST step at batch 64): give it few
``--steps``/``--repeats``. ``onednn`` (both flags) is the oneDNN path (``tolljax.onednn``);
``phases`` (transposed only) is XLA's convolutions with strided layers split into their
output phases (``tolljax.ops.conv_transpose_phases``, meant for GPUs).

On a GPU PyTorch runs on CUDA too (``--torch-device``, default: where JAX runs), timed to the
end of its kernels (``torch.cuda.synchronize``). ``--precision default`` keeps JAX's default
float32 matmul precision, TF32 tensor cores on Ampere and newer GPUs, and allows TF32 in
PyTorch as well; ``highest`` is true float32 on both. The MFU column divides the achieved
rate by one device's datasheet peak for that arithmetic (:mod:`benchmarks.peaks`; CPUs and
unknown GPUs: ``--peak-tflops``, per device): every step here runs on one device (the
default one), whatever the number of devices.

    python benchmarks/bench_train_step.py [--models mnist cifar10 arrhythmia]
        [--batches paper 64] [--steps 5] [--repeats 3] [--warmup 2] [--min-round-s 1]
        [--conv-transpose auto|plain|fast|matmul|onednn|phases[,...]]
        [--conv auto|plain|fast|onednn[,...]]
        [--dtype float32|bfloat16[,...]] [--scan 5] [--torch-device auto|cpu|cuda]
        [--precision default|highest] [--peak-tflops T] [--json OUT]

MNIST at its paper batch (1000) takes seconds per step on a 2-core CPU: use a small ``--steps``
or leave it out with ``--batches 64`` (``--batches 64 paper`` keeps the order you give).
PyTorch (benchmark only): ``pip install torch==2.13.0``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from benchmarks._cli import (nonnegative_float, nonnegative_int, positive_float,  # noqa: E402
                             positive_int, require_torch)

torch = require_torch("bench_train_step.py")

from benchmarks import peaks, torch_models  # noqa: E402
from benchmarks.jax_steps import (MODELS, JaxRunner, impl_label, set_impls, step_flops,  # noqa: E402
                                  timed_steps)
from tolljax import ops  # noqa: E402
from tolljax.configs import PAPER_HYPERPARAMETERS  # noqa: E402
from tolljax.models import sample_shape  # noqa: E402



def batch_arg(text: str) -> str | int:
    """``--batches`` value: ``paper`` or a positive batch size."""
    return "paper" if text == "paper" else positive_int(text)


def _nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x)


class TorchRunner:
    def __init__(self, dataset: str, batch: np.ndarray, seed: int = 0, device: str = "cpu"):
        hp = PAPER_HYPERPARAMETERS[dataset]
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.model = torch_models.build(dataset).to(self.device)
        self.n_params = torch_models.count_params(self.model)
        self.batch = torch.from_numpy(_nchw(batch)).to(self.device)
        self._step = torch_models.make_train_step(self.model, hp["beta"], hp["lr"])

    def step(self):
        self._step(self.batch)
        if self.device.type == "cuda":  # CUDA kernels run asynchronously: time them to the end
            torch.cuda.synchronize(self.device)


def bench_one(dataset: str, batch_size: int, variants: list[tuple[str, str]], steps: int,
              repeats: int, warmup: int, min_round_s: float = 0.0, scan: int = 1,
              dtypes: tuple[str, ...] = ("float32",), torch_device: str = "cpu",
              peak: Callable[[str], float | None] = lambda dtype: None) -> dict:
    """Time every variant and PyTorch on one random batch; ``peak(dtype)`` gives the device's
    peak FLOP/s for a row's compute dtype (None: no MFU)."""
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((batch_size, *sample_shape(dataset))).astype(np.float32)
    flops = step_flops(dataset, batch_size)
    jax_runners = [JaxRunner(dataset, batch, ct, cv, dtype=dt) for dt in dtypes for ct, cv in variants]
    if scan > 1:
        jax_runners += [JaxRunner(dataset, batch, ct, cv, scan=scan, dtype=dt)
                        for dt in dtypes for ct, cv in variants]
    torch_runner = TorchRunner(dataset, batch, device=torch_device)
    assert all(r.n_params == torch_runner.n_params for r in jax_runners), "parameter counts differ"
    runners = [(r.label, r) for r in jax_runners] + [("torch", torch_runner)]
    for _, r in runners:
        for _ in range(-(-warmup // getattr(r, "steps_per_call", 1))):
            r.step()
    times: dict[str, list[float]] = {name: [] for name, _ in runners}
    for _ in range(repeats):  # alternate, so that all share the same load
        for name, r in runners:
            k = getattr(r, "steps_per_call", 1)
            times[name].append(timed_steps(r.step, -(-steps // k), min_round_s) / k)
    rows = []
    torch_med, torch_min = statistics.median(times["torch"]), min(times["torch"])
    for name, r in runners:
        t = times[name]
        med = statistics.median(t)
        row_peak = peak(getattr(r, "dtype", "float32"))
        rows.append({
            "impl": name, "ms_min": 1e3 * min(t), "ms_median": 1e3 * med,
            "samples_per_s": batch_size / med, "gflops_per_s": flops / med / 1e9,
            "mfu": None if row_peak is None else flops / med / row_peak,
            "ratio_vs_torch": med / torch_med, "ratio_vs_torch_min": min(t) / torch_min,
            "compile_s": getattr(r, "compile_s", None), "times_s": t,
        })
    return {"model": dataset, "batch": batch_size, "params": torch_runner.n_params,
            "flops_per_step": flops, "rows": rows, "loadavg": os.getloadavg()}


def _print_result(res: dict) -> None:
    print(f"\n{res['model']}  batch {res['batch']}  ({res['params']:,} parameters, "
          f"{res['flops_per_step'] / 1e9:.2f} GFLOP/step; load average after "
          f"{res['loadavg'][0]:.2f})")
    width = max(32, *(len(r["impl"]) for r in res["rows"]))
    print(f"  {'implementation':<{width}} {'ms/step min':>11} {'median':>9} {'samples/s':>10} "
          f"{'GFLOP/s':>8} {'MFU':>6} {'ratio':>6} {'(min)':>6} {'compile s':>9}")
    for r in res["rows"]:
        comp = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"  {r['impl']:<{width}} {r['ms_min']:11.1f} {r['ms_median']:9.1f} "
              f"{r['samples_per_s']:10.1f} {r['gflops_per_s']:8.1f} {mfu:>6} "
              f"{r['ratio_vs_torch']:6.2f} {r['ratio_vs_torch_min']:6.2f} {comp:>9}", flush=True)


def _variants(dataset: str, cts: list[str], cvs: list[str]) -> list[tuple[str, str]]:
    """(conv-transpose, conv) pairs to time, without duplicates that select the same layers."""
    out, labels = [], set()
    for ct in cts:
        for cv in cvs:
            set_impls(ct, cv)
            label = impl_label(dataset, ct, cv)
            if label not in labels:
                labels.add(label)
                out.append((ct, cv))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batches", nargs="+", type=batch_arg, default=["paper", 64],
                   help="batch sizes (positive integers); 'paper' = the paper's batch for each "
                        "model")
    p.add_argument("--steps", type=positive_int, default=5, help="steps per timed round")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed rounds (alternating)")
    p.add_argument("--warmup", type=nonnegative_int, default=2,
                   help="untimed steps after compilation")
    p.add_argument("--min-round-s", type=nonnegative_float, default=1.0,
                   help="a timed round lasts at least this long (more steps for small models)")
    p.add_argument("--conv-transpose", default="auto",
                   help="comma-separated transposed-conv implementations (tolljax.ops): "
                        "auto, plain, fast, matmul, onednn, phases")
    p.add_argument("--conv", default="auto",
                   help="comma-separated regular-conv implementations (tolljax.ops.Conv: auto, "
                        "plain, fast, onednn); only has an effect where the model builds tolljax.ops.Conv")
    p.add_argument("--dtype", default="float32",
                   help="comma-separated tolljax compute dtypes: float32, bfloat16 (PyTorch "
                        "stays float32)")
    p.add_argument("--scan", type=positive_int, default=5,
                   help="also time each tolljax variant as this many steps in one lax.scan (as "
                        "the protocol runs them: buffers are allocated once per call, not per "
                        "step); 1 = per-call steps only")
    p.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where PyTorch runs: auto = cuda when JAX runs on a GPU and PyTorch "
                        "sees one, else cpu")
    p.add_argument("--precision", default="default", choices=peaks.PRECISIONS,
                   help="float32 matmuls/convolutions: default = JAX's default precision (TF32 "
                        "tensor cores on Ampere+ GPUs; PyTorch set to allow TF32 too), highest "
                        "= true float32 on both (jax_default_matmul_precision='highest'); no "
                        "effect on CPU")
    p.add_argument("--peak-tflops", type=positive_float, default=None,
                   help="peak TFLOP/s of ONE device, for MFU (each step runs on one device; "
                        "default: NVIDIA's datasheet peak for known GPUs, benchmarks/peaks.py; "
                        "none on CPU)")
    p.add_argument("--json", type=Path, default=None, help="write all measurements here")
    args = p.parse_args(argv)
    cts = [v.strip() for v in args.conv_transpose.split(",") if v.strip()]
    cvs = [v.strip() for v in args.conv.split(",") if v.strip()]
    for v in cts:
        if v not in ops.IMPLS:
            p.error(f"--conv-transpose {v!r}: choose from {ops.IMPLS}")
    for v in cvs:
        if v not in ops.CONV_IMPLS:
            p.error(f"--conv {v!r}: choose from {ops.CONV_IMPLS}")
    dtypes = tuple(dict.fromkeys(v.strip() for v in args.dtype.split(",") if v.strip()))
    for v in dtypes:
        if v not in ("float32", "bfloat16"):
            p.error(f"--dtype {v!r}: choose from float32, bfloat16")

    torch_device = args.torch_device
    if torch_device == "auto":
        torch_device = ("cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available()
                        else "cpu")
    elif torch_device == "cuda" and not torch.cuda.is_available():
        p.error("--torch-device cuda: this PyTorch build sees no CUDA device")
    tf32 = args.precision == "default"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if args.precision == "highest":
        jax.config.update("jax_default_matmul_precision", "highest")
    device_kind = jax.devices()[0].device_kind
    if args.peak_tflops is not None:
        def peak(dtype):
            return 1e12 * args.peak_tflops
    else:
        def peak(dtype):
            tflops = peaks.peak_tflops(device_kind, dtype, args.precision)
            return None if tflops is None else 1e12 * tflops

    env = {"python": platform.python_version(), "jax": jax.__version__,
           "backend": jax.default_backend(), "devices": len(jax.devices()), "devices_used": 1,
           "device_kind": device_kind, "precision": args.precision,
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "torch_device": torch_device, "torch_allow_tf32": tf32,
           "peak_tflops": {dt: (None if peak(dt) is None else peak(dt) / 1e12) for dt in dtypes},
           "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "loadavg_start": os.getloadavg()}
    print(f"jax {env['jax']} ({env['backend']}: {len(jax.devices())} × {device_kind}), torch "
          f"{env['torch']} on {torch_device} ({env['torch_threads']} threads), "
          f"{env['cpu_count']} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in env['loadavg_start'])}")
    if any(v is not None for v in env["peak_tflops"].values()):
        print("MFU against " + ", ".join(f"{dt} {v:g} TFLOP/s" for dt, v in env["peak_tflops"].items()
                                         if v is not None)
              + f" per device, each step on one device (precision {args.precision}; "
              "PyTorch rows against the float32 peak)")
    print(f"steps/round >= {args.steps} and >= {args.min_round_s:g} s, rounds {args.repeats}, "
          f"warm-up {args.warmup}; ratio = tolljax / torch (median; '(min)': of the minima)",
          flush=True)
    results = []
    for dataset in args.models:
        seen = []
        for b in args.batches:
            size = PAPER_HYPERPARAMETERS[dataset]["batch_size"] if b == "paper" else b
            if size in seen:
                continue
            seen.append(size)
            variants = _variants(dataset, cts, cvs)
            res = bench_one(dataset, size, variants, args.steps, args.repeats, args.warmup,
                            args.min_round_s, args.scan, dtypes, torch_device, peak)
            _print_result(res)
            results.append(res)
    env["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in env['loadavg_end'])}")
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "args": vars(args) | {
            "json": str(args.json)}, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
