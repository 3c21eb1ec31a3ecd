"""Arrhythmia full protocol: tolljax vs the PyTorch re-implementation, same machine, one run.

Each implementation runs the paper's protocol (10 seeds × 2000 steps, validation every 20
steps, best checkpoint on test) in a fresh Python process, one after the other, so neither
sees the other's threads, caches or compiled code. Reported per implementation: the wall
time of the whole process (interpreter start, imports, data, compilation, training), the
protocol's own wall time (tolljax: compile + run; PyTorch: the seed loop), mean test F1, and
the ratios tolljax / PyTorch. ``--repeat N`` alternates the two N times and reports medians.

    python benchmarks/bench_arrhythmia.py [--seeds 10] [--steps 2000] [--repeat 1] [--json OUT]

``--seed-counts 1 2 5 10`` instead measures how cost grows with work: both implementations
per number of seeds (``--repeat N``: N alternating runs each, medians reported), printing
protocol wall time, compile time and time per seed.

``--steps`` must be a multiple of the validation interval (20), as both implementations
require.

PyTorch (benchmark only): ``pip install torch==2.13.0``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._cli import check_torch_installed, positive_int  # noqa: E402

EVAL_EVERY = 20  # the protocol's validation interval (both implementations)


def _timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return elapsed


def run_tolljax(seeds: int, steps: int, workdir: Path) -> dict:
    out = workdir / "tolljax"
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}  # cold compile every time
    process_s = _timed([sys.executable, "-m", "experiments.run", "--quiet", "--fresh",
                        "--compile-cache", "off", "--seeds", str(seeds), "--steps", str(steps),
                        "--out", str(out)], env)
    res = json.loads((out / "results.json").read_text())
    t = res["timings"]
    return {"process_s": process_s, "protocol_s": t["compile_s"] + t["run_s"],
            "compile_s": t["compile_s"], "run_s": t["run_s"],
            "f1_per_seed": res["runs"][0]["test_metric"], "f1_mean": res["summary"]["mean"],
            "f1_std": res["summary"]["std"], "devices": res["environment"]["device_count"]}


def run_torch(seeds: int, steps: int, workdir: Path) -> dict:
    out = workdir / "torch.json"
    process_s = _timed([sys.executable, str(REPO / "benchmarks" / "torch_arrhythmia.py"),
                        "--seeds", str(seeds), "--steps", str(steps), "--json", str(out)])
    res = json.loads(out.read_text())
    return {"process_s": process_s, "protocol_s": res["wall_s"],
            "train_ms_per_step": res["train_ms_per_step"], "threads": res["threads"],
            "f1_per_seed": [100 * f for f in res["per_seed_f1"]],
            "f1_mean": 100 * res["mean_f1"], "f1_std": 100 * res["std_f1"],
            "torch": res["torch_version"]}


def seed_scaling(counts: list[int], steps: int, json_out: Path | None, repeat: int = 1) -> int:
    """Protocol wall time vs number of seeds (vmapped in tolljax, a loop in PyTorch); with
    ``repeat`` > 1 each count runs that many times, the two alternating, and the medians are
    printed."""
    rows = []
    print(f"{'seeds':>5} {'tolljax protocol s':>19} {'compile s':>10} {'run s/seed':>11} "
          f"{'PyTorch s':>10} {'s/seed':>7} {'ratio':>6}"
          f"{f'   (median of {repeat})' if repeat > 1 else ''}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            runs = {"tolljax": [], "torch": []}
            for _ in range(repeat):
                runs["tolljax"].append(run_tolljax(n, steps, Path(tmp)))
                runs["torch"].append(run_torch(n, steps, Path(tmp)))

            def med(name, key):
                return statistics.median(r[key] for r in runs[name])

            row = {"seeds": n, "tolljax_protocol_s": med("tolljax", "protocol_s"),
                   "tolljax_compile_s": med("tolljax", "compile_s"),
                   "tolljax_run_s": med("tolljax", "run_s"),
                   "torch_protocol_s": med("torch", "protocol_s"), "runs": runs}
            row["ratio_protocol"] = row["tolljax_protocol_s"] / row["torch_protocol_s"]
            rows.append(row)
            print(f"{n:>5} {row['tolljax_protocol_s']:>19.1f} {row['tolljax_compile_s']:>10.1f} "
                  f"{row['tolljax_run_s'] / n:>11.2f} {row['torch_protocol_s']:>10.1f} "
                  f"{row['torch_protocol_s'] / n:>7.2f} {row['ratio_protocol']:>6.3f}", flush=True)
    if json_out:
        json_out.write_text(json.dumps({"steps": steps, "repeat": repeat, "rows": rows}, indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=positive_int, default=None, help="default 10")
    p.add_argument("--steps", type=positive_int, default=2000,
                   help=f"training steps per seed, a multiple of {EVAL_EVERY}")
    p.add_argument("--repeat", type=positive_int, default=1,
                   help="alternating runs of each implementation; medians are reported")
    p.add_argument("--json", type=Path, default=None, help="write all measurements here")
    p.add_argument("--seed-counts", type=positive_int, nargs="+", default=None,
                   help="scaling mode: protocol wall time for each number of seeds (--seeds "
                        "is not used)")
    args = p.parse_args(argv)
    if args.steps % EVAL_EVERY:
        p.error(f"--steps {args.steps} is not a multiple of the validation interval "
                f"{EVAL_EVERY}")
    if args.seed_counts and args.seeds is not None:
        p.error("--seeds and --seed-counts: give one (--seed-counts sets the seeds of each run)")
    check_torch_installed("bench_arrhythmia.py")  # before the tolljax runs, not after them
    if args.seed_counts:
        return seed_scaling(args.seed_counts, args.steps, args.json, args.repeat)
    if args.seeds is None:
        args.seeds = 10

    runs = {"tolljax": [], "torch": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for name, fn in (("tolljax", run_tolljax), ("torch", run_torch)):
                r = fn(args.seeds, args.steps, Path(tmp))
                runs[name].append(r)
                print(f"[{i + 1}/{args.repeat}] {name:8s} process {r['process_s']:6.1f} s, "
                      f"protocol {r['protocol_s']:6.1f} s, F1 {r['f1_mean']:.2f} ± {r['f1_std']:.2f} %",
                      flush=True)

    def med(name, key):
        return statistics.median(r[key] for r in runs[name])

    j, t = runs["tolljax"][-1], runs["torch"][-1]
    print(f"\nArrhythmia protocol, {args.seeds} seeds × {args.steps} steps, "
          f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}"
          f"{f', median of {args.repeat}' if args.repeat > 1 else ''}")
    print(f"{'':26s}{'tolljax':>10s}{'PyTorch':>10s}{'ratio':>8s}")
    for label, key in (("process wall time (s)", "process_s"), ("protocol wall time (s)", "protocol_s")):
        a, b = med("tolljax", key), med("torch", key)
        print(f"{label:26s}{a:10.1f}{b:10.1f}{a / b:8.3f}")
    print(f"{'  of which compile (s)':26s}{med('tolljax', 'compile_s'):10.1f}")
    print(f"{'mean test F1 (%)':26s}{j['f1_mean']:10.2f}{t['f1_mean']:10.2f}")
    print(f"{'std over seeds (%)':26s}{j['f1_std']:10.2f}{t['f1_std']:10.2f}")
    print(f"tolljax: {j['devices']} XLA device(s); PyTorch {t['torch']}: {t['threads']} threads, "
          f"{t['train_ms_per_step']:.2f} ms per training step")
    if args.json:
        args.json.write_text(json.dumps({"seeds": args.seeds, "steps": args.steps, "runs": runs,
                                         "ratio_process": med("tolljax", "process_s") / med("torch", "process_s"),
                                         "ratio_protocol": med("tolljax", "protocol_s") / med("torch", "protocol_s")},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
