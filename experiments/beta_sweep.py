"""AUROC vs β for one normal class (paper Figure 4: MNIST digit 8, 3 seeds).

    python -m experiments.beta_sweep --data-dir DIR [--betas 0,1,10,100,1000,10000] [--seeds 3]

β is an argument of the compiled protocol, so the whole sweep is compiled once. Writes
``<out>/results.json`` (config, per-β per-seed AUROC, timings, versions), ``results.md`` and
the plot ``beta_sweep.png``/``.pdf``. The paper's figure is an image without a stated β grid;
the default grid here is ours. The paper's tables give two points of the curve for digit 8:
β = 0 → 82.9 (Table 7) and β = 1000 → 97.3 (Table 1); the other datasets' tables give the
point at their own β (e.g. Arrhythmia β = 10 → 60.0, Table 4). ``--vmap-width`` (seeds
vmapped per device, default ``ceil(seeds / devices)``) decides the last bits of the results,
so it is recorded in the config; pass it to compare machines with different core counts.
All other flags are those of
``python -m experiments.run`` (defaults: the paper's MNIST hyperparameters), except the ones a
sweep does not use (:data:`UNUSED_FLAGS`: ``--beta``, ``--classes``, ``--method``,
``--describe``, ``--fresh`` and the multi-host flags), which are refused.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from experiments.plots import latent_norm, save_reproducibly
from experiments.run import (OOM_ADVICE, build_parser, clear_whole_set_limits, environment,
                             out_of_memory_exit, resolve_config, summarize, use_all_cores,
                             use_compile_cache, write_json, _device_data, _fmt)
from tolljax.errors import TollError, check_float32, output_dir

DEFAULT_BETAS = "0,1,10,100,1000,10000"


def parse_betas(spec: str) -> list[float]:
    """``--betas``' comma-separated values as floats: distinct, finite, ≥ 0 and finite in
    float32, else :class:`TollError`."""
    try:
        betas = [float(b) for b in spec.split(",") if b.strip()]
    except ValueError:
        raise TollError(f"--betas takes comma-separated numbers, got {spec!r}") from None
    if not betas or any(not np.isfinite(b) or b < 0 for b in betas):
        raise TollError(f"--betas must be finite numbers >= 0, got {spec!r}")
    if len(set(betas)) < len(betas):
        raise TollError(f"--betas {spec!r} names a β twice; each β runs once")
    for b in betas:
        check_float32("--betas: β", b)
    return betas


# Flags of experiments.run that a β sweep does not use, and why: given, they are rejected
# rather than silently ignored (or, for --beta, recorded as if they had run).
UNUSED_FLAGS = {
    "beta": "--beta is set by --betas in a β sweep",
    "method": "--method: a β sweep runs Toll only (the CANCE runner is experiments.cance)",
    "classes": "--classes: a β sweep runs one normal class; choose it with --normal-class",
    "describe": "--describe: use python -m experiments.run --describe for the model summary",
    "fresh": "--fresh: a β sweep does not resume, it always recomputes",
    "distributed": "--distributed: a β sweep runs on one host",
    "coordinator": "--coordinator: a β sweep runs on one host",
    "num_processes": "--num-processes: a β sweep runs on one host",
    "process_id": "--process-id: a β sweep runs on one host",
}


def reject_unused(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """:class:`TollError` for the first flag of :data:`UNUSED_FLAGS` given a non-default value."""
    for dest, message in UNUSED_FLAGS.items():
        if getattr(args, dest) != parser.get_default(dest):
            raise TollError(message)


def normal_class(args: argparse.Namespace) -> int | None:
    """The sweep's normal class: ``--normal-class`` (default 8) for image datasets; None (and
    the flag refused) for datasets with one fixed normal set."""
    from tolljax.data import IMAGE_DATASETS, num_classes

    if args.dataset not in IMAGE_DATASETS:
        if args.normal_class is not None:
            raise TollError(f"--normal-class: {args.dataset} has one fixed normal set")
        return None
    c = 8 if args.normal_class is None else args.normal_class
    if c not in range(num_classes(args.dataset)):
        raise TollError(f"--normal-class {c}: {args.dataset} has normal classes "
                        f"0..{num_classes(args.dataset) - 1}")
    return c


def plot(path: Path, betas: list[float], means: Sequence[float | None],
         stds: Sequence[float | None], config: dict,
         paper_points: list[tuple[float, float, str]]) -> None:
    """Test metric (mean ± std over seeds) against β on a log axis, with the paper's values
    as stars; written as ``path`` .png and .pdf."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array(betas, float)
    shown = np.where(x > 0, x, np.min(x[x > 0]) / 10 if np.any(x > 0) else 1.0)  # β=0 on a log axis
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(shown, means, yerr=stds, marker="o", capsize=3, label="tolljax (mean ± std over seeds)")
    for beta, value, table in paper_points:
        if beta not in betas and beta <= 0:  # no place for it on the log axis
            continue
        ax.scatter([shown[betas.index(beta)] if beta in betas else beta], [value], marker="*",
                   s=140, color="crimson", zorder=3, label=f"paper, β={beta:g} ({table})")
    ax.set_xscale("log")
    ticks = list(shown)
    ax.set_xticks(ticks, [("0" if b == 0 else f"{b:g}") for b in betas])
    ax.set_xlabel(f"β (weight of {latent_norm(config)})")
    ax.set_ylabel("test AUROC (%)")
    cls = config["classes"][0]
    where = "" if cls is None else f" normal class {cls}"
    budget = "" if config["paper_protocol"] else " — CPU budget, not the paper's protocol"
    metric = {"auroc": "AUROC", "f1": "F1"}[config["metric"]]
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title(f"{config['dataset']}{where}: {metric} vs β "
                 f"({config['seeds']} seeds){budget}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    for suffix in (".png", ".pdf"):
        save_reproducibly(fig, path.with_suffix(suffix), dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    parser = build_parser()
    parser.prog = "python -m experiments.beta_sweep"
    parser.description = __doc__.split("\n")[0]
    parser.add_argument("--betas", default=DEFAULT_BETAS, help="β values (default %(default)s)")
    parser.add_argument("--normal-class", type=int, default=None,
                        help="image datasets: the normal class (default 8)")
    parser.set_defaults(dataset="mnist", seeds=3)
    own_help = {"dataset": "dataset name (default: mnist, the paper's figure)",
                "seeds": "number of seeds, 0..N-1 (default: 3, as the paper's figure)",
                "out": "output folder (default: runs/beta_sweep_<dataset>[_<class>])",
                "quiet": "no progress lines: print only errors, warnings and the result table"}
    for action in parser._actions:
        if action.dest in UNUSED_FLAGS:  # run.py's flags that a sweep refuses: not in --help
            action.help = argparse.SUPPRESS
        action.help = own_help.get(action.dest, action.help)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    use_all_cores(args.host_devices)
    use_compile_cache(args.compile_cache)
    try:
        reject_unused(args, parser)
        betas = parse_betas(args.betas)
        cls = normal_class(args)
        args.classes = None if cls is None else str(cls)
        config = resolve_config(args)
        tag = config["dataset"] if cls is None else f"{config['dataset']}_{cls}"
        out_dir = output_dir(args.out or Path("runs") / f"beta_sweep_{tag}")
        results, timings = sweep(config, betas, quiet=args.quiet)
        # The recorded config is what ran: the β grid, not run.py's single β (and the vmap
        # width the sweep compiled, which decides the last bits: see sweep()).
        del config["beta"]
        config["betas"] = betas
    except TollError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # XLA reports device OOM as a runtime error of its own type
        return out_of_memory_exit(exc, OOM_ADVICE)
    from experiments.paper import paper_value

    # Every β the paper reports for this dataset and class: Table 1/7's β = 1000 / 0 on MNIST,
    # and each dataset's own β (Tables 2–4) wherever the sweep or those tables have it.
    # With --norm 1 or inf: β = 0 (no latent term, Table 7) and, on MNIST, β = 1000 from
    # Table 8; the other datasets' tables are of the 2-norm model (paper_value).
    paper_points = [(b, *paper_value(config["dataset"], config["classes"][0], beta=b,
                                     norm=config["norm"]))
                    for b in sorted({0.0, 1000.0, *betas})]
    paper_points = [p for p in paper_points if p[1] is not None]
    timings["total_s"] = time.perf_counter() - start
    means = [np.nan if r["mean"] is None else r["mean"] for r in results]
    stds = [np.nan if r["std"] is None else r["std"] for r in results]
    write_json(out_dir / "results.json", {
        "config": config, "command": ["python", "-m", "experiments.beta_sweep", *argv],
        "metric": config["metric"], "metric_unit": "%", "per_beta": results,
        "paper_points": [{"beta": b, "value": v, "source": t} for b, v, t in paper_points],
        "timings": timings, "environment": environment()})
    metric = {"auroc": "AUROC", "f1": "F1"}[config["metric"]]
    where = "" if cls is None else f" class {cls}"
    lines = [f"# {metric} vs β · {config['dataset']}{where} · {config['seeds']} seeds", "",
             "| β | ours (mean ± std) | paper |", "|---|---|---|"]
    paper_at = {b: f"{v:.1f} ({t})" for b, v, t in paper_points}
    for beta, r in zip(betas, results):
        lines.append(f"| {beta:g} | {_fmt(r['mean'])} ± {_fmt(r['std'])} | {paper_at.get(beta, '–')} |")
    if not config["paper_protocol"]:
        lines += ["", "CPU budget run: not the paper's protocol (see config in results.json)."]
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    plot(out_dir / "beta_sweep", betas, means, stds, config, paper_points)
    print("\n".join(lines))
    for r in results:
        if r["failed_seeds"]:  # as experiments.run: excluded from the mean, and said so
            print(f"warning: β={r['beta']:g}: seeds {r['failed_seeds']} diverged (non-finite "
                  "loss) and are excluded from the mean; try a smaller --lr")
    print(f"wall time: compile {timings['compile_s']:.1f} s + run {timings['run_s']:.1f} s "
          f"(total {timings['total_s']:.1f} s)\nresults: {out_dir / 'results.json'}, plot: "
          f"{out_dir / 'beta_sweep.png'}")
    if all(r["mean"] is None for r in results):
        print("error: every run failed (non-finite loss); see the warnings above", file=sys.stderr)
        return 1
    return 0


def sweep(config: dict, betas: list[float], *, quiet: bool = False
          ) -> tuple[list[dict], dict[str, float]]:
    """Compile the protocol once, then run it for every β. Returns per-β results, timings."""
    from tolljax.data import limit_split, load_dataset, validate_split
    from tolljax.models import build_model, sample_shape
    from tolljax.train import ProtocolConfig, compile_protocol

    say = (lambda *a, **k: None) if quiet else print
    t = time.perf_counter()
    split = load_dataset(config["dataset"], data_dir=config["data_dir"],
                         normal_class=config["classes"][0], source=config["source"])
    for note in clear_whole_set_limits(config, [(split.val_y.size, split.test_y.size)]):
        say(note)
    split = limit_split(split, val_limit=config["val_limit"], test_limit=config["test_limit"])
    validate_split(split, sample_shape=sample_shape(config["dataset"]), batch_size=config["batch_size"])
    data = _device_data(split, split.train.shape[0])
    timings = {"load_s": time.perf_counter() - t, "run_s": 0.0}
    protocol_config = ProtocolConfig(
        beta=betas[0], lr=config["lr"], batch_size=config["batch_size"], steps=config["steps"],
        eval_every=config["eval_every"], norm=config["norm"], metric=config["metric"])
    say(f"compiling the {config['seeds']}-seed protocol ...", flush=True)
    import jax.numpy as jnp

    model = build_model(config["dataset"], config["z_dim"], init=config["init"],
                        dtype=getattr(jnp, config["dtype"]))
    # The default width is ceil(seeds / devices), so without --vmap-width the last bits
    # depend on the device count; the width used is recorded either way.
    compiled = compile_protocol(model, protocol_config, data, config["seeds"],
                                width=config["vmap_width"])
    config["vmap_width"] = compiled.width
    timings["compile_s"] = compiled.compile_seconds
    seeds = list(range(config["seed_offset"], config["seed_offset"] + config["seeds"]))
    results = []
    for beta in betas:
        t = time.perf_counter()
        out = compiled(seeds, data, beta)
        elapsed = time.perf_counter() - t
        timings["run_s"] += elapsed
        pct = 100.0 * out["test_metric"]
        results.append({"beta": beta, "seeds": seeds,
                        "test_metric": [float(v) if np.isfinite(v) else None for v in pct],
                        "best_step": out["best_step"].tolist(),
                        "failed_seeds": [s for s, b in zip(seeds, out["nonfinite_step"]) if b >= 0],
                        **summarize(pct), "run_s": elapsed})
        say(f"  β={beta:g}: {_fmt(results[-1]['mean'])} ± {_fmt(results[-1]['std'])} %  [{elapsed:.1f} s]",
            flush=True)
    return results, timings


if __name__ == "__main__":
    sys.exit(main())
