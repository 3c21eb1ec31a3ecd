"""Arrhythmia full protocol: tolljax vs the PyTorch re-implementation, same machine, one run.

Each implementation runs the paper's protocol (10 seeds × 2000 steps, validation every 20
steps, best checkpoint on test) in a fresh Python process, one after the other, so neither
sees the other's threads, caches or compiled code. Reported per implementation: the wall
time of the whole process (interpreter start, imports, data, compilation, training), the
protocol's own wall time (tolljax: compile + run; PyTorch: the seed loop), mean test F1, and
the ratios tolljax / PyTorch. ``--repeat N`` alternates the two N times and reports medians.

    python benchmarks/bench_arrhythmia.py [--seeds 10] [--steps 2000] [--repeat 1] [--json OUT]
        [--host-devices N] [--torch-procs N]

PyTorch runs twice: the seeds in turn in one process with its default threads (as the
authors ran them; on these small matmuls the second thread gains ≤ 10 %, so that is about
one core), and ``--torch-procs`` 1-thread processes side by side (default one per core), the
seeds split between them: the baseline that uses every core, as tolljax does with one XLA
host device per core.

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


def run_tolljax(seeds: int, steps: int, workdir: Path, host_devices: int | None = None) -> dict:
    out = workdir / "tolljax"
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}  # cold compile every time
    devices = [] if host_devices is None else ["--host-devices", str(host_devices)]
    process_s = _timed([sys.executable, "-m", "experiments.run", "--quiet", "--fresh",
                        "--compile-cache", "off", "--seeds", str(seeds), "--steps", str(steps),
                        *devices, "--out", str(out)], env)
    res = json.loads((out / "results.json").read_text())
    t = res["timings"]
    width = res["config"]["vmap_width"]
    return {"process_s": process_s, "protocol_s": t["compile_s"] + t["run_s"],
            "compile_s": t["compile_s"], "run_s": t["run_s"],
            "f1_per_seed": res["runs"][0]["test_metric"], "f1_mean": res["summary"]["mean"],
            "f1_std": res["summary"]["std"], "devices": res["environment"]["device_count"],
            # seeds vmapped per device, and the devices a chunk ran on (a round of one chunk
            # per device): 5 seeds on 2 devices run as width 3, one padded lane
            "vmap_width": width, "devices_used": min(res["environment"]["device_count"],
                                                     -(-seeds // width))}


def run_torch(seeds: int, steps: int, workdir: Path, procs: int = 1) -> dict:
    """The PyTorch protocol. ``procs`` 1: the seeds in turn in one process with torch's
    default threads (as the authors ran it). ``procs`` N > 1: the seeds split into N
    contiguous groups, one 1-thread process each, all at once (on these small matmuls a
    second intra-op thread gains ≤ 10 %, so the seed loop alone leaves cores idle)."""
    script = str(REPO / "benchmarks" / "torch_arrhythmia.py")
    sizes = [seeds // procs + (i < seeds % procs) for i in range(procs)]
    starts = [sum(sizes[:i]) for i in range(procs)]
    outs = [workdir / f"torch{i}.json" for i in range(procs)]
    one_thread = [] if procs == 1 else ["--threads", "1"]
    env = None if procs == 1 else {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    running = [subprocess.Popen([sys.executable, script, "--seeds", str(n), "--seed-offset",
                                 str(first), "--steps", str(steps), *one_thread,
                                 "--json", str(out)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for n, first, out in zip(sizes, starts, outs) if n]
    for proc in running:
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(proc.args)}\n{err}")
    process_s = time.perf_counter() - start
    parts = [json.loads(out.read_text()) for out, n in zip(outs, sizes) if n]
    f1 = [100 * f for part in parts for f in part["per_seed_f1"]]
    train_s = sum(part["train_s"] for part in parts)
    return {"process_s": process_s,
            # the seed loops run side by side: the protocol ends with the slowest one
            "protocol_s": max(part["wall_s"] for part in parts),
            "train_ms_per_step": 1000.0 * train_s / (steps * seeds),
            "threads": parts[0]["threads"], "procs": len(parts),
            "f1_per_seed": f1, "f1_mean": statistics.fmean(f1), "f1_std": statistics.pstdev(f1),
            "torch": parts[0]["torch_version"]}


def seed_scaling(counts: list[int], steps: int, json_out: Path | None, repeat: int = 1,
                 host_devices: int | None = None) -> int:
    """Protocol wall time vs number of seeds (vmapped in tolljax, a loop in PyTorch); with
    ``repeat`` > 1 each count runs that many times, the two alternating, and the medians are
    printed. The CLI spreads seeds over its host devices (one per core unless
    ``host_devices``) and vmaps ``ceil(seeds / devices)`` per device: the "width" and
    "devices" columns say which, so a row's gain can be read as vmap or as cores."""
    rows = []
    print(f"{'seeds':>5} {'width':>5} {'devices':>7} {'tolljax protocol s':>19} {'compile s':>10} "
          f"{'run s/seed':>11} {'PyTorch s':>10} {'s/seed':>7} {'ratio':>6}"
          f"{f'   (median of {repeat})' if repeat > 1 else ''}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            runs = {"tolljax": [], "torch": []}
            for _ in range(repeat):
                runs["tolljax"].append(run_tolljax(n, steps, Path(tmp), host_devices))
                runs["torch"].append(run_torch(n, steps, Path(tmp)))

            def med(name, key):
                return statistics.median(r[key] for r in runs[name])

            last = runs["tolljax"][-1]
            row = {"seeds": n, "vmap_width": last["vmap_width"],
                   "devices_used": last["devices_used"],
                   "tolljax_protocol_s": med("tolljax", "protocol_s"),
                   "tolljax_compile_s": med("tolljax", "compile_s"),
                   "tolljax_run_s": med("tolljax", "run_s"),
                   "torch_protocol_s": med("torch", "protocol_s"), "runs": runs}
            row["ratio_protocol"] = row["tolljax_protocol_s"] / row["torch_protocol_s"]
            rows.append(row)
            print(f"{n:>5} {row['vmap_width']:>5} {row['devices_used']:>7} "
                  f"{row['tolljax_protocol_s']:>19.1f} {row['tolljax_compile_s']:>10.1f} "
                  f"{row['tolljax_run_s'] / n:>11.2f} {row['torch_protocol_s']:>10.1f} "
                  f"{row['torch_protocol_s'] / n:>7.2f} {row['ratio_protocol']:>6.3f}", flush=True)
    if json_out:
        json_out.write_text(json.dumps({"steps": steps, "repeat": repeat,
                                        "host_devices": host_devices, "rows": rows}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--host-devices", type=positive_int, default=None,
                   help="tolljax's XLA host devices (the CLI's flag; default one per core)")
    p.add_argument("--torch-procs", type=positive_int, default=os.cpu_count() or 1,
                   help="also run PyTorch as this many 1-thread processes side by side, the "
                        "seeds split between them (default: one per core; 1: only the seed "
                        "loop in one process)")
    args = p.parse_args(argv)
    if args.steps % EVAL_EVERY:
        p.error(f"--steps {args.steps} is not a multiple of the validation interval "
                f"{EVAL_EVERY}")
    if args.seed_counts and args.seeds is not None:
        p.error("--seeds and --seed-counts: give one (--seed-counts sets the seeds of each run)")
    check_torch_installed("bench_arrhythmia.py")  # before the tolljax runs, not after them
    if args.seed_counts:
        return seed_scaling(args.seed_counts, args.steps, args.json, args.repeat,
                            args.host_devices)
    if args.seeds is None:
        args.seeds = 10

    procs = min(args.torch_procs, args.seeds)
    sides = {"tolljax": lambda tmp: run_tolljax(args.seeds, args.steps, tmp, args.host_devices),
             "torch": lambda tmp: run_torch(args.seeds, args.steps, tmp)}
    if procs > 1:
        sides["torch_procs"] = lambda tmp: run_torch(args.seeds, args.steps, tmp, procs)
    runs = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            for name, fn in sides.items():
                r = fn(Path(tmp))
                runs[name].append(r)
                print(f"[{i + 1}/{args.repeat}] {name:11s} process {r['process_s']:6.1f} s, "
                      f"protocol {r['protocol_s']:6.1f} s, F1 {r['f1_mean']:.2f} ± {r['f1_std']:.2f} %",
                      flush=True)

    def med(name, key):
        return statistics.median(r[key] for r in runs[name])

    j, t = runs["tolljax"][-1], runs["torch"][-1]
    print(f"\nArrhythmia protocol, {args.seeds} seeds × {args.steps} steps, "
          f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}"
          f"{f', median of {args.repeat}' if args.repeat > 1 else ''}")
    others = [("torch", "PyTorch")] + ([("torch_procs", f"PyTorch ×{procs}")] if procs > 1 else [])
    print(f"{'':26s}{'tolljax':>10s}" + "".join(f"{label:>12s}{'ratio':>7s}" for _, label in others))
    for label, key in (("process wall time (s)", "process_s"), ("protocol wall time (s)", "protocol_s")):
        a = med("tolljax", key)
        print(f"{label:26s}{a:10.1f}" + "".join(f"{med(name, key):12.1f}{a / med(name, key):7.3f}"
                                               for name, _ in others))
    print(f"{'  of which compile (s)':26s}{med('tolljax', 'compile_s'):10.1f}")
    for label, key in (("mean test F1 (%)", "f1_mean"), ("std over seeds (%)", "f1_std")):
        print(f"{label:26s}{j[key]:10.2f}" + "".join(f"{runs[name][-1][key]:12.2f}{'':7s}"
                                                    for name, _ in others))
    print(f"tolljax: {j['devices']} XLA device(s), {j['vmap_width']} seed(s) vmapped per device; "
          f"PyTorch {t['torch']}: seeds in turn, {t['threads']} threads, "
          f"{t['train_ms_per_step']:.2f} ms per training step"
          + (f"; PyTorch ×{procs}: {procs} processes of 1 thread side by side, "
             f"{runs['torch_procs'][-1]['train_ms_per_step']:.2f} ms per step" if procs > 1 else ""))
    if args.json:
        ratios = {f"ratio_{key.removesuffix('_s')}{suffix}": med("tolljax", key) / med(name, key)
                  for name, suffix in (("torch", ""), ("torch_procs", "_procs")) if name in runs
                  for key in ("process_s", "protocol_s")}
        args.json.write_text(json.dumps({"seeds": args.seeds, "steps": args.steps,
                                         "repeat": args.repeat, "host_devices": args.host_devices,
                                         "torch_procs": procs, "runs": runs, **ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
