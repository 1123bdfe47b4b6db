"""Pair selection: turn judged rows (K scored responses each) into chosen/rejected pairs.

Only valid judgements take part (and, with ``drop_truncated``, only responses that ended with EOS); a row
with fewer than two such responses gives no pair and is counted. When the judge also scored with the model
before the policy (``previous_scores``, CREAM), each pair records how consistent the two rankings of its
row are (:func:`ranking_consistency`). Selection is deterministic: ties in score are broken by response position, and
``max_random`` draws from a generator seeded by ``(seed, row id)``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from spa_recipes.api import PairSelectorContext
from spa_recipes.pairs_config import DemonstrationSelectorConfig, PairSelectorConfig

Row = dict[str, Any]
Pick = Callable[[Row, list[int], int], tuple[int, int]]


def select_pairs(rows: list[Row], cfg: PairSelectorConfig, pick: Pick, seed: int) -> tuple[list[Row], dict[str, int]]:
    """One chosen/rejected pair per judged row, with ``pick`` choosing the two response indices.

    Args:
        rows: judged rows with ``"id"``, ``"prompt"``, ``"responses"``, ``"scores"``, ``"valid"`` and
            optionally ``"finished"`` (ended with EOS), ``"policy_logps"`` and ``"previous_scores"``.
        cfg: what to do with ties and identical texts.
        pick: ``(row, valid_indices, seed) -> (chosen, rejected)``, given at least two valid indices.
        seed: seed of any random choice (combined with each row id).

    Returns:
        ``(pairs, counts)``: pair rows ``{"id", "prompt", "chosen", "rejected", "chosen_score",
        "rejected_score", "chosen_index", "rejected_index"}`` plus ``"chosen_policy_logp"`` and
        ``"rejected_policy_logp"`` when the rows carry ``"policy_logps"``, ``"chosen_finished"`` and
        ``"rejected_finished"`` when they carry ``"finished"``, ``"consistency"`` when they carry
        ``"previous_scores"``; counts ``rows``, ``pairs``, ``invalid_responses``, ``truncated_responses``
        (left out by ``drop_truncated``), ``dropped_invalid`` (rows with < 2 usable responses),
        ``dropped_identical``, ``kept_identical`` (two equal texts, a pair with zero DPO gradient),
        ``dropped_tie``, ``kept_tie``, and ``chosen_truncated`` / ``rejected_truncated`` (kept pairs whose
        chosen / rejected response did not end with EOS).
    """
    names = [
        "rows",
        "pairs",
        "invalid_responses",
        "truncated_responses",
        "dropped_invalid",
        "dropped_identical",
        "kept_identical",
        "dropped_tie",
        "kept_tie",
        "chosen_truncated",
        "rejected_truncated",
    ]
    counts = dict.fromkeys(names, 0)
    pairs = []
    for row in rows:
        counts["rows"] += 1
        valid = [i for i, ok in enumerate(row["valid"]) if ok]
        counts["invalid_responses"] += len(row["valid"]) - len(valid)
        finished = row.get("finished")
        if cfg.drop_truncated and finished is not None:
            counts["truncated_responses"] += sum(1 for i in valid if not finished[i])
            valid = [i for i in valid if finished[i]]
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
        if finished is not None:
            pair["chosen_finished"], pair["rejected_finished"] = finished[chosen], finished[rejected]
            counts["chosen_truncated"] += not finished[chosen]
            counts["rejected_truncated"] += not finished[rejected]
        if row.get("previous_scores") is not None:
            pair["consistency"] = ranking_consistency(scores, row["previous_scores"], valid)
        pairs.append(pair)
        counts["pairs"] += 1
    return pairs, counts


def ranking_consistency(scores: list[float], previous: list[float], indices: list[int]) -> float:
    """How much two rankings of one row's responses agree, in [0, 1]: ``(tau_b + 1) / 2`` (CREAM's consistency).

    Kendall's tau-b between ``scores`` and ``previous`` over ``indices``: 1 when the two models order every
    pair of responses alike, 0 when they order every pair oppositely. When either model ranks no two of the
    responses apart (all tied, e.g. the previous model is the judge's reference, so its rewards are all 0), the
    rankings say nothing about each other and the consistency is 1: the current judge's label stands.
    """
    concordant = discordant = only_current = only_previous = 0
    for a, i in enumerate(indices):
        for j in indices[a + 1 :]:
            d1, d2 = scores[i] - scores[j], previous[i] - previous[j]
            if d1 == 0 and d2 == 0:
                continue
            if d1 == 0:
                only_previous += 1
            elif d2 == 0:
                only_current += 1
            elif (d1 > 0) == (d2 > 0):
                concordant += 1
            else:
                discordant += 1
    ordered_current = concordant + discordant + only_current
    ordered_previous = concordant + discordant + only_previous
    if ordered_current == 0 or ordered_previous == 0:
        return 1.0
    tau = (concordant - discordant) / (ordered_current * ordered_previous) ** 0.5
    return (tau + 1.0) / 2.0


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


class DemonstrationSelector:
    """SPIN's pairs (arXiv 2401.01335): chosen = the prompt's demonstration, rejected = the model's own sample.

    Scores are not read (pair it with the ``none`` judge). Rejected is the first valid sample that differs from
    the demonstration, else the first valid one: the K samples are drawn alike, so the first is as good as a
    random one, and taking it needs no seed. Counts are those of :func:`select_pairs`, plus
    ``dropped_no_demonstration`` (rows whose prompt has none); ``dropped_invalid`` counts rows with no valid
    sample (one is enough here), and a sample equal to the demonstration follows ``drop_identical``. Pairs
    have ``chosen_index`` -1 (the demonstration is no sample) and ``chosen_score`` 0.0 (it is not judged).
    """

    def __init__(self, cfg: DemonstrationSelectorConfig, ctx: PairSelectorContext = PairSelectorContext()) -> None:
        self.cfg = cfg

    def select(self, rows: list[Row], seed: int) -> tuple[list[Row], dict[str, int]]:
        """``(pairs, counts)`` as :func:`select_pairs` returns them; ``seed`` is unused (nothing is drawn)."""
        names = ["rows", "pairs", "invalid_responses", "dropped_invalid", "dropped_identical", "kept_identical"]
        counts = dict.fromkeys([*names, "dropped_tie", "kept_tie", "dropped_no_demonstration"], 0)
        pairs = []
        for row in rows:
            counts["rows"] += 1
            valid = [i for i, ok in enumerate(row["valid"]) if ok]
            counts["invalid_responses"] += len(row["valid"]) - len(valid)
            demonstration = row.get("demonstration")
            if not isinstance(demonstration, str):
                counts["dropped_no_demonstration"] += 1
                continue
            if not valid:
                counts["dropped_invalid"] += 1
                continue
            responses = row["responses"]
            rejected = next((i for i in valid if responses[i] != demonstration), valid[0])
            if responses[rejected] == demonstration:
                if self.cfg.drop_identical:
                    counts["dropped_identical"] += 1
                    continue
                counts["kept_identical"] += 1
            pair = {
                "id": row["id"],
                "prompt": row["prompt"],
                "chosen": demonstration,
                "rejected": responses[rejected],
                "chosen_score": 0.0,
                "rejected_score": row["scores"][rejected] if "scores" in row else 0.0,
                "chosen_index": -1,
                "rejected_index": rejected,
            }
            pairs.append(pair)
            counts["pairs"] += 1
        return pairs, counts
