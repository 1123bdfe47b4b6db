"""DPO with SPA's self-refinement (SR) and decoupled noise detection (DND), on Accelerate.

One micro-batch of B pairs is 2B sequences (chosen and rejected), packed without padding
(:mod:`spa_recipes.packing`) and run through the policy in one forward pass. The DPO reference is frozen.
Its log-probs are computed once before training (or taken from ``ref_logps``, e.g. the judge stage's) and the reference
model is freed, except when DND needs its per-token logits (``confidence == "extrapolated"`` and
``lam != 0``): then the reference runs alongside the policy at every step, and its logits and the
policy's (detached) give ``log p_ext`` with no extra forward pass of the policy.

Per pair: ``Delta`` from the policy; the detector's margin ``beta * Delta_conf`` from ``log p_ext`` or the
policy; the detector's flags -> the refiner's smoothing and weight -> ``mean(weight * loss)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from spa_recipes.adapters import adapter_disabled, load_policy, reference_from_policy, save_policy
from spa_recipes.adapters_config import LoraAdapterConfig
from spa_recipes.atomic import loads_json, write_json_atomic
from spa_recipes.errors import DataError
from spa_recipes.loss import DPOLoss, extrapolated_logits
from spa_recipes.modeling import load_model, load_tokenizer
from spa_recipes.packing import (
    forward_packed,
    layout_for,
    output_head,
    pack,
    sequence_sums,
    token_logps,
)
from spa_recipes.schema import TrainingSection
from spa_recipes.sequences import encode_sequences, score_encoded
from spa_recipes.training.loop import MicroBatch, read_metrics, run_training_loop
from spa_recipes.training.optimization import make_accelerator, parallelism

REF_LOGPS_CACHE = "ref_logps.json"
Encoded = tuple[list[int], list[int]]


def encode_pairs(
    pairs: list[dict[str, Any]], tokenizer: Any, training: TrainingSection
) -> tuple[list[Encoded], list[Encoded]]:
    """``(chosen, rejected)`` encoded as ``(input_ids, labels)`` per pair.

    Raises:
        DataError: a row without ``id``, ``prompt``, ``chosen`` or ``rejected``.
    """
    for n, row in enumerate(pairs):
        missing = [k for k in ("id", "prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise DataError(f"preference pair {row.get('id', f'#{n}')}: missing {', '.join(missing)}")
    # Chosen and rejected share one prompt cut, decided by the longer of the two (TRL's rule): groups of 2.
    encoded = encode_sequences(
        tokenizer,
        [row["prompt"] for row in pairs for _ in range(2)],
        [text for row in pairs for text in (row["chosen"], row["rejected"])],
        training.max_prompt_length,
        training.max_length,
        group_sizes=[2] * len(pairs),
    )
    return encoded[0::2], encoded[1::2]


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def reference_logps(
    model: Any,
    chosen: list[Encoded],
    rejected: list[Encoded],
    indices: list[int],
    *,
    pad_id: int,
    batch_size: int,
    accelerator: Any,
) -> dict[int, tuple[float, float]]:
    """Summed response log-probs of chosen and rejected under ``model`` for the pairs at ``indices``.

    The rows go through in length-sorted batches of ``2 * batch_size`` (:func:`score_encoded`).
    """
    rows = [chosen[i] for i in indices] + [rejected[i] for i in indices]
    with accelerator.autocast():
        logps, _ = score_encoded(model, rows, batch_size=2 * batch_size, pad_token_id=pad_id, device=accelerator.device)
    n = len(indices)
    return {i: (float(logps[j]), float(logps[n + j])) for j, i in enumerate(indices)}


def _precomputed_reference(
    pairs: list[dict[str, Any]],
    chosen: list[Encoded],
    rejected: list[Encoded],
    *,
    policy: Any,
    policy_path: str,
    reference_path: str,
    dtype: str,
    pad_id: int,
    batch_size: int,
    accelerator: Any,
    work_dir: Path,
) -> torch.Tensor:
    """``[n, 2]`` reference log-probs, computed once (sharded over processes) and cached in ``work_dir``.

    The cache makes a resumed run use exactly the numbers the interrupted one used.
    """
    from accelerate.utils import gather_object

    cache = work_dir / REF_LOGPS_CACHE
    ids = [str(row["id"]) for row in pairs]
    # The cache is valid only for the same reference, pairs and tokenization.
    key = {
        "reference": reference_path,
        "dtype": dtype,
        "ids": ids,
        "lengths": [len(c[0]) + len(r[0]) for c, r in zip(chosen, rejected, strict=True)],
    }
    if cache.exists():
        stored = loads_json(cache.read_text())
        if stored.get("key") == key:
            return torch.tensor([stored["logps"][i] for i in ids], dtype=torch.float32)
    # Same folder for policy and reference (seed DPO): the policy, before its first step, is the reference.
    model = policy if policy_path == reference_path else load_model(reference_path, dtype, accelerator.device)
    was_training = model.training
    model.to(accelerator.device).eval()
    mine = list(range(accelerator.process_index, len(pairs), accelerator.num_processes))
    local = reference_logps(
        model, chosen, rejected, mine, pad_id=pad_id, batch_size=batch_size, accelerator=accelerator
    )
    merged: dict[int, tuple[float, float]] = {}
    for part in gather_object([local]) if accelerator.num_processes > 1 else [local]:
        merged.update(part)
    model.train(was_training)
    if model is not policy:
        del model
    if accelerator.is_main_process:
        write_json_atomic(cache, {"key": key, "logps": {ids[i]: list(merged[i]) for i in range(len(pairs))}})
    accelerator.wait_for_everyone()
    return torch.tensor([merged[i] for i in range(len(pairs))], dtype=torch.float32)


def train_preference(
    pairs: list[dict[str, Any]],
    *,
    policy_path: str,
    reference_path: str,
    output_dir: Path,
    work_dir: Path,
    training: TrainingSection,
    loss: DPOLoss,
    noise_detector: Any,
    refiner: Any,
    refiner_per_pair: bool = False,
    lam: float,
    seed: int,
    dtype: str = "auto",
    ref_logps: dict[str, tuple[float, float]] | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    description: str = "dpo",
    adapter: LoraAdapterConfig | None = None,
) -> dict[str, Any]:
    """Train a policy with (SPA-refined) DPO and save it to ``output_dir``.

    Args:
        pairs: rows ``{"id", "prompt" (chat messages), "chosen", "rejected"}``.
        policy_path: the model to start from (``save_pretrained`` folder or hub id); its tokenizer is used.
        reference_path: the frozen DPO reference.
        output_dir: where the trained model, tokenizer and generation config are written (atomically).
        work_dir: checkpoints, ``metrics.jsonl`` and the reference log-prob cache; resumed when it holds a
            complete checkpoint.
        training: optimiser, batching, lengths, checkpoints, non-finite policy.
        loss: the DPO loss (holds beta).
        noise_detector: a detector from :mod:`spa_recipes.noise` (``flag``, ``confidence``, ``threshold``).
        refiner: a refiner from :mod:`spa_recipes.refiners`.
        refiner_per_pair: the refiner offers PER_PAIR: it is given the micro-batch's pair ids.
        lam: DND extrapolation strength for this stage (see :func:`spa_recipes.noise.lambda_for_iteration`).
        seed: seed of data order and RNGs.
        dtype: the recipe's ``models.dtype`` (``auto``: bf16 on a GPU that has it, else fp32): the reference
            loads in it and the trained policy is saved in it; with a 16-bit dtype the policy trains with
            float32 master weights under mixed precision (:func:`~spa_recipes.training.optimization.make_accelerator`).
        ref_logps: reference log-probs by pair id, ``(chosen, rejected)``, computed with the same lengths;
            skips the reference pass. Ignored when DND needs the reference's logits.
        progress: tqdm bar.
        description: label of the progress lines (the runner passes the stage name).
        stop_after: stop after this many optimiser steps, leaving a checkpoint to resume from.
        adapter: the recipe's ``models.adapter``: train a fresh LoRA adapter on the frozen starting model
            (:mod:`spa_recipes.adapters`); the reference, when it is the starting model, is the policy with the
            adapter disabled. None: full fine-tuning.

    Returns:
        Summary: ``steps``, ``total_steps``, ``final_loss``, ``mean_flagged_fraction``, ``final_reward_accuracy``,
        ``skipped_steps``, ``tokens_per_s``, ``resumed_from``, ``stopped_early``, ``extrapolated``.

    Raises:
        DataError: malformed rows, or ``ref_logps`` missing a pair id.
        TrainingError: a non-finite loss/gradient under ``nonfinite: fail``.
    """
    output_dir, work_dir = Path(output_dir), Path(work_dir)
    accelerator = make_accelerator(dtype)
    tokenizer = load_tokenizer(policy_path)
    pad_id = _pad_id(tokenizer)
    chosen, rejected = encode_pairs(pairs, tokenizer, training)
    policy = load_policy(policy_path, dtype, adapter, seed)  # adapters: float32 master weights of what trains
    extrapolate = noise_detector.confidence == "extrapolated" and lam != 0
    beta = loss.beta

    ref_model = None
    ref_table: torch.Tensor | None = None
    if extrapolate:
        # adapters: the policy with its adapter disabled, when the reference is the starting model
        ref_model = reference_from_policy(policy, policy_path, reference_path)
        if ref_model is None:
            ref_model = load_model(reference_path, dtype, accelerator.device)
            ref_model.requires_grad_(False)
    elif ref_logps is not None:
        missing = [str(row["id"]) for row in pairs if str(row["id"]) not in ref_logps]
        if missing:
            raise DataError(f"ref_logps: no reference log-probs for pair {missing[0]} ({len(missing)} missing)")
        ref_table = torch.tensor([list(ref_logps[str(row["id"])]) for row in pairs], dtype=torch.float32)
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        with adapter_disabled(policy):  # adapters: the starting model
            ref_table = _precomputed_reference(
                pairs,
                chosen,
                rejected,
                policy=policy,
                policy_path=policy_path,
                reference_path=reference_path,
                dtype=dtype,
                pad_id=pad_id,
                batch_size=training.batch_size,
                accelerator=accelerator,
                work_dir=work_dir,
            )
    ids = [str(row["id"]) for row in pairs]

    # Asked of the unwrapped models (an adapter's reference answers for the base it computes with): the loop
    # wraps the policy for DDP.
    head = output_head(policy)
    ref_head = output_head(ref_model) if ref_model is not None else None
    layout = layout_for(policy) if ref_model is None or layout_for(ref_model) == layout_for(policy) else "padded"

    def forward(
        model: Any, rows: list[Encoded], with_reference: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Policy log-probs of ``rows`` in their order, in one padding-free pass; ``with_reference`` (DND)
        also the reference's and ``log p_ext``'s."""
        batch = pack(rows, pad_id, layout=layout).to(accelerator.device)
        with accelerator.autocast():
            out = forward_packed(model, batch, head=head)

        def sums(values: torch.Tensor) -> torch.Tensor:
            return sequence_sums(values, out, batch.count, batch.longest)

        logps = sums(token_logps(out.logits, out.targets))
        if not with_reference:
            return logps, None, None
        with torch.no_grad(), accelerator.autocast():
            ref = forward_packed(ref_model, batch, head=ref_head)
        conf_logps = sums(token_logps(extrapolated_logits(out.logits.detach(), ref.logits, lam), out.targets))
        ref_logps = sums(token_logps(ref.logits, out.targets, in_place=True))
        return logps, ref_logps, conf_logps

    def rows_of(indices: list[int]) -> list[Encoded]:
        """The 2n sequences of the pairs at ``indices``: the chosen ones, then the rejected ones."""
        return [chosen[i] for i in indices] + [rejected[i] for i in indices]

    def margins_of(
        model: Any, indices: list[int], with_reference: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Policy log-probs ``[2n]`` (chosen then rejected), reference log-probs ``[2n]`` and the detector's
        confidence margins ``beta * Delta_conf`` ``[n]`` of the pairs at ``indices``."""
        n = len(indices)
        logps, ref_seq, conf_logps = forward(model, rows_of(indices), with_reference)
        if ref_seq is None:
            table = ref_table[indices].to(accelerator.device)
            ref_seq = torch.cat([table[:, 0], table[:, 1]])
        if conf_logps is None:
            conf_logps = logps.detach()
        conf_margins = beta * ((conf_logps[:n] - ref_seq[:n]) - (conf_logps[n:] - ref_seq[n:]))
        return logps, ref_seq, conf_margins

    # A detector over the whole optimiser batch (batch_quantile) needs every micro-batch's margins before the
    # first one's loss: with gradient accumulation, a no-grad pass over the step's micro-batches computes
    # them (and the reference log-probs) first; the flags then wait here, one entry per micro-batch.
    per_step = noise_detector.scope == "optimizer_step"  # the NoiseDetector protocol (spa_recipes.api) declares it
    flagged_ahead: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def begin_step(model: Any, micro_batches: list[list[int]], step: int, total_steps: int) -> None:
        flagged_ahead.clear()
        if not per_step or len(micro_batches) == 1:
            return
        with torch.no_grad():
            parts = [margins_of(model, indices, extrapolate)[1:] for indices in micro_batches]
        flags = noise_detector.flag(torch.cat([conf for _, conf in parts]), accelerator)
        for (ref_seq, conf), part_flags in zip(parts, flags.split([len(c) for _, c in parts]), strict=True):
            flagged_ahead.append((ref_seq, conf, part_flags))

    def compute(model: Any, indices: list[int], step: int, total_steps: int) -> MicroBatch:
        n = len(indices)
        if flagged_ahead:
            ref_seq, conf_margins, flags = flagged_ahead.pop(0)
            logps, _, _ = forward(model, rows_of(indices), False)
        else:
            logps, ref_seq, conf_margins = margins_of(model, indices, extrapolate)
            flags = noise_detector.flag(conf_margins, accelerator)
        pc, pr = logps[:n], logps[n:]
        rc, rr = ref_seq[:n], ref_seq[n:]
        by_pair = {"ids": [ids[i] for i in indices]} if refiner_per_pair else {}
        smoothing, weights = refiner.refine(flags, step, total_steps, **by_pair)
        losses, margins = loss(pc, pr, rc, rr, smoothing=smoothing)
        value = (losses * weights.to(losses.device)).mean()
        chosen_rewards = (beta * (pc - rc)).detach()
        rejected_rewards = (beta * (pr - rr)).detach()
        return MicroBatch(
            loss=value,
            means={
                "loss": float(value.detach()),
                "margins": float(margins.detach().mean()),
                "confidence_margins": float(conf_margins.mean()),
                "rewards_chosen": float(chosen_rewards.mean()),
                "rewards_rejected": float(rejected_rewards.mean()),
                "reward_accuracy": float((chosen_rewards > rejected_rewards).float().mean()),
                "flagged_fraction": float(flags.float().mean()),
                "threshold": float(noise_detector.threshold),
                "mean_smoothing": float(smoothing.mean()),
            },
            sums={"tokens": float(sum(len(ids) for ids, _ in rows_of(indices))), "pairs": float(n)},
            lists={"flagged_ids": [ids[i] for i, f in zip(indices, flags.tolist(), strict=True) if f]},
        )

    result = run_training_loop(
        accelerator=accelerator,
        model=policy,
        num_examples=len(pairs),
        compute=compute,
        training=training,
        seed=seed,
        work_dir=work_dir,
        stateful={"detector": noise_detector},
        progress=progress,
        description=description,
        stop_after=stop_after,
        lengths=[max(len(c[0]), len(r[0])) for c, r in zip(chosen, rejected, strict=True)],
        begin_step=begin_step,
    )
    ref_model = None  # free the reference before saving
    save_policy(accelerator, result, tokenizer, output_dir, dtype, adapter, policy_path)  # adapters: merged or not
    rows = read_metrics(work_dir)
    return {
        "steps": result.steps,
        "total_steps": result.total_steps,
        "final_loss": result.final_loss,
        "mean_flagged_fraction": _mean(r.get("flagged_fraction") for r in rows),
        "final_reward_accuracy": rows[-1]["reward_accuracy"] if rows else math.nan,
        "final_margins": rows[-1]["margins"] if rows else math.nan,
        "skipped_steps": result.skipped_steps,
        "tokens_per_s": _mean(r.get("tokens_per_s") for r in rows),
        "resumed_from": result.resumed_from,
        "stopped_early": result.stopped_early,
        "extrapolated": extrapolate,
        "pairs": len(pairs),
        "parallelism": parallelism(accelerator),
    }


def _mean(values: Any) -> float:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else math.nan
