"""The DPO loss with SPA's self-refinement, and the decoupled (extrapolated) sequence log-probs.

SPA's refined loss for one pair (SPEC.md, "Self-refinement") is

    -(1 - s) * log sigmoid(beta * Delta) - s * log sigmoid(-beta * Delta),   s = a_t * (1 - c)

with ``Delta = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))``. ``s = 0`` is plain
sigmoid DPO; a constant ``s`` is conservative (label-smoothed) DPO. The refiner decides ``s`` per pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spa_recipes.api import LossContext
from spa_recipes.loss_config import DPOLossConfig


def spa_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    smoothing: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss with per-pair label smoothing.

    Args:
        policy_chosen_logps: ``[batch]`` summed response log-probs of the chosen responses under the policy.
        policy_rejected_logps: ``[batch]`` the same for the rejected responses.
        ref_chosen_logps: ``[batch]`` chosen log-probs under the (frozen) DPO reference.
        ref_rejected_logps: ``[batch]`` rejected log-probs under the reference.
        beta: DPO temperature.
        smoothing: label smoothing ``s`` in ``[0, 1]``, a float or a ``[batch]`` tensor; 0 is plain DPO.

    Returns:
        ``(losses, margins)``, both ``[batch]``: ``losses = -(1-s) logsig(beta*Delta) - s logsig(-beta*Delta)``
        and ``margins = beta * Delta`` (the implicit reward margin, chosen minus rejected).
    """
    delta = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    margins = beta * delta
    if not torch.is_tensor(smoothing):
        smoothing = torch.tensor(float(smoothing), dtype=margins.dtype, device=margins.device)
    smoothing = smoothing.to(dtype=margins.dtype, device=margins.device)
    losses = -(1.0 - smoothing) * F.logsigmoid(margins) - smoothing * F.logsigmoid(-margins)
    return losses, margins


def extrapolated_logits(policy_logits: torch.Tensor, ref_logits: torch.Tensor | None, lam: float) -> torch.Tensor:
    """The extrapolated model's logits ``(1 + lam) * h_pi - lam * h_ref`` (DND), in float32.

    Args:
        policy_logits: logits of the policy (detach them for a confidence score).
        ref_logits: logits of the DPO reference at the same positions; unused when lam == 0.
        lam: extrapolation strength; 0 gives the policy's own logits (its log-probs exactly).

    Raises:
        ValueError: ``lam != 0`` without ``ref_logits``.
    """
    logits = policy_logits.float()
    if lam == 0:
        return logits
    if ref_logits is None:
        raise ValueError("extrapolated_logits needs ref_logits when lam != 0")
    return (1.0 + lam) * logits - lam * ref_logits.float()


class DPOLoss:
    """Sigmoid DPO with optional per-pair label smoothing (the registered loss ``dpo``).

    Args:
        cfg: its validated :class:`~spa_recipes.loss_config.DPOLossConfig`.
    """

    def __init__(self, cfg: DPOLossConfig, ctx: LossContext = LossContext()) -> None:
        self.beta = float(cfg.beta)

    def __call__(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
        smoothing: torch.Tensor | float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(losses, margins)`` per pair; see :func:`spa_dpo_loss`."""
        return spa_dpo_loss(
            policy_chosen_logps,
            policy_rejected_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            beta=self.beta,
            smoothing=smoothing,
        )
