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
    assert "| 10 |" in (out / "results.md").read_text()


@pytest.mark.parametrize("spec", ["", "a,b", "-1", "nan"])
def test_bad_betas(spec):
    with pytest.raises(TollError, match="--betas"):
        parse_betas(spec)


@pytest.mark.parametrize("argv, message", [
    (["--beta", "5"], "--beta is set by --betas in a β sweep"),
    (["--method", "cance"], "a β sweep runs Toll only"),
    (["--describe"], "--describe"),
    (["--classes", "3"], "choose it with --normal-class"),
    (["--vmap-width", "2"], "--vmap-width"),
    (["--fresh"], "--fresh"),
    (["--distributed"], "runs on one host"),
    (["--normal-class", "3", "--dataset", "arrhythmia"], "arrhythmia has one fixed normal set"),
    (["--dataset", "mnist", "--normal-class", "12"], "--normal-class 12: mnist has normal classes"),
    (["--betas", "0,-1"], "--betas"),
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
