"""A Bradley-Terry reward model as judge, and the training of one on preference pairs.

A reward model is a sequence classifier with one output (``AutoModelForSequenceClassification``,
``num_labels=1``). Each response is scored on its own: the conversation (prompt messages + an assistant
turn with the response) is rendered with the reward model's own tokenizer chat template, cut at the start
to ``max_length`` tokens (the score is read at the last token, the end of the response), and the logit is
the reward. ``p(i > j) = sigmoid(r_i - r_j)``.

:func:`train_reward_model` fits one with the Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)``,
starting from a causal LM folder (the score head is new, the body is the LM's), so that "iterative DPO with a
fixed external judge trained on the same seed labels" is a baseline a recipe can run.
"""

from __future__ import annotations

import gc
import math
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from spa_recipes.atomic import atomic_dir
from spa_recipes.builtins import RewardModelJudgeConfig
from spa_recipes.distributed import default_device
from spa_recipes.errors import UserError
from spa_recipes.judges.base import Row, judge_in_shards
from spa_recipes.modeling import load_tokenizer, resolve_dtype
from spa_recipes.sequences import collate

Messages = list[dict[str, str]]
MAX_GRAD_NORM = 1.0


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
            scores.extend(_forward(model, encoded[start : start + batch_size], device).float().tolist())
    return scores


def _forward(model: Any, batch: list[list[int]], device: str | torch.device) -> torch.Tensor:
    """One logit per sequence, right-padded with the model's own pad id (it reads the last non-pad token)."""
    padded = collate([(ids, ids) for ids in batch], model.config.pad_token_id)
    out = model(input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device))
    return out.logits[:, 0]


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
        cfg: the judge's config.
        trained_path: the reward model trained by the ``judge_train`` stage, used when ``cfg.path`` is None.
        dtype: model dtype name.
        max_length: the runner's sequence limit, used when ``cfg.max_length`` is None.
        device: where to run; CUDA when available, else CPU.
        **_: build context the judge does not need.

    Raises:
        UserError: neither ``cfg.path`` nor ``trained_path`` is given.
    """

    def __init__(
        self,
        cfg: RewardModelJudgeConfig,
        *,
        trained_path: str | None = None,
        dtype: str = "auto",
        max_length: int | None = None,
        device: str | None = None,
        **_: Any,
    ) -> None:
        path = cfg.path or trained_path
        if path is None:
            raise UserError(
                "reward_model: set path (a trained reward model) or train_on_seed: true (train one on the seed pairs)"
            )
        self.cfg = cfg
        self.path = str(path)
        self.dtype = dtype
        self.max_length = cfg.max_length or max_length
        self.device = device or default_device()
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
    ) -> dict[str, float]:
        """The ``judge_train`` stage: a reward model trained once on the labelled seed pairs (a fixed judge)."""
        return train_reward_model(
            pairs,
            base_path=base_path,
            output_dir=output_dir,
            epochs=cfg.train_epochs,
            learning_rate=cfg.train_learning_rate,
            batch_size=cfg.train_batch_size,
            max_length=cfg.max_length or max_length,
            seed=seed,
            dtype=dtype,
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


def train_reward_model(
    pairs: list[Row],
    *,
    base_path: str,
    output_dir: Path,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    max_length: int | None,
    seed: int,
    dtype: str = "auto",
    device: str | None = None,
) -> dict[str, float]:
    """Train a Bradley-Terry reward model on preference pairs and save it (atomically) to ``output_dir``.

    The model is ``AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)``: the body
    of a causal LM folder (e.g. the SFT model) with a new score head. Each step scores the chosen and the
    rejected responses of a batch of pairs in one forward pass and minimises
    ``-log sigmoid(r_chosen - r_rejected)`` with AdamW (gradient norm clipped to 1). The pair order of each
    epoch is a seeded shuffle, so the same inputs and seed give the same model on the same device.

    Args:
        pairs: rows ``{"id", "prompt": messages, "chosen": str, "rejected": str}``.
        base_path: causal LM folder or hub id to start from (its tokenizer and chat template are kept).
        output_dir: where the model and tokenizer are saved (``save_pretrained``; replaced if present).
        epochs: passes over the pairs.
        learning_rate: AdamW learning rate (no schedule).
        batch_size: pairs per step.
        max_length: tokens kept per conversation (cut at the start); ``None``: no limit.
        seed: seed of the head initialisation and of the shuffles.
        dtype: the recipe's ``models.dtype``: the model is saved in it; a 16-bit dtype trains float32 master
            weights with the forward and backward under autocast in that dtype (mixed precision).
        device: where to train; CUDA when available, else CPU.

    Returns:
        ``{"steps", "loss" (mean of the last epoch), "accuracy" (share of pairs ranked right during the last
        epoch), "pairs"}``.

    Raises:
        UserError: no pairs, or the base model cannot be loaded.
    """
    from transformers import AutoModelForSequenceClassification

    if not pairs:
        raise UserError("train_reward_model: no preference pairs to train on")
    device = device or default_device()
    tokenizer = load_tokenizer(base_path)
    torch.manual_seed(seed)  # the score head is initialised at load time
    compute_dtype = resolve_dtype(dtype)
    try:
        # float32 master weights: a 16-bit AdamW update at a small learning rate is mostly rounded away.
        model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load reward model base '{base_path}': {str(exc).splitlines()[0]}") from exc
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    encoded = [
        (
            encode_conversation(tokenizer, p["prompt"], p["chosen"], max_length),
            encode_conversation(tokenizer, p["prompt"], p["rejected"], max_length),
        )
        for p in pairs
    ]
    rng = random.Random(seed)
    steps, losses, correct = 0, [], 0
    for _ in range(epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        losses, correct = [], 0
        for start in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[start : start + batch_size]]
            with torch.autocast(torch.device(device).type, compute_dtype, enabled=compute_dtype != torch.float32):
                rewards = _forward(model, [c for c, _ in batch] + [r for _, r in batch], device).float()
            margin = rewards[: len(batch)] - rewards[len(batch) :]
            loss = -F.logsigmoid(margin).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            steps += 1
            losses.append(loss.item() * len(batch))
            correct += int((margin > 0).sum())
    model.eval().to(compute_dtype)
    with atomic_dir(output_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return {
        "steps": steps,
        "loss": sum(losses) / len(encoded),
        "accuracy": correct / len(encoded),
        "pairs": len(encoded),
    }
