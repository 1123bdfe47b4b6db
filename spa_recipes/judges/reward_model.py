"""A Bradley-Terry reward model as judge: each response scored on its own, ``p(i > j) = sigmoid(r_i - r_j)``.

How a reward model reads a conversation, and its training on preference pairs, live in
:mod:`spa_recipes.training.reward`. The ``judge_train`` stage trains one on the seed labels
(:meth:`RewardModelJudge.train_on_seed`), so that "iterative DPO with a fixed external judge trained on the
same seed labels" is a baseline a recipe can run.
"""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any

import torch

from spa_recipes.api import EvaluatorContext, JudgeContext
from spa_recipes.distributed import default_device
from spa_recipes.errors import UserError
from spa_recipes.judges.base import Row, judge_in_shards
from spa_recipes.judges.config import RewardModelEvaluatorConfig, RewardModelJudgeConfig
from spa_recipes.modeling import load_tokenizer, resolve_dtype
from spa_recipes.schema import TrainingSection
from spa_recipes.training.reward import Messages, encode_conversation, reward_logits, train_reward_model


def reward_scores(
    model: Any,
    tokenizer: Any,
    prompts: list[Messages],
    responses: list[str],
    *,
    batch_size: int,
    max_length: int | None,
    device: str | torch.device,
) -> list[float]:
    """The reward of each (prompt, response), in input order."""
    encoded = [encode_conversation(tokenizer, p, r, max_length) for p, r in zip(prompts, responses, strict=True)]
    scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            scores.extend(reward_logits(model, batch, model.config.pad_token_id, device).float().tolist())
    return scores


def load_reward_model(path: str, *, dtype: str = "auto", device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """A one-logit sequence classifier and its tokenizer (with a pad token and a chat template), in eval mode.

    Raises:
        UserError: the folder cannot be loaded, or its head has more than one output.
    """
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=resolve_dtype(dtype))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load reward model '{path}': {str(exc).splitlines()[0]}") from exc
    if model.config.num_labels != 1:
        raise UserError(f"reward model '{path}' has {model.config.num_labels} outputs; a Bradley-Terry model has 1")
    if model.config.pad_token_id is None:  # batched scoring finds the last token through the pad id
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


class RewardModelJudge:
    """Scores each response with a reward model; adds ``"pair_probs"`` = sigmoid of reward differences.

    Args:
        cfg: the judge's (or the evaluator's) config.
        ctx: the judge or evaluator context; read here: ``trained_path`` (the reward model trained by the
            ``judge_train`` stage, used when ``cfg.path`` is None), ``max_length`` (the runner's sequence limit,
            used when ``cfg.max_length`` is None), ``dtype`` (model dtype name) and ``device`` (where to run;
            CUDA when available, else CPU). An evaluator context has no trained model and no sequence limit.

    Raises:
        UserError: neither ``cfg.path`` nor ``trained_path`` is given.
    """

    def __init__(
        self,
        cfg: RewardModelJudgeConfig | RewardModelEvaluatorConfig,
        ctx: JudgeContext | EvaluatorContext = JudgeContext(),
    ) -> None:
        judging = isinstance(ctx, JudgeContext)
        trained_path, max_length = (ctx.trained_path, ctx.max_length) if judging else (None, None)
        path = cfg.path or trained_path
        if path is None:
            raise UserError(
                "reward_model: set path (a trained reward model) or train_on_seed: true (train one on the seed pairs)"
            )
        self.cfg = cfg
        self.path = str(path)
        self.dtype = ctx.dtype
        self.max_length = cfg.max_length or max_length
        self.device = ctx.device or default_device()
        self.stats: dict[str, Any] = {}

    @staticmethod
    def train_on_seed(
        cfg: RewardModelJudgeConfig,
        pairs: list[Row],
        *,
        base_path: str,
        output_dir: Path,
        seed: int,
        dtype: str = "auto",
        max_length: int | None = None,
        training: TrainingSection | None = None,
        work_dir: Path | None = None,
        progress: bool = True,
        stop_after: int | None = None,
    ) -> dict[str, Any]:
        """The ``judge_train`` stage: a reward model trained once on the labelled seed pairs (a fixed judge).

        Args:
            cfg: the judge's config; its ``train_epochs``, ``train_learning_rate`` and ``train_batch_size``
                replace ``epochs``, ``learning_rate`` and ``batch_size`` of ``training``.
            pairs: the seed pairs (``id``, ``prompt``, ``chosen``, ``rejected``).
            base_path: the causal LM whose body the reward model starts from (pi_init).
            output_dir: where the trained reward model is saved.
            seed: the stage's seed.
            dtype: the recipe's ``models.dtype``.
            max_length: tokens per conversation when ``cfg.max_length`` is None.
            training: the recipe's training section for the rest of the loop (schedule, accumulation,
                clipping, gradient checkpointing, checkpoints, non-finite policy); None: the defaults.
            work_dir: checkpoints and ``metrics.jsonl``, resumed after a kill; None: ``work`` beside
                ``output_dir``.
            progress: tqdm bar.
            stop_after: stop after this many optimiser steps, leaving a checkpoint to resume from.

        Returns:
            The summary of :func:`~spa_recipes.training.reward.train_reward_model`.
        """
        update = {
            "epochs": cfg.train_epochs,
            "learning_rate": cfg.train_learning_rate,
            "batch_size": cfg.train_batch_size,
        }
        output_dir = Path(output_dir)
        return train_reward_model(
            pairs,
            base_path=base_path,
            output_dir=output_dir,
            work_dir=Path(work_dir) if work_dir is not None else output_dir.parent / "work",
            training=(training or TrainingSection()).model_copy(update=update),
            max_length=cfg.max_length or max_length,
            seed=seed,
            dtype=dtype,
            progress=progress,
            stop_after=stop_after,
            description="judge_train",
        )

    def score(self, rows: list[Row], out_dir: Path | None = None) -> list[Row]:
        """Judge every row (the contract of :class:`spa_recipes.judges.base.Judge`).

        Args:
            rows: generated rows (``"id"``, ``"prompt"``, ``"responses"``).
            out_dir: when given, judgements are kept in resumable shards there.

        Returns:
            The rows in order with ``"scores"`` (rewards), ``"valid"`` (finite) and ``"pair_probs"``.
        """
        loaded: dict[str, Any] = {}

        def judge_rows(chunk: list[Row]) -> list[Row]:
            if not loaded:
                loaded["model"], loaded["tokenizer"] = load_reward_model(
                    self.path, dtype=self.dtype, device=self.device
                )
            flat = reward_scores(
                loaded["model"],
                loaded["tokenizer"],
                [row["prompt"] for row in chunk for _ in row["responses"]],
                [r for row in chunk for r in row["responses"]],
                batch_size=self.cfg.batch_size,
                max_length=self.max_length,
                device=self.device,
            )
            out, start = [], 0
            for row in chunk:
                k = len(row["responses"])
                scores, start = flat[start : start + k], start + k
                out.append(_judgement(scores))
            return out

        try:
            judged = judge_in_shards(rows, judge_rows, out_dir, self.cfg.shard_size, "judge reward_model")
        finally:
            loaded.clear()
            gc.collect()
        self.stats = {"rows": len(judged), "invalid_responses": sum(not v for r in judged for v in r["valid"])}
        return judged


def _judgement(scores: list[float]) -> Row:
    """``scores`` (non-finite ones replaced by 0.0), ``valid`` and ``pair_probs`` = sigmoid(r_i - r_j)."""
    k = len(scores)
    valid = [math.isfinite(s) for s in scores]
    pair_probs = [
        [_sigmoid(scores[i] - scores[j]) if i != j and valid[i] and valid[j] else None for j in range(k)]
        for i in range(k)
    ]
    return {
        "scores": [s if ok else 0.0 for s, ok in zip(scores, valid, strict=True)],
        "valid": valid,
        "pair_probs": pair_probs,
    }


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))
