"""Run the paper's protocol (§4.1) for one dataset: ``python -m experiments.run``.

With no arguments it runs the embedded default: Arrhythmia, 10 seeds, the paper's
hyperparameters, using the data shipped with the package. Every flag defaults to the paper's
value for the chosen dataset. Results are printed and written to ``<out>/results.json``
together with the full configuration, library versions, device and timings.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from tolljax.configs import PAPER_HYPERPARAMETERS, get_config
from tolljax.errors import TollError
from tolljax.losses import parse_norm

NORM_CHOICES = ("1", "2", "inf")


def use_all_cores(host_devices: int | None = None) -> None:
    """Expose one XLA host device per CPU core (unless the user set XLA_FLAGS for it).

    Must run before JAX creates its CPU backend (first computation); seeds are then sharded
    over the cores. Has no effect on GPU/TPU backends.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        n = host_devices or os.cpu_count() or 1
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.run",
        description="Train Toll autoencoders with the paper's protocol and report the test "
                    "metric of the best validation checkpoint. Flags left out take the paper's "
                    "values for the dataset (Appendix B).")
    p.add_argument("--dataset", default="arrhythmia",
                   help="dataset name (default: arrhythmia, shipped with the package)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (paper: 10)")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--beta", type=float, default=None, help="weight of the latent norm β")
    p.add_argument("--z-dim", type=int, default=None, help="latent size")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=None, help="samples per step")
    p.add_argument("--steps", type=int, default=None, help="training steps (paper: 2000)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between validation checkpoints (paper: 20)")
    p.add_argument("--norm", default=None, help="latent norm: 1, 2 or inf (paper Table 8; default 2)")
    p.add_argument("--init", default="torch", choices=("torch", "flax"),
                   help="parameter initialisation: PyTorch defaults as the authors (default) or flax's")
    p.add_argument("--data-dir", default=None,
                   help="folder with the dataset files (default for arrhythmia: the shipped copy)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<dataset>)")
    p.add_argument("--host-devices", type=int, default=None,
                   help="CPU only: XLA host devices to shard seeds over (default: one per core)")
    p.add_argument("--describe", action="store_true",
                   help="print the model summary and parameter count, then exit")
    p.add_argument("--quiet", action="store_true", help="print only errors and the result line")
    return p


def resolve_config(args: argparse.Namespace) -> dict:
    """The paper's configuration for ``args.dataset`` with the user's flags applied."""
    config = get_config(args.dataset)
    overrides = {"seeds": args.seeds, "beta": args.beta, "z_dim": args.z_dim, "lr": args.lr,
                 "batch_size": args.batch_size, "steps": args.steps,
                 "eval_every": args.eval_every, "norm": args.norm}
    config.update({k: v for k, v in overrides.items() if v is not None})
    order = parse_norm(config["norm"])
    config["norm"] = "inf" if order == float("inf") else str(int(order))
    if config["seeds"] < 1:
        raise TollError(f"--seeds must be at least 1, got {config['seeds']}")
    config.update(init=args.init, seed_offset=args.seed_offset, data_dir=args.data_dir)
    paper = {k: v for k, v in get_config(args.dataset).items()}
    config["paper_protocol"] = all(config[k] == paper[k] for k in paper if k != "seeds")
    return config


def environment() -> dict:
    import flax
    import jax
    import jaxlib
    import optax

    import tolljax

    devices = jax.devices()
    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "tolljax": tolljax.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
        "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
        "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
        "device_count": len(devices), "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def summarize(values_pct: np.ndarray) -> dict:
    """Mean and population standard deviation (numpy ``std``, as the authors) over seeds."""
    return {"mean": float(np.mean(values_pct)), "std": float(np.std(values_pct))}


def write_json(path: Path, payload: dict) -> None:
    """Write atomically (temp file + rename) so a killed run never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False))
    os.replace(tmp, path)


def run(config: dict, *, quiet: bool = False, log=print) -> dict:
    """Run the protocol for ``config`` (see :func:`resolve_config`) and return the results."""
    import jax.numpy as jnp

    from tolljax.data import load_dataset, validate_split
    from tolljax.models import build_model, sample_shape
    from tolljax.train import ProtocolConfig, compile_protocol
    from experiments.paper import paper_value

    say = (lambda *a, **k: None) if quiet else log
    timings = {}
    t0 = time.perf_counter()
    dataset = config["dataset"]
    model = build_model(dataset, config["z_dim"], init=config["init"])
    protocol_config = ProtocolConfig(
        beta=config["beta"], lr=config["lr"], batch_size=config["batch_size"],
        steps=config["steps"], eval_every=config["eval_every"], norm=config["norm"],
        metric=config["metric"])
    split = load_dataset(dataset, data_dir=config["data_dir"])
    validate_split(split, sample_shape=sample_shape(dataset), batch_size=config["batch_size"])
    data = {"train": jnp.asarray(split.train), "val_x": jnp.asarray(split.val_x),
            "val_y": jnp.asarray(split.val_y), "test_x": jnp.asarray(split.test_x),
            "test_y": jnp.asarray(split.test_y)}
    timings["load_s"] = time.perf_counter() - t0

    seeds = list(range(config["seed_offset"], config["seed_offset"] + config["seeds"]))
    say(f"compiling {len(seeds)}-seed protocol ({config['steps']} steps) ...", flush=True)
    compiled = compile_protocol(model, protocol_config, data, len(seeds))
    timings["compile_s"] = compiled.compile_seconds
    say(f"running on {compiled.mesh.devices.size} {compiled.mesh.devices.flat[0].platform} "
        f"device(s) ...", flush=True)
    t1 = time.perf_counter()
    out = compiled(seeds, data, config["beta"])
    timings["run_s"] = time.perf_counter() - t1

    test_pct = 100.0 * out["test_metric"]
    paper, source = paper_value(dataset, None, beta=config["beta"], norm=config["norm"])
    failed = [int(s) for s, bad in zip(seeds, out["nonfinite_step"]) if bad >= 0]
    result = {
        "normal_class": None,
        "seeds": seeds,
        "test_metric": test_pct.tolist(),
        "best_step": out["best_step"].tolist(),
        "best_val_metric": (100.0 * out["best_val_metric"]).tolist(),
        "nonfinite_step": out["nonfinite_step"].tolist(),
        "val_curve": (100.0 * out["val_curve"]).round(4).tolist(),
        "loss_curve": out["loss_curve"].tolist(),
        **summarize(test_pct),
        "paper": paper, "paper_source": source,
        "failed_seeds": failed,
    }
    return {"dataset": dataset, "metric": config["metric"], "metric_unit": "%",
            "runs": [result], "summary": {**summarize(test_pct), "paper": paper,
                                          "paper_source": source},
            "timings": timings}


def report(config: dict, results: dict, log=print) -> None:
    metric = results["metric"].upper() if results["metric"] == "f1" else "AUROC"
    metric = "F1" if metric == "F1" else metric
    r = results["runs"][0]
    label = "" if config["paper_protocol"] else "  [not the paper's protocol: flags differ]"
    log(f"Toll · {config['dataset']} · {len(r['seeds'])} seeds · β={config['beta']:g} "
        f"z={config['z_dim']} lr={config['lr']:g} batch={config['batch_size']} "
        f"steps={config['steps']} eval every {config['eval_every']} · norm L{config['norm']}{label}")
    log(f"{'seed':>6} {'test ' + metric + ' %':>12} {'best step':>10} {'val ' + metric + ' %':>11}")
    for s, t, b, v, bad in zip(r["seeds"], r["test_metric"], r["best_step"],
                               r["best_val_metric"], r["nonfinite_step"]):
        flag = f"  non-finite loss at step {bad}" if bad >= 0 else ""
        log(f"{s:>6} {t:>12.2f} {b:>10} {v:>11.2f}{flag}")
    s = results["summary"]
    paper = f"   paper ({s['paper_source']}): {s['paper']:.2f} %" if s["paper"] is not None else ""
    log(f"test {metric}: {s['mean']:.2f} ± {s['std']:.2f} %{paper}")
    t = results["timings"]
    log(f"wall time: compile {t['compile_s']:.1f} s + run {t['run_s']:.1f} s "
        f"(load {t['load_s']:.1f} s, total {t['total_s']:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    args = build_parser().parse_args(argv)
    use_all_cores(args.host_devices)
    try:
        config = resolve_config(args)
        if args.describe:
            from tolljax.models import build_model, describe, sample_shape

            print(describe(build_model(config["dataset"], config["z_dim"], init=config["init"]),
                           sample_shape(config["dataset"])))
            return 0
        out_dir = Path(args.out or Path("runs") / config["dataset"])
        results = run(config, quiet=args.quiet)
    except TollError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results["timings"]["total_s"] = time.perf_counter() - start
    payload = {"config": config, "command": ["python", "-m", "experiments.run", *(argv or sys.argv[1:])],
               **results, "environment": environment()}
    write_json(out_dir / "results.json", payload)
    report(config, results)
    print(f"results: {out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
