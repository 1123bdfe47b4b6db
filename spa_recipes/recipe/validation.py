"""Recipe validation: components resolved against the registry (and allow-listed imports), their
arguments and the whole recipe validated with every problem reported at once, then the rules that span
sections (:func:`validate`).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from spa_recipes.api import DEMONSTRATIONS, EXTRAPOLATION, PROMPT_DEMONSTRATIONS, offers
from spa_recipes.errors import RecipeError, UserError
from spa_recipes.recipe.layers import Sources
from spa_recipes.recipe.messages import format_errors, suggest
from spa_recipes.registry import Registry, get_registry
from spa_recipes.schema import COMPONENT_SECTIONS, ComponentSpec, Recipe

ALLOW_IMPORT_ENV = "SPA_RECIPES_ALLOW_IMPORT"


def _allowed_imports(allow_import: Sequence[str]) -> list[str]:
    env = [p for p in os.environ.get(ALLOW_IMPORT_ENV, "").split(",") if p.strip()]
    return [p.strip() for p in (*allow_import, *env)]


def _lookup(
    registry: Registry, kind: str, spec: ComponentSpec, dotted: str, allowed: list[str]
) -> tuple[Any, str | None]:
    """The registered component for ``spec.name``, or an error line."""
    name = spec.name
    if ":" in name:
        module = name.partition(":")[0]
        if not any(module == p or module.startswith(p + ".") for p in allowed):
            return None, (
                f"{dotted}.name: '{name}' is an import path; a recipe is data, not code. Allow it with "
                f"--allow-import {module} or {ALLOW_IMPORT_ENV}={module}"
            )
        found = registry.get(kind, name)
        if found is None:
            try:
                target = getattr(importlib.import_module(module), name.partition(":")[2])
                config = target.Config
            except Exception as exc:
                return None, f"{dotted}.name: cannot import '{name}': {type(exc).__name__}: {exc}"
            if not (isinstance(config, type) and issubclass(config, BaseModel)):
                return None, f"{dotted}.name: '{name}' has no pydantic `Config` class for its arguments"
            registry.register(kind, name, config=config, builder=target, help="allow-listed import")
            found = registry.get(kind, name)
        return found, None
    found = registry.get(kind, name)
    if found is None:
        names = registry.names(kind)
        return None, f"{dotted}.name: unknown {kind} '{name}'{suggest(name, names)}; available: {', '.join(names)}"
    return found, None


def _component_specs(recipe: Recipe) -> list[tuple[str, str, ComponentSpec]]:
    """``(dotted path, kind, spec)`` of every component section that is set."""
    found = []
    for path, kind in COMPONENT_SECTIONS.items():
        value: Any = recipe
        for part in path.split("."):
            value = getattr(value, part)
        if isinstance(value, list):
            found += [(f"{path}.{i}", kind, spec) for i, spec in enumerate(value)]
        elif value is not None:
            found.append((path, kind, value))
    return found


def _raw_component_specs(data: dict[str, Any]) -> list[tuple[str, str, ComponentSpec]]:
    """Component sections as written, before the whole recipe validates (so their errors show up too)."""
    found = []
    for path, kind in COMPONENT_SECTIONS.items():
        value: Any = data
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, raw in items:
            if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                spec = ComponentSpec.model_validate(raw)
                found.append((path if i is None else f"{path}.{i}", kind, spec))
    return found


def _resolve_components(specs: list[tuple[str, str, ComponentSpec]], sources: Sources, allowed: list[str]) -> list[str]:
    """Look each component up and validate its arguments; set ``spec._args``. Returns the problems."""
    registry = get_registry()
    problems: list[str] = []
    for dotted, kind, spec in specs:
        component, problem = _lookup(registry, kind, spec, dotted, allowed)
        if problem:
            where = sources.locate(f"{dotted}.name")
            problems.append(f"{where}: {problem}" if where else problem)
            continue
        try:
            spec._args = component.config.model_validate(spec.raw_args())
        except ValidationError as exc:
            problems += format_errors(exc, component.config, dotted.split("."), sources, spec.raw_args())
    return problems


def _cross_checks(recipe: Recipe, num_processes: int) -> list[str]:
    """Rules that involve more than one section (and the launch's process count)."""
    problems = _flagging_batch(recipe, num_processes)
    t = recipe.iterations
    per_iteration = recipe.split.prompts_per_iteration
    if isinstance(per_iteration, list) and len(per_iteration) != t and t > 0:
        problems.append(
            f"split.prompts_per_iteration: {len(per_iteration)} values for iterations={t}; give one value or {t}"
        )
    lam = recipe.noise_detector.args.lambda_ if offers(recipe.noise_detector.args, EXTRAPOLATION) else None
    if isinstance(lam, list) and len(lam) != t and t > 0:
        problems.append(f"noise_detector.lambda: {len(lam)} values for iterations={t}; give one value or {t}")
    sft_stage = recipe.training.sft is not None
    if recipe.models.sft is None and not sft_stage:
        problems.append("models.sft: required (the SFT model pi_init), unless training.sft makes it")
    if recipe.models.sft is not None and sft_stage:
        problems.append("training.sft: set, but models.sft names pi_init already; remove one of them")
    if sft_stage and recipe.models.base is None:
        problems.append("models.base: required by training.sft (the model it fine-tunes)")
    if sft_stage and not offers(recipe.data.args, DEMONSTRATIONS):
        problems.append(f"training.sft: data source '{recipe.data.name}' has no demonstrations for an sft stage")
    problems += _prompt_demonstrations(recipe)
    problems += _adapter(recipe)
    if recipe.iterations > 0 and recipe.training.seed is None and recipe.judge.name == "implicit":
        ref = recipe.judge.args.reference
        if ref == "sft":
            problems.append(
                "judge.reference: 'sft' with no seed stage makes the first iteration's policy equal its reference "
                "(every reward is 0); set training.seed or judge.reference"
            )
    return problems


def _adapter(recipe: Recipe) -> list[str]:
    """``models.adapter``: PEFT installed, QLoRA only on CUDA, adapter-only models only for HF generation, and
    target modules the model has (checked on its config when ``models.sft`` is a local folder)."""
    adapter = recipe.models.adapter
    if adapter is None:
        return []
    if importlib.util.find_spec("peft") is None:
        return [
            "models.adapter: needs PEFT, the optional extra `lora`: pip install -c constraints.txt 'spa-recipes[lora]'"
        ]
    problems = []
    if adapter.save == "adapter" and recipe.generation.name == "vllm":
        problems.append(
            "models.adapter.save: 'adapter' writes adapter-only models, which generation 'vllm' does not load; "
            "use save: merged"
        )
    from spa_recipes.adapters import check_target_modules_of, require_cuda_for_4bit  # torch: only with an adapter

    sft = recipe.models.sft
    try:
        require_cuda_for_4bit(adapter)
        if sft is not None and (Path(sft).expanduser() / "config.json").is_file():
            check_target_modules_of(sft, adapter)
    except UserError as exc:
        problems += exc.problems
    return problems


def _prompt_demonstrations(recipe: Recipe) -> list[str]:
    """SPIN's selector pairs each prompt's demonstration with a sample: the data source must give them."""
    from spa_recipes.pairs_config import DemonstrationSelectorConfig

    if not isinstance(recipe.pair_selector.args, DemonstrationSelectorConfig) or offers(
        recipe.data.args, PROMPT_DEMONSTRATIONS
    ):
        return []
    hint = " (set data.demonstration_column)" if "demonstration_column" in type(recipe.data.args).model_fields else ""
    return [
        f"pair_selector: '{recipe.pair_selector.name}' pairs each prompt's demonstration, but data source "
        f"'{recipe.data.name}' has none{hint}"
    ]


def _flagging_batch(recipe: Recipe, num_processes: int) -> list[str]:
    """A bottom-K% detector over the optimiser batch must be able to flag at least one pair."""
    from spa_recipes.noise_config import BatchQuantileConfig

    detector = recipe.noise_detector.args
    if recipe.iterations == 0 or not isinstance(detector, BatchQuantileConfig):
        return []
    t = recipe.training.iteration
    batch = t.batch_size * t.gradient_accumulation_steps * num_processes
    if int(detector.k * batch + 1e-9) > 0:
        return []
    processes = f"{num_processes} process" + ("es" if num_processes > 1 else "")
    return [
        f"noise_detector.k: {detector.k:g} of an optimiser batch of {batch} pairs (training.iteration.batch_size "
        f"{t.batch_size} x gradient_accumulation_steps {t.gradient_accumulation_steps} x {processes}) flags "
        f"floor({detector.k * batch:g}) = 0 pairs; raise the batch or k, or launch more processes"
    ]


def launched_processes() -> int:
    """The process count of the launch this process belongs to (``WORLD_SIZE`` of torchrun/accelerate), else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def validate(
    data: dict[str, Any],
    *,
    sources: Sources | None = None,
    allow_import: Sequence[str] = (),
    num_processes: int | None = None,
) -> Recipe:
    """Validate a resolved recipe dict; components are resolved against the registry.

    ``num_processes`` (default: :func:`launched_processes`) is the launch the recipe is checked for: the
    optimiser batch is ``batch_size x gradient_accumulation_steps x num_processes``.

    Raises:
        RecipeError: every problem found, one line each, naming its dotted key.
        PluginError: an installed plugin is broken.
    """
    sources = sources or Sources()
    allowed = _allowed_imports(allow_import)
    problems = _resolve_components(_raw_component_specs(data), sources, allowed)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_errors(exc, Recipe, (), sources, data) + problems) from None
    if not problems:
        problems = _resolve_components(_component_specs(recipe), sources, allowed)
    if not problems:
        problems = _cross_checks(recipe, num_processes or launched_processes())
    if problems:
        raise RecipeError(problems)
    return recipe
