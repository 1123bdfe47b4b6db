"""SPA's direct preference judgment: the DPO implicit reward of the current model.

``r(x, y) = beta * (log pi_policy(y|x) - log pi_ref(y|x))`` with log-probs summed over the response
tokens, EOS included (:func:`spa_recipes.sequences.score_encoded`). With ``length_normalize`` each
log-prob is divided by the response length in tokens first. The reference is chosen by
``cfg.reference``: the SFT model (paper), the model before the policy, or none (``r = beta * log pi_policy``).
With ``previous_scores`` the model before the policy scores every response too, against the same reference
(CREAM's previous-iteration reward); where that model is the reference itself (iteration 1 with the SFT
reference), its rewards would all be 0 and ``previous_scores`` is None.

In a multi-process run the shards are dealt out over the processes (:func:`spa_recipes.generation.shards.run_sharded`)
and every process gets all rows back.
"""

from __future__ import annotations

import gc
import math
import weakref
from array import array
from pathlib import Path
from typing import Any

import torch

from spa_recipes.api import JudgeContext
from spa_recipes.distributed import default_device
from spa_recipes.generation.shards import Row, run_sharded
from spa_recipes.judges.config import ImplicitJudgeConfig
from spa_recipes.modeling import load_model, load_tokenizer
from spa_recipes.sequences import encode_sequences, score_encoded


class ImplicitRewardJudge:
    """Scores responses with the implicit reward of ``policy_path`` against a reference model.

    The models are loaded one at a time (all responses are scored with the policy, it is freed, then
    the reference), so only one model is ever in memory. Both are fed the policy's tokenization: a
    base-model reference may have no chat template of its own. Each response is tokenized once and
    kept (compactly) until the reference has scored it too.

    Args:
        cfg: the judge's config.
        ctx: the judge context; read here:
            ``policy_path``: the model being judged with, ``pi_{i-1}`` (required);
            ``sft_path``: the SFT model ``pi_init`` (reference ``"sft"``);
            ``previous_path``: the model before the policy (reference ``"previous"``); ``None`` means the policy
            has no predecessor but the SFT model (iteration 1), so ``sft_path`` is used;
            ``dtype``: model dtype name;
            ``max_prompt_length``: the length a prompt is cut to when prompt + longest response exceed
            ``max_length`` (TRL's rule, :func:`spa_recipes.sequences.truncate`, as in training);
            ``max_length``: prompt + response; the responses of a row are cut together, as training cuts a pair;
            ``device``: where to run; this process's GPU when there is one, else CPU;
            ``shard_size``: rows per resumable shard when ``score`` is given an ``out_dir``.

    Raises:
        ValueError: the context names no policy.
    """

    def __init__(self, cfg: ImplicitJudgeConfig, ctx: JudgeContext) -> None:
        if ctx.policy_path is None:
            raise ValueError("the implicit judge needs a policy_path in its context")
        self.cfg = cfg
        self.policy_path = ctx.policy_path
        sft_path = ctx.sft_path
        self.reference_path = {"sft": sft_path, "previous": ctx.previous_path or sft_path, "none": None}[cfg.reference]
        previous = ctx.previous_path or sft_path
        self.previous_path = previous if cfg.previous_scores and previous != self.reference_path else None
        self.dtype = ctx.dtype
        self.max_prompt_length = ctx.max_prompt_length
        self.max_length = ctx.max_length
        self.device = ctx.device or default_device()
        self.shard_size = ctx.shard_size

    def score(self, rows: list[Row], out_dir: Path | None = None) -> list[Row]:
        """Add ``"scores"``, ``"valid"`` and ``"policy_logps"`` (K each) to every row.

        Args:
            rows: generated rows (``"id"``, ``"prompt"``, ``"responses"``).
            out_dir: when given, log-probs are kept in resumable shards under ``out_dir/policy`` and
                ``out_dir/reference``; the returned rows themselves are the caller's to write.

        Returns:
            The rows in order with ``"scores"`` (the rewards), ``"valid"`` (the reward is finite) and
            ``"policy_logps"`` (summed, never length-normalised: the trainer can reuse them as cached
            reference log-probs, since the policy judged here is the next DPO reference); with
            ``previous_scores`` also ``"previous_scores"`` (K, or None where the previous model is the reference).
        """
        sequences = _EncodedShards(self.policy_path, self.max_prompt_length, self.max_length)
        models = [("policy", self.policy_path)]
        models += [("previous", self.previous_path)] if self.previous_path is not None else []
        models += [("reference", self.reference_path)] if self.reference_path is not None else []
        logps = {
            name: self._logps(path, rows, out_dir and Path(out_dir) / name, sequences, last=k == len(models) - 1)
            for k, (name, path) in enumerate(models)
        }
        policy = logps["policy"]
        zeros = [{"logps": [0.0] * len(r["logps"])} for r in policy]
        reference = logps.get("reference", zeros)
        out = []
        for i, (row, pol, ref) in enumerate(zip(rows, policy, reference, strict=True)):
            if any(part[i].get("id", row["id"]) != row["id"] for part in logps.values()):
                raise ValueError(f"{out_dir}: cached log-probs are for other rows (row {row['id']!r}); remove it")
            scores = self._rewards(pol["logps"], ref["logps"], pol["lengths"])
            judged = {
                **row,
                "scores": scores,
                "valid": [math.isfinite(s) for s in scores],
                "policy_logps": pol["logps"],
            }
            if self.cfg.previous_scores:
                previous = logps.get("previous")
                judged["previous_scores"] = (
                    self._rewards(previous[i]["logps"], ref["logps"], pol["lengths"]) if previous else None
                )
            out.append(judged)
        return out

    def _rewards(self, logps: list[float], ref_logps: list[float], lengths: list[int]) -> list[float]:
        return [
            self.cfg.beta * (self._norm(lp, n) - self._norm(lr, n))
            for lp, lr, n in zip(logps, ref_logps, lengths, strict=True)
        ]

    def _norm(self, logp: float, length: int) -> float:
        return logp / max(length, 1) if self.cfg.length_normalize else logp

    def _logps(
        self, model_path: str, rows: list[Row], out_dir: Path | None, sequences: _EncodedShards, last: bool
    ) -> list[Row]:
        """``{"id", "logps": [K], "lengths": [K]}`` per row under one model (loaded only if needed).

        ``last``: no model scores these sequences after this one, so each shard's encoding is dropped once used.
        """
        loaded: dict[str, Any] = {}

        def shard(index: int, chunk: list[Row]) -> list[Row]:
            if not loaded:
                loaded["model"] = load_model(model_path, dtype=self.dtype, device=self.device)
            k = [len(r["responses"]) for r in chunk]
            logps, lengths = score_encoded(
                loaded["model"],
                sequences.get(index, chunk, drop=last),
                batch_size=self.cfg.batch_size,
                pad_token_id=sequences.pad_token_id,
                device=self.device,
            )
            out, start = [], 0
            for row, n in zip(chunk, k, strict=True):
                out.append(
                    {
                        "id": row["id"],
                        "logps": logps[start : start + n].tolist(),
                        "lengths": lengths[start : start + n].tolist(),
                    }
                )
                start += n
            return out

        try:
            if out_dir is None:
                return shard(0, rows)
            path = Path(model_path)  # a run's models live in <stage>/model: name the stage
            return run_sharded(
                rows,
                self.shard_size,
                out_dir,
                shard,
                desc=f"judge with {path.parent.name if path.name == 'model' else path.name}",
            )
        finally:
            model = weakref.ref(loaded["model"]) if "model" in loaded else None
            loaded.clear()  # free the model before the next one is loaded
            # Refcounting frees a model without reference cycles right here; a full collection costs a
            # fixed ~0.2 s (every object of transformers and torch is visited), so pay it only when needed.
            if model is not None and model() is not None:
                gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class _EncodedShards:
    """The tokenized sequences of each shard, encoded on first use and kept for the next model.

    Token ids are kept as 4-byte arrays, not lists of Python ints (~36 bytes a token), so holding a
    whole stage's sequences between the policy and the reference pass stays small.

    Args:
        tokenizer_path: the tokenizer to encode with (loaded on first use).
        max_prompt_length: the length a prompt is cut to when it has to be (TRL's rule).
        max_length: prompt + longest response of a row; over it the row's prompt, then its responses, are cut.
    """

    def __init__(self, tokenizer_path: str, max_prompt_length: int | None, max_length: int | None) -> None:
        self.tokenizer_path = tokenizer_path
        self.max_prompt_length = max_prompt_length
        self.max_length = max_length
        self._tokenizer: Any = None
        self._shards: dict[int, list[tuple[array, int]]] = {}

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return self._tokenizer

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def get(self, index: int, chunk: list[Row], drop: bool) -> list[tuple[list[int], list[int]]]:
        """``(input_ids, labels)`` of every response of shard ``index`` (rows ``chunk``), row by row.

        ``drop``: forget the shard afterwards (its last use).
        """
        packed = self._shards.pop(index, None) if drop else self._shards.get(index)
        if packed is None:
            # A row's K responses share one prompt cut, as TRL cuts a pair (the released code judges the
            # row's two samples as one pair); with K = 2 that is exactly the cut training gives the pair.
            encoded = encode_sequences(
                self.tokenizer,
                [r["prompt"] for r in chunk for _ in r["responses"]],
                [resp for r in chunk for resp in r["responses"]],
                self.max_prompt_length,
                self.max_length,
                group_sizes=[len(r["responses"]) for r in chunk],
            )
            if not drop:
                # Labels are the ids with the prompt masked (join_prompt_response): its length suffices.
                self._shards[index] = [(array("i", ids), labels.count(-100)) for ids, labels in encoded]
            return encoded
        return [(ids.tolist(), [-100] * n + ids[n:].tolist()) for ids, n in packed]
