"""Refiners: warm-up, then smoothing or dropping of flagged pairs only."""

from __future__ import annotations

import torch

from spa_recipes.refiners import DropRefiner, LabelSmoothingRefiner, NoRefiner
from spa_recipes.refiners_config import DropRefinerConfig, LabelSmoothingConfig

FLAGS = torch.tensor([True, False, True, False])


def test_label_smoothing_waits_for_the_warmup() -> None:
    refiner = LabelSmoothingRefiner(LabelSmoothingConfig(alpha=0.1, warmup_fraction=0.2))
    for step in (0, 1):  # 20% of 10 steps
        smoothing, weights = refiner.refine(FLAGS, step, 10)
        assert smoothing.tolist() == [0.0] * 4 and weights.tolist() == [1.0] * 4
    smoothing, weights = refiner.refine(FLAGS, 2, 10)
    torch.testing.assert_close(smoothing, torch.tensor([0.1, 0.0, 0.1, 0.0]))
    assert weights.tolist() == [1.0] * 4


def test_drop_zeroes_flagged_pairs_after_the_warmup() -> None:
    refiner = DropRefiner(DropRefinerConfig(warmup_fraction=0.5))
    assert refiner.refine(FLAGS, 1, 4)[1].tolist() == [1.0] * 4
    smoothing, weights = refiner.refine(FLAGS, 2, 4)
    assert weights.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert smoothing.tolist() == [0.0] * 4


def test_no_warmup_refines_from_the_first_step() -> None:
    refiner = LabelSmoothingRefiner(LabelSmoothingConfig(alpha=0.2, warmup_fraction=0.0))
    assert refiner.refine(FLAGS, 0, 5)[0].tolist()[0] > 0


def test_no_refiner_leaves_flagged_pairs_alone() -> None:
    smoothing, weights = NoRefiner().refine(FLAGS, 9, 10)
    assert smoothing.tolist() == [0.0] * 4 and weights.tolist() == [1.0] * 4
