"""Recipe layers: YAML files (strict: a key written twice is an error), ``extends`` bases, command-line
overrides and interpolation, merged into one plain dict, with where each key was set.

Precedence: component defaults < base recipes (``extends``) < the recipe < command-line overrides.
When a layer selects a different component for a section (``judge.name=pairrm``), the arguments given to
the previous component by lower layers are dropped rather than carried over to the new one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import GrammarParseError, OmegaConfBaseException

from spa_recipes.errors import RecipeError
from spa_recipes.paths import SHIPPED_RECIPES
from spa_recipes.schema import COMPONENT_SECTIONS

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*$")


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


class Sources:
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


def read_layer(path: Path, sources: Sources, chain: tuple[Path, ...]) -> DictConfig:
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
        merged = _merge(merged, read_layer(_base_path(path, base), sources, (*chain, path)))
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


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], sources: Sources) -> DictConfig:
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


def resolve_interpolations(cfg: DictConfig) -> dict[str, Any]:
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        message = str(exc).splitlines()[0]
        raise RecipeError(f"{key or 'recipe'}: bad interpolation: {message}") from None
    assert isinstance(data, dict)
    return data
