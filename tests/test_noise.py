"""Noise detectors: the released code's rolling window rule, the exact per-batch bottom K%, lambda schedule."""

from __future__ import annotations

import random

import pytest
import torch

from spa_recipes.errors import UserError
from spa_recipes.noise import (
    BatchQuantileDetector,
    NoNoiseDetector,
    RollingQuantileDetector,
    lambda_for_iteration,
)
from spa_recipes.noise_config import BatchQuantileConfig, NoneDetectorConfig, RollingQuantileConfig


def released_rule(batches: list[list[float]], window: int = 50) -> tuple[list[float], list[list[bool]]]:
    """A literal reimplementation of the released code's rule (k = 10%, window 50).

    For each batch: the threshold is the mean of the 6th and 7th smallest of the previous 50 margins,
    or 0 while fewer than 50 have been seen; a pair is flagged when its margin is at or below it (the code
    keeps ``c = margin > threshold``); then the
    batch's margins join the window.
    """
    seen: list[float] = []
    thresholds, flags = [], []
    for batch in batches:
        if len(seen) >= window:
            last = sorted(seen[-window:])
            threshold = (last[5] + last[6]) / 2
        else:
            threshold = 0.0
        thresholds.append(threshold)
        flags.append([m <= threshold for m in batch])
        seen.extend(batch)
    return thresholds, flags


def test_rolling_quantile_reproduces_the_released_rule() -> None:
    rng = random.Random(0)
    # Float32-representable values so the detector's tensors hold them exactly.
    batches = [
        [float(torch.tensor(rng.gauss(0.3, 1.0)).float()) for _ in range(rng.choice([4, 8, 16]))] for _ in range(40)
    ]
    detector = RollingQuantileDetector(RollingQuantileConfig(k=0.1, window=50))
    expected_thresholds, expected_flags = released_rule(batches)
    for batch, threshold, flags in zip(batches, expected_thresholds, expected_flags, strict=True):
        got = detector.flag(torch.tensor(batch))
        assert detector.threshold == pytest.approx(threshold, abs=1e-7)
        assert got.tolist() == flags
    # The test must exercise both phases: negative margins flagged at threshold 0, then the window rule.
    assert expected_thresholds[0] == 0.0 and any(expected_flags[0])
    assert any(t != 0.0 for t in expected_thresholds)


def test_rolling_quantile_before_the_window_fills_threshold_is_zero() -> None:
    detector = RollingQuantileDetector(RollingQuantileConfig(window=10))
    flags = detector.flag(torch.tensor([0.0, -0.5, 0.2, -1e-6]))
    assert detector.threshold == 0.0
    assert flags.tolist() == [True, True, False, True]  # a margin equal to the threshold is flagged


def test_rolling_quantile_can_flag_nothing_until_the_window_fills() -> None:
    detector = RollingQuantileDetector(RollingQuantileConfig(window=4, until_full="flag_nothing"))
    assert detector.flag(torch.tensor([-1.0, -2.0])).tolist() == [False, False]  # 2 of 4 seen
    assert detector.flag(torch.tensor([-3.0, 0.5])).tolist() == [False, False]  # still 2 of 4 before this batch
    # Full now (-3, -2, -1, 0.5): k=0.1 gives n=0, threshold = mean of the two smallest = -2.5.
    assert detector.flag(torch.tensor([-2.6, -2.4])).tolist() == [True, False]
    assert detector.threshold == pytest.approx(-2.5)


def test_rolling_quantile_generalises_the_index() -> None:
    # k=0.3, window=10: n = 3, mean of the 4th and 5th smallest of the previous window.
    detector = RollingQuantileDetector(RollingQuantileConfig(k=0.3, window=10))
    detector.flag(torch.arange(10, dtype=torch.float32))  # window: 0..9
    flags = detector.flag(torch.tensor([3.4, 3.6, 3.5]))
    assert detector.threshold == pytest.approx(3.5)
    assert flags.tolist() == [True, False, True]


def test_rolling_quantile_state_round_trip() -> None:
    a = RollingQuantileDetector(RollingQuantileConfig(window=5))
    a.flag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
    b = RollingQuantileDetector(RollingQuantileConfig(window=5))
    b.load_state_dict(a.state_dict())
    probe = torch.tensor([2.0, 3.0, 9.0])
    assert torch.equal(a.flag(probe), b.flag(probe))
    assert a.threshold == b.threshold


@pytest.mark.parametrize(("k", "n", "count"), [(0.1, 16, 1), (0.1, 32, 3), (0.25, 8, 2), (0.1, 9, 0), (0.5, 7, 3)])
def test_batch_quantile_flags_exactly_the_bottom_k(k: float, n: int, count: int) -> None:
    margins = torch.randn(n, generator=torch.Generator().manual_seed(n))
    flags = BatchQuantileDetector(BatchQuantileConfig(k=k)).flag(margins)
    assert int(flags.sum()) == count  # floor(k * n)
    if count:
        assert margins[flags].max() < margins[~flags].min()


def test_batch_quantile_breaks_ties_by_position() -> None:
    flags = BatchQuantileDetector(BatchQuantileConfig(k=0.25)).flag(torch.zeros(8))
    assert flags.tolist() == [True, True] + [False] * 6


class FakeAccelerator:
    """Stands in for process 1 of 2: ``gather`` prepends process 0's tensor."""

    num_processes = 2
    process_index = 1

    def __init__(self, other: torch.Tensor) -> None:
        self.other = other

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.long:  # the count
            return torch.cat([torch.tensor([self.other.numel()]), t])
        padded = torch.full_like(t, float("inf"))
        padded[: self.other.numel()] = self.other
        return torch.cat([padded, t])


def test_batch_quantile_is_global_across_processes() -> None:
    mine = torch.tensor([5.0, -3.0, 4.0])
    theirs = torch.tensor([-1.0, -2.0, 0.0, 1.0, 2.0, 3.0, 6.0])
    # 10 pairs globally, k=0.2: the two smallest are -3 (mine) and -2 (theirs).
    flags = BatchQuantileDetector(BatchQuantileConfig(k=0.2)).flag(mine, FakeAccelerator(theirs))
    assert flags.tolist() == [False, True, False]


def test_none_detector_flags_nothing() -> None:
    assert not NoNoiseDetector(NoneDetectorConfig()).flag(torch.randn(5)).any()


def test_lambda_for_iteration() -> None:
    cfg = BatchQuantileConfig(**{"lambda": [0.5, 0.25, 0.125]})
    assert [lambda_for_iteration(cfg, i) for i in (1, 2, 3)] == [0.5, 0.25, 0.125]
    assert lambda_for_iteration(BatchQuantileConfig(**{"lambda": 0.5}), 7) == 0.5
    assert lambda_for_iteration(NoneDetectorConfig(), 2) == 0.0
    with pytest.raises(UserError, match="iteration 4"):
        lambda_for_iteration(cfg, 4)
