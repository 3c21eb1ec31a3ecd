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
    assert all(len(r["test_metric"]) == 2 for r in res["per_beta"])
    assert res["config"]["paper_protocol"] is False
    assert (out / "beta_sweep.png").stat().st_size > 10_000 and (out / "beta_sweep.pdf").exists()
    assert "| 10 |" in (out / "results.md").read_text()


@pytest.mark.parametrize("spec", ["", "a,b", "-1", "nan"])
def test_bad_betas(spec):
    with pytest.raises(TollError, match="--betas"):
        parse_betas(spec)
