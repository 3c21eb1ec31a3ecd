"""benchmarks/bench_arrhythmia.py: ``--repeat`` counts in the seed-scaling mode too (medians
per number of seeds). The two implementations are stand-ins returning set times."""
from __future__ import annotations

import json

from benchmarks import bench_arrhythmia


def test_seed_counts_repeat_each_count_and_report_medians(monkeypatch, tmp_path, capsys):
    calls = []
    tolljax_times = iter([5.0, 9.0, 6.0, 20.0, 21.0, 40.0])  # per call: protocol seconds
    torch_times = iter([10.0, 12.0, 30.0, 40.0, 42.0, 41.0])

    def fake_tolljax(seeds, steps, workdir, host_devices=None):
        calls.append(("tolljax", seeds, steps))
        t = next(tolljax_times)
        return {"process_s": t + 1, "protocol_s": t, "compile_s": 1.0, "run_s": t - 1.0,
                "vmap_width": 1, "devices_used": seeds}

    def fake_torch(seeds, steps, workdir, procs=1):
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


def test_torch_procs_split_the_seeds_into_contiguous_one_thread_processes(monkeypatch, tmp_path):
    # The seed loop in one process leaves a core idle on these small matmuls, while tolljax
    # uses one XLA host device per core: the side-by-side processes are the fair baseline.
    launched = []

    class FakePopen:
        def __init__(self, cmd, env=None, **kwargs):
            args = dict(zip(cmd[2::2], cmd[3::2]))
            first, n = int(args["--seed-offset"]), int(args["--seeds"])
            launched.append((first, n, args["--threads"], env["OMP_NUM_THREADS"]))
            result = {"per_seed_f1": [s / 100 for s in range(first, first + n)],
                      "train_s": 0.5 * n, "wall_s": 1.0 + n, "threads": 1,
                      "torch_version": "fake"}
            with open(args["--json"], "w") as f:
                json.dump(result, f)
            self.returncode = 0

        def communicate(self):
            return "", ""

    monkeypatch.setattr(bench_arrhythmia.subprocess, "Popen", FakePopen)
    r = bench_arrhythmia.run_torch(5, 40, tmp_path, procs=2)
    assert launched == [(0, 3, "1", "1"), (3, 2, "1", "1")]
    assert r["f1_per_seed"] == [0.0, 1.0, 2.0, 3.0, 4.0]  # every seed once, in order
    assert r["protocol_s"] == 4.0 and r["procs"] == 2  # the slower loop ends the protocol
    assert r["train_ms_per_step"] == 1000.0 * 2.5 / (40 * 5)


def test_the_main_table_reports_both_pytorch_baselines(monkeypatch, tmp_path, capsys):
    def fake_tolljax(seeds, steps, workdir, host_devices=None):
        return {"process_s": 11.0, "protocol_s": 10.0, "compile_s": 3.0, "run_s": 7.0,
                "f1_mean": 60.0, "f1_std": 5.0, "devices": 2, "vmap_width": 5,
                "devices_used": 2}

    def fake_torch(seeds, steps, workdir, procs=1):
        wall = 40.0 if procs == 1 else 25.0
        return {"process_s": wall + 1, "protocol_s": wall, "f1_mean": 61.0, "f1_std": 6.0,
                "threads": 2 if procs == 1 else 1, "train_ms_per_step": 2.0, "torch": "fake",
                "procs": procs}

    monkeypatch.setattr(bench_arrhythmia, "run_tolljax", fake_tolljax)
    monkeypatch.setattr(bench_arrhythmia, "run_torch", fake_torch)
    monkeypatch.setattr(bench_arrhythmia, "check_torch_installed", lambda script: None)
    out = tmp_path / "table.json"
    assert bench_arrhythmia.main(["--torch-procs", "2", "--steps", "40", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ratio_protocol"] == 10.0 / 40.0 and result["ratio_protocol_procs"] == 10.0 / 25.0
    assert result["torch_procs"] == 2 and result["repeat"] == 1
    assert "PyTorch ×2" in capsys.readouterr().out
