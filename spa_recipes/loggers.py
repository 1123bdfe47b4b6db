"""Loggers: where a run's per-stage summaries go. JSONL is always on; TensorBoard and W&B are chosen by recipe.

The runner calls ``log_stage(stage, seconds, summary)`` after each stage finishes (``stage``: its name, kind and
iteration, :class:`spa_recipes.api.StageInfo`). The optional loggers then
forward that stage's per-step training metrics too (``<stage>/work/metrics.jsonl``, written by the training
loop), so a training curve arrives whole once its stage is done, never twice after a resume.
Their packages are imported only when they are built; the configs check they are installed at validation.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml

from spa_recipes.api import LoggerContext, StageInfo
from spa_recipes.atomic import append_text, dumps_json, read_jsonl, write_text_atomic
from spa_recipes.loggers_config import JsonlLoggerConfig, TensorBoardLoggerConfig, WandbLoggerConfig


class JsonlLogger:
    """Appends one JSON line per finished stage to ``<run_dir>/metrics.jsonl`` (``ctx.run_dir``)."""

    def __init__(self, cfg: JsonlLoggerConfig, ctx: LoggerContext) -> None:
        self.path = Path(ctx.run_dir) / "metrics.jsonl"

    def log_stage(self, stage: StageInfo, seconds: float, summary: dict[str, Any]) -> None:
        row = {"stage": stage.name, "seconds": seconds, **summary}
        append_text(self.path, dumps_json(row, sort_keys=True, default=str) + "\n", "run metrics")

    def close(self) -> None:
        pass


def summary_group(stage: StageInfo) -> tuple[str, int]:
    """Where a stage's summary goes on per-iteration curves: its kind against its iteration, seed DPO as the
    training of iteration 0 (``iter2_eval`` -> (eval, 2), ``eval_seed_dpo`` -> (eval, 0), ``sft`` -> (sft, 0))."""
    return ("train" if stage.kind == "seed_dpo" else stage.kind), stage.iteration


def scalars(row: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, float]:
    """The plain numbers of a summary or metrics row (lists, strings, None and booleans left out)."""
    return {
        k: float(v) for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool) and k not in skip
    }


def training_rows(run_dir: Path, stage: str) -> list[dict[str, Any]]:
    """The stage's per-step training metrics (``<stage>/work/metrics.jsonl``); empty for other stages."""
    path = Path(run_dir) / stage / "work" / "metrics.jsonl"
    if not path.is_file():
        return []
    return read_jsonl(path)


class TensorBoardLogger:
    """TensorBoard scalars: ``summary/<kind>/<key>`` against the iteration, ``steps/<stage>/<key>`` against the step.

    Args:
        cfg: the logger's config.
        ctx: its ``run_dir`` is the run directory (event files go to ``<run_dir>/tensorboard`` unless
            ``cfg.log_dir``).
    """

    def __init__(self, cfg: TensorBoardLoggerConfig, ctx: LoggerContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.cfg, self.run_dir = cfg, Path(ctx.run_dir)
        self.log_dir = Path(cfg.log_dir) if cfg.log_dir else self.run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_stage(self, stage: StageInfo, seconds: float, summary: dict[str, Any]) -> None:
        group, iteration = summary_group(stage)
        for key, value in scalars({**summary, "seconds": seconds}).items():
            self.writer.add_scalar(f"summary/{group}/{key}", value, global_step=iteration)
        if self.cfg.log_steps:
            self.log_steps(stage.name, training_rows(self.run_dir, stage.name))
        self.writer.flush()

    def log_steps(self, stage: str, rows: list[dict[str, Any]]) -> None:
        """Per-step metrics of a training stage, against its optimiser step."""
        for row in rows:
            for key, value in scalars(row, skip=("step",)).items():
                self.writer.add_scalar(f"steps/{stage}/{key}", value, global_step=int(row["step"]))

    def close(self) -> None:
        self.writer.close()


WANDB_ID_FILE = "wandb_run_id"


class WandbLogger:
    """A W&B run (offline by default): summaries against ``iteration``, training steps against ``<stage>/step``.

    Args:
        cfg: the logger's config.
        ctx: its ``run_dir`` is the run directory (W&B's files go to ``<run_dir>/wandb``; its recipe.yaml becomes
            the W&B config).
    """

    def __init__(self, cfg: WandbLoggerConfig, ctx: LoggerContext) -> None:
        import wandb

        self.cfg, self.run_dir = cfg, Path(ctx.run_dir)
        recipe = self.run_dir / "recipe.yaml"
        config = yaml.safe_load(recipe.read_text()) if recipe.is_file() else None
        # One W&B run per run directory: a resumed run continues it (the finished stages are not logged again).
        id_file = self.run_dir / WANDB_ID_FILE
        if not id_file.is_file():
            write_text_atomic(id_file, uuid.uuid4().hex[:12])
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            mode=cfg.mode,
            dir=str(self.run_dir),
            name=cfg.name or self.run_dir.name,
            tags=cfg.tags or None,
            config=config,
            id=id_file.read_text().strip(),
            resume="allow",
        )
        self.run.define_metric("iteration")
        self.run.define_metric("summary/*", step_metric="iteration")

    def log_stage(self, stage: StageInfo, seconds: float, summary: dict[str, Any]) -> None:
        group, iteration = summary_group(stage)
        values = scalars({**summary, "seconds": seconds})
        self.run.log({**{f"summary/{group}/{k}": v for k, v in values.items()}, "iteration": iteration})
        if self.cfg.log_steps:
            self.log_steps(stage.name, training_rows(self.run_dir, stage.name))

    def log_steps(self, stage: str, rows: list[dict[str, Any]]) -> None:
        """Per-step metrics of a training stage, against its own step axis ``<stage>/step``."""
        if not rows:
            return
        self.run.define_metric(f"{stage}/step")
        self.run.define_metric(f"{stage}/*", step_metric=f"{stage}/step")
        for row in rows:
            values = scalars(row, skip=("step",))
            self.run.log({**{f"{stage}/{k}": v for k, v in values.items()}, f"{stage}/step": int(row["step"])})

    def close(self) -> None:
        self.run.finish()
