"""benchmarks/bench_sweep.py reports the run the CLI actually made (its results.json), and MFU
against the peak of the devices that run used.

The CLI is replaced by a stand-in that writes a results.json, and the FLOP counts by
constants, so the report's arithmetic is what is tested, in about a second.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from benchmarks import bench_sweep

F_TRAIN, F_SCORE = 1e9, 1e6
VAL = TEST = 90  # Arrhythmia's validation and test sets


def fake_cli(monkeypatch, config: dict, environment: dict, run_s: float = 2.0,
             returncode: int = 0, stderr: str = "") -> list:
    """Replace the CLI by one writing a results.json with ``config``; returns the commands."""
    commands = []

    def run(cmd, **kwargs):
        commands.append(cmd)
        if returncode == 0:
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True)
            seeds = list(range(config["seeds"]))
            (out / "results.json").write_text(json.dumps({
                "config": {"dataset": "arrhythmia", "eval_every": 20, "z_dim": 16,
                           "classes": [None], "data_dir": None, "source": "files",
                           "val_limit": None, "test_limit": None, **config},
                "runs": [{"seeds": seeds}], "summary": {"mean": 50.0},
                "timings": {"load_s": 0.1, "compile_s": 1.0, "run_s": run_s},
                "environment": {"device_count": 1, "process_count": 1, "device_kind": "cpu",
                                **environment}}))
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)

    monkeypatch.setattr(bench_sweep.subprocess, "run", run)
    return commands


@pytest.fixture
def flop_calls(monkeypatch) -> list:
    calls = []

    def step_flops(dataset, batch, z_dim=None):
        calls.append(("step", dataset, batch, z_dim))
        return F_TRAIN

    def score_flops(dataset, chunk, z_dim=None):
        calls.append(("score", dataset, chunk, z_dim))
        return F_SCORE

    monkeypatch.setattr(bench_sweep, "step_flops", step_flops)
    monkeypatch.setattr(bench_sweep, "score_flops", score_flops)
    return calls


def test_flags_after_the_separator_are_what_is_reported(monkeypatch, tmp_path, capsys,
                                                        flop_calls):
    """``-- --steps 100 --seeds 2 --batch-size 50 --dtype bfloat16`` overrides the script's
    own flags in the CLI; the FLOP count, MFU and summary must follow what ran."""
    cmds = fake_cli(monkeypatch, {"steps": 100, "seeds": 2, "batch_size": 50,
                                  "dtype": "bfloat16", "vmap_width": 1},
                    {"device_count": 2})
    out = tmp_path / "s.json"
    assert bench_sweep.main(["--dataset", "arrhythmia", "--seeds", "1", "--steps", "20",
                             "--peak-tflops", "1", "--json", str(out), "--", "--steps", "100",
                             "--seeds", "2", "--batch-size", "50", "--dtype", "bfloat16"]) == 0
    assert cmds[0][-8:] == ["--steps", "100", "--seeds", "2", "--batch-size", "50", "--dtype",
                            "bfloat16"]
    s = json.loads(out.read_text())["summary"]
    assert (s["steps"], s["seeds"], s["batch"], s["dtype"]) == (100, 2, 50, "bfloat16")
    assert ("step", "arrhythmia", 50, 16) in flop_calls
    per_seed = 100 * F_TRAIN + (100 // 20) * VAL * F_SCORE + TEST * F_SCORE
    assert s["run_flops"] == pytest.approx(2 * per_seed)
    # 2 seeds at vmap width 1: two chunks, one per device, so both of the 2 devices ran.
    assert s["devices_used"] == 2
    assert s["mfu"] == pytest.approx(2 * per_seed / 2.0 / (2 * 1e12))
    table = 10 * (2000 * F_TRAIN + 100 * VAL * F_SCORE + TEST * F_SCORE)
    assert s["table_flops"] == pytest.approx(table)
    assert s["table_s_at_peak"] == pytest.approx(table / (2 * 1e12))
    assert s["mfu_needed_for_target"] == pytest.approx(table / (2 * 1e12) / 1800)
    # linear in seeds × steps from the run: 10 × 2000 of the run's 2 × 100
    assert s["table_s_extrapolated"] == pytest.approx(1.0 + 2.0 * 100)
    printed = capsys.readouterr().out
    assert "2 seeds × 100 steps" in printed and "bfloat16" in printed
    assert "ran on 2 of 2" in printed


def test_one_chunk_runs_on_one_device_and_the_peak_follows_the_run_dtype(monkeypatch, tmp_path,
                                                                        flop_calls):
    fake_cli(monkeypatch, {"steps": 20, "seeds": 1, "batch_size": 100, "dtype": "bfloat16",
                           "vmap_width": 1},
             {"device_count": 8, "device_kind": "NVIDIA H100 80GB HBM3"})
    out = tmp_path / "s.json"
    assert bench_sweep.main(["--dataset", "arrhythmia", "--seeds", "1", "--steps", "20",
                             "--json", str(out), "--", "--dtype", "bfloat16"]) == 0
    s = json.loads(out.read_text())["summary"]
    assert s["peak_tflops_per_device"] == 989.4  # bfloat16, not the script's float32
    assert s["devices_used"] == 1 and s["table_devices"] == 8
    assert s["mfu"] == pytest.approx(s["run_flops"] / 2.0 / (989.4e12 * 1))
    assert s["table_s_at_peak"] == pytest.approx(s["table_flops"] / (989.4e12 * 8))


def test_flags_the_cli_refuses_are_a_one_line_error(monkeypatch, capsys, flop_calls):
    fake_cli(monkeypatch, {}, {}, returncode=2,
             stderr="error: --steps 30 is not a multiple of --eval-every 20\n")
    assert bench_sweep.main(["--dataset", "arrhythmia", "--", "--steps", "30"]) == 2
    err = capsys.readouterr().err
    assert err == ("bench_sweep: the CLI refused the run: error: --steps 30 is not a multiple "
                   "of --eval-every 20\n")
    assert not flop_calls


def test_devices_used_follows_the_clis_chunks():
    env = {"device_count": 4, "process_count": 1}
    assert bench_sweep.devices_used(env, 1, 10, 10) == 1   # one chunk
    assert bench_sweep.devices_used(env, 1, 10, 3) == 4    # 4 chunks
    assert bench_sweep.devices_used(env, 10, 10, 10) == 4  # more chunks than devices
    assert bench_sweep.devices_used({"device_count": 4, "process_count": 2}, 1, 1, 1) == 4


@pytest.mark.parametrize("seeds, width, noted", [(2, 2, True), (10, 10, False)])
def test_a_vmap_width_other_than_the_tables_is_noted(monkeypatch, capsys, flop_calls, seeds,
                                                      width, noted):
    """The table's width is the CLI's default for 10 seeds of every class on these devices
    (the MLP on one GPU: all 10 seeds vmapped); a run at another width extrapolates roughly."""
    fake_cli(monkeypatch, {"steps": 20, "seeds": seeds, "batch_size": 100, "dtype": "float32",
                           "vmap_width": width}, {"device_count": 1, "backend": "gpu"})
    assert bench_sweep.main(["--dataset", "arrhythmia", "--seeds", str(seeds)]) == 0
    printed = capsys.readouterr().out
    assert (f"note: vmap width {width}, the table's run would use 10" in printed) == noted
