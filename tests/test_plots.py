import json
import shutil

import numpy as np
import pytest

from experiments import plots
from experiments.plots import (class_tag, load_scores, main, make_plots, roc_curve,
                               save_scores)
from experiments.run import main as run_main
from tolljax.errors import TollError
from tolljax.metrics import auroc

FIGURES = ("val_curve", "loss_curve", "paper_bars", "roc", "score_hist")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real (short) Arrhythmia run of the CLI: results.json (+ scores.npz if the CLI writes it)."""
    out = tmp_path_factory.mktemp("run")
    assert run_main(["--steps", "40", "--seeds", "2", "--out", str(out), "--quiet"]) == 0
    return out


def _fake_results(path, classes=range(10), seeds=3, checkpoints=8, with_scores=True):
    """A multi-class results.json in the CLI's schema (MNIST-like), seed 1 of class 2 failed."""
    rng = np.random.default_rng(0)
    runs = []
    for c in classes:
        val = 90 + 5 * rng.random((seeds, checkpoints))
        test = list(95 + 4 * rng.random(seeds))
        loss = np.linspace(50, 5, checkpoints) * (1 + 0.1 * rng.random((seeds, 1)))
        best = [int((np.argmax(v) + 1) * 20) for v in val]
        val = val.round(4).tolist()
        if c == 2:
            val[1][3:] = [None] * (checkpoints - 3)
            test[1] = None
        runs.append({"normal_class": c, "seeds": list(range(seeds)), "test_metric": test,
                     "best_step": best, "best_val_metric": [max(v for v in row if v is not None)
                                                            for row in val],
                     "val_curve": val, "loss_curve": loss.tolist(),
                     "mean": float(np.mean([t for t in test if t is not None])), "std": 1.0,
                     "paper": [99.8, 99.9, 96.2, 97.9, 97.8, 98.1, 99.5, 98.7, 97.3, 98.5][c],
                     "paper_source": "Table 1"})
        if with_scores:
            labels = (rng.random(200) < 0.3).astype(np.int32)
            labels[:2] = [0, 1]
            scores = rng.normal(size=(seeds, 200)) + 2.0 * labels
            save_scores(path, c, scores, labels)
    results = {"config": {"dataset": "mnist", "beta": 1000.0, "z_dim": 128, "lr": 1e-4,
                          "batch_size": 1000, "steps": 20 * checkpoints, "eval_every": 20,
                          "paper_protocol": False},
               "metric": "auroc", "runs": runs,
               "summary": {"mean": 97.0, "std": 1.0, "paper": 98.4, "paper_source": "Table 1"}}
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(results))
    return results


def _assert_figures(out, names):
    for name in names:
        for fmt in ("png", "pdf"):
            f = out / f"{name}.{fmt}"
            assert f.is_file() and f.stat().st_size > 1000, f
    png = (out / f"{names[0]}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / f"{names[0]}.pdf").read_bytes()[:5] == b"%PDF-"


def test_cli_on_a_real_run_with_fake_scores(run_dir, tmp_path, capsys):
    work = tmp_path / "res"
    shutil.copytree(run_dir, work)
    (work / "scores.npz").unlink(missing_ok=True)  # replace the CLI's file by a fake one
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(77, int), np.ones(13, int)]
    save_scores(work, None, rng.normal(size=(2, 90)) + labels, labels)
    assert main([str(work)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 10 files" in printed and "note:" not in printed
    _assert_figures(work / "plots", FIGURES)


def test_without_scores_the_roc_and_histograms_are_skipped_with_a_note(run_dir, tmp_path, capsys):
    work = tmp_path / "res"
    work.mkdir()
    shutil.copy(run_dir / "results.json", work / "results.json")
    assert main([str(work), "--out", str(tmp_path / "figs"), "--formats", "png,pdf"]) == 0
    printed = capsys.readouterr().out
    assert "note:" in printed and "scores.npz not found" in printed and "ROC" in printed
    _assert_figures(tmp_path / "figs", FIGURES[:3])
    assert not (tmp_path / "figs" / "roc.png").exists()


def test_multiclass_results_with_a_failed_seed(tmp_path):
    _fake_results(tmp_path / "res")
    paths = make_plots(tmp_path / "res", log=lambda *a: None)
    assert {p.stem for p in paths} == set(FIGURES) and len(paths) == 10


def test_failed_seeds_are_left_out_of_the_roc_and_histogram(tmp_path, monkeypatch):
    # Were drawn with an AUROC, and a failed seed could be the histogram's "median" one; a run
    # whose seeds all failed showed "AUROC 66.2 ± 4.4 %".
    results = _fake_results(tmp_path / "res", classes=range(3))
    results["runs"][0]["test_metric"] = [None] * 3  # class 0: every seed failed
    (tmp_path / "res" / "results.json").write_text(json.dumps(results))
    scores = load_scores(tmp_path / "res")
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, out, name, formats: figures.update({name: fig}))
    plots.plot_roc(results, scores, tmp_path / "p")
    plots.plot_histograms(results, scores, tmp_path / "p")
    roc, hist = figures["roc"].axes, figures["score_hist"].axes

    assert "every seed failed" in roc[0].texts[0].get_text() and not roc[0].lines
    assert "every seed failed" in hist[0].texts[0].get_text() and not hist[0].patches
    # class 2: seed 1 failed; the others' curves and the mean over them, as the tables
    s, y = scores["2"]
    areas = [roc_curve(s[k], y)[2] for k in (0, 2)]
    assert [line.get_label() for line in roc[2].lines][:2] == [
        f"seed {k}: AUROC {100 * a:.1f}" for k, a in zip((0, 2), areas)]
    assert roc[2].get_title().endswith(f"AUROC {100 * np.mean(areas):.1f} ± "
                                       f"{100 * np.std(areas):.1f} % (1 failed seed left out)")
    assert f"seed {(0, 2)[int(np.argmin(areas))]} (median AUROC" in hist[2].get_title()
    # class 1: nothing failed, all three seeds
    assert len(roc[1].lines) == 4 and "left out" not in roc[1].get_title()


def test_non_finite_scores_of_a_seed_with_a_metric_are_refused(tmp_path, capsys):
    results = _fake_results(tmp_path / "res", classes=range(3))
    for c in (0, 2):
        scores, labels = load_scores(tmp_path / "res")[str(c)]
        scores = scores.copy()
        scores[1, :5] = np.nan  # class 2's seed 1 failed (no test metric): its NaNs are fine
        save_scores(tmp_path / "res", c, scores, labels)
    # class 0's seed 1 reports a metric: its ROC was drawn with NaN ranked lowest, a made-up
    # AUROC beside the table's
    assert main([str(tmp_path / "res"), "--formats", "png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: scores.npz: class 0, seed(s) [1]: NaN/inf scores for a seed with a "
                   "test metric in results.json; they come from different runs or were edited: "
                   "re-run python -m experiments.run")
    results["runs"][0]["test_metric"][1] = None  # as the CLI writes a failed seed
    (tmp_path / "res" / "results.json").write_text(json.dumps(results))
    assert main([str(tmp_path / "res"), "--formats", "png"]) == 0


def test_missing_class_in_scores_is_noted(tmp_path):
    _fake_results(tmp_path / "res", classes=range(3), with_scores=False)
    save_scores(tmp_path / "res", 1, np.array([[0.1, 0.9, 0.3]] * 3), np.array([0, 1, 0]))
    notes = []
    paths = make_plots(tmp_path / "res", formats=["png"], log=notes.append)
    assert any("class(es) 0, 2" in n for n in notes)
    assert (tmp_path / "res" / "plots" / "roc.png").is_file() and len(paths) == 5


def test_save_scores_merges_classes_and_roundtrips(tmp_path):
    s0, y0 = np.array([[0.1, 0.5, 0.9], [0.2, 0.4, 0.8]]), np.array([0, 0, 1])
    save_scores(tmp_path, 0, s0, y0)
    save_scores(tmp_path, None, np.array([1.0, 2.0]), np.array([1, 0]))  # one seed, 1-D
    save_scores(tmp_path, 0, s0 * 2, y0)  # replaces class 0
    got = load_scores(tmp_path)
    assert set(got) == {"0", "all"} and class_tag(None) == "all"
    np.testing.assert_array_equal(got["0"][0], (s0 * 2).astype(np.float32))
    np.testing.assert_array_equal(got["0"][1], y0)
    assert got["all"][0].shape == (1, 2)
    assert not list(tmp_path.glob("*.tmp.npz"))


def test_roc_area_matches_the_library_auroc_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 300).astype(np.float32)  # many ties
    labels = (rng.random(300) < 0.4).astype(np.int32)
    fpr, tpr, area = roc_curve(scores, labels)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert area == pytest.approx(float(auroc(scores, labels)), abs=1e-6)


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "results.json not found"),
    (lambda d: (d / "results.json").write_text("{not json"), "cannot read"),
    (lambda d: (d / "results.json").write_text('{"config": {}}'), "lacks"),
    # the other runners' folders and the file itself were "not written by (this version of)
    # python -m experiments.run" and "results folder not found"
    (lambda d: (d / "results.json").write_text('{"config": {}, "metric": "auroc", '
                                               '"per_beta": []}'),
     "holds a β sweep (python -m experiments.beta_sweep), whose figure is beta_sweep.png"),
    (lambda d: (d / "results.json").write_text('{"config": {}, "runs": [{"normal_class": 8, '
                                               '"by_weight": {}}]}'),
     "holds a collapse demo (python -m experiments.collapse_demo)"),
    (lambda d: [(d / "results.json").write_text("{}"), "results.json"][1],
     "results.json is a file; pass the folder that holds it ("),
])
def test_bad_results_folder_messages(tmp_path, capsys, setup, message):
    name = setup(tmp_path)
    assert main([str(tmp_path / name) if isinstance(name, str) else str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_bad_inputs_raise_toll_errors(tmp_path):
    with pytest.raises(TollError, match="results folder not found"):
        make_plots(tmp_path / "nowhere")
    _fake_results(tmp_path / "res", classes=[0], with_scores=False)
    with pytest.raises(TollError, match="unknown figure format"):
        make_plots(tmp_path / "res", formats=["gif"])
    with pytest.raises(TollError, match=r"expected labels of shape \(3,\)"):
        save_scores(tmp_path, 0, np.zeros((2, 3)), np.zeros(4))
    with pytest.raises(TollError, match="0 \\(normal\\) or 1"):
        save_scores(tmp_path, 0, np.zeros((2, 3)), np.array([0, 2, 1]))
    (tmp_path / "res" / plots.SCORES_FILE).write_bytes(b"garbage")
    with pytest.raises(TollError, match="cannot read"):
        load_scores(tmp_path / "res")
    with pytest.raises(TollError, match="labels for class 0 are all 0; the test set needs"):
        save_scores(tmp_path, 0, np.zeros((2, 3)), np.zeros(3))


@pytest.mark.parametrize("arrays, message", [
    # was "ValueError: could not convert string to float" from NumPy
    (dict(scores_0=np.array([["a", "b", "c"]]), labels_0=np.array([0, 1, 0])),
     "scores for class 0 have dtype <U1; expected numbers"),
    (dict(scores_0=np.zeros((3, 3)), labels_0=np.array(["0", "1", "0"])),
     "labels for class 0 have dtype <U1; expected numbers"),
    # scores of 3 seeds beside a results.json of 1 seed were plotted as if they matched
    (dict(scores_0=np.zeros((3, 3)), labels_0=np.array([0, 1, 0])),
     "scores.npz has scores of 3 seeds for class 0, results.json 1"),
])
def test_scores_file_that_does_not_fit_is_one_line(tmp_path, capsys, arrays, message):
    _fake_results(tmp_path / "res", classes=[0], seeds=1, with_scores=False)
    np.savez(tmp_path / "res" / plots.SCORES_FILE, **arrays)
    assert main([str(tmp_path / "res"), "--formats", "png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("edit, field", [
    (lambda r: r["runs"][0].update(val_curve="abc"), "runs[0].val_curve"),
    (lambda r: r["runs"][0].update(val_curve=[[90.0, 91.0], [90.0]]), "runs[0].val_curve"),
    (lambda r: r["runs"][0].update(val_curve=[]), "runs[0].val_curve"),
    (lambda r: r["runs"][0].update(loss_curve=[[1.0, "x"]]), "runs[0].loss_curve"),
    (lambda r: r["runs"][0].update(test_metric="abc"), "runs[0].test_metric"),
    (lambda r: r["runs"][0].update(best_step=[20, [40]]), "runs[0].best_step"),
    (lambda r: r["runs"][0].update(best_val_metric=[90.0]), "runs[0].best_val_metric"),
    (lambda r: r["runs"][0].update(normal_class="a"), "runs[0].normal_class"),
    (lambda r: r["runs"][0].update(paper="high"), "runs[0].paper"),
    (lambda r: r["config"].update(beta="abc"), "config.beta"),
    (lambda r: r.update(metric=["auroc"]), "metric"),
    (lambda r: r.update(runs=5), "runs"),
    (lambda r: r["runs"].__setitem__(0, "abc"), "runs[0]"),
    # these were plotted without a word: curves of fewer seeds, curves on other checkpoints,
    # negative or fractional step axes
    (lambda r: r["runs"][0].update(val_curve=r["runs"][0]["val_curve"][:1]), "runs[0].val_curve"),
    (lambda r: r["runs"][0].update(loss_curve=[row[:-1] for row in r["runs"][0]["loss_curve"]]),
     "runs[0].loss_curve"),
    (lambda r: r["runs"][0].update(test_metric=r["runs"][0]["test_metric"][:2]),
     "runs[0].test_metric"),
    (lambda r: r["config"].update(eval_every=-20), "config.eval_every"),
    (lambda r: r["config"].update(eval_every=0.5), "config.eval_every"),
])
def test_hand_edited_results_name_the_file_and_field(tmp_path, capsys, edit, field):
    """A results.json the plots cannot use fails as one line naming the file and the field,
    not as an error from inside NumPy/matplotlib."""
    results = _fake_results(tmp_path / "res", classes=[0], with_scores=False)
    edit(results)
    (tmp_path / "res" / "results.json").write_text(json.dumps(results))
    assert main([str(tmp_path / "res"), "--formats", "png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'res' / 'results.json'}: {field} must be ")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("out, message", [
    ("FILE", "is a file, not a folder"),
    ("/proc/nope", "--out /proc/nope: cannot create the folder"),
])
def test_unusable_out_folder_is_one_line(tmp_path, capsys, out, message):
    _fake_results(tmp_path / "res", classes=[0], with_scores=False)
    (tmp_path / "file").write_text("")
    out = str(tmp_path / "file") if out == "FILE" else out
    assert main([str(tmp_path / "res"), "--out", out, "--formats", "png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def _figures(monkeypatch, tmp_path, edit=None, classes=(0,)):
    """make_plots on a fake run (``edit`` applied to its results.json); the drawn figures by
    name, captured instead of saved."""
    results = _fake_results(tmp_path / "res", classes=classes)
    if edit:
        edit(results)
    (tmp_path / "res" / "results.json").write_text(json.dumps(results))
    figs = {}

    def keep(fig, out_dir, name, formats):
        figs[name] = fig
        return []

    monkeypatch.setattr(plots, "_save", keep)
    make_plots(tmp_path / "res", formats=["png"], log=lambda *a: None)
    return figs


@pytest.mark.parametrize("norm, latent", [("1", "β‖z‖₁"), ("inf", "β‖z‖∞"), ("2", "β‖z‖₂"),
                                          (None, "β‖z‖₂")])
def test_loss_and_score_labels_show_the_runs_latent_norm(monkeypatch, tmp_path, norm, latent):
    """--norm 1 / inf runs were labelled with ‖z‖₂ (absent norm: the default 2)."""
    edit = None if norm is None else (lambda r: r["config"].update(norm=norm))
    figs = _figures(monkeypatch, tmp_path, edit)
    title = figs["loss_curve"].get_suptitle()
    xlabel = figs["score_hist"].axes[0].get_xlabel()
    assert f"Training loss ‖x̂−x‖₂ + {latent} " in title
    assert xlabel == f"anomaly score ‖x̂−x‖₂ + {latent}"


def test_bad_norm_in_results_names_the_field(tmp_path, capsys):
    results = _fake_results(tmp_path / "res", classes=[0], with_scores=False)
    results["config"]["norm"] = "3"
    (tmp_path / "res" / "results.json").write_text(json.dumps(results))
    assert main([str(tmp_path / "res"), "--formats", "png"]) == 2
    err = capsys.readouterr().err
    assert "config.norm must be 1, 2 or inf, got '3'" in err and len(err.strip().splitlines()) == 1


def test_a_class_whose_every_seed_failed_is_marked_and_the_mean_says_what_it_covers(
        monkeypatch, tmp_path):
    def edit(r):
        r["runs"][1]["test_metric"] = [None] * len(r["runs"][1]["test_metric"])

    ax = _figures(monkeypatch, tmp_path, edit, classes=(0, 1, 2))["paper_bars"].axes[0]
    bottom, top = ax.get_ylim()
    failed = [t for t in ax.texts if t.get_text() == "failed"]
    assert len(failed) == 1  # was no bar and no label: a 0-height bar below the AUROC axis
    x, y = ax.transData.inverted().transform(
        failed[0].get_transform().transform(failed[0].get_position()))
    assert x == pytest.approx(1 - 0.19) and bottom <= y <= top
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "mean (2 of 3)"


def test_missing_paper_value_label_is_inside_the_auroc_axis(monkeypatch, tmp_path):
    """The "n/a" of a bar without a paper value was drawn at y = 1, below an AUROC axis that
    starts near 50: invisible."""
    def edit(r):
        r["runs"][1]["paper"] = None
        r["summary"]["paper"] = None  # the "mean" bar: no paper value either

    ax = _figures(monkeypatch, tmp_path, edit, classes=(0, 1))["paper_bars"].axes[0]
    bottom, top = ax.get_ylim()
    assert bottom > 1  # an AUROC axis: the old label position lay outside it
    labels = [t for t in ax.texts if t.get_text() == "n/a"]
    assert len(labels) == 2  # class 1 and the mean
    for t in labels:
        x, y = ax.transData.inverted().transform(t.get_transform().transform(t.get_position()))
        assert bottom <= y <= top
        assert x == pytest.approx(1 + 0.19) or x == pytest.approx(2 + 0.19)


def test_saved_figures_are_byte_reproducible(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot()
    ax.plot([0, 1, 2], [1, 3, 2], marker="o", clip_on=True)
    for fmt in ("pdf", "svg", "png"):
        a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        plots.save_reproducibly(fig, a, dpi=100)
        plots.save_reproducibly(fig, b, dpi=100)
        assert a.read_bytes() == b.read_bytes(), fmt  # SVG: random clip-path and marker ids
    assert b"/CreationDate" not in (tmp_path / "a.pdf").read_bytes()
    assert b"<dc:date>" not in (tmp_path / "a.svg").read_bytes()  # was the time of saving


def test_curves_are_drawn_at_the_checkpoint_steps(monkeypatch, tmp_path):
    figs = _figures(monkeypatch, tmp_path, classes=(0, 2))
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    run = results["runs"][0]
    # eval_every 20 and 8 checkpoints: the first checkpoint is after 20 steps
    steps = [20, 40, 60, 80, 100, 120, 140, 160]
    val_ax = figs["val_curve"].axes[0]
    lines = {ln.get_label(): ln for ln in val_ax.lines}
    seed_lines = [ln for ln in val_ax.lines if ln.get_label().startswith("_")]
    assert len(seed_lines) == 3
    for ln, row in zip(seed_lines, run["val_curve"]):
        np.testing.assert_array_equal(ln.get_xdata(), steps)
        np.testing.assert_array_equal(ln.get_ydata(), row)
    mean = lines["mean over seeds"]
    np.testing.assert_array_equal(mean.get_xdata(), steps)
    np.testing.assert_allclose(mean.get_ydata(), np.mean(run["val_curve"], axis=0), rtol=1e-12)
    # the selected checkpoints: (best_step, best_val_metric) per seed
    stars = val_ax.collections[-1].get_offsets()
    np.testing.assert_allclose(stars, np.c_[run["best_step"], run["best_val_metric"]])
    loss_mean = {ln.get_label(): ln for ln in figs["loss_curve"].axes[0].lines}["mean over seeds"]
    np.testing.assert_array_equal(loss_mean.get_xdata(), steps)
    np.testing.assert_allclose(loss_mean.get_ydata(), np.mean(run["loss_curve"], axis=0), rtol=1e-12)
    # class 2: seed 1 failed after checkpoint 3 (null): from there the mean is of seeds 0 and 2
    curves = results["runs"][1]["val_curve"]
    assert curves[1][3:] == [None] * 5
    expect = [np.mean([curves[0][j], curves[2][j]] + ([curves[1][j]] if j < 3 else []))
              for j in range(8)]
    mean2 = {ln.get_label(): ln for ln in figs["val_curve"].axes[1].lines}["mean over seeds"]
    np.testing.assert_allclose(mean2.get_ydata(), expect, rtol=1e-12)


def test_arrhythmia_histogram_marks_the_f1_rules_threshold(monkeypatch, tmp_path):
    import re

    def edit(r):
        r["config"]["dataset"], r["metric"] = "arrhythmia", "f1"

    ax = _figures(monkeypatch, tmp_path, edit, classes=(0,))["score_hist"].axes[0]
    seed = int(re.search(r"seed (\d+) \(median", ax.get_title()).group(1))
    row = load_scores(tmp_path / "res")["0"][0][seed].astype(np.float64)
    # the F1 rule flags all but the normal fraction 0.854 (386/452 of ODDS Arrhythmia) of the
    # scores: round(0.854 · 200) = 171 normal, the top 29 flagged
    (line,) = [ln for ln in ax.lines if ln.get_label().startswith("F1 rule")]
    assert line.get_label() == "F1 rule: top 29 flagged"
    cut = line.get_xdata()[0]
    assert (row > cut).sum() == 29 and (row < cut).sum() == 171  # no score on the line


def test_panel_labels_name_the_class():
    runs = [{"normal_class": 0}, {"normal_class": 9}]
    assert plots._labels({"config": {"dataset": "cifar10"}, "runs": runs}) == ["0: airplane",
                                                                              "9: truck"]
    assert plots._labels({"config": {"dataset": "fmnist"}, "runs": runs}) == ["0: T-shirt/top",
                                                                             "9: Ankle boot"]
    # digits are their own names; one normal set; an unknown dataset falls back to numbers
    assert plots._labels({"config": {"dataset": "mnist"}, "runs": runs}) == ["class 0", "class 9"]
    assert plots._labels({"config": {"dataset": "arrhythmia"},
                          "runs": [{"normal_class": None}]}) == ["arrhythmia (one normal set)"]
    assert plots._labels({"config": {}, "dataset": "x", "runs": runs}) == ["class 0", "class 9"]


def test_per_seed_label_rows_must_agree(tmp_path):
    labels = np.array([0, 1, 1, 0, 1])
    scores = np.arange(10.0).reshape(2, 5)
    save_scores(tmp_path, 3, scores, np.stack([labels, labels]))  # one row per seed: accepted
    got_scores, got_labels = load_scores(tmp_path)["3"]
    np.testing.assert_array_equal(got_labels, labels)
    np.testing.assert_array_equal(got_scores, scores)
    other = np.stack([labels, 1 - labels])
    with pytest.raises(TollError, match="labels for class 3 differ between seeds; pass one row"):
        save_scores(tmp_path, 3, scores, other)
