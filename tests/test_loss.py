"""spa_dpo_loss against TRL's own DPO loss code, and the DND extrapolated log-probs."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from spa_recipes.loss import DPOLoss, extrapolated_logits, spa_dpo_loss
from spa_recipes.loss_config import DPOLossConfig
from spa_recipes.packing import token_logps


def trl_dpo_loss(pc, pr, rc, rr, *, beta: float, loss_type: str, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair loss computed by TRL 1.16's ``DPOTrainer._compute_loss`` itself (the oracle).

    TRL only has the loss as a trainer method, so it is called unbound on a stand-in ``self`` holding the
    attributes it reads, with a stand-in model whose per-token log-probs are the given sequence log-probs
    (one completion token per sequence) and precomputed reference log-probs. The method returns the batch
    mean, so it is called once per pair. TRL 1.16 dropped label smoothing from its ``sigmoid`` loss; its
    ``aot`` loss is exactly conservative DPO on a batch of one pair (it sorts the batch's log-ratios, and
    sorting one value is the identity), which is how the smoothed case is checked.
    """
    from trl import DPOTrainer

    out = []
    for i in range(pc.numel()):
        logps = torch.stack([pc[i], pr[i]]).view(2, 1)

        def model(logps: torch.Tensor = logps, **kwargs: object) -> SimpleNamespace:
            return SimpleNamespace(
                log_probs=logps,
                entropy=torch.zeros(2, 1),
                mean_logits=torch.zeros(2, 1),
                is_top1=torch.zeros(2, 1, dtype=torch.bool),
            )

        model.training = True
        fake = SimpleNamespace(
            model=model,
            accelerator=SimpleNamespace(device="cpu", gather_for_metrics=lambda t: t, gather=lambda t: t),
            aux_loss_enabled=False,
            ld_alpha=None,
            precompute_ref_logps=True,
            f_divergence_type="reverse_kl",
            loss_types=[loss_type],
            loss_weights=[1.0],
            beta=beta,
            label_smoothing=label_smoothing,
            use_weighting=False,
            _metrics={"train": defaultdict(list)},
            _total_train_tokens=0,
            _tp_size=1,
        )
        inputs = {
            "input_ids": torch.zeros(2, 2, dtype=torch.long),
            "attention_mask": torch.ones(2, 2, dtype=torch.long),
            "completion_mask": torch.ones(2, 2, dtype=torch.long),
            "ref_chosen_logps": rc[i : i + 1],
            "ref_rejected_logps": rr[i : i + 1],
        }
        out.append(DPOTrainer._compute_loss(fake, model, inputs, return_outputs=False))
    return torch.stack(out)


def _random_logps(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 60) for _ in range(4)]


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_plain_dpo_matches_trl_sigmoid(beta: float) -> None:
    pc, pr, rc, rr = _random_logps(16, seed=1)
    losses, margins = spa_dpo_loss(pc, pr, rc, rr, beta=beta, smoothing=0.0)
    expected = trl_dpo_loss(pc, pr, rc, rr, beta=beta, loss_type="sigmoid")
    torch.testing.assert_close(losses, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(margins, beta * ((pc - rc) - (pr - rr)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("alpha", [0.1, 0.3])
def test_smoothed_dpo_matches_trl_conservative_dpo(alpha: float) -> None:
    pc, pr, rc, rr = _random_logps(16, seed=2)
    losses, _ = spa_dpo_loss(pc, pr, rc, rr, beta=0.1, smoothing=alpha)
    expected = trl_dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="aot", label_smoothing=alpha)
    torch.testing.assert_close(losses, expected, atol=1e-6, rtol=0)
    # The smoothing really changes the loss (otherwise the check above would be vacuous).
    plain, _ = spa_dpo_loss(pc, pr, rc, rr, beta=0.1, smoothing=0.0)
    assert (losses - plain).abs().max() > 1e-3


def test_per_pair_smoothing_mixes_the_two() -> None:
    pc, pr, rc, rr = _random_logps(8, seed=3)
    s = torch.tensor([0.0, 0.1] * 4, dtype=torch.float64)
    losses, _ = spa_dpo_loss(pc, pr, rc, rr, beta=0.1, smoothing=s)
    plain, _ = spa_dpo_loss(pc, pr, rc, rr, beta=0.1, smoothing=0.0)
    smooth, _ = spa_dpo_loss(pc, pr, rc, rr, beta=0.1, smoothing=0.1)
    torch.testing.assert_close(losses, torch.where(s > 0, smooth, plain))


def test_dpo_loss_component_uses_beta() -> None:
    pc, pr, rc, rr = _random_logps(4, seed=4)
    loss = DPOLoss(DPOLossConfig(beta=0.25))
    losses, margins = loss(pc, pr, rc, rr)
    torch.testing.assert_close(margins, 0.25 * ((pc - rc) - (pr - rr)))
    torch.testing.assert_close(losses, -F.logsigmoid(margins))


def _rows(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Policy and reference logits at 6 response positions over a vocabulary of 11, and their targets."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 11, generator=g), torch.randn(6, 11, generator=g), torch.randint(0, 11, (6,), generator=g)


def test_extrapolated_logits_lambda_zero_is_the_policy() -> None:
    policy, ref, targets = _rows(0)
    assert torch.equal(token_logps(extrapolated_logits(policy, ref, 0.0), targets), token_logps(policy, targets))
    assert torch.equal(extrapolated_logits(policy, None, 0.0), policy)
    with pytest.raises(ValueError, match="needs ref_logits"):
        extrapolated_logits(policy, None, 0.5)


def test_extrapolated_logps_match_direct_computation() -> None:
    policy, ref, targets = _rows(1)
    got = token_logps(extrapolated_logits(policy, ref, 0.5), targets)
    # Direct: per position, log of the normalised exp of the mixed logits.
    mixed = 1.5 * policy - 0.5 * ref
    expected = torch.stack([h[t] - torch.log(torch.exp(h).sum()) for h, t in zip(mixed, targets, strict=True)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - token_logps(policy, targets)).abs().max() > 1e-2
