"""Pair selection: min_max and max_random, ties, identical texts, invalid judgements, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers_tiny import make_tiny_model

from spa_recipes.loss import DPOLoss
from spa_recipes.loss_config import DPOLossConfig
from spa_recipes.modeling import load_model
from spa_recipes.noise import RollingQuantileDetector
from spa_recipes.noise_config import RollingQuantileConfig
from spa_recipes.pairs import MaxRandomSelector, MinMaxSelector
from spa_recipes.pairs_config import PairSelectorConfig
from spa_recipes.refiners import LabelSmoothingRefiner
from spa_recipes.refiners_config import LabelSmoothingConfig
from spa_recipes.schema import TrainingSection
from spa_recipes.training.loop import read_metrics
from spa_recipes.training.preference import train_preference

PROMPT = [{"role": "user", "content": "w1"}]


def row(rid: str, responses: list[str], scores: list[float], valid: list[bool] | None = None, **extra) -> dict:
    return {
        "id": rid,
        "prompt": PROMPT,
        "responses": responses,
        "scores": scores,
        "valid": valid or [True] * len(responses),
        **extra,
    }


def test_min_max_picks_highest_and_lowest_and_carries_policy_logps() -> None:
    rows = [row("a", ["x", "y", "z", "u"], [0.5, 2.0, -1.0, 0.1], policy_logps=[-1.0, -2.0, -3.0, -4.0])]
    pairs, counts = MinMaxSelector(PairSelectorConfig()).select(rows, seed=0)
    assert pairs == [
        {
            "id": "a",
            "prompt": PROMPT,
            "chosen": "y",
            "rejected": "z",
            "chosen_score": 2.0,
            "rejected_score": -1.0,
            "chosen_index": 1,
            "rejected_index": 2,
            "chosen_policy_logp": -2.0,
            "rejected_policy_logp": -3.0,
        }
    ]
    assert counts["pairs"] == 1 and counts["rows"] == 1


def test_invalid_judgements_never_become_preferences() -> None:
    rows = [
        # The invalid response has the highest score: it must not be chosen.
        row("a", ["x", "y", "z"], [9.0, 1.0, 0.0], valid=[False, True, True]),
        row("b", ["x", "y"], [1.0, 0.0], valid=[True, False]),  # one valid response: no pair
        row("c", ["x", "y"], [float("nan"), float("nan")], valid=[False, False]),
    ]
    for selector in (MinMaxSelector(PairSelectorConfig()), MaxRandomSelector(PairSelectorConfig())):
        pairs, counts = selector.select(rows, seed=0)
        assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == [("a", "y", "z")]
        assert counts["dropped_invalid"] == 2
        assert counts["invalid_responses"] == 4
        assert counts["pairs"] == 1


def test_ties_keep_or_drop() -> None:
    rows = [row("a", ["x", "y"], [1.0, 1.0]), row("b", ["x", "y"], [2.0, 1.0])]
    pairs, counts = MinMaxSelector(PairSelectorConfig(ties="keep")).select(rows, seed=0)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("x", "y"), ("x", "y")]
    assert counts["kept_tie"] == 1 and counts["dropped_tie"] == 0
    pairs, counts = MinMaxSelector(PairSelectorConfig(ties="drop")).select(rows, seed=0)
    assert [p["id"] for p in pairs] == ["b"]
    assert counts["dropped_tie"] == 1 and counts["pairs"] == 1


def test_identical_texts_dropped_or_kept() -> None:
    rows = [row("a", ["same", "same"], [1.5, 1.0]), row("b", ["x", "y"], [0.0, 1.0])]
    pairs, counts = MinMaxSelector(PairSelectorConfig(drop_identical=True)).select(rows, seed=0)
    assert [(p["id"], p["chosen"]) for p in pairs] == [("b", "y")]
    assert counts["dropped_identical"] == 1 and counts["kept_identical"] == 0
    pairs, counts = MinMaxSelector(PairSelectorConfig(drop_identical=False)).select(rows, seed=0)
    assert len(pairs) == 2 and counts["dropped_identical"] == 0
    # Kept as the released code keeps it, and counted.
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("same", "same") and counts["kept_identical"] == 1


def test_max_random_is_seeded_per_row_and_never_picks_chosen() -> None:
    rows = [row(f"r{i}", ["a", "b", "c", "d", "e"], [0.0, 5.0, 1.0, 2.0, 3.0]) for i in range(40)]
    selector = MaxRandomSelector(PairSelectorConfig())
    pairs, _ = selector.select(rows, seed=7)
    assert all(p["chosen"] == "b" for p in pairs)
    rejected = [p["rejected_index"] for p in pairs]
    assert 1 not in rejected
    assert set(rejected) == {0, 2, 3, 4}  # 40 draws over 4 options hit all of them
    assert selector.select(rows, seed=7)[0] == pairs  # deterministic
    assert [p["rejected_index"] for p in selector.select(rows, seed=8)[0]] != rejected
    # A row's draw depends on its id, not on its position or its neighbours.
    alone, _ = selector.select(rows[5:6], seed=7)
    assert alone[0]["rejected_index"] == rejected[5]


def test_k2_min_max_and_max_random_agree() -> None:
    rows = [row(f"r{i}", ["x", "y"], [float(i % 3), 1.0]) for i in range(6)]
    cfg = PairSelectorConfig(ties="drop")
    assert MinMaxSelector(cfg).select(rows, 0) == MaxRandomSelector(cfg).select(rows, 0)


def test_a_kept_identical_pair_trains_with_zero_gradient(tmp_path: Path) -> None:
    """The released code's setting (rolling window on the policy's margins, label smoothing, one pair per
    micro-batch): pairs of two identical samples train without error and leave the weights exactly as they were."""
    model = make_tiny_model(tmp_path / "m", vocab=64, hidden=32)
    rows = [row(str(i), [f"w{i} w{i + 1}", f"w{i} w{i + 1}"], [0.3, 0.3]) for i in range(4)]
    pairs, counts = MinMaxSelector(PairSelectorConfig(drop_identical=False)).select(rows, seed=0)
    assert counts["kept_identical"] == counts["pairs"] == 4
    summary = train_preference(
        pairs,
        policy_path=str(model),
        reference_path=str(model),
        output_dir=tmp_path / "out",
        work_dir=tmp_path / "work",
        training=TrainingSection(
            epochs=1.0,
            learning_rate=1e-2,
            lr_scheduler="constant",
            warmup_ratio=0.0,
            batch_size=1,
            max_length=32,
            max_prompt_length=16,
        ),
        loss=DPOLoss(DPOLossConfig(beta=0.1)),
        noise_detector=RollingQuantileDetector(RollingQuantileConfig(k=0.1, window=50, confidence="policy")),
        refiner=LabelSmoothingRefiner(LabelSmoothingConfig(alpha=0.1, warmup_fraction=0.2)),
        lam=0.0,
        seed=0,
        progress=False,
    )
    steps = read_metrics(tmp_path / "work")
    assert summary["steps"] == len(steps) == 4
    assert all(s["margins"] == 0.0 and s["grad_norm"] == 0.0 for s in steps)
    assert all(s["loss"] == pytest.approx(math.log(2)) for s in steps)
    before = dict(load_model(str(model)).named_parameters())
    after = dict(load_model(str(tmp_path / "out")).named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)
