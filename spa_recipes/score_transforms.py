"""Score transforms: what happens to the judge's scores before pairs are chosen (the pairs stage).

Implicit-reward judges reward whatever the previous model learned, length included; in the toy world responses
grow from 16 to ~28 words over three SPA iterations. DICE (arXiv 2406.09760) counters it by ranking with
``r - alpha * |y|`` and choosing alpha per iteration so that the selected chosen and rejected responses are as
long on average. Only valid scores change; an invalid one stays as it is (it never becomes a preference).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spa_recipes.api import ScoreTransformContext
from spa_recipes.score_transforms_config import LengthNormalizedConfig, LengthRegularizedConfig, NoTransformConfig

Row = dict[str, Any]
Select = Callable[[list[Row]], list[Row]]


class NoTransform:
    """The judge's scores as they are."""

    def __init__(self, cfg: NoTransformConfig, ctx: ScoreTransformContext = ScoreTransformContext()) -> None:
        pass

    def transform(self, rows: list[Row], select: Select) -> tuple[list[Row], dict[str, Any]]:
        return rows, {}


def text_length(text: str, unit: str) -> int:
    """|y| of a text: characters or words."""
    return len(text) if unit == "chars" else len(text.split())


def response_length(row: Row, index: int, unit: str) -> int:
    """|y| of a row's response ``index``: characters, words, or generated tokens (EOS included)."""
    if unit == "tokens":
        return int(row["num_tokens"][index])
    return text_length(row["responses"][index], unit)


def _penalised(rows: list[Row], lengths: list[list[int]], alpha: float) -> list[Row]:
    return [
        {
            **row,
            "scores": [s - alpha * n if ok else s for s, n, ok in zip(row["scores"], ns, row["valid"], strict=True)],
        }
        for row, ns in zip(rows, lengths, strict=True)
    ]


def length_gap(pairs: list[Row], unit: str) -> float:
    """Mean |chosen| - mean |rejected| over ``pairs`` (0 when there are none)."""
    if not pairs:
        return 0.0
    return sum(text_length(p["chosen"], unit) - text_length(p["rejected"], unit) for p in pairs) / len(pairs)


class LengthRegularized:
    """``score - alpha * |y|``; with ``alpha: auto``, DICE's sweep (see the module docstring).

    The sweep keeps the first alpha with the smallest ``|mean |y_chosen| - mean |y_rejected||`` over the pairs the
    recipe's selector makes from the penalised scores (token lengths are measured as words in the gap when
    ``unit`` is tokens, since pairs keep texts only).
    """

    def __init__(self, cfg: LengthRegularizedConfig, ctx: ScoreTransformContext = ScoreTransformContext()) -> None:
        self.cfg = cfg

    def transform(self, rows: list[Row], select: Select) -> tuple[list[Row], dict[str, Any]]:
        unit = self.cfg.unit
        lengths = [[response_length(row, i, unit) for i in range(len(row["responses"]))] for row in rows]
        gap_unit = "words" if unit == "tokens" else unit
        before = length_gap(select(rows), gap_unit)
        if self.cfg.alpha == "auto":
            steps = int(round(self.cfg.alpha_max / self.cfg.alpha_step))
            best = (abs(before), 0.0)
            for k in range(1, steps + 1):
                alpha = round(k * self.cfg.alpha_step, 12)  # 6e-05, not 6.000000000000001e-05, in the summary
                gap = abs(length_gap(select(_penalised(rows, lengths, alpha)), gap_unit))
                if gap < best[0]:
                    best = (gap, alpha)
            alpha = best[1]
        else:
            alpha = float(self.cfg.alpha)
        out = _penalised(rows, lengths, alpha)
        return out, {
            "alpha": alpha,
            f"length_gap_{gap_unit}_before": before,
            f"length_gap_{gap_unit}": length_gap(select(out), gap_unit),
        }


class LengthNormalized:
    """The judge's score divided by the response's generated tokens (EOS included)."""

    def __init__(self, cfg: LengthNormalizedConfig, ctx: ScoreTransformContext = ScoreTransformContext()) -> None:
        pass

    def transform(self, rows: list[Row], select: Select) -> tuple[list[Row], dict[str, Any]]:
        out = [
            {
                **row,
                "scores": [
                    s / max(int(n), 1) if ok else s
                    for s, n, ok in zip(row["scores"], row["num_tokens"], row["valid"], strict=True)
                ],
            }
            for row in rows
        ]
        return out, {}
