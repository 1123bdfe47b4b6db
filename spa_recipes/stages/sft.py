"""sft: supervised warm-up on the data source's demonstrations; makes pi_init from ``models.base`` (toy recipes)."""

from __future__ import annotations

from typing import Any

import torch

from spa_recipes.runner.stage import StageContext, StageKind
from spa_recipes.stages.train import TRAINING_OUTPUTS
from spa_recipes.training.sft import train_sft


def run(ctx: StageContext) -> dict[str, Any]:
    recipe = ctx.recipe
    tokenizer = ctx.source.tokenizer()
    torch.manual_seed(ctx.seed)
    model = ctx.build(recipe.models.base, "model", tokenizer=tokenizer)
    return train_sft(
        ctx.source.demonstrations(),
        model=model,
        tokenizer=tokenizer,
        output_dir=ctx.output("model"),
        work_dir=ctx.output("work"),
        training=recipe.training.sft,
        seed=ctx.seed,
        dtype=recipe.models.dtype,
        description=ctx.stage.name,
    )


KIND = StageKind(
    "sft",
    run,
    outputs=TRAINING_OUTPUTS,
    scratch=("checkpoints",),
    reads=("data", "models.base", "models.dtype", "training.sft", "run.seed"),
    collective=True,
)
