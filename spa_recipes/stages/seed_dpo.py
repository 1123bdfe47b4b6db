"""seed_dpo: plain sigmoid DPO on the labelled seed set: pi_0 from pi_init, with pi_init as the reference."""

from __future__ import annotations

from typing import Any

from spa_recipes.atomic import read_jsonl
from spa_recipes.runner.stage import StageContext, StageKind
from spa_recipes.stages.train import TRAINING_OUTPUTS, train_on


def run(ctx: StageContext) -> dict[str, Any]:
    pairs = read_jsonl(ctx.input("pairs"))
    return train_on(ctx, pairs, ctx.recipe.training.seed)


KIND = StageKind(
    "seed_dpo",
    run,
    inputs=("pairs", "policy", "reference"),
    outputs=TRAINING_OUTPUTS,
    scratch=("checkpoints",),
    reads=("training.seed", "loss", "models.dtype", "models.adapter", "run.seed"),
    collective=True,
)
