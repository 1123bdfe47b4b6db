"""Pair selection: turn judged rows (K scored responses each) into chosen/rejected pairs.

Only valid judgements take part; a row with fewer than two valid responses gives no pair and is
counted. Selection is deterministic: ties in score are broken by response position, and
``max_random`` draws from a generator seeded by ``(seed, row id)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from spa_recipes.api import PairSelectorContext
from spa_recipes.pairs_config import PairSelectorConfig

Row = dict[str, Any]
Pick = Callable[[Row, list[int], int], tuple[int, int]]


def select_pairs(rows: list[Row], cfg: PairSelectorConfig, pick: Pick, seed: int) -> tuple[list[Row], dict[str, int]]:
    """One chosen/rejected pair per judged row, with ``pick`` choosing the two response indices.

    Args:
        rows: judged rows with ``"id"``, ``"prompt"``, ``"responses"``, ``"scores"``, ``"valid"`` and
            optionally ``"policy_logps"``.
        cfg: what to do with ties and identical texts.
        pick: ``(row, valid_indices, seed) -> (chosen, rejected)``, given at least two valid indices.
        seed: seed of any random choice (combined with each row id).

    Returns:
        ``(pairs, counts)``: pair rows ``{"id", "prompt", "chosen", "rejected", "chosen_score",
        "rejected_score", "chosen_index", "rejected_index"}`` plus ``"chosen_policy_logp"`` and
        ``"rejected_policy_logp"`` when the rows carry ``"policy_logps"``; counts ``rows``, ``pairs``,
        ``invalid_responses``, ``dropped_invalid`` (rows with < 2 valid responses),
        ``dropped_identical``, ``kept_identical`` (two equal texts, a pair with zero DPO gradient),
        ``dropped_tie`` and ``kept_tie``.
    """
    names = [
        "rows",
        "pairs",
        "invalid_responses",
        "dropped_invalid",
        "dropped_identical",
        "kept_identical",
        "dropped_tie",
        "kept_tie",
    ]
    counts = dict.fromkeys(names, 0)
    pairs = []
    for row in rows:
        counts["rows"] += 1
        valid = [i for i, ok in enumerate(row["valid"]) if ok]
        counts["invalid_responses"] += len(row["valid"]) - len(valid)
        if len(valid) < 2:
            counts["dropped_invalid"] += 1
            continue
        chosen, rejected = pick(row, valid, seed)
        responses, scores = row["responses"], row["scores"]
        if responses[chosen] == responses[rejected]:
            if cfg.drop_identical:
                counts["dropped_identical"] += 1
                continue
            counts["kept_identical"] += 1
        if scores[chosen] == scores[rejected]:
            if cfg.ties == "drop":
                counts["dropped_tie"] += 1
                continue
            counts["kept_tie"] += 1
        pair = {
            "id": row["id"],
            "prompt": row["prompt"],
            "chosen": responses[chosen],
            "rejected": responses[rejected],
            "chosen_score": scores[chosen],
            "rejected_score": scores[rejected],
            "chosen_index": chosen,
            "rejected_index": rejected,
        }
        if "policy_logps" in row:
            pair["chosen_policy_logp"] = row["policy_logps"][chosen]
            pair["rejected_policy_logp"] = row["policy_logps"][rejected]
        pairs.append(pair)
        counts["pairs"] += 1
    return pairs, counts


def _best(scores: list[float], valid: list[int]) -> int:
    """The first valid index with the highest score."""
    return max(valid, key=lambda i: (scores[i], -i))


def _min_max(row: Row, valid: list[int], seed: int) -> tuple[int, int]:
    scores = row["scores"]
    # Among equal lowest scores the last index, so that all-equal scores still give two responses.
    return _best(scores, valid), min(valid, key=lambda i: (scores[i], -i))


def _max_random(row: Row, valid: list[int], seed: int) -> tuple[int, int]:
    chosen = _best(row["scores"], valid)
    # A string seed is hashed with SHA-512 by random.Random: stable across processes and runs.
    rng = random.Random(f"{seed}:{row['id']}")
    return chosen, rng.choice([i for i in valid if i != chosen])


class MinMaxSelector:
    """Chosen = the highest-scored valid response, rejected = the lowest (SPA's ``min_max``).

    Equal scores are broken by position: chosen is the first of the best, rejected the last of the worst.
    """

    def __init__(self, cfg: PairSelectorConfig, ctx: PairSelectorContext = PairSelectorContext()) -> None:
        self.cfg = cfg

    def select(self, rows: list[Row], seed: int) -> tuple[list[Row], dict[str, int]]:
        """See :func:`select_pairs`."""
        return select_pairs(rows, self.cfg, _min_max, seed)


class MaxRandomSelector:
    """Chosen = the highest-scored valid response, rejected = a random other valid one (seeded per row id)."""

    def __init__(self, cfg: PairSelectorConfig, ctx: PairSelectorContext = PairSelectorContext()) -> None:
        self.cfg = cfg

    def select(self, rows: list[Row], seed: int) -> tuple[list[Row], dict[str, int]]:
        """See :func:`select_pairs`."""
        return select_pairs(rows, self.cfg, _max_random, seed)
