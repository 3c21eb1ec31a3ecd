"""experiments/collapse_demo.py: the scanned, seed-vmapped training and the CLI's errors.

Runs on official-size (60,000 / 10,000) MNIST-format files of random pixels, written here (the
loader needs the official size for the paper's validation indices); the real-data run is the
README's, `python -m experiments.collapse_demo --data-dir DIR`.
"""
import json

import numpy as np
import pytest

from experiments import collapse_demo
from test_data_images import write_mnist


@pytest.fixture(scope="module")
def mnist_dir(random_mnist_dir):
    return random_mnist_dir


def _cfg(mnist_dir, **kw):
    cfg = {"classes": [0, 3], "weights": [0.0, 1.0], "norm": "2", "seeds": 2, "steps": 20,
           "batch_size": 8, "lr": 1e-2, "feature_dim": 8, "test_limit": 60,
           "data_dir": str(mnist_dir)}
    return cfg | kw


def test_seeds_are_independent_and_runs_reproducible(mnist_dir):
    """Seed s of a vmapped 2-seed run = the 1-seed run of seed s (float32 round-off: XLA's
    batched GEMMs may round differently); the same config twice gives identical numbers."""
    quiet = lambda *a, **k: None  # noqa: E731
    two = collapse_demo.run(_cfg(mnist_dir), log=quiet)
    again = collapse_demo.run(_cfg(mnist_dir), log=quiet)
    one = collapse_demo.run(_cfg(mnist_dir, seeds=1), log=quiet)
    assert two["runs"] == again["runs"]
    for run2, run1 in zip(two["runs"], one["runs"]):
        assert run2["seeds"] == [0, 1] and run1["seeds"] == [0]
        for w in ("0.0", "1.0"):
            rec2, rec1 = run2["by_weight"][w], run1["by_weight"][w]
            for key in ("logit_auroc", "distance_auroc", "final_bce", "final_collapse"):
                assert len(rec2[key]) == 2
                np.testing.assert_allclose(rec2[key][0], rec1[key][0], rtol=1e-4, atol=1e-4)
            assert all(0 <= a <= 100 for a in rec2["logit_auroc"] + rec2["distance_auroc"])
        # the collapse term pulls normal features together: λ = 1 ends with a smaller term
        # than λ = 0 from the same initialisation and batches
        assert np.mean(run2["by_weight"]["1.0"]["final_collapse"]) < np.mean(
            run2["by_weight"]["0.0"]["final_collapse"])
    assert set(two["summary"]["1.0"]["logit_auroc"]) >= {"mean", "paired_diff_mean", "pairs"}


def test_cli_writes_results_and_rejects_bad_arguments(mnist_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert collapse_demo.main(["--data-dir", str(mnist_dir), "--classes", "1", "--seeds", "1",
                               "--steps", "2", "--batch-size", "8", "--test-limit", "40",
                               "--feature-dim", "8", "--out", str(out)]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["classes"] == [1] and saved["runs"][0]["normal_class"] == 1
    assert (saved["runs"][0]["n_test"], saved["runs"][0]["test_size"]) == (40, 10_000)
    md = (out / "results.md").read_text()
    assert md.startswith("# Targeted collapse")
    assert "**Budget:** test subset of 40 of 10000 images." in md
    # a limit beyond the test set scores all of it: no budget line (was "subset of 100000")
    assert collapse_demo.main(["--data-dir", str(mnist_dir), "--classes", "1", "--seeds", "1",
                               "--steps", "2", "--batch-size", "8", "--test-limit", "100000",
                               "--feature-dim", "8", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["runs"][0]["n_test"] == 10_000
    assert "Budget" not in (out / "results.md").read_text()
    for argv, message in ((["--weights", "1,0"], "must start with 0"),
                          (["--classes", "12"], "digits 0..9"),
                          (["--batch-size", "7"], "must be even")):
        assert collapse_demo.main(["--data-dir", str(mnist_dir), *argv, "--out",
                                   str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr", "-1"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--weights", "0,nan"], "finite λ > 0"),
    (["--weights", "0,1,1"], "lists a λ twice"),
    (["--weights", "0,a"], "--weights takes comma-separated numbers"),
    # were accepted: float32 makes them 0 (nothing trains) or inf
    (["--lr", "1e-50"], "--lr=1e-50 is 0 in the float32 arithmetic"),
    (["--weights", "0,1e-50"], "--weights λ=1e-50 is 0 in the float32 arithmetic"),
    (["--weights", "0,1e39"], "--weights λ=1e+39 is beyond the float32 range"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--feature-dim", "0"], "--feature-dim must be at least 1"),
    (["--norm", "fro"], "--norm: unknown latent norm 'fro'"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--classes", "a"], "--classes takes comma-separated integers"),
    (["--classes", "1,1"], "names a digit twice"),
    (["--test-limit", "1"], "--test-limit must be at least 2"),
    (["--batch-size", "100000"], "class 1 has only"),
    (["--out", "/proc/nope"], "--out /proc/nope: cannot create the folder"),
    (["--out", "FILE"], "is a file, not a folder"),
])
def test_cli_errors_name_the_flag_in_one_line(mnist_dir, tmp_path, capsys, argv, message):
    (tmp_path / "file").write_text("")
    argv = [str(tmp_path / "file") if a == "FILE" else a for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "x")]
    assert collapse_demo.main(["--data-dir", str(mnist_dir), "--classes", "1", *out, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_data_errors_do_not_suggest_flags_the_demo_lacks(tmp_path, capsys):
    """Without --data-dir, or with incomplete files, the message never suggests the loader's
    tfds source (experiments.run's --source; the demo has no such option)."""
    assert collapse_demo.main(["--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--data-dir is required" in err and "tfds" not in err
    rng = np.random.default_rng(0)
    small = write_mnist(tmp_path / "small", rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
                        rng.integers(0, 10, 50), rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
                        rng.integers(0, 10, 20), gz=False)
    assert collapse_demo.main(["--data-dir", str(small), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "the official set has 60000" in err and "tfds" not in err


@pytest.mark.parametrize("limit", [[], ["--test-limit", "40"]])
def test_a_test_set_without_the_normal_digit_is_one_line(mnist_dir, tmp_path, capsys, limit):
    # Was a NumPy traceback (with --test-limit) or "every run ... failed (non-finite loss)".
    import shutil

    from test_data_images import idx_name, write_idx

    folder = shutil.copytree(mnist_dir, tmp_path / "mnist")
    labels = folder / idx_name("t10k", "labels", "dash", False)
    y = np.frombuffer(labels.read_bytes()[8:], np.uint8).copy()
    write_idx(labels, np.where(y == 1, 2, y).astype(np.uint8), False)
    assert collapse_demo.main(["--data-dir", str(folder), "--classes", "1", "--seeds", "1",
                               "--steps", "2", "--batch-size", "8", *limit,
                               "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    # The loader says which kind of image is missing (validate_split said "only one class").
    assert err.startswith("error: mnist: the test set holds no images of normal class 1 (1)")
    assert len(err.strip().splitlines()) == 1


def test_diverged_seeds_report_no_auroc(mnist_dir, tmp_path, capsys):
    """A learning rate that makes the loss non-finite: no AUROC for the seed (null, n/a,
    a warning), and exit 1 when every seed of a λ failed, as experiments.run."""
    out = tmp_path / "demo"
    assert collapse_demo.main(["--data-dir", str(mnist_dir), "--classes", "1", "--seeds", "1",
                               "--steps", "2", "--batch-size", "8", "--test-limit", "40",
                               "--feature-dim", "8", "--lr", "1e30", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "λ = 1.0: seeds [0] diverged" in captured.out and "every run of λ" in captured.err
    assert "try a smaller --lr or λ" in captured.out
    saved = json.loads((out / "results.json").read_text())
    rec = saved["runs"][0]["by_weight"]["1.0"]
    assert rec["logit_auroc"] == [None] and rec["distance_auroc"] == [None]
    assert rec["logit_auroc_mean"] is None and rec["failed_seeds"] == [0]
    assert saved["summary"]["1.0"]["logit_auroc"]["mean"] is None
    assert saved["summary"]["1.0"]["logit_auroc"]["pairs"] == 0
    assert "| 1 | n/a ± n/a | n/a ± n/a |" in (out / "results.md").read_text()


def test_out_of_memory_is_one_line_with_the_demos_flags(tmp_path, capsys, monkeypatch):
    import experiments.collapse_demo as cli

    def exhausted(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 44199213216 bytes.")

    monkeypatch.setattr(cli, "run", exhausted)  # was a traceback with exit status 1
    assert cli.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of device memory") and len(err.splitlines()) == 1
    assert "lower --batch-size or --seeds, use --test-limit" in err and "--vmap-width" not in err


def test_batch_size_advice_holds_for_every_class(mnist_dir, tmp_path, capsys):
    """The advised limit is the smallest class's (it named the first class too small, whose
    limit could still fail on a smaller class later)."""
    import re

    sizes = {c: collapse_demo.load_mnist(str(mnist_dir), c).train.shape[0] for c in (1, 2, 3)}
    assert collapse_demo.main(["--data-dir", str(mnist_dir), "--classes", "1,2,3",
                               "--batch-size", "100000", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    cls, limit = re.search(r"class (\d+) has only \d+ .* --batch-size <= (\d+)", err).groups()
    smallest = min(sizes, key=sizes.get)
    assert int(cls) == smallest and int(limit) == 2 * (sizes[smallest] // 3)
