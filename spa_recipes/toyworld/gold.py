"""The toy world's gold preference behind the judge contract (an oracle: seed labels, controls, evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spa_recipes.api import ComponentConfig, EvaluatorContext, JudgeContext
from spa_recipes.toyworld.world import ToyWorld

Messages = list[dict[str, str]]
Row = dict[str, Any]


class GoldJudge:
    """Scores responses with :meth:`ToyWorld.gold_score` (mean per-word quality; higher is better).

    Args:
        cfg: ``GoldJudgeConfig`` or ``GoldEvaluatorConfig`` (both empty).
        ctx: its ``world`` is the world whose gold preference this is.
    """

    def __init__(self, cfg: ComponentConfig, ctx: JudgeContext | EvaluatorContext) -> None:
        self.cfg = cfg
        self.world: ToyWorld = ctx.world

    def score(self, rows: list[Row], out_dir: Path | None = None) -> list[Row]:
        """The judge contract (:class:`spa_recipes.judges.base.Judge`): gold scores of generated rows.

        Args:
            rows: generated rows (``"id"``, ``"prompt"``, ``"responses"``).
            out_dir: unused; gold scoring is instant, there is nothing to resume.

        Returns:
            New rows, in order, with ``"scores"`` (gold, higher is better) and ``"valid"`` (all True: the
            gold scores any text) added.

        Raises:
            DataError: a prompt is not from this world.
        """
        scores = self.score_responses([r["prompt"] for r in rows], [r["responses"] for r in rows])
        return [{**r, "scores": s, "valid": [True] * len(s)} for r, s in zip(rows, scores, strict=True)]

    def score_responses(self, prompts: list[Messages], responses: list[list[str]]) -> list[list[float]]:
        """Gold score of every response.

        Args:
            prompts: one message list per prompt.
            responses: the K responses of each prompt.

        Returns:
            ``scores[i][k]`` for response k of prompt i.

        Raises:
            ValueError: prompts and responses differ in length.
            DataError: a prompt is not from this world.
        """
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
        return [[self.world.gold_score(p, r) for r in rs] for p, rs in zip(prompts, responses, strict=True)]

    def compare(self, prompt: Messages, a: str, b: str) -> float:
        """1.0 when ``a`` is better under the gold, 0.5 on a tie, 0.0 when ``b`` is better."""
        score_a, score_b = self.world.gold_score(prompt, a), self.world.gold_score(prompt, b)
        return 1.0 if score_a > score_b else 0.5 if score_a == score_b else 0.0
