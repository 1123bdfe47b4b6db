"""Recipe error messages: pydantic's validation errors turned into one line per problem, each naming the
file and line (or ``command line``) and the dotted key, with a "did you mean" for a misspelt key.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from spa_recipes.recipe.layers import Sources
from spa_recipes.schema import Section


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


def suggest(word: str, choices: Sequence[str]) -> str:
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


def format_errors(
    exc: ValidationError, model: type[BaseModel], prefix: Sequence[Any], sources: Sources, data: Any = None
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
            hint = suggest(str(err["loc"][-1]), choices)
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
