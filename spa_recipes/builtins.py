"""The built-in components: each one's config model (the one source of its defaults) and its builder.

This module must not import torch or transformers: ``spa-recipe validate`` reads it. Builders are
named as ``"module:attribute"`` and imported only when a run builds them.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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

    num_prompts: int = Field(2000, gt=0, le=54810, description="distinct prompts the world offers for split")
    sft_demonstrations: int = Field(6000, ge=0, description="demonstrations for the sft stage")
    world_seed: int = Field(0, description="seed of the world itself (vocabulary, prompts, demonstrations)")


class PreferenceColumnsConfig(ComponentConfig):
    """Which columns of a preference dataset hold what (shared by ``preference_file`` and ``hub_preferences``).

    chosen/rejected may be strings (with the prompt in ``prompt_column``) or chat-message lists whose last message
    is the assistant's answer (UltraFeedback-binarized style); the messages before it, when there are any, are
    the prompt. Rows that cannot be read this way are passed on to the split, which counts and skips them.
    """

    prompt_column: str | None = Field(
        "prompt", description="prompt: a string (one user turn) or chat messages; null: the conversation in chosen"
    )
    chosen_column: str = Field("chosen", description="preferred response: a string, or messages ending in it")
    rejected_column: str = Field("rejected", description="dispreferred response: a string, or messages ending in it")
    id_column: str | None = Field(None, description="row id column; null: the row number")
    system_prompt: str | None = Field(
        None, description="system turn put before each prompt that has none ('': an empty one, as the paper's code)"
    )
    max_rows: int | None = Field(None, gt=0, description="read only the first rows (before the split's shuffle)")


class PreferenceFileConfig(PreferenceColumnsConfig):
    """Preference pairs from a local JSON, JSONL or Parquet file."""

    path: str = Field(
        description="the file; a relative path is looked up from the working directory, then under recipes/"
    )
    format: Literal["auto", "json", "jsonl", "parquet"] = Field("auto", description="auto: from the file extension")

    @field_validator("path")
    @classmethod
    def _exists(cls, path: str) -> str:
        from spa_recipes.data.files import find_data_file, not_found_message

        if find_data_file(path) is None:  # a missing file fails validation, before any model loads
            raise ValueError(not_found_message(path))
        return path


class HubPreferencesConfig(PreferenceColumnsConfig):
    """Preference pairs from ``datasets.load_dataset`` (a hub id, or a local dataset folder)."""

    path: str = Field(
        description="dataset id, e.g. argilla/ultrafeedback-binarized-preferences-cleaned; or a local copy: a dataset "
        "folder, or one .parquet/.jsonl/.json file read as the split"
    )
    subset: str | None = Field(None, description="dataset configuration name (load_dataset's `name`)")
    split: str = Field("train", description="dataset split, e.g. train or train_prefs")
    revision: str | None = Field(None, description="branch, tag or commit of the dataset repo; pin it to reproduce")
    data_files: str | list[str] | None = Field(None, description="load_dataset's data_files, when needed")


RuleName = Literal["done", "caps"]
RuleTask = Literal["add", "sub", "mul", "next", "reverse", "count"]


class RulePromptsConfig(ComponentConfig):
    """Templated questions with a formatting rule; the gold checks the rule (spa_recipes/rules/world.py)."""

    num_prompts: int = Field(600, gt=0, description="distinct prompts the source offers for split")
    rules: list[RuleName] = Field(
        default_factory=lambda: ["done", "caps"],
        min_length=1,
        description="done: end with the word DONE; caps: answer in capital letters",
    )
    tasks: list[RuleTask] = Field(
        default_factory=lambda: ["add", "sub", "mul", "next", "reverse", "count"],
        min_length=1,
        description="question kinds, each with an answer computed in code",
    )
    world_seed: int = Field(0, description="seed of the prompts themselves")


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

    @model_validator(mode="after")
    def _vllm_installed(self) -> VLLMGenerationConfig:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "the vllm generation backend needs the vllm package, which is not installed: "
                "pip install 'spa-recipes[vllm]' (or bash scripts/make_vllm_env.sh for the CPU build), "
                "or use generation: {name: hf}"
            )
        return self


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


class PairRMJudgeConfig(ComponentConfig):
    """PairRM (llm-blender): a DeBERTa-v3 cross-encoder that compares two responses to one instruction."""

    path: str = Field("llm-blender/PairRM", description="hub id or folder of the PairRM checkpoint")
    backbone: str | None = Field(
        None, description="DeBERTa config (hub id or folder) for an llm-blender folder; None: the one it names"
    )
    max_source_length: int = Field(1224, gt=2, description="tokens kept of the instruction (PairRM: 1224)")
    max_candidate_length: int = Field(412, gt=2, description="tokens per response when the source is full (412)")
    swap_positions: bool = Field(True, description="ask each pair in both orders and average (cancels position bias)")
    batch_size: int = Field(8, gt=0, description="comparisons per forward pass")
    shard_size: int = Field(256, gt=0, description="rows per resumable shard on disk")


class RewardModelJudgeConfig(ComponentConfig):
    """A Bradley-Terry reward model (sequence classifier, one logit) scoring each response on its own."""

    path: str | None = Field(
        None, description="hub id or folder of the reward model; None: the one trained by the judge_train stage"
    )
    batch_size: int = Field(16, gt=0, description="conversations per forward pass")
    max_length: int | None = Field(
        None, gt=1, description="tokens kept per conversation (cut at the start); None: training.iteration.max_length"
    )
    shard_size: int = Field(256, gt=0, description="rows per resumable shard on disk")
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
        if self.backend == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise ValueError("backend 'vllm' needs the vllm package: pip install 'spa-recipes[vllm]'")
        return self


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
    until_full: Literal["zero_threshold", "flag_nothing"] = Field(
        "zero_threshold",
        description="before the window fills: threshold 0, so negative margins are flagged (SPEC's reading of the "
        "released code), or flag nothing",
    )


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


class RuleGoldConfig(ComponentConfig):
    """Gold of rule prompts: 1 when the response follows the prompt's rule, plus a bonus when it is correct."""

    correctness_weight: float = Field(
        0.5, ge=0.0, lt=1.0, description="added for a correct answer (below 1: the rule always dominates)"
    )


class JsonlLoggerConfig(ComponentConfig):
    """One line per finished stage (its summary) in <run_dir>/metrics.jsonl; always on."""


def _needs_package(package: str, logger: str) -> None:
    """Selecting a logger whose package is missing fails when the recipe is validated, not after a stage."""
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise ValueError(f"logger '{logger}' needs the {package} package: pip install 'spa-recipes[tracking]'")


class TensorBoardLoggerConfig(ComponentConfig):
    """TensorBoard event files: stage summaries per iteration and each training stage's per-step metrics."""

    log_dir: str | None = Field(None, description="folder for the event files; None: <run_dir>/tensorboard")
    log_steps: bool = Field(True, description="also write each training stage's per-step metrics")

    @model_validator(mode="after")
    def _installed(self) -> TensorBoardLoggerConfig:
        _needs_package("tensorboard", "tensorboard")
        return self


class WandbLoggerConfig(ComponentConfig):
    """Weights & Biases: stage summaries per iteration and each training stage's per-step metrics."""

    project: str = Field("spa-recipes", min_length=1, description="W&B project")
    entity: str | None = Field(None, description="W&B team or user; None: the account's default")
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: files under <run_dir>/wandb, `wandb sync` them later"
    )
    name: str | None = Field(None, description="W&B run name; None: the run's name")
    tags: list[str] = Field(default_factory=list, description="W&B run tags")
    log_steps: bool = Field(True, description="also log each training stage's per-step metrics")

    @model_validator(mode="after")
    def _installed(self) -> WandbLoggerConfig:
        _needs_package("wandb", "wandb")
        return self


def register_builtins(registry: Registry) -> None:
    """Declare every built-in component."""
    r = registry.register
    r(
        "model",
        "tiny_llama",
        config=TinyLlamaConfig,
        builder="spa_recipes.toyworld.model:build_tiny_llama",
        help="small Llama from a config, random init",
    )
    r(
        "dataset",
        "toy_world",
        config=ToyWorldConfig,
        builder="spa_recipes.toyworld.world:ToyWorld",
        help="embedded synthetic world with a gold preference",
    )
    r(
        "dataset",
        "preference_file",
        config=PreferenceFileConfig,
        builder="spa_recipes.data.preferences:PreferenceFile",
        help="preference pairs from a local JSON/JSONL/Parquet file",
    )
    r(
        "dataset",
        "hub_preferences",
        config=HubPreferencesConfig,
        builder="spa_recipes.data.preferences:HubPreferences",
        help="preference pairs from datasets.load_dataset (hub id, split, revision)",
    )
    r(
        "dataset",
        "rule_prompts",
        config=RulePromptsConfig,
        builder="spa_recipes.rules.world:RulePrompts",
        help="templated questions with a formatting rule checked in code (gold)",
    )
    r(
        "generator",
        "hf",
        config=HFGenerationConfig,
        builder="spa_recipes.generation.hf:HFGenerator",
        help="transformers generate(), batched across prompts",
    )
    r(
        "generator",
        "vllm",
        config=VLLMGenerationConfig,
        builder="spa_recipes.generation.vllm:VLLMGenerator",
        help="vLLM engine (optional extra: pip install spa-recipes[vllm])",
    )
    r(
        "judge",
        "implicit",
        config=ImplicitJudgeConfig,
        builder="spa_recipes.judges.implicit:ImplicitRewardJudge",
        help="SPA: DPO implicit reward against a reference model",
    )
    r(
        "judge",
        "gold",
        config=GoldJudgeConfig,
        builder="spa_recipes.toyworld.gold:GoldJudge",
        help="toy world's gold preference (an oracle, for controls)",
    )
    r(
        "judge",
        "pairrm",
        config=PairRMJudgeConfig,
        builder="spa_recipes.judges.pairrm:PairRMJudge",
        help="PairRM pairwise ranker (DeBERTa-v3), both orders averaged",
    )
    r(
        "judge",
        "reward_model",
        config=RewardModelJudgeConfig,
        builder="spa_recipes.judges.reward_model:RewardModelJudge",
        help="Bradley-Terry reward model (sequence classifier), given or trained on the seed pairs",
    )
    r(
        "judge",
        "llm_judge",
        config=LLMJudgeConfig,
        builder="spa_recipes.judges.llm_judge:LLMJudge",
        help="a language model asked 'A or B?' (hf, vllm or an OpenAI-compatible endpoint)",
    )
    r(
        "judge",
        "rule_gold",
        config=RuleGoldConfig,
        builder="spa_recipes.rules.world:RuleGoldJudge",
        help="rule prompts' gold: rule followed, then correctness (an oracle, for controls)",
    )
    r(
        "pair_selector",
        "min_max",
        config=PairSelectorConfig,
        builder="spa_recipes.pairs:MinMaxSelector",
        help="chosen = highest score, rejected = lowest",
    )
    r(
        "pair_selector",
        "max_random",
        config=PairSelectorConfig,
        builder="spa_recipes.pairs:MaxRandomSelector",
        help="chosen = highest score, rejected = a random other response",
    )
    r(
        "noise_detector",
        "none",
        config=NoneDetectorConfig,
        builder="spa_recipes.noise:NoNoiseDetector",
        help="flags nothing",
    )
    r(
        "noise_detector",
        "rolling_quantile",
        config=RollingQuantileConfig,
        builder="spa_recipes.noise:RollingQuantileDetector",
        help="released code: window of the last 50 margins",
    )
    r(
        "noise_detector",
        "batch_quantile",
        config=BatchQuantileConfig,
        builder="spa_recipes.noise:BatchQuantileDetector",
        help="paper: bottom K% of each global batch",
    )
    r(
        "refiner",
        "none",
        config=NoRefinerConfig,
        builder="spa_recipes.refiners:NoRefiner",
        help="flagged pairs keep their labels",
    )
    r(
        "refiner",
        "label_smoothing",
        config=LabelSmoothingConfig,
        builder="spa_recipes.refiners:LabelSmoothingRefiner",
        help="SPA self-refinement: smooth flagged labels by alpha",
    )
    r(
        "refiner",
        "drop",
        config=DropRefinerConfig,
        builder="spa_recipes.refiners:DropRefiner",
        help="flagged pairs get zero weight",
    )
    r("loss", "dpo", config=DPOLossConfig, builder="spa_recipes.loss:DPOLoss", help="sigmoid DPO")
    r(
        "evaluator",
        "gold",
        config=GoldEvaluatorConfig,
        builder="spa_recipes.toyworld.gold:GoldJudge",
        help="toy world's gold preference",
    )
    r(
        "evaluator",
        "pairrm",
        config=PairRMJudgeConfig,
        builder="spa_recipes.judges.pairrm:PairRMJudge",
        help="PairRM pairwise ranker (DeBERTa-v3)",
    )
    r(
        "evaluator",
        "reward_model",
        config=RewardModelJudgeConfig,
        builder="spa_recipes.judges.reward_model:RewardModelJudge",
        help="Bradley-Terry reward model (path required)",
    )
    r(
        "evaluator",
        "llm_judge",
        config=LLMJudgeConfig,
        builder="spa_recipes.judges.llm_judge:LLMJudge",
        help="a language model asked 'A or B?'",
    )
    r(
        "evaluator",
        "rule_gold",
        config=RuleGoldConfig,
        builder="spa_recipes.rules.world:RuleGoldJudge",
        help="rule prompts' gold: rule followed, then correctness",
    )
    r(
        "logger",
        "jsonl",
        config=JsonlLoggerConfig,
        builder="spa_recipes.loggers:JsonlLogger",
        help="metrics.jsonl per stage",
    )
    r(
        "logger",
        "tensorboard",
        config=TensorBoardLoggerConfig,
        builder="spa_recipes.loggers:TensorBoardLogger",
        help="TensorBoard event files (optional extra: pip install spa-recipes[tracking])",
    )
    r(
        "logger",
        "wandb",
        config=WandbLoggerConfig,
        builder="spa_recipes.loggers:WandbLogger",
        help="Weights & Biases, offline by default (optional extra: pip install spa-recipes[tracking])",
    )
