"""judge_train: train the recipe's external judge once on the labelled seed pairs (a fixed judge baseline).

A judge whose config sets ``train_on_seed: true`` gets this stage; its config declares the ``train_on_seed``
capability and its class has ``train_on_seed(cfg, pairs, *, base_path, output_dir, work_dir, seed, dtype,
max_length, training)``. It trains on the shared training loop (Accelerate, resume from checkpoints) with
the iterations' training settings, so every process takes part.
"""

from __future__ import annotations

from typing import Any

from spa_recipes.api import TRAIN_ON_SEED
from spa_recipes.atomic import read_jsonl
from spa_recipes.errors import PluginError
from spa_recipes.registry import get_registry
from spa_recipes.runner.stage import StageContext, StageKind
from spa_recipes.stages.train import TRAINING_OUTPUTS


def run(ctx: StageContext) -> dict[str, Any]:
    recipe = ctx.recipe
    component = get_registry().get("judge", recipe.judge.name)
    if not component.offers(TRAIN_ON_SEED):
        raise PluginError(f"judge.train_on_seed: judge '{recipe.judge.name}' cannot be trained on the seed pairs")
    return component.resolve_builder().train_on_seed(
        recipe.judge.args,
        read_jsonl(ctx.input("pairs")),
        base_path=ctx.model("base"),
        output_dir=ctx.output("model"),
        work_dir=ctx.output("work"),
        seed=ctx.seed,
        dtype=recipe.models.dtype,
        max_length=recipe.training.iteration.max_length,
        training=recipe.training.iteration,
    )


KIND = StageKind(
    "judge_train",
    run,
    inputs=("pairs", "base"),
    outputs=TRAINING_OUTPUTS,
    scratch=("checkpoints",),
    reads=("judge", "models.dtype", "training.iteration", "run.seed"),
    collective=True,
)
