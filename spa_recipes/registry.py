"""The component registry: recipe names -> (config model, builder).

A component is selected in a recipe by its registered name (``judge: {name: implicit, ...}``); the
rest of that section is validated against the component's own pydantic config model before anything
heavy starts. Built-in components are declared in :mod:`spa_recipes.builtins`; third-party packages add
theirs through the entry-point group ``spa_recipes.plugins``, whose entry points name a function
``register(registry)``.

Builders are given as ``"module:attribute"`` strings (or callables) and imported only when a run
builds the component, so that validating a recipe never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pydantic import BaseModel

from spa_recipes.errors import PluginError

KINDS = (
    "model",
    "dataset",
    "generator",
    "judge",
    "pair_selector",
    "noise_detector",
    "refiner",
    "loss",
    "evaluator",
    "logger",
)
ENTRY_POINT_GROUP = "spa_recipes.plugins"


@dataclass(frozen=True)
class Component:
    """One registered component.

    Attributes:
        kind: one of :data:`KINDS`.
        name: the name a recipe uses to select it.
        config: pydantic model of its arguments (``extra="forbid"``); the one source of its defaults.
        builder: ``"module:attribute"`` or a callable; called with the validated config.
        source: ``"built-in"`` or ``"plugin <distribution> (<entry point>)"``.
        help: one line shown by ``spa-recipe ls``.
    """

    kind: str
    name: str
    config: type[BaseModel]
    builder: str | Callable[..., Any]
    source: str = "built-in"
    help: str = ""

    def resolve_builder(self) -> Callable[..., Any]:
        """Import and return the builder callable."""
        if callable(self.builder):
            return self.builder
        module_name, _, attr = self.builder.partition(":")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"{self.kind} '{self.name}' ({self.source}): cannot load {self.builder}: {exc}") from exc

    def build(self, config: BaseModel, **context: Any) -> Any:
        """Build the component from its validated config (plus runtime context such as a tokenizer)."""
        return self.resolve_builder()(config, **context)


class Registry:
    """Components by kind and name."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self._source = "built-in"

    def register(
        self,
        kind: str,
        name: str,
        *,
        config: type[BaseModel],
        builder: str | Callable[..., Any],
        help: str = "",
    ) -> None:
        """Register a component; a name may be taken only once per kind.

        Raises:
            PluginError: unknown kind, or a name that is already registered.
        """
        if kind not in self._components:
            raise PluginError(f"{self._source}: unknown component kind '{kind}' (kinds: {', '.join(KINDS)})")
        existing = self._components[kind].get(name)
        if existing is not None:
            raise PluginError(f"{self._source}: {kind} '{name}' is already registered by {existing.source}")
        self._components[kind][name] = Component(kind, name, config, builder, self._source, help)

    def get(self, kind: str, name: str) -> Component | None:
        return self._components[kind].get(name)

    def names(self, kind: str) -> list[str]:
        return sorted(self._components[kind])

    def components(self, kind: str) -> list[Component]:
        return [self._components[kind][n] for n in self.names(kind)]

    def load_plugins(self) -> None:
        """Load every entry point of the group ``spa_recipes.plugins``.

        Raises:
            PluginError: a plugin fails to import or to register; the message names the distribution
                and the entry point. A broken plugin never disappears silently.
        """
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            self._source = f"plugin {dist} (entry point '{ep.name}' = {ep.value})"
            try:
                try:
                    register = ep.load()
                except Exception as exc:  # any import-time failure of third-party code
                    raise PluginError(f"{self._source} failed to import: {type(exc).__name__}: {exc}") from exc
                if not callable(register):
                    raise PluginError(f"{self._source} is not a callable register(registry)")
                try:
                    register(self)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(f"{self._source} failed to register: {type(exc).__name__}: {exc}") from exc
            finally:
                self._source = "built-in"


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry: built-ins plus installed plugins, loaded once."""
    global _REGISTRY
    if _REGISTRY is None:
        from spa_recipes.builtins import register_builtins

        registry = Registry()
        register_builtins(registry)
        registry.load_plugins()
        _REGISTRY = registry
    return _REGISTRY
