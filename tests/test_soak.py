"""Soak: one shrunk run interrupted 20 times at random points by SIGTERM or SIGKILL finishes with the results of a
run never interrupted (marked slow; CI runs it: .ci/run)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_interrupt import assert_same_as
from test_runner import ROOT, SHRUNK, TINY

INTERRUPTIONS = 20


def files(run_dir: Path) -> set[Path]:
    """The files under run_dir now. os.walk skips a folder the running job removes mid-walk (a checkpoint it
    prunes), where Path.rglob raises FileNotFoundError."""
    return {Path(root, name) for root, _, names in os.walk(run_dir) for name in names}


def interrupted_attempt(out: Path, rng: random.Random) -> tuple[int, str, str]:
    """One invocation of the run, signalled (SIGTERM or SIGKILL, drawn) once it has written 1 to 4 new files
    (drawn: shards, checkpoints, stage outputs, markers), so that the signals fall all along the run.

    Returns the exit code, the signal's name ("" when the run finished first) and the stage it was in.
    """
    command = [sys.executable, "-m", "spa_recipes", "run", str(TINY), *SHRUNK, f"run.output_dir={out}", "run.name=t"]
    run_dir, before = out / "t", files(out / "t")
    sig, wanted = rng.choice([signal.SIGTERM, signal.SIGKILL]), rng.randint(1, 4)
    with (out / "stdout.txt").open("w") as stdout:
        proc = subprocess.Popen([*command, "--no-progress"], cwd=ROOT, stdout=stdout, stderr=subprocess.DEVNULL)
        sent = ""
        while proc.poll() is None:
            if len(files(run_dir) - before) >= wanted:
                proc.send_signal(sig)
                sent = sig.name
                break
            time.sleep(0.05)
        code = proc.wait(timeout=600)
    stages = [line[2:].split()[0] for line in (out / "stdout.txt").read_text().splitlines() if line.startswith("> ")]
    return code, sent, stages[-1] if stages else "-"


@pytest.mark.slow
def test_twenty_interruptions_end_with_the_uninterrupted_results(reference_run: Path, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("SPA_SOAK_SEED", "0")))
    log: list[tuple[str, str, int]] = []
    while len(log) < INTERRUPTIONS:
        code, sent, stage = interrupted_attempt(tmp_path, rng)
        if not sent or code == 0:
            break  # finished before the signal, or in its last stage (which finishes: there is no next one)
        assert code in (75, -signal.SIGTERM, -signal.SIGKILL), (code, sent, stage)
        log.append((sent, stage, code))
    assert len(log) == INTERRUPTIONS, f"the run finished after {len(log)} interruptions: {log}"
    final = subprocess.run(
        [sys.executable, "-m", "spa_recipes", "run", str(TINY), *SHRUNK, f"run.output_dir={tmp_path}", "run.name=t"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert final.returncode == 0, final.stderr
    assert_same_as(reference_run, tmp_path / "t")
    graceful = sum(code == 75 for _, _, code in log)
    print(f"\nsoak: {len(log)} interruptions ({graceful} stopped gracefully with 75), in stages:")
    for sent, stage, code in log:
        print(f"  {sent:<8} in {stage:<15} exit {code}")
