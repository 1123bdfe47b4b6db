"""One run directory, one writer: the run-directory lock, through real launches of the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_runner import ROOT, SHRUNK, TINY, run_tiny

from spa_recipes.runner.lock import LOCK_FILE, RunDirLocked, acquire, read_holder

# SHRUNK with one iteration: about ten seconds on a laptop.
ONE_ITERATION = ["iterations=1", "noise_detector.lambda=[0.5]"]


def start_run(out: Path) -> subprocess.Popen[str]:
    args = ["run", str(TINY), *SHRUNK, *ONE_ITERATION, f"run.output_dir={out}", "run.name=t", "--no-progress"]
    return subprocess.Popen(
        [sys.executable, "-m", "spa_recipes", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )


def wait_for_holder(run_dir: Path, pid: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = read_holder(run_dir)
        if holder and holder.get("pid") == pid:
            return holder
        time.sleep(0.05)
    raise AssertionError(f"{run_dir}: pid {pid} never took the lock")


def snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")}


def test_a_second_launch_and_fresh_are_refused_while_held_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "t"
    first = start_run(tmp_path)
    try:
        holder = wait_for_holder(run_dir, first.pid)
        os.kill(first.pid, signal.SIGSTOP)  # paused mid-run: alive, holding the lock
        assert holder["host"] == socket.gethostname() and "spa-recipe run" in holder["command"]
        before = snapshot(run_dir)
        for extra in ([], ["--fresh"]):
            second = run_tiny(tmp_path, *ONE_ITERATION, *extra)
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, second.stderr
            assert lines[0].startswith(f"error: {run_dir} is in use by pid {first.pid} on host {holder['host']} since")
            assert "spa-recipe run" in lines[0] and "wait for it, or stop it" in lines[0]
            assert second.stdout == ""
            assert snapshot(run_dir) == before  # wrote nothing, deleted nothing
        os.kill(first.pid, signal.SIGKILL)  # gone, its lock file still naming it
        first.wait(timeout=30)
        assert read_holder(run_dir)["pid"] == first.pid
        third = run_tiny(tmp_path, *ONE_ITERATION)
        assert third.returncode == 0, third.stderr
        warnings = [line for line in third.stderr.splitlines() if line.startswith("warning: taking over")]
        assert len(warnings) == 1 and f"pid {first.pid} on host {holder['host']}" in warnings[0], third.stderr
        assert "no longer running" in warnings[0]
        assert (run_dir / "results.json").is_file()
        assert read_holder(run_dir) is None and (run_dir / LOCK_FILE).read_text() == ""  # released at the end
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=30)


def test_fresh_on_a_free_run_directory_keeps_only_the_lock(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "leftover.txt").write_text("old")
    lock = acquire(tmp_path / "t")
    lock.release()
    from spa_recipes.runner.run import _clear_run_dir

    lock = acquire(tmp_path / "t")
    try:
        _clear_run_dir(tmp_path / "t")
        assert [p.name for p in (tmp_path / "t").iterdir()] == [LOCK_FILE]
    finally:
        lock.release()


def test_a_held_lock_is_refused_and_free_again_once_released(tmp_path: Path) -> None:
    lock = acquire(tmp_path / "t", command=["spa-recipe", "run", "x.yaml"])
    with pytest.raises(RunDirLocked, match=r"in use by pid \d+ on host .* \(spa-recipe run x.yaml\)"):
        acquire(tmp_path / "t")  # another open file description: flock says no, even in this process
    lock.release()
    acquire(tmp_path / "t").release()


def fake_holder(run_dir: Path, **fields: object) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "started": time.time(), "command": "spa-recipe run"}
    (run_dir / LOCK_FILE).write_text(json.dumps({**holder, **fields}))


def test_a_live_holder_on_this_host_is_refused_even_with_flock_free(tmp_path: Path) -> None:
    fake_holder(tmp_path / "t")  # the pytest parent process: alive (as on a filesystem whose flock is a no-op)
    with pytest.raises(RunDirLocked, match=f"in use by pid {os.getppid()}"):
        acquire(tmp_path / "t")


def test_a_reused_pid_is_not_a_live_holder(tmp_path: Path) -> None:
    fake_holder(tmp_path / "t", pid_start=1)  # that pid, but a process started at another time
    lock = acquire(tmp_path / "t")
    try:
        assert lock.took_over and "no longer running" in lock.took_over
    finally:
        lock.release()


def test_a_holder_on_another_host_needs_force(tmp_path: Path) -> None:
    fake_holder(tmp_path / "t", host="elsewhere", pid=4242)
    with pytest.raises(RunDirLocked, match="pid 4242 on host elsewhere .*run again with --force"):
        acquire(tmp_path / "t")
    lock = acquire(tmp_path / "t", force=True)
    try:
        assert lock.took_over and "pid 4242 on host elsewhere" in lock.took_over
        assert read_holder(tmp_path / "t")["pid"] == os.getpid()
    finally:
        lock.release()


def test_every_process_of_a_multi_process_launch_stops_when_main_is_refused(tmp_path: Path) -> None:
    lock = acquire(tmp_path / "t", command=["spa-recipe", "run", "first.yaml"])
    try:
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "spa_recipes", "run"]
            + [str(TINY), *SHRUNK, f"run.output_dir={tmp_path}", "run.name=t", "--no-progress"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "SPA_RECIPES_DIST_TIMEOUT": "60"},
            timeout=120,
        )
        assert result.returncode != 0 and time.monotonic() - started < 60
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "(spa-recipe run first.yaml)" in errors[0], result.stderr  # main alone says it
        # A rank exits 2 (torchrun may stop the other one before it does), and none hangs at a barrier.
        assert "exitcode  : 2" in result.stderr, result.stderr
        assert [p.name for p in (tmp_path / "t").iterdir()] == [LOCK_FILE]
    finally:
        lock.release()
