"""Toll as a scikit-learn-style anomaly detector: :class:`TollDetector`.

    det = TollDetector(contamination=0.15).fit(X_normal)          # train on normal data
    s = det.score_samples(X)      # the paper's score ||x̂ − x||₂ + β·||z||₂; higher = more anomalous
    det.predict(X)                # 1 = anomaly, 0 = normal (PyOD convention)
    det.save("toll_model"); det = TollDetector.load("toll_model")

Input and model
  * 2-D ``(n_samples, n_features)`` → the paper's Arrhythmia MLP sized from the feature count:
    features→256→128→z→128→256→features with BatchNorm+ReLU (``hidden``, ``z_dim``).
    Defaults are the paper's Arrhythmia setup: β=10, lr=1e-3, batch=min(100, n), z=16.
  * 4-D NHWC images ``(n, 28, 28, 1)`` → the paper's MNIST conv autoencoder and MNIST
    hyperparameters; ``(n, 32, 32, 3)`` → the CIFAR-10 model and hyperparameters
    (``model="fmnist"`` / ``"cifar100"`` pick those datasets' defaults instead). Feed the
    images preprocessed as in the paper (see ``tolljax.data``).
  Any explicit ``beta``, ``z_dim``, ``lr``, ``batch_size`` overrides the default; a default
  batch larger than the training rows is lowered to their number.
  ``standardize=True`` standardises every feature (tabular) or channel (images) with the mean
  and std of the training data; off by default, as in the paper (raw Arrhythmia features).

Training (as the authors' protocol, on the device in one compiled program): ``steps`` Adam
steps, each on ``batch_size`` distinct training rows drawn at random; every ``eval_every``
steps a checkpoint is evaluated and kept if strictly better than the best so far.

Checkpoint selection (``selection=``)
  * with labels — ``fit(X, X_val=..., y_val=...)`` — as in the paper: the checkpoint with the
    best validation F1 (tabular, the paper's rule: the expected fraction of anomalies, here
    ``mean(y_val)``, highest scores flagged) or AUROC (images). All of ``X`` is trained on.
  * without labels — ``fit(X)`` — a seeded ``val_fraction`` (20 %) of ``X`` is held out and
    not trained on; the checkpoint with the lowest mean score (= the Toll loss in eval mode)
    on the held-out rows is kept. ``fit(X, X_val=...)`` without ``y_val`` uses ``X_val``
    (assumed normal) as that held-out set instead.

Threshold for :meth:`predict` (``threshold=``)
  * ``"contamination"`` (default): the ``1 − contamination`` quantile of the scores of the
    training data ``X`` (all rows passed to ``fit``), as PyOD: about ``contamination`` of the
    training data is flagged.
  * ``"val_f1"``: the threshold maximising the anomaly-class F1 on ``(X_val, y_val)``.
  * a number: that score.
A sample is flagged when its score is strictly above ``threshold_``. A (finite) input the
model cannot score — its float32 activations overflow — gets the score ``+inf`` and is flagged,
with a ``RuntimeWarning`` naming the rows; it is never reported as normal.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import numbers
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpy.typing import ArrayLike

from tolljax._hashing import files_sha256
from tolljax.configs import PAPER_HYPERPARAMETERS
from tolljax.errors import (TollError, check_float32, finite_float, index_list,
                            numeric_array, output_dir, positive_int)
from tolljax.losses import parse_norm
from tolljax.metrics import auroc, f1_top_fraction
from tolljax.models import (INIT_SCHEMES, MLPAutoencoder, build_model, init_variables,
                            model_names, sample_shape)
from tolljax.train import create_train_state, score, seed_array, train_and_select

# Image sample shapes (NHWC, no batch axis) → the registry model used by ``model="auto"``.
IMAGE_MODELS = {(28, 28, 1): "mnist", (32, 32, 3): "cifar10"}
MODELS = ("auto", "mlp", *model_names())
SELECTIONS = ("auto", "f1", "auroc", "loss")
THRESHOLDS = ("contamination", "val_f1")
_FORMAT = "tolljax.TollDetector"
# 2: "fit_params" (the constructor arguments of the fit that made the saved model) beside
# "params" (the current ones, which set_params may have changed since). In version 1 files,
# written before set_params after fit could be saved, the two are the same.
_FORMAT_VERSION = 2
_CONFIG_FILE = "toll_detector.json"
_VARIABLES_DIR = "variables"
# The paper's Arrhythmia setup is the default for tabular data.
_TABULAR_DEFAULTS = PAPER_HYPERPARAMETERS["arrhythmia"]


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _as_samples(X, what: str, *, min_rows: int = 1) -> np.ndarray:
    """``X`` as a float32 array of samples, or a :class:`TollError` naming the problem."""
    arr = numeric_array(X, what, kinds="fiu",
                        shape_hint="pass a numeric array of shape (n_samples, n_features) or "
                                   "(n, H, W, C)",
                        dtype_hint="pass a numeric (floating-point or integer) array")
    if arr.ndim not in (2, 4):
        hint = ("; add a channel axis for grayscale images: X[..., None]" if arr.ndim == 3 else
                "; reshape a single sample with X.reshape(1, -1)" if arr.ndim == 1 else "")
        raise TollError(f"{what} has shape {_shape_text(arr.shape)}; expected a 2-D array "
                        "(n_samples, n_features) or 4-D NHWC images (n, 28, 28, 1) / "
                        f"(n, 32, 32, 3){hint}")
    if arr.ndim == 4 and tuple(arr.shape[1:]) not in IMAGE_MODELS:
        nchw = arr.shape[1] in (1, 3) and tuple(np.array(arr.shape)[[2, 3, 1]]) in IMAGE_MODELS
        raise TollError(f"{what} has image shape {_shape_text(arr.shape)}; supported NHWC image "
                        "shapes are (n, 28, 28, 1) and (n, 32, 32, 3)"
                        + ("; convert NCHW with X.transpose(0, 2, 3, 1)" if nchw else
                           "; flatten other data to 2-D (n, features) for the MLP"))
    if arr.shape[0] < min_rows:
        raise TollError(f"{what} has {arr.shape[0]} samples; at least {min_rows} are needed")
    if 0 in arr.shape[1:]:
        raise TollError(f"{what} has shape {_shape_text(arr.shape)}, i.e. no features per sample")
    with np.errstate(over="ignore", invalid="ignore"):  # reported below as non-finite
        out = arr.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        rows = np.flatnonzero(~finite.reshape(out.shape[0], -1).all(axis=1))
        raise TollError(f"{what} contains {int(out.size - finite.sum())} NaN/inf values (or "
                        f"values beyond the float32 range) in rows {index_list(rows)}; "
                        "clean or impute the data first")
    return out


def _as_labels(y, n: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(y)
    except Exception:
        arr = np.asarray([], dtype=object)
    if arr.shape != (n,):
        raise TollError(f"{what} has shape {_shape_text(arr.shape)}; expected one label per "
                        f"sample, shape ({n},)")
    if arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
        raise TollError(f"{what} must hold 0 (normal) and 1 (anomaly) only")
    return arr.astype(np.int32)


def _real(name: str, value) -> float:
    out = finite_float(value)
    if out is None:
        raise TollError(f"{name} must be a finite number, got {value!r}")
    return out


@contextlib.contextmanager
def _plain_path_to(folder: Path):
    """``folder`` as orbax can open it: a symbolic link to it from a new temporary folder.

    orbax and tensorstore read some folder names as something else: a backslash as a path
    separator ("a\\b" opened a/b), a component "gs:" as a cloud-storage scheme (a KeyError).
    Where links cannot be made, the folder itself."""
    staging = Path(tempfile.mkdtemp(prefix="tolljax-load-"))
    try:
        link = staging / "checkpoint"  # rmtree below removes the link, not what it points to
        try:
            link.symlink_to(folder.resolve(), target_is_directory=True)
        except OSError:
            link = folder
        yield link
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class _Program:
    """Static description of one training program (hashable: a ``jax.jit`` static argument)."""

    model: nn.Module
    batch_size: int
    steps: int
    eval_every: int
    norm: Any
    criterion: str            # "f1" | "auroc" | "loss"
    normal_fraction: float    # F1 rule: this fraction of lowest scores predicted normal
    chunk: int


@functools.partial(jax.jit, static_argnums=0)
def _train(prog: _Program, key: jax.Array, train: jnp.ndarray, sel_x: jnp.ndarray,
           sel_y: jnp.ndarray, beta: jnp.ndarray, lr: jnp.ndarray) -> dict:
    """Train and select a checkpoint on the device: the steps are a ``lax.scan`` inside a
    ``lax.scan`` over checkpoints, the best checkpoint is kept with ``jnp.where``.

    Same key use, batch draws and failure handling as :func:`tolljax.train.protocol`, so a
    labelled fit reproduces the protocol's run of the same seed (unvmapped). ``beta`` and ``lr``
    are traced, so changing them does not recompile. The selection value is maximised:
    the metric on ``(sel_x, sel_y)``, or minus the mean score of ``sel_x`` for ``"loss"``.
    """
    init_key, data_key = jax.random.split(key)
    state = create_train_state(prog.model, init_key, train.shape[1:], optax.adam(lr))
    n = train.shape[0]

    def criterion(scores):
        if prog.criterion == "loss":
            return -jnp.mean(scores)
        if prog.criterion == "f1":
            return f1_top_fraction(scores, sel_y, prog.normal_fraction)
        return auroc(scores, sel_y)

    def select(variables):
        return criterion(score(state.apply_fn, variables, sel_x, beta, prog.norm, prog.chunk))

    best, values, losses, bad_step = train_and_select(
        state, data_key, train, n, select, batch_size=prog.batch_size, steps=prog.steps,
        eval_every=prog.eval_every, beta=beta, norm=prog.norm)
    return {"variables": best["variables"], "best_step": best["step"], "best_value": best["val"],
            "values": values, "losses": losses, "nonfinite_step": bad_step}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _score(model: nn.Module, norm, chunk: int, variables: dict, x: jnp.ndarray,
           beta: jnp.ndarray) -> jnp.ndarray:
    return score(model.apply, variables, x, beta, norm, chunk)


def _raw_scores(model: nn.Module, hyper: dict, variables: dict, X: np.ndarray,
                mean: np.ndarray | None, scale: np.ndarray | None, chunk: int) -> np.ndarray:
    """Scores of the validated float32 samples ``X`` as they come out of the model (NaN/inf
    included)."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow shows up as non-finite scores
        x = jnp.asarray(_standardize(X, mean, scale))
    norm = TollDetector._norm_value(hyper["norm"])
    return np.asarray(_score(model, norm, chunk, variables, x, jnp.float32(hyper["beta"])))


def _best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold t (flag ``score > t``) maximising the anomaly-class F1, and that F1.

    Candidate cuts lie between consecutive distinct scores (at the midpoint; below the lowest
    score when everything is flagged); ties of F1 go to the higher threshold (fewer flagged).
    """
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    s = scores.astype(np.float64)[order]
    tp = np.cumsum(labels[order] == 1)
    flagged = np.arange(1, s.size + 1)
    f1 = 2.0 * tp / (flagged + float(np.sum(labels == 1)))
    cut = np.append(s[:-1] > s[1:], True)  # a cut after position i separates distinct scores
    i = int(np.argmax(np.where(cut, f1, -1.0)))
    lower = s[i + 1] if i + 1 < s.size else s[i] - max(1.0, abs(s[i]))
    return float((s[i] + lower) / 2), float(f1[i])


def _standardize(X: np.ndarray, mean: np.ndarray | None, scale: np.ndarray | None) -> np.ndarray:
    return X if mean is None else ((X - mean) / scale).astype(np.float32)


def _folder(path, method: str) -> Path:
    """``path`` (a str or os.PathLike) as an absolute folder path, else :class:`TollError`."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TollError(f"TollDetector.{method}: path must be a folder path (str or "
                        f"pathlib.Path), got {path!r}")
    return Path(path).expanduser().resolve()


def _plain(value):
    """numpy scalars → Python numbers, tuples → lists (for JSON)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _SavedConfig:
    """Typed, checked access to the fields of a ``toll_detector.json`` payload.

    Every problem is a one-line :class:`TollError` naming the file and the (dotted) field.
    """

    def __init__(self, config_file: Path, payload: dict):
        self.file = config_file
        self.payload = payload

    def error(self, field: str, problem: str) -> TollError:
        return TollError(f"{self.file}: field {field!r} {problem}; restore the original file "
                         "or save the detector again")

    def get(self, field: str, source: dict | None = None, prefix: str = "") -> Any:
        source = self.payload if source is None else source
        if field not in source:
            raise self.error(prefix + field, "is missing")
        return source[field]

    def integer(self, field: str, source: dict | None = None, prefix: str = "", *,
                minimum: int | None = None) -> int:
        value = self.get(field, source, prefix)
        if (isinstance(value, bool) or not isinstance(value, int)
                or (minimum is not None and value < minimum)):
            limit = "" if minimum is None else f" >= {minimum}"
            raise self.error(prefix + field, f"must be an integer{limit}, got {value!r}")
        return value

    def real(self, field: str, source: dict | None = None, prefix: str = "", *,
             positive: bool = False, nonnegative: bool = False) -> float:
        value = self.get(field, source, prefix)
        out = finite_float(value) if isinstance(value, (int, float)) else None
        if out is None or (positive and out <= 0) or (nonnegative and out < 0):
            what = "a positive" if positive else "a non-negative" if nonnegative else "a finite"
            raise self.error(prefix + field, f"must be {what} number, got {value!r}")
        return out

    def choice(self, field: str, choices: Sequence[str], source: dict | None = None,
               prefix: str = "") -> str:
        value = self.get(field, source, prefix)
        if value not in choices:
            raise self.error(prefix + field, f"must be one of {', '.join(map(str, choices))}, "
                             f"got {value!r}")
        return value

    def detector(self, cls: type, field: str = "params") -> "TollDetector":
        params = self.get(field)
        if not isinstance(params, dict):
            raise self.error(field, f"must be an object, got {params!r}")
        unknown = sorted(set(params) - set(cls._PARAM_NAMES))
        if unknown:
            raise self.error(field, f"has unknown entries {unknown}")
        try:
            return cls(**params)
        except TollError as exc:
            raise self.error(field, f"is invalid ({exc})") from None

    def model(self) -> tuple[str, tuple[int, ...], dict]:
        """``(model_name, input_shape, hyperparameters)``, checked against each other."""
        name = self.choice("model_name", ("mlp", *model_names()))
        raw_shape = self.get("input_shape")
        if (not isinstance(raw_shape, list) or not raw_shape
                or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in raw_shape)):
            raise self.error("input_shape", f"must be a list of positive integers, got {raw_shape!r}")
        shape = tuple(raw_shape)
        if name == "mlp" and len(shape) != 1:
            raise self.error("input_shape", f"must be [n_features] for the mlp model, got {raw_shape}")
        if name != "mlp" and shape != sample_shape(name):
            raise self.error("input_shape", f"must be {list(sample_shape(name))} for model "
                             f"{name!r}, got {raw_shape}")
        hyper = self.get("hyperparameters")
        if not isinstance(hyper, dict):
            raise self.error("hyperparameters", f"must be an object, got {hyper!r}")
        p = "hyperparameters."
        for key, sign in (("beta", dict(nonnegative=True)), ("lr", dict(positive=True))):
            value = self.real(key, hyper, p, **sign)  # its own error names the file and field
            try:
                check_float32(key, value)
            except TollError as exc:
                raise self.error(p + key, f"is unusable: {exc}") from None
        for key in ("z_dim", "batch_size", "steps", "eval_every"):
            self.integer(key, hyper, p, minimum=1)
        norm = self.get("norm", hyper, p)
        try:
            parse_norm(norm)
        except TollError:
            raise self.error(p + "norm", f"must be 1, 2 or inf, got {norm!r}") from None
        self.choice("init", INIT_SCHEMES, hyper, p)
        if name == "mlp":
            hidden = self.get("hidden", hyper, p)
            if (not isinstance(hidden, list) or not hidden
                    or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden)):
                raise self.error(p + "hidden", f"must be a non-empty list of positive integers, "
                                 f"got {hidden!r}")
        return name, shape, hyper

    def check_params_match(self, det: "TollDetector", field: str, name: str,
                           shape: tuple[int, ...], hyper: dict, standardized: bool) -> None:
        """``det``, built from ``field`` (the constructor arguments of the fit), must resolve,
        as :meth:`TollDetector.fit` resolves them, to the saved model: a file edited on one
        side only would describe another fit than the one that made the model that scores."""
        try:
            resolved_name, resolved = det._resolve(shape)
        except TollError as exc:
            raise self.error(field, f"do not fit the saved model ({exc})") from None
        if resolved_name != name:
            raise self.error(field, f"give model {resolved_name!r} but model_name is {name!r}")
        for key, value in resolved.items():
            saved = hyper.get(key)
            if key == "batch_size" and det.batch_size is None:
                ok = saved <= value  # fit lowers the default batch to the training rows
            else:
                ok = saved == value
            if not ok:
                raise self.error("hyperparameters." + key, f"is {saved!r} but the saved "
                                 f"{field} give {value!r}")
        if bool(det.standardize) != standardized:
            raise self.error(field, f"say standardize={bool(det.standardize)} but mean and "
                             f"scale are {'null' if not standardized else 'set'}")

    def training(self, hyper: dict) -> tuple[int, int, dict]:
        """``(best_step, nonfinite_step, history)``, checked against the saved run's steps:
        ``history`` holds one entry per checkpoint, as :meth:`TollDetector.fit` writes it."""
        # A multiple of eval_every: check_params_match ran first, and the fit_params it
        # matched them against were checked by TollDetector's own parameter checks.
        steps, every = hyper["steps"], hyper["eval_every"]
        best = self.integer("best_step", minimum=every)
        if best > steps or best % every:
            raise self.error("best_step", f"must be a checkpoint step (a multiple of {every} up "
                             f"to {steps}), got {best}")
        bad = self.integer("nonfinite_step", minimum=-1)
        if bad != -1 and not best < bad <= steps:
            raise self.error("nonfinite_step", f"must be -1 or a step after best_step={best} "
                             f"up to {steps}, got {bad}")
        history = self.get("history")
        if not isinstance(history, dict) or set(history) != {"step", "selection", "train_loss"}:
            raise self.error("history", "must be an object with step, selection and "
                             f"train_loss, got {history!r:.80}")
        checkpoints = list(range(every, steps + 1, every))
        if history["step"] != checkpoints:
            raise self.error("history.step", f"must be the checkpoint steps {every}, "
                             f"{2 * every}, ... {steps}")
        for key in ("selection", "train_loss"):
            values = history[key]
            if (not isinstance(values, list) or len(values) != len(checkpoints)
                    or any(v is not None and finite_float(v) is None for v in values)):
                raise self.error("history." + key, f"must be a list of {len(checkpoints)} "
                                 "entries, each a finite number or null")
        return best, bad, history

    def standardization(self, shape: tuple[int, ...]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(mean, scale)``: both null, or one finite value per feature (tabular) / channel."""
        out = []
        for field in ("mean", "scale"):
            value = self.get(field)
            if value is None:
                out.append(None)
                continue
            ok = isinstance(value, list) and all(
                not isinstance(v, bool) and isinstance(v, (int, float)) for v in value)
            arr = np.asarray(value, np.float64) if ok else None
            with np.errstate(over="ignore"):  # beyond float32 is reported below
                arr32 = None if arr is None else arr.astype(np.float32)
            if arr is None or arr.shape != (shape[-1],) or not np.isfinite(arr32).all():
                raise self.error(field, f"must be null or a list of {shape[-1]} finite float32 "
                                 f"numbers (one per {'feature' if len(shape) == 1 else 'channel'})")
            if field == "scale" and not (arr32 > 0).all():
                raise self.error(field, "must hold positive float32 numbers")
            out.append(arr32)
        if (out[0] is None) != (out[1] is None):
            raise self.error("scale" if out[1] is None else "mean",
                             "is null but the other standardisation field is not")
        return out[0], out[1]


def _replace_contents(path: Path, staging: Path, replace: bool) -> None:
    """Make ``path`` hold ``staging``'s files, keeping its old ones until the new are in.

    ``staging`` may be on another filesystem (the system temp folder), where a move is a
    copy that can fail half way (a full disk). So the files are first copied into a hidden
    folder inside ``path`` (any failure there leaves the old files untouched), and only then
    swapped in by renames within ``path``'s filesystem, which need no space."""
    incoming = Path(tempfile.mkdtemp(prefix=".tolljax-incoming-", dir=path))
    retired = None
    try:
        for name in (_VARIABLES_DIR, _CONFIG_FILE):
            source = staging / name
            if source.is_dir():
                shutil.copytree(source, incoming / name)
            else:
                shutil.copy2(source, incoming / name)
        if replace:
            retired = Path(tempfile.mkdtemp(prefix=".tolljax-old-", dir=path))
        try:
            if replace:
                for old in [p for p in path.iterdir() if p not in (incoming, retired)]:
                    old.rename(retired / old.name)
            for name in (_VARIABLES_DIR, _CONFIG_FILE):
                (incoming / name).rename(path / name)
        except OSError:  # undo: the new entries that were moved in go, the old ones come back
            for name in (_VARIABLES_DIR, _CONFIG_FILE):
                if not (incoming / name).exists() and (path / name).exists():
                    _remove(path / name)
            if retired is not None:
                for old in retired.iterdir():
                    old.rename(path / old.name)
            raise
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def _files_sha256(folder: Path) -> str:
    """SHA-256 over the files of the checkpoint ``folder`` (relative names, sizes, bytes): ties
    ``variables/`` to the ``toll_detector.json`` saved with it, checked before orbax reads it
    (a damaged file made orbax's background reads print "Event loop is closed" tracebacks
    beside the error). Hidden files are left out: orbax writes none, and a file manager's
    (``.DS_Store``) must not make the checkpoint unloadable."""
    names = {p.relative_to(folder): p for p in folder.rglob("*") if p.is_file()}
    return files_sha256({name.as_posix(): p for name, p in names.items()
                         if not any(part.startswith(".") for part in name.parts)})


def _os_error_text(exc: OSError) -> str:
    """One short line for ``exc``: a ``shutil.Error`` carries a list of (source, destination,
    message) for every file that failed, which made a message of ~2,000 characters."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list) and exc.args[0]:
        failures = exc.args[0]
        first = failures[0][-1] if isinstance(failures[0], tuple) else failures[0]
        more = f" (and {len(failures) - 1} more files)" if len(failures) > 1 else ""
        return f"{first}{more}"
    return str(exc.strerror or exc)


class TollDetector:
    """Toll anomaly detector (scikit-learn style; see the module docstring for the details).

    Args:
      model: ``"auto"`` (MLP for 2-D input, the paper's conv model for 28×28×1 / 32×32×3
        images), ``"mlp"``, or a registry name (``"mnist"``, ``"fmnist"``, ``"cifar10"``,
        ``"cifar100"``) whose paper hyperparameters become the defaults.
      beta, z_dim, lr, batch_size: ``None`` = the paper's value for the model (tabular:
        β=10, z=16, lr=1e-3, batch=min(100, n)).
      hidden: MLP widths between input and latent (tabular only; paper: (256, 128)).
      steps, eval_every: training steps and steps between checkpoints (paper: 2000, 20).
      norm: latent norm, 1, 2 or ``"inf"`` (paper Table 8; default 2).
      init: ``"torch"`` (PyTorch's default init, as the authors) or ``"flax"``.
      standardize: standardise features/channels with the training mean/std (default off).
      contamination: expected fraction of anomalies, in (0, 0.5] (for ``threshold``).
      threshold: ``"contamination"``, ``"val_f1"`` or a fixed score.
      selection: checkpoint selection: ``"auto"`` (F1/AUROC with labels, else ``"loss"``),
        ``"f1"``, ``"auroc"`` (need ``y_val``) or ``"loss"`` (lowest mean held-out score).
      val_fraction: fraction of ``X`` held out for label-free selection (default 0.2).
      seed: seeds the initialisation, the batches and the held-out split.
      score_chunk: samples scored at once (bounds memory for large image sets).
      verbose: print compile/training time and the selected checkpoint.

    Fitted attributes: ``model_name_``, ``input_shape_`` (one sample), ``n_features_in_``,
    ``hyperparameters_`` (resolved β, z, lr, batch, …), ``variables_`` (params, batch_stats),
    ``mean_``/``scale_`` (standardisation or None), ``threshold_``, ``selection_``,
    ``best_step_``, ``history_`` (step, selection value, mean training loss per checkpoint),
    ``nonfinite_step_`` (first step with a non-finite loss, −1 if none).
    """

    def __init__(self, *, model: str = "auto", beta: float | None = None,
                 z_dim: int | None = None, lr: float | None = None,
                 batch_size: int | None = None, hidden: Sequence[int] = (256, 128),
                 steps: int = 2000, eval_every: int = 20, norm: int | str = 2,
                 init: str = "torch", standardize: bool = False, contamination: float = 0.1,
                 threshold: str | float = "contamination", selection: str = "auto",
                 val_fraction: float = 0.2, seed: int = 0, score_chunk: int = 1000,
                 verbose: bool = False):
        self.model = model
        self.beta = beta
        self.z_dim = z_dim
        self.lr = lr
        self.batch_size = batch_size
        self.hidden = tuple(hidden) if isinstance(hidden, (list, tuple)) else hidden
        self.steps = steps
        self.eval_every = eval_every
        self.norm = norm
        self.init = init
        self.standardize = standardize
        self.contamination = contamination
        self.threshold = threshold
        self.selection = selection
        self.val_fraction = val_fraction
        self.seed = seed
        self.score_chunk = score_chunk
        self.verbose = verbose
        self._check_params()

    # ------------------------------------------------------------------ parameters
    _PARAM_NAMES = ("model", "beta", "z_dim", "lr", "batch_size", "hidden", "steps",
                    "eval_every", "norm", "init", "standardize", "contamination", "threshold",
                    "selection", "val_fraction", "seed", "score_chunk", "verbose")

    def get_params(self, deep: bool = True) -> dict:
        """Constructor arguments (scikit-learn API)."""
        return {name: getattr(self, name) for name in self._PARAM_NAMES}

    def set_params(self, **params) -> "TollDetector":
        """Set constructor arguments (scikit-learn API); takes effect at the next ``fit``."""
        for name in params:
            if name not in self._PARAM_NAMES:
                raise TollError(f"unknown TollDetector parameter {name!r}; valid: "
                                f"{', '.join(self._PARAM_NAMES)}")
        # Checked on a new instance first, so that a rejected value leaves this one unchanged
        # (and a detector that was saved without error always loads).
        checked = type(self)(**{**self.get_params(), **params})
        for name in params:
            setattr(self, name, getattr(checked, name))
        return self

    def __repr__(self) -> str:
        defaults = TollDetector.__init__.__kwdefaults__
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults[k]]
        return f"TollDetector({', '.join(changed)})"

    def _check_params(self) -> None:
        if self.model not in MODELS:
            raise TollError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.beta is not None and (_real("beta", self.beta) < 0):
            raise TollError(f"beta must be a finite number >= 0, got {self.beta!r}")
        if self.lr is not None and _real("lr", self.lr) <= 0:
            raise TollError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("beta", "lr"):
            if getattr(self, name) is not None:
                check_float32(name, float(getattr(self, name)))
        for name in ("z_dim", "batch_size"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        for name in ("steps", "eval_every", "score_chunk"):
            positive_int(name, getattr(self, name))
        if self.steps % self.eval_every:
            raise TollError(f"steps={self.steps} is not a multiple of eval_every="
                            f"{self.eval_every}; a checkpoint is taken every eval_every steps")
        if not isinstance(self.hidden, tuple) or not self.hidden:
            raise TollError(f"hidden must be a non-empty tuple of layer widths, got {self.hidden!r}")
        for width in self.hidden:
            positive_int("every hidden width", width)
        parse_norm(self.norm)
        if self.init not in INIT_SCHEMES:
            raise TollError(f"unknown init {self.init!r}; choose one of {INIT_SCHEMES}")
        for name in ("standardize", "verbose"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TollError(f"{name} must be True or False, got {getattr(self, name)!r}")
        c = self.contamination
        if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 < c <= 0.5:
            raise TollError(f"contamination must be in (0, 0.5], got {c!r}; it is the expected "
                            "fraction of anomalies in the training data")
        if isinstance(self.threshold, str):
            if self.threshold not in THRESHOLDS:
                raise TollError(f"unknown threshold {self.threshold!r}; choose 'contamination', "
                                "'val_f1' or a number (a fixed score)")
        else:
            _real("threshold", self.threshold)
        if self.selection not in SELECTIONS:
            raise TollError(f"unknown selection {self.selection!r}; choose one of "
                            f"{', '.join(SELECTIONS)}")
        v = self.val_fraction
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < 1:
            raise TollError(f"val_fraction must be in (0, 1), got {v!r}")
        # The protocol's seed range (seed_array): NumPy's default_rng (held-out split) rejects
        # negative seeds and jax.random.key wraps above 2**32 − 1 (key(2**32) == key(0)).
        try:
            seed_array([self.seed])
        except TollError:
            raise TollError(f"seed must be an integer in 0..2**32-1, got {self.seed!r}") from None

    def _resolve(self, shape: tuple[int, ...]) -> tuple[str, dict]:
        """Model name and hyperparameters for samples of ``shape`` (no batch axis)."""
        name = self.model
        if name == "auto":
            name = "mlp" if len(shape) == 1 else IMAGE_MODELS[shape]
        if name == "mlp" or name == "arrhythmia":
            if len(shape) != 1:
                raise TollError(f"model={self.model!r} takes 2-D input (n_samples, n_features), got "
                                f"samples of shape {_shape_text(shape)}; use model='auto' for images")
            defaults = _TABULAR_DEFAULTS
        else:
            if tuple(shape) != sample_shape(name):
                raise TollError(f"model={name!r} takes samples of shape "
                                f"{_shape_text(sample_shape(name))}, got {_shape_text(shape)}")
            defaults = PAPER_HYPERPARAMETERS[name]
        pick = lambda key: defaults[key] if getattr(self, key) is None else getattr(self, key)
        hyper = {"beta": float(pick("beta")), "z_dim": int(pick("z_dim")), "lr": float(pick("lr")),
                 "batch_size": int(pick("batch_size")), "steps": int(self.steps),
                 "eval_every": int(self.eval_every), "norm": str(self._norm_value(self.norm)),
                 "init": self.init}
        if name in ("mlp", "arrhythmia"):
            hyper["hidden"] = [int(h) for h in self.hidden]
        return ("mlp" if name == "arrhythmia" else name), hyper

    @staticmethod
    def _build(name: str, shape: tuple[int, ...], hyper: dict) -> nn.Module:
        if name == "mlp":
            return MLPAutoencoder(features=int(shape[0]), z_dim=hyper["z_dim"],
                                  hidden=tuple(hyper["hidden"]), init_scheme=hyper["init"])
        return build_model(name, hyper["z_dim"], init=hyper["init"])

    @staticmethod
    def _norm_value(norm):
        order = parse_norm(norm)
        return "inf" if math.isinf(order) else int(order)

    # ------------------------------------------------------------------ fitting
    def fit(self, X: ArrayLike, y: None = None, *, X_val: ArrayLike | None = None,
            y_val: ArrayLike | None = None) -> "TollDetector":
        """Train on normal data ``X``; select the checkpoint on ``(X_val, y_val)`` if given.

        ``y`` must be ``None`` (present for the scikit-learn signature): Toll trains on normal
        data only; labelled data goes in ``X_val``/``y_val``.
        """
        self._check_params()
        if y is not None:
            raise TollError("fit(X) trains on normal data only and takes no labels; pass "
                            "labelled data for checkpoint selection as X_val=..., y_val=...")
        X = _as_samples(X, "X", min_rows=2)
        shape = tuple(X.shape[1:])
        name, hyper = self._resolve(shape)
        if y_val is not None and X_val is None:
            raise TollError("y_val given without X_val; pass both (labelled validation data)")
        if X_val is not None:
            X_val = _as_samples(X_val, "X_val")
            if tuple(X_val.shape[1:]) != shape:
                raise TollError(f"X_val samples have shape {_shape_text(X_val.shape[1:])} but X "
                                f"samples {_shape_text(shape)}; they must match")
        if y_val is not None:
            y_val = _as_labels(y_val, X_val.shape[0], "y_val")

        selection = self.selection
        if selection == "auto":
            selection = "loss" if y_val is None else ("f1" if name == "mlp" else "auroc")
        if selection in ("f1", "auroc") and (y_val is None or y_val.min() == y_val.max()):
            raise TollError(f"selection={selection!r} needs X_val and y_val with both normal (0) "
                            "and anomalous (1) samples; pass them or use selection='loss'")
        if self.threshold == "val_f1" and (y_val is None or y_val.min() == y_val.max()):
            raise TollError("threshold='val_f1' needs X_val and y_val with both normal (0) and "
                            "anomalous (1) samples; pass them or use threshold='contamination'")

        # Rows to train on and rows to select the checkpoint on.
        holdout = None
        if selection == "loss" and X_val is None:
            n_hold = max(1, int(round(self.val_fraction * X.shape[0])))
            if X.shape[0] - n_hold < 1:
                raise TollError(f"X has {X.shape[0]} samples: too few to hold out val_fraction="
                                f"{self.val_fraction} for checkpoint selection; pass more data or X_val")
            perm = np.random.default_rng(int(self.seed)).permutation(X.shape[0])
            holdout = np.sort(perm[:n_hold])
            train_rows, sel_x = X[np.sort(perm[n_hold:])], X[holdout]
            sel_y = np.zeros(n_hold, np.int32)
            sel_rows = ("X", holdout)  # where the selection rows come from, for error messages
        elif selection == "loss":
            train_rows = X
            sel_index = np.arange(X_val.shape[0]) if y_val is None else np.flatnonzero(y_val == 0)
            if sel_index.size == 0:
                raise TollError("selection='loss' uses the normal rows of X_val, but y_val has none")
            sel_x, sel_y = X_val[sel_index], np.zeros(sel_index.size, np.int32)
            sel_rows = ("X_val", sel_index)
        else:
            train_rows, sel_x, sel_y = X, X_val, y_val
            sel_rows = ("X_val", np.arange(X_val.shape[0]))

        n_train = train_rows.shape[0]
        if self.batch_size is None:
            hyper["batch_size"] = min(hyper["batch_size"], n_train)
        elif hyper["batch_size"] > n_train:
            raise TollError(f"batch_size={hyper['batch_size']} but only {n_train} training rows"
                            + (" after holding out val_fraction" if holdout is not None else "")
                            + f"; each step draws batch_size distinct rows, so use batch_size <= {n_train}")

        mean = scale = None
        if self.standardize:
            axes = tuple(range(X.ndim - 1))  # per feature (tabular) / per channel (images)
            mean = X.mean(axis=axes, dtype=np.float64).astype(np.float32)
            std = X.std(axis=axes, dtype=np.float64)
            scale = np.where(std > 0, std, 1.0).astype(np.float32)

        model = self._build(name, shape, hyper)
        normal_fraction = 1.0 - float(np.mean(sel_y)) if selection == "f1" else 0.0
        prog = _Program(model, hyper["batch_size"], hyper["steps"],
                        hyper["eval_every"], self._norm_value(hyper["norm"]), selection,
                        normal_fraction, int(self.score_chunk))
        start = time.perf_counter()
        out = _train(prog, jax.random.key(int(self.seed)),
                     jnp.asarray(_standardize(train_rows, mean, scale)),
                     jnp.asarray(_standardize(sel_x, mean, scale)), jnp.asarray(sel_y),
                     jnp.float32(hyper["beta"]), jnp.float32(hyper["lr"]))
        out = jax.device_get(out)
        bad = int(out["nonfinite_step"])
        best_step = int(out["best_step"])
        if best_step == 0 and bad >= 0:
            when = ("before the first checkpoint" if bad <= hyper["eval_every"] else
                    "before any checkpoint had a finite selection value")
            raise TollError(f"training failed {when}: the loss became non-finite at step {bad}; "
                            "lower lr or beta, or try standardize=True")
        if best_step == 0:
            # The loss stayed finite, so the selection rows are what the model cannot score;
            # name them where the initial model (kept as best) already fails on them.
            which, index = sel_rows
            unscorable = index[~np.isfinite(_raw_scores(model, hyper, out["variables"], sel_x,
                                                        mean, scale, int(self.score_chunk)))]
            value = {"loss": "mean held-out score", "auroc": "AUROC", "f1": "F1"}[selection]
            rows = (f": the model gives non-finite scores to {unscorable.size} rows of {which} "
                    f"(rows {index_list(unscorable)})" if unscorable.size else "")
            raise TollError(f"no checkpoint could be selected: none had a finite {value} on the "
                            f"selection rows{rows}; remove or rescale the rows the model cannot "
                            "score, or try standardize=True")
        if bad >= 0:
            warnings.warn(f"TollDetector: the loss became non-finite at step {bad}; kept the best "
                          f"checkpoint before it (step {best_step}). Lower lr or beta, or try "
                          "standardize=True", RuntimeWarning, stacklevel=2)

        # Threshold for predict(), from the kept checkpoint's scores. Computed before any state
        # changes, so that a failure here also leaves a previously fitted detector intact.
        if self.threshold == "contamination":
            which, rows = "X", X
        elif self.threshold == "val_f1":
            which, rows = "X_val", X_val
        else:
            which, rows = None, None
        if rows is not None:
            ref = _raw_scores(model, hyper, out["variables"], rows, mean, scale,
                              int(self.score_chunk))
            bad_rows = np.flatnonzero(~np.isfinite(ref))
            if bad_rows.size:
                # No threshold can be placed among scores that are not numbers; these rows
                # trained or selected the model, so the fit itself is unusable.
                raise TollError(f"the trained model gives non-finite scores to {bad_rows.size} "
                                f"rows of {which} (rows {index_list(bad_rows)}), so no threshold "
                                "can be set; rescale the data or try standardize=True, lower lr "
                                "or beta")
            if which == "X":
                threshold = float(np.quantile(ref.astype(np.float64),
                                              1.0 - float(self.contamination)))
            else:
                threshold, _ = _best_f1_threshold(ref, y_val)
        else:
            threshold = float(self.threshold)

        # Only now (training succeeded) does the detector change state.
        self._fit_params = self.get_params()  # what save() records as the fit's arguments
        self.threshold_ = threshold
        self.model_name_, self.input_shape_ = name, shape
        self.mean_, self.scale_ = mean, scale
        self.n_features_in_ = int(np.prod(shape))
        self.hyperparameters_ = hyper
        self.variables_ = out["variables"]
        self.selection_ = selection
        self.best_step_ = best_step
        self.nonfinite_step_ = bad
        values = np.asarray(out["values"], np.float64)
        steps = (np.arange(values.size) + 1) * hyper["eval_every"]
        self.history_ = {
            "step": steps.tolist(),
            # the selection value per checkpoint: the metric, or the mean held-out score
            "selection": [None if not np.isfinite(v) else float(-v if selection == "loss" else v)
                          for v in values],
            "train_loss": [float(v) if np.isfinite(v) else None for v in out["losses"]],
        }
        self._model = model
        if self.verbose:
            print(f"TollDetector: {name} on {n_train} rows, {hyper['steps']} steps in "
                  f"{time.perf_counter() - start:.1f} s (incl. compilation); selected step "
                  f"{best_step} by {selection}")
        return self

    def fit_predict(self, X: ArrayLike, y: None = None, **kwargs: Any) -> np.ndarray:
        """``fit(X, ...)`` then ``predict(X)``."""
        return self.fit(X, y, **kwargs).predict(X)

    # ------------------------------------------------------------------ scoring
    def _check_fitted(self, method: str) -> None:
        if not hasattr(self, "variables_"):
            raise TollError(f"this TollDetector is not fitted yet; call fit(X) (or "
                            f"TollDetector.load(path)) before {method}()")

    def score_samples(self, X: ArrayLike) -> np.ndarray:
        """The paper's anomaly score ``||x̂ − x||₂ + β·||z||_p`` per sample (float32, shape
        ``(n,)``); higher = more anomalous (note: the opposite sign of scikit-learn's
        ``score_samples``).

        A finite input the model cannot score (its activations overflow float32, e.g. values
        near ±3e38) gets the score ``+inf`` and a ``RuntimeWarning`` naming the rows.
        """
        self._check_fitted("score_samples")
        return self._scores(X)

    def _scores(self, X) -> np.ndarray:
        """:meth:`score_samples` without the fitted check (callers have made it, naming
        themselves in its message)."""
        X = _as_samples(X, "X")
        if tuple(X.shape[1:]) != self.input_shape_:
            raise TollError(f"X has shape {_shape_text(X.shape)} but the detector was fitted on "
                            f"samples of shape {_shape_text(self.input_shape_)} "
                            f"({self.n_features_in_} features); pass data with the same features")
        scores = _raw_scores(self._model, self.hyperparameters_, self.variables_, X, self.mean_,
                             self.scale_, int(self.score_chunk))
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            # NaN compares False with every threshold, so predict() would call such a row
            # normal. An input the model cannot score is, by construction, unlike the data it
            # was fitted on (those scored finitely, see fit), so it is reported as maximally
            # anomalous rather than raising: one such row must not stop a batch from being
            # scored, and the warning says which rows and why.
            warnings.warn(f"TollDetector: {bad.size} rows of X get non-finite scores (rows "
                          f"{index_list(bad)}; values too large "
                          "for the model's float32 arithmetic); scored as +inf (anomalous)",
                          RuntimeWarning, stacklevel=3)
            scores = np.where(np.isfinite(scores), scores, np.float32(np.inf))
        return scores

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """``score_samples(X) − threshold_`` (float64): positive = flagged as anomalous."""
        self._check_fitted("decision_function")
        return self._scores(X).astype(np.float64) - self.threshold_

    def predict(self, X: ArrayLike) -> np.ndarray:
        """1 for anomalies (score above ``threshold_``), 0 for normal samples (int32).

        For scikit-learn's convention (−1 outlier, +1 inlier) use ``1 - 2 * predict(X)``.
        """
        self._check_fitted("predict")
        return (self._scores(X).astype(np.float64) - self.threshold_ > 0).astype(np.int32)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Save to the folder ``path``: ``variables/`` (orbax checkpoint of params and
        BatchNorm statistics) and ``toll_detector.json`` (constructor arguments, now and at
        the fit, resolved hyperparameters, preprocessing statistics, threshold, selection
        history)."""
        self._check_fitted("save")
        path = _folder(path, "save")
        replace = False
        if path.exists():
            if not path.is_dir():
                raise TollError(f"cannot save to {path}: it is a file; pass a folder path")
            if any(path.iterdir()):
                if not overwrite:
                    raise TollError(f"{path} already exists and is not empty; pass "
                                    "overwrite=True to replace a saved detector or choose a new folder")
                if not (path / _CONFIG_FILE).is_file():
                    raise TollError(f"{path} is not empty and holds no saved TollDetector; "
                                    "refusing to overwrite it, choose another folder")
                replace = True
        import tolljax
        import orbax.checkpoint as ocp

        # Creates the folder, or a one-line TollError for an unusable path (/proc/..., a
        # read-only place) instead of an OSError traceback.
        output_dir(path, "TollDetector.save: folder")
        plain = lambda params: {k: _plain(v) for k, v in params.items()}
        payload = {
            "format": _FORMAT, "format_version": _FORMAT_VERSION,
            "tolljax": tolljax.__version__, "jax": jax.__version__,
            # set_params after fit changes the first (for the next fit), not the saved model
            "params": plain(self.get_params()), "fit_params": plain(self._fit_params),
            "model_name": self.model_name_, "input_shape": list(self.input_shape_),
            "hyperparameters": self.hyperparameters_,
            "mean": None if self.mean_ is None else self.mean_.tolist(),
            "scale": None if self.scale_ is None else self.scale_.tolist(),
            "threshold": self.threshold_, "selection": self.selection_,
            "best_step": self.best_step_, "nonfinite_step": self.nonfinite_step_,
            "history": self.history_,
        }
        # Written in a new temporary folder first: orbax finishes a checkpoint by globbing its
        # folder, so a name such as "toll[beta=10]" (a glob character class) left an
        # unfinished checkpoint that load() could not restore, with only a logged warning.
        staging = Path(tempfile.mkdtemp(prefix="tolljax-save-"))
        try:
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(staging / _VARIABLES_DIR, self.variables_)
            payload["variables_sha256"] = _files_sha256(staging / _VARIABLES_DIR)
            # float32 values survive JSON exactly (float32 → float64 → repr → float64 → float32).
            (staging / _CONFIG_FILE).write_text(json.dumps(payload, indent=1))
            _replace_contents(path, staging, replace)
        except OSError as exc:  # disk full, permissions changed under us, ...
            raise TollError(f"cannot write the detector to {path} ({_os_error_text(exc)}); "
                            "check the folder and free space") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TollDetector":
        """A detector saved with :meth:`save`; it scores bitwise identically."""
        import orbax.checkpoint as ocp

        path = _folder(path, "load")
        config_file = path / _CONFIG_FILE
        if not config_file.is_file() or not (path / _VARIABLES_DIR).is_dir():
            raise TollError(f"no saved TollDetector in {path} (needs {_CONFIG_FILE} and "
                            f"{_VARIABLES_DIR}/); pass the folder given to save()")
        try:
            payload = json.loads(config_file.read_text())
            if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
                raise ValueError("not a TollDetector file")
            version = payload.get("format_version")
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise ValueError(f"format_version {version!r} is not a version number")
            if version > _FORMAT_VERSION:
                raise TollError(f"{config_file} was written by a newer tolljax "
                                f"({payload.get('tolljax')}); upgrade tolljax to load it")
        except TollError:
            raise
        except Exception as exc:
            raise TollError(f"{config_file} is damaged or not a saved TollDetector "
                            f"({type(exc).__name__}: {exc}); save the detector again") from None
        # Every field is checked here, naming the file and the field: an edited or damaged
        # file must fail at load, not as a flax/NumPy error at the first score_samples().
        cfg = _SavedConfig(config_file, payload)
        det = cfg.detector(cls)
        fit_field = "params" if version == 1 else "fit_params"
        fitted = det if version == 1 else cfg.detector(cls, fit_field)
        name, shape, hyper = cfg.model()
        mean, scale = cfg.standardization(shape)
        cfg.check_params_match(fitted, fit_field, name, shape, hyper, mean is not None)
        threshold = cfg.real("threshold")
        selection = cfg.choice("selection", SELECTIONS[1:])
        best_step, nonfinite_step, history = cfg.training(hyper)
        model = cls._build(name, shape, hyper)
        abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), shape))
        # Saves from before this field have none: their checkpoint is read as it is.
        want = payload.get("variables_sha256")
        if want is not None and _files_sha256(path / _VARIABLES_DIR) != want:
            raise TollError(f"{path / _VARIABLES_DIR} is not the checkpoint saved with "
                            f"{config_file} (the SHA-256 of its files differs: damaged, "
                            "truncated, or another detector's); restore the folder as save() "
                            "wrote it, or save again")
        try:
            with _plain_path_to(path / _VARIABLES_DIR) as source, ocp.StandardCheckpointer() as ckptr:
                variables = ckptr.restore(source, abstract)
        except Exception as exc:
            raise TollError(f"cannot restore {path / _VARIABLES_DIR} ({type(exc).__name__}); "
                            "the checkpoint is damaged or does not match toll_detector.json") from None
        # The restore returns the saved arrays as they are: a changed input_shape, z_dim or
        # hidden would only surface in flax (ScopeParamShapeError) when scoring.
        saved = jax.tree_util.tree_flatten_with_path(variables)[0]
        expected = jax.tree_util.tree_leaves(abstract)
        for (key_path, leaf), want in zip(saved, expected):
            if tuple(np.shape(leaf)) != tuple(want.shape):
                where = "/".join(str(getattr(k, "key", k)) for k in key_path)
                raise TollError(f"{config_file}: input_shape {list(shape)} and hyperparameters "
                                f"do not match the weights in {_VARIABLES_DIR}/ ({where}: saved "
                                f"{tuple(np.shape(leaf))}, expected {tuple(want.shape)}); "
                                "restore the original toll_detector.json or save again")
        det._fit_params = fitted.get_params()
        det.model_name_, det.input_shape_ = name, shape
        det.n_features_in_ = int(np.prod(shape))
        det.hyperparameters_ = hyper
        det.variables_ = variables
        det.mean_, det.scale_ = mean, scale
        det.threshold_ = threshold
        det.selection_ = selection
        det.best_step_ = best_step
        det.nonfinite_step_ = nonfinite_step
        det.history_ = history
        det._model = model
        return det
