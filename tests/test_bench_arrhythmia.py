"""benchmarks/bench_arrhythmia.py: ``--repeat`` counts in the seed-scaling mode too (medians
per number of seeds). The two implementations are stand-ins returning set times."""
from __future__ import annotations

import json

from benchmarks import bench_arrhythmia


def test_seed_counts_repeat_each_count_and_report_medians(monkeypatch, tmp_path, capsys):
    calls = []
    tolljax_times = iter([5.0, 9.0, 6.0, 20.0, 21.0, 40.0])  # per call: protocol seconds
    torch_times = iter([10.0, 12.0, 30.0, 40.0, 42.0, 41.0])

    def fake_tolljax(seeds, steps, workdir):
        calls.append(("tolljax", seeds, steps))
        t = next(tolljax_times)
        return {"process_s": t + 1, "protocol_s": t, "compile_s": 1.0, "run_s": t - 1.0}

    def fake_torch(seeds, steps, workdir):
        calls.append(("torch", seeds, steps))
        return {"process_s": 0.0, "protocol_s": next(torch_times)}

    monkeypatch.setattr(bench_arrhythmia, "run_tolljax", fake_tolljax)
    monkeypatch.setattr(bench_arrhythmia, "run_torch", fake_torch)
    monkeypatch.setattr(bench_arrhythmia, "check_torch_installed", lambda script: None)  # faked
    out = tmp_path / "scaling.json"
    assert bench_arrhythmia.main(["--seed-counts", "1", "2", "--repeat", "3", "--steps", "40",
                                  "--json", str(out)]) == 0
    # three alternating runs per count
    assert calls == [(name, n, 40) for n in (1, 2) for _ in range(3)
                     for name in ("tolljax", "torch")]
    rows = json.loads(out.read_text())["rows"]
    assert [r["seeds"] for r in rows] == [1, 2]
    assert [r["tolljax_protocol_s"] for r in rows] == [6.0, 21.0]
    assert [r["torch_protocol_s"] for r in rows] == [12.0, 41.0]
    assert [len(r["runs"]["tolljax"]) for r in rows] == [3, 3]
    assert rows[0]["ratio_protocol"] == 6.0 / 12.0
    assert "median of 3" in capsys.readouterr().out
