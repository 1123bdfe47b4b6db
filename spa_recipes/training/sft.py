"""Supervised fine-tuning on (prompt, response) demonstrations: the loss is on response tokens only.

The shared loop (:mod:`spa_recipes.training.loop`) provides optimiser, schedule, accumulation, checkpoints,
resume, the non-finite policy and metrics; this module only says how one micro-batch's loss is computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from spa_recipes.errors import DataError
from spa_recipes.modeling import load_model
from spa_recipes.packing import forward_packed, layout_for, output_head, pack
from spa_recipes.schema import TrainingSection
from spa_recipes.sequences import encode_sequences
from spa_recipes.training.loop import MicroBatch, run_training_loop, save_trained
from spa_recipes.training.optimization import make_accelerator, parallelism


def train_sft(
    examples: list[dict[str, Any]],
    *,
    model: Any,
    tokenizer: Any,
    output_dir: Path,
    work_dir: Path,
    training: TrainingSection,
    seed: int,
    dtype: str = "auto",
    progress: bool = True,
    stop_after: int | None = None,
    description: str = "sft",
) -> dict[str, Any]:
    """Fine-tune ``model`` on demonstrations and save it (with ``tokenizer``) to ``output_dir``.

    Args:
        examples: rows ``{"prompt": chat messages, "response": str}``; the response is followed by EOS.
        model: an in-memory causal LM (e.g. the toy world's random-init model), trained IN PLACE, or a
            model folder / hub id, loaded here in float32 (the master weights). When ``work_dir`` holds a
            checkpoint, its weights replace the model's.
        tokenizer: the tokenizer with a chat template (prompts are rendered with it).
        output_dir: where the model, tokenizer and generation config are written (atomically).
        work_dir: checkpoints and ``metrics.jsonl``.
        training: optimiser, batching, lengths, checkpoints, non-finite policy.
        seed: seed of data order and RNGs.
        dtype: the recipe's ``models.dtype``: the model is saved in it, and a 16-bit dtype trains with
            float32 master weights under mixed precision (:func:`~spa_recipes.training.optimization.make_accelerator`).
        progress: tqdm bar.
        description: label of the progress lines (the runner passes the stage name).
        stop_after: stop after this many optimiser steps, leaving a checkpoint to resume from.

    Returns:
        Summary: ``steps``, ``total_steps``, ``first_loss``, ``final_loss``, ``skipped_steps``, ``tokens_per_s``,
        ``resumed_from``, ``stopped_early``.

    Raises:
        DataError: a row without ``prompt`` or ``response``.
        TrainingError: a non-finite loss/gradient under ``nonfinite: fail``.
    """
    output_dir, work_dir = Path(output_dir), Path(work_dir)
    accelerator = make_accelerator(dtype)
    if isinstance(model, (str, Path)):
        model = load_model(str(model), "float32")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for n, row in enumerate(examples):
        if "prompt" not in row or "response" not in row:
            raise DataError(f"sft example {row.get('id', f'#{n}')}: needs 'prompt' and 'response'")
    encoded = encode_sequences(
        tokenizer,
        [row["prompt"] for row in examples],
        [row["response"] for row in examples],
        training.max_prompt_length,
        training.max_length,
    )

    head, layout = output_head(model), layout_for(model)  # asked before the loop wraps the model for DDP

    def compute(model: Any, indices: list[int], step: int, total_steps: int) -> MicroBatch:
        batch = pack([encoded[i] for i in indices], pad_id, layout=layout).to(accelerator.device)
        # Padding-free rows; logits only where a response token is predicted, and the loss on those.
        with accelerator.autocast():
            out = forward_packed(model, batch, head=head)
        # A sequence the batch holds twice is computed once (packing.pack): its tokens count as often as it comes.
        weights = torch.bincount(out.copy_of, minlength=batch.count)[out.sequence].float()
        targets = float(weights.sum())
        losses = F.cross_entropy(out.logits.float(), out.targets, reduction="none")
        loss = (losses * weights).sum() / max(targets, 1.0)
        return MicroBatch(
            loss=loss,
            means={"loss": float(loss.detach())},
            sums={
                "tokens": float(sum(len(encoded[i][0]) for i in indices)),
                "positions": float(batch.positions),
                "response_tokens": targets,
            },
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
        lengths=[len(ids) for ids, _ in encoded],
    )
    save_trained(accelerator, result, tokenizer, output_dir, dtype)
    result.model.eval()
    losses = [r["loss"] for r in result.history]
    speeds = [r["tokens_per_s"] for r in result.history]
    return {
        "steps": result.steps,
        "total_steps": result.total_steps,
        "first_loss": losses[0] if losses else float("nan"),
        "final_loss": result.final_loss,
        "skipped_steps": result.skipped_steps,
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else float("nan"),
        "resumed_from": result.resumed_from,
        "stopped_early": result.stopped_early,
        "parallelism": parallelism(accelerator),
    }
