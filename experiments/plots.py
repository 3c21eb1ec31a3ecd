"""Figures of a results folder written by ``python -m experiments.run``.

    python -m experiments.plots RESULTS_DIR [--out DIR] [--formats png,pdf]

Reads ``RESULTS_DIR/results.json`` (and ``RESULTS_DIR/scores.npz`` when present) and writes,
as PNG and PDF, into ``RESULTS_DIR/plots`` (or ``--out``):

* ``val_curve``   validation metric at every checkpoint per normal class: mean ± std over
                  seeds, each seed faint, the selected (best) checkpoints marked;
* ``loss_curve``  mean training loss per checkpoint (mean ± std over seeds);
* ``paper_bars``  test metric per normal class (mean ± std, seeds as dots) beside the paper;
* ``roc``         ROC curves of the test scores, one line per seed       (needs scores.npz);
* ``score_hist``  histograms of the test scores, normal vs anomalous, for the seed with the
                  median AUROC                                           (needs scores.npz).

``scores.npz`` holds, per normal class ``<c>`` (``all`` for Arrhythmia's single normal set),
``scores_<c>`` of shape (seeds, n_test) — the test scores of each seed's selected checkpoint,
in the order of the run's seeds — and ``labels_<c>`` of shape (n_test,) (1 = anomaly).
:func:`save_scores` writes it. Without it the ROC curves and histograms are skipped, with a
printed note.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import reprlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only: matplotlib is imported where plots are drawn
    from matplotlib.figure import Figure

from tolljax.errors import TollError, output_dir
from tolljax.losses import parse_norm
from tolljax.metrics import ARRHYTHMIA_NORMAL_FRACTION  # the paper's Arrhythmia F1 rule

SCORES_FILE = "scores.npz"
RESULTS_FILE = "results.json"
FORMATS = ("png", "pdf")

OURS, PAPER, ANOMALOUS = "#1f77b4", "#7f7f7f", "#d62728"


# ---------------------------------------------------------------------------- scores.npz
def class_tag(normal_class: int | None) -> str:
    """Key suffix of a normal class in ``scores.npz``: the class number, or ``all``."""
    return "all" if normal_class is None else str(int(normal_class))


def _check_scores(tag: str, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    for what, arr, kinds in (("scores", scores, "fiu"), ("labels", labels, "biuf")):
        if arr.dtype.kind not in kinds:  # text would fail inside NumPy's float conversion
            raise TollError(f"{what} for class {tag} have dtype {arr.dtype}; expected numbers")
    if scores.ndim == 1:
        scores = scores[None]
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise TollError(f"scores for class {tag} have shape {scores.shape}; expected "
                        "(seeds, n_test)")
    if labels.ndim == 2:  # one row per seed: they must agree
        if not (labels == labels[:1]).all():
            raise TollError(f"labels for class {tag} differ between seeds; pass one row (n_test,)")
        labels = labels[0]
    if labels.shape != (scores.shape[1],):
        raise TollError(f"labels for class {tag} have shape {labels.shape}, the scores "
                        f"{scores.shape}; expected labels of shape ({scores.shape[1]},)")
    if not np.isin(labels, (0, 1)).all():
        raise TollError(f"labels for class {tag} must be 0 (normal) or 1 (anomaly)")
    if labels.min() == labels.max():  # no ROC curve, no normal-vs-anomalous histogram
        raise TollError(f"labels for class {tag} are all {int(labels[0])}; the test set needs "
                        "normal (0) and anomalous (1) samples")
    return scores.astype(np.float32), labels.astype(np.int8)


def save_scores(out_dir: str | os.PathLike[str], normal_class: int | None,
                scores: np.ndarray, labels: np.ndarray) -> Path:
    """Add (or replace) one normal class's per-seed test scores in ``out_dir/scores.npz``.

    ``scores``: (seeds, n_test) — or (n_test,) for one seed — in the order of the run's
    seeds; ``labels``: (n_test,), 1 = anomaly. The file is rewritten atomically.
    """
    out_dir = Path(out_dir)
    tag = class_tag(normal_class)
    scores, labels = _check_scores(tag, np.asarray(scores), np.asarray(labels))
    arrays = {}
    path = out_dir / SCORES_FILE
    if path.is_file():
        with np.load(path) as existing:
            arrays = {k: existing[k] for k in existing.files}
    arrays[f"scores_{tag}"], arrays[f"labels_{tag}"] = scores, labels
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "scores.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_scores(results_dir: str | os.PathLike[str]
                ) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """``{tag: (scores (seeds, n), labels (n,))}`` from ``scores.npz``, or None if absent."""
    path = Path(results_dir) / SCORES_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:
        raise TollError(f"cannot read {path} ({type(exc).__name__}: {exc}); delete it or "
                        "write it again with experiments.plots.save_scores") from None
    out = {}
    for key in sorted(arrays):
        if not key.startswith("scores_"):
            continue
        tag = key[len("scores_"):]
        if f"labels_{tag}" not in arrays:
            raise TollError(f"{path} has {key} but no labels_{tag}")
        out[tag] = _check_scores(tag, arrays[key], arrays[f"labels_{tag}"])
    return out


# ---------------------------------------------------------------------------- results.json
def load_results(results_dir: str | os.PathLike[str]) -> dict:
    """``results.json`` of a run folder, checked for the keys the plots need."""
    path = Path(results_dir) / RESULTS_FILE
    if Path(results_dir).is_file():  # was "results folder not found" for an existing file
        raise TollError(f"{results_dir} is a file; pass the folder that holds it "
                        f"({Path(results_dir).parent}), the --out folder of python -m "
                        "experiments.run")
    if not Path(results_dir).is_dir():
        raise TollError(f"results folder not found: {results_dir}; pass the --out folder of "
                        "python -m experiments.run")
    if not path.is_file():
        raise TollError(f"{path} not found; pass a folder written by python -m experiments.run")
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TollError(f"cannot read {path} as JSON ({exc}); re-run python -m experiments.run") from None
    if not isinstance(results, dict):
        raise _bad(path, "the top level", "an object", results)
    if not isinstance(results.get("runs", []), list):
        raise _bad(path, "runs", "a list with one object per normal class", results["runs"])
    for i, run in enumerate(results.get("runs", [])):
        if not isinstance(run, dict):
            raise _bad(path, f"runs[{i}]", "an object", run)
    config = results.get("config")
    if isinstance(config, dict) and "variants" in config and "ae_loss" in config:
        # was: "... lacks runs[].best_step ...; it was not written by python -m experiments.run"
        raise TollError(f"{path} holds CANCE results (python -m experiments.run --method "
                        "cance); these plots are of Toll runs: pass the --out folder of a Toll run")
    # the other runners' folders: their figures are their own (were "not written by (this
    # version of) python -m experiments.run")
    if "per_beta" in results:
        raise TollError(f"{path} holds a β sweep (python -m experiments.beta_sweep), whose "
                        "figure is beta_sweep.png in that folder; these plots are of "
                        "python -m experiments.run folders")
    if any(isinstance(run, dict) and "by_weight" in run for run in results.get("runs", [])):
        raise TollError(f"{path} holds a collapse demo (python -m experiments.collapse_demo), "
                        "whose results are its results.md; these plots are of python -m "
                        "experiments.run folders")
    missing = [k for k in ("config", "metric", "runs") if k not in results]
    run_keys = ("normal_class", "seeds", "test_metric", "best_step", "val_curve", "loss_curve")
    for run in results.get("runs") or []:
        missing += [f"runs[].{k}" for k in run_keys if k not in run]
    if missing or not results.get("runs"):
        raise TollError(f"{path} lacks {', '.join(sorted(set(missing))) or 'runs'}; it was not "
                        "written by (this version of) python -m experiments.run")
    check_results(path, results)
    return results


def _bad(path: Path, field: str, what: str, value) -> TollError:
    """The error for a field of ``results.json`` that the plots cannot use."""
    return TollError(f"{path}: {field} must be {what}, got {reprlib.repr(value)}; re-run "
                     "python -m experiments.run or repair the file")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(path: Path, field: str, value, ndim: int) -> None:
    """:func:`_bad` unless ``value`` is a list (``ndim`` 1) or a list of equal-length,
    non-empty lists (``ndim`` 2) of numbers or null."""
    rows = value if ndim == 2 else [value]
    ok = (isinstance(value, list) and all(isinstance(r, list) for r in rows)
          and all(v is None or _is_number(v) for r in rows for v in r)
          and len({len(r) for r in rows}) <= 1 and (ndim == 1 or bool(rows and rows[0])))
    if not ok:
        raise _bad(path, field, "a list of numbers (null = failed seed)" if ndim == 1 else
                   "a list with one non-empty list of numbers per seed, all of one length", value)


def check_results(path: Path, results: dict) -> None:
    """:class:`TollError` naming the field of ``results.json`` (``path``) that the plots
    cannot use — a hand-edited or damaged file — instead of an error inside NumPy/matplotlib."""
    config = results["config"]
    if not isinstance(config, dict):
        raise _bad(path, "config", "an object", config)
    for key in ("beta", "z_dim", "lr", "batch_size", "steps", "eval_every"):
        if key in config and not _is_number(config[key]):
            raise _bad(path, f"config.{key}", "a number", config[key])
    every = config.get("eval_every")
    if every is not None and not (isinstance(every, int) and every >= 1):  # the curves' x axis
        raise _bad(path, "config.eval_every", "a positive integer", every)
    if "norm" in config:  # the latent norm of the loss and score labels
        try:
            parse_norm(config["norm"])
        except TollError:
            raise _bad(path, "config.norm", "1, 2 or inf", config["norm"]) from None
    if not isinstance(results["metric"], str):
        raise _bad(path, "metric", "a string (auroc or f1)", results["metric"])
    summary = results.get("summary")
    if summary is not None and not (isinstance(summary, dict) and (
            summary.get("paper") is None or _is_number(summary["paper"]))):
        raise _bad(path, "summary", "an object whose paper is a number or null", summary)
    for i, run in enumerate(results["runs"]):
        c = run["normal_class"]
        if c is not None and not (isinstance(c, int) and not isinstance(c, bool) and c >= 0):
            raise _bad(path, f"runs[{i}].normal_class", "a class number or null", c)
        if not isinstance(run["seeds"], list):
            raise _bad(path, f"runs[{i}].seeds", "a list", run["seeds"])
        if run.get("paper") is not None and not _is_number(run["paper"]):
            raise _bad(path, f"runs[{i}].paper", "a number or null", run["paper"])
        for key in ("test_metric", "best_step", "best_val_metric"):
            if key in run:
                _numbers(path, f"runs[{i}].{key}", run[key], 1)
        if "best_val_metric" in run and len(run["best_val_metric"]) != len(run["best_step"]):
            raise _bad(path, f"runs[{i}].best_val_metric", f"one value per seed, as best_step "
                       f"({len(run['best_step'])})", run["best_val_metric"])
        for key in ("val_curve", "loss_curve"):
            _numbers(path, f"runs[{i}].{key}", run[key], 2)
        # One entry (or curve) per seed, and both curves on the same checkpoints.
        n = len(run["seeds"])
        for key in ("test_metric", "best_step", "val_curve", "loss_curve"):
            if len(run[key]) != n:
                raise _bad(path, f"runs[{i}].{key}", f"one entry per seed ({n} seeds)", run[key])
        if len(run["val_curve"][0]) != len(run["loss_curve"][0]):
            raise _bad(path, f"runs[{i}].loss_curve", f"curves of the val_curve's "
                       f"{len(run['val_curve'][0])} checkpoints", run["loss_curve"])


def _array(values) -> np.ndarray:
    """JSON list (None = failed/diverged) → float array with NaN."""
    return np.array([[np.nan if v is None else v for v in row] if isinstance(row, list)
                     else (np.nan if row is None else row) for row in values], dtype=np.float64)


def _labels(results: dict) -> list[str]:
    dataset = results["config"].get("dataset", results.get("dataset", "?"))
    names = None
    try:
        from tolljax.data import class_names

        names = class_names(dataset)
    except Exception:  # unknown dataset or one with a single normal set
        pass
    out = []
    for run in results["runs"]:
        c = run["normal_class"]
        if c is None:
            out.append(f"{dataset} (one normal set)")
        else:
            name = names[c] if names and c < len(names) else str(c)
            out.append(f"class {c}" if name == str(c) else f"{c}: {name}")
    return out


def metric_name(results: dict) -> str:
    return {"f1": "F1", "auroc": "AUROC"}.get(results["metric"], results["metric"])


# ---------------------------------------------------------------------------- figure helpers
def _grid(n: int, panel=(3.4, 2.8), single=(6.4, 4.2)):
    from matplotlib.figure import Figure

    if n == 1:
        fig = Figure(figsize=single, layout="constrained")
        return fig, [fig.add_subplot()]
    ncols = min(5, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def save_reproducibly(fig: Figure, path: Path, dpi: int) -> None:
    """``fig.savefig(path)`` without a creation date (PDF, SVG) and with SVG's element ids
    from a fixed salt: the same figure gives the same bytes (the SVGs were dated and had
    random ids; the β sweep's PDF was dated)."""
    import matplotlib

    meta = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(path.suffix[1:], {})
    with matplotlib.rc_context({"svg.hashsalt": "tolljax"}):
        fig.savefig(path, dpi=dpi, metadata=meta)


def _save(fig, out_dir: Path, name: str, formats: Sequence[str]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        save_reproducibly(fig, path, dpi=130)
        paths.append(path)
    return paths


_NORM_SUBSCRIPT = {1: "₁", 2: "₂", math.inf: "∞"}


def latent_norm(config: dict) -> str:
    """The run's latent norm (``config.norm``: 1, 2 or inf; 2 when absent, as
    ``experiments.run``'s default) as a label: ``‖z‖₁`` for ``--norm 1``."""
    return f"‖z‖{_NORM_SUBSCRIPT[parse_norm(config.get('norm', 2))]}"


def toll_formula(config: dict) -> str:
    """Toll's loss / anomaly score with the run's latent norm: ``‖x̂−x‖₂ + β‖z‖₁`` for
    ``--norm 1``."""
    return f"‖x̂−x‖₂ + β{latent_norm(config)}"


def _subtitle(results: dict) -> str:
    cfg = results["config"]
    seeds = len(results["runs"][0]["seeds"])
    parts = [f"{cfg.get('dataset', '?')}", f"{seeds} seed{'s' if seeds != 1 else ''}"]
    for key, label in (("beta", "β"), ("z_dim", "z"), ("lr", "lr"), ("batch_size", "batch"),
                       ("steps", "steps")):
        if key in cfg:
            parts.append(f"{label}={cfg[key]:g}")
    text = " · ".join(parts)
    if cfg.get("paper_protocol") is False:
        text += "\nNOT the paper's protocol"  # own line: long subtitles were cut at the edges
    return text


# ---------------------------------------------------------------------------- plots
def plot_val_curves(results: dict, out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Validation metric over checkpoints per class (mean ± std over seeds, best marked)."""
    metric = metric_name(results)
    every = int(results["config"].get("eval_every", 1))
    fig, axes = _grid(len(results["runs"]))
    for ax, run, label in zip(axes, results["runs"], _labels(results)):
        curves = _array(run["val_curve"])  # (seeds, checkpoints), %
        steps = (np.arange(curves.shape[1]) + 1) * every
        for row in curves:
            ax.plot(steps, row, color=OURS, alpha=0.25, lw=0.7)
        with np.errstate(all="ignore"), _quiet():
            mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
        ax.fill_between(steps, mean - std, mean + std, color=OURS, alpha=0.2, lw=0,
                        label="± std over seeds")
        ax.plot(steps, mean, color=OURS, lw=1.8, label="mean over seeds")
        best = np.array(run["best_step"], float)
        best_val = _array(run.get("best_val_metric", [None] * len(best)))
        ok = (best > 0) & np.isfinite(best_val)
        ax.scatter(best[ok], best_val[ok], marker="*", s=60, color="#ff7f0e", zorder=3,
                   edgecolor="k", lw=0.4, label="selected checkpoint (per seed)")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"validation {metric} (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Validation {metric} at every checkpoint\n{_subtitle(results)}", fontsize=10)
    return _save(fig, out_dir, "val_curve", formats)


def plot_loss_curves(results: dict, out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Mean training loss per checkpoint (mean ± std over seeds), per class."""
    every = int(results["config"].get("eval_every", 1))
    fig, axes = _grid(len(results["runs"]))
    for ax, run, label in zip(axes, results["runs"], _labels(results)):
        curves = _array(run["loss_curve"])
        steps = (np.arange(curves.shape[1]) + 1) * every
        with np.errstate(all="ignore"), _quiet():
            mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
        ax.fill_between(steps, mean - std, mean + std, color=OURS, alpha=0.2, lw=0,
                        label="± std over seeds")
        ax.plot(steps, mean, color=OURS, lw=1.8, label="mean over seeds")
        if np.all(curves[np.isfinite(curves)] > 0):
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Training loss {toll_formula(results['config'])} (mean of the steps before "
                 "each checkpoint)"
                 f"\n{_subtitle(results)}", fontsize=10)
    return _save(fig, out_dir, "loss_curve", formats)


def plot_paper_bars(results: dict, out_dir: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Test metric per normal class (mean ± std, seeds as dots) beside the paper's value."""
    from matplotlib.figure import Figure

    metric = metric_name(results)
    runs = results["runs"]
    labels = [lab.split(" (")[0] if r["normal_class"] is None else lab
              for lab, r in zip(_labels(results), runs)]
    ours = [_array(r["test_metric"]) for r in runs]
    paper = [r.get("paper") for r in runs]
    summary = results.get("summary") or {}
    if len(runs) > 1:
        class_means = np.array([np.nanmean(o) if np.isfinite(o).any() else np.nan for o in ours])
        covered = int(np.isfinite(class_means).sum())
        # the mean of the classes that did not fail: said so (it looked like all classes')
        labels.append("mean" if covered == len(runs) else f"mean ({covered} of {len(runs)})")
        ours.append(class_means)
        paper.append(summary.get("paper"))
    n = len(labels)
    fig = Figure(figsize=(max(5.5, 0.75 * n + 2.5), 4.4), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(n)
    width = 0.38
    with _quiet():
        means = np.array([np.nanmean(o) if np.isfinite(o).any() else np.nan for o in ours])
        stds = np.array([np.nanstd(o) if np.isfinite(o).any() else np.nan for o in ours])
    ax.bar(x - width / 2, np.nan_to_num(means), width, yerr=np.nan_to_num(stds), capsize=3,
           color=OURS, alpha=0.85, label="tolljax (mean ± std)")
    rng = np.random.default_rng(0)
    for i, o in enumerate(ours[: len(runs)]):
        o = o[np.isfinite(o)]
        ax.scatter(i - width / 2 + rng.uniform(-0.1, 0.1, o.size), o, s=10, color="k",
                   zorder=3, label="per seed" if i == 0 else None)
    paper_vals = np.array([np.nan if p is None else p for p in paper], float)
    has = np.isfinite(paper_vals)
    ax.bar(x[has] + width / 2, paper_vals[has], width, color=PAPER, alpha=0.85,
           hatch="//", edgecolor="white", label="paper")
    top = np.nanmax(np.concatenate([means + np.nan_to_num(stds), paper_vals, [0.0]]))
    for i in range(n):
        if np.isfinite(means[i]):
            ax.text(x[i] - width / 2, means[i] + np.nan_to_num(stds[i]) + 0.01 * max(top, 1),
                    f"{means[i]:.1f}", ha="center", va="bottom", fontsize=7)
        else:  # every seed failed: its 0-height bar lay below an AUROC axis, unmarked
            ax.text(x[i] - width / 2, 0.01, "failed", ha="center", va="bottom", fontsize=7,
                    color=OURS, transform=ax.get_xaxis_transform())
        if has[i]:
            ax.text(x[i] + width / 2, paper_vals[i] + 0.01 * max(top, 1), f"{paper_vals[i]:.1f}",
                    ha="center", va="bottom", fontsize=7)
        else:
            # x in data, y in axes coordinates: just above the axis' lower limit, which is
            # not 0 on AUROC plots (a label at y = 1 lay below it, invisible).
            ax.text(x[i] + width / 2, 0.01, "n/a", ha="center", va="bottom", fontsize=7,
                    color=PAPER, transform=ax.get_xaxis_transform())
    low = np.nanmin(np.concatenate([means - np.nan_to_num(stds), paper_vals]))
    bottom = 0.0 if metric != "AUROC" or not np.isfinite(low) else max(0.0, min(50.0, low - 5))
    ax.set_ylim(bottom, min(100.0, max(top, 1) * 1.08) if top > 0 else 100.0)
    ax.set_xlim(-0.5 - 0.6 * (n == 1), n - 0.5 + 0.6 * (n == 1))
    ax.set_xticks(x, labels, rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center",
                  fontsize=8)
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_xlabel("normal class")
    source = summary.get("paper_source") or next((r.get("paper_source") for r in runs
                                                  if r.get("paper_source")), None)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Test {metric} per normal class: ours vs paper ({source or 'no paper value'})"
                 f"\n{_subtitle(results)}", fontsize=10)
    return _save(fig, out_dir, "paper_bars", formats)


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False- and true-positive rates over all thresholds (ties grouped) and the area.

    The area (trapezoids) equals the Mann–Whitney AUROC with ties counted ½, as
    ``tolljax.metrics.auroc``.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels) == 1
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.append(s[:-1] != s[1:], True)  # end of each group of equal scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    tpr = np.concatenate([[0.0], tp / max(y.sum(), 1)])
    fpr = np.concatenate([[0.0], fp / max((~y).sum(), 1)])
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return fpr, tpr, area


def _runs_with_scores(results: dict, scores: dict) -> list[tuple[dict, str, np.ndarray, np.ndarray,
                                                                 np.ndarray]]:
    """``(run, label, scores, labels, reported)`` per class with scores; ``reported`` marks the
    seeds with a test metric: a failed (diverged) seed's scores are saved but it reports none,
    so the figures leave it out as the tables do."""
    out = []
    for run, label in zip(results["runs"], _labels(results)):
        tag = class_tag(run["normal_class"])
        if tag in scores:
            if scores[tag][0].shape[0] != len(run["seeds"]):
                raise TollError(f"{SCORES_FILE} has scores of {scores[tag][0].shape[0]} seeds for "
                                f"class {tag}, {RESULTS_FILE} {len(run['seeds'])}; they come from "
                                "different runs: re-run python -m experiments.run")
            reported = np.array([v is not None for v in run["test_metric"]], bool)
            bad = [s for s, row, r in zip(_seed_names(run, len(reported)), scores[tag][0],
                                          reported) if r and not np.isfinite(row).all()]
            if bad:  # roc_curve ranked NaN lowest: a made-up AUROC beside the table's metric
                raise TollError(f"{SCORES_FILE}: class {tag}, seed(s) {bad}: NaN/inf scores for "
                                f"a seed with a test metric in {RESULTS_FILE}; they come from "
                                "different runs or were edited: re-run python -m experiments.run")
            out.append((run, label, *scores[tag], reported))
    return out


def _no_reported_seed(ax, label: str) -> None:
    ax.text(0.5, 0.5, "every seed failed\n(non-finite loss):\nno test metric", ha="center",
            va="center", transform=ax.transAxes, fontsize=9)
    ax.set_title(label, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _seed_names(run: dict, n: int) -> list:
    seeds = run.get("seeds") or []
    return list(seeds) if len(seeds) == n else list(range(n))


def plot_roc(results: dict, scores: dict, out_dir: Path,
             formats: Sequence[str] = FORMATS) -> list[Path]:
    """ROC curves of the test scores: one panel per class, one line per seed."""
    items = _runs_with_scores(results, scores)
    fig, axes = _grid(len(items), panel=(3.0, 3.0), single=(5.0, 4.6))
    for ax, (run, label, s, y, reported) in zip(axes, items):
        if not reported.any():
            _no_reported_seed(ax, label)
            continue
        areas = []
        names = _seed_names(run, s.shape[0])
        for k, row in enumerate(s):
            if not reported[k]:
                continue
            fpr, tpr, area = roc_curve(row, y)
            areas.append(area)
            ax.plot(fpr, tpr, lw=1.0, alpha=0.7,
                    label=f"seed {names[k]}: AUROC {100 * area:.1f}" if s.shape[0] <= 5 else None)
        ax.plot([0, 1], [0, 1], ls="--", color="k", lw=0.8, label="chance")
        failed = int((~reported).sum())
        ax.set_title(f"{label}\nAUROC {100 * np.mean(areas):.1f} ± {100 * np.std(areas):.1f} %"
                     + (f" ({failed} failed seed{'s' * (failed > 1)} left out)" if failed else ""),
                     fontsize=9)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_aspect("equal")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        if s.shape[0] <= 5:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"ROC of the test scores, one line per seed (its selected checkpoint)"
                 f"\n{_subtitle(results)}", fontsize=10)
    return _save(fig, out_dir, "roc", formats)


def plot_histograms(results: dict, scores: dict, out_dir: Path,
                    formats: Sequence[str] = FORMATS) -> list[Path]:
    """Test-score histograms, normal vs anomalous, for each class's median-AUROC seed."""
    items = _runs_with_scores(results, scores)
    fig, axes = _grid(len(items), panel=(3.4, 2.6))
    dataset = results["config"].get("dataset")
    for ax, (run, label, s, y, reported) in zip(axes, items):
        if not reported.any():
            _no_reported_seed(ax, label)
            continue
        areas = np.array([roc_curve(row, y)[2] if ok else np.nan for row, ok in zip(s, reported)])
        candidates = np.flatnonzero(reported)
        # median (lower) of the seeds that report a metric
        k = int(candidates[np.argsort(areas[candidates], kind="stable")[(candidates.size - 1) // 2]])
        row = s[k].astype(np.float64)
        ok = np.isfinite(row)
        bins = np.histogram_bin_edges(row[ok], bins=int(np.clip(2 * np.sqrt(ok.sum()), 10, 50)))
        for cls, color, name in ((0, OURS, "normal"), (1, ANOMALOUS, "anomalous")):
            vals = row[ok & (y == cls)]
            ax.hist(vals, bins=bins, density=True, color=color, alpha=0.45,
                    label=f"{name} (n={vals.size})")
            ax.hist(vals, bins=bins, density=True, color=color, histtype="step", lw=1.0)
        if dataset == "arrhythmia" and results["metric"] == "f1":
            n_normal = int(round(ARRHYTHMIA_NORMAL_FRACTION * row.size))
            ordered = np.sort(row)
            cut = (ordered[n_normal - 1] + ordered[min(n_normal, row.size - 1)]) / 2
            ax.axvline(cut, color="k", ls="--", lw=1,
                       label=f"F1 rule: top {row.size - n_normal} flagged")
        seed = _seed_names(run, s.shape[0])[k]
        ax.set_title(f"{label}\nseed {seed} (median AUROC {100 * areas[k]:.1f} %)", fontsize=9)
        ax.set_xlabel(f"anomaly score {toll_formula(results['config'])}")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Test scores, normal vs anomalous\n{_subtitle(results)}", fontsize=10)
    return _save(fig, out_dir, "score_hist", formats)


class _quiet:
    """Silence numpy's 'Mean of empty slice' warnings for all-NaN (failed) columns."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def make_plots(results_dir: str | os.PathLike[str],
               out_dir: str | os.PathLike[str] | None = None, formats: Sequence[str] = FORMATS,
               log: Callable = print) -> list[Path]:
    """Write every figure for ``results_dir``; return the paths written."""
    formats = tuple(formats)
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        raise TollError(f"unknown figure format(s) {', '.join(bad) or '(none)'}; use png, pdf or svg")
    results_dir = Path(results_dir)
    results = load_results(results_dir)
    # Checked before any figure is drawn: an unusable folder fails as one line, not as an
    # OSError from matplotlib's savefig.
    out_dir = (output_dir(out_dir) if out_dir is not None
               else output_dir(results_dir / "plots", what="plots folder"))
    paths = plot_val_curves(results, out_dir, formats)
    paths += plot_loss_curves(results, out_dir, formats)
    paths += plot_paper_bars(results, out_dir, formats)
    scores = load_scores(results_dir)
    if scores is None:
        log(f"note: {results_dir / SCORES_FILE} not found — ROC curves and score histograms "
            "skipped (they need per-sample test scores; the CLI writes them with "
            "experiments.plots.save_scores)")
        return paths
    missing = [class_tag(r["normal_class"]) for r in results["runs"]
               if class_tag(r["normal_class"]) not in scores]
    if missing:
        log(f"note: {SCORES_FILE} has no scores for class(es) {', '.join(missing)}; their ROC "
            "curves and histograms are skipped")
    if len(missing) < len(results["runs"]):
        paths += plot_roc(results, scores, out_dir, formats)
        paths += plot_histograms(results, scores, out_dir, formats)
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m experiments.plots",
        description="Figures of a results folder of python -m experiments.run: validation "
                    "metric over checkpoints, training loss, per-class test metric vs the "
                    "paper, and (with scores.npz) ROC curves and test-score histograms.")
    p.add_argument("results_dir", help="folder holding results.json (the run's --out)")
    p.add_argument("--out", default=None, help="output folder (default: RESULTS_DIR/plots)")
    p.add_argument("--formats", default="png,pdf",
                   help="comma-separated figure formats: png, pdf, svg (default: png,pdf)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = make_plots(args.results_dir, args.out,
                           [f.strip().lower() for f in args.formats.split(",") if f.strip()])
    except TollError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} files to {paths[0].parent}:")
    for path in paths:
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
