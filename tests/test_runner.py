"""The runner end to end through the real CLI: run directory, results, resume after SIGKILL, partial re-runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "tiny_spa.yaml"
# tiny_spa.yaml shrunk by overrides only: two iterations, small prompt sets, small shards and checkpoints,
# so that every stage has several shards or checkpoints to be cut off between.
SHRUNK = [
    "models.base.hidden_size=64",
    "models.base.num_layers=2",
    "models.base.intermediate_size=172",
    "data.num_prompts=200",
    "data.sft_demonstrations=600",
    "split.seed_size=16",
    "split.prompts_per_iteration=48",
    "split.eval_holdout=24",
    "iterations=2",
    "noise_detector.lambda=[0.5,0.25]",
    "generation.max_new_tokens=16",
    "generation.shard_size=16",
    "training.sft.epochs=1",
    "training.seed.epochs=1",
    "training.iteration.batch_size=8",
    "training.iteration.checkpoint_every=2",
    "evaluation.samples_per_prompt=1",
]


def spa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spa_recipes", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def run_tiny(out: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return spa("run", str(TINY), *SHRUNK, f"run.output_dir={out}", "run.name=t", "--no-progress", *extra, env=env)


def started_stages(stdout: str) -> list[str]:
    return [line[2:].split()[0] for line in stdout.splitlines() if line.startswith("> ")]


def model_weights(run_dir: Path, stage: str) -> dict:
    return load_file(run_dir / stage / "model" / "model.safetensors")


def test_run_directory_layout_and_results(reference_run: Path) -> None:
    run_dir = reference_run
    for name in ("recipe.yaml", "manifest.json", "metrics.jsonl", "run.log", "results.json", "report.md"):
        assert (run_dir / name).is_file(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    expected = ["split", "sft", "seed_dpo", "eval_baseline", "eval_seed_dpo"]
    for i in (1, 2):
        expected += [f"iter{i}_{s}" for s in ("generate", "judge", "pairs", "train", "eval")]
    expected.append("report")
    assert sorted(manifest["stages"]) == sorted(expected)
    for name, entry in manifest["stages"].items():
        assert entry["status"] == "done", name
        assert (run_dir / name / ".complete").exists(), name
    results = json.loads((run_dir / "results.json").read_text())
    assert [m["model"] for m in results["models"]] == ["seed_dpo", "iter1_train", "iter2_train"]
    for m in results["models"]:
        assert {"model", "iteration", "evaluator", "win_rate", "lc_win_rate", "n"} <= set(m)
        assert m["evaluator"] == "gold" and m["n"] == 24 and 0 <= m["win_rate"] <= 100
    assert [it["iteration"] for it in results["iterations"]] == [1, 2]
    for it in results["iterations"]:
        assert 0 <= it["agreement_with_gold"] <= 100
    stats = json.loads((run_dir / "split" / "stats.json").read_text())
    assert stats["disjoint"] and stats["seed"] == 16 and stats["prompts_per_iteration"] == [48, 48]
    status = spa("status", str(run_dir))
    assert status.returncode == 0
    assert status.stdout.count(" done ") == len(expected)


def test_rerun_skips_everything(reference_run: Path, tmp_path: Path) -> None:
    shutil.copytree(reference_run, tmp_path / "t")
    result = run_tiny(tmp_path)
    assert result.returncode == 0, result.stderr
    assert started_stages(result.stdout) == []


def test_override_of_last_iteration_reruns_only_its_stages(reference_run: Path, tmp_path: Path) -> None:
    shutil.copytree(reference_run, tmp_path / "t")
    result = run_tiny(tmp_path, "noise_detector.lambda=[0.5,0.1]")
    assert result.returncode == 0, result.stderr
    assert started_stages(result.stdout) == ["iter2_train", "iter2_eval", "report"]


def test_rerun_with_an_override_matches_a_fresh_run_with_it(reference_run: Path, tmp_path: Path) -> None:
    """Only the stages that read the changed value (and those after them) run again, and what the reused stages
    left is as good as recomputing them: the results equal a fresh run's with the override."""
    override = "refiner.alpha=0.3"
    shutil.copytree(reference_run, tmp_path / "rerun" / "t")
    rerun = run_tiny(tmp_path / "rerun", override)
    assert rerun.returncode == 0, rerun.stderr
    assert started_stages(rerun.stdout) == ["iter1_train", "iter1_eval"] + [
        f"iter2_{s}" for s in ("generate", "judge", "pairs", "train", "eval")
    ] + ["report"]
    fresh = run_tiny(tmp_path / "fresh", override)
    assert fresh.returncode == 0, fresh.stderr
    a, b = tmp_path / "rerun" / "t", tmp_path / "fresh" / "t"
    assert (a / "results.json").read_text() == (b / "results.json").read_text()
    assert (a / "iter2_pairs" / "pairs.jsonl").read_text() == (b / "iter2_pairs" / "pairs.jsonl").read_text()
    weights_a, weights_b = model_weights(a, "iter2_train"), model_weights(b, "iter2_train")
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    before = model_weights(reference_run, "iter1_train")
    assert not all(torch.equal(w, before[k]) for k, w in model_weights(a, "iter1_train").items())


def test_resume_state_is_removed_when_a_stage_finishes_unless_kept_and_clean_frees_it(
    reference_run: Path, tmp_path: Path
) -> None:
    # By default a finished stage keeps no checkpoints or shards (SHRUNK checkpoints every 2 steps, 16-row shards).
    assert not list(reference_run.glob("*/work/checkpoints")) and not list(reference_run.glob("*/shards"))
    assert (reference_run / "iter2_train" / "work" / "metrics.jsonl").is_file()
    shutil.copytree(reference_run, tmp_path / "t")
    run_dir = tmp_path / "t"
    kept = run_tiny(tmp_path, "noise_detector.lambda=[0.5,0.1]", "run.keep_checkpoints=true")
    assert kept.returncode == 0, kept.stderr
    checkpoints = run_dir / "iter2_train" / "work" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir() if p.name.startswith("step-")]  # kept
    assert (run_dir / "iter2_eval" / "shards").is_dir()
    shutil.copytree(run_dir / "iter2_generate", run_dir / "iter3_generate")  # left by a run with more iterations

    dry = spa("clean", str(run_dir), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    listed = [line.split()[2] for line in dry.stdout.splitlines()[:-1]]
    assert listed == [str(checkpoints), str(run_dir / "iter2_eval" / "shards"), str(run_dir / "iter3_generate")]
    assert dry.stdout.splitlines()[-1].startswith("would free ") and checkpoints.is_dir()
    cleaned = spa("clean", str(run_dir))
    assert cleaned.returncode == 0, cleaned.stderr
    assert cleaned.stdout.splitlines()[-1].startswith("freed ") and cleaned.stdout.endswith("in 3 paths\n")
    assert not checkpoints.exists() and not (run_dir / "iter3_generate").exists()
    assert (run_dir / "iter2_train" / "model" / "model.safetensors").is_file()
    # What clean left is all a rerun needs: nothing runs again, the report is the same.
    again = run_tiny(tmp_path, "noise_detector.lambda=[0.5,0.1]", "run.keep_checkpoints=true")
    assert again.returncode == 0, again.stderr
    assert started_stages(again.stdout) == []


def test_a_damaged_output_reruns_its_stage_and_those_after_it(reference_run: Path, tmp_path: Path) -> None:
    shutil.copytree(reference_run, tmp_path / "t")
    pairs = tmp_path / "t" / "iter2_pairs" / "pairs.jsonl"
    pairs.write_text(pairs.read_text()[:-100])  # truncated in place: marker and manifest still say finished
    result = run_tiny(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning: iter2_pairs: pairs.jsonl has changed since it finished" in result.stderr
    assert started_stages(result.stdout) == ["iter2_pairs", "iter2_train", "iter2_eval", "report"]
    assert pairs.read_text() == (reference_run / "iter2_pairs" / "pairs.jsonl").read_text()
    assert (tmp_path / "t" / "results.json").read_text() == (reference_run / "results.json").read_text()


def test_sigkill_in_generation_judging_and_training_then_resume(reference_run: Path, tmp_path: Path) -> None:
    kill_points = [
        "iter1_generate/shards/shard-00001.jsonl",
        "iter1_judge/shards/reference/shard-00001.jsonl",
        "iter2_train/work/checkpoints/step-4",
    ]
    for point in kill_points:
        killed = run_tiny(tmp_path, env={"SPA_RECIPES_KILL_AT": point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stdout[-2000:], killed.stderr[-2000:])
        stage = point.split("/")[0]
        assert "(resuming)" in killed.stdout or point == kill_points[0]
        assert started_stages(killed.stdout)[-1] == stage
    status = spa("status", str(tmp_path / "t"))
    assert "cut off" in status.stdout
    final = run_tiny(tmp_path)
    assert final.returncode == 0, final.stderr
    assert started_stages(final.stdout)[0] == "iter2_train"
    assert "iter2_train (resuming)" in final.stdout
    for stage in ("iter1_train", "iter2_train"):
        ours, theirs = model_weights(tmp_path / "t", stage), model_weights(reference_run, stage)
        assert ours.keys() == theirs.keys()
        assert all((ours[k] == theirs[k]).all() for k in ours), stage
    assert (tmp_path / "t" / "results.json").read_text() == (reference_run / "results.json").read_text()


class _LabelReadTracker(dict):
    """A preference row that records which modules read its labels."""

    reads: list[tuple[str, set[str]]] = []

    def __getitem__(self, key: str):  # noqa: ANN204
        if key in ("chosen", "rejected"):
            _LabelReadTracker.reads.append((dict.__getitem__(self, "id"), _stage_modules()))
        return dict.__getitem__(self, key)

    def get(self, key: str, default=None):  # noqa: ANN001, ANN201
        return self[key] if key in self else default  # noqa: SIM401 - must go through __getitem__


def _stage_modules() -> set[str]:
    import inspect

    return {f.frame.f_globals.get("__name__", "") for f in inspect.stack()} & {
        f"spa_recipes.stages.{m.stem}" for m in (ROOT / "spa_recipes" / "stages").glob("*.py")
    }


def test_gold_is_read_only_by_split_and_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spa_recipes.recipe import load_recipe
    from spa_recipes.runner.run import execute
    from spa_recipes.toyworld.world import ToyWorld

    gold_calls: list[set[str]] = []
    real_rows, real_gold = ToyWorld.rows, ToyWorld.gold_score
    monkeypatch.setattr(ToyWorld, "rows", lambda self: [_LabelReadTracker(r) for r in real_rows(self)])

    def gold_score(self, prompt, response):  # noqa: ANN001, ANN202
        gold_calls.append(_stage_modules())
        return real_gold(self, prompt, response)

    monkeypatch.setattr(ToyWorld, "gold_score", gold_score)
    _LabelReadTracker.reads = []
    overrides = [o for o in SHRUNK if not o.startswith(("iterations", "noise_detector"))]
    overrides += ["iterations=1", "noise_detector.lambda=[0.5]", f"run.output_dir={tmp_path}", "run.name=g"]
    recipe = load_recipe(TINY, overrides)
    execute(recipe, progress=False)

    assert gold_calls and all(mods == {"spa_recipes.stages.evaluate"} for mods in gold_calls)
    assert _LabelReadTracker.reads and all(mods == {"spa_recipes.stages.split"} for _, mods in _LabelReadTracker.reads)
    for name in ("prompts_1.jsonl", "eval.jsonl"):
        rows = [json.loads(line) for line in (tmp_path / "g" / "split" / name).read_text().splitlines()]
        extra = {"demonstration"} if name.startswith("prompts") else set()  # SPIN's answer (world-drawn, no label)
        assert rows and all(set(r) == {"id", "prompt", *extra} for r in rows)
