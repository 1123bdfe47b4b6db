"""sft: supervised warm-up on the data source's demonstrations; makes pi_init (toy recipes only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from spa_recipes.runner.graph import Stage
from spa_recipes.training.sft import train_sft


def run(ctx: Any, stage: Stage, out: Path) -> dict[str, Any]:
    recipe = ctx.recipe
    tokenizer = ctx.source.tokenizer()
    seed = ctx.seed_for(stage)
    torch.manual_seed(seed)
    model = ctx.build(recipe.models.base, "model", tokenizer=tokenizer)
    return train_sft(
        ctx.source.demonstrations(),
        model=model,
        tokenizer=tokenizer,
        output_dir=out / "model",
        work_dir=out / "work",
        training=recipe.training.sft,
        seed=seed,
        dtype=recipe.models.dtype,
        description=stage.name,
    )
