"""SIGTERM and Ctrl-C through the real CLI: the run stops at a shard or step boundary, exits 75 with one line
saying where, and the same command finishes it with the results of a run never stopped; a second signal stops it
at once, and the run still resumes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_runner import ROOT, SHRUNK, TINY, model_weights, run_tiny, spa, started_stages

from spa_recipes.faults import PAUSE_ENV
from spa_recipes.interrupt import EXIT_CODE

ITERATIONS = [f"iter{i}_{s}" for i in (1, 2) for s in ("generate", "judge", "pairs", "train", "eval")]
CONTINUE = "run the same command to continue"


def resume_from(reference: Path, out: Path, first: str) -> Path:
    """A copy of the reference run with ``first`` and every stage after it never run."""
    run_dir = out / "t"
    shutil.copytree(reference, run_dir)
    for stage in ITERATIONS[ITERATIONS.index(first) :] + ["report"]:
        shutil.rmtree(run_dir / stage)
    return run_dir


def signalled_run(
    run_dir: Path, ready: Callable[[], bool], *signals: signal.Signals, pause_at: str | None = None, gap: float = 0
) -> tuple[int, str, str]:
    """Run the shrunk tiny recipe in ``run_dir``; once ``ready()``, send ``signals`` ``gap`` seconds apart.
    ``pause_at``: an artifact after which the run sleeps a few seconds (spa_recipes.faults), so the signals land
    in a known place. Returns the exit code, stdout and stderr."""
    command = [sys.executable, "-m", "spa_recipes", "run", str(TINY), *SHRUNK]
    command += [f"run.output_dir={run_dir.parent}", "run.name=t", "--no-progress"]
    env = {**os.environ, **({PAUSE_ENV: pause_at} if pause_at else {})}
    stdout, stderr = run_dir.parent / "stdout.txt", run_dir.parent / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        try:
            deadline = time.monotonic() + 300
            while not ready():
                assert proc.poll() is None, f"finished before the signal: {stdout.read_text()[-2000:]}"
                assert time.monotonic() < deadline
                time.sleep(0.02)
            for n, sig in enumerate(signals):
                time.sleep(gap if n else 0)
                proc.send_signal(sig)
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    return code, stdout.read_text(), stderr.read_text()


def stopped_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("stopped ")]


def metrics_rows(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def assert_same_as(reference: Path, run_dir: Path) -> None:
    assert (run_dir / "results.json").read_text() == (reference / "results.json").read_text()
    for stage in ("iter1_train", "iter2_train"):
        ours, theirs = model_weights(run_dir, stage), model_weights(reference, stage)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), stage


def test_sigterm_in_generation_judging_and_training_then_resume(reference_run: Path, tmp_path: Path) -> None:
    run_dir = resume_from(reference_run, tmp_path, "iter1_generate")
    for artifact, where in [
        ("iter1_generate/shards/shard-00001.jsonl", "after shard 2 of 3"),
        ("iter1_judge/shards/reference/shard-00001.jsonl", "after shard 2 of 3"),
    ]:
        stage = artifact.split("/")[0]
        code, stdout, stderr = signalled_run(run_dir, (run_dir / artifact).exists, signal.SIGTERM, pause_at=artifact)
        assert code == EXIT_CODE, (stdout[-2000:], stderr[-2000:])
        assert stopped_lines(stdout) == [f"stopped in {stage} {where} (SIGTERM); {CONTINUE}"]
        assert stderr.count("stopping after the current step/shard") == 1
        assert started_stages(stdout)[-1] == stage
        assert not (run_dir / stage / ".complete").exists()
        entry = json.loads((run_dir / "manifest.json").read_text())["stages"][stage]
        assert entry["status"] == "interrupted" and entry["at"] == where
        status = spa("status", str(run_dir))
        assert re.search(rf"^{stage}\s+interrupted", status.stdout, re.MULTILINE), status.stdout

    # Training: stopped after the step in progress, off the checkpoint schedule (every 2 steps) if the signal
    # lands during step 3, with a checkpoint written at that step all the same.
    metrics = run_dir / "iter1_train" / "work" / "metrics.jsonl"
    code, stdout, stderr = signalled_run(run_dir, lambda: metrics_rows(metrics) >= 2, signal.SIGTERM)
    assert code == EXIT_CODE, (stdout[-2000:], stderr[-2000:])
    [line] = stopped_lines(stdout)
    found = re.fullmatch(rf"stopped in iter1_train at step (\d) of 6 \(SIGTERM\); {CONTINUE}", line)
    assert found, line
    step = int(found.group(1))
    assert 2 <= step < 6 and metrics_rows(metrics) == step
    assert (run_dir / "iter1_train" / "work" / "checkpoints" / f"step-{step}").is_dir()

    final = run_tiny(tmp_path)
    assert final.returncode == 0, final.stderr
    assert started_stages(final.stdout)[0] == "iter1_train"
    assert "iter1_train (resuming)" in final.stdout
    assert_same_as(reference_run, run_dir)


def test_second_ctrl_c_stops_at_once_and_the_run_still_resumes(reference_run: Path, tmp_path: Path) -> None:
    run_dir = resume_from(reference_run, tmp_path, "iter2_train")
    artifact = "iter2_train/work/checkpoints/step-2"  # the run pauses there: both signals land before step 3
    code, stdout, stderr = signalled_run(
        run_dir, (run_dir / artifact).exists, signal.SIGINT, signal.SIGINT, pause_at=artifact, gap=1.5
    )
    assert code == 128 + signal.SIGINT, (stdout[-2000:], stderr[-2000:])
    assert "stopping after the current step/shard; press Ctrl-C again to stop at once" in stderr
    assert "SIGINT again: stopping at once" in stderr
    assert stopped_lines(stdout) == []
    assert not (run_dir / "iter2_train" / "work" / "checkpoints" / "step-3").exists()
    assert re.search(r"^iter2_train\s+cut off", spa("status", str(run_dir)).stdout, re.MULTILINE)

    final = run_tiny(tmp_path)
    assert final.returncode == 0, final.stderr
    assert started_stages(final.stdout) == ["iter2_train", "iter2_eval", "report"]
    assert "iter2_train (resuming)" in final.stdout
    assert_same_as(reference_run, run_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_handlers_are_restored_after_the_run(signum: signal.Signals) -> None:
    from spa_recipes.interrupt import Interrupted, raise_if_stop_requested, stop_on_signals

    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as stopped, stop_on_signals():
        os.kill(os.getpid(), signum)
        time.sleep(0.01)  # the handler runs between bytecodes
        raise_if_stop_requested("after shard 1 of 2")
    assert stopped.value.signal_name == signum.name and stopped.value.where == "after shard 1 of 2"
    assert signal.getsignal(signum) is before
    assert not issubclass(Interrupted, Exception)  # `except Exception` clean-ups let it pass


AGREEMENT_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    import torch
    from accelerate import Accelerator
    from spa_recipes.distributed import init_distributed, rank
    from spa_recipes.interrupt import Interrupted, stop_on_signals
    from spa_recipes.schema import TrainingSection
    from spa_recipes.training.loop import MicroBatch, run_training_loop
    init_distributed()
    out = Path(sys.argv[1])
    accelerator = Accelerator(cpu=True)
    data = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    def compute(model, indices, step, total_steps):
        if step == 2 and rank() == 1:  # only rank 1 is signalled, during the third step
            os.kill(os.getpid(), signal.SIGTERM)
        return MicroBatch(loss=model(data[indices]).pow(2).mean())
    training = TrainingSection(epochs=2.0, batch_size=4, learning_rate=1e-2, checkpoint_every=0)
    try:
        with stop_on_signals():
            run_training_loop(accelerator=accelerator, model=torch.nn.Linear(4, 1), num_examples=32,
                              compute=compute, training=training, seed=0, work_dir=out / "work", progress=False)
        stopped = None
    except Interrupted as stop:
        stopped = [stop.where, stop.signal_name]
    (out / f"rank-{rank()}.json").write_text(json.dumps(stopped))
""")


def test_processes_agree_on_the_step_where_training_stops(tmp_path: Path) -> None:
    (tmp_path / "agree.py").write_text(AGREEMENT_SCRIPT)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*launcher, str(tmp_path / "agree.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert found == [["at step 3 of 8", "a signal to another process"], ["at step 3 of 8", "SIGTERM"]]
    assert [p.name for p in (tmp_path / "work" / "checkpoints").iterdir()] == ["step-3"]  # off the schedule (none)


def test_the_same_stop_delivered_twice_at_once_is_one_request() -> None:
    """Slurm signals every process of a step and the launcher forwards its own copy: no immediate exit."""
    from spa_recipes.interrupt import Interrupted, raise_if_stop_requested, stop_on_signals

    with pytest.raises(Interrupted), stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # within REPEAT_WINDOW_S of the first
        time.sleep(0.01)
        raise_if_stop_requested("at step 1 of 2")


def test_sigterm_in_every_other_stage_kind_then_resume(reference_run: Path, tmp_path: Path) -> None:
    """split, sft, the baseline's and a model's evaluation, pairs and the report, each signalled once (seed DPO is
    one step here, which a signal cannot cut: training is stopped midway in sft and above in iter1_train)."""
    run_dir = tmp_path / "t"

    def wrote(artifact: str) -> Callable[[], bool]:
        return (run_dir / artifact).exists

    def stepped(stage: str) -> Callable[[], bool]:
        return lambda: metrics_rows(run_dir / stage / "work" / "metrics.jsonl") >= 1

    cases = [  # (ready, pause after this artifact, the line expected)
        (wrote("split/seed.jsonl"), "split/seed.jsonl", r"stopped before sft"),
        (stepped("sft"), None, r"stopped in sft at step \d+ of \d+"),
        (wrote("eval_baseline/shards/shard-00000.jsonl"), "eval_baseline/shards/shard-00000.jsonl",
         r"stopped in eval_baseline after shard 1 of 2"),
        (wrote("eval_seed_dpo/shards/shard-00000.jsonl"), "eval_seed_dpo/shards/shard-00000.jsonl",
         r"stopped in eval_seed_dpo after shard 1 of 2"),
        (wrote("iter1_pairs/pairs.jsonl"), "iter1_pairs/pairs.jsonl", r"stopped before iter1_train"),
    ]  # fmt: skip
    for ready, pause_at, expected in cases:
        code, stdout, stderr = signalled_run(run_dir, ready, signal.SIGTERM, pause_at=pause_at)
        assert code == EXIT_CODE, (expected, stdout[-2000:], stderr[-2000:])
        [line] = stopped_lines(stdout)
        assert re.fullmatch(rf"{expected} \(SIGTERM\); {CONTINUE}", line), line
    # In the last stage the signal stops nothing: the report finishes, and so does the run.
    code, stdout, stderr = signalled_run(run_dir, wrote("results.json"), signal.SIGTERM, pause_at="results.json")
    assert code == 0 and stopped_lines(stdout) == [], (stdout[-2000:], stderr[-2000:])
    assert_same_as(reference_run, run_dir)
