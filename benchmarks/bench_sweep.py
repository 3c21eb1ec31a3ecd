"""Wall time, FLOP rate and MFU of the paper's protocol, and what a whole table would take.

Runs the experiment CLI (``python -m experiments.run``) on part of a paper table (some normal
classes × seeds × steps) in a fresh process, with no compilation cache, and reads its
``results.json``. From XLA's cost analysis (the plain-layer program, as
``benchmarks.jax_steps.step_flops``) it counts the protocol's FLOPs:

    per seed: steps × F_train(batch) + (steps / eval_every) × n_val × F_score + n_test × F_score

(training steps, the validation scoring at every checkpoint, the test scoring of the kept
checkpoint; F_score per sample from a scoring batch of ``--score-chunk`` samples). It prints the
achieved FLOP rate over the run (compilation excluded), the MFU against the peak of the
devices the run used (one device's peak, ``benchmarks/peaks.py`` or ``--peak-tflops``, times
the number of devices the CLI sharded the run over: one (class, seed group) chunk per
device), and the whole table's wall time, extrapolated linearly in classes × seeds × steps
from the measured run time (plus the one compilation), next to the least time the table's
FLOPs need at the peak of the devices it can use.

Everything reported describes the run as the CLI ran it: dataset, classes, seeds, steps,
batch, validation interval, latent size, dtype and data limits are read from its
``results.json`` ``config``, so flags after ``--`` (which override this script's) count.

The MNIST Table-1 sweep of issue 6 (10 classes × 10 seeds × 2000 steps × batch 1000) on one
GPU, from one class:

    python benchmarks/bench_sweep.py --dataset mnist --data-dir DIR --classes 0 --json OUT

Extra flags after ``--`` go to the CLI unchanged (e.g. ``-- --vmap-width 1``).
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
from benchmarks._cli import positive_float, positive_int  # noqa: E402
from benchmarks.jax_steps import set_impls, step_flops, xla_flops  # noqa: E402
from experiments.run import _classes  # noqa: E402
from tolljax.configs import get_config  # noqa: E402
from tolljax.data import IMAGE_DATASETS, limit_split, load_dataset, num_classes  # noqa: E402
from tolljax.errors import TollError  # noqa: E402
from tolljax.models import build_model, init_variables, sample_shape  # noqa: E402
from tolljax.train import default_width, score  # noqa: E402

TABLE_SEEDS, TABLE_STEPS = 10, 2000


def score_flops(dataset: str, chunk: int, z_dim: int | None = None) -> float:
    """FLOPs to score one sample (eval-mode forward and the Toll score), from XLA's cost
    analysis of a ``chunk``-sample scoring batch with the plain layers."""
    set_impls("plain", "plain")
    model = build_model(dataset, z_dim)
    variables = jax.eval_shape(lambda: init_variables(model, jax.random.key(0),
                                                      sample_shape(dataset)))
    x = jax.ShapeDtypeStruct((chunk, *sample_shape(dataset)), jnp.float32)
    fn = jax.jit(lambda v, x: score(model.apply, v, x, 1.0, 2, chunk))
    return xla_flops(fn, variables, x) / chunk


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


def devices_used(environment: dict, n_classes: int, n_seeds: int, vmap_width: int) -> int:
    """Devices the CLI ran on: one chunk (a class and ``vmap_width`` seeds) per device, as many
    devices as there are chunks, at most all (``experiments/run.py``; several processes: all)."""
    count = environment["device_count"]
    if environment.get("process_count", 1) > 1:
        return count
    chunks = n_classes * -(-n_seeds // vmap_width)
    return max(1, min(count, chunks))


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This script's flags (before ``--``) and the CLI's (after it); bad values are argparse
    errors (exit 2)."""
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--classes", default=None,
                   help="normal classes to run (CLI syntax, e.g. 0,3); image datasets only; "
                        "default 0")
    p.add_argument("--seeds", type=positive_int, default=TABLE_SEEDS)
    p.add_argument("--steps", type=positive_int, default=TABLE_STEPS)
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: the paper's")
    p.add_argument("--val-limit", type=positive_int, default=None)
    p.add_argument("--test-limit", type=positive_int, default=None)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--precision", default="default", choices=peaks.PRECISIONS,
                   help="highest: JAX_DEFAULT_MATMUL_PRECISION=highest for the run (true "
                        "float32 on GPUs, instead of TF32)")
    p.add_argument("--peak-tflops", type=positive_float, default=None,
                   help="peak TFLOP/s of ONE device, for MFU (default: the datasheet peak of "
                        "known GPUs); MFU divides by it times the devices the run used")
    p.add_argument("--target-min", type=positive_float, default=30.0,
                   help="the table's wall-time target, minutes (issue 6: 30 on one H100)")
    p.add_argument("--score-chunk", type=positive_int, default=1000)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        get_config(args.dataset)
    except TollError as e:
        p.error(f"--dataset: {e}")
    if args.dataset in IMAGE_DATASETS and args.classes is None:
        args.classes = "0"
    try:  # the CLI's own --classes rules, checked before the run
        _classes(args.dataset, args.classes)
    except TollError as e:
        p.error(str(e))
    if args.data_dir is not None:  # the CLI runs in the repository root, not here
        args.data_dir = str(Path(args.data_dir).resolve())
    return args, extra


def main(argv: list[str] | None = None) -> int:
    args, extra = _parse(list(sys.argv[1:] if argv is None else argv))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "experiments.run", "--dataset", args.dataset, "--quiet",
               "--fresh", "--compile-cache", "off", "--seeds", str(args.seeds),
               "--steps", str(args.steps), "--dtype", args.dtype, "--out", str(out)]
        for flag, value in (("--classes", args.classes), ("--batch-size", args.batch_size),
                            ("--data-dir", args.data_dir), ("--val-limit", args.val_limit),
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
        if proc.returncode == 2:  # the CLI refused its flags (those after -- included)
            msg = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
            print(f"bench_sweep: the CLI refused the run: {msg}", file=sys.stderr)
            return 2
        if proc.returncode not in (0, 1):  # 1: every seed failed, still timed
            sys.exit(f"the CLI failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        res = json.loads((out / "results.json").read_text())
    summary = report(res, args, process_s, extra)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "command": cmd,
                                         "results": {k: res[k] for k in
                                                     ("config", "timings", "environment",
                                                      "summary")}}, indent=1))
    return 0


def report(res: dict, args: argparse.Namespace, process_s: float, extra: list[str]) -> dict:
    """Print and return the summary of the CLI's ``results.json`` ``res``. What ran is read
    from the run's own ``config`` (flags after ``--`` override this script's), not from ``args``,
    which supplies only what the CLI does not know: the precision, the peak, the target and
    the scoring chunk for the FLOP count."""
    t, cfg, env_info = res["timings"], res["config"], res["environment"]
    dataset, batch, eval_every = cfg["dataset"], cfg["batch_size"], cfg["eval_every"]
    steps, dtype, classes = cfg["steps"], cfg["dtype"], cfg["classes"]
    seeds = len(res["runs"][0]["seeds"])  # seeds run per class
    tabular = classes == [None]
    all_classes = 1 if tabular else num_classes(dataset)
    data_dir = cfg["data_dir"]
    if data_dir is not None:  # relative to the CLI's working directory, the repository root
        data_dir = str(REPO / data_dir)
    sizes = []
    for c in classes:
        split = limit_split(load_dataset(dataset, data_dir=data_dir, normal_class=c,
                                         source=cfg.get("source", "files")),
                            val_limit=cfg["val_limit"], test_limit=cfg["test_limit"])
        sizes.append((split.val_x.shape[0], split.test_x.shape[0]))
    f_train = step_flops(dataset, batch, cfg.get("z_dim"))
    f_score = score_flops(dataset, args.score_chunk, cfg.get("z_dim"))
    run_flops = seeds * sum(protocol_flops(f_train, f_score, steps, eval_every, nv, nt)
                            for nv, nt in sizes)
    # The table: every class, the paper's seeds and steps, the same data sizes per class.
    mean_val = sum(nv for nv, _ in sizes) / len(sizes)
    mean_test = sum(nt for _, nt in sizes) / len(sizes)
    table_flops = all_classes * TABLE_SEEDS * protocol_flops(f_train, f_score, TABLE_STEPS,
                                                             eval_every, mean_val, mean_test)
    work = len(classes) * seeds * steps
    table_work = all_classes * TABLE_SEEDS * TABLE_STEPS
    table_s = t["compile_s"] + t["run_s"] * table_work / work
    # MFU: the rate over the devices the run used against the peak of that many devices.
    n_dev = devices_used(env_info, len(classes), seeds, cfg["vmap_width"])
    table_dev = devices_used(env_info, all_classes, TABLE_SEEDS, 1)  # as many as it can use

    kind = env_info.get("device_kind", "cpu")
    peak = (args.peak_tflops if args.peak_tflops is not None
            else peaks.peak_tflops(kind, dtype, args.precision))  # per device
    rate = run_flops / t["run_s"]
    summary = {
        "dataset": dataset, "device_kind": kind, "device_count": env_info["device_count"],
        "devices_used": n_dev, "table_devices": table_dev,
        "dtype": dtype, "precision": args.precision, "batch": batch,
        "classes": classes, "seeds": seeds, "steps": steps, "eval_every": eval_every,
        "vmap_width": cfg["vmap_width"], "val_test_sizes": sizes,
        "flops_train_step": f_train, "flops_score_per_sample": f_score,
        "run_flops": run_flops, "process_s": process_s, "load_s": t["load_s"],
        "compile_s": t["compile_s"], "run_s": t["run_s"], "achieved_tflops": rate / 1e12,
        "peak_tflops_per_device": peak,
        "mfu": None if peak is None else rate / (1e12 * peak * n_dev),
        "table_flops": table_flops, "table_s_extrapolated": table_s,
        "table_s_at_peak": None if peak is None else table_flops / (1e12 * peak * table_dev),
        "mfu_needed_for_target": (None if peak is None else table_flops / (1e12 * peak * table_dev)
                                  / (60 * args.target_min)),
        "mean_metric": res["summary"]["mean"],
    }
    label = "-" if tabular else ",".join(str(c) for c in classes)
    print(f"{dataset}: classes {label}, {seeds} seeds × {steps} steps (validation every "
          f"{eval_every}), batch {batch}, {dtype} (precision {args.precision}), vmap width "
          f"{cfg['vmap_width']}, ran on {n_dev} of {env_info['device_count']} × {kind}")
    print(f"  FLOPs: train step {_si(f_train, 'FLOP')}, scoring {_si(f_score, 'FLOP')} per "
          f"sample; this run {_si(run_flops, 'FLOP')}")
    print(f"  wall: process {process_s:.1f} s = load {t['load_s']:.1f} + compile "
          f"{t['compile_s']:.1f} + run {t['run_s']:.1f} s (+ start-up and output)")
    mfu = ("" if peak is None else f", MFU {100 * summary['mfu']:.1f}% of {n_dev} × {peak:g} "
           "TFLOP/s")
    print(f"  achieved {_si(rate, 'FLOP/s')} over the run on {n_dev} device(s){mfu}")
    print(f"  whole table at this batch and these data sizes ({all_classes} classes × "
          f"{TABLE_SEEDS} seeds × {TABLE_STEPS} steps, "
          f"{_si(table_flops, 'FLOP')}): {table_s / 60:.1f} min extrapolated from this run",
          end="")
    if peak is not None:
        print(f"; at the peak of {table_dev} device(s) {summary['table_s_at_peak'] / 60:.1f} "
              f"min, so {args.target_min:g} min needs MFU ≥ "
              f"{100 * summary['mfu_needed_for_target']:.1f}%")
    else:
        print(" (no peak known for this device: pass --peak-tflops for MFU)")
    print(f"  mean test metric {res['summary']['mean']}")
    # The width the CLI would choose for the whole table on these devices (its default).
    table_width = default_width(TABLE_SEEDS, all_classes, env_info["device_count"],
                                model=build_model(dataset, cfg.get("z_dim")),
                                sample_shape=sample_shape(dataset),
                                platform=env_info.get("backend", "cpu"))
    if cfg["vmap_width"] != table_width and "--vmap-width" not in extra:
        print(f"  note: vmap width {cfg['vmap_width']}, the table's run would use "
              f"{table_width}: the extrapolation is rough")
    if n_dev != table_dev:
        print(f"  note: this run used {n_dev} device(s), the table can use {table_dev}: the "
              "extrapolation assumes this run's devices")
    return summary


if __name__ == "__main__":
    sys.exit(main())
