"""Which rows of a preference dataset the split can use, and why the others are skipped.

Data sources pass every record on, normalised as far as it goes (:mod:`spa_recipes.data.preferences`); here
each row is checked once. A row that is not a mapping, has no id, an unreadable or empty prompt, a chosen or
rejected response that is not text (a missing column reads as None), equal responses, a prompt or id seen
before, or a prompt longer than ``max_prompt_length`` tokens (when the recipe skips long prompts) is skipped
and counted under its reason, with the first row ids of each reason kept for the split's summary. When most
rows are unusable for reasons other than repeated prompts, the data or its column settings are wrong: one
line says so and the run stops before anything trains.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spa_recipes.errors import DataError

EXAMPLES = 5  # row ids kept per reason
DUPLICATE = "duplicate prompt"


@dataclass
class Cleaned:
    """The usable rows of a dataset and what was skipped.

    Attributes:
        rows: usable rows, in the dataset's order (the first copy of a repeated prompt).
        skipped: reason -> rows skipped for it.
        examples: reason -> the first row ids skipped for it (``#<n>``, its position, for a row without an id).
    """

    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def describe(self) -> str:
        """``malformed prompt 2 (first: 3, 7), not a mapping 1 (first: #9)``: reasons, most frequent first."""
        return ", ".join(
            f"{reason} {count} (first: {', '.join(self.examples[reason])})"
            for reason, count in self.skipped.most_common()
        )


def clean_rows(
    rows: list[Any],
    prompt_tokens: Callable[[list[dict[str, str]]], int] | None = None,
    max_prompt_length: int | None = None,
) -> Cleaned:
    """Keep the usable rows; count and name the others.

    Args:
        rows: the data source's rows (``{"id", "prompt": messages, "chosen", "rejected"}`` when well formed).
        prompt_tokens: a prompt's length in tokens; with ``max_prompt_length``, longer prompts are skipped.
        max_prompt_length: the longest prompt kept (tokens).
    """
    out, seen_prompts, seen_ids = Cleaned(), set(), set()
    for position, row in enumerate(rows):
        reason = _problem(row)
        if reason is None:
            if repr(row["prompt"]) in seen_prompts:
                reason = DUPLICATE
            elif row["id"] in seen_ids:
                reason = "duplicate id"
            elif prompt_tokens and max_prompt_length and prompt_tokens(row["prompt"]) > max_prompt_length:
                reason = f"prompt over {max_prompt_length} tokens"
        if reason:
            out.skipped[reason] += 1
            shown = out.examples.setdefault(reason, [])
            if len(shown) < EXAMPLES:
                shown.append(_row_name(row, position))
            continue
        seen_prompts.add(repr(row["prompt"]))
        seen_ids.add(row["id"])
        out.rows.append(row)
    return out


def check_mostly_usable(cleaned: Cleaned, what: str) -> None:
    """Stop when most rows are unusable for reasons other than repeated prompts.

    Raises:
        DataError: one line naming the data, the share of bad rows, and the reasons with their first rows.
    """
    bad = sum(count for reason, count in cleaned.skipped.items() if reason != DUPLICATE)
    total = len(cleaned.rows) + sum(cleaned.skipped.values())
    if total and bad * 2 > total:
        raise DataError(
            f"{what}: {bad} of {total} rows cannot be used ({cleaned.describe()}); check the file and the "
            "data section's column settings (spa-recipe explain dataset.<name>)"
        )


def _row_name(row: Any, position: int) -> str:
    row_id = row.get("id") if isinstance(row, dict) else None
    return str(row_id) if isinstance(row_id, str) and row_id else f"#{position}"


def _problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "not a mapping"
    if not isinstance(row.get("id"), str) or not row["id"]:
        return "missing id"
    prompt = row.get("prompt")
    if (
        not isinstance(prompt, list)
        or not prompt
        or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in prompt
        )
    ):
        return "malformed prompt"
    if not any(m["content"].strip() for m in prompt):
        return "empty prompt"
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return "chosen/rejected not text"
    if chosen == rejected:
        return "chosen equals rejected"
    return None
