"""The recipe schema: every section, every key, every default.

A recipe is validated in two passes. Pydantic checks the sections (``extra="forbid"`` everywhere);
then each component section (``{name: ..., **args}``) is looked up in the registry and its arguments
are validated against that component's own config model. All problems of both passes are reported at
once, each naming its dotted key. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from spa_recipes.adapters_config import LoraAdapterConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)


class ComponentSpec(BaseModel):
    """A component section: ``name`` selects the registered component, the other keys are its arguments.

    After validation ``args`` holds the component's validated config model (with every default).
    """

    model_config = ConfigDict(extra="allow")

    name: str = Field(description="registered component name (see `spa-recipe ls`)")
    _args: Any = PrivateAttr(default=None)

    @property
    def args(self) -> Any:
        """The validated config model of the selected component (set by :func:`spa_recipes.recipe.load_recipe`)."""
        if self._args is None:
            raise RuntimeError(f"component '{self.name}' was not resolved against the registry")
        return self._args

    def raw_args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def component(name: str, description: str, **defaults: Any) -> Any:
    """A component section's field: its default component (and arguments) and its help text."""
    return Field(default_factory=lambda: ComponentSpec(name=name, **defaults), description=description)


class RunSection(Section):
    """Where the run lives and its seed."""

    name: str = Field(description="run name; the run directory is <output_dir>/<name>")
    output_dir: str = Field("runs", description="parent folder of run directories")
    seed: int = Field(42, description="seed of the split, sampling and training")
    keep_checkpoints: bool = Field(
        False,
        description="keep each stage's resume state (training checkpoints, generation and judging shards) once the "
        "stage has finished; by default it is removed then (a 7B model's checkpoint with AdamW state is ~112 GB)",
    )


class ModelsSection(Section):
    """The models: pi_init, the model an sft stage starts from, and the precision."""

    sft: str | None = Field(
        None,
        description="pi_init: hub id or local folder of the SFT model (judge reference and start of seed "
        "DPO). Leave empty when an `sft` stage makes it from `base`.",
    )
    base: ComponentSpec | None = Field(None, description="model the `sft` stage fine-tunes (kind: model)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="precision of the run (auto: bfloat16 on a GPU that has it, float32 on CPU). Frozen models "
        "(DPO reference, judges, generation) load in it and trained models are saved in it; with a 16-bit dtype "
        "a model in training keeps float32 master weights and AdamW state (16 bytes a parameter) and computes "
        "its forward and backward in the 16-bit type (mixed precision)",
    )
    adapter: LoraAdapterConfig | None = Field(
        None,
        description="train seed DPO and each iteration through a fresh LoRA adapter on the stage's starting model "
        "(frozen, in dtype; the DPO reference is it with the adapter disabled); null: full fine-tuning",
    )

    @field_validator("sft")
    @classmethod
    def _local_folder_exists(cls, value: str | None) -> str | None:
        """A name that can only be a local folder must exist now, not when the first model loads."""
        if value is None:
            return value
        local = value.startswith(("/", "./", "../", "~")) or value.count("/") > 1  # hub ids are org/name
        if local and not Path(value).expanduser().exists():
            raise ValueError(f"no such folder: {value} (hub ids look like org/name)")
        return value


class SplitSection(Section):
    """How the data is split: a labelled seed set, prompt-only sets per iteration, an evaluation hold-out."""

    seed_size: int | float = Field(
        0.033, gt=0, description="labelled seed set: a fraction of the rows (< 1) or a count of pairs (>= 1)"
    )
    prompts_per_iteration: int | float | list[int | float] = Field(
        description="prompt-only set of each iteration: counts, or fractions of the rows; one value or one "
        "per iteration"
    )
    eval_holdout: int | float = Field(200, ge=0, description="evaluation prompts held out (count or fraction)")
    long_prompts: Literal["skip", "keep"] = Field(
        "skip",
        description="rows whose prompt is longer than training.iteration.max_prompt_length tokens (pi_init's "
        "tokenizer, chat template applied): skip them (counted in split/stats.json), or keep them with the prompt "
        "cut to its end as the released code does",
    )


class TrainingSection(Section):
    """Optimiser and batching for one training stage."""

    epochs: float = Field(1.0, gt=0, description="passes over the stage's data (a fraction stops part-way)")
    learning_rate: float = Field(5e-7, gt=0, description="peak AdamW learning rate")
    lr_scheduler: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="learning-rate decay after the warm-up"
    )
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="share of optimiser steps of linear warm-up")
    batch_size: int = Field(8, gt=0, description="pairs (or sequences) per device per micro-batch")
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="micro-batches per optimiser step (optimiser batch: batch_size x this x processes)"
    )
    group_by_length: bool = Field(
        False,
        description="batch examples of similar length together (packed rows fill better); the batches are "
        "still drawn in random order",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="keep only each layer's input in the forward and recompute the rest in the backward: "
        "activation memory of about one layer instead of all, for about a third more compute",
    )
    max_grad_norm: float | None = Field(1.0, description="gradient clipping; null turns it off")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    max_length: int = Field(
        2048,
        gt=0,
        description="prompt + response tokens; when a prompt and its longest response exceed it, the prompt is cut "
        "to max_prompt_length, then the responses to max_length - max_prompt_length (a cut response loses its EOS), "
        "as TRL 0.7 does",
    )
    max_prompt_length: int = Field(
        1024,
        gt=0,
        description="prompt tokens kept (its end, BOS in front) when prompt + response exceed max_length; "
        "generation cuts any longer prompt to it",
    )
    checkpoint_every: int = Field(0, ge=0, description="optimiser steps between checkpoints; 0: none")
    keep_checkpoints: int = Field(2, gt=0, description="newest complete checkpoints kept")
    nonfinite: Literal["fail", "skip_step"] = Field(
        "fail", description="a NaN/inf loss or gradient: stop with an error, or skip the step and count it"
    )

    @model_validator(mode="after")
    def _prompt_fits(self) -> TrainingSection:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        return self


class TrainingStages(Section):
    """The training of each stage kind."""

    sft: TrainingSection | None = Field(
        None, description="supervised warm-up that makes pi_init from models.base; null: no sft stage"
    )
    seed: TrainingSection | None = Field(
        default_factory=lambda: TrainingSection(epochs=3.0),
        description="seed DPO on the labelled seed set; null: start the iterations from pi_init",
    )
    iteration: TrainingSection = Field(default_factory=TrainingSection, description="each SPA iteration")


class EvaluationSection(Section):
    """Head-to-head evaluation of every model against the baseline on the hold-out prompts."""

    evaluator: ComponentSpec | None = Field(None, description="pairwise evaluator (kind: evaluator); null: none")
    baseline: Literal["sft"] = Field("sft", description="model every other model is compared with")
    samples_per_prompt: int = Field(1, gt=0, description="responses per hold-out prompt and model")
    temperature: float = Field(0.7, ge=0.0, description="sampling temperature of the evaluation's responses")
    max_new_tokens: int | None = Field(None, description="tokens per response; default: generation.max_new_tokens")


class LoggingSection(Section):
    """Where stage summaries and training curves go."""

    loggers: list[ComponentSpec] = Field(
        default_factory=lambda: [ComponentSpec(name="jsonl")], description="kind: logger"
    )


class Recipe(Section):
    """A whole SPA experiment."""

    run: RunSection
    models: ModelsSection = Field(default_factory=ModelsSection)
    data: ComponentSpec = Field(description="preference data source (kind: dataset)")
    split: SplitSection
    generation: ComponentSpec = component("hf", "sampling of K responses per prompt (kind: generator)")
    judge: ComponentSpec = component("implicit", "scores each iteration's responses (kind: judge)")
    score_transform: ComponentSpec = component(
        "none", "judge scores -> the scores pairs are chosen by, e.g. length-regularised (kind: score_transform)"
    )
    pair_selector: ComponentSpec = component("min_max", "judged responses -> chosen/rejected (kind: pair_selector)")
    data_mixer: ComponentSpec = component(
        "none", "an iteration's pairs + replayed pairs -> its training pairs (kind: data_mixer)"
    )
    noise_detector: ComponentSpec = component("none", "flags pairs that look mislabelled (kind: noise_detector)")
    refiner: ComponentSpec = component("none", "what happens to flagged pairs (kind: refiner)")
    loss: ComponentSpec = component("dpo", "the preference loss (kind: loss)")
    training: TrainingStages = Field(default_factory=TrainingStages)
    iterations: int = Field(3, ge=0, description="SPA iterations T (paper 3, released script 2)")
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)


# Which component kind each component section takes. One place for the mapping.
COMPONENT_SECTIONS: dict[str, str] = {
    "models.base": "model",
    "data": "dataset",
    "generation": "generator",
    "judge": "judge",
    "score_transform": "score_transform",
    "pair_selector": "pair_selector",
    "data_mixer": "data_mixer",
    "noise_detector": "noise_detector",
    "refiner": "refiner",
    "loss": "loss",
    "evaluation.evaluator": "evaluator",
    "logging.loggers": "logger",
}
