"""The toy world's components: configs and registration (torch-free: ``spa-recipe validate`` reads it)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from spa_recipes.api import DEMONSTRATIONS, PROMPT_DEMONSTRATIONS, ComponentConfig


class TinyLlamaConfig(ComponentConfig):
    """A small Llama built from a config (random init) with the data source's tokenizer."""

    hidden_size: int = Field(64, gt=0, description="width of the residual stream")
    num_layers: int = Field(2, gt=0, description="transformer blocks")
    num_heads: int = Field(4, gt=0, description="attention heads (hidden_size must divide)")
    intermediate_size: int = Field(172, gt=0, description="MLP width")
    max_position_embeddings: int = Field(128, gt=0, description="longest sequence the model takes")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyLlamaConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


class ToyWorldConfig(ComponentConfig):
    """The embedded synthetic world: prompts, demonstrations, human-like seed pairs and a gold preference."""

    capabilities = frozenset({DEMONSTRATIONS, PROMPT_DEMONSTRATIONS})

    num_prompts: int = Field(2000, gt=0, le=54810, description="distinct prompts the world offers for split")
    sft_demonstrations: int = Field(6000, ge=0, description="demonstrations for the sft stage")
    world_seed: int = Field(0, description="seed of the world itself (vocabulary, prompts, demonstrations)")


class GoldJudgeConfig(ComponentConfig):
    """The toy world's gold preference (only for labelling the seed set and for evaluation)."""


class GoldEvaluatorConfig(ComponentConfig):
    """Compares two responses with the toy world's gold preference."""


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the toy world's model, data source, judge and evaluator."""
    r = registry.register
    r(
        "model",
        "tiny_llama",
        config=TinyLlamaConfig,
        builder="spa_recipes.toyworld.model:build_tiny_llama",
        help="small Llama from a config, random init",
    )
    r(
        "dataset",
        "toy_world",
        config=ToyWorldConfig,
        builder="spa_recipes.toyworld.world:ToyWorld",
        help="embedded synthetic world with a gold preference",
    )
    gold = "spa_recipes.toyworld.gold:GoldJudge"
    r(
        "judge",
        "gold",
        config=GoldJudgeConfig,
        builder=gold,
        help="toy world's gold preference (an oracle, for controls)",
    )
    r("evaluator", "gold", config=GoldEvaluatorConfig, builder=gold, help="toy world's gold preference")
