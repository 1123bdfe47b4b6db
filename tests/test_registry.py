"""The component registry: built-ins, duplicate names, and plugins loaded from real entry points."""

from __future__ import annotations

import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from spa_recipes import registry as registry_module
from spa_recipes.api import ModelContext, RefinerContext
from spa_recipes.errors import PluginError
from spa_recipes.pairs_config import PairSelectorConfig
from spa_recipes.registry import ENTRY_POINT_GROUP, KINDS, Registry, get_registry
from spa_recipes.toyworld.config import GoldJudgeConfig


def builtin_registry() -> Registry:
    registry = Registry()
    registry.load_builtins()
    return registry


def make_distribution(folder: Path, dist: str, module: str, source: str, entry_point: str = "main") -> None:
    """A minimal installed distribution in ``folder``: a ``*.dist-info`` with METADATA and entry_points.txt."""
    info = folder / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_point} = {module}:register\n")
    (folder / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def only_plugins_in(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Make ``load_plugins`` see only the distributions in one folder (not whatever the venv has installed)."""

    def narrow(folder: Path) -> None:
        monkeypatch.syspath_prepend(str(folder))
        found = [ep for d in metadata.distributions(path=[str(folder)]) for ep in d.entry_points]
        monkeypatch.setattr(
            registry_module.metadata,
            "entry_points",
            lambda group: metadata.EntryPoints(ep for ep in found if ep.group == group),
        )

    return narrow


def test_builtins_cover_every_kind_with_strict_configs() -> None:
    registry = builtin_registry()
    for kind in KINDS:
        components = registry.components(kind)
        assert components, f"no built-in {kind}"
        assert [c.name for c in components] == sorted(c.name for c in components)
        for comp in components:
            assert comp.source == "built-in" and comp.help
            assert comp.config.model_config.get("extra") == "forbid", f"{kind} {comp.name}"
            assert isinstance(comp.builder, str) and ":" in comp.builder
            try:
                comp.config.model_validate({})  # every argument has a default, but a few that must be given
            except ValidationError as exc:
                for err in exc.errors():
                    required = err["type"] == "missing"  # e.g. a data file's path
                    optional_package = err["type"] == "value_error" and "needs the" in err["msg"]  # e.g. wandb
                    assert required or optional_package, f"{kind} {comp.name}: {err}"
    with pytest.raises(ValidationError):
        registry.get("judge", "implicit").config.model_validate({"bta": 1})


def test_duplicate_name_and_unknown_kind_are_errors() -> None:
    registry = builtin_registry()
    with pytest.raises(PluginError, match="pair_selector 'min_max' is already registered by built-in"):
        registry.register("pair_selector", "min_max", config=PairSelectorConfig, builder="x:y")
    with pytest.raises(PluginError, match="unknown component kind 'judges'"):
        registry.register("judges", "mine", config=GoldJudgeConfig, builder="x:y")
    # The same name under another kind is fine.
    registry.register("judge", "min_max", config=GoldJudgeConfig, builder="x:y")
    assert "min_max" in registry.names("judge")


def test_builders_are_resolved_lazily_with_a_named_error() -> None:
    registry = Registry()
    registry.register("judge", "ghost", config=GoldJudgeConfig, builder="spa_recipes.no_such_module:Judge")
    with pytest.raises(PluginError, match=r"judge 'ghost' \(built-in\): cannot load spa_recipes.no_such_module"):
        registry.get("judge", "ghost").build(GoldJudgeConfig())

    def builder(config: BaseModel, context: object) -> tuple[BaseModel, object]:
        return config, context

    registry.register("model", "callable", config=GoldJudgeConfig, builder=builder)
    config = GoldJudgeConfig()
    assert registry.get("model", "callable").build(config, tokenizer="tok") == (config, ModelContext(tokenizer="tok"))
    # A keyword that the kind's context does not have is an error naming the kind and the context's fields.
    with pytest.raises(TypeError, match=r"model context has no world \(fields: tokenizer\)"):
        registry.get("model", "callable").build(config, tokenizer="tok", world=None)


def test_process_registry_is_built_once() -> None:
    assert get_registry() is get_registry()
    assert get_registry().get("pair_selector", "min_max") is not None


def test_plugin_registers_with_its_source(tmp_path: Path, only_plugins_in) -> None:  # noqa: ANN001
    make_distribution(
        tmp_path,
        "good-plugin",
        "good_spa_plugin",
        """\
        from pydantic import BaseModel, ConfigDict

        class Config(BaseModel):
            model_config = ConfigDict(extra="forbid")
            strength: float = 1.0

        def build_mine(config, context):
            return ("mine", config.strength, context)

        def register(registry):
            registry.register("refiner", "mine", config=Config, builder="good_spa_plugin:build_mine", help="mine")
    """,
        entry_point="good",
    )
    only_plugins_in(tmp_path)
    registry = builtin_registry()
    registry.load_plugins()
    comp = registry.get("refiner", "mine")
    assert comp is not None
    assert comp.source == "plugin good-plugin (entry point 'good' = good_spa_plugin:register)"
    assert comp.build(comp.config(strength=2.0)) == ("mine", 2.0, RefinerContext())
    # Built-ins registered after plugins are loaded are no longer attributed to the plugin.
    registry.register("refiner", "later", config=GoldJudgeConfig, builder="x:y")
    assert registry.get("refiner", "later").source == "built-in"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "raise ImportError('needs the package frobnicate')\n",
            "failed to import: ImportError: needs the package frobnicate",
        ),
        ("import spa_recipes.no_such_module\n", "failed to import: ModuleNotFoundError"),
        ("register = 3\n", "is not a callable register(registry)"),
        ("def register(registry):\n    raise RuntimeError('boom')\n", "failed to register: RuntimeError: boom"),
        (
            "from spa_recipes.pairs_config import PairSelectorConfig\n"
            "def register(registry):\n"
            "    registry.register('pair_selector', 'min_max', config=PairSelectorConfig, builder='x:y')\n",
            "pair_selector 'min_max' is already registered by built-in",
        ),
        (
            "def register(registry):\n    registry.register('judgee', 'x', config=None, builder='x:y')\n",
            "unknown component kind 'judgee'",
        ),
    ],
    ids=["import_error", "missing_module", "not_callable", "register_raises", "duplicate", "unknown_kind"],
)
def test_broken_plugin_is_an_error_naming_it(tmp_path: Path, only_plugins_in, source: str, expected: str) -> None:  # noqa: ANN001
    module = f"broken_{tmp_path.name[-12:].replace('-', '_')}"  # a fresh module name per case
    make_distribution(tmp_path, "broken-plugin", module, source, entry_point="brk")
    only_plugins_in(tmp_path)
    registry = builtin_registry()
    with pytest.raises(PluginError) as info:
        registry.load_plugins()
    message = str(info.value)
    assert f"plugin broken-plugin (entry point 'brk' = {module}:register)" in message
    assert expected in message
