"""benchmarks/gpu_session.sh: its `all` mode runs the parts in order within a time budget.

The benchmarks themselves need a GPU; here PYTHON is a stand-in that logs its arguments and
fails where told, so the script's own logic (order, budget, failures, the bundle) is what is
tested, in a second or two.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_session.sh"
PARTS = ["sweep", "phases", "sweep-vmapped", "more", "steps", "steps-small", "impls"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """A PYTHON that appends its arguments to calls.txt, exits 3 if they contain $FAIL_ON and
    first sleeps $SLEEP_S seconds if they contain $SLOW_ON."""
    script = tmp_path / "fake-python"
    script.write_text('#!/bin/sh\n'
                      'echo "$*" >> "$CALLS"\n'
                      'echo "${TOLLJAX_CONV_TRANSPOSE:-unset} $*" >> "$CALLS.env"\n'
                      'case "$*" in *"$SLOW_ON"*) [ -n "$SLOW_ON" ] && sleep "$SLEEP_S";; esac\n'
                      'case "$*" in *"$FAIL_ON"*) [ -n "$FAIL_ON" ] && exit 3;; esac\n'
                      'exit 0\n')
    script.chmod(0o755)
    return script


def run_script(tmp_path: Path, fake_python: Path, *args: str, **env: str):
    out = tmp_path / "out"
    environ = {**os.environ, "PYTHON": str(fake_python), "OUT": str(out),
               "CALLS": str(tmp_path / "calls.txt"), "FAIL_ON": "", "SLOW_ON": "", **env}
    environ.pop("TOLLJAX_CONV_TRANSPOSE", None)  # what the script sets is what is checked
    proc = subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=120)
    log = tmp_path / "calls.txt"
    return proc, out, log.read_text().splitlines() if log.exists() else []


def summary(out: Path) -> list[str]:
    return (out / "summary.txt").read_text().splitlines()


def test_all_runs_every_part_in_order_and_bundles_one_folder_per_part(tmp_path, fake_python):
    proc, out, calls = run_script(tmp_path, fake_python, "all", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert summary(out) == [f"{p}: done" for p in PARTS]
    benchmarks = [c.split()[0] for c in calls if c.startswith("benchmarks/")]
    assert benchmarks == ["benchmarks/bench_sweep.py"] * 4 + ["benchmarks/bench_train_step.py"] \
        + ["benchmarks/bench_sweep.py"] * 2 + ["benchmarks/profile_step.py"] * 2 \
        + ["benchmarks/memory.py"] + ["benchmarks/bench_train_step.py"] * 4
    assert all(f"--data-dir {tmp_path}" in c for c in calls if "bench_sweep" in c)
    with tarfile.open(out / "gpu_results.tar.gz") as tar:
        names = {Path(n).as_posix().lstrip("./") for n in tar.getnames()}
    assert set(PARTS) <= names
    assert {"sweep/sweep_float32.log", "more/memory.log", "versions.txt"} <= names


def test_all_starts_at_the_named_part(tmp_path, fake_python):
    proc, out, _ = run_script(tmp_path, fake_python, "all", "steps-small")
    assert proc.returncode == 0, proc.stderr
    assert summary(out) == ["steps-small: done", "impls: done"]


def test_a_failed_run_is_named_and_the_other_parts_still_run(tmp_path, fake_python):
    proc, out, _ = run_script(tmp_path, fake_python, "all", FAIL_ON="memory.py")
    assert proc.returncode == 1
    lines = summary(out)
    assert lines[3] == ("more: failed runs: memory "
                        "(again alone: bash benchmarks/gpu_session.sh more)")
    assert [line.split(":")[0] for line in lines] == PARTS
    assert all(line.endswith("done") for i, line in enumerate(lines) if i != 3)


@pytest.mark.parametrize("slow_versions", [False, True])
def test_no_part_starts_without_enough_budget_and_the_next_command_is_printed(tmp_path,
                                                                               fake_python,
                                                                               slow_versions):
    # with the versions query slow, the clock is past the deadline when the budget is read: the
    # time left is still reported as 0 s, not negative
    slow = {"SLOW_ON": "import jax", "SLEEP_S": "1.2"} if slow_versions else {}
    proc, out, calls = run_script(tmp_path, fake_python, "all", "steps", BUDGET_S="0", **slow)
    assert proc.returncode == 1
    assert summary(out) == ["steps and the parts after it: not run, 0 s of the budget left; "
                            "go on with: bash benchmarks/gpu_session.sh all steps"]
    assert not [c for c in calls if c.startswith("benchmarks/")]


@pytest.mark.parametrize("knob, value", [("BUDGET_S", "-5"), ("MIN_PART_S", "1.5"),
                                         ("MAX_FILES", "many")])
def test_budget_and_bundle_knobs_must_be_whole_numbers(tmp_path, fake_python, knob, value):
    proc, _, calls = run_script(tmp_path, fake_python, "all", **{knob: value})
    assert proc.returncode == 2
    assert f"{knob} must be a whole number of seconds or files, got '{value}'" in proc.stderr
    assert not calls


@pytest.mark.parametrize("args, message", [
    (["all", "stepz"], "'stepz' is neither a part"),
    (["foo"], "unknown part 'foo'"),
])
def test_unknown_parts_are_named(tmp_path, fake_python, args, message):
    proc, _, calls = run_script(tmp_path, fake_python, *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert not calls


def limits(stdout: str) -> dict[str, int]:
    """Each run's time limit, from the "== NAME (at most N s): ..." lines."""
    import re

    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^== (\S+) \(at most (\d+) s\)", stdout, re.M)}


def test_every_sweep_gets_the_sweep_limit_of_280_s(tmp_path, fake_python):
    """README: 280 s for each sweep, the seeds-vmapped sweep included."""
    proc, _, calls = run_script(tmp_path, fake_python, "sweep-vmapped", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert limits(proc.stdout) == {"sweep_float32_vmapped": 280, "sweep_bfloat16_vmapped": 280}
    sweeps = [c for c in calls if "bench_sweep" in c]
    assert len(sweeps) == 2 and all(c.endswith("-- --vmap-width 10") for c in sweeps)
    proc, _, _ = run_script(tmp_path, fake_python, "sweep", str(tmp_path))
    assert limits(proc.stdout) == {"sweep_float32": 280, "sweep_bfloat16": 280}


def test_the_phases_part_runs_the_sweeps_and_steps_with_the_phase_split(tmp_path, fake_python):
    proc, _, calls = run_script(tmp_path, fake_python, "phases", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    runs = limits(proc.stdout)  # each sweep at the sweep limit; the steps at the part's own
    # limit, cut to the call's budget (540 s less the seconds already used)
    assert runs.pop("train_step_phases") in range(530, 541)
    assert runs == {"sweep_float32_phases": 280, "sweep_bfloat16_phases": 280}
    env_calls = [c.split()[:2] for c in (tmp_path / "calls.txt.env").read_text().splitlines()]
    assert [c for c in env_calls if c[1].startswith("benchmarks/")] == [
        ["phases", "benchmarks/bench_sweep.py"], ["phases", "benchmarks/bench_sweep.py"],
        ["unset", "benchmarks/bench_train_step.py"]]
    calls = [c for c in calls if c.startswith("benchmarks/")]
    assert "--conv-transpose auto,phases --dtype float32,bfloat16" in calls[2]
    assert all(f"--data-dir {tmp_path}" in c for c in calls[:2])


def test_a_part_alone_keeps_to_the_budget(tmp_path, fake_python):
    """A part alone must fit one device call too: its runs are cut to BUDGET_S."""
    proc, _, _ = run_script(tmp_path, fake_python, "more", BUDGET_S="100")
    assert proc.returncode == 0, proc.stderr
    assert set(limits(proc.stdout)) == {"profile", "profile_bfloat16", "memory",
                                        "train_step_highest"}
    assert all(90 <= cap <= 100 for cap in limits(proc.stdout).values())


def test_a_part_alone_bundles_more_files_than_a_device_call_returns(tmp_path, fake_python):
    # `more` wrote 10 files straight into $OUT, and the device tool returns at most 8. Here
    # the stand-in writes no JSON (6 files), so a limit of 5 stands in for 8.
    proc, out, _ = run_script(tmp_path, fake_python, "more", MAX_FILES="5")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["more.tar.gz"]
    with tarfile.open(out / "more.tar.gz") as bundle:
        assert sorted(bundle.getnames()) == sorted(
            ["memory.log", "nvidia-smi.txt", "profile.log", "profile_bfloat16.log",
             "train_step_highest.log", "versions.txt"])
    assert "more wrote 6 files, more than the 5 a device call returns" in proc.stdout
    # at the default limit the same files stay loose, and files from before are not touched
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / "older.txt").write_text("x")
    out = tmp_path / "out2"
    proc, _, _ = run_script(tmp_path, fake_python, "more", OUT=str(out))
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.iterdir())) == 7 and (out / "older.txt").read_text() == "x"


def test_a_part_alone_does_not_start_runs_once_the_budget_is_spent(tmp_path, fake_python):
    proc, out, calls = run_script(tmp_path, fake_python, "sweep", str(tmp_path), BUDGET_S="5")
    assert proc.returncode == 1
    assert "failed: sweep_float32 sweep_bfloat16" in proc.stderr
    assert not [c for c in calls if c.startswith("benchmarks/")]
    assert "not run, the call's budget is spent" in (out / "sweep_float32.log").read_text()


@pytest.mark.parametrize("args, message", [
    (["steps", "bogusdir"], "steps takes no DATA_DIR"),
    (["sweep", "no/such/folder"], "DATA_DIR 'no/such/folder' is not a folder"),
    (["sweep", ".", "extra"], "unexpected argument(s) after 'sweep .': extra"),
    (["all", "impls", ".", "extra"], "unexpected argument(s)"),
])
def test_extra_or_misplaced_arguments_are_refused(tmp_path, fake_python, args, message):
    proc, _, calls = run_script(tmp_path, fake_python, *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not calls


def test_no_arguments_prints_the_usage_alone(tmp_path, fake_python):
    proc, _, calls = run_script(tmp_path, fake_python)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: gpu_session.sh ") and "line " not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and not calls
