"""The rule-prompt data source and its gold: configs and registration (torch-free)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from spa_recipes.api import PROMPT_DEMONSTRATIONS, ComponentConfig

RuleName = Literal["done", "caps"]
RuleTask = Literal["add", "sub", "mul", "next", "reverse", "count"]


class RulePromptsConfig(ComponentConfig):
    """Templated questions with a formatting rule; the gold checks the rule (spa_recipes/rules/world.py)."""

    capabilities = frozenset({PROMPT_DEMONSTRATIONS})

    num_prompts: int = Field(600, gt=0, description="distinct prompts the source offers for split")
    rules: list[RuleName] = Field(
        default_factory=lambda: ["done", "caps"],
        min_length=1,
        description="done: end with the word DONE; caps: answer in capital letters",
    )
    tasks: list[RuleTask] = Field(
        default_factory=lambda: ["add", "sub", "mul", "next", "reverse", "count"],
        min_length=1,
        description="question kinds, each with an answer computed in code",
    )
    world_seed: int = Field(0, description="seed of the prompts themselves")


class RuleGoldConfig(ComponentConfig):
    """Gold of rule prompts: 1 when the response follows the prompt's rule, plus a bonus when it is correct."""

    correctness_weight: float = Field(
        0.5, ge=0.0, lt=1.0, description="added for a correct answer (below 1: the rule always dominates)"
    )


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the rule prompts, and their gold as judge and evaluator."""
    registry.register(
        "dataset",
        "rule_prompts",
        config=RulePromptsConfig,
        builder="spa_recipes.rules.world:RulePrompts",
        help="templated questions with a formatting rule checked in code (gold)",
    )
    gold = "spa_recipes.rules.world:RuleGoldJudge"
    registry.register(
        "judge",
        "rule_gold",
        config=RuleGoldConfig,
        builder=gold,
        help="rule prompts' gold: rule followed, then correctness (an oracle, for controls)",
    )
    registry.register(
        "evaluator",
        "rule_gold",
        config=RuleGoldConfig,
        builder=gold,
        help="rule prompts' gold: rule followed, then correctness",
    )
