import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tolljax
from tolljax import TollDetector, TollError
from tolljax.detector import _best_f1_threshold
from tolljax.metrics import auroc
from tolljax.models import count_params
from tolljax.train import checkpoint_keys, sample_batch_indices

STEPS = 60  # 3 checkpoints: enough to exercise selection, fast on 2 cores


@pytest.fixture(scope="module")
def labelled(arrhythmia):
    """The paper's Arrhythmia setup (selection by validation F1), shortened."""
    return TollDetector(steps=STEPS, contamination=0.15).fit(
        arrhythmia.train, X_val=arrhythmia.val_x, y_val=arrhythmia.val_y)


@pytest.fixture(scope="module")
def label_free(arrhythmia):
    """No labels: checkpoint selected on a held-out 20 % of X; small MLP, standardised input."""
    return TollDetector(hidden=(32,), z_dim=4, steps=40, standardize=True,
                        contamination=0.05, seed=1).fit(arrhythmia.train)


def test_fit_score_predict_on_arrhythmia(labelled, arrhythmia):
    det = labelled
    assert det.model_name_ == "mlp" and det.input_shape_ == (274,) and det.n_features_in_ == 274
    hp = det.hyperparameters_
    assert (hp["beta"], hp["z_dim"], hp["lr"], hp["batch_size"], hp["hidden"]) == \
        (10.0, 16, 1e-3, 100, [256, 128])
    assert count_params(det.variables_["params"]) == 212_514  # the authors' Arrhythmia MLP
    assert det.selection_ == "f1" and det.best_step_ in (20, 40, 60)
    assert det.history_["step"] == [20, 40, 60] and len(det.history_["train_loss"]) == 3
    assert det.history_["selection"][det.best_step_ // 20 - 1] == max(det.history_["selection"])
    scores = det.score_samples(arrhythmia.test_x)
    assert scores.shape == (90,) and scores.dtype == np.float32 and np.isfinite(scores).all()
    assert float(auroc(scores, arrhythmia.test_y)) > 0.6
    pred = det.predict(arrhythmia.test_x)
    assert pred.dtype == np.int32 and set(np.unique(pred)) <= {0, 1}
    dec = det.decision_function(arrhythmia.test_x)
    np.testing.assert_array_equal(pred, (dec > 0).astype(int))
    assert dec.dtype == np.float64
    np.testing.assert_array_equal(dec, scores.astype(np.float64) - det.threshold_)
    # integer input is accepted (cast to float32)
    ints = np.round(arrhythmia.test_x[:5]).astype(np.int64)
    np.testing.assert_array_equal(det.score_samples(ints), det.score_samples(ints.astype(np.float32)))


def test_labelled_fit_is_the_library_protocol(labelled, arrhythmia):
    """Same seed, same hyperparameters: the detector is tolljax.train.protocol (unvmapped)."""
    from tolljax.models import build_model
    from tolljax.train import ProtocolConfig, protocol

    config = ProtocolConfig(beta=10.0, lr=1e-3, batch_size=100, steps=STEPS, metric="f1")
    data = {k: jnp.asarray(getattr(arrhythmia, k))
            for k in ("train", "val_x", "val_y", "test_x", "test_y")}
    run = jax.jit(functools.partial(protocol, model=build_model("arrhythmia"), config=config))
    out = run(jax.random.key(0), data, jnp.float32(10.0))
    assert int(out["best_step"]) == labelled.best_step_
    np.testing.assert_allclose(labelled.history_["selection"], np.asarray(out["val_curve"]),
                               rtol=1e-6)
    np.testing.assert_allclose(labelled.score_samples(arrhythmia.test_x),
                               np.asarray(out["test_scores"]), rtol=1e-5)


def test_contamination_threshold_flags_that_fraction(labelled, label_free, arrhythmia):
    X = arrhythmia.train  # both were fitted on all 232 rows of X (label_free trained on 80 %)
    for det, c in ((labelled, 0.15), (label_free, 0.05)):
        scores = det.score_samples(X)
        assert det.threshold_ == pytest.approx(np.quantile(scores.astype(np.float64), 1 - c))
        assert abs(det.predict(X).mean() - c) <= 1 / X.shape[0]


def test_label_free_selection_uses_the_held_out_rows(label_free, arrhythmia):
    det = label_free
    assert det.selection_ == "loss" and det.hyperparameters_["batch_size"] == 100
    n_hold = round(0.2 * 232)
    hold = np.sort(np.random.default_rng(1).permutation(232)[:n_hold])
    values = det.history_["selection"]  # mean held-out score per checkpoint
    assert det.best_step_ == det.history_["step"][int(np.argmin(values))]
    assert np.mean(det.score_samples(arrhythmia.train[hold])) == pytest.approx(min(values), rel=1e-5)
    # standardisation statistics come from X; zero-variance features get scale 1
    np.testing.assert_allclose(det.mean_, arrhythmia.train.mean(axis=0), rtol=1e-5, atol=1e-5)
    assert det.scale_.shape == (274,) and (det.scale_ > 0).all()
    assert (det.scale_[arrhythmia.train.std(axis=0) == 0] == 1).all()


def test_save_load_gives_identical_scores(labelled, label_free, arrhythmia, tmp_path):
    for det, name in ((labelled, "a"), (label_free, "b")):
        path = det.save(tmp_path / name)
        assert (path / "toll_detector.json").is_file() and (path / "variables").is_dir()
        back = TollDetector.load(tmp_path / name)
        for x in (arrhythmia.test_x, arrhythmia.train):
            assert np.array_equal(back.score_samples(x), det.score_samples(x))  # bitwise
            np.testing.assert_array_equal(back.predict(x), det.predict(x))
        assert back.threshold_ == det.threshold_ and back.best_step_ == det.best_step_
        assert back.history_ == det.history_ and back.get_params() == det.get_params()
        assert back.hyperparameters_ == det.hyperparameters_ and repr(back) == repr(det)
        if det.mean_ is not None:
            assert np.array_equal(back.mean_, det.mean_) and np.array_equal(back.scale_, det.scale_)
    with pytest.raises(TollError, match="already exists.*overwrite=True"):
        labelled.save(tmp_path / "a")
    labelled.save(tmp_path / "b", overwrite=True)  # replaces a saved detector
    assert TollDetector.load(tmp_path / "b").selection_ == "f1"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(TollError, match="refusing to overwrite"):
        labelled.save(tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_val_f1_threshold_maximises_validation_f1(arrhythmia):
    # Same program as the `labelled` fixture (β and lr are traced): no recompilation.
    det = TollDetector(steps=STEPS, threshold="val_f1").fit(
        arrhythmia.train, X_val=arrhythmia.val_x, y_val=arrhythmia.val_y)
    s, y = det.score_samples(arrhythmia.val_x), arrhythmia.val_y

    def f1(pred):
        tp = np.sum(pred & (y == 1))
        return 2 * tp / (pred.sum() + y.sum())

    best = max(f1(s > t) for t in np.r_[s, s.min() - 1])
    assert f1(det.predict(arrhythmia.val_x).astype(bool)) == pytest.approx(best)


def test_best_f1_threshold_with_ties():
    s = np.array([0.1, 0.5, 0.5, 0.9, 0.2], np.float32)
    y = np.array([0, 1, 0, 1, 0])
    t, f1 = _best_f1_threshold(s, y)
    # flag {0.9}: F1 = 2/3; flag {0.9, 0.5, 0.5}: F1 = 4/5 (ties are flagged together)
    assert f1 == pytest.approx(0.8) and 0.2 < t < 0.5
    t, f1 = _best_f1_threshold(np.array([1.0, 1.0]), np.array([1, 1]))
    assert f1 == 1.0 and t < 1.0


def test_fit_predict_and_params(arrhythmia):
    det = TollDetector(steps=40, eval_every=20, hidden=(32,), z_dim=4, standardize=True,
                       contamination=0.05, seed=1)
    again = TollDetector(**det.get_params())
    assert again.get_params() == det.get_params() and "hidden=(32,)" in repr(det)
    assert det.set_params(contamination=0.2) is det and det.contamination == 0.2
    with pytest.raises(TollError, match="unknown TollDetector parameter 'gamma'"):
        det.set_params(gamma=1)


def test_rejected_set_params_changes_nothing(small, tmp_path):
    det = TollDetector(**small.get_params())
    before = det.get_params()
    with pytest.raises(TollError, match="steps=30 is not a multiple of eval_every=20"):
        det.set_params(steps=30)  # was kept: saved without error, then refused by load()
    with pytest.raises(TollError, match="unknown TollDetector parameter 'foo'"):
        det.set_params(steps=40, foo=1)  # steps was set before foo was refused
    with pytest.raises(TollError, match="lr must be a positive number"):
        det.set_params(steps=40, lr=-1.0)
    assert det.get_params() == before
    assert det.set_params(hidden=[8, 4]).hidden == (8, 4)  # a list still becomes a tuple
    # A fitted detector whose set_params was refused still saves a folder that loads.
    with pytest.raises(TollError):
        small.set_params(steps=30)
    TollDetector.load(small.save(tmp_path / "d"))


def test_diverging_training_is_a_toll_error_and_keeps_the_fitted_state(labelled, arrhythmia):
    # Same compiled program as `labelled` (β and lr are traced): no recompilation.
    det = TollDetector(steps=STEPS, contamination=0.15)
    det.fit(arrhythmia.train, X_val=arrhythmia.val_x, y_val=arrhythmia.val_y)
    before = det.score_samples(arrhythmia.test_x)
    np.testing.assert_array_equal(before, labelled.score_samples(arrhythmia.test_x))
    det.set_params(beta=1e38, standardize=True)  # β·||z|| overflows at the first step
    with pytest.raises(TollError, match="non-finite at step 1; lower lr or beta"):
        det.fit(arrhythmia.train, X_val=arrhythmia.val_x, y_val=arrhythmia.val_y)
    assert det.mean_ is None and det.hyperparameters_["beta"] == 10.0  # still the old model
    np.testing.assert_array_equal(det.score_samples(arrhythmia.test_x), before)


def test_image_inputs_get_the_papers_models_and_defaults():
    det = TollDetector()
    name, hp = det._resolve((28, 28, 1))
    assert name == "mnist" and (hp["beta"], hp["z_dim"], hp["lr"], hp["batch_size"]) == \
        (1000.0, 128, 1e-4, 1000) and "hidden" not in hp
    name, hp = det._resolve((32, 32, 3))
    assert name == "cifar10" and (hp["beta"], hp["z_dim"], hp["lr"], hp["batch_size"]) == \
        (10.0, 64, 1e-2, 50)
    name, hp = TollDetector(model="fmnist", z_dim=32)._resolve((28, 28, 1))
    assert name == "fmnist" and hp["z_dim"] == 32 and hp["beta"] == 100.0


@pytest.mark.slow
def test_image_fit_score_save_load(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 32, 32, 3)).astype(np.float32)
    det = TollDetector(steps=2, eval_every=1, batch_size=4, z_dim=8).fit(X)
    assert det.model_name_ == "cifar10" and det.score_samples(X[:3]).shape == (3,)
    det.save(tmp_path / "img")
    back = TollDetector.load(tmp_path / "img")
    assert np.array_equal(back.score_samples(X), det.score_samples(X))


X_OK = np.zeros((4, 3), np.float32)


@pytest.mark.parametrize("X, message", [
    (np.zeros(5), r"shape \(5,\); expected a 2-D array .* X.reshape\(1, -1\)"),
    (np.zeros((4, 28, 28)), r"add a channel axis for grayscale images: X\[\.\.\., None\]"),
    (np.zeros((4, 16, 16, 3)), r"image shape \(4, 16, 16, 3\); supported NHWC"),
    (np.zeros((4, 3, 32, 32)), r"convert NCHW with X.transpose\(0, 2, 3, 1\)"),
    (np.zeros((4, 2, 2, 2, 2)), "expected a 2-D array"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), r"1 NaN/inf values .* rows \[0\]"),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN/inf values"),
    (np.array([[1e40, 0.0], [0.0, 1.0]]), "beyond the float32 range"),
    (np.array([["a", "b"], ["c", "d"]]), "dtype <U1; pass a numeric"),
    (np.ones((3, 2), bool), "dtype bool"),
    (np.ones((3, 2), complex), "dtype complex128"),
    (np.zeros((1, 3)), "1 samples; at least 2"),
    (np.zeros((0, 3)), "0 samples; at least 2"),
    (np.zeros((3, 0)), "no features per sample"),
    ([[1.0, 2.0], [3.0]], "cannot be converted to an array|dtype object"),
    (np.ma.masked_array(np.zeros((3, 2)), mask=[[0, 1], [0, 0], [1, 0]]),
     r"X is a masked array with 2 masked entries; fill them \(X.filled\(value\)\)"),
])
def test_bad_training_data_messages(X, message):
    with pytest.raises(TollError, match=message) as err:
        TollDetector(steps=20).fit(X)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    (dict(y=np.zeros(4)), "takes no labels; pass labelled data .* X_val=..., y_val="),
    (dict(y_val=np.zeros(4)), "y_val given without X_val"),
    (dict(X_val=np.zeros((4, 5), np.float32)), r"X_val samples have shape \(5,\) but X samples \(3,\)"),
    (dict(X_val=X_OK, y_val=np.zeros(3)), r"y_val has shape \(3,\); expected .* \(4,\)"),
    (dict(X_val=X_OK, y_val=np.array([0, 1, 2, 0])), "0 \\(normal\\) and 1 \\(anomaly\\) only"),
    (dict(X_val=X_OK, y_val=np.zeros(4), selection="f1"), "needs X_val and y_val with both"),
    (dict(threshold="val_f1"), "threshold='val_f1' needs X_val and y_val"),
    (dict(batch_size=4), r"batch_size=4 but only 3 training rows after holding out"),
    (dict(model="mnist"), r"model='mnist' takes samples of shape \(28, 28, 1\), got \(3,\)"),
])
def test_bad_fit_arguments_messages(kwargs, message):
    params = {k: kwargs.pop(k) for k in ("selection", "threshold", "batch_size", "model")
              if k in kwargs}
    with pytest.raises(TollError, match=message):
        TollDetector(steps=20, **params).fit(X_OK, **kwargs)


def test_mlp_on_images_message():
    with pytest.raises(TollError, match="model='mlp' takes 2-D input"):
        TollDetector(model="mlp").fit(np.zeros((2, 28, 28, 1)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(contamination=0), r"contamination must be in \(0, 0.5\], got 0"),
    (dict(contamination=0.6), r"contamination must be in \(0, 0.5\], got 0.6"),
    (dict(contamination=-0.1), r"contamination must be in \(0, 0.5\]"),
    (dict(contamination="10%"), r"contamination must be in \(0, 0.5\]"),
    (dict(threshold="f1"), "unknown threshold 'f1'"),
    (dict(threshold=float("nan")), "threshold must be a finite number"),
    (dict(selection="best"), "unknown selection 'best'"),
    (dict(model="resnet"), "unknown model 'resnet'"),
    (dict(steps=30), "steps=30 is not a multiple of eval_every=20"),
    (dict(steps=0), "steps must be a positive integer"),
    (dict(batch_size=2.5), "batch_size must be a positive integer"),
    (dict(z_dim=0), "z_dim must be a positive integer"),
    (dict(lr=0.0), "lr must be a positive number"),
    (dict(beta=-1.0), "beta must be a finite number >= 0"),
    (dict(beta=float("inf")), "beta must be a finite number"),
    (dict(hidden=()), "hidden must be a non-empty tuple"),
    (dict(hidden=(64, 0)), "every hidden width must be a positive integer"),
    (dict(norm=3), "unknown latent norm 3"),
    (dict(init="xavier"), "unknown init 'xavier'"),
    (dict(val_fraction=1.0), r"val_fraction must be in \(0, 1\)"),
    (dict(standardize="yes"), "standardize must be True or False"),
    (dict(seed=1.5), "seed must be an integer"),
    # -1 was NumPy's ValueError, 2**70 an OverflowError; jax.random.key(2**32) == key(0)
    (dict(seed=-1), r"seed must be an integer in 0..2\*\*32-1, got -1"),
    (dict(seed=2**32), r"seed must be an integer in 0..2\*\*32-1"),
    (dict(seed=2**70), r"seed must be an integer in 0..2\*\*32-1"),
    # were OverflowError from math.isfinite
    (dict(beta=10**400), "beta must be a finite number, got 1000"),
    (dict(lr=10**400), "lr must be a finite number"),
    (dict(threshold=10**400), "threshold must be a finite number"),
    # float32 would train with lr 0 (nothing learnt) or β = inf (non-finite at step 1)
    (dict(lr=1e-50), "lr=1e-50 is 0 in the float32 arithmetic training runs in"),
    (dict(beta=1e39), "beta=1e[+]?39 is beyond the float32 range"),
    (dict(verbose="x"), "verbose must be True or False, got 'x'"),
])
def test_bad_parameters_messages(kwargs, message):
    with pytest.raises(TollError, match=message) as err:
        TollDetector(**kwargs)
    assert "\n" not in str(err.value)


def test_unfitted_detector_messages(tmp_path):
    det = TollDetector()
    calls = {"score_samples": lambda: det.score_samples(X_OK), "predict": lambda: det.predict(X_OK),
             "decision_function": lambda: det.decision_function(X_OK),
             "save": lambda: det.save(tmp_path / "d")}
    for method, call in calls.items():  # the message names the method actually called
        with pytest.raises(TollError, match=rf"not fitted yet; call fit\(X\) .* {method}\(\)$"):
            call()


X8 = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
# Finite float32 input whose activations overflow: the model's score is NaN.
UNSCORABLE = np.full((3, 8), 3e38, np.float32)
UNSCORABLE[:, ::2] *= -1


@pytest.fixture(scope="module")
def small():
    """A quick label-free fit on 8 random features (as in the audit's reproduction)."""
    return TollDetector(steps=20, eval_every=20, hidden=(16,), z_dim=4).fit(X8)


def test_unscorable_input_is_anomalous_with_a_warning_naming_the_rows(small):
    X = np.concatenate([X8[:2], UNSCORABLE])
    with pytest.warns(RuntimeWarning, match=r"3 rows of X get non-finite scores \(rows \[2, 3, 4\]"):
        scores = small.score_samples(X)
    assert np.isfinite(scores[:2]).all() and np.all(scores[2:] == np.inf)  # was [nan nan nan]
    with pytest.warns(RuntimeWarning, match="scored as \\+inf"):
        pred = small.predict(X)
    np.testing.assert_array_equal(pred[2:], [1, 1, 1])  # was [0 0 0]: called normal
    with pytest.warns(RuntimeWarning):
        assert np.all(small.decision_function(UNSCORABLE) == np.inf)


def test_threshold_from_unscorable_rows_is_an_error_and_keeps_the_state(small):
    det = TollDetector(**small.get_params()).fit(X8)
    before, threshold = det.score_samples(X8), det.threshold_
    X_val = np.concatenate([X8[:5], UNSCORABLE])
    y_val = np.array([0] * 5 + [1] * 3)
    det.set_params(selection="loss", threshold="val_f1")  # selects on the 5 normal rows only
    with pytest.raises(TollError, match=r"non-finite scores to 3 rows of X_val \(rows \[5, 6, 7"):
        det.fit(X8, X_val=X_val, y_val=y_val)
    np.testing.assert_array_equal(det.score_samples(X8), before)  # the old model is kept
    assert det.threshold_ == threshold


def test_unscorable_selection_rows_are_named_when_no_checkpoint_can_be_selected(small):
    # Every checkpoint's AUROC on X_val is NaN (rows 5-7 overflow), while the loss is finite.
    det = TollDetector(**{**small.get_params(), "selection": "auroc"})
    X_val = np.concatenate([X8[:5], UNSCORABLE])
    with pytest.raises(TollError, match=r"no checkpoint could be selected: none had a finite "
                       r"AUROC on the selection rows: the model gives non-finite scores to 3 "
                       r"rows of X_val \(rows \[5, 6, 7\]\)"):
        det.fit(X8, X_val=X_val, y_val=np.array([0] * 5 + [1] * 3))
    # selection='loss' scores the normal rows of X_val only: indices are X_val's, not theirs.
    det.set_params(selection="loss")
    X_val = np.concatenate([UNSCORABLE[:1], X8[:2], UNSCORABLE[1:]])
    with pytest.raises(TollError, match=r"finite mean held-out score on the selection rows: the "
                       r"model gives non-finite scores to 2 rows of X_val \(rows \[0, 3\]\)"):
        det.fit(X8, X_val=X_val, y_val=np.array([0, 0, 0, 0, 1]))
    # Label-free: the held-out rows of X select; row numbers are X's.
    held_out = np.sort(np.random.default_rng(0).permutation(50)[:10])  # val_fraction 0.2, seed 0
    X = X8.copy()
    X[held_out[3]] = UNSCORABLE[0]
    with pytest.raises(TollError, match=rf"to 1 rows of X \(rows \[{held_out[3]}\]\)"):
        det.fit(X)
    assert not hasattr(det, "threshold_") and not hasattr(det, "variables_")  # nothing fitted


def test_divergence_after_a_checkpoint_keeps_the_best_checkpoint_before_it():
    # Row 50 is finite but so large that any batch holding it makes the BatchNorm statistics,
    # and so the loss, non-finite: training fails at the first step that draws it.
    X = np.concatenate([X8, np.full((1, 8), 1e30, np.float32)])
    params = dict(steps=40, eval_every=1, hidden=(16,), z_dim=4, batch_size=4, selection="loss",
                  threshold=1.0)
    det = TollDetector(**params)
    with pytest.warns(RuntimeWarning, match=r"the loss became non-finite at step (\d+); kept "
                      r"the best checkpoint before it \(step (\d+)\)") as record:
        det.fit(X, X_val=X8[:10])
    bad, best = det.nonfinite_step_, det.best_step_
    # Only our RuntimeWarning: an older flax adds DeprecationWarnings of its own to the record.
    (ours,) = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert f"step {bad}; kept the best checkpoint before it (step {best})" in ours

    # The reported step is the first whose batch draws row 50 (same keys as the fit).
    keys = checkpoint_keys(jax.random.split(jax.random.key(0))[1], 40, 1).reshape(40)
    holds_row_50 = [bool((sample_batch_indices(k, 51, 51, 4) == 50).any()) for k in keys]
    assert 1 < bad == holds_row_50.index(True) + 1
    # Nothing from the failed step on is selected or reported as a loss.
    assert det.history_["train_loss"][bad - 1:] == [None] * (40 - bad + 1)
    assert det.history_["selection"][bad - 1:] == [None] * (40 - bad + 1)
    # The kept checkpoint is the best before the failure (lowest mean held-out score) ...
    before = det.history_["selection"][:bad - 1]
    assert best == 1 + int(np.argmin(before)) and best < bad
    # ... and is that step's model: a fit stopped just before the failing step (same seed, same
    # draws, so it never draws row 50) selects the same checkpoint and scores alike. Stopped at
    # ``bad - 1`` rather than at ``best``: with jax 0.12 a one-step fit (best is step 1 here)
    # compiles to loop-free code that XLA fuses, and so rounds, differently (3e-4 relative).
    assert bad - 1 > 1
    stopped = TollDetector(**{**params, "steps": bad - 1}).fit(X, X_val=X8[:10])
    assert stopped.nonfinite_step_ == -1 and stopped.best_step_ == best
    assert stopped.history_["selection"] == before
    np.testing.assert_array_equal(det.score_samples(X8), stopped.score_samples(X8))


def test_failure_after_an_unselectable_checkpoint_is_not_called_before_the_first():
    # Step 1 is a checkpoint whose held-out scores are already non-finite; the loss follows at
    # step 2. The message used to say "before the first checkpoint".
    det = TollDetector(lr=1e7, beta=100.0, steps=10, eval_every=1, hidden=(8,), z_dim=2)
    with pytest.raises(TollError, match="training failed before any checkpoint had a finite "
                                        "selection value: the loss became non-finite at step 2"):
        det.fit(X8)


def test_save_to_an_unusable_path_is_a_toll_error(small, tmp_path):
    (tmp_path / "a-file").write_text("")
    paths = [tmp_path / "a-file" / "sub"] + ([Path("/proc/foo")] if Path("/proc").is_dir() else [])
    for path in paths:  # were NotADirectoryError / FileNotFoundError
        with pytest.raises(TollError, match="TollDetector.save: folder .*cannot create the folder"):
            small.save(path)



@pytest.mark.parametrize("name", ["toll[beta=10]", "a\\b", "[x]-*?", "gs:/d"])
def test_save_to_oddly_named_folders_loads_back(small, tmp_path, name):
    # Were saved "successfully" with an unfinished orbax checkpoint (orbax globs the folder to
    # finish it), which load() then called damaged; "a\\b" also left a stray a/b/ folder and
    # could not be restored (tensorstore opened a/b); "gs:" was a KeyError traceback.
    path = small.save(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name.split("/")[0]]
    np.testing.assert_array_equal(TollDetector.load(path).score_samples(X8),
                                  small.score_samples(X8))


def test_a_failed_overwrite_keeps_the_saved_detector(small, tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    path = small.save(tmp_path / "d")
    other = TollDetector(steps=20, eval_every=20, hidden=(16,), z_dim=4, seed=1).fit(X8)

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", disk_full)
    with pytest.raises(TollError, match="cannot write the detector to .*No space left on device"):
        other.save(path, overwrite=True)
    monkeypatch.undo()
    np.testing.assert_array_equal(TollDetector.load(path).score_samples(X8),
                                  small.score_samples(X8))  # was removed before the write
    # and an overwrite that succeeds replaces it
    np.testing.assert_array_equal(TollDetector.load(other.save(path, overwrite=True))
                                  .score_samples(X8), other.score_samples(X8))

def test_an_overwrite_that_fails_while_copying_in_keeps_the_saved_detector(small, tmp_path,
                                                                           monkeypatch):
    # The new files are staged in the system temp folder; where the target is on another
    # filesystem, moving them in is a copy, and on a full target disk that copy failed after
    # the old detector had been deleted (it no longer loaded, a half-written variables/ was
    # left, and the message listed every file: ~2,000 characters).
    path = small.save(tmp_path / "d")
    before = sorted(p.name for p in path.iterdir())
    other = TollDetector(steps=20, eval_every=20, hidden=(16,), z_dim=4, seed=1).fit(X8)

    def full_disk(src, dst, *args, **kwargs):
        Path(dst).mkdir()
        (Path(dst) / "part").write_text("x")  # half written
        raise shutil.Error([(f"{src}/f{i}", f"{dst}/f{i}", "[Errno 28] No space left on device")
                            for i in range(5)])

    monkeypatch.setattr(shutil, "copytree", full_disk)
    with pytest.raises(TollError) as error:
        other.save(path, overwrite=True)
    message = str(error.value)
    assert "No space left on device (and 4 more files)" in message and len(message) < 300
    monkeypatch.undo()
    assert sorted(p.name for p in path.iterdir()) == before  # nothing left behind
    np.testing.assert_array_equal(TollDetector.load(path).score_samples(X8),
                                  small.score_samples(X8))


def test_an_overwrite_that_fails_while_swapping_puts_the_old_detector_back(small, tmp_path,
                                                                           monkeypatch):
    path = small.save(tmp_path / "d")
    other = TollDetector(steps=20, eval_every=20, hidden=(16,), z_dim=4, seed=1).fit(X8)
    rename = Path.rename

    def fail_on_the_config(self, target):  # the new variables/ are in, the config is not
        if Path(target) == path / "toll_detector.json" and ".tolljax-incoming-" in str(self):
            raise OSError(5, "Input/output error")
        return rename(self, target)

    retired = []

    def fail_while_retiring(self, target):  # one old entry moved aside, the second fails
        if ".tolljax-old-" in str(target):
            retired.append(self)
            if len(retired) == 2:
                raise OSError(5, "Input/output error")
        return rename(self, target)

    for failing in (fail_on_the_config, fail_while_retiring):
        monkeypatch.setattr(Path, "rename", failing)
        with pytest.raises(TollError, match="Input/output error"):
            other.save(path, overwrite=True)
        monkeypatch.undo()
        assert sorted(p.name for p in path.iterdir()) == ["toll_detector.json", "variables"]
        np.testing.assert_array_equal(TollDetector.load(path).score_samples(X8),
                                      small.score_samples(X8))


def _edit_saved(path, edit) -> None:
    config = path / "toll_detector.json"
    payload = json.loads(config.read_text())
    edit(payload)
    config.write_text(json.dumps(payload))


@pytest.mark.parametrize("edit, message", [
    # was a flax ScopeParamShapeError at the first score_samples()
    (lambda p: p.update(input_shape=[9]),
     r"input_shape \[9\] and hyperparameters do not match the weights in variables/ "
     r"\(.*saved \(8,\), expected \(9,\)\)"),
    (lambda p: (p["hyperparameters"].update(z_dim=5), p["fit_params"].update(z_dim=5)),
     r"do not match the weights in variables/"),
    (lambda p: p.update(threshold="abc"), "field 'threshold' must be a finite number, got 'abc'"),
    (lambda p: p.update(threshold=None), "field 'threshold' must be a finite number"),
    (lambda p: p.update(mean=[0.0] * 7, scale=[1.0] * 8),
     "field 'mean' must be null or a list of 8 finite float32 numbers"),
    (lambda p: p.update(mean=[0.0] * 8, scale=[0.0] * 8),
     "field 'scale' must hold positive float32 numbers"),
    (lambda p: p.update(mean=[0.0] * 8), "field 'scale' is null but the other"),
    (lambda p: p["hyperparameters"].pop("beta"), "field 'hyperparameters.beta' is missing"),
    (lambda p: p["hyperparameters"].update(beta=-1),
     "field 'hyperparameters.beta' must be a non-negative"),
    (lambda p: p["hyperparameters"].update(norm="fro"),
     "field 'hyperparameters.norm' must be 1, 2 or inf"),
    (lambda p: p["hyperparameters"].update(hidden=[]),
     "field 'hyperparameters.hidden' must be a non-empty"),
    (lambda p: p.update(model_name="resnet"), "field 'model_name' must be one of"),
    (lambda p: p.update(input_shape=[28, 28, 1]), r"field 'input_shape' must be \[n_features\]"),
    (lambda p: p.update(input_shape="8"),
     "field 'input_shape' must be a list of positive integers"),
    (lambda p: p.update(selection="best"), "field 'selection' must be one of f1, auroc, loss"),
    (lambda p: p.update(best_step="20"), "field 'best_step' must be an integer"),
    (lambda p: p.pop("history"), "field 'history' is missing"),
    # were accepted (load checked only that history was an object)
    (lambda p: p.update(best_step=-5), "field 'best_step' must be an integer >= 20"),
    (lambda p: p.update(best_step=30), "field 'best_step' must be a checkpoint step"),
    (lambda p: p.update(nonfinite_step=-7), "field 'nonfinite_step' must be an integer >= -1"),
    (lambda p: p.update(nonfinite_step=p["best_step"]),
     "field 'nonfinite_step' must be -1 or a step after best_step"),
    (lambda p: p["history"].pop("train_loss"), "field 'history' must be an object with step"),
    (lambda p: p["history"].update(step=[10]), "field 'history.step' must be the checkpoint steps"),
    (lambda p: p["history"].update(selection=[]),
     "field 'history.selection' must be a list of 1 entries, each a finite number"),
    (lambda p: p["history"].update(train_loss=["1.0"]),
     "field 'history.train_loss' must be a list of 1 entries"),
    (lambda p: p["params"].update(seed=-3), "field 'params' is invalid \\(seed must be"),
    (lambda p: p["params"].update(gamma=1), r"field 'params' has unknown entries \['gamma'\]"),
    (lambda p: p["fit_params"].update(seed=-3), "field 'fit_params' is invalid \\(seed must be"),
    (lambda p: p.pop("fit_params"), "field 'fit_params' is missing"),
    # was a KeyError from the handler of the missing field's own error
    (lambda p: p["hyperparameters"].pop("norm"), "field 'hyperparameters.norm' is missing"),
    # were OverflowError
    (lambda p: p.update(threshold=10**400), "field 'threshold' must be a finite number"),
    (lambda p: p["hyperparameters"].update(beta=10**400),
     "field 'hyperparameters.beta' must be a non-negative number"),
    # were accepted, and every score became +inf in float32
    (lambda p: p["hyperparameters"].update(beta=1e300),
     "field 'hyperparameters.beta' is unusable: beta=1e[+]?300 is beyond the float32 range"),
    (lambda p: p.update(mean=[1e300] * 8, scale=[1.0] * 8),
     "field 'mean' must be null or a list of 8 finite float32 numbers"),
    (lambda p: p.update(mean=[0.0] * 8, scale=[1e-300] * 8),
     "field 'scale' must hold positive float32 numbers"),
    # the fit's arguments and the saved model disagreeing were accepted (get_params() then
    # misdescribed it)
    (lambda p: p["fit_params"].update(z_dim=7),
     "field 'hyperparameters.z_dim' is 4 but the saved fit_params give 7"),
    (lambda p: p["fit_params"].update(beta=3.0),
     "field 'hyperparameters.beta' is 10.0 but the saved fit_params give 3.0"),
    (lambda p: p["fit_params"].update(model="mnist"),
     "field 'fit_params' do not fit the saved model"),
    (lambda p: p["fit_params"].update(standardize=True),
     "field 'fit_params' say standardize=True but mean and scale are null"),
    (lambda p: p["fit_params"].update(batch_size=64),
     "field 'hyperparameters.batch_size' is 40 but the saved fit_params give 64"),
    # a version 1 file has no fit_params: its params are the fit's, and are checked as such
    (lambda p: (p.pop("fit_params"), p.update(format_version=1), p["params"].update(beta=3.0)),
     "field 'hyperparameters.beta' is 10.0 but the saved params give 3.0"),
])
def test_load_of_an_edited_file_names_the_file_and_field(small, tmp_path, edit, message):
    path = small.save(tmp_path / "d")
    _edit_saved(path, edit)
    with pytest.raises(TollError, match=message) as err:
        TollDetector.load(path)
    assert str(path / "toll_detector.json") in str(err.value) and "\n" not in str(err.value)
    # once: a bad beta/lr named the file and field twice and repeated the advice
    assert str(err.value).count(str(path / "toll_detector.json")) == 1


def test_bfloat16_and_unmasked_input_score_as_float32(small):
    import ml_dtypes

    X = X8[:6].astype(ml_dtypes.bfloat16)  # was "has dtype bfloat16; pass a floating-point ..."
    np.testing.assert_array_equal(small.score_samples(X),
                                  small.score_samples(X.astype(np.float32)))
    np.testing.assert_array_equal(small.score_samples(np.ma.masked_array(X8[:6])),
                                  small.score_samples(X8[:6]))


def test_load_of_an_unedited_small_detector_scores_the_same(small, tmp_path):
    back = TollDetector.load(small.save(tmp_path / "d"))
    assert np.array_equal(back.score_samples(X8), small.score_samples(X8))


def test_set_params_after_fit_saves_loads_and_applies_at_the_next_fit(small, tmp_path):
    # Was: saved without error, then load refused the file ("hyperparameters.beta is 10.0 but
    # the saved params give 5.0"), after overwrite=True had removed the good one.
    det = TollDetector.load(small.save(tmp_path / "d"))
    before = det.score_samples(X8)
    changed = dict(beta=5.0, lr=3e-3, z_dim=3, hidden=(8,), steps=10, eval_every=5, norm=1,
                   init="flax", batch_size=8, standardize=True, model="mlp", seed=7)
    det.set_params(**changed)
    back = TollDetector.load(det.save(tmp_path / "d", overwrite=True))
    assert back.get_params() == det.get_params() and back.get_params()["beta"] == 5.0
    assert back.hyperparameters_ == small.hyperparameters_  # the saved model, as fitted
    np.testing.assert_array_equal(back.score_samples(X8), before)
    # ... and saved again, it still records the fit's own arguments.
    again = TollDetector.load(back.save(tmp_path / "e"))
    np.testing.assert_array_equal(again.score_samples(X8), before)
    # The changed arguments are those of the next fit.
    again.fit(X8)
    assert again.hyperparameters_["beta"] == 5.0 and again.hyperparameters_["hidden"] == [8]
    assert again.mean_ is not None and again.best_step_ <= 10


def test_weights_of_another_detector_or_damaged_ones_are_refused(small, tmp_path, capfd):
    # Another fit's variables/ under this toll_detector.json loaded and scored differently; a
    # truncated file was refused, with orbax's "Event loop is closed" tracebacks beside it.
    import shutil

    path = small.save(tmp_path / "t")
    (path / "variables" / ".DS_Store").write_bytes(b"a file manager's")  # no damage
    np.testing.assert_array_equal(TollDetector.load(path).score_samples(X8),
                                  small.score_samples(X8))
    for file in (path / "variables").rglob("d/*"):
        file.write_bytes(file.read_bytes()[:file.stat().st_size // 2])
    capfd.readouterr()
    with pytest.raises(TollError, match=r"variables is not the checkpoint saved with .*"
                                        r"toll_detector.json \(the SHA-256 of its files differs"):
        TollDetector.load(path)
    assert capfd.readouterr().err == ""

    other = TollDetector(**{**small.get_params(), "seed": small.get_params()["seed"] + 1})
    other.fit(X8)
    path, theirs = small.save(tmp_path / "d"), other.save(tmp_path / "e")
    shutil.rmtree(path / "variables")
    shutil.copytree(theirs / "variables", path / "variables")
    with pytest.raises(TollError, match=r"variables is not the checkpoint saved with "):
        TollDetector.load(path)
    # A save from before the checksum (no such field) loads as it is.
    _edit_saved(path, lambda p: p.pop("variables_sha256"))
    np.testing.assert_array_equal(TollDetector.load(path).score_samples(X8),
                                  other.score_samples(X8))


def test_a_version_1_file_loads_with_its_params_as_the_fits(small, tmp_path):
    path = small.save(tmp_path / "d")
    _edit_saved(path, lambda p: (p.pop("fit_params"), p.update(format_version=1)))
    back = TollDetector.load(path)
    assert back.get_params() == small.get_params()
    np.testing.assert_array_equal(back.score_samples(X8), small.score_samples(X8))


def test_scoring_data_with_other_features_names_both_shapes(labelled, arrhythmia):
    with pytest.raises(TollError, match=r"X has shape \(5, 273\) but the detector was fitted on "
                                        r"samples of shape \(274,\)"):
        labelled.score_samples(arrhythmia.test_x[:5, :273])
    with pytest.raises(TollError, match="NaN/inf"):
        labelled.predict(np.full((2, 274), np.nan))


def test_load_messages(tmp_path, labelled):
    with pytest.raises(TollError, match="no saved TollDetector in .*pass the folder given to save"):
        TollDetector.load(tmp_path / "nowhere")
    path = labelled.save(tmp_path / "d")
    payload = json.loads((path / "toll_detector.json").read_text())
    (path / "toll_detector.json").write_text(json.dumps({**payload, "format_version": 99}))
    with pytest.raises(TollError, match="newer tolljax"):
        TollDetector.load(path)
    for version in (None, "2", 0.5, True, 0):  # were all accepted
        (path / "toll_detector.json").write_text(json.dumps({**payload, "format_version": version}))
        with pytest.raises(TollError, match="damaged or not a saved TollDetector .*format_version"):
            TollDetector.load(path)
    (path / "toll_detector.json").write_text("{broken")
    with pytest.raises(TollError, match="damaged or not a saved TollDetector"):
        TollDetector.load(path)
    for bad in (None, 5, ""):  # were TypeError from pathlib
        with pytest.raises(TollError, match=r"TollDetector.load: path must be a folder path"):
            TollDetector.load(bad)
        with pytest.raises(TollError, match=r"TollDetector.save: path must be a folder path"):
            labelled.save(bad)


def test_exported_from_the_package():
    assert tolljax.TollDetector is TollDetector and "TollDetector" in tolljax.__all__


def test_best_f1_threshold_ties_of_f1_go_to_the_higher_threshold():
    # flag the top 1: F1 = 2·1/(1 + 2) = 2/3; top 2: 1/2; top 3: 2/5; all 4: 2·2/(4 + 2) = 2/3.
    # The tie (2/3) goes to the higher threshold, between 4 and 3 (fewer flagged).
    t, f1 = _best_f1_threshold(np.array([4.0, 3.0, 2.0, 1.0], np.float32), np.array([1, 0, 0, 1]))
    assert f1 == pytest.approx(2 / 3) and t == 3.5


def test_a_score_equal_to_the_threshold_is_not_flagged(labelled, arrhythmia):
    import copy

    det = copy.copy(labelled)  # the module fixture itself stays as it was
    x = arrhythmia.test_x[:3]
    det.threshold_ = float(det.score_samples(x)[0])  # exactly the first sample's score
    assert det.decision_function(x)[0] == 0.0
    assert det.predict(x)[0] == 0  # flagged only when strictly above


def test_label_free_holdout_is_the_rounded_val_fraction():
    # 8 rows, val_fraction 0.2: round(1.6) = 2 held out, so 6 training rows bound the batch
    det = TollDetector(steps=20, eval_every=20, hidden=(16,), z_dim=4).fit(X8[:8])
    assert det.hyperparameters_["batch_size"] == 6


def test_standardize_images_per_channel():
    # Images are standardised per channel (mean/std over samples and pixels): one mean and
    # one scale for a grayscale image, not one per pixel.
    rng = np.random.default_rng(0)
    X = (3.0 + 2.0 * rng.standard_normal((8, 28, 28, 1))).astype(np.float32)
    det = TollDetector(steps=2, eval_every=2, batch_size=4, standardize=True).fit(X)
    assert det.mean_.shape == (1,) and det.scale_.shape == (1,)
    np.testing.assert_allclose(det.mean_, [X.astype(np.float64).mean()], rtol=1e-6)
    np.testing.assert_allclose(det.scale_, [X.astype(np.float64).std()], rtol=1e-6)


def test_standardize_uses_the_population_std(label_free, arrhythmia):
    # numpy's default std (ddof=0), as scikit-learn's StandardScaler
    std = arrhythmia.train.astype(np.float64).std(axis=0)
    np.testing.assert_allclose(label_free.scale_[std > 0], std[std > 0], rtol=1e-5)
