"""Strict JSON everywhere (NaN and infinity as null with a note) and one-line errors when a disk is full."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from spa_recipes import atomic
from spa_recipes.api import LoggerContext, StageInfo
from spa_recipes.atomic import (
    NONFINITE_NOTE,
    WriteError,
    append_text,
    atomic_dir,
    dumps_json,
    is_complete,
    json_safe,
    loads_json,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from spa_recipes.errors import UserError
from spa_recipes.loggers import JsonlLogger, training_rows
from spa_recipes.loggers_config import JsonlLoggerConfig
from spa_recipes.reporting import build_report
from spa_recipes.runner.run import stage_status  # noqa: F401 - the status reader imports with the new readers

NAN, INF = float("nan"), float("inf")


def strict(text: str) -> Any:
    """Parse as a strict parser (jq, JavaScript, Go) would: NaN / Infinity tokens are an error."""

    def refuse(token: str) -> None:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_nonfinite_floats_become_null_with_a_note_and_read_back() -> None:
    summary = {"loss": NAN, "grad_norm": INF, "lr": 1e-3, "margins": [0.5, -INF, NAN], "sub": {"x": INF, "n": 3}}
    text = dumps_json(summary, sort_keys=True)
    parsed = strict(text)
    assert parsed["loss"] is None and parsed["grad_norm"] is None and parsed["lr"] == 1e-3
    assert parsed["margins"] == [0.5, None, None]
    assert parsed[NONFINITE_NOTE] == {"loss": "nan", "grad_norm": "inf", "margins.1": "-inf", "margins.2": "nan"}
    assert parsed["sub"] == {"x": None, "n": 3, NONFINITE_NOTE: {"x": "inf"}}
    back = loads_json(text)
    assert math.isnan(back["loss"]) and back["grad_norm"] == INF and back["margins"][1] == -INF
    assert math.isnan(back["margins"][2]) and back["sub"] == {"x": INF, "n": 3}
    assert NONFINITE_NOTE not in back
    assert json_safe({"a": 1.5, "b": [1, 2]}) == {"a": 1.5, "b": [1, 2]}  # finite objects carry no note
    with pytest.raises(ValueError):
        json.dumps({"loss": NAN}, allow_nan=False)  # what dumps_json relies on to fail loudly on a slip


def test_json_writers_write_strict_json(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "summary.json", {"final_loss": NAN, "steps": 4})
    assert strict((tmp_path / "summary.json").read_text()) == {
        "final_loss": None,
        "steps": 4,
        NONFINITE_NOTE: {"final_loss": "nan"},
    }
    rows = [{"step": 1, "loss": INF, "nonfinite": True}, {"step": 2, "loss": 0.5, "nonfinite": False}]
    write_jsonl_atomic(tmp_path / "metrics.jsonl", rows)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [strict(line)["loss"] for line in lines] == [None, 0.5]
    assert read_jsonl(tmp_path / "metrics.jsonl") == rows


def test_metrics_rows_and_stage_summaries_round_trip_and_the_report_renders(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    stages = ["eval_seed_dpo", "iter1_train", "iter1_eval"]
    manifest: dict[str, Any] = {"stages": {}}
    for stage in stages:
        (run_dir / stage).mkdir(parents=True)
        (run_dir / stage / ".complete").write_text("")
        manifest["stages"][stage] = {"status": "done", "seconds": 1.0, "summary": {"final_loss": NAN}}
    (run_dir / "recipe.yaml").write_text("run: {name: run}\n")
    write_json_atomic(run_dir / "manifest.json", manifest)
    for stage, iteration in (("eval_seed_dpo", 0), ("iter1_eval", 1)):
        eval_json = {
            "model": "seed_dpo" if iteration == 0 else "iter1_train",
            "iteration": iteration,
            "evaluator": "gold",
            "win_rate": 50.0 if iteration == 0 else NAN,
            "win_rate_se": INF,
            "lc_win_rate": NAN,
            "n": 10,
            "mean_words_model": 12.0,
            "mean_words_baseline": 11.0,
            "agreement_with_gold": NAN,
        }
        write_json_atomic(run_dir / stage / "eval.json", eval_json)
    work = run_dir / "iter1_train" / "work"
    work.mkdir()
    for step, loss in enumerate([0.7, NAN, INF, 0.6], start=1):
        append_text(work / "metrics.jsonl", dumps_json({"step": step, "loss": loss, "flagged_fraction": 0.1}) + "\n")
    logger = JsonlLogger(JsonlLoggerConfig(), LoggerContext(run_dir))
    logger.log_stage(StageInfo("iter1_train", "train", 1), 1.0, {"final_loss": NAN, "reward_margin": -INF})

    for path in [run_dir / "metrics.jsonl", work / "metrics.jsonl"]:
        for line in path.read_text().splitlines():
            strict(line)
    logged = strict((run_dir / "metrics.jsonl").read_text())
    assert logged["final_loss"] is None and logged[NONFINITE_NOTE] == {"final_loss": "nan", "reward_margin": "-inf"}
    assert math.isnan(training_rows(run_dir, "iter1_train")[1]["loss"])

    report = build_report(run_dir, stages)
    results = strict((run_dir / "results.json").read_text())
    iter1 = next(m for m in results["models"] if m["iteration"] == 1)
    assert iter1["win_rate"] is None and iter1[NONFINITE_NOTE]["win_rate"] == "nan"
    assert "seed_dpo" in report.markdown.read_text()
    for png in report.plots.values():
        assert png.is_file()


def no_temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".tmp-")]


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        (errno.ENOSPC, "No space left on device; free space and run the same command again to resume"),
        (errno.EDQUOT, "raise the quota"),
        (errno.EROFS, "make the file system writable"),
    ],
)
def test_a_full_disk_is_one_line_naming_the_file_and_nothing_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, hint: str
) -> None:
    shard = tmp_path / "iter1_generate" / "shards" / "shard-00003.jsonl"
    shard.parent.mkdir(parents=True)

    def full(*_: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "replace", full)
    with pytest.raises(WriteError) as caught:
        write_jsonl_atomic(shard, [{"id": "p1", "responses": ["a"]}])
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert message.startswith(f"cannot write {shard} (generation shard): ")
    assert hint in message
    assert not shard.exists() and not no_temporaries(tmp_path)


def test_a_failed_write_keeps_the_old_file_and_says_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = Path("runs/x/manifest.json")
    write_json_atomic(manifest, {"stages": {}})
    monkeypatch.setenv("SPA_RECIPES_ENOSPC_AT", "x/manifest.json")
    with pytest.raises(WriteError, match=r"^cannot write runs/x/manifest.json \(run manifest\): No space left"):
        write_json_atomic(manifest, {"stages": {"split": {}}})
    with pytest.raises(WriteError, match=r"\(the notes\)"):
        write_text_atomic(manifest, "x", what="the notes")
    assert strict(manifest.read_text()) == {"stages": {}}
    assert not no_temporaries(tmp_path)


def test_other_os_errors_are_not_disguised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "replace", broken)
    with pytest.raises(OSError) as caught:
        write_text_atomic(tmp_path / "a.txt", "x")
    assert not isinstance(caught.value, WriteError) and caught.value.errno == errno.EIO
    assert not no_temporaries(tmp_path)


def test_atomic_dir_removes_its_folder_when_the_disk_is_full(tmp_path: Path) -> None:
    final = tmp_path / "work" / "checkpoints" / "step-4"
    final.parent.mkdir(parents=True)
    full = pytest.raises(WriteError, match=r"step-4 \(training checkpoint\): No space left on device")
    with full, atomic_dir(final) as tmp:
        (tmp / "model.pt").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert not final.exists() and not no_temporaries(tmp_path)
    with atomic_dir(final, "checkpoint") as tmp:
        (tmp / "model.pt").write_bytes(b"whole")
    assert is_complete(final)


def test_an_append_that_fails_leaves_no_half_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "work" / "metrics.jsonl"
    path.parent.mkdir()
    append_text(path, dumps_json({"step": 1}) + "\n")
    monkeypatch.setenv("SPA_RECIPES_ENOSPC_AT", "work/metrics.jsonl")
    with pytest.raises(WriteError, match=r"\(training metrics\)"):
        append_text(path, dumps_json({"step": 2}) + "\n", "training metrics")
    assert path.read_text() == '{"step": 1}\n'


@pytest.mark.skipif(sys.platform == "win32", reason="subprocess run of the tiny recipe")
def test_a_full_disk_during_a_run_exits_2_and_the_same_command_resumes(tmp_path: Path) -> None:
    from test_runner import run_tiny, started_stages

    short = ("iterations=1", "noise_detector.lambda=[0.5]")
    point = "iter1_generate/shards/shard-00001.jsonl"
    failed = run_tiny(tmp_path, *short, env={"SPA_RECIPES_ENOSPC_AT": point})
    assert failed.returncode == 2, (failed.stdout[-2000:], failed.stderr[-2000:])
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, failed.stderr[-2000:]
    assert f"t/{point} (generation shard): No space left on device; free space" in errors[0]
    assert "Traceback" not in failed.stderr
    shards = tmp_path / "t" / "iter1_generate" / "shards"
    assert (shards / "shard-00000.jsonl").is_file() and not (shards / "shard-00001.jsonl").exists()
    assert not no_temporaries(tmp_path / "t")
    final = run_tiny(tmp_path, *short)
    assert final.returncode == 0, final.stderr[-2000:]
    assert started_stages(final.stdout)[0] == "iter1_generate" and "iter1_generate (resuming)" in final.stdout
    strict((tmp_path / "t" / "manifest.json").read_text())
    strict((tmp_path / "t" / "results.json").read_text())
