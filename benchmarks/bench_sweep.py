"""Wall time, FLOP rate and MFU of the paper's protocol, and what a whole table would take.

Runs the experiment CLI (``python -m experiments.run``) on part of a paper table (some normal
classes × seeds × steps) in a fresh process, with no compilation cache, and reads its
``results.json``. From XLA's cost analysis (the plain-layer program, as
``benchmarks.jax_steps.step_flops``) it counts the protocol's FLOPs:

    per seed: steps × F_train(batch) + (steps / eval_every) × n_val × F_score + n_test × F_score

(training steps, the validation scoring at every checkpoint, the test scoring of the kept
checkpoint; F_score per sample from a scoring batch of ``--score-chunk`` samples). It prints the
achieved FLOP rate over the run (compilation excluded), the MFU against the device's peak
(``benchmarks/peaks.py``; ``--peak-tflops`` on other devices), and the whole table's wall
time, extrapolated linearly in classes × seeds × steps from the measured run time (plus the
one compilation), next to the least time the table's FLOPs need at the peak.

The MNIST Table-1 sweep of issue 6 (10 classes × 10 seeds × 2000 steps × batch 1000) on one
GPU, from one class:

    python benchmarks/bench_sweep.py --dataset mnist --data-dir DIR --classes 0 --json OUT

Extra flags after ``--`` go to the CLI unchanged (e.g. ``-- --dtype bfloat16``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import peaks  # noqa: E402
from benchmarks.jax_steps import set_impls, step_flops, xla_flops  # noqa: E402
from tolljax.configs import get_config  # noqa: E402
from tolljax.data import limit_split, load_dataset, num_classes  # noqa: E402
from tolljax.models import build_model, init_variables, sample_shape  # noqa: E402
from tolljax.train import score  # noqa: E402

TABLE_SEEDS, TABLE_STEPS = 10, 2000


def score_flops(dataset: str, chunk: int) -> float:
    """FLOPs to score one sample (eval-mode forward and the Toll score), from XLA's cost
    analysis of a ``chunk``-sample scoring batch with the plain layers."""
    set_impls("plain", "plain")
    model = build_model(dataset)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0),
                                                      sample_shape(dataset)))
    x = jax.ShapeDtypeStruct((chunk, *sample_shape(dataset)), jnp.float32)
    fn = jax.jit(lambda v, x: score(model.apply, v, x, 1.0, 2, chunk))
    return xla_flops(fn.lower(variables, x)) / chunk


def _si(value: float, unit: str) -> str:
    """``value`` with an SI prefix: 2.3e12, "FLOP" -> "2.30 TFLOP"."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def protocol_flops(f_train: float, f_score: float, steps: int, eval_every: int, n_val: int,
                   n_test: int) -> float:
    """FLOPs of one seed of the protocol (module docstring)."""
    return steps * f_train + (steps // eval_every) * n_val * f_score + n_test * f_score


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--classes", default="0", help="normal classes to run (CLI syntax)")
    p.add_argument("--seeds", type=int, default=TABLE_SEEDS)
    p.add_argument("--steps", type=int, default=TABLE_STEPS)
    p.add_argument("--batch-size", type=int, default=None, help="default: the paper's")
    p.add_argument("--val-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--precision", default="default", choices=peaks.PRECISIONS,
                   help="highest: JAX_DEFAULT_MATMUL_PRECISION=highest for the run (true "
                        "float32 on GPUs, instead of TF32)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s for MFU (default: the datasheet peak of known GPUs)")
    p.add_argument("--target-min", type=float, default=30.0,
                   help="the table's wall-time target, minutes (issue 6: 30 on one H100)")
    p.add_argument("--score-chunk", type=int, default=1000)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    if args.data_dir is not None:  # the CLI runs in the repository root, not here
        args.data_dir = str(Path(args.data_dir).resolve())
    batch = args.batch_size or get_config(args.dataset)["batch_size"]
    tabular = args.dataset == "arrhythmia"
    classes = [None] if tabular else [int(c) for c in args.classes.split(",")]
    all_classes = 1 if tabular else num_classes(args.dataset)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "experiments.run", "--dataset", args.dataset, "--quiet",
               "--fresh", "--compile-cache", "off", "--seeds", str(args.seeds),
               "--steps", str(args.steps), "--batch-size", str(batch), "--dtype", args.dtype,
               "--out", str(out)]
        if not tabular:
            cmd += ["--classes", args.classes]
        for flag, value in (("--data-dir", args.data_dir), ("--val-limit", args.val_limit),
                            ("--test-limit", args.test_limit)):
            if value is not None:
                cmd += [flag, str(value)]
        cmd += extra
        env = dict(os.environ)
        if args.precision == "highest":
            env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
        print("running:", " ".join(cmd), flush=True)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        process_s = time.perf_counter() - start
        if proc.returncode not in (0, 1):  # 1: every seed failed, still timed
            sys.exit(f"the CLI failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        res = json.loads((out / "results.json").read_text())

    t, cfg, env_info = res["timings"], res["config"], res["environment"]
    batch, eval_every = cfg["batch_size"], cfg["eval_every"]  # as run (flags after -- count)
    sizes = []
    for c in classes:
        split = limit_split(load_dataset(args.dataset, data_dir=args.data_dir, normal_class=c),
                            val_limit=args.val_limit, test_limit=args.test_limit)
        sizes.append((split.val_x.shape[0], split.test_x.shape[0]))
    f_train = step_flops(args.dataset, batch)
    f_score = score_flops(args.dataset, args.score_chunk)
    run_flops = args.seeds * sum(protocol_flops(f_train, f_score, args.steps, eval_every, nv, nt)
                                 for nv, nt in sizes)
    # The table: every class, the paper's seeds and steps, the same data sizes per class.
    mean_val = sum(nv for nv, _ in sizes) / len(sizes)
    mean_test = sum(nt for _, nt in sizes) / len(sizes)
    table_flops = all_classes * TABLE_SEEDS * protocol_flops(f_train, f_score, TABLE_STEPS,
                                                             eval_every, mean_val, mean_test)
    work = len(classes) * args.seeds * args.steps
    table_work = all_classes * TABLE_SEEDS * TABLE_STEPS
    table_s = t["compile_s"] + t["run_s"] * table_work / work

    kind = env_info.get("device_kind", "cpu")
    peak = (args.peak_tflops if args.peak_tflops is not None
            else peaks.peak_tflops(kind, args.dtype, args.precision))
    rate = run_flops / t["run_s"]
    summary = {
        "device_kind": kind, "device_count": env_info["device_count"],
        "dtype": args.dtype, "precision": args.precision, "batch": batch,
        "classes": classes, "seeds": args.seeds, "steps": args.steps,
        "vmap_width": cfg["vmap_width"], "val_test_sizes": sizes,
        "flops_train_step": f_train, "flops_score_per_sample": f_score,
        "run_flops": run_flops, "process_s": process_s, "load_s": t["load_s"],
        "compile_s": t["compile_s"], "run_s": t["run_s"], "achieved_tflops": rate / 1e12,
        "peak_tflops": peak, "mfu": None if peak is None else rate / (1e12 * peak),
        "table_flops": table_flops, "table_s_extrapolated": table_s,
        "table_s_at_peak": None if peak is None else table_flops / (1e12 * peak),
        "mfu_needed_for_target": (None if peak is None else
                                  table_flops / (1e12 * peak) / (60 * args.target_min)),
        "mean_metric": res["summary"]["mean"],
    }
    print(f"{args.dataset}: classes {args.classes if classes != [None] else '-'}, {args.seeds} "
          f"seeds × {args.steps} steps, batch {batch}, {args.dtype} (precision "
          f"{args.precision}), vmap width {cfg['vmap_width']}, {env_info['device_count']} × "
          f"{kind}")
    print(f"  FLOPs: train step {_si(f_train, 'FLOP')}, scoring {_si(f_score, 'FLOP')} per "
          f"sample; this run {_si(run_flops, 'FLOP')}")
    print(f"  wall: process {process_s:.1f} s = load {t['load_s']:.1f} + compile "
          f"{t['compile_s']:.1f} + run {t['run_s']:.1f} s (+ start-up and output)")
    mfu = "" if peak is None else f", MFU {100 * summary['mfu']:.1f}% of {peak:g} TFLOP/s"
    print(f"  achieved {_si(rate, 'FLOP/s')} over the run{mfu}")
    print(f"  whole table at this batch and these data sizes ({all_classes} classes × "
          f"{TABLE_SEEDS} seeds × {TABLE_STEPS} steps, "
          f"{_si(table_flops, 'FLOP')}): {table_s / 60:.1f} min extrapolated from this run",
          end="")
    if peak is not None:
        print(f"; at the peak {summary['table_s_at_peak'] / 60:.1f} min, so "
              f"{args.target_min:g} min needs MFU ≥ {100 * summary['mfu_needed_for_target']:.1f}%")
    else:
        print(" (no peak known for this device: pass --peak-tflops for MFU)")
    print(f"  mean test metric {res['summary']['mean']}")
    if args.seeds != TABLE_SEEDS and "--vmap-width" not in extra:
        print(f"  note: {args.seeds} seeds, not the table's {TABLE_SEEDS}: the vmap width differs "
              "from the table's run, so the extrapolation is rough")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "command": cmd,
                                         "results": {k: res[k] for k in
                                                     ("config", "timings", "environment",
                                                      "summary")}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
