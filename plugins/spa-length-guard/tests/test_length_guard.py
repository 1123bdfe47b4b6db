"""The length_guard selector on hand-made judged rows (run from this folder: python -m pytest -q).

Only the public component API (``spa_recipes.api``) is used, as by the plugin itself.
"""

from __future__ import annotations

import pytest
import spa_length_guard
from pydantic import ValidationError
from spa_length_guard import LengthGuardConfig
from spa_length_guard.selector import LengthGuardSelector, too_long

from spa_recipes import api
from spa_recipes.api import JudgedRow, PairSelectorContext, min_max_pairs


def judged_rows() -> list[JudgedRow]:
    prompt = [{"role": "user", "content": "q"}]

    def row(id_: str, responses: list[str], scores: list[float], valid: list[bool], logps: list[float]) -> JudgedRow:
        k = len(responses)
        return {
            "id": id_,
            "prompt": prompt,
            "responses": responses,
            "finished": [True] * k,
            "num_tokens": [len(r.split()) for r in responses],
            "scores": scores,
            "valid": valid,
            "policy_logps": logps,
        }

    return [
        # chosen 6 words vs rejected 3: ratio 2.0 -> dropped at 1.5
        row("long", ["a b c d e f", "a b c"], [2.0, 1.0], [True, True], [-3.0, -4.0]),
        # 4 vs 3 words: ratio 1.33 -> kept
        row("close", ["a b c d", "x y z"], [1.0, 0.5], [True, True], [-1.0, -2.0]),
        # chosen is the shorter one: kept unless symmetric
        row("short", ["short", "a much longer response"], [0.9, 0.1], [True, True], [-0.5, -6.0]),
        # one valid response: no pair at all (min_max's count)
        row("invalid", ["a", "b"], [1.0, 0.0], [True, False], [-1.0, -1.0]),
        # K=3: the invalid lowest is skipped; rejected is "p q" (2 words) vs chosen 3 words: exactly 1.5 -> kept
        row("boundary", ["p q r", "p", "p q"], [0.5, -5.0, 0.1], [True, False, True], [-2.0, -1.0, -1.5]),
        # chosen with words vs an empty rejected: dropped
        row("empty", ["", "w"], [0.0, 1.0], [True, True], [-0.1, -0.2]),
    ]


def build_selector(**args: object) -> LengthGuardSelector:
    """The selector as a run builds it: from its validated config and the pair selector context."""
    return LengthGuardSelector(LengthGuardConfig.model_validate(args), PairSelectorContext())


def test_select_drops_over_long_chosen() -> None:
    rows = judged_rows()
    pairs, counts = build_selector().select(rows, seed=0)
    assert [p["id"] for p in pairs] == ["close", "short", "boundary"]
    assert counts["dropped_length"] == 2 and counts["pairs"] == 3
    assert counts["rows"] == 6 and counts["dropped_invalid"] == 1
    # The kept pairs are min_max's pairs, untouched (policy log-probs carried along).
    reference, ref_counts = min_max_pairs(rows)
    assert ref_counts["pairs"] == 5
    assert pairs == [p for p in reference if p["id"] in {"close", "short", "boundary"}]
    boundary = pairs[2]
    assert (boundary["chosen"], boundary["rejected"]) == ("p q r", "p q")
    assert (boundary["chosen_policy_logp"], boundary["rejected_policy_logp"]) == (-2.0, -1.5)


def test_select_ratio_and_symmetric() -> None:
    rows = judged_rows()
    pairs, counts = build_selector(max_length_ratio=1.2).select(rows, seed=0)
    assert [p["id"] for p in pairs] == ["short"]
    assert counts["dropped_length"] == 4
    pairs, counts = build_selector(max_length_ratio=10.0).select(rows, seed=0)
    assert [p["id"] for p in pairs] == ["long", "close", "short", "boundary"]
    assert counts["dropped_length"] == 1  # any words against an empty rejected is "longer" at every ratio
    pairs, counts = build_selector(symmetric=True).select(rows, seed=0)
    assert [p["id"] for p in pairs] == ["close", "boundary"]
    assert counts["dropped_length"] == 3
    pairs, counts = build_selector(ties="drop").select([{**rows[1], "scores": [1.0, 1.0]}], seed=0)
    assert pairs == [] and counts["dropped_tie"] == 1


def test_too_long_counts_words() -> None:
    assert too_long("a b c d", "a b", 1.5) and not too_long("a b c", "a b", 1.5)
    assert too_long("a", "", 100.0) and not too_long("", "", 1.0)


def test_config_refuses_typos_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="max_lenght_ratio"):
        LengthGuardConfig.model_validate({"max_lenght_ratio": 1.2})
    with pytest.raises(ValidationError, match="greater than 0"):
        LengthGuardConfig(max_length_ratio=0)
    assert all(field.description for field in LengthGuardConfig.model_fields.values())


class RecordingRegistry:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, object]]] = []

    def register(self, kind: str, name: str, **details: object) -> None:
        self.calls.append((kind, name, details))


def test_register_declares_the_selector_against_this_api_version(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = RecordingRegistry()
    spa_length_guard.register(registry)
    [(kind, name, details)] = registry.calls
    assert (kind, name, details["config"]) == ("pair_selector", "length_guard", LengthGuardConfig)
    assert details["builder"] == "spa_length_guard.selector:LengthGuardSelector"
    monkeypatch.setattr(api, "API_VERSION", "999")
    with pytest.raises(
        RuntimeError, match="spa-length-guard is written against spa_recipes.api version 1, this is 999"
    ):
        spa_length_guard.register(RecordingRegistry())
