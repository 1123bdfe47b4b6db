"""A Bradley-Terry reward model: how it reads a conversation, and its training on preference pairs.

A reward model is a sequence classifier with one output (``AutoModelForSequenceClassification``,
``num_labels=1``). Each response is scored on its own: the conversation (prompt messages + an assistant turn
with the response) is rendered with the reward model's own tokenizer chat template, cut at the start to
``max_length`` tokens (the score is read at the last token, the end of the response), and the logit is the
reward. The judge (:mod:`spa_recipes.judges.reward_model`) scores with it.

:func:`train_reward_model` fits one with the Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)`` on the
shared loop (:mod:`spa_recipes.training.loop`, as SFT and DPO do: data order, AdamW and its schedule,
accumulation, clipping, float32 master weights under mixed precision, gradient checkpointing, checkpoints and
exact resume); this module only says how one micro-batch's loss is computed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from spa_recipes.errors import UserError
from spa_recipes.modeling import load_tokenizer
from spa_recipes.schema import TrainingSection
from spa_recipes.sequences import collate
from spa_recipes.training.loop import MicroBatch, read_metrics, run_training_loop, save_trained
from spa_recipes.training.optimization import make_accelerator, parallelism

Messages = list[dict[str, str]]


def encode_conversation(tokenizer: Any, prompt: Messages, response: str, max_length: int | None) -> list[int]:
    """Token ids of prompt + assistant response under the tokenizer's chat template, cut at the start.

    The start is cut (not the end) because the reward is read at the last token.
    """
    messages = [*prompt, {"role": "assistant", "content": response}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if max_length is not None and len(ids) > max_length:
        ids = ids[len(ids) - max_length :]
    return ids


def reward_logits(model: Any, batch: list[list[int]], pad_id: int, device: str | torch.device) -> torch.Tensor:
    """One logit per sequence, right-padded with ``pad_id``, the model's own pad id (it reads the last non-pad
    token)."""
    padded = collate([(ids, ids) for ids in batch], pad_id)
    out = model(input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device))
    return out.logits[:, 0]


def train_reward_model(
    pairs: list[dict[str, Any]],
    *,
    base_path: str,
    output_dir: Path,
    work_dir: Path,
    training: TrainingSection,
    max_length: int | None,
    seed: int,
    dtype: str = "auto",
    progress: bool = True,
    stop_after: int | None = None,
    description: str = "reward_model",
) -> dict[str, Any]:
    """Train a Bradley-Terry reward model on preference pairs and save it (atomically) to ``output_dir``.

    The model is ``AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)``: the body of a
    causal LM folder (e.g. the SFT model) with a new score head, initialised from ``seed``. Each micro-batch
    scores the chosen and the rejected responses of its pairs in one forward pass; the loss is
    ``-log sigmoid(r_chosen - r_rejected)`` averaged over its pairs.

    Args:
        pairs: rows ``{"id", "prompt": messages, "chosen": str, "rejected": str}``.
        base_path: causal LM folder or hub id to start from (its tokenizer and chat template are kept).
        output_dir: where the model and tokenizer are saved (``save_pretrained``, atomically).
        work_dir: checkpoints and ``metrics.jsonl``; resumed when it holds a complete checkpoint.
        training: optimiser, schedule, batching (``batch_size`` pairs), gradient checkpointing, checkpoints,
            non-finite policy; its length fields are not used (``max_length`` is).
        max_length: tokens kept per conversation (cut at the start); ``None``: no limit.
        seed: seed of the head initialisation, the data order and the RNGs.
        dtype: the recipe's ``models.dtype``: the model is saved in it; a 16-bit dtype trains float32 master
            weights with the forward and backward under autocast in that dtype (mixed precision).
        progress: tqdm bar.
        stop_after: stop after this many optimiser steps, leaving a checkpoint to resume from.
        description: label of the progress lines.

    Returns:
        ``steps``, ``total_steps``, ``loss`` (mean over the last epoch's steps, weighted by pairs),
        ``accuracy`` (share of the last epoch's pairs ranked right while training), ``final_loss``, ``pairs``,
        ``skipped_steps``, ``resumed_from``, ``stopped_early``, ``parallelism``.

    Raises:
        UserError: no pairs, or the base model cannot be loaded.
        TrainingError: a non-finite loss/gradient under ``nonfinite: fail``.
    """
    from transformers import AutoModelForSequenceClassification

    if not pairs:
        raise UserError("train_reward_model: no preference pairs to train on")
    output_dir, work_dir = Path(output_dir), Path(work_dir)
    accelerator = make_accelerator(dtype)
    tokenizer = load_tokenizer(base_path)
    torch.manual_seed(seed)  # the score head is initialised at load time
    try:
        # float32 master weights: a 16-bit AdamW update at a small learning rate is mostly rounded away.
        model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load reward model base '{base_path}': {str(exc).splitlines()[0]}") from exc
    model.config.pad_token_id = pad_id = tokenizer.pad_token_id
    encoded = [
        (
            encode_conversation(tokenizer, p["prompt"], p["chosen"], max_length),
            encode_conversation(tokenizer, p["prompt"], p["rejected"], max_length),
        )
        for p in pairs
    ]

    def compute(model: Any, indices: list[int], step: int, total_steps: int) -> MicroBatch:
        n = len(indices)
        rows = [encoded[i][0] for i in indices] + [encoded[i][1] for i in indices]
        with accelerator.autocast():
            rewards = reward_logits(model, rows, pad_id, accelerator.device).float()
        margin = rewards[:n] - rewards[n:]
        loss = -F.logsigmoid(margin).mean()
        margin = margin.detach()
        right = (margin > 0).float()
        return MicroBatch(
            loss=loss,
            means={"loss": float(loss.detach()), "accuracy": float(right.mean()), "margins": float(margin.mean())},
            sums={"tokens": float(sum(len(ids) for ids in rows)), "pairs": float(n), "correct": float(right.sum())},
        )

    result = run_training_loop(
        accelerator=accelerator,
        model=model,
        num_examples=len(encoded),
        compute=compute,
        training=training,
        seed=seed,
        work_dir=work_dir,
        progress=progress,
        description=description,
        stop_after=stop_after,
        lengths=[max(len(c), len(r)) for c, r in encoded],
    )
    save_trained(accelerator, result, tokenizer, output_dir, dtype)
    result.model.eval()
    rows = read_metrics(work_dir)  # the whole run, across resumes
    last_epoch = [r for r in rows if int(r["epoch"]) == int(rows[-1]["epoch"])] if rows else []
    seen = sum(r["pairs"] for r in last_epoch)
    return {
        "steps": result.steps,
        "total_steps": result.total_steps,
        "loss": sum(r["loss"] * r["pairs"] for r in last_epoch) / seen if seen else math.nan,
        "accuracy": sum(r["correct"] for r in last_epoch) / seen if seen else math.nan,
        "final_loss": result.final_loss,
        "pairs": len(encoded),
        "skipped_steps": result.skipped_steps,
        "resumed_from": result.resumed_from,
        "stopped_early": result.stopped_early,
        "parallelism": parallelism(accelerator),
    }
