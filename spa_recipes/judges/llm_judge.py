"""A language model prompted as a pairwise judge: "which response is better, A or B?".

The judge prompt is ``cfg.template`` filled with the instruction (the prompt's text, see
:func:`spa_recipes.judges.pairwise.instruction_text`) and the two responses, sent as one user turn. Three
backends read the answer:

- ``hf``: a local causal LM (``transformers``). The prompt is rendered with the model's chat template and
  generation prompt, BOS once (:func:`spa_recipes.sequences.encode_prompt`);
  ``p(A) = sigmoid(logit[a] - logit[b])`` where ``a``, ``b`` are the first tokens of ``label_a`` and
  ``label_b`` at the next position. No text is generated or parsed.
- ``vllm``: the same quantity from a vLLM engine (built on first use; vllm is an optional extra). Each
  comparison is sent twice, ending in ``a`` and in ``b``, with ``prompt_logprobs=0``; the log-probs of
  those last prompt tokens give ``p(A)``. Prompt log-probs are always returned for the prompt's own tokens,
  so no label can fall outside a top-k list.
- ``http``: an OpenAI-compatible ``/chat/completions`` endpoint (temperature 0). The answer must be exactly
  ``label_a`` or ``label_b`` once surrounding whitespace is stripped (``p(A)`` = 1 or 0); anything else is
  an invalid judgement. Timeouts, 429 and 5xx are retried with exponential backoff; 401/403/404 stop the run
  (they would fail every request); other failures make that comparison invalid. Requests run in a thread
  pool of ``max_concurrency``.

With ``swap_positions`` each pair is asked in both orders and averaged (:mod:`spa_recipes.judges.pairwise`).
"""

from __future__ import annotations

import gc
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException
from pathlib import Path
from typing import Any

import torch

from spa_recipes.api import EvaluatorContext, JudgeContext
from spa_recipes.distributed import default_device
from spa_recipes.errors import UserError
from spa_recipes.judges.base import Row, judge_in_shards
from spa_recipes.judges.config import LLMJudgeConfig
from spa_recipes.judges.pairwise import Messages, instruction_text, judge_pairwise, pairwise_stats
from spa_recipes.modeling import load_model, load_tokenizer
from spa_recipes.sequences import collate, encode_prompt

STOP_STATUSES = {401, 403, 404}  # wrong key, no access, wrong URL or model: every request would fail


def judge_messages(template: str, prompt: Messages, first: str, second: str) -> Messages:
    """The judge prompt for one comparison, as a single user turn."""
    text = template.format(instruction=instruction_text(prompt), response_a=first, response_b=second)
    return [{"role": "user", "content": text}]


def label_token_ids(tokenizer: Any, label_a: str, label_b: str) -> tuple[int, int]:
    """The first token of each label.

    Raises:
        UserError: a label has no tokens, is unknown to the tokenizer, or both start with the same token.
    """
    ids = []
    for label in (label_a, label_b):
        tokens = tokenizer(label, add_special_tokens=False)["input_ids"]
        if not tokens or tokens[0] == tokenizer.unk_token_id:
            raise UserError(f"llm_judge: label {label!r} is not a token of the judge's tokenizer")
        ids.append(tokens[0])
    if ids[0] == ids[1]:
        raise UserError(f"llm_judge: labels {label_a!r} and {label_b!r} start with the same token")
    return ids[0], ids[1]


class HFBackend:
    """``p(first is better)`` from a local causal LM's next-token logits of the two labels."""

    def __init__(self, cfg: LLMJudgeConfig, model_path: str, dtype: str, device: str) -> None:
        self.cfg, self.model_path, self.dtype, self.device = cfg, model_path, dtype, device
        self.model: Any = None
        self.tokenizer: Any = None

    def probabilities(self, conversations: list[Messages]) -> list[float | None]:
        if self.model is None:
            self.tokenizer = load_tokenizer(self.model_path)
            self.labels = label_token_ids(self.tokenizer, self.cfg.label_a, self.cfg.label_b)
            self.model = load_model(self.model_path, dtype=self.dtype, device=self.device)
        encoded = [encode_prompt(self.tokenizer, c) for c in conversations]
        keep = [i for i, ids in enumerate(encoded) if self.cfg.max_length is None or len(ids) <= self.cfg.max_length]
        probs: list[float | None] = [None] * len(encoded)  # an overlong prompt is not judged
        for start in range(0, len(keep), self.cfg.batch_size):
            index = keep[start : start + self.cfg.batch_size]
            batch = collate([(encoded[i], encoded[i]) for i in index], self.tokenizer.pad_token_id)
            with torch.no_grad():
                logits = self.model(
                    input_ids=batch["input_ids"].to(self.device),
                    attention_mask=batch["attention_mask"].to(self.device),
                ).logits
            last = batch["attention_mask"].sum(-1) - 1  # right padding: the last real position
            rows = torch.arange(len(index))
            next_token = logits[rows, last.to(logits.device)].float().cpu()
            margin = next_token[:, self.labels[0]] - next_token[:, self.labels[1]]
            for i, p in zip(index, torch.sigmoid(margin).tolist(), strict=True):
                probs[i] = p if math.isfinite(p) else None
        return probs

    def close(self) -> None:
        self.model = None


class VLLMBackend:
    """The ``hf`` backend's quantity from a vLLM engine, through the prompt log-probs of the two labels."""

    def __init__(self, cfg: LLMJudgeConfig, model_path: str, dtype: str, device: str) -> None:
        self.cfg, self.model_path, self.dtype = cfg, model_path, dtype
        self.engine: Any = None
        self.tokenizer: Any = None

    def _start(self) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise UserError("llm_judge backend 'vllm' needs vllm: pip install 'spa-recipes[vllm]'") from exc
        # The HF tokenizer makes the prompt ids, so hf and vllm judge exactly the same tokens.
        self.tokenizer = load_tokenizer(self.model_path)
        self.labels = label_token_ids(self.tokenizer, self.cfg.label_a, self.cfg.label_b)
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "tokenizer": self.model_path,
            "tensor_parallel_size": self.cfg.tensor_parallel_size,
            "gpu_memory_utilization": self.cfg.gpu_memory_utilization,
            "dtype": "auto" if self.dtype == "auto" else self.dtype,
            "seed": 0,
        }
        if self.cfg.max_length is not None:
            kwargs["max_model_len"] = self.cfg.max_length + 1  # the prompt plus the label token
        self.engine = LLM(**kwargs)
        # One new token is the least vLLM generates; only the prompt log-probs are read.
        self.params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)

    def probabilities(self, conversations: list[Messages]) -> list[float | None]:
        if self.engine is None:
            self._start()
        encoded = [encode_prompt(self.tokenizer, c) for c in conversations]
        keep = [i for i, ids in enumerate(encoded) if self.cfg.max_length is None or len(ids) <= self.cfg.max_length]
        requests = [{"prompt_token_ids": encoded[i] + [label]} for i in keep for label in self.labels]
        outputs = self.engine.generate(requests, self.params, use_tqdm=False)
        probs: list[float | None] = [None] * len(encoded)
        for n, i in enumerate(keep):
            lp_a = self._last_logprob(outputs[2 * n], self.labels[0])
            lp_b = self._last_logprob(outputs[2 * n + 1], self.labels[1])
            if lp_a is not None and lp_b is not None:
                margin = lp_a - lp_b  # same context, so the normaliser cancels: a logit difference
                probs[i] = 1.0 / (1.0 + math.exp(-margin)) if math.isfinite(margin) else None
        return probs

    @staticmethod
    def _last_logprob(output: Any, token: int) -> float | None:
        entry = (output.prompt_logprobs or [None])[-1]
        if not entry or token not in entry:
            return None
        value = entry[token].logprob
        return value if math.isfinite(value) else None

    def close(self) -> None:
        self.engine = None


class HTTPBackend:
    """``p(first is better)`` = 1 or 0 from an OpenAI-compatible chat endpoint's strict "A"/"B" answer."""

    def __init__(self, cfg: LLMJudgeConfig) -> None:
        self.cfg = cfg
        self.url = f"{cfg.base_url.rstrip('/')}/chat/completions"  # type: ignore[union-attr]
        self.headers = {"Content-Type": "application/json"}
        if cfg.api_key_env is not None:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise UserError(f"llm_judge: environment variable {cfg.api_key_env} (api_key_env) is not set")
            self.headers["Authorization"] = f"Bearer {key}"
        self.counts = {"requests": 0, "retries": 0, "failed_requests": 0, "unparsable_answers": 0}
        self._lock = threading.Lock()

    def probabilities(self, conversations: list[Messages]) -> list[float | None]:
        with ThreadPoolExecutor(max_workers=self.cfg.max_concurrency) as pool:
            return list(pool.map(self._ask, conversations))

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _ask(self, messages: Messages) -> float | None:
        body = json.dumps(
            {"model": self.cfg.model, "messages": messages, "temperature": 0, "max_tokens": self.cfg.max_tokens}
        ).encode()
        self._count("requests")
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self._count("retries")
                time.sleep(self.cfg.retry_backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.cfg.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as exc:
                if exc.code in STOP_STATUSES:
                    raise UserError(f"llm_judge: {self.url} answered HTTP {exc.code} ({exc.reason})") from exc
                if exc.code == 429 or exc.code >= 500:
                    continue
                break  # another 4xx: this request cannot be judged
            except (urllib.error.URLError, HTTPException, OSError):  # timeouts, refused or reset connections
                continue
            return self._parse(raw)
        self._count("failed_requests")
        return None

    def _parse(self, raw: bytes) -> float | None:
        try:
            answer = json.loads(raw)["choices"][0]["message"]["content"].strip()
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            answer = None
        if answer == self.cfg.label_a:
            return 1.0
        if answer == self.cfg.label_b:
            return 0.0
        self._count("unparsable_answers")
        return None

    def close(self) -> None:
        pass


class LLMJudge:
    """The judge contract with a language model as pairwise judge (see the module docstring).

    Args:
        cfg: the judge's (or the evaluator's) config.
        ctx: the judge or evaluator context; read here: ``policy_path`` (a judge context's model being judged
            with; it judges itself when ``cfg.model`` is None, hf/vllm), ``dtype`` (model dtype name, hf/vllm)
            and ``device`` (where the hf backend runs; CUDA when available, else CPU).

    Raises:
        UserError: hf/vllm with no model and no policy; http with an unset ``api_key_env``.
    """

    def __init__(self, cfg: LLMJudgeConfig, ctx: JudgeContext | EvaluatorContext = JudgeContext()) -> None:
        self.cfg = cfg
        self.stats: dict[str, Any] = {}
        if cfg.backend == "http":
            self.backend: HFBackend | VLLMBackend | HTTPBackend = HTTPBackend(cfg)
            return
        model_path = cfg.model or (ctx.policy_path if isinstance(ctx, JudgeContext) else None)
        if model_path is None:
            raise UserError(f"llm_judge backend {cfg.backend!r}: set model (no policy to judge with here)")
        device = ctx.device or default_device()
        backend = HFBackend if cfg.backend == "hf" else VLLMBackend
        self.backend = backend(cfg, str(model_path), ctx.dtype, device)

    def score(self, rows: list[Row], out_dir: Path | None = None) -> list[Row]:
        """Judge every row (the contract of :class:`spa_recipes.judges.base.Judge`).

        Args:
            rows: generated rows (``"id"``, ``"prompt"``, ``"responses"``).
            out_dir: when given, judgements are kept in resumable shards there.

        Returns:
            The rows in order with ``"scores"``, ``"valid"``, ``"pair_probs"`` (and ``"order_disagreement"``).
        """

        def judge_rows(chunk: list[Row]) -> list[Row]:
            return judge_pairwise(chunk, self.compare, swap_positions=self.cfg.swap_positions)

        try:
            out = judge_in_shards(rows, judge_rows, out_dir, self.cfg.shard_size, f"judge llm ({self.cfg.backend})")
        finally:
            self.backend.close()
            gc.collect()
        self.stats = pairwise_stats(out)
        if isinstance(self.backend, HTTPBackend):
            self.stats.update({f"http_{k}": v for k, v in self.backend.counts.items()})
        return out

    def compare(self, prompts: list[Messages], firsts: list[str], seconds: list[str]) -> list[float | None]:
        """Probability that each first response is better than its second (``None``: not judged)."""
        conversations = [
            judge_messages(self.cfg.template, p, a, b) for p, a, b in zip(prompts, firsts, seconds, strict=True)
        ]
        return self.backend.probabilities(conversations)
