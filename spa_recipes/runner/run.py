"""Executing the stage graph in a run directory, resuming whatever was finished.

Run directory layout::

    runs/<name>/recipe.yaml      the resolved recipe (every default)
    runs/<name>/manifest.json    per stage: fingerprint, status, times, summary
    runs/<name>/metrics.jsonl    one line per finished stage (its summary), from the jsonl logger
    runs/<name>/run.log          the log of every invocation
    runs/<name>/<stage>/         one folder per stage; `.fingerprint` when started, `.complete` when finished
    runs/<name>/results.json     written by the report stage
    runs/<name>/.lock            held by the run in progress (one writer at a time: runner/lock.py)

A stage is skipped when the manifest says it finished with the same fingerprint and its folder carries
the completion marker. A stage folder with the same fingerprint but no marker was cut off: the stage runs
again and continues from its own finished pieces (generation and judging shards, training checkpoints).
A folder with another fingerprint is removed first.

Multi-process runs (``torchrun --nproc_per_node N -m spa_recipes run ...`` or ``accelerate launch``): the
process group is initialised once here. The main process alone decides what runs (and tells the others),
keeps the manifest, markers and stage outputs, and logs; stages in ``COLLECTIVE_KINDS`` run on every
process (generation and judging split by shard, training data-parallel), the others on main alone while
the rest wait. A barrier closes every stage, so no process reads an output before main has written it.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spa_recipes.atomic import MARKER, is_complete, loads_json, write_json_atomic, write_text_atomic
from spa_recipes.distributed import (
    barrier,
    broadcast,
    init_distributed,
    is_main_process,
    shutdown_distributed,
    world_size,
)
from spa_recipes.progress import set_progress
from spa_recipes.recipe import recipe_to_dict
from spa_recipes.registry import get_registry
from spa_recipes.runner.graph import Stage, build_graph
from spa_recipes.runner.lock import LOCK_FILE, RunDirLocked
from spa_recipes.runner.lock import acquire as acquire_lock
from spa_recipes.schema import ComponentSpec, Recipe

log = logging.getLogger("spa_recipes")
FINGERPRINT_FILE = ".fingerprint"
# Which module runs each stage kind: spa_recipes.stages.<module>.run(ctx, stage, out_dir) -> summary dict.
STAGE_MODULES = {
    "split": "split",
    "sft": "sft",
    "dpo": "dpo",
    "generate": "generate",
    "judge": "judge",
    "judge_train": "judge_train",
    "pairs": "pairs",
    "eval_baseline": "evaluate",
    "eval": "evaluate",
    "report": "report",
}
# Stage kinds every process takes part in; the rest run on the main process alone.
COLLECTIVE_KINDS = frozenset({"sft", "dpo", "generate", "judge", "eval_baseline", "eval"})


@dataclass
class RunContext:
    """What every stage needs: the recipe, the run directory, the graph, and built components."""

    recipe: Recipe
    run_dir: Path
    stages: dict[str, Stage]
    _cache: dict[str, Any] = field(default_factory=dict)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def model_path(self, ref: str | None) -> str | None:
        """A stage name resolves to that stage's saved model; anything else is a hub id or a folder."""
        if ref is not None and ref in self.stages:
            return str(self.stage_dir(ref) / "model")
        return ref

    def build(self, spec: ComponentSpec, kind: str, args: Any = None, **context: Any) -> Any:
        """Build a component section through the registry (with ``args`` in place of its own, if given)."""
        component = get_registry().get(kind, spec.name)
        assert component is not None, f"{kind} '{spec.name}' was validated but is not registered"
        return component.build(spec.args if args is None else args, **context)

    @property
    def source(self) -> Any:
        """The data source component (built once per process)."""
        if "source" not in self._cache:
            self._cache["source"] = self.build(self.recipe.data, "dataset")
        return self._cache["source"]

    @property
    def loggers(self) -> list[Any]:
        """The recipe's loggers (built once per process)."""
        if "loggers" not in self._cache:
            from spa_recipes.builtins import JsonlLoggerConfig
            from spa_recipes.loggers import JsonlLogger

            always = JsonlLogger(JsonlLoggerConfig(), run_dir=self.run_dir)  # metrics.jsonl, whatever else is chosen
            self._cache["loggers"] = [always] + [
                self.build(spec, "logger", run_dir=self.run_dir)
                for spec in self.recipe.logging.loggers
                if spec.name != "jsonl"
            ]
        return self._cache["loggers"]

    def seed_for(self, stage: Stage) -> int:
        """A per-stage seed derived from the run seed, stable across processes and resumes."""
        return (self.recipe.run.seed * 1_000_003 + sum(map(ord, stage.name)) * 7919) % (2**31 - 1)


def run_dir_for(recipe: Recipe) -> Path:
    return Path(recipe.run.output_dir) / recipe.run.name


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if not path.exists():
        return {"stages": {}}
    return loads_json(path.read_text())


def _setup_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _say(message: str) -> None:
    if is_main_process():
        print(message, flush=True)
        log.info(message)


def execute(recipe: Recipe, *, fresh: bool = False, progress: bool | None = None, force: bool = False) -> Path:
    """Run (or resume) every stage of the recipe's graph.

    Args:
        recipe: a validated recipe.
        fresh: delete the run directory first (once its lock is held).
        progress: tqdm bars (True), log lines (False), or bars only on a terminal (None).
        force: take over a lock left by a run on another host (see :mod:`spa_recipes.runner.lock`).

    Returns:
        The run directory.

    Raises:
        RunDirLocked: another live run holds the run directory (on every process of a multi-process run).
    """
    init_distributed()
    main = is_main_process()
    run_dir = run_dir_for(recipe)
    lock, refusal = None, None
    if main:  # one writer per run directory: main takes its lock, before anything is written or loaded
        try:
            lock = acquire_lock(run_dir, force=force)
        except RunDirLocked as exc:
            refusal = str(exc)
        except OSError as exc:  # an unwritable output_dir, say: still every process's answer, not a hang
            refusal = f"{run_dir}: cannot take its lock: {exc.strerror or exc}"
    refusal = broadcast(refusal)  # main's answer on every process: all stop together, none waits at a barrier
    if refusal is not None:
        if world_size() == 1:
            raise RunDirLocked(refusal)
        # Every process exits 2, main alone says why, and says it before the others leave: the launcher stops
        # the remaining processes as soon as one has exited.
        if main:
            print(f"error: {refusal}", file=sys.stderr, flush=True)
        shutdown_distributed()
        raise RunDirLocked([])
    handler, ctx = None, None
    try:
        if lock is not None and lock.took_over:
            print(f"warning: {lock.took_over}", file=sys.stderr, flush=True)
        if main and fresh:
            _clear_run_dir(run_dir)
        barrier()
        handler = _setup_logging(run_dir) if main else None
        if lock is not None and lock.took_over:
            log.warning(lock.took_over)
        set_progress(progress)
        _quiet_libraries()
        graph = build_graph(recipe)
        if main:
            write_text_atomic(run_dir / "recipe.yaml", yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
        ctx = RunContext(recipe, run_dir, {s.name: s for s in graph})
        manifest = read_manifest(run_dir) if main else {"stages": {}}  # only main keeps the manifest
        _say(f"run {recipe.run.name}: {len(graph)} stages in {run_dir}")
        for stage in graph:
            _run_stage(ctx, stage, manifest)
        _say(f"done: {run_dir / 'results.json'}")
        shutdown_distributed()
        return run_dir
    finally:
        for logger in ctx._cache.get("loggers", []) if ctx is not None else []:
            logger.close()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        if lock is not None:
            lock.release()


def _clear_run_dir(run_dir: Path) -> None:
    """``--fresh``: remove everything in the run directory but the lock this run holds."""
    for path in run_dir.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _quiet_libraries() -> None:
    """Our own progress lines say what is happening; the libraries' per-load bars only add noise."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _run_stage(ctx: RunContext, stage: Stage, manifest: dict[str, Any]) -> None:
    out = ctx.stage_dir(stage.name)
    main = is_main_process()
    skip, resumed = False, False
    if main:
        entry = manifest["stages"].get(stage.name, {})
        skip = entry.get("status") == "done" and entry.get("fingerprint") == stage.fingerprint and is_complete(out)
    if broadcast(skip):  # main's decision, on every process
        log.info("skip %s (finished, fingerprint %s)", stage.name, stage.fingerprint)
        return
    started = time.time()
    if main:
        fingerprint_file = out / FINGERPRINT_FILE
        if out.exists() and (not fingerprint_file.exists() or fingerprint_file.read_text() != stage.fingerprint):
            shutil.rmtree(out)  # the remains of another configuration: never trusted
        resumed = out.exists()
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).unlink(missing_ok=True)
        write_text_atomic(fingerprint_file, stage.fingerprint)
        manifest["stages"][stage.name] = {
            "fingerprint": stage.fingerprint,
            "status": "running",
            "started": started,
            "pid": os.getpid(),
        }
        write_json_atomic(ctx.run_dir / "manifest.json", manifest)
    _say(f"> {stage.name}{' (resuming)' if resumed else ''}")
    barrier()  # the stage folder is ready before any process writes into it
    summary: dict[str, Any] = {}
    if main or stage.kind in COLLECTIVE_KINDS:
        module = importlib.import_module(f"spa_recipes.stages.{STAGE_MODULES[stage.kind]}")
        summary = module.run(ctx, stage, out) or {}
    barrier()  # every process's part is on disk before the stage counts as finished
    if not main:
        return
    seconds = round(time.time() - started, 2)
    (out / MARKER).write_text("")
    manifest["stages"][stage.name] = {
        "fingerprint": stage.fingerprint,
        "status": "done",
        "started": started,
        "finished": time.time(),
        "seconds": seconds,
        "summary": summary,
    }
    write_json_atomic(ctx.run_dir / "manifest.json", manifest)
    for logger in ctx.loggers:
        logger.log_stage(stage.name, seconds, summary)
    shown = ", ".join(f"{k} {_fmt(v)}" for k, v in summary.items() if not isinstance(v, dict | list))
    _say(f"  {stage.name} done in {seconds:.1f}s{': ' + shown if shown else ''}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def stage_status(run_dir: Path, recipe: Recipe) -> list[dict[str, Any]]:
    """Per stage of the recipe's graph: done, running, cut off, stale (another fingerprint) or pending."""
    manifest = read_manifest(run_dir)
    rows = []
    for stage in build_graph(recipe):
        entry = manifest["stages"].get(stage.name, {})
        status = "pending"
        if entry:
            if entry.get("fingerprint") != stage.fingerprint:
                status = "stale"
            elif entry.get("status") == "done" and is_complete(run_dir / stage.name):
                status = "done"
            elif entry.get("status") == "running":
                status = "running" if _alive(entry.get("pid")) else "cut off"
        rows.append(
            {
                "stage": stage.name,
                "status": status,
                "seconds": entry.get("seconds"),
                "started": entry.get("started"),
                "finished": entry.get("finished"),
            }
        )
    return rows


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
