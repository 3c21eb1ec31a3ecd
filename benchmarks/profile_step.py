"""Where a train step's time goes: XLA's profiler over a few steps, summed per operation.

Traces ``--calls`` calls of ``--scan`` train steps in one ``lax.scan`` (as the protocol runs
them; ``benchmarks.jax_steps.JaxRunner``) with ``jax.profiler`` and prints, per step, the
time of the ``--top`` most expensive operations and the time per kind of operation
(convolution custom calls, GEMMs, fusions, copies...), read from the trace's device lines:

* GPU: the device plane's "XLA Ops" line (one event per kernel launch of an HLO op), else
  its stream lines (one event per CUDA kernel, grouped by what the kernel does, read from its
  name: cuDNN convolution, layout change, XLA fusion...; no HLO source, so no per-layer
  table: jax 0.11.2 on an H200 wrote no "XLA Ops" line);
* CPU: XLA's threads (thunks; the oneDNN custom calls appear as ``ffi_call``): the worker
  pool's and the client thread that runs the executable (it also runs small operations
  itself, ~2 % of the Arrhythmia step's operation time, left out before). Control-flow
  operations (``while``, ``conditional``, ``call``) are not counted: their events span
  their bodies' operations, which are.

Events are summed over all lines (on CPU several worker threads run at once, so the total can
exceed the wall time per step). The raw trace stays in ``--trace-dir`` for TensorBoard or
Perfetto.

    python benchmarks/profile_step.py --model mnist [--batch 1000] [--scan 5] [--calls 2]
        [--dtype float32|bfloat16] [--top 25] [--json OUT]
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402  (reads the XSpace protobuf)

from benchmarks._cli import positive_int  # noqa: E402
from benchmarks.jax_steps import MODELS, JaxRunner  # noqa: E402
from tolljax.configs import PAPER_HYPERPARAMETERS  # noqa: E402
from tolljax.models import sample_shape  # noqa: E402

# Events that are not operations: Python frames, executor bookkeeping, thread-pool waits.
_NOT_OPS = re.compile(r"^(\$|end: |ThunkExecutor|Thread|SlinkyThreadPool|ThreadpoolListener)")
# Kinds (kind_of) whose events enclose other operations' events: counting them counts twice.
_CONTROL_FLOW = frozenset({"while", "conditional", "call"})


def op_lines(data: ProfileData) -> Iterator[Any]:
    """The trace lines holding one event per executed operation (module docstring)."""
    for plane in data.planes:
        if plane.name.startswith("/device:"):
            ops = [line for line in plane.lines if line.name == "XLA Ops"]
            # Without an "XLA Ops" line, the CUDA streams' kernels (named by kernel, not op).
            yield from ops or [line for line in plane.lines if line.name.startswith("Stream")]
        elif plane.name.startswith("/host:"):
            yield from (line for line in plane.lines if line.name.startswith("tf_XLA"))


# A CUDA kernel's kind from its name, first match wins (GPU traces whose op lines are the
# streams' kernels): cuDNN's convolution engines (implicit GEMM, CUTLASS, FFT with its
# complex GEMMs), cuBLAS, cuDNN's and XLA's layout changes, XLA's fused kernels.
_KERNEL_KINDS = (
    (r"fprop|dgrad|wgrad|implicit_?gemm|convolve|conv2d|fft|gemm_cf32|splitk|flip_filter",
     "convolution (cuDNN)"),
    (r"gemm|cublas", "matrix product (cuBLAS)"),
    (r"converttensor|nhwctonchw|nchwtonhwc|transpose", "layout change"),
    (r"reduce", "XLA fusion with a reduction (BatchNorm statistics, loss)"),
    (r"fusion|^loop_|^wrapped_", "XLA elementwise fusion (BatchNorm, LeakyReLU, Adam)"),
    (r"copy|memcpy|memset", "copy"),
)
_KERNEL_NAME = re.compile(r"void |sm\d+_|cutlass|_Z|std::|(input|loop|wrapped|gemm)_|memset|memcpy",
                          re.I)


def kind_of(name: str) -> str:
    """An operation's kind: a CUDA kernel's by :data:`_KERNEL_KINDS`, else from its HLO name
    (``ffi_call.12`` -> ``ffi_call``)."""
    if _KERNEL_NAME.match(name):
        for pattern, kind in _KERNEL_KINDS:
            if re.search(pattern, name, re.I):
                return kind
        return "other CUDA kernel"
    return re.sub(r"[.:]\d+$", "", name.split(" ")[0]).rstrip("_0123456789.") or name


def op_sources(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the model code it came from (its ``op_name`` metadata, less
    the jit/scan/autodiff wrappers), read from the compiled module's text."""
    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{op_name=\"([^\"]*)\"",
                         hlo_text, re.M):
        path = re.sub(r"^jit\([^)]*\)/", "", m.group(2))
        path = re.sub(r"\b(while/body|closed_call|checkpoint|remat)/", "", path)
        out[m.group(1)] = path
    return out


def layer_of(source: str) -> str:
    """``transpose(jvp(M))/M.decode/decoder/ConvBlock_4/conv_t/ffi_call`` ->
    ``backward M.decode/decoder/ConvBlock_4/conv_t``: the module path and the pass."""
    path = source.rsplit("/", 1)[0] if "/" in source else source
    for prefix, direction in ((r"^transpose\(jvp\([^)]*\)\)/", "backward "),
                              (r"^jvp\([^)]*\)/", "forward ")):
        if re.match(prefix, path):
            return direction + re.sub(prefix, "", path)
    return path


def summarize(data: ProfileData, steps: int) -> dict:
    per_op: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for line in op_lines(data):
        for ev in line.events:
            if not _NOT_OPS.match(ev.name) and kind_of(ev.name) not in _CONTROL_FLOW:
                per_op[ev.name] += ev.duration_ns
                count[ev.name] += 1
    per_kind: collections.Counter = collections.Counter()
    for name, ns in per_op.items():
        per_kind[kind_of(name)] += ns
    return {"ms_per_step_by_op": {k: v / steps / 1e6 for k, v in per_op.most_common()},
            "calls_by_op": dict(count),
            "ms_per_step_by_kind": {k: v / steps / 1e6 for k, v in per_kind.most_common()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mnist", choices=MODELS)
    p.add_argument("--batch", type=positive_int, default=None, help="default: the paper's")
    p.add_argument("--scan", type=positive_int, default=5, help="steps per call, in one lax.scan")
    p.add_argument("--calls", type=positive_int, default=2, help="traced calls")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--top", type=positive_int, default=25)
    p.add_argument("--trace-dir", type=Path, default=None,
                   help="keep the raw trace here (default: a temporary folder)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    batch = PAPER_HYPERPARAMETERS[args.model]["batch_size"] if args.batch is None else args.batch
    x = np.random.default_rng(0).standard_normal((batch, *sample_shape(args.model)))
    runner = JaxRunner(args.model, x.astype(np.float32), scan=args.scan, dtype=args.dtype)
    for _ in range(2):
        runner.step()
    with tempfile.TemporaryDirectory() as tmp:
        trace_dir = args.trace_dir or Path(tmp)
        jax.profiler.start_trace(str(trace_dir))
        start = time.perf_counter()
        for _ in range(args.calls):
            runner.step()
        wall = time.perf_counter() - start
        jax.profiler.stop_trace()
        files = sorted(Path(trace_dir).rglob("*.xplane.pb"), key=lambda f: f.stat().st_mtime)
        if not files:
            sys.exit(f"no trace written under {trace_dir}")
        data = ProfileData.from_file(str(files[-1]))
        steps = args.calls * args.scan
        res = summarize(data, steps)
        res["source_by_op"] = op_sources(runner.compiled.as_text())
        by_layer: collections.Counter = collections.Counter()
        for op, ms in res["ms_per_step_by_op"].items():
            by_layer[layer_of(res["source_by_op"].get(op, "(no source)"))] += ms
        res["ms_per_step_by_layer"] = dict(by_layer.most_common())
        lines = [(pl.name, ln.name) for pl in data.planes for ln in pl.lines]

    res |= {"model": args.model, "batch": batch, "dtype": args.dtype, "steps": steps,
            "wall_ms_per_step": 1e3 * wall / steps, "label": runner.label,
            "device": f"{len(jax.devices())} × {jax.devices()[0].device_kind}"}
    print(f"{runner.label}, batch {batch}, {res['device']}: {res['wall_ms_per_step']:.2f} ms "
          f"per step (wall, {steps} traced steps)")
    if not res["ms_per_step_by_op"]:
        print("no operation events found; the trace's lines are:", lines)
        return 1
    total = sum(res["ms_per_step_by_op"].values())
    print(f"\noperation time per step, summed over the trace's op lines: {total:.2f} ms")
    print("\nby kind:")
    for k, ms in list(res["ms_per_step_by_kind"].items())[:15]:
        print(f"  {ms:9.3f} ms  {100 * ms / total:5.1f}%  {k}")
    print("\nby layer and pass (from each operation's source in the HLO):")
    for k, ms in list(res["ms_per_step_by_layer"].items())[:20]:
        print(f"  {ms:9.3f} ms  {100 * ms / total:5.1f}%  {k}")
    print(f"\ntop {args.top} operations:")
    for k, ms in list(res["ms_per_step_by_op"].items())[:args.top]:
        print(f"  {ms:9.3f} ms  {100 * ms / total:5.1f}%  ×{res['calls_by_op'][k] / steps:g}/step  "
              f"{k}  {res['source_by_op'].get(k, '')}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
