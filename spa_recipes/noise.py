"""Noise detectors: which preference pairs look mislabelled (SPEC.md, "Which pairs are noisy").

A detector sees the confidence margins ``beta * Delta_conf`` of a set of pairs and returns a bool per pair
(True: flagged as noisy). ``confidence`` says which margin the trainer feeds it: ``"policy"`` (the policy's own
log-probs) or ``"extrapolated"`` (DND: ``(1+lambda) h_t - lambda h_ref``). ``scope`` says which set:
``"micro_batch"`` (each micro-batch as it is trained on) or ``"optimizer_step"`` (all pairs of one optimiser
step, every micro-batch of its gradient accumulation; the trainer computes their margins first).
Detectors carry state across steps only where the rule needs it (the rolling window); ``state_dict`` /
``load_state_dict`` make a resumed run flag exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Literal

import torch

from spa_recipes.api import EXTRAPOLATION, NoiseDetectorContext, offers
from spa_recipes.errors import UserError
from spa_recipes.noise_config import (
    BatchQuantileConfig,
    NoneDetectorConfig,
    QuantileDetectorConfig,
    RollingQuantileConfig,
)

Confidence = Literal["policy", "extrapolated"]
Scope = Literal["micro_batch", "optimizer_step"]


def lambda_for_iteration(cfg: Any, iteration: int) -> float:
    """The DND extrapolation strength of one SPA iteration.

    Args:
        cfg: a noise detector config; configs that do not offer ``extrapolation`` (the ``none`` detector) give 0.
        iteration: the SPA iteration, 1-based (the seed DPO stage does not use a detector).

    Returns:
        ``cfg.lambda_`` when it is one number, else its ``iteration``-th entry.

    Raises:
        UserError: iteration < 1, or a list shorter than ``iteration``.
    """
    if iteration < 1:
        raise UserError(f"noise_detector.lambda: iterations are numbered from 1, got {iteration}")
    value = cfg.lambda_ if offers(cfg, EXTRAPOLATION) else 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if iteration > len(value):
        raise UserError(
            f"noise_detector.lambda: {len(value)} values given, none for iteration {iteration}; "
            "give one value per iteration or a single number"
        )
    return float(value[iteration - 1])


def _quantile_index(k: float, n: int) -> int:
    """``floor(k * n)``, robust to float error such as ``0.29 * 100 = 28.999999999999996``."""
    return int(math.floor(k * n + 1e-9))


class NoNoiseDetector:
    """Flags nothing (plain DPO)."""

    def __init__(
        self, cfg: NoneDetectorConfig | None = None, ctx: NoiseDetectorContext = NoiseDetectorContext()
    ) -> None:
        self.confidence: Confidence = "policy"
        self.scope: Scope = "micro_batch"
        self.threshold = 0.0

    def flag(self, margins: torch.Tensor, accelerator: Any = None) -> torch.Tensor:
        """All False."""
        return torch.zeros(margins.shape, dtype=torch.bool, device=margins.device)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class RollingQuantileDetector:
    """The released code's rule: a per-process window of the last ``window`` margins.

    For each micro-batch the threshold comes from the window as it was BEFORE this batch: with
    ``n = floor(k * window)``, the mean of the sorted window's entries ``n`` and ``n + 1`` (0-based;
    ``k = 0.1, window = 50``: the 6th and 7th smallest). A pair is flagged when its margin is at or
    below the threshold (the released code keeps ``c = margin > threshold``). Then the batch's margins are
    appended (oldest dropped).

    Before the window holds ``window`` values the threshold is 0 (SPEC.md: "before the window fills
    the threshold is 0"), and the same rule applies: pairs whose margin is 0 or negative ARE flagged
    during that phase (at the very first step the policy equals its reference and every margin is about 0;
    the refiner's warm-up keeps such early flags from changing the loss). ``until_full: flag_nothing``
    flags nothing until the window is full instead. Under DDP each process keeps its own window and flags
    its own pairs, as the released code does; the accelerator is not used.

    Args:
        cfg: a :class:`~spa_recipes.noise_config.RollingQuantileConfig`.
    """

    def __init__(self, cfg: RollingQuantileConfig, ctx: NoiseDetectorContext = NoiseDetectorContext()) -> None:
        self.k = float(cfg.k)
        self.window = int(cfg.window)
        self.confidence: Confidence = cfg.confidence
        self.until_full = cfg.until_full
        self.scope: Scope = "micro_batch"
        self.threshold = 0.0
        self._values: deque[float] = deque(maxlen=self.window)

    def current_threshold(self) -> float:
        """The threshold the next batch will be compared with."""
        if len(self._values) < self.window:
            return 0.0
        ordered = sorted(self._values)
        n = min(_quantile_index(self.k, self.window), self.window - 2)
        return (ordered[n] + ordered[n + 1]) / 2.0

    def flag(self, margins: torch.Tensor, accelerator: Any = None) -> torch.Tensor:
        """Flag this process's pairs against the previous window, then add their margins to it."""
        self.threshold = self.current_threshold()
        values = margins.detach().float()
        flags = values <= self.threshold
        if self.until_full == "flag_nothing" and len(self._values) < self.window:
            flags = torch.zeros_like(flags)
        self._values.extend(values.cpu().tolist())
        return flags

    def state_dict(self) -> dict[str, Any]:
        return {"values": list(self._values), "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._values = deque(state["values"], maxlen=self.window)
        self.threshold = float(state["threshold"])


class BatchQuantileDetector:
    """The paper's reading: exactly the ``floor(k * n)`` least-confident pairs of each optimiser batch.

    ``n`` counts the pairs of one optimiser step: every micro-batch of its gradient accumulation (the
    trainer hands them over together), on all processes (gathered with ``accelerator.gather`` when there
    is more than one). Validation rejects a layout where ``floor(k * n)`` is 0. Ties are broken by position
    (a stable sort over process 0's pairs, then process 1's, ...), so exactly ``floor(k * n)`` pairs are flagged.
    ``threshold`` (for logging) is the midpoint between the largest flagged and the smallest unflagged
    margin; with nothing flagged, the smallest margin.

    Args:
        cfg: a :class:`~spa_recipes.noise_config.BatchQuantileConfig`.
    """

    def __init__(
        self, cfg: BatchQuantileConfig | QuantileDetectorConfig, ctx: NoiseDetectorContext = NoiseDetectorContext()
    ) -> None:
        self.k = float(cfg.k)
        self.confidence: Confidence = cfg.confidence
        self.scope: Scope = "optimizer_step"
        self.threshold = 0.0

    def flag(self, margins: torch.Tensor, accelerator: Any = None) -> torch.Tensor:
        """Flag the bottom ``floor(k * n)`` of the optimiser batch; return this process's flags."""
        local = margins.detach().float()
        if accelerator is not None and accelerator.num_processes > 1:
            everything, offset = _gather_uneven(local, accelerator)
        else:
            everything, offset = local, 0
        total = everything.numel()
        count = _quantile_index(self.k, total)
        ordered, order = torch.sort(everything, stable=True)
        flagged = torch.zeros(total, dtype=torch.bool, device=everything.device)
        flagged[order[:count]] = True
        if total == 0:
            self.threshold = 0.0
        elif count == 0:
            self.threshold = float(ordered[0])
        elif count == total:
            self.threshold = float(ordered[-1])
        else:
            self.threshold = float(ordered[count - 1] + ordered[count]) / 2.0
        return flagged[offset : offset + local.numel()].to(margins.device)

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.threshold = float(state["threshold"])


def _gather_uneven(local: torch.Tensor, accelerator: Any) -> tuple[torch.Tensor, int]:
    """All processes' margins in process order (batches may differ in size), and this process's offset."""
    count = torch.tensor([local.numel()], device=local.device)
    counts = accelerator.gather(count).tolist()
    width = max(counts)
    padded = torch.full((width,), float("inf"), device=local.device)
    padded[: local.numel()] = local
    gathered = accelerator.gather(padded).view(len(counts), width)
    everything = torch.cat([gathered[i, :c] for i, c in enumerate(counts)])
    return everything, sum(counts[: accelerator.process_index])
