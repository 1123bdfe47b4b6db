"""Pairwise judging shared by PairRM and the LLM judge: round robin, position swap, scores from win probabilities.

A pairwise judge supplies ``compare(prompts, firsts, seconds)``: for each comparison the probability that
the response shown *first* is the better one, or ``None`` when that comparison could not be judged (an
unparsable answer, a timeout, a non-finite output). :func:`judge_pairwise` turns that into the judge contract:

- Every unordered pair ``(i, j)`` of a row's K responses is compared (K = 2 in SPA: one comparison).
- With ``swap_positions`` each pair is also shown in the other order and the two readings are averaged,
  ``p(i > j) = (p(i first) + 1 - p(j first)) / 2``, which cancels a judge's preference for a position. The
  row records ``"order_disagreement"``: some pair was preferred one way in one order and the other way in
  the other (a sign of position bias or of a near tie).
- A comparison is invalid when either of its orders is; an invalid comparison is never turned into a
  preference. A response is valid only when all its comparisons are, so its score is never a mean over
  a different set of opponents than its rivals'.
- ``"scores"[k]`` is the mean probability that response k beats each other response (the round-robin win
  rate); invalid responses get 0.0 and ``"valid"`` False. ``"pair_probs"[i][j]`` is ``p(i > j)`` (``None``
  on the diagonal and for invalid comparisons).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any

Messages = list[dict[str, str]]
Row = dict[str, Any]
Compare = Callable[[Sequence[Messages], Sequence[str], Sequence[str]], list[float | None]]


def judge_pairwise(rows: list[Row], compare: Compare, *, swap_positions: bool) -> list[Row]:
    """The fields a pairwise judge adds to each row (see the module docstring).

    Args:
        rows: generated rows (``"prompt"``, ``"responses"``).
        compare: ``(prompts, firsts, seconds) -> p(first is better) or None`` per comparison; called once
            with every comparison of every row, so that a backend can batch across rows.
        swap_positions: also ask each pair in the other order and average.

    Returns:
        One dict per row with ``"scores"``, ``"valid"``, ``"pair_probs"`` and, with ``swap_positions``,
        ``"order_disagreement"``.

    Raises:
        ValueError: ``compare`` returned the wrong number of results.
    """
    # (row index, first, second) for every comparison asked.
    asked = [(r, i, j) for r, row in enumerate(rows) for i, j in combinations(range(len(row["responses"])), 2)]
    if swap_positions:
        asked += [(r, j, i) for r, i, j in asked]
    probs = compare(
        [rows[r]["prompt"] for r, _, _ in asked],
        [rows[r]["responses"][i] for r, i, _ in asked],
        [rows[r]["responses"][j] for r, _, j in asked],
    )
    if len(probs) != len(asked):
        raise ValueError(f"compare returned {len(probs)} results for {len(asked)} comparisons")
    shown = {key: _checked(p) for key, p in zip(asked, probs, strict=True)}
    return [_combine(r, len(row["responses"]), shown, swap_positions) for r, row in enumerate(rows)]


def _checked(p: float | None) -> float | None:
    """A probability in [0, 1], or None for anything else (NaN, inf, out of range)."""
    if p is None or not math.isfinite(p) or not 0.0 <= p <= 1.0:
        return None
    return float(p)


def _combine(r: int, k: int, shown: dict[tuple[int, int, int], float | None], swap: bool) -> Row:
    pair_probs: list[list[float | None]] = [[None] * k for _ in range(k)]
    disagreement = False
    for i, j in combinations(range(k), 2):
        forward = shown[(r, i, j)]
        readings = [forward] if not swap else [forward, None if shown[(r, j, i)] is None else 1.0 - shown[(r, j, i)]]
        if any(p is None for p in readings):
            continue
        p = sum(readings) / len(readings)
        if swap and (readings[0] - 0.5) * (readings[1] - 0.5) < 0:
            disagreement = True
        pair_probs[i][j], pair_probs[j][i] = p, 1.0 - p
    valid = [all(pair_probs[i][j] is not None for j in range(k) if j != i) for i in range(k)]
    scores = [
        sum(pair_probs[i][j] for j in range(k) if j != i) / (k - 1) if ok else 0.0  # type: ignore[misc]
        for i, ok in enumerate(valid)
    ]
    out: Row = {"scores": scores, "valid": valid, "pair_probs": pair_probs}
    if swap:
        out["order_disagreement"] = disagreement
    return out


def pairwise_stats(rows: list[Row]) -> dict[str, Any]:
    """Summary of judged rows for the run log: comparisons, invalid ones, order disagreement.

    Computed from the rows (not from the calls made), so a resumed judge reports the same as a fresh one.

    Returns:
        ``rows``, ``comparisons``, ``invalid_comparisons``, ``invalid_responses`` and, when the rows were
        judged in both orders, ``order_disagreements`` (rows) and ``order_disagreement_rate`` (of the rows
        with at least one valid comparison).
    """
    comparisons = invalid = invalid_responses = judged_rows = disagreements = 0
    swapped = False
    for row in rows:
        k = len(row["responses"])
        pair_probs = row.get("pair_probs") or [[None] * k for _ in range(k)]
        row_invalid = sum(pair_probs[i][j] is None for i, j in combinations(range(k), 2))
        comparisons += k * (k - 1) // 2
        invalid += row_invalid
        invalid_responses += sum(not v for v in row["valid"])
        if "order_disagreement" in row:
            swapped = True
            judged_rows += row_invalid < k * (k - 1) // 2
            disagreements += bool(row["order_disagreement"])
    stats: dict[str, Any] = {
        "rows": len(rows),
        "comparisons": comparisons,
        "invalid_comparisons": invalid,
        "invalid_responses": invalid_responses,
    }
    if swapped:
        stats["order_disagreements"] = disagreements
        stats["order_disagreement_rate"] = disagreements / judged_rows if judged_rows else 0.0
    return stats


def instruction_text(messages: Messages) -> str:
    """The prompt as plain text for a judge that takes one instruction string.

    A single user turn (empty system turns are dropped) is its content; a longer conversation is written
    as ``ROLE: content`` lines.
    """
    turns = [m for m in messages if m.get("content")]
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in turns)
