"""``spa-recipe explain``: a component's or a recipe section's fields, types, defaults and help text.

The tables are read from the config models themselves (the one source of defaults and help), so they are
what validation accepts. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from spa_recipes.api import CAPABILITIES
from spa_recipes.errors import UserError
from spa_recipes.registry import KINDS, Registry
from spa_recipes.schema import COMPONENT_SECTIONS, ComponentSpec, Recipe

MAX_DEFAULT = 40  # characters of a default shown (a judge template is a paragraph)


def explain(target: str, registry: Registry) -> str:
    """The text ``spa-recipe explain TARGET`` prints.

    Args:
        target: ``KIND.NAME`` (``judge.pairrm``), a kind (``judge``: its components), or a recipe section
            (``models``, ``training.iteration``).
        registry: where components are looked up.

    Raises:
        UserError: no such component, kind or section (one line, with a suggestion where one fits).
    """
    kind, _, name = target.partition(".")
    if kind in KINDS:
        return _component(registry, kind, name) if name else _kind(registry, kind)
    section = _section(target)
    if section is not None:
        return section
    choices = [*KINDS, *_section_names(Recipe), *(f"{k}.{name}" for k in KINDS if name)]
    raise UserError(
        f"explain: unknown component kind or recipe section '{target}'{_suggest(target, choices)}; "
        f"kinds: {', '.join(KINDS)}"
    )


def field_rows(model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """``(name, type, default, help)`` of every field of ``model``, in declaration order."""
    return [
        (field.alias or name, type_name(field.annotation), _default(field), field.description or "")
        for name, field in model.model_fields.items()
    ]


def type_name(annotation: Any) -> str:
    """A type as a recipe author reads it: ``int | None``, ``Literal['sft', 'previous']``, ``list[str]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _component(registry: Registry, kind: str, name: str) -> str:
    component = registry.get(kind, name)
    if component is None:
        names = registry.names(kind)
        raise UserError(
            f"explain: no {kind} named '{name}'{_suggest(name, names)}; available: {', '.join(names) or 'none'}"
        )
    config = component.config
    offered = sorted(c for c in CAPABILITIES.get(kind, {}) if component.offers(c))
    lines = [
        f"{kind}.{name}: {component.help}",
        f"source: {component.source}",
        f"config: {config.__module__}.{config.__qualname__}{_first_line(config, ': ')}",
    ]
    if offered:
        lines.append(f"capabilities: {', '.join(offered)}")
    return "\n".join([*lines, "", _table(field_rows(config))])


def _kind(registry: Registry, kind: str) -> str:
    lines = [f"{kind}: explain one with `spa-recipe explain {kind}.NAME`"]
    lines += [f"  {c.name:<18} {c.help}  [{c.source}]" for c in registry.components(kind)]
    return "\n".join(lines)


def _section(target: str) -> str | None:
    """The table of a recipe section, or ``None`` when ``target`` names none."""
    model: Any = Recipe
    for part in target.split("."):
        field = model.model_fields.get(part) if _is_model(model) else None
        if field is None:
            return None
        model = _model_of(field.annotation)
    if model is ComponentSpec:
        kind = COMPONENT_SECTIONS.get(target, "?")
        return f"{target}: a component section (kind {kind}): {{name: ..., ...}}; see `spa-recipe explain {kind}`"
    if not _is_model(model):
        field_ = _leaf(target)
        return _table([(target, type_name(field_.annotation), _default(field_), field_.description or "")])
    return "\n".join([f"{target}: {_first_line(model) or model.__name__}", "", _table(field_rows(model))])


def _leaf(target: str) -> FieldInfo:
    parent, _, leaf = target.rpartition(".")
    model: Any = Recipe
    for part in filter(None, parent.split(".")):
        model = _model_of(model.model_fields[part].annotation)
    return model.model_fields[leaf]


def _first_line(model: type, prefix: str = "") -> str:
    """The first line of a class's own docstring (not an inherited one), after ``prefix``; '' when none."""
    doc = (model.__dict__.get("__doc__") or "").strip()
    return prefix + doc.splitlines()[0] if doc else ""


def _section_names(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        inner = _model_of(field.annotation)
        if _is_model(inner) and inner is not ComponentSpec:
            names.append(prefix + name)
            names += _section_names(inner, f"{prefix}{name}.")
    return names


def _model_of(annotation: Any) -> Any:
    """``X`` of ``X | None``; anything else as it is."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, bool):
        return str(value).lower()  # as YAML writes it
    text = "null" if value is None else repr(value) if isinstance(value, str) else str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_DEFAULT else text[: MAX_DEFAULT - 3] + "..."


def _table(rows: list[tuple[str, str, str, str]]) -> str:
    if not rows:
        return "(no fields)"
    rows = [("field", "type", "default", "help"), *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}".rstrip() for row in rows
    )


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
