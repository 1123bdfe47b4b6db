"""The component API: everything a component (built-in or plugin) is written against.

A component is a config model plus a builder, registered under a kind and a name (see CONTRIBUTING.md,
"Writing a component"). This module is the whole contract, versioned by :data:`API_VERSION`:

- :class:`ComponentConfig`: the base of every config model (unknown keys are errors).
- One context object per kind (:class:`JudgeContext`, ...): what the framework knows when it builds the
  component. A builder is called as ``builder(config, context)``.
- One :class:`typing.Protocol` per kind (:class:`Judge`, ...): the methods the framework calls.
- The row shapes passed between stages (:class:`PromptRow`, :class:`GeneratedRow`, :class:`JudgedRow`,
  :class:`PairRow`, ...).
- Declared capabilities: what a component offers beyond its protocol, declared on its config class
  (``capabilities = frozenset({TRAIN_ON_SEED})``) and asked with :func:`offers`, so that validation can ask
  without importing the component.

It is one module, over 400 lines, on purpose: the whole contract a plugin is written against, in one place.
Nothing here imports torch (``spa-recipe validate`` reads configs and capabilities only). A change that breaks a
component written against this module raises :data:`API_VERSION`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, TypedDict

from pydantic import BaseModel, ConfigDict
from typing_extensions import NotRequired

API_VERSION = "1"

# fmt: off
KINDS = ("model", "dataset", "generator", "judge", "score_transform", "pair_selector", "data_mixer", "noise_detector",
         "refiner", "loss", "evaluator", "logger")
# fmt: on


class ComponentConfig(BaseModel):
    """Base of component configs: unknown keys are errors, defaults are validated too.

    Every field needs a default (or is required) and a ``description`` (shown by ``spa-recipe explain``).

    Attributes:
        capabilities: what the component offers beyond its kind's protocol (see :data:`CAPABILITIES`).
    """

    model_config = ConfigDict(extra="forbid", validate_default=True, populate_by_name=True)

    capabilities: ClassVar[frozenset[str]] = frozenset()

    def offered_capabilities(self) -> frozenset[str]:
        """What this configured component offers: ``capabilities``, less any its settings turn off.

        ``capabilities`` says what the component can offer (``spa-recipe explain`` shows it); a config whose
        offer depends on its settings (a preference file offers demonstrations only when it names their
        column) overrides this, and :func:`offers` asks it of an instance.
        """
        return self.capabilities


# Capabilities -----------------------------------------------------------------------------------------

DEMONSTRATIONS = "demonstrations"
PROMPT_DEMONSTRATIONS = "prompt_demonstrations"
TRAIN_ON_SEED = "train_on_seed"
STATS = "stats"
POLICY_LOGPS = "policy_logps"
EXTRAPOLATION = "extrapolation"
PER_PAIR = "per_pair"

CAPABILITIES: dict[str, dict[str, str]] = {
    "dataset": {
        DEMONSTRATIONS: "tokenizer() and demonstrations() for an sft stage (DemonstrationDataset)",
        PROMPT_DEMONSTRATIONS: "rows() carry a `demonstration` string, an answer to the row's prompt, which the "
        "split keeps on the iteration prompt rows (for selectors that need one, e.g. SPIN's `demonstration`)",
    },
    "judge": {
        TRAIN_ON_SEED: "the builder offers train_on_seed(cfg, pairs, *, base_path, output_dir, seed, dtype, "
        "max_length) -> summary, run by the judge_train stage when the config sets train_on_seed: true",
        STATS: "the judge has a dict `stats` summarising its last score() (reported by the judge stage)",
        POLICY_LOGPS: "judged rows carry `policy_logps` (K summed log-probs of the policy judged with)",
    },
    "evaluator": {STATS: "the evaluator has a dict `stats` summarising its last score()"},
    "refiner": {
        PER_PAIR: "refine() also takes `ids`, the micro-batch's pair ids; the refiner reads the stage's pairs "
        "(e.g. their consistency) from its context's `pairs`",
    },
    "noise_detector": {
        EXTRAPOLATION: "the config has `lambda_`: the DND extrapolation strength, one value or one per iteration",
    },
}
"""Known capabilities by kind, each with what declaring it promises."""


def offers(config: ComponentConfig | type[ComponentConfig], capability: str) -> bool:
    """Whether the component of ``config`` (an instance or the class) declares ``capability``.

    An instance is asked :meth:`ComponentConfig.offered_capabilities` (its settings may turn one off); a class
    answers with what it can offer.

    Raises:
        ValueError: ``capability`` is no known capability (a typo would otherwise read as "no").
    """
    if not any(capability in known for known in CAPABILITIES.values()):
        raise ValueError(f"unknown capability {capability!r}")
    offered = None if isinstance(config, type) else getattr(config, "offered_capabilities", None)
    return capability in (offered() if callable(offered) else getattr(config, "capabilities", frozenset()))


# Row shapes ---------------------------------------------------------------------------------------------


class Message(TypedDict):
    """One chat turn."""

    role: str
    content: str


class PromptRow(TypedDict):
    """A prompt of an iteration or of the evaluation hold-out (split: ``prompts_<i>.jsonl``, ``eval.jsonl``)."""

    id: str
    prompt: list[Message]
    demonstration: NotRequired[str]  # iteration prompts of a data source offering PROMPT_DEMONSTRATIONS


class PreferenceRow(PromptRow):
    """A labelled pair: what a dataset's ``rows()`` yields and the split keeps as the seed set (``seed.jsonl``)."""

    chosen: str
    rejected: str


class DemonstrationRow(TypedDict):
    """A supervised example of a :class:`DemonstrationDataset` (an sft stage)."""

    prompt: list[Message]
    response: str


class GeneratedRow(PromptRow):
    """K responses to a prompt (generate: ``responses.jsonl``); what a generator returns."""

    responses: list[str]
    finished: list[bool]  # the response ended with EOS
    num_tokens: list[int]


class JudgedRow(GeneratedRow):
    """A generated row with its judgement (judge: ``scores.jsonl``); judges may add fields of their own."""

    scores: list[float]  # higher is better; only differences within a row mean anything
    valid: list[bool]  # False: not judged (never turned into a preference)
    policy_logps: NotRequired[list[float]]  # judges that offer POLICY_LOGPS
    previous_scores: NotRequired[list[float] | None]  # the implicit judge's previous_scores (CREAM)


class PairRow(TypedDict):
    """A preference pair (pairs: ``pairs.jsonl``); what a pair selector returns and training reads."""

    id: str
    prompt: list[Message]
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    chosen_index: int
    rejected_index: int
    chosen_policy_logp: NotRequired[float]  # when the judged rows carry policy_logps
    rejected_policy_logp: NotRequired[float]
    chosen_finished: NotRequired[bool]  # when the judged rows carry finished
    rejected_finished: NotRequired[bool]
    consistency: NotRequired[float]  # when they carry previous_scores: agreement of the two rankings, in [0, 1]
    source: NotRequired[str]  # set by a data mixer on pairs it replays (e.g. "seed", "iteration 1")


# Contexts: what the framework passes a builder, one frozen dataclass per kind -------------------------


@dataclass(frozen=True)
class ModelContext:
    """Building a model (the sft stage's ``models.base``): ``tokenizer``, the data source's."""

    tokenizer: Any


@dataclass(frozen=True)
class DatasetContext:
    """Building a data source: nothing but the config."""


@dataclass(frozen=True)
class GeneratorContext:
    """Building a generator: nothing but the config (each ``generate`` call names its model)."""


@dataclass(frozen=True)
class JudgeContext:
    """Building the recipe's judge for one iteration.

    Attributes:
        policy_path: the model judged with, pi_{i-1}.
        sft_path: the SFT model pi_init.
        previous_path: the model before the policy; None when that is the SFT model.
        dtype: precision name (``models.dtype``).
        max_prompt_length: prompt tokens kept when prompt + response exceed ``max_length``.
        max_length: prompt + response tokens (``training.iteration.max_length``).
        world: the recipe's data source (for oracle judges).
        shard_size: rows per resumable shard (``generation.shard_size``).
        trained_path: the model the ``judge_train`` stage trained; None without that stage.
        device: where to run; None: this process's accelerator, else CPU.
    """

    policy_path: str | None = None
    sft_path: str | None = None
    previous_path: str | None = None
    dtype: str = "auto"
    max_prompt_length: int | None = None
    max_length: int | None = None
    world: Any = None
    shard_size: int = 256
    trained_path: str | None = None
    device: str | None = None


@dataclass(frozen=True)
class EvaluatorContext:
    """Building the evaluator (``evaluation.evaluator``): it compares two models' responses.

    Attributes:
        world: the recipe's data source (for oracle evaluators).
        dtype: precision name (``models.dtype``).
        device: where to run; None: this process's accelerator, else CPU.
    """

    world: Any = None
    dtype: str = "auto"
    device: str | None = None


@dataclass(frozen=True)
class ScoreTransformContext:
    """Building a score transform: nothing but the config."""


@dataclass(frozen=True)
class PairSelectorContext:
    """Building a pair selector: nothing but the config."""


@dataclass(frozen=True)
class DataMixerContext:
    """Building a data mixer: nothing but the config."""


@dataclass(frozen=True)
class NoiseDetectorContext:
    """Building a noise detector: nothing but the config."""


@dataclass(frozen=True)
class RefinerContext:
    """Building a refiner: ``pairs``, the training stage's pairs in order (read by refiners that offer PER_PAIR)."""

    pairs: tuple[PairRow, ...] = ()


@dataclass(frozen=True)
class LossContext:
    """Building a loss: nothing but the config."""


@dataclass(frozen=True)
class LoggerContext:
    """Building a logger: ``run_dir``, the run directory."""

    run_dir: Path


CONTEXTS: dict[str, type] = {
    "model": ModelContext,
    "dataset": DatasetContext,
    "generator": GeneratorContext,
    "judge": JudgeContext,
    "score_transform": ScoreTransformContext,
    "pair_selector": PairSelectorContext,
    "data_mixer": DataMixerContext,
    "noise_detector": NoiseDetectorContext,
    "refiner": RefinerContext,
    "loss": LossContext,
    "evaluator": EvaluatorContext,
    "logger": LoggerContext,
}


def make_context(kind: str, **keywords: Any) -> Any:
    """The context object of ``kind`` from the framework's build keywords.

    Raises:
        TypeError: a keyword the kind's context does not have, or a required one missing; the message names
            the kind and the context's fields.
    """
    context_type = CONTEXTS[kind]
    names = [f.name for f in fields(context_type)]
    unknown = sorted(set(keywords) - set(names))
    if unknown:
        raise TypeError(f"{kind} context has no {', '.join(unknown)} (fields: {', '.join(names) or 'none'})")
    try:
        return context_type(**keywords)
    except TypeError as exc:
        raise TypeError(f"{kind} context: {exc}") from exc


# Protocols: what the framework calls, per kind -------------------------------------------------------

Scope = Literal["micro_batch", "optimizer_step"]
Confidence = Literal["policy", "extrapolated"]


class Dataset(Protocol):
    """A data source (kind ``dataset``): ``rows()``, every row (malformed ones too: the split counts and skips them)."""

    def rows(self) -> list[PreferenceRow]: ...


class DemonstrationDataset(Dataset, Protocol):
    """A data source that declares :data:`DEMONSTRATIONS`: the sft stage's tokenizer and supervised examples."""

    def tokenizer(self) -> Any: ...  # a transformers PreTrainedTokenizerBase

    def demonstrations(self) -> list[DemonstrationRow]: ...


class Model(Protocol):
    """A model (kind ``model``): a ``transformers`` causal LM, trained by the sft stage and saved."""

    def save_pretrained(self, path: str | Path) -> None: ...


class Generator(Protocol):
    """A generator (kind ``generator``): K responses per prompt; every process gets all rows back."""

    def generate(
        self,
        prompts: list[PromptRow],
        *,
        model_path: str,
        out_dir: Path,
        seed: int,
        dtype: str = "auto",
        max_prompt_length: int | None = None,
    ) -> list[GeneratedRow]: ...


class Judge(Protocol):
    """A judge (kind ``judge``) or evaluator (kind ``evaluator``, called on rows of K = 2).

    ``score`` returns the rows in order with ``scores`` and ``valid`` (K each); ``out_dir``: resumable shards, or None.
    """

    def score(self, rows: list[GeneratedRow], out_dir: Path | None = None) -> list[JudgedRow]: ...


Evaluator = Judge


class PairSelector(Protocol):
    """A pair selector (kind ``pair_selector``): ``(pairs, counts)``; a row with < 2 valid responses is counted."""

    def select(self, rows: list[JudgedRow], seed: int) -> tuple[list[PairRow], dict[str, int]]: ...


class ScoreTransform(Protocol):
    """A score transform (kind ``score_transform``): judged rows with new ``scores``, and a summary of what it did.

    ``select`` is the recipe's pair selection (rows -> pairs), for transforms that tune themselves on its outcome
    (e.g. DICE's alpha, chosen so that chosen and rejected responses are as long on average).
    """

    def transform(
        self, rows: list[JudgedRow], select: Callable[[list[JudgedRow]], list[PairRow]]
    ) -> tuple[list[JudgedRow], dict[str, Any]]: ...


class DataMixer(Protocol):
    """A data mixer (kind ``data_mixer``): an iteration's training pairs from its own pairs and a pool to replay.

    ``pool``: the pairs it may replay (the labelled seed set, or an earlier iteration's pairs; empty when there is
    none); ``seed``: seeds its random draws (with the iteration). Returns ``(pairs, counts)``.
    """

    def mix(
        self, pairs: list[PairRow], pool: list[PairRow], *, seed: int, iteration: int
    ) -> tuple[list[PairRow], dict[str, int]]: ...


class NoiseDetector(Protocol):
    """A noise detector (kind ``noise_detector``); margins and flags are torch tensors.

    Attributes:
        confidence: which margin the trainer feeds it: the policy's own, or the DND extrapolation.
        scope: ``micro_batch`` (each micro-batch) or ``optimizer_step`` (every pair of an optimiser step at once).
        threshold: the last threshold used (logged).
    """

    confidence: Confidence
    scope: Scope
    threshold: float

    def flag(self, margins: Any, accelerator: Any = None) -> Any: ...  # bool tensor, True: looks mislabelled

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Refiner(Protocol):
    """A refiner (kind ``refiner``): ``(label smoothing, loss weight)`` per pair, tensors shaped like ``flags``.

    One that offers :data:`PER_PAIR` is also given ``ids=`` (the micro-batch's pair ids, in ``flags``' order).
    """

    def refine(self, flags: Any, step: int, total_steps: int) -> tuple[Any, Any]: ...


class Loss(Protocol):
    """A preference loss (kind ``loss``). Attributes: ``beta``, the temperature of its margins."""

    beta: float

    def __call__(
        self,
        policy_chosen_logps: Any,
        policy_rejected_logps: Any,
        ref_chosen_logps: Any,
        ref_rejected_logps: Any,
        smoothing: Any = 0.0,
    ) -> tuple[Any, Any]: ...  # (losses, margins) per pair


@dataclass(frozen=True)
class StageInfo:
    """A finished stage as a logger sees it: its folder name, its kind, its SPA iteration (0 before the loop)."""

    name: str
    kind: str
    iteration: int


class Logger(Protocol):
    """A logger (kind ``logger``)."""

    def log_stage(self, stage: StageInfo, seconds: float, summary: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


# Helpers for components ------------------------------------------------------------------------------


def require_api(version: str, plugin: str) -> None:
    """Stop a plugin written against another API version before it registers anything.

    Raises:
        RuntimeError: ``version`` is not :data:`API_VERSION`; the message names the plugin and both versions.
    """
    if version != API_VERSION:
        raise RuntimeError(f"{plugin} is written against spa_recipes.api version {version}, this is {API_VERSION}")


def min_max_pairs(
    rows: list[JudgedRow], *, ties: Literal["keep", "drop"] = "keep", drop_identical: bool = True
) -> tuple[list[PairRow], dict[str, int]]:
    """The built-in ``min_max`` selection: chosen = highest-scored valid response, rejected = the lowest.

    Args:
        rows: judged rows.
        ties: keep or drop pairs whose two scores are equal.
        drop_identical: drop pairs whose two responses are the same text.

    Returns:
        ``(pairs, counts)``: pair rows, and counts ``rows``, ``pairs``, ``invalid_responses``, ``dropped_invalid``,
        ``dropped_identical``, ``kept_identical``, ``dropped_tie``, ``kept_tie``.
    """
    from spa_recipes.pairs import MinMaxSelector
    from spa_recipes.pairs_config import PairSelectorConfig

    selector = MinMaxSelector(PairSelectorConfig(ties=ties, drop_identical=drop_identical), PairSelectorContext())
    return selector.select(rows, seed=0)
