"""``spa-recipe rehearse``: a GPU recipe run end to end on this CPU with tiny random models, before renting GPUs.

Kept as the recipe writes it: ``models.dtype``, the data source and its schema (columns, system prompt), the
split's proportions, every training stage's batch layout (``batch_size`` x ``gradient_accumulation_steps``),
the judge, pair selector, noise detector, refiner, loss and evaluator, and the runner itself
(:func:`spa_recipes.runner.run.execute`).

Substituted:

- every model the recipe names by hub id or folder (``models.sft``, an ``llm_judge`` or ``reward_model``
  judge or evaluator) by a randomly initialised model of the same class, made from that model's own
  ``config.json`` shrunk (:mod:`spa_recipes.tiny_models`), with its real tokenizer (chat template, vocabulary,
  special tokens) and generation config. Only the config and tokenizer files are read, never the weights.
- PairRM (as judge or evaluator) by a tiny DeBERTa-v2 PairRM in the ``llm-blender/PairRM-hf`` layout, with
  PairRM's own tokenizer when its files are on this machine, else with the policy's tokenizer.

Scaled: the split, by one factor for all its sets, to the smallest that gives every training stage
``MIN_STEPS`` optimiser steps per epoch; and ``generation.max_new_tokens`` (a random model writes to the
limit, so it sets the time of every stage). The run goes to ``<output_dir>/<run.name>-rehearsal``, never
the real run's directory; the tiny models and the plan lie in its ``rehearsal/`` folder.

Over 400 lines on purpose: the plan (what is kept, substituted and scaled) and its verdict read as one story;
the model shrinking lives apart, in :mod:`spa_recipes.tiny_models`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spa_recipes.atomic import dumps_json
from spa_recipes.errors import DataError, UserError
from spa_recipes.interrupt import Interrupted
from spa_recipes.recipe import launched_processes, load_recipe
from spa_recipes.schema import ComponentSpec, Recipe, TrainingSection
from spa_recipes.tiny_models import first_line, offline_if_unreachable, shrink_pretrained, tiny_pairrm

MIN_STEPS = 2  # optimiser steps per epoch every training stage gets
MAX_NEW_TOKENS = 64  # default cap on generation.max_new_tokens
SUFFIX = "-rehearsal"
WORK = "rehearsal"  # folder in the run directory: tiny models, plan.json, traceback.txt
# Component sections whose hub models are substituted: component name -> (argument, transformers auto class).
HUB_MODEL_ARGS = {
    "llm_judge": ("model", "AutoModelForCausalLM"),
    "reward_model": ("path", "AutoModelForSequenceClassification"),
}


@dataclass
class Plan:
    """A prepared rehearsal.

    Attributes:
        recipe: the rehearsal's recipe, validated (the user's overrides, then the rehearsal's).
        run_dir: where it runs (``<output_dir>/<run.name>-rehearsal``).
        overrides: the rehearsal's own overrides, applied after the user's.
        notes: one line per thing substituted, scaled or kept.
    """

    recipe: Recipe
    run_dir: Path
    overrides: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """A rehearsal that passed (one that fails raises, after saying its verdict).

    Attributes:
        plan: what ran.
        seconds: wall time of the run (preparation excluded).
        verdict: the one-line verdict.
    """

    plan: Plan
    seconds: float
    verdict: str


@dataclass(frozen=True)
class ScaledSplit:
    """The rehearsal's split: counts of rows, and the factor applied to the recipe's."""

    seed_size: int
    prompts_per_iteration: list[int]
    eval_holdout: int
    factor: float

    @property
    def rows(self) -> int:
        return self.seed_size + sum(self.prompts_per_iteration) + self.eval_holdout


# Running ------------------------------------------------------------------------------------------------


def rehearse(
    recipe_path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    allow_import: Sequence[str] = (),
    max_new_tokens: int = MAX_NEW_TOKENS,
    min_steps: int = MIN_STEPS,
    processes: int = 1,
    progress: bool | None = None,
    say: Callable[[str], None] = print,
) -> Outcome:
    """Prepare (:func:`prepare`) and run a rehearsal, then say a one-line verdict.

    Args:
        recipe_path: the recipe YAML (a GPU recipe, typically).
        overrides: the user's ``key=value`` overrides, as for ``spa-recipe run``.
        allow_import: module prefixes the recipe may name components from.
        max_new_tokens: cap on ``generation.max_new_tokens`` and ``evaluation.max_new_tokens``.
        min_steps: optimiser steps per epoch every training stage must get.
        processes: the launch the recipe is meant for (e.g. 8 GPUs): its optimiser batch is emulated in one
            process by multiplying every training stage's ``gradient_accumulation_steps`` by it.
        progress: progress bars (True), log lines (False), or bars on a terminal (None).
        say: where the substitutions and the verdict are written.

    Returns:
        The outcome of a rehearsal that passed.

    Raises:
        UserError: the recipe, its models or its data cannot be rehearsed here (one line each), or a stage
            failed with a user error (after the verdict is said).
        Exception: whatever a stage raised, after the verdict is said; the traceback is also kept in
            ``<run_dir>/rehearsal/traceback.txt``.
    """
    with offline_if_unreachable():
        plan = prepare(
            recipe_path,
            overrides,
            allow_import=allow_import,
            max_new_tokens=max_new_tokens,
            min_steps=min_steps,
            processes=processes,
        )
        say(f"rehearsal of {recipe_path} in {plan.run_dir}")
        for note in plan.notes:
            say(f"  {note}")
        from spa_recipes.runner.run import execute

        started = time.time()
        try:
            execute(plan.recipe, progress=progress)
        except BaseException as exc:
            seconds = time.time() - started
            stage = _running_stage(plan.run_dir) or "(before the first stage)"
            if isinstance(exc, KeyboardInterrupt | Interrupted):  # Interrupted: the runner said where it stopped
                say(f"rehearsal interrupted at stage {stage} after {seconds:.0f} s")
                raise
            (plan.run_dir / WORK / "traceback.txt").write_text("".join(traceback.format_exception(exc)))
            message = first_line(exc) if str(exc).strip() else ""
            say(
                f"rehearsal FAILED at stage {stage} after {seconds:.0f} s: {type(exc).__name__}: {message} "
                f"({_where(exc)}; traceback in {plan.run_dir / WORK / 'traceback.txt'})"
            )
            raise
    seconds = time.time() - started
    verdict = _passed_verdict(plan, seconds, min_steps)
    say(verdict)
    return Outcome(plan, seconds, verdict)


def prepare(
    recipe_path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    allow_import: Sequence[str] = (),
    max_new_tokens: int = MAX_NEW_TOKENS,
    min_steps: int = MIN_STEPS,
    processes: int = 1,
) -> Plan:
    """Build the tiny models, scale the split and validate the rehearsal's recipe; nothing is trained yet.

    The rehearsal's run directory is emptied first (it must be one: it holds ``rehearsal/plan.json``).

    Args:
        recipe_path: the recipe YAML.
        overrides: the user's overrides (``models.sft=/folder``, ``data.path=/file.parquet``, ...).
        allow_import: module prefixes the recipe may name components from.
        max_new_tokens: cap on the generation length.
        min_steps: optimiser steps per epoch every training stage must get.
        processes: the launch to emulate (see :func:`rehearse`).

    Returns:
        The plan, its recipe validated.

    Raises:
        UserError: the recipe does not validate; a model's config or tokenizer, or the data, is not on this
            machine and the hub cannot be reached (the line says what to fetch or override); the data has
            too few rows; the run directory exists and is not a rehearsal's; a multi-process launch.
    """
    if launched_processes() > 1:
        raise UserError("rehearse runs in one process; start it without torchrun or accelerate launch")
    # Validated for the launch it is meant for; then that launch's optimiser batch in one process.
    recipe = load_recipe(recipe_path, overrides, allow_import=allow_import, num_processes=processes)
    emulated, emulated_note = _emulate_processes(recipe, processes)
    overrides = [*overrides, *emulated]
    recipe = load_recipe(recipe_path, overrides, allow_import=allow_import)
    name = f"{recipe.run.name}{SUFFIX}"
    run_dir = Path(recipe.run.output_dir) / name
    work = _fresh_work_dir(run_dir)
    dtype = recipe.models.dtype
    own = [f"run.name={json.dumps(name)}"]
    notes: list[str] = emulated_note

    if recipe.models.sft is not None:
        tiny = shrink_pretrained(recipe.models.sft, work / "sft", key="models.sft", dtype=dtype, seed=recipe.run.seed)
        own.append(f"models.sft={json.dumps(str(tiny.path))}")
        notes.append(f"models.sft: {recipe.models.sft} -> {tiny.describe()}")
        notes += [f"models.sft: {w}" for w in tiny.warnings]
        policy_tokenizer = tiny.path
    else:
        base = recipe.models.base.name if recipe.models.base else "?"
        notes.append(f"models.base: component '{base}' (the sft stage builds it from its config): kept")
        policy_tokenizer = None

    for key, spec in _judging_sections(recipe):
        override, note = _substitute_judge(key, spec, work, policy_tokenizer, dtype, recipe.run.seed)
        own += override
        notes += note

    usable, skipped, what = _usable_rows(recipe)
    split = scale_split(recipe, usable, min_steps)
    if split.rows > usable:
        raise DataError(
            f"data: the rehearsal needs {split.rows} usable rows (seed {split.seed_size} + prompts "
            f"{split.prompts_per_iteration} + eval {split.eval_holdout}: the recipe's proportions at {min_steps} "
            f"optimiser steps per training stage) but {what} has {usable} ({skipped} skipped); give a larger file"
        )
    own += [f"split.seed_size={split.seed_size}", f"split.eval_holdout={split.eval_holdout}"]
    if recipe.iterations > 0:
        own.append(f"split.prompts_per_iteration={json.dumps(split.prompts_per_iteration)}")
    notes.append(f"data: {what}: {usable} usable rows ({skipped} skipped)")
    notes.append(_split_note(recipe, split, min_steps))

    generation = recipe.generation.args
    if getattr(generation, "max_new_tokens", 0) > max_new_tokens:
        own.append(f"generation.max_new_tokens={max_new_tokens}")
        notes.append(
            f"generation.max_new_tokens: {generation.max_new_tokens} -> {max_new_tokens} (time: a random model "
            f"writes to the limit; --max-new-tokens {generation.max_new_tokens} keeps the recipe's)"
        )
    if (recipe.evaluation.max_new_tokens or 0) > max_new_tokens:
        own.append(f"evaluation.max_new_tokens={max_new_tokens}")
        notes.append(f"evaluation.max_new_tokens: {recipe.evaluation.max_new_tokens} -> {max_new_tokens} (time)")
    notes.append(_kept_note(recipe))

    rehearsal = load_recipe(recipe_path, [*overrides, *own], allow_import=allow_import)
    plan = Plan(rehearsal, run_dir, own, notes)
    record = {"recipe": str(recipe_path), "overrides": list(overrides), "rehearsal": own, "notes": notes}
    (work / "plan.json").write_text(dumps_json(record, indent=1))
    return plan


def _emulate_processes(recipe: Recipe, processes: int) -> tuple[list[str], list[str]]:
    """Overrides that give one process the optimiser batch of ``processes`` (accumulation x processes), and a note."""
    if processes == 1:
        return [], []
    stages = {"sft": recipe.training.sft, "seed": recipe.training.seed, "iteration": recipe.training.iteration}
    overrides = [
        f"training.{stage}.gradient_accumulation_steps={section.gradient_accumulation_steps * processes}"
        for stage, section in stages.items()
        if section is not None
    ]
    return overrides, [
        f"a launch of {processes} processes: its optimiser batches in one process ({', '.join(overrides)})"
    ]


def _fresh_work_dir(run_dir: Path) -> Path:
    """Empty the rehearsal's run directory (only if it is one) and make its ``rehearsal/`` folder."""
    work = run_dir / WORK
    if run_dir.exists():
        if not (work / "plan.json").exists():
            raise UserError(
                f"{run_dir}: exists and is not a rehearsal's (no {WORK}/plan.json); move it away or set run.name"
            )
        shutil.rmtree(run_dir)
    work.mkdir(parents=True)
    (work / "plan.json").write_text("{}")  # marks the folder as a rehearsal's from the start
    return work


def _running_stage(run_dir: Path) -> str | None:
    from spa_recipes.runner.run import read_manifest

    stages = read_manifest(run_dir)["stages"] if run_dir.exists() else {}
    return next((name for name, entry in stages.items() if entry.get("status") in ("running", "interrupted")), None)


def _where(exc: BaseException) -> str:
    """The innermost frame in spa_recipes, and the one that raised when it is elsewhere (``file:line in name``)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "no traceback"
    marker = f"{os.sep}spa_recipes{os.sep}"

    def show(frame: traceback.FrameSummary) -> str:
        filename = frame.filename
        if marker in filename:
            filename = "spa_recipes" + os.sep + filename.rsplit(marker, 1)[1]
        return f"{filename}:{frame.lineno} in {frame.name}"

    ours = [f for f in frames if marker in f.filename]
    if not ours or ours[-1] is frames[-1]:
        return show(frames[-1])
    return f"{show(ours[-1])}, raised at {show(frames[-1])}"


def _passed_verdict(plan: Plan, seconds: float, min_steps: int) -> str:
    from spa_recipes.runner.graph import build_graph
    from spa_recipes.runner.run import read_manifest

    manifest = read_manifest(plan.run_dir)["stages"]
    stages = {s.name: manifest.get(s.name, {}) for s in build_graph(plan.recipe)}
    steps = {
        name: entry["summary"]["steps"]
        for name, entry in stages.items()
        if isinstance(entry.get("summary"), dict) and "steps" in entry["summary"]
    }
    few = [name for name, n in steps.items() if n < min_steps]
    shown = ", ".join(f"{name} {n}" for name, n in steps.items())
    warning = f"; warning: fewer than {min_steps} optimiser steps in {', '.join(few)}" if few else ""
    return (
        f"rehearsal passed: all {len(stages)} stages ran in {seconds:.0f} s (optimiser steps: {shown}){warning}; "
        f"{plan.run_dir / 'results.json'} (random models: its numbers mean nothing)"
    )


# Judges and evaluators ----------------------------------------------------------------------------------


def _judging_sections(recipe: Recipe) -> list[tuple[str, ComponentSpec]]:
    sections = [("judge", recipe.judge)]
    if recipe.evaluation.evaluator is not None:
        sections.append(("evaluation.evaluator", recipe.evaluation.evaluator))
    return sections


def _substitute_judge(
    key: str, spec: ComponentSpec, work: Path, policy_tokenizer: Path | None, dtype: str, seed: int
) -> tuple[list[str], list[str]]:
    """Overrides and notes for a judge or evaluator that loads a model of its own."""
    folder = work / key.replace(".", "_")
    if spec.name == "pairrm":
        path, note = tiny_pairrm(spec.args, folder, policy_tokenizer=policy_tokenizer, seed=seed)
        overrides = [f"{key}.path={json.dumps(str(path))}", f"{key}.backbone=null"]
        return overrides, [f"{key} (pairrm): {spec.args.path} -> {note}"]
    if spec.name in HUB_MODEL_ARGS:
        arg, auto_class = HUB_MODEL_ARGS[spec.name]
        source = getattr(spec.args, arg)
        if source is None or getattr(spec.args, "backend", "hf") != "hf":
            return [], [f"{key} ({spec.name}): kept as written"]
        tiny = shrink_pretrained(source, folder, key=f"{key}.{arg}", dtype=dtype, seed=seed, auto_class=auto_class)
        return [f"{key}.{arg}={json.dumps(str(tiny.path))}"], [f"{key}.{arg}: {source} -> {tiny.describe()}"]
    return [], []


# Data and split -----------------------------------------------------------------------------------------


def _usable_rows(recipe: Recipe) -> tuple[int, int, str]:
    """``(usable rows, skipped rows, a name for the data)`` as the split stage will count them (before its check of
    prompt lengths, which needs the policy's tokenizer).

    Raises:
        DataError: the data cannot be loaded; for a hub dataset that is not here, with what to give instead.
    """
    from spa_recipes.data.cleaning import clean_rows
    from spa_recipes.data.files import find_data_file
    from spa_recipes.registry import get_registry

    args = recipe.data.args
    path = getattr(args, "path", None)
    component = get_registry().get("dataset", recipe.data.name)
    assert component is not None, f"dataset '{recipe.data.name}' was validated but is not registered"
    try:
        rows = component.build(args).rows()
    except DataError as exc:
        local = isinstance(path, str) and (find_data_file(path) is not None or Path(path).expanduser().is_dir())
        if recipe.data.name != "hub_preferences" or local or "cannot load" not in exc.problems[0]:
            raise
        raise DataError(
            f"data.path '{path}': {exc.problems[0].split(': ', 2)[-1]}; rehearse with a local copy of the same "
            "schema (the recipe's columns and system prompt are kept): data.path=/path/to/file.parquet "
            "(or .jsonl, .json, or a dataset folder)"
        ) from None
    kept, skipped = (cleaned := clean_rows(rows)).rows, cleaned.skipped
    found = find_data_file(path) if isinstance(path, str) else None
    return len(kept), sum(skipped.values()), f"{recipe.data.name} {found or path or ''}".strip()


def _layout(training: TrainingSection) -> int:
    """Examples per optimiser step in one process."""
    return training.batch_size * training.gradient_accumulation_steps


def scale_split(recipe: Recipe, usable: int, min_steps: int = MIN_STEPS) -> ScaledSplit:
    """The recipe's split scaled by one factor, to the smallest size that trains every stage ``min_steps`` steps.

    Counts stay counts and fractions become counts of the ``usable`` rows. The factor is the largest of
    ``min_steps x batch_size x gradient_accumulation_steps / set size`` over the training sets (the seed set
    for seed DPO, each iteration's prompts: one pair per prompt at most), capped at 1. Each set is rounded up;
    a non-empty eval hold-out keeps at least 2 prompts.

    Args:
        recipe: the recipe.
        usable: rows the split will have after dropping malformed and duplicate ones.
        min_steps: optimiser steps per epoch each training stage must get.

    Returns:
        The scaled counts and the factor.
    """

    def count(value: float) -> float:
        return float(value) if value >= 1 else value * usable

    split, t = recipe.split, recipe.iterations
    per = split.prompts_per_iteration
    seed = count(split.seed_size)
    prompts = [count(per[i] if isinstance(per, list) else per) for i in range(t)]
    holdout = count(split.eval_holdout)
    needs = [(p, min_steps * _layout(recipe.training.iteration)) for p in prompts]
    if recipe.training.seed is not None:
        needs.append((seed, min_steps * _layout(recipe.training.seed)))
    factor = min(1.0, max((need / max(size, 1e-9) for size, need in needs), default=0.0))

    def scaled(size: float) -> int:
        return max(1, math.ceil(size * factor - 1e-9))

    evals = 0 if holdout < 1 else max(min(2, int(holdout)), math.ceil(holdout * factor - 1e-9))
    return ScaledSplit(scaled(seed), [scaled(p) for p in prompts], evals, factor)


def _split_note(recipe: Recipe, split: ScaledSplit, min_steps: int) -> str:
    from spa_recipes.training.data_order import plan_steps

    layouts = []
    if recipe.training.seed is not None:
        t = recipe.training.seed
        steps = plan_steps(split.seed_size, t, 1).total_steps
        layouts.append(f"seed DPO {t.batch_size} x {t.gradient_accumulation_steps}: {steps} steps")
    if recipe.iterations:
        t = recipe.training.iteration
        steps = [plan_steps(n, t, 1).total_steps for n in split.prompts_per_iteration]
        layouts.append(f"iterations {t.batch_size} x {t.gradient_accumulation_steps}: up to {steps} steps")
    s = recipe.split
    return (
        f"split: seed_size {s.seed_size} -> {split.seed_size}, prompts_per_iteration {s.prompts_per_iteration} -> "
        f"{split.prompts_per_iteration}, eval_holdout {s.eval_holdout} -> {split.eval_holdout} (x{split.factor:.3g}, "
        f"the recipe's proportions; >= {min_steps} optimiser steps per epoch at the recipe's batch layout: "
        f"{'; '.join(layouts) or 'no training stage'})"
    )


def _kept_note(recipe: Recipe) -> str:
    sections = ["judge", "pair_selector", "noise_detector", "refiner", "loss"]
    named = ", ".join(f"{s} {getattr(recipe, s).name}" for s in sections)
    evaluator = recipe.evaluation.evaluator.name if recipe.evaluation.evaluator else "none"
    return (
        f"kept: models.dtype {recipe.models.dtype}, the tokenizer's chat template, data columns and system prompt, "
        f"batch layout and gradient accumulation, {recipe.iterations} iterations, {named}, evaluator {evaluator}, "
        f"generation {recipe.generation.name}"
    )
