"""The component registry: recipe names -> (config model, builder).

A component is selected in a recipe by its registered name (``judge: {name: implicit, ...}``); the
rest of that section is validated against the component's own pydantic config model before anything
heavy starts. Every component, built-in or not, is declared through the entry-point group
``spa_recipes.plugins``, whose entry points name a function ``register(registry)``: the built-ins are the
entry points of the ``spa-recipes`` distribution itself (pyproject.toml), so every run takes the plugin path.

Builders are given as ``"module:attribute"`` strings (or callables) and imported only when a run
builds the component, so that validating a recipe never imports torch. A builder is called as
``builder(config, context)`` with its kind's context object (:mod:`spa_recipes.api`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pydantic import BaseModel

from spa_recipes.api import CAPABILITIES, KINDS, make_context, offers
from spa_recipes.errors import PluginError

__all__ = [
    "BUILTIN_ENTRY_POINTS",
    "DISTRIBUTION",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "Component",
    "Registry",
    "get_registry",
]

ENTRY_POINT_GROUP = "spa_recipes.plugins"
DISTRIBUTION = "spa-recipes"
# The built-in areas, each an entry point of this distribution (pyproject.toml); one missing is an error.
BUILTIN_ENTRY_POINTS = (
    "data",
    "generation",
    "judges",
    "loggers",
    "loss",
    "mixers",
    "noise",
    "pairs",
    "refiners",
    "rules",
    "score_transforms",
    "toyworld",
)


@dataclass(frozen=True)
class Component:
    """One registered component.

    Attributes:
        kind: one of :data:`KINDS`.
        name: the name a recipe uses to select it.
        config: pydantic model of its arguments (``extra="forbid"``); the one source of its defaults.
        builder: ``"module:attribute"`` or a callable; called as ``builder(config, context)``.
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
        """Build the component from its validated config and the runtime context of its kind.

        Args:
            config: the validated config.
            **context: the fields of the kind's context object (e.g. ``tokenizer`` for a model); the builder
                gets that object (:func:`spa_recipes.api.make_context`).

        Raises:
            TypeError: a keyword that the kind's context does not have.
            PluginError: the builder cannot be imported.
        """
        return self.resolve_builder()(config, make_context(self.kind, **context))

    def offers(self, capability: str) -> bool:
        """Whether the component declares ``capability`` (on its config class; see :func:`spa_recipes.api.offers`)."""
        return offers(self.config, capability)


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
        if not (isinstance(config, type) and issubclass(config, BaseModel)):
            raise PluginError(f"{self._source}: {kind} '{name}': config must be a pydantic model class, got {config!r}")
        unknown = sorted(set(getattr(config, "capabilities", ())) - set(CAPABILITIES.get(kind, {})))
        if unknown:
            known = ", ".join(sorted(CAPABILITIES.get(kind, {}))) or "none"
            raise PluginError(
                f"{self._source}: {kind} '{name}': {config.__name__} declares capabilities {unknown} unknown to kind "
                f"{kind} (known: {known})"
            )
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

    def load_builtins(self) -> None:
        """Load the built-in components: the entry points of the ``spa-recipes`` distribution.

        Raises:
            PluginError: the distribution is not installed (a source tree is used without ``pip install -e .``),
                or one of :data:`BUILTIN_ENTRY_POINTS` is missing (an install older than the source tree).
        """
        reinstall = "install the project: pip install -c constraints.txt -e ."
        try:
            dist = metadata.distribution(DISTRIBUTION)
        except metadata.PackageNotFoundError:
            raise PluginError(
                f"built-in components: the {DISTRIBUTION} distribution is not installed; {reinstall}"
            ) from None
        found = {ep.name: ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP}
        missing = [name for name in BUILTIN_ENTRY_POINTS if name not in found]
        if missing:
            raise PluginError(
                f"built-in components: entry points {', '.join(missing)} of the group {ENTRY_POINT_GROUP} are not "
                f"installed (the installed {DISTRIBUTION} is older than this source tree); {reinstall}"
            )
        for name in sorted(found):
            self._load(found[name], "built-in")

    def load_plugins(self) -> None:
        """Load the entry points of the group ``spa_recipes.plugins`` of every other distribution.

        Raises:
            PluginError: a plugin fails to import or to register; the message names the distribution
                and the entry point. A broken plugin never disappears silently.
        """
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            if _normalized(dist) != DISTRIBUTION:
                self._load(ep, f"plugin {dist} (entry point '{ep.name}' = {ep.value})")

    def _load(self, ep: metadata.EntryPoint, source: str) -> None:
        """Call one entry point's ``register(self)``, with its registrations attributed to ``source``."""
        self._source = source
        try:
            try:
                register = ep.load()
            except Exception as exc:  # any import-time failure of third-party code
                raise PluginError(f"{source} failed to import: {type(exc).__name__}: {exc}") from exc
            if not callable(register):
                raise PluginError(f"{source} is not a callable register(registry)")
            try:
                register(self)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(f"{source} failed to register: {type(exc).__name__}: {exc}") from exc
        finally:
            self._source = "built-in"


def _normalized(distribution: str) -> str:
    """A distribution name as packaging compares them (``spa_recipes`` and ``SPA-Recipes`` are ``spa-recipes``)."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry: built-ins plus installed plugins, all through entry points, loaded once."""
    global _REGISTRY
    if _REGISTRY is None:
        registry = Registry()
        registry.load_builtins()
        registry.load_plugins()
        _REGISTRY = registry
    return _REGISTRY
