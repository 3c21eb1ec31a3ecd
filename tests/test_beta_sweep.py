import json

import pytest

from experiments.beta_sweep import main, parse_betas
from tolljax.errors import TollError


def test_sweep_compiles_once_and_writes_results_and_plot(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["--dataset", "arrhythmia", "--betas", "0,10", "--steps", "40", "--seeds", "2",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["beta"] for r in res["per_beta"]] == [0.0, 10.0]
    # the recorded config is what ran: the β grid, no single β of experiments.run
    assert res["config"]["betas"] == [0.0, 10.0] and "beta" not in res["config"]
    assert all(len(r["test_metric"]) == 2 for r in res["per_beta"])
    assert res["config"]["paper_protocol"] is False
    assert (out / "beta_sweep.png").stat().st_size > 10_000 and (out / "beta_sweep.pdf").exists()
    # the paper's Arrhythmia value at its own β (Table 4) is listed; only β = 0/1000 were
    assert res["paper_points"] == [{"beta": 10.0, "value": 60.0, "source": "Table 4"}]
    assert "| 10 |" in (out / "results.md").read_text() and "60.0 (Table 4)" in (out / "results.md").read_text()
    # the vmap width decides the last bits: recorded (2 seeds on the tests' 2 host devices: 1)
    assert res["config"]["vmap_width"] == 1


def test_a_limit_at_least_the_set_size_is_no_limit(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["--dataset", "arrhythmia", "--betas", "10", "--steps", "20", "--eval-every",
                 "20", "--seeds", "1", "--test-limit", "90", "--out", str(out)]) == 0
    assert "--test-limit 90 is at least the test set's size (90)" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["config"]["test_limit"] is None


def test_an_l1_sweep_shows_no_paper_value_of_the_l2_model(tmp_path, monkeypatch):
    # Was: "60.0 (Table 4)" beside an --norm 1 sweep, and "β (weight of ||z||₂)" on its axis.
    import matplotlib.figure

    labels = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: labels.append(fig.axes[0].get_xlabel()))
    out = tmp_path / "sweep"
    assert main(["--dataset", "arrhythmia", "--betas", "10", "--norm", "1", "--steps", "20",
                 "--eval-every", "20", "--seeds", "1", "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["norm"] == "1" and res["paper_points"] == []
    assert "Table 4" not in (out / "results.md").read_text()
    assert labels == ["β (weight of ‖z‖₁)"] * 2  # png and pdf


def test_vmap_width_is_a_flag_of_the_sweep_and_recorded(tmp_path):
    # It was refused, so a sweep's numbers followed the machine's core count unpinned.
    runs = {}
    for width in ("1", "2"):
        out = tmp_path / width
        assert main(["--dataset", "arrhythmia", "--betas", "10", "--steps", "40", "--seeds", "2",
                     "--vmap-width", width, "--out", str(out), "--quiet",
                     "--compile-cache", "off"]) == 0
        runs[width] = json.loads((out / "results.json").read_text())
        assert runs[width]["config"]["vmap_width"] == int(width)
    # the same seeds either way, equal to float tolerance (bitwise only at the same width)
    a, b = (runs[w]["per_beta"][0] for w in ("1", "2"))
    assert a["seeds"] == b["seeds"] == [0, 1]
    assert a["test_metric"] == pytest.approx(b["test_metric"], abs=5.0)


@pytest.mark.parametrize("spec", ["", "a,b", "-1", "nan"])
def test_bad_betas(spec):
    with pytest.raises(TollError, match="--betas"):
        parse_betas(spec)


@pytest.mark.parametrize("argv, message", [
    (["--beta", "5"], "--beta is set by --betas in a β sweep"),
    (["--method", "cance"], "a β sweep runs Toll only"),
    (["--describe"], "--describe"),
    (["--classes", "3"], "choose it with --normal-class"),
    (["--fresh"], "--fresh"),
    (["--distributed"], "runs on one host"),
    (["--normal-class", "3", "--dataset", "arrhythmia"], "arrhythmia has one fixed normal set"),
    (["--dataset", "mnist", "--normal-class", "12"], "--normal-class 12: mnist has normal classes"),
    (["--betas", "0,-1"], "--betas"),
    (["--betas", "10,1e1"], "--betas '10,1e1' names a β twice"),  # ran β=10 twice
    (["--betas", "1,1e39"], "--betas: β=1e+39 is beyond the float32 range"),
    (["--out", "/proc/nope"], "--out /proc/nope: cannot create the folder"),
    (["--out", "FILE"], "is a file, not a folder"),
])
def test_flags_the_sweep_does_not_use_are_rejected(tmp_path, capsys, argv, message):
    """A flag the sweep would ignore (or record without running it) fails as one line."""
    (tmp_path / "file").write_text("")
    argv = [str(tmp_path / "file") if a == "FILE" else a for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "x")]
    dataset = [] if "--dataset" in argv else ["--dataset", "arrhythmia"]
    assert main([*dataset, "--steps", "20", "--eval-every", "20", "--seeds", "1",
                 "--compile-cache", "off", "--quiet", *out, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_help_states_the_sweeps_own_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    # were experiments.run's: arrhythmia, "paper: 10", runs/<dataset>
    assert "dataset name (default: mnist" in text and "(default: 3, as the paper's figure)" in text
    assert "runs/beta_sweep_<dataset>[_<class>]" in text and "runs/<dataset>)" not in text


def test_out_of_memory_is_one_line_with_the_sweeps_flags(tmp_path, capsys, monkeypatch):
    import experiments.beta_sweep as cli

    def exhausted(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4396003383288 bytes.")

    monkeypatch.setattr(cli, "sweep", exhausted)  # was a traceback with exit status 1
    assert cli.main(["--dataset", "arrhythmia", "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: out of device memory") and len(err.splitlines()) == 1
    assert "lower --batch-size, vmap fewer seeds per device (--vmap-width 1)" in err
