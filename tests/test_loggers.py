"""Loggers: JSONL always; TensorBoard and W&B chosen by recipe, checked at validation, fed stage summaries and steps."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from spa_recipes.api import LoggerContext, StageInfo
from spa_recipes.errors import UserError
from spa_recipes.loggers import JsonlLogger, WandbLogger, summary_group
from spa_recipes.loggers_config import JsonlLoggerConfig, WandbLoggerConfig
from spa_recipes.recipe import load_recipe
from spa_recipes.registry import get_registry

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny_spa.yaml"
STEPS = [
    {"step": 1, "loss": 0.69, "flagged_fraction": 0.25, "flagged_ids": ["a"], "nonfinite": False},
    {"step": 2, "loss": 0.65, "flagged_fraction": 0.125, "flagged_ids": [], "nonfinite": False},
]


def recipe_with_loggers(tmp_path: Path, loggers: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"extends: {TINY}\nlogging:\n  loggers: {loggers}\n")
    return path


def fake_run_dir(tmp_path: Path) -> Path:
    """A run directory whose iter1_train stage has written its per-step metrics."""
    run_dir = tmp_path / "run"
    (run_dir / "iter1_train" / "work").mkdir(parents=True)
    (run_dir / "iter1_train" / "work" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in STEPS))
    (run_dir / "recipe.yaml").write_text("run: {name: fake}\n")
    return run_dir


def test_summary_groups_put_stages_on_iteration_curves() -> None:
    assert summary_group(StageInfo("iter2_eval", "eval", 2)) == ("eval", 2)
    assert summary_group(StageInfo("iter10_train", "train", 10)) == ("train", 10)
    assert summary_group(StageInfo("eval_seed_dpo", "eval", 0)) == ("eval", 0)
    assert summary_group(StageInfo("seed_dpo", "seed_dpo", 0)) == ("train", 0)
    assert summary_group(StageInfo("sft", "sft", 0)) == ("sft", 0)


def test_jsonl_logger_appends_one_line_per_stage(tmp_path: Path) -> None:
    logger = JsonlLogger(JsonlLoggerConfig(), LoggerContext(tmp_path))
    logger.log_stage(StageInfo("sft", "sft", 0), 1.5, {"final_loss": 2.0})
    logger.log_stage(StageInfo("iter1_eval", "eval", 1), 0.5, {"win_rate": 60.0})
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [
        {"stage": "sft", "seconds": 1.5, "final_loss": 2.0},
        {"stage": "iter1_eval", "seconds": 0.5, "win_rate": 60.0},
    ]


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_missing_tracking_package_fails_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda pkg, *a: None if pkg == name else real(pkg, *a))
    with pytest.raises(UserError) as caught:
        load_recipe(recipe_with_loggers(tmp_path, f"[{{name: jsonl}}, {{name: {name}}}]"))
    message = "\n".join(caught.value.problems)
    assert f"logger '{name}' needs the {name} package" in message and "spa-recipes[tracking]" in message
    assert "logging.loggers.1" in message


def test_optional_packages_are_not_imported_until_built() -> None:
    code = (
        "import sys, spa_recipes.loggers, spa_recipes.loggers_config, spa_recipes.reporting, "
        "spa_recipes.stages.report; "
        "print(sorted(m for m in ('tensorboard', 'wandb', 'matplotlib', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_tensorboard_logger_writes_summaries_and_steps(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install 'spa-recipes[tracking]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = load_recipe(recipe_with_loggers(tmp_path, "[{name: tensorboard}]"))
    spec = recipe.logging.loggers[0]
    run_dir = fake_run_dir(tmp_path)
    logger = get_registry().get("logger", "tensorboard").build(spec.args, run_dir=run_dir)  # as the runner builds it
    logger.log_stage(StageInfo("eval_seed_dpo", "eval", 0), 0.5, {"win_rate": 55.0, "n": 40})
    logger.log_stage(StageInfo("iter1_train", "train", 1), 2.0, {"final_loss": 0.65, "extrapolated": True})
    logger.log_stage(StageInfo("iter1_eval", "eval", 1), 0.5, {"win_rate": 61.5, "agreement_with_gold": None})
    logger.close()

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()

    def curve(tag: str) -> list[tuple[int, float]]:
        return [(e.step, pytest.approx(e.value)) for e in events.Scalars(tag)]

    tags = set(events.Tags()["scalars"])
    assert curve("summary/eval/win_rate") == [(0, 55.0), (1, 61.5)]
    assert curve("summary/train/seconds") == [(1, 2.0)]
    assert curve("steps/iter1_train/loss") == [(1, 0.69), (2, 0.65)]
    assert curve("steps/iter1_train/flagged_fraction") == [(1, 0.25), (2, 0.125)]
    # Flags, lists and missing values are not scalars; the step is the axis, not a curve.
    assert (
        not {
            "summary/train/extrapolated",
            "summary/eval/agreement_with_gold",
            "steps/iter1_train/step",
            "steps/iter1_train/flagged_ids",
            "steps/iter1_train/nonfinite",
        }
        & tags
    )


class _FakeRun:
    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []
        self.metrics: dict[str, str | None] = {}
        self.finished = False

    def define_metric(self, name: str, step_metric: str | None = None) -> None:
        self.metrics[name] = step_metric

    def log(self, values: dict[str, Any]) -> None:
        self.logged.append(values)

    def finish(self) -> None:
        self.finished = True


def test_wandb_logger_sends_summaries_and_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # wandb is not a test dependency: a stand-in module records what the logger sends.
    run, init_kwargs = _FakeRun(), {}
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: init_kwargs.update(kwargs) or run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run_dir = fake_run_dir(tmp_path)
    cfg = WandbLoggerConfig.model_construct(  # the config's validator would look for the real package
        project="spa-recipes", entity=None, mode="offline", name=None, tags=[], log_steps=True
    )
    logger = WandbLogger(cfg, LoggerContext(run_dir))
    logger.log_stage(StageInfo("iter1_train", "train", 1), 2.0, {"final_loss": 0.65})
    logger.close()

    assert init_kwargs["mode"] == "offline" and init_kwargs["name"] == "run" and init_kwargs["dir"] == str(run_dir)
    assert init_kwargs["config"] == {"run": {"name": "fake"}}
    assert run.metrics["summary/*"] == "iteration" and run.metrics["iter1_train/*"] == "iter1_train/step"
    assert run.logged[0] == {"summary/train/final_loss": 0.65, "summary/train/seconds": 2.0, "iteration": 1}
    assert run.logged[1:] == [
        {"iter1_train/loss": 0.69, "iter1_train/flagged_fraction": 0.25, "iter1_train/step": 1},
        {"iter1_train/loss": 0.65, "iter1_train/flagged_fraction": 0.125, "iter1_train/step": 2},
    ]
    assert run.finished

    # A resumed run (a new process on the same run directory) continues the same W&B run.
    first_id = init_kwargs["id"]
    assert init_kwargs["resume"] == "allow" and len(first_id) == 12
    init_kwargs.clear()
    WandbLogger(cfg, LoggerContext(run_dir)).close()
    assert init_kwargs["id"] == first_id
    other = fake_run_dir(tmp_path / "other")
    WandbLogger(cfg, LoggerContext(other)).close()
    assert init_kwargs["id"] != first_id
