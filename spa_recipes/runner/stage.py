"""What a stage is: its kind's declaration, its node in the graph, and the context it runs with.

Each stage kind is one module of :mod:`spa_recipes.stages` that declares a :class:`StageKind`: its input
roles, its named outputs, the recipe values it reads (dotted keys, as in a recipe file) and whether every
process takes part. The graph (:mod:`spa_recipes.runner.graph`) places kinds as :class:`Stage` nodes and
wires their inputs; a stage's fingerprint is derived from its declaration alone (the values it reads, its
inputs' fingerprints), so changing one recipe value re-runs exactly the stages that read it and those
downstream. The runner hands a stage a :class:`StageContext` whose recipe is a :class:`RecipeView`: reading
a value the kind did not declare is an error, so a declaration cannot drift from the code that reads it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from spa_recipes.schema import ComponentSpec, Recipe


@dataclass(frozen=True)
class StageKind:
    """A stage kind's declaration.

    Attributes:
        name: the kind (``generate``), recorded in the manifest.
        run: ``run(ctx: StageContext) -> summary dict``.
        inputs: the input roles it takes (``prompts``, ``policy``, ...); the graph wires each to an upstream
            output or a model path, or leaves an optional one out.
        outputs: output name -> file or folder in the stage directory (``{index}`` in it: one per iteration).
        reads: the recipe values it reads, as dotted keys (``training.iteration.max_length``); a key names
            its whole subtree (``generation``: every generation argument).
        per_iteration: keys among ``reads`` whose value may be a list with one entry per iteration: the
            fingerprint of iteration i takes entry i only.
        scratch: outputs only the stage itself reads, to resume (shards, training checkpoints): not
            checksummed, and removed once the stage has finished (unless ``run.keep_checkpoints``).
        collective: every process takes part (generation, judging, training); otherwise main alone runs it.
    """

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    inputs: tuple[str, ...] = ()
    outputs: Mapping[str, str] = field(default_factory=dict)
    reads: tuple[str, ...] = ()
    per_iteration: tuple[str, ...] = ()
    scratch: tuple[str, ...] = ()
    collective: bool = False


@dataclass(frozen=True)
class Output:
    """A named output of an upstream stage (``index``: which of a per-iteration output)."""

    stage: str
    name: str
    index: int | None = None

    def __str__(self) -> str:
        return f"{self.stage}.{self.name}" + (f"[{self.index}]" if self.index is not None else "")


# What an input role is wired to: an upstream output, or (for models given in the recipe) a path or hub id.
Source = Output | str


@dataclass
class Stage:
    """One node of the graph: a kind placed at an iteration, with its inputs wired.

    Attributes:
        name: folder name in the run directory (``iter2_train``).
        kind: its kind's declaration.
        iteration: SPA iteration (0 for stages before the loop).
        inputs: role -> upstream output or model path, for the roles the graph wired.
        after: stages it reads as a whole (the report reads the run), beside its inputs.
        sizes: human-readable data sizes for ``spa-recipe graph``.
        fingerprint: derived from the declaration by :func:`fingerprint_stages`.
    """

    name: str
    kind: StageKind
    iteration: int = 0
    inputs: dict[str, Source] = field(default_factory=dict)
    after: list[str] = field(default_factory=list)
    sizes: str = ""
    fingerprint: str = ""

    def out(self, name: str, index: int | None = None) -> Output:
        """One of this stage's declared outputs, to wire into a later stage."""
        if name not in self.kind.outputs:
            raise KeyError(f"stage kind '{self.kind.name}' declares no output '{name}'")
        return Output(self.name, name, index)

    def input_name(self, role: str) -> str | None:
        """What an input role is wired to, as a name: the upstream stage, or the model path the recipe gives."""
        source = self.inputs.get(role)
        return source.stage if isinstance(source, Output) else source

    def upstream(self) -> list[str]:
        """The stages this one reads from, in role order."""
        return list(dict.fromkeys([*(s.stage for s in self.inputs.values() if isinstance(s, Output)), *self.after]))


class UndeclaredRead(RuntimeError):
    """A stage read a recipe value its kind does not declare (a bug in the stage module, not a user error)."""


def _covers(declared: str, key: str) -> bool:
    return key == declared or key.startswith(declared + ".")


class RecipeView:
    """The recipe as one stage kind may read it: declared keys (and their subtrees) only.

    Attribute access follows the recipe's shape; a component section's ``args`` is transparent (its
    arguments sit beside ``name`` in a recipe file, so ``judge.args.beta`` is the key ``judge.beta``).
    """

    def __init__(self, value: Any, kind: StageKind, key: str = "") -> None:
        self._value, self._kind, self._key = value, kind, key

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        value = getattr(self._value, attr)
        if isinstance(self._value, ComponentSpec) and attr == "args":
            return RecipeView(value, self._kind, self._key)
        field = type(self._value).model_fields.get(attr) if isinstance(self._value, BaseModel) else None
        name = field.alias if field is not None and field.alias else attr  # lambda_ is the key lambda
        key = f"{self._key}.{name}" if self._key else name
        if any(_covers(declared, key) for declared in self._kind.reads):
            return value
        if any(declared.startswith(key + ".") for declared in self._kind.reads):
            return RecipeView(value, self._kind, key)  # on the way to a declared key
        raise UndeclaredRead(f"stage kind '{self._kind.name}' reads the recipe value '{key}' but does not declare it")

    def __repr__(self) -> str:
        return f"RecipeView({self._key or 'recipe'}, reads={list(self._kind.reads)})"


def declared_values(recipe: dict[str, Any], kind: StageKind, iteration: int) -> dict[str, Any]:
    """The resolved recipe's values a kind reads (per-iteration keys narrowed to ``iteration``)."""
    values = {}
    for key in kind.reads:
        value = _at(recipe, key)
        for narrowed in kind.per_iteration:
            if _covers(key, narrowed) and iteration > 0:
                value = _narrow(value, narrowed[len(key) + 1 :] if narrowed != key else "", iteration)
        values[key] = value
    if any(_covers("data", key) for key in kind.reads):
        values["data file"] = _file_identity(recipe["data"])
    return values


def _at(tree: Any, key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _narrow(value: Any, rest: str, iteration: int) -> Any:
    """``value`` with the list at sub-key ``rest`` replaced by its entry for ``iteration``."""
    if not rest:
        return value[iteration - 1] if isinstance(value, list) else value
    if not isinstance(value, dict):
        return value
    head, _, tail = rest.partition(".")
    return {**value, head: _narrow(value.get(head), tail, iteration)} if head in value else value


def _file_identity(data: dict[str, Any]) -> list[int] | None:
    """Size and modification time of a local data file, so that editing it in place re-runs what read it."""
    from spa_recipes.data.files import find_data_file

    path = data.get("path")
    found = find_data_file(path) if isinstance(path, str) else None
    if found is None:
        return None
    stat = found.stat()
    return [stat.st_size, stat.st_mtime_ns]


def fingerprint_stages(stages: list[Stage], recipe: dict[str, Any]) -> None:
    """Set each stage's fingerprint: its name, kind, iteration, declared values and wired inputs."""
    by_name: dict[str, Stage] = {}
    for stage in stages:
        inputs = {
            role: [by_name[s.stage].fingerprint, s.name, s.index] if isinstance(s, Output) else s
            for role, s in stage.inputs.items()
        }
        payload = {
            "name": stage.name,
            "kind": stage.kind.name,
            "iteration": stage.iteration,
            "reads": declared_values(recipe, stage.kind, stage.iteration),
            "inputs": inputs,
            "after": {name: by_name[name].fingerprint for name in stage.after},
        }
        stage.fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
        by_name[stage.name] = stage


class StageContext:
    """What a stage's ``run`` gets: its node, its declared recipe values, its inputs and outputs.

    Attributes:
        stage: the node being run.
        recipe: the recipe, restricted to the kind's declared keys.
        out: the stage's folder.
    """

    def __init__(
        self, stage: Stage, recipe: Recipe, run_dir: Path, graph: dict[str, Stage], cache: dict[str, Any]
    ) -> None:
        self.stage = stage
        self.recipe: Any = RecipeView(recipe, stage.kind)
        self.run_dir = run_dir
        self.out = run_dir / stage.name
        self.graph = graph  # every stage of the run by name, in execution order
        self._cache = cache  # per-process objects shared by stages (the data source)

    def has_input(self, role: str) -> bool:
        self._declared(role)
        return role in self.stage.inputs

    def input(self, role: str) -> Path:
        """The file or folder an input role is wired to."""
        self._declared(role)
        source = self.stage.inputs.get(role)
        if not isinstance(source, Output):
            raise KeyError(f"stage {self.stage.name}: input '{role}' is not wired to a stage output")
        return output_path(self.run_dir, source, self.graph[source.stage].kind)

    def model(self, role: str) -> str | None:
        """A model input: an upstream stage's saved model folder, or the path or hub id the recipe gives."""
        self._declared(role)
        source = self.stage.inputs.get(role)
        if isinstance(source, Output):
            return str(output_path(self.run_dir, source, self.graph[source.stage].kind))
        return source

    def output(self, name: str, index: int | None = None) -> Path:
        """Where this stage writes one of its declared outputs."""
        return output_path(self.run_dir, self.stage.out(name, index), self.stage.kind)

    @property
    def seed(self) -> int:
        """A per-stage seed derived from the run seed, stable across processes and resumes."""
        return (self.recipe.run.seed * 1_000_003 + sum(map(ord, self.stage.name)) * 7919) % (2**31 - 1)

    @property
    def source(self) -> Any:
        """The data source component (built once per process; the kind must declare ``data``)."""
        spec = self.recipe.data
        if "source" not in self._cache:
            self._cache["source"] = build_component(spec, "dataset")
        return self._cache["source"]

    def build(self, spec: ComponentSpec, kind: str, args: BaseModel | None = None, **context: Any) -> Any:
        """Build a component section through the registry (with ``args`` in place of its own, if given)."""
        return build_component(spec, kind, args, **context)

    def _declared(self, role: str) -> None:
        if role not in self.stage.kind.inputs:
            raise KeyError(f"stage kind '{self.stage.kind.name}' declares no input '{role}'")


def output_path(run_dir: Path, output: Output, kind: StageKind) -> Path:
    """The path of a stage output in a run directory."""
    return run_dir / output.stage / kind.outputs[output.name].format(index=output.index)


def build_component(spec: ComponentSpec, kind: str, args: BaseModel | None = None, **context: Any) -> Any:
    """Build a validated component section through the registry."""
    from spa_recipes.registry import get_registry

    component = get_registry().get(kind, spec.name)
    assert component is not None, f"{kind} '{spec.name}' was validated but is not registered"
    return component.build(spec.args if args is None else args, **context)
