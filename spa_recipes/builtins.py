"""The built-in components: each one's config model (the one source of its defaults) and its builder.

This module must not import torch or transformers: ``spa-recipe validate`` reads it. Builders are
named as ``"module:attribute"`` and imported only when a run builds them.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spa_recipes.registry import Registry


class ComponentConfig(BaseModel):
    """Base of component configs: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)


# Models ---------------------------------------------------------------------------------------------


class TinyLlamaConfig(ComponentConfig):
    """A small Llama built from a config (random init) with the data source's tokenizer."""

    hidden_size: int = Field(64, gt=0, description="width of the residual stream")
    num_layers: int = Field(2, gt=0, description="transformer blocks")
    num_heads: int = Field(4, gt=0, description="attention heads (hidden_size must divide)")
    intermediate_size: int = Field(172, gt=0, description="MLP width")
    max_position_embeddings: int = Field(128, gt=0, description="longest sequence the model takes")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyLlamaConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        return self


# Datasets -------------------------------------------------------------------------------------------


class ToyWorldConfig(ComponentConfig):
    """The embedded synthetic world: prompts, demonstrations, human-like seed pairs and a gold preference."""

    provides_demonstrations: ClassVar[bool] = True

    num_prompts: int = Field(2000, gt=0, description="distinct prompts the world offers for split")
    sft_demonstrations: int = Field(6000, ge=0, description="demonstrations for the sft stage")
    world_seed: int = Field(0, description="seed of the world itself (vocabulary, prompts, demonstrations)")


class PreferenceFileConfig(ComponentConfig):
    """Preference pairs from a local JSON/JSONL/Parquet file."""

    path: str = Field(description="file with prompt/chosen/rejected rows")
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    id_column: str | None = Field(None, description="row id column; the row number when absent")


# Generation -----------------------------------------------------------------------------------------


class GenerationConfig(ComponentConfig):
    """Sampling settings shared by every generation backend."""

    samples_per_prompt: int = Field(2, ge=2, description="K responses per prompt")
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(300, gt=0)
    shard_size: int = Field(256, gt=0, description="prompts per shard on disk; a cut-off run resumes by shard")


class HFGenerationConfig(GenerationConfig):
    batch_size: int = Field(16, gt=0, description="prompts per generate() call")


class VLLMGenerationConfig(GenerationConfig):
    tensor_parallel_size: int = Field(1, gt=0)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    kv_cache_memory_bytes: int | None = Field(None, description="set on CPU engines (e.g. 1073741824)")
    enforce_eager: bool = False
    max_num_batched_tokens: int | None = None


# Judges ---------------------------------------------------------------------------------------------


class ImplicitJudgeConfig(ComponentConfig):
    """SPA's direct preference judgment: r = beta * (log pi_{i-1}(y|x) - log pi_ref(y|x))."""

    reference: Literal["sft", "previous", "none"] = Field(
        "sft", description="judge reference: the SFT model (paper), the previous model, or none (Table 7)"
    )
    beta: float = Field(0.1, gt=0.0)
    length_normalize: bool = Field(False, description="divide the log-ratio by the response length")
    batch_size: int = Field(16, gt=0, description="responses per scoring forward pass")


class GoldJudgeConfig(ComponentConfig):
    """The toy world's gold preference (only for labelling the seed set and for evaluation)."""


# Pair selection -------------------------------------------------------------------------------------


class PairSelectorConfig(ComponentConfig):
    ties: Literal["keep", "drop"] = Field("keep", description="pairs whose scores are equal")
    drop_identical: bool = Field(True, description="drop pairs whose two responses are the same text")


# Noise detection ------------------------------------------------------------------------------------


class NoneDetectorConfig(ComponentConfig):
    """No pair is ever flagged."""


class QuantileDetectorConfig(ComponentConfig):
    k: float = Field(0.10, gt=0.0, lt=1.0, description="fraction of least-confident pairs to flag")
    confidence: Literal["policy", "extrapolated"] = Field(
        "extrapolated", description="margin source: the policy (coupled) or the DND extrapolation"
    )
    lambda_: float | list[float] = Field(
        0.0,
        alias="lambda",
        description="DND extrapolation strength, one value or one per iteration (paper: 0.5, 0.25, 0.125)",
    )


class RollingQuantileConfig(QuantileDetectorConfig):
    """The released code's rule: a per-process window of the last margins."""

    window: int = Field(50, gt=1, description="margins kept per process")


class BatchQuantileConfig(QuantileDetectorConfig):
    """The paper's reading: the bottom K% of each global batch, gathered across processes."""


# Refiners -------------------------------------------------------------------------------------------


class NoRefinerConfig(ComponentConfig):
    """Flagged pairs are trained on as labelled."""


class LabelSmoothingConfig(ComponentConfig):
    alpha: float = Field(0.1, ge=0.0, le=0.5, description="label smoothing of flagged pairs")
    warmup_fraction: float = Field(0.2, ge=0.0, le=1.0, description="share of steps with no refinement")


class DropRefinerConfig(ComponentConfig):
    warmup_fraction: float = Field(0.2, ge=0.0, le=1.0, description="share of steps with no refinement")


# Losses ---------------------------------------------------------------------------------------------


class DPOLossConfig(ComponentConfig):
    beta: float = Field(0.1, gt=0.0, description="DPO temperature")


# Evaluators and loggers -----------------------------------------------------------------------------


class GoldEvaluatorConfig(ComponentConfig):
    """Compares two responses with the toy world's gold preference."""


class JsonlLoggerConfig(ComponentConfig):
    """Per-step metrics appended to metrics.jsonl in the stage folder (always on)."""


def register_builtins(registry: Registry) -> None:
    """Declare every built-in component."""
    r = registry.register
    r("model", "tiny_llama", config=TinyLlamaConfig, builder="spa_recipes.toyworld.model:build_tiny_llama",
      help="small Llama from a config, random init")
    r("dataset", "toy_world", config=ToyWorldConfig, builder="spa_recipes.toyworld.world:ToyWorld",
      help="embedded synthetic world with a gold preference")
    r("generator", "hf", config=HFGenerationConfig, builder="spa_recipes.generation.hf:HFGenerator",
      help="transformers generate(), batched across prompts")
    r("generator", "vllm", config=VLLMGenerationConfig, builder="spa_recipes.generation.vllm:VLLMGenerator",
      help="vLLM engine (optional extra: pip install spa-recipes[vllm])")
    r("judge", "implicit", config=ImplicitJudgeConfig, builder="spa_recipes.judges.implicit:ImplicitRewardJudge",
      help="SPA: DPO implicit reward against a reference model")
    r("judge", "gold", config=GoldJudgeConfig, builder="spa_recipes.toyworld.gold:GoldJudge",
      help="toy world's gold preference (an oracle, for controls)")
    r("pair_selector", "min_max", config=PairSelectorConfig, builder="spa_recipes.pairs:MinMaxSelector",
      help="chosen = highest score, rejected = lowest")
    r("pair_selector", "max_random", config=PairSelectorConfig, builder="spa_recipes.pairs:MaxRandomSelector",
      help="chosen = highest score, rejected = a random other response")
    r("noise_detector", "none", config=NoneDetectorConfig, builder="spa_recipes.noise:NoNoiseDetector",
      help="flags nothing")
    r("noise_detector", "rolling_quantile", config=RollingQuantileConfig,
      builder="spa_recipes.noise:RollingQuantileDetector", help="released code: window of the last 50 margins")
    r("noise_detector", "batch_quantile", config=BatchQuantileConfig,
      builder="spa_recipes.noise:BatchQuantileDetector", help="paper: bottom K% of each global batch")
    r("refiner", "none", config=NoRefinerConfig, builder="spa_recipes.refiners:NoRefiner",
      help="flagged pairs keep their labels")
    r("refiner", "label_smoothing", config=LabelSmoothingConfig, builder="spa_recipes.refiners:LabelSmoothingRefiner",
      help="SPA self-refinement: smooth flagged labels by alpha")
    r("refiner", "drop", config=DropRefinerConfig, builder="spa_recipes.refiners:DropRefiner",
      help="flagged pairs get zero weight")
    r("loss", "dpo", config=DPOLossConfig, builder="spa_recipes.loss:DPOLoss", help="sigmoid DPO")
    r("evaluator", "gold", config=GoldEvaluatorConfig, builder="spa_recipes.toyworld.gold:GoldJudge",
      help="toy world's gold preference")
    r("logger", "jsonl", config=JsonlLoggerConfig, builder="spa_recipes.loggers:JsonlLogger",
      help="metrics.jsonl per stage")
