"""benchmarks/memory.py: XLA's memory analysis per model, and the record it writes."""
from __future__ import annotations

import json

import pytest

from benchmarks import memory
from tolljax import ops


@pytest.mark.parametrize("conv", ["auto", "plain"])
def test_the_json_records_the_resolved_convolutions_and_consistent_peaks(tmp_path, monkeypatch,
                                                                         conv):
    # main sets both variables for the run; monkeypatch puts them back afterwards
    monkeypatch.setenv(ops.ENV_VAR, "auto")
    monkeypatch.setenv(ops.CONV_ENV_VAR, "auto")
    out = tmp_path / "memory.json"
    assert memory.main(["--models", "arrhythmia", "--json", str(out)]
                       + ["--conv", conv]) == 0
    record = json.loads(out.read_text())
    # "auto" alone did not say which implementation the numbers are of
    assert record["conv"] == conv
    assert record["conv_resolved"] == {"transposed": ops.resolve_impl(),
                                       "regular": ops.resolve_conv_impl()}
    if conv == "plain":
        assert record["conv_resolved"] == {"transposed": "plain", "regular": "plain"}
    [r] = record["results"]
    assert (r["model"], r["batch"]) == ("arrhythmia", 100)
    for part in ("train_step", "score"):
        m = r[part]
        assert m["peak_mib"] == pytest.approx(m["arguments_mib"] + m["outputs_mib"]
                                              + m["temporaries_mib"] - m["aliased_mib"])
        assert m["arguments_mib"] > 0.8  # the MLP's 212,514 float32 parameters alone: 0.81 MiB
