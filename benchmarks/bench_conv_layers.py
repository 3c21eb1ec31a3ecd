"""Per-layer convolution speed: tolljax's GEMM path vs oneDNN vs PyTorch, one run.

For every convolution of the Appendix-B image models (geometries read from the models
themselves) this times one forward pass and both gradients (input and kernel; the kernel
gradient only for a first layer, whose input needs none, as in training) at one batch size:

* tolljax ``fast`` (the GEMM path of ``tolljax.ops``) and ``onednn`` (``tolljax.onednn``,
  with the size rule off so that every layer runs on oneDNN): ``jax.grad`` of
  ``sum(conv(x, K)²)``, ``--reps`` of them in one jitted ``lax.scan`` (as the protocol runs
  its steps), best of ``--rounds``;
* PyTorch: ``conv2d`` / ``conv_transpose2d`` on NCHW tensors and ``backward()``, same loss,
  default threads.

It prints ms per layer for each, GFLOP/s of the best, and which path ``impl="onednn"`` (the
CPU default where oneDNN is installed) takes for the layer under ``tolljax.onednn``'s size
rule; the last line sums each column. This is the measurement the rule was set from.

    python benchmarks/bench_conv_layers.py [--models mnist cifar10] [--batch 64]
        [--reps 10] [--rounds 3] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._cli import positive_int, require_torch  # noqa: E402
from benchmarks.jax_steps import intercepted_init  # noqa: E402
from tolljax import onednn, ops  # noqa: E402
from tolljax.models import build_model, sample_shape  # noqa: E402


@dataclass(frozen=True)
class Layer:
    transposed: bool
    in_hw: int
    cin: int
    cout: int
    kernel: int
    stride: int

    def __str__(self) -> str:
        kind = "convT" if self.transposed else "conv "
        return f"{kind} {self.in_hw:2d}px {self.cin:3d}→{self.cout:<3d} {self.kernel}×{self.kernel}/{self.stride}"

    def gflop(self, batch: int, first: bool) -> float:
        """Forward + the gradients taken, 2 FLOPs per multiply-add."""
        if self.transposed:
            pixels = self.in_hw ** 2
        else:
            pixels = ((self.in_hw - self.kernel) // self.stride + 1) ** 2
        forward = 2 * batch * pixels * self.kernel ** 2 * self.cin * self.cout
        return forward * (2 if first else 3) / 1e9


def model_layers(dataset: str) -> list[Layer]:
    """The model's convolutions in call order (an abstract init, recorded by interception)."""
    layers: list[Layer] = []

    def record(next_fun, args, kwargs, context):
        m = context.module
        if isinstance(m, (ops.Conv, ops.ConvTranspose)) and context.method_name == "__call__":
            x = args[0]
            if m.padding != "VALID":
                raise ValueError(f"{dataset}: only VALID layers are timed here, got {m.padding}")
            k, s = ops._pair(m.kernel_size)[0], ops._pair(m.strides)[0]
            layers.append(Layer(isinstance(m, ops.ConvTranspose), x.shape[1], x.shape[-1],
                                m.features, k, s))
        return next_fun(*args, **kwargs)

    intercepted_init(build_model(dataset), sample_shape(dataset), record)
    return layers


def _inputs(layer: Layer, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, layer.in_hw, layer.in_hw, layer.cin)).astype(np.float32)
    k = 0.05 * rng.standard_normal((layer.kernel, layer.kernel, layer.cin, layer.cout))
    return x, k.astype(np.float32)


def time_tolljax(layer: Layer, batch: int, impl: str, first: bool, reps: int, rounds: int) -> float:
    """ms per forward + gradients, ``reps`` in one scan, best of ``rounds``."""
    conv = ops.conv_transpose if layer.transposed else ops.conv
    loss = lambda x, k: jnp.sum(conv(x, k, layer.stride, impl) ** 2)
    grad = jax.grad(loss, argnums=(1,) if first else (0, 1))
    x, k = map(jnp.asarray, _inputs(layer, batch))

    def run(x, k):  # arguments, not constants: XLA would fold a constant program away
        def body(carry, _):  # the carry perturbs x: no step can be hoisted out of the loop
            grads = grad(x + carry, k)
            return carry + 1e-12 * sum(jnp.sum(g) for g in grads), None
        return jax.lax.scan(body, jnp.float32(0), None, length=reps)[0]

    run = jax.jit(run)
    run(x, k).block_until_ready()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run(x, k).block_until_ready()
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e3


def time_torch(layer: Layer, batch: int, first: bool, reps: int, rounds: int) -> float:
    import torch
    import torch.nn.functional as F

    x, k = _inputs(layer, batch)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(not first)
    if layer.transposed:  # PyTorch's transposed kernel is (in, out, kh, kw)
        w = torch.from_numpy(k).permute(2, 3, 0, 1).contiguous().requires_grad_()
        f = lambda: F.conv_transpose2d(x, w, stride=layer.stride)
    else:
        w = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous().requires_grad_()
        f = lambda: F.conv2d(x, w, stride=layer.stride)
    for _ in range(2):
        (f() ** 2).sum().backward()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            (f() ** 2).sum().backward()
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e3


def onednn_takes(layer: Layer, batch: int) -> bool:
    """Whether ``impl="onednn"`` runs this layer on oneDNN under the size rule."""
    shape = (batch, layer.in_hw, layer.in_hw, layer.cin)
    kernel = (layer.kernel, layer.kernel, layer.cin, layer.cout)
    strides = (layer.stride, layer.stride)
    if layer.transposed:
        return onednn.conv_transpose_supported(shape, kernel, strides)
    return onednn.conv_supported(shape, kernel, strides, ((0, 0), (0, 0)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["mnist", "cifar10"], choices=["mnist", "cifar10"])
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--reps", type=positive_int, default=10,
                   help="forward+gradient passes per timing")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="timings per layer (best is kept)")
    p.add_argument("--json", type=Path, help="write all measurements here")
    args = p.parse_args(argv)
    torch = require_torch("bench_conv_layers.py")
    if not onednn.available():
        p.error("oneDNN is not installed (pip install onednn-cpu-gomp); nothing to compare")

    torch.set_num_threads(os.cpu_count() or 1)
    print(f"jax {jax.__version__} (cpu), oneDNN {onednn.version()}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), batch {args.batch}, best of {args.rounds} × "
          f"{args.reps} forward+gradient passes, ms")
    rows = []
    for dataset in args.models:
        print(f"\n{dataset}")
        print(f"  {'layer':<28} {'GFLOP':>6} {'fast':>8} {'onednn':>8} {'torch':>8} "
              f"{'GFLOP/s':>8}  impl='onednn' takes")
        totals = {"fast": 0.0, "onednn": 0.0, "torch": 0.0, "chosen": 0.0}
        for i, layer in enumerate(model_layers(dataset)):
            first = i == 0
            takes = onednn_takes(layer, args.batch)
            with onednn.every_layer():
                t = {"onednn": time_tolljax(layer, args.batch, "onednn", first, args.reps, args.rounds)}
            t["fast"] = time_tolljax(layer, args.batch, "fast", first, args.reps, args.rounds)
            t["torch"] = time_torch(layer, args.batch, first, args.reps, args.rounds)
            gflop = layer.gflop(args.batch, first)
            chosen = "onednn" if takes else "fast"
            for key in ("fast", "onednn", "torch"):
                totals[key] += t[key]
            totals["chosen"] += t[chosen]
            print(f"  {str(layer):<28} {gflop:6.2f} {t['fast']:8.1f} {t['onednn']:8.1f} "
                  f"{t['torch']:8.1f} {gflop / min(t.values()) * 1e3:8.0f}  {chosen}", flush=True)
            rows.append({"model": dataset, **asdict(layer), "first": first, "gflop": gflop,
                         "ms": t, "chosen": chosen})
        print(f"  {'sum':<28} {'':>6} {totals['fast']:8.1f} {totals['onednn']:8.1f} "
              f"{totals['torch']:8.1f}  as chosen: {totals['chosen']:.1f} "
              f"({totals['chosen'] / totals['torch']:.2f} × PyTorch)")
    if args.json:
        args.json.write_text(json.dumps({"batch": args.batch, "reps": args.reps,
                                         "rounds": args.rounds, "layers": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
