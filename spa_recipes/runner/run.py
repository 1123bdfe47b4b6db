"""Executing the stage graph in a run directory, resuming whatever was finished.

Run directory layout::

    runs/<name>/recipe.yaml      the resolved recipe (every default)
    runs/<name>/manifest.json    per stage: fingerprint, status, times, peak memory, summary
    runs/<name>/metrics.jsonl    one line per finished stage (its summary), from the jsonl logger
    runs/<name>/run.log          the log of every invocation
    runs/<name>/<stage>/         one folder per stage; `.fingerprint` when started, `.complete` when finished
    runs/<name>/results.json     written by the report stage
    runs/<name>/.lock            held by the run in progress (one writer at a time: runner/lock.py)

A stage is skipped when the manifest says it finished with the same fingerprint, its folder carries the
completion marker, its outputs match the checksums the manifest recorded (:mod:`spa_recipes.runner.checksums`;
a damaged output is named in a warning) and no stage it reads from ran in this invocation. A stage
folder with the same fingerprint but no marker was cut off: the stage runs
again and continues from its own finished pieces (generation and judging shards, training checkpoints).
A folder with another fingerprint is removed first. SIGTERM or Ctrl-C stops the run at the next step or
shard boundary (:mod:`spa_recipes.interrupt`), leaving the stage the same way, its manifest entry "interrupted".

Multi-process runs (``torchrun --nproc_per_node N -m spa_recipes run ...`` or ``accelerate launch``): the
process group is initialised once here. The main process alone decides what runs (and tells the others),
keeps the manifest, markers and stage outputs, and logs; stages whose kind is declared collective run on
every process (generation and judging split by shard, training data-parallel), the others on main alone
while the rest wait. A barrier closes every stage, so no process reads an output before main has written it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spa_recipes.api import StageInfo
from spa_recipes.atomic import MARKER, is_complete, loads_json, write_json_atomic, write_text_atomic
from spa_recipes.distributed import (
    barrier,
    broadcast,
    init_distributed,
    is_main_process,
    shutdown_distributed,
    world_size,
)
from spa_recipes.interrupt import Interrupted, stop_agreed, stop_on_signals
from spa_recipes.progress import set_progress
from spa_recipes.recipe import recipe_to_dict
from spa_recipes.runner.checksums import checksum_outputs, damage
from spa_recipes.runner.clean import remove, scratch_paths
from spa_recipes.runner.graph import build_graph
from spa_recipes.runner.lock import LOCK_FILE, RunDirLocked
from spa_recipes.runner.lock import acquire as acquire_lock
from spa_recipes.runner.peak_memory import StagePeak
from spa_recipes.runner.stage import Stage, StageContext, build_component
from spa_recipes.schema import Recipe

log = logging.getLogger("spa_recipes")
FINGERPRINT_FILE = ".fingerprint"


@dataclass
class RunContext:
    """One invocation of a run: the recipe, the run directory, the graph, and per-process objects."""

    recipe: Recipe
    run_dir: Path
    stages: dict[str, Stage]
    _cache: dict[str, Any] = field(default_factory=dict)

    def context_for(self, stage: Stage) -> StageContext:
        return StageContext(stage, self.recipe, self.run_dir, self.stages, self._cache)

    @property
    def loggers(self) -> list[Any]:
        """The recipe's loggers (built once per process)."""
        if "loggers" not in self._cache:
            from spa_recipes.registry import get_registry

            jsonl = get_registry().get("logger", "jsonl")
            always = jsonl.build(jsonl.config(), run_dir=self.run_dir)  # metrics.jsonl, whatever else is chosen
            self._cache["loggers"] = [always] + [
                build_component(spec, "logger", run_dir=self.run_dir)
                for spec in self.recipe.logging.loggers
                if spec.name != "jsonl"
            ]
        return self._cache["loggers"]


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
        Interrupted: SIGTERM or SIGINT stopped the run at a step or shard boundary (one line says where); the
            same call resumes it. A second signal ends the process at once (:mod:`spa_recipes.interrupt`).
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
        ran: set[str] = set()  # stages run by this invocation: the stages after them cannot be reused
        with stop_on_signals():  # SIGTERM, Ctrl-C: stop at the next step or shard boundary (spa_recipes.interrupt)
            for stage in graph:
                _run_stage(ctx, stage, manifest, ran)
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


def _run_stage(ctx: RunContext, stage: Stage, manifest: dict[str, Any], ran: set[str]) -> None:
    out = ctx.run_dir / stage.name
    main = is_main_process()
    skip, resumed = False, False
    if main:
        entry = manifest["stages"].get(stage.name, {})
        skip = entry.get("status") == "done" and entry.get("fingerprint") == stage.fingerprint and is_complete(out)
        skip = skip and _intact(stage, out, entry) and not ran & set(stage.upstream())
    if broadcast(skip):  # main's decision, on every process
        log.info("skip %s (finished, fingerprint %s)", stage.name, stage.fingerprint)
        return
    if stop_agreed():  # a signal during a stage that does not stop midway (split, pairs, report): stop here
        stop = Interrupted("before it")
        _say(f"stopped before {stage.name} ({stop.signal_name}); run the same command to continue")
        raise stop
    ran.add(stage.name)
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
            **_identity(stage),
            "status": "running",
            "started": started,
            "pid": os.getpid(),
        }
        write_json_atomic(ctx.run_dir / "manifest.json", manifest)
    _say(f"> {stage.name}{' (resuming)' if resumed else ''}")
    barrier()  # the stage folder is ready before any process writes into it
    summary: dict[str, Any] = {}
    peak = StagePeak()  # this process's peak memory from here to the stage's end (runner/peak_memory.py)
    try:
        if main or stage.kind.collective:
            summary = stage.kind.run(ctx.context_for(stage)) or {}
    except Interrupted as stop:  # at a step or shard boundary: no marker, so the same command resumes the stage
        if main:
            manifest["stages"][stage.name].update(status="interrupted", stopped=time.time(), at=stop.where)
            write_json_atomic(ctx.run_dir / "manifest.json", manifest)
        _say(f"stopped in {stage.name} {stop.where} ({stop.signal_name}); run the same command to continue")
        raise
    barrier()  # every process's part is on disk before the stage counts as finished
    if not main:
        return
    seconds = round(time.time() - started, 2)
    peaks = peak.read()
    write_text_atomic(out / MARKER, "", f"{stage.name}'s completion marker")
    manifest["stages"][stage.name] = {
        **_identity(stage),
        "status": "done",
        "started": started,
        "finished": time.time(),
        "seconds": seconds,
        **peaks,
        "summary": summary,
        "outputs": checksum_outputs(out, stage.kind),
    }
    write_json_atomic(ctx.run_dir / "manifest.json", manifest)
    if not ctx.recipe.run.keep_checkpoints:
        _free_scratch(stage, out)
    for logger in ctx.loggers:
        logger.log_stage(StageInfo(stage.name, stage.kind.name, stage.iteration), seconds, summary)
    shown = ", ".join(f"{k} {_fmt(v)}" for k, v in summary.items() if not isinstance(v, dict | list))
    memory = f", peak {peaks['peak_rss_mib']:.0f} MiB resident" if "peak_rss_mib" in peaks else ""
    _say(f"  {stage.name} done in {seconds:.1f}s{memory}{': ' + shown if shown else ''}")


def _free_scratch(stage: Stage, out: Path) -> None:
    """Remove a finished stage's resume state (checkpoints, shards); a failure to remove is only a warning."""
    for path in scratch_paths(out, stage.kind):
        try:
            remove(path)
        except OSError as exc:
            log.warning("%s: could not remove %s: %s", stage.name, path, exc)


def _intact(stage: Stage, out: Path, entry: dict[str, Any]) -> bool:
    """Whether a finished stage's outputs are as it left them; a warning names what is damaged if not."""
    problem = damage(out, stage.kind, entry["outputs"]) if "outputs" in entry else None
    if problem is None:
        return True
    message = f"{stage.name}: {problem} since it finished; running it again, and the stages after it"
    print(f"warning: {message}", file=sys.stderr, flush=True)
    log.warning(message)
    return False


def _identity(stage: Stage) -> dict[str, Any]:
    """What the manifest records of a stage besides its progress (reporting reads kind and iteration)."""
    return {"fingerprint": stage.fingerprint, "kind": stage.kind.name, "iteration": stage.iteration}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def stage_status(run_dir: Path, recipe: Recipe) -> list[dict[str, Any]]:
    """Per stage of the recipe's graph: done, running, cut off, interrupted (stopped by a signal), stale (another
    fingerprint) or pending."""
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
            elif entry.get("status") == "interrupted":  # stopped by SIGTERM or Ctrl-C at a step or shard
                status = "interrupted"
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
