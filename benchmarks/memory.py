"""Device memory of one train step per model at the paper's batch size (XLA's own accounting).

For each model the jitted ``train_step`` (state donated, as inside the protocol's scan) and
eval-mode scoring of one batch are compiled for the current backend, and XLA's
``memory_analysis()`` is printed: arguments (parameters, BatchNorm statistics, Adam state,
batch), outputs, temporaries (activations kept for the backward pass, im2col patches, ...)
and the peak estimate ``arguments + outputs + temporaries − aliased`` (donated buffers are
aliased to outputs). Nothing is run, so the paper's MNIST batch of 1000 is cheap to analyse.

The numbers are for the backend the script runs on and the convolutions ``--conv`` selects
(both kinds; the first line printed names them): ``auto``, the default, is what training
uses, which on CPU is the oneDNN path (``tolljax.onednn``) where oneDNN is installed, else
tolljax's GEMM fast path; ``--conv fast`` analyses the GEMM fast path, ``--conv plain`` XLA's
plain layers, which is what GPU/TPU run. oneDNN's own scratchpad and kernel copies are
outside XLA's count. A whole protocol adds the device-resident data (e.g. MNIST: one
class's ~6,000 training images, 10,000 validation and 10,000 test images, ~90 MB in float32)
and one copy of the best checkpoint per seed; vmapped seeds multiply everything but the
data.

    python benchmarks/memory.py [--models mnist fmnist cifar10 cifar100 arrhythmia] [--batch N]
        [--conv auto|plain|fast] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from benchmarks._cli import positive_int  # noqa: E402
from tolljax import ops  # noqa: E402
from tolljax.configs import PAPER_HYPERPARAMETERS  # noqa: E402
from tolljax.models import build_model, sample_shape  # noqa: E402
from tolljax.train import create_train_state, score, train_step  # noqa: E402

MODELS = ("mnist", "fmnist", "cifar10", "cifar100", "arrhythmia")
MIB = 1 << 20


def _analysis(compiled) -> dict[str, float]:
    m = compiled.memory_analysis()
    out = {"arguments_mib": m.argument_size_in_bytes / MIB,
           "outputs_mib": m.output_size_in_bytes / MIB,
           "temporaries_mib": m.temp_size_in_bytes / MIB,
           "aliased_mib": m.alias_size_in_bytes / MIB}
    out["peak_mib"] = (out["arguments_mib"] + out["outputs_mib"] + out["temporaries_mib"]
                       - out["aliased_mib"])
    return out


def analyse(dataset: str, batch_size: int | None = None) -> dict:
    """Memory analysis of the train step and of scoring one batch for ``dataset``."""
    hp = PAPER_HYPERPARAMETERS[dataset]
    batch_size = hp["batch_size"] if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model = build_model(dataset)
    state = jax.eval_shape(lambda: create_train_state(
        model, jax.random.key(0), sample_shape(dataset), optax.adam(hp["lr"])))
    x = jax.ShapeDtypeStruct((batch_size, *sample_shape(dataset)), jnp.float32)
    beta = jax.ShapeDtypeStruct((), jnp.float32)
    step = jax.jit(lambda s, b, be: train_step(s, b, be), donate_argnums=0)
    step_mem = _analysis(step.lower(state, x, beta).compile())
    scorer = jax.jit(lambda s, b, be: score(s.apply_fn,
                                            {"params": s.params, "batch_stats": s.batch_stats},
                                            b, be))
    score_mem = _analysis(scorer.lower(state, x, beta).compile())
    return {"model": dataset, "batch": batch_size, "train_step": step_mem, "score": score_mem}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--batch", type=positive_int, default=None,
                   help="default: the paper's per model")
    p.add_argument("--conv", default="auto", choices=("auto", "plain", "fast"),
                   help="convolution implementation (both kinds); plain = what GPU/TPU run")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ[ops.ENV_VAR] = args.conv
    os.environ[ops.CONV_ENV_VAR] = args.conv
    dev = jax.devices()[0]
    # what --conv auto became on this backend: the numbers depend on it
    resolved = {"transposed": ops.resolve_impl(), "regular": ops.resolve_conv_impl()}
    print(f"backend {jax.default_backend()} ({dev.device_kind}), convolutions: "
          f"transposed {resolved['transposed']}, regular {resolved['regular']}")
    print(f"{'model':<11} {'batch':>5}  {'train step MiB: args':>20} {'temps':>8} {'peak':>8}"
          f"   {'score MiB: temps':>16} {'peak':>8}")
    results = []
    for name in args.models:
        r = analyse(name, args.batch)
        results.append(r)
        t, s = r["train_step"], r["score"]
        print(f"{name:<11} {r['batch']:>5}  {t['arguments_mib']:>20.1f} {t['temporaries_mib']:>8.1f} "
              f"{t['peak_mib']:>8.1f}   {s['temporaries_mib']:>16.1f} {s['peak_mib']:>8.1f}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"backend": jax.default_backend(),
                                         "device_kind": dev.device_kind, "conv": args.conv,
                                         "conv_resolved": resolved, "results": results},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
