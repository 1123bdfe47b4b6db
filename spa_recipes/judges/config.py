"""The judges and the evaluators built on them: configs and registration (torch-free).

A judge labels an iteration's responses; an evaluator compares two models' responses after training. The same
implementation may serve both, but an evaluator gets no policy to judge with and no ``judge_train`` stage, so
where that changes what must be given its config is its own (``llm_judge`` needs a model, ``reward_model`` a
path), and ``spa-recipe validate`` says so before anything runs.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field, model_validator

from spa_recipes.api import POLICY_LOGPS, STATS, TRAIN_ON_SEED, ComponentConfig


class ImplicitJudgeConfig(ComponentConfig):
    """SPA's direct preference judgment: r = beta * (log pi_{i-1}(y|x) - log pi_ref(y|x))."""

    capabilities = frozenset({POLICY_LOGPS})

    reference: Literal["sft", "previous", "none"] = Field(
        "sft", description="judge reference: the SFT model (paper), the previous model, or none (Table 7)"
    )
    beta: float = Field(0.1, gt=0.0, description="scale of the implicit reward (the DPO temperature)")
    length_normalize: bool = Field(False, description="divide the log-ratio by the response length")
    batch_size: int = Field(16, gt=0, description="responses per scoring forward pass")
    previous_scores: bool = Field(
        False,
        description="also score with the model before the policy, against the same reference (one more "
        "scoring pass): rows get previous_scores and pairs the consistency of the two rankings (CREAM)",
    )


class NoJudgeConfig(ComponentConfig):
    """No judge: every response scores 0 and is valid (for selectors that do not use scores, e.g. SPIN's)."""


class PairRMJudgeConfig(ComponentConfig):
    """PairRM (llm-blender): a DeBERTa-v3 cross-encoder that compares two responses to one instruction."""

    capabilities = frozenset({STATS})

    path: str = Field("llm-blender/PairRM", description="hub id or folder of the PairRM checkpoint")
    backbone: str | None = Field(
        None, description="DeBERTa config (hub id or folder) for an llm-blender folder; None: the one it names"
    )
    max_source_length: int = Field(1224, gt=2, description="tokens kept of the instruction (PairRM: 1224)")
    max_candidate_length: int = Field(412, gt=2, description="tokens per response when the source is full (412)")
    swap_positions: bool = Field(True, description="ask each pair in both orders and average (cancels position bias)")
    batch_size: int = Field(8, gt=0, description="comparisons per forward pass")
    shard_size: int = Field(256, gt=0, description="rows per resumable shard on disk")


class RewardModelEvaluatorConfig(ComponentConfig):
    """A Bradley-Terry reward model (sequence classifier, one logit) scoring each response on its own."""

    capabilities = frozenset({STATS})

    path: str = Field(description="hub id or folder of the reward model")
    batch_size: int = Field(16, gt=0, description="conversations per forward pass")
    max_length: int | None = Field(
        None, gt=1, description="tokens kept per conversation (cut at the start); None: training.iteration.max_length"
    )
    shard_size: int = Field(256, gt=0, description="rows per resumable shard on disk")


class RewardModelJudgeConfig(RewardModelEvaluatorConfig):
    """A Bradley-Terry reward model as judge: given by path, or trained once on the seed pairs (judge_train)."""

    capabilities = frozenset({STATS, TRAIN_ON_SEED})

    path: str | None = Field(
        None, description="hub id or folder of the reward model; None: the one trained by the judge_train stage"
    )
    train_on_seed: bool = Field(False, description="train the reward model on the seed pairs first (judge_train)")
    train_epochs: int = Field(3, gt=0, description="judge_train: epochs over the seed pairs")
    train_learning_rate: float = Field(1e-4, gt=0.0, description="judge_train: AdamW learning rate")
    train_batch_size: int = Field(16, gt=0, description="judge_train: pairs per optimiser step")

    @model_validator(mode="after")
    def _path_or_training(self) -> RewardModelJudgeConfig:
        if self.path is not None and self.train_on_seed:
            raise ValueError("give either path (a trained reward model) or train_on_seed: true, not both")
        return self


DEFAULT_JUDGE_TEMPLATE = """Compare two responses to the same instruction and decide which one is better: \
more helpful, correct, relevant and clear. The order in which they are shown and their length do not matter.

[Instruction]
{instruction}

[Response A]
{response_a}

[Response B]
{response_b}

Which response is better? Answer with one letter: A or B."""


class LLMJudgeConfig(ComponentConfig):
    """A language model prompted as a pairwise judge (local HF model, vLLM engine, or an OpenAI-style endpoint)."""

    capabilities = frozenset({STATS})

    backend: Literal["hf", "vllm", "http"] = Field("hf", description="where the judge model runs")
    model: str | None = Field(
        None,
        description="hf/vllm: hub id or folder (None: the policy judges itself); http: the model name to request",
    )
    template: str = Field(
        DEFAULT_JUDGE_TEMPLATE, description="judge prompt with {instruction}, {response_a} and {response_b}"
    )
    label_a: str = Field("A", min_length=1, description="answer meaning the first response is better")
    label_b: str = Field("B", min_length=1, description="answer meaning the second response is better")
    swap_positions: bool = Field(True, description="ask each pair in both orders and average (cancels position bias)")
    shard_size: int = Field(256, gt=0, description="rows per resumable shard on disk")
    # hf and vllm
    batch_size: int = Field(8, gt=0, description="hf: judge prompts per forward pass")
    max_length: int | None = Field(
        None, gt=0, description="hf/vllm: judge prompts longer than this (tokens) are invalid; None: no limit"
    )
    tensor_parallel_size: int = Field(1, gt=0, description="vllm: GPUs per engine")
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0, description="vllm: share of GPU memory")
    # http
    base_url: str | None = Field(None, description="http: OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="http: environment variable holding the API key; None: no key")
    timeout: float = Field(60.0, gt=0.0, description="http: seconds per request")
    max_retries: int = Field(3, ge=0, description="http: retries after a timeout, 429 or 5xx")
    retry_backoff: float = Field(1.0, ge=0.0, description="http: first retry delay in seconds, doubled each retry")
    max_concurrency: int = Field(8, gt=0, description="http: requests in flight at once")
    max_tokens: int = Field(4, gt=0, description="http: tokens the answer may take")

    @model_validator(mode="after")
    def _consistent(self) -> LLMJudgeConfig:
        try:
            self.template.format(instruction="", response_a="", response_b="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"template must use only {{instruction}}, {{response_a}}, {{response_b}} (double other braces): {exc}"
            ) from exc
        for field in ("{instruction}", "{response_a}", "{response_b}"):
            if field not in self.template:
                raise ValueError(f"template lacks {field}")
        if self.label_a == self.label_b:
            raise ValueError(f"label_a and label_b are both {self.label_a!r}")
        if self.backend == "http" and (self.base_url is None or self.model is None):
            raise ValueError("backend 'http' needs base_url and model")
        if self.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError("backend 'vllm' needs the vllm package: pip install 'spa-recipes[vllm]'")
        return self


class LLMEvaluatorConfig(LLMJudgeConfig):
    """A language model prompted as a pairwise evaluator; there is no policy to fall back on, so model is required."""

    model: str = Field(description="hf/vllm: hub id or folder of the evaluator model; http: the model name to request")


def register(registry: Any) -> None:
    """Entry point (group ``spa_recipes.plugins``): the model-based judges and evaluators."""
    r = registry.register
    r(
        "judge",
        "implicit",
        config=ImplicitJudgeConfig,
        builder="spa_recipes.judges.implicit:ImplicitRewardJudge",
        help="SPA: DPO implicit reward against a reference model",
    )
    r(
        "judge",
        "none",
        config=NoJudgeConfig,
        builder="spa_recipes.judges.none:NoJudge",
        help="no judge: every response scores 0 (for selectors that do not use scores, e.g. SPIN's)",
    )
    pairrm, reward_model, llm = (
        "spa_recipes.judges.pairrm:PairRMJudge",
        "spa_recipes.judges.reward_model:RewardModelJudge",
        "spa_recipes.judges.llm_judge:LLMJudge",
    )
    r(
        "judge",
        "pairrm",
        config=PairRMJudgeConfig,
        builder=pairrm,
        help="PairRM pairwise ranker (DeBERTa-v3), both orders averaged",
    )
    r(
        "judge",
        "reward_model",
        config=RewardModelJudgeConfig,
        builder=reward_model,
        help="Bradley-Terry reward model (sequence classifier), given or trained on the seed pairs",
    )
    r(
        "judge",
        "llm_judge",
        config=LLMJudgeConfig,
        builder=llm,
        help="a language model asked 'A or B?' (hf, vllm or an OpenAI-compatible endpoint)",
    )
    r("evaluator", "pairrm", config=PairRMJudgeConfig, builder=pairrm, help="PairRM pairwise ranker (DeBERTa-v3)")
    r(
        "evaluator",
        "reward_model",
        config=RewardModelEvaluatorConfig,
        builder=reward_model,
        help="Bradley-Terry reward model (path required)",
    )
    r(
        "evaluator",
        "llm_judge",
        config=LLMEvaluatorConfig,
        builder=llm,
        help="a language model asked 'A or B?' (model required)",
    )
