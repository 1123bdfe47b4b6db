"""judge_train: train the recipe's external judge once on the labelled seed pairs (a fixed judge baseline).

Any judge whose config sets ``train_on_seed: true`` and whose class offers
``train_on_seed(cfg, pairs, *, base_path, output_dir, seed, dtype, max_length)`` gets this stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spa_recipes.atomic import read_jsonl
from spa_recipes.errors import PluginError
from spa_recipes.registry import get_registry
from spa_recipes.runner.graph import Stage


def run(ctx: Any, stage: Stage, out: Path) -> dict[str, Any]:
    recipe = ctx.recipe
    judge_class = get_registry().get("judge", recipe.judge.name).resolve_builder()
    train = getattr(judge_class, "train_on_seed", None)
    if train is None:
        raise PluginError(f"judge.train_on_seed: judge '{recipe.judge.name}' cannot be trained on the seed pairs")
    return train(
        recipe.judge.args,
        read_jsonl(ctx.stage_dir("split") / "seed.jsonl"),
        base_path=ctx.model_path(stage.model),
        output_dir=out / "model",
        seed=ctx.seed_for(stage),
        dtype=recipe.models.dtype,
        max_length=recipe.training.iteration.max_length,
    )
