"""Loading a recipe: YAML layers, overrides, interpolation, then validation with every problem at once.

Precedence: component defaults < base recipes (``extends``) < the recipe < command-line overrides.
When a layer selects a different component for a section (``judge.name=pairrm``), the arguments given to
the previous component by lower layers are dropped rather than carried over to the new one.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import GrammarParseError, OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from spa_recipes.errors import RecipeError
from spa_recipes.paths import SHIPPED_RECIPES
from spa_recipes.registry import Registry, get_registry
from spa_recipes.schema import COMPONENT_SECTIONS, ComponentSpec, Recipe, Section

ALLOW_IMPORT_ENV = "SPA_RECIPES_ALLOW_IMPORT"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$")


# Layers ---------------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key written twice in one mapping (PyYAML would keep the last silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice in this mapping", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Sources:
    """Where each dotted key was last set: ``file:line`` or ``command line``."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}

    def add_file(self, path: Path, text: str) -> None:
        try:
            node = yaml.compose(text)
        except yaml.YAMLError:
            return
        self._walk(node, "", str(path))

    def _walk(self, node: Any, prefix: str, file: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                dotted = f"{prefix}.{key.value}" if prefix else str(key.value)
                self.where[dotted] = f"{file}:{key.start_mark.line + 1}"
                self._walk(value, dotted, file)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                dotted = f"{prefix}.{i}"
                self.where[dotted] = f"{file}:{value.start_mark.line + 1}"
                self._walk(value, dotted, file)

    def locate(self, dotted: str) -> str | None:
        parts = dotted.split(".")
        while parts:
            hit = self.where.get(".".join(parts))
            if hit:
                return hit
            parts.pop()
        return None


def _read_layer(path: Path, sources: _Sources, chain: tuple[Path, ...]) -> DictConfig:
    """One YAML file with its ``extends`` bases merged under it."""
    if path in chain:
        raise RecipeError(f"{path}: 'extends' cycle: {' -> '.join(str(p) for p in (*chain, path))}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        where = f"{chain[-1]}: extends" if chain else "recipe"
        raise RecipeError(f"{where}: file not found: {path}") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path}{pos}: YAML syntax error: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    bases = data.pop("extends", None)
    if isinstance(bases, str):
        bases = [bases]
    if bases is not None and not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise RecipeError(f"{path}: extends: expected a file name or a list of file names")
    merged = OmegaConf.create({})
    for base in bases or []:
        merged = _merge(merged, _read_layer(_base_path(path, base), sources, (*chain, path)))
    sources.add_file(path, text)
    try:
        layer = OmegaConf.create(data)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        what = f"{key}: bad interpolation: " if isinstance(exc, GrammarParseError) and key else ""
        raise RecipeError(f"{path}: {what}{str(exc).splitlines()[0]}") from None
    return _merge(merged, layer)


def _base_path(recipe: Path, base: str) -> Path:
    """A base recipe next to the recipe, else among the shipped recipes (so a copied recipe still finds it)."""
    local = (recipe.parent / base).resolve()
    shipped = (SHIPPED_RECIPES / base).resolve()
    return shipped if not local.exists() and shipped.exists() else local


def _merge(base: DictConfig, layer: DictConfig) -> DictConfig:
    """Merge ``layer`` over ``base``; a section that switches component forgets the old component's args."""
    for section in COMPONENT_SECTIONS:
        new = OmegaConf.select(layer, f"{section}.name", default=None, throw_on_resolution_failure=False)
        old = OmegaConf.select(base, f"{section}.name", default=None, throw_on_resolution_failure=False)
        if new is not None and old is not None and new != old:
            parent, _, key = section.rpartition(".")
            container = OmegaConf.select(base, parent) if parent else base
            if isinstance(container, DictConfig) and key in container:
                del container[key]
    return OmegaConf.merge(base, layer)  # type: ignore[return-value]


def _apply_overrides(cfg: DictConfig, overrides: Sequence[str], sources: _Sources) -> DictConfig:
    """``key.sub=value`` (value parsed as YAML) and ``~key`` (delete)."""
    deletions = []
    for override in overrides:
        if override.startswith("~"):
            key = override[1:]
            if not _KEY.match(key):
                raise RecipeError(f"override '{override}': expected ~dotted.key")
            deletions.append(key)
            continue
        key, eq, raw = override.partition("=")
        key = key.strip()
        if not eq or not _KEY.match(key):
            raise RecipeError(f"override '{override}': expected key.sub=value or ~key.sub")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", exc)
            raise RecipeError(f"override '{override}': value is not valid YAML: {problem}") from None
        layer: Any = value
        for part in reversed(key.split(".")):
            layer = {part: layer}
        try:
            cfg = _merge(cfg, OmegaConf.create(layer))
        except OmegaConfBaseException as exc:
            raise RecipeError(f"override '{override}': {str(exc).splitlines()[0]}") from None
        sources.where[key] = "command line"
    for key in deletions:
        parent, _, leaf = key.rpartition(".")
        container = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        if not isinstance(container, DictConfig) or leaf not in container:
            raise RecipeError(f"override '~{key}': no such key in the recipe")
        del container[leaf]
    return cfg


def _resolve(cfg: DictConfig) -> dict[str, Any]:
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        message = str(exc).splitlines()[0]
        raise RecipeError(f"{key or 'recipe'}: bad interpolation: {message}") from None
    assert isinstance(data, dict)
    return data


# Validation -----------------------------------------------------------------------------------------


def _dotted(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _model_at(model: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model class that holds the last element of ``loc``."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = _field(current, str(part))
        if field is None:
            return None
        current = _first_model(field.annotation)
        if current is None:
            return None
    return current


def _field(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _first_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def _keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_union_tag(part: Any, data: Any) -> bool:
    """Whether ``part`` of an error location is pydantic's name of a union member, not a key of the data."""
    if not isinstance(part, str) or not ("[" in part or part in {"int", "float", "str", "bool", "dict", "list"}):
        return False
    return not (isinstance(data, dict) and part in data)


def _plain_errors(exc: ValidationError, data: Any) -> list[dict[str, Any]]:
    """Pydantic's errors with union-member tags taken out of their locations, one error per problem.

    A value that fits no member of a union (``int | float | list[...]``) gives one error per member. When a
    member went deeper into the value (element 1 of a list), only those deeper errors are kept; otherwise the
    members collapse into one ``expected a | b`` error.
    """
    errors = []
    unions: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for err in exc.errors():
        loc: list[Any] = []
        tags: list[str] = []
        base: tuple[Any, ...] | None = None
        node = data
        for part in err["loc"]:
            if _is_union_tag(part, node):
                base = tuple(loc) if base is None else base
                tags.append(part)
                continue
            loc.append(part)
            node = node[part] if isinstance(node, dict | list) and _has(node, part) else None
        err = {**err, "loc": tuple(loc), "tags": tags}
        if base is None:
            errors.append(err)
        else:
            unions.setdefault(base, []).append(err)
    for base, members in unions.items():
        deeper = [e for e in members if len(e["loc"]) > len(base)]
        # A member that went inside the value explains the problem better than "not an int".
        by_loc: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for err in deeper or members:
            by_loc.setdefault(err["loc"], []).append(err)
        for same in by_loc.values():
            if len(same) == 1:
                errors.append(same[0])
                continue
            inner = [e["tags"][1:] if deeper else e["tags"][:1] for e in same]
            tags = " | ".join(dict.fromkeys(t for ts in inner for t in ts))
            errors.append({**same[0], "type": "union", "msg": f"expected {tags}"})
    return errors


def _has(node: dict[Any, Any] | list[Any], part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(part, int) and 0 <= part < len(node)


def _format_errors(
    exc: ValidationError, model: type[BaseModel], prefix: Sequence[Any], sources: _Sources, data: Any = None
) -> list[str]:
    lines = []
    for err in _plain_errors(exc, data):
        loc = [*prefix, *err["loc"]]
        dotted = _dotted(loc)
        where = sources.locate(dotted)
        head = f"{where}: {dotted}" if where else dotted
        kind = err["type"]
        if kind == "extra_forbidden":
            holder = _model_at(model, err["loc"])
            choices = _keys(holder) if holder else []
            if holder is not None and not issubclass(holder, Section):
                choices.append("name")  # a component section's selector
            hint = _suggest(str(err["loc"][-1]), choices)
            lines.append(f"{head}: unknown key{hint}")
        elif kind == "missing":
            lines.append(f"{head}: required key is missing")
        else:
            given = err.get("input")
            shown = f" (got {given!r})"
            if isinstance(given, dict | list) and (kind != "union" or len(shown) > 80):
                shown = ""  # a whole section is no help; a short list given for a union member is
            message = err["msg"]
            if kind == "value_error":  # our own validators' messages say what is wrong in full
                message, shown = message.removeprefix("Value error, "), ""
            lines.append(f"{head}: {message}{shown}")
    return lines


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
        return None, f"{dotted}.name: unknown {kind} '{name}'{_suggest(name, names)}; available: {', '.join(names)}"
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


def _resolve_components(
    specs: list[tuple[str, str, ComponentSpec]], sources: _Sources, allowed: list[str]
) -> list[str]:
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
            problems += _format_errors(exc, component.config, dotted.split("."), sources, spec.raw_args())
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
    lam = getattr(recipe.noise_detector.args, "lambda_", None)
    if isinstance(lam, list) and len(lam) != t and t > 0:
        problems.append(f"noise_detector.lambda: {len(lam)} values for iterations={t}; give one value or {t}")
    sft_stage = recipe.training.sft is not None
    if recipe.models.sft is None and not sft_stage:
        problems.append("models.sft: required (the SFT model pi_init), unless training.sft makes it")
    if recipe.models.sft is not None and sft_stage:
        problems.append("training.sft: set, but models.sft names pi_init already; remove one of them")
    if sft_stage and recipe.models.base is None:
        problems.append("models.base: required by training.sft (the model it fine-tunes)")
    if sft_stage and not getattr(recipe.data.args, "provides_demonstrations", False):
        problems.append(f"training.sft: data source '{recipe.data.name}' has no demonstrations for an sft stage")
    if recipe.iterations > 0 and recipe.training.seed is None and recipe.judge.name == "implicit":
        ref = recipe.judge.args.reference
        if ref == "sft":
            problems.append(
                "judge.reference: 'sft' with no seed stage makes the first iteration's policy equal its reference "
                "(every reward is 0); set training.seed or judge.reference"
            )
    return problems


def _flagging_batch(recipe: Recipe, num_processes: int) -> list[str]:
    """A bottom-K% detector over the optimiser batch must be able to flag at least one pair."""
    from spa_recipes.builtins import BatchQuantileConfig

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
    sources: _Sources | None = None,
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
    sources = sources or _Sources()
    allowed = _allowed_imports(allow_import)
    problems = _resolve_components(_raw_component_specs(data), sources, allowed)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(_format_errors(exc, Recipe, (), sources, data) + problems) from None
    if not problems:
        problems = _resolve_components(_component_specs(recipe), sources, allowed)
    if not problems:
        problems = _cross_checks(recipe, num_processes or launched_processes())
    if problems:
        raise RecipeError(problems)
    return recipe


def load_recipe(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    *,
    allow_import: Sequence[str] = (),
    num_processes: int | None = None,
) -> Recipe:
    """Load, merge, override, resolve and validate a recipe file.

    Args:
        path: the recipe YAML.
        overrides: ``key.sub=value`` or ``~key`` strings, applied last.
        allow_import: module prefixes whose ``module:Class`` paths a recipe may name as components.
        num_processes: the launch to check the batch layout for (default: this launch's ``WORLD_SIZE``).

    Raises:
        RecipeError: one line per problem, each naming the file, line or dotted key.
        PluginError: an installed plugin fails to import or register.
    """
    sources = _Sources()
    cfg = _read_layer(Path(path).resolve(), sources, ())
    cfg = _apply_overrides(cfg, overrides, sources)
    return validate(_resolve(cfg), sources=sources, allow_import=allow_import, num_processes=num_processes)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe with every default, components expanded (what ``spa-recipe show`` prints)."""

    def expand(value: Any) -> Any:
        if isinstance(value, ComponentSpec):
            return {"name": value.name, **value.args.model_dump(by_alias=True, mode="json")}
        if isinstance(value, BaseModel):
            return {(f.alias or n): expand(getattr(value, n)) for n, f in type(value).model_fields.items()}
        if isinstance(value, list):
            return [expand(v) for v in value]
        return value

    return expand(recipe)
