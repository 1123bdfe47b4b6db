"""The `spa-recipe` command line. Exit codes: 0 success, 2 user error, 1 internal error, 3 `plan`: a stage does not
fit, 75 `run` stopped by SIGTERM
or Ctrl-C at a step or shard boundary (EX_TEMPFAIL: run the same command to continue), 130 Ctrl-C elsewhere
(and 128 + signal after a second SIGTERM or Ctrl-C during a run, which stops it at once)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from spa_recipes.errors import UserError
from spa_recipes.interrupt import EXIT_CODE, Interrupted
from spa_recipes.paths import SHIPPED_RECIPES, find_shipped_recipe, shipped_recipes

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Spread Preference Annotation (SPA) as declarative, resumable recipes.",
)
_state = {"debug": False}
EVALUATIONS = {"eval", "eval_baseline"}  # stage kinds that write a model's responses to the hold-out prompts

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML file", show_default=False)]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="overrides: key.sub=value, or ~key to delete", show_default=False)
]
AllowImportOpt = Annotated[
    list[str] | None,
    typer.Option("--allow-import", help="module prefix whose module:Class paths a recipe may name (repeatable)"),
]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    _state["debug"] = debug


@contextlib.contextmanager
def _guard() -> Iterator[None]:
    """User errors: one line per problem and exit 2. Anything else: exit 1 (traceback with --debug)."""
    try:
        yield
    except typer.Exit:
        raise
    except UserError as exc:
        if _state["debug"]:
            raise
        for line in exc.problems:
            typer.secho(f"error: {line}", err=True, fg="red")
        raise typer.Exit(2) from None
    except BrokenPipeError:  # `spa-recipe show ... | head`: the reader has what it wanted
        sys.stderr.close()
        raise typer.Exit(0) from None
    except Interrupted:  # the runner has said where it stopped
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _exit_process(EXIT_CODE)  # the process group is still up: see run()
        raise typer.Exit(EXIT_CODE) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:
        if _state["debug"]:
            raise
        typer.secho(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        raise typer.Exit(1) from None


def _load(recipe: Path, overrides: list[str] | None, allow_import: list[str] | None):  # noqa: ANN202
    from spa_recipes.recipe import load_recipe

    return load_recipe(recipe, overrides or [], allow_import=allow_import or [])


@app.command()
def validate(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    allow_import: AllowImportOpt = None,
    processes: Annotated[
        int | None,
        typer.Option("--processes", min=1, help="check for a launch of N processes (default: WORLD_SIZE, else 1)"),
    ] = None,
) -> None:
    """Check a recipe completely (keys, types, components, plugins) without loading any model."""
    with _guard():
        from spa_recipes.recipe import load_recipe

        loaded = load_recipe(recipe, overrides or [], allow_import=allow_import or [], num_processes=processes)
        typer.echo(f"ok: {recipe} (run '{loaded.run.name}', {loaded.iterations} iterations)")


@app.command()
def show(recipe: RecipeArg, overrides: OverridesArg = None, allow_import: AllowImportOpt = None) -> None:
    """Print the fully resolved recipe with every default, as YAML."""
    with _guard():
        import yaml

        from spa_recipes.recipe import recipe_to_dict

        loaded = _load(recipe, overrides, allow_import)
        typer.echo(yaml.safe_dump(recipe_to_dict(loaded), sort_keys=False, width=100), nl=False)


@app.command("ls")
def list_things() -> None:
    """List shipped recipes, and components by kind with where each comes from (plugins included)."""
    with _guard():
        from spa_recipes.registry import KINDS, get_registry

        registry = get_registry()
        typer.echo(f"recipes ({SHIPPED_RECIPES}):")
        for path in shipped_recipes():
            typer.echo(f"  {path.relative_to(SHIPPED_RECIPES)}")
        for kind in KINDS:
            typer.echo(f"{kind}:")
            for comp in registry.components(kind):
                typer.echo(f"  {comp.name:<18} {comp.help}  [{comp.source}]")


@app.command()
def explain(
    target: Annotated[
        str, typer.Argument(help="KIND.NAME (judge.pairrm), a kind (judge), or a recipe section (training.iteration)")
    ],
) -> None:
    """A component's help, source and fields (name, type, default, help), or a recipe section's."""
    with _guard():
        from spa_recipes.explain import explain as explain_text
        from spa_recipes.registry import get_registry

        typer.echo(explain_text(target, get_registry()))


@app.command()
def cp(
    name: Annotated[str, typer.Argument(help="shipped recipe, e.g. tiny_spa or base/spa_paper.yaml")],
    dest: Annotated[Path, typer.Argument(help="file or folder to copy it to")],
) -> None:
    """Copy a shipped recipe to edit it. Its `extends` bases are still found among the shipped recipes."""
    with _guard():
        source = find_shipped_recipe(name)
        target = dest / source.name if dest.is_dir() else dest
        if target.exists():
            raise UserError(f"{target}: already exists; remove it or choose another destination")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        typer.echo(f"copied {source.relative_to(SHIPPED_RECIPES)} -> {target}")


@app.command()
def run(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="delete the run directory and start over")] = False,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="progress bars (default: when on a terminal)")
    ] = None,
    allow_import: AllowImportOpt = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="take over the run directory's lock from a run on another host that is gone"),
    ] = False,
) -> None:
    """Run a recipe; on an existing run directory, resume: finished stages are skipped.

    A run directory takes one run at a time: a second launch on it exits 2 naming the run that holds it.
    SIGTERM or Ctrl-C stops it after the step or shard in progress and exits 75; a second one stops it at once.
    """
    with _guard():
        loaded = _load(recipe, overrides, allow_import)
        from spa_recipes.runner.run import execute

        execute(loaded, fresh=fresh, progress=progress, force=force)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The run is complete and its process group torn down. Leave without the interpreter's C++ teardown:
        # with FSDP2 on gloo a rank sometimes aborted there ("terminate called without an active exception",
        # 4 of 12 two-process runs under load), which the launcher reports as a failed run.
        _exit_process(0)


def _exit_process(code: int) -> None:
    """Leave at once with ``code``, logs and output flushed, skipping the interpreter's teardown."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.command()
def rehearse(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    max_new_tokens: Annotated[
        int,
        typer.Option("--max-new-tokens", min=1, help="cap on the generation length (a random model writes to it)"),
    ] = 64,
    processes: Annotated[
        int,
        typer.Option(
            "--processes", min=1, help="the launch it is meant for (e.g. 8 GPUs): its optimiser batch, in one process"
        ),
    ] = 1,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="progress bars (default: when on a terminal)")
    ] = None,
    allow_import: AllowImportOpt = None,
) -> None:
    """Run a GPU recipe end to end on this CPU with tiny random models of its classes, to find its errors first.

    Kept: dtype, chat template, data schema, batch layout, judge, noise detector, refiner, evaluator.

    Substituted: each model by a few MB of random weights made from its own config.json and tokenizer.

    Scaled: the split (same proportions) and the generation length. Runs into <output_dir>/<name>-rehearsal.

    Offline: models.sft=/folder/with/config-and-tokenizer data.path=/path/to/ultrafeedback.parquet
    """
    with _guard():
        from spa_recipes.rehearse import rehearse as run_rehearsal

        run_rehearsal(
            recipe,
            overrides or [],
            allow_import=allow_import or [],
            max_new_tokens=max_new_tokens,
            processes=processes,
            progress=progress,
            say=typer.echo,
        )


@app.command()
def plan(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="GPUs a node")] = 1,
    gpu_memory: Annotated[str, typer.Option("--gpu-memory", help="memory of one GPU, e.g. 80GB, 141GB")] = "80GB",
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="nodes")] = 1,
    parallelism: Annotated[
        str | None,
        typer.Option("--parallelism", help="single, ddp or fsdp2 (default: fsdp2 over several GPUs, else single)"),
    ] = None,
    cpu: Annotated[bool, typer.Option("--cpu", help="this machine's CPU in float32 (what a CPU run holds)")] = False,
    memory: Annotated[
        str | None, typer.Option("--memory", help="--cpu: memory to fit in (default: this machine's)")
    ] = None,
    utilisation: Annotated[
        float, typer.Option("--utilisation", min=0.01, max=1.0, help="share of the peak FLOP/s reached")
    ] = 0.4,
    peak_tflops: Annotated[
        float, typer.Option("--peak-tflops", min=0.001, help="peak 16-bit TFLOP/s of one GPU (H100/H200: 989)")
    ] = 989.0,
    as_json: Annotated[bool, typer.Option("--json", help="the plan as JSON, for scripts")] = False,
    allow_import: AllowImportOpt = None,
) -> None:
    """Memory a device needs per stage and whether it fits, each stage's time, the run's GPU-hours; before renting.

    Reads only the model's config.json (a folder, the Hugging Face cache, or the hub). A stage that does not fit
    is named with its largest term and the changes that would make it fit. Exit 0 when every stage fits, 3 if not.
    """
    with _guard():
        from spa_recipes.planning import Hardware, make_plan, parse_size, render, this_machine_memory
        from spa_recipes.recipe import load_recipe

        chosen = parallelism or ("fsdp2" if gpus * nodes > 1 and not cpu else "single")
        if chosen not in ("single", "ddp", "fsdp2"):
            raise UserError(f"--parallelism {chosen}: choose single, ddp or fsdp2")
        if chosen == "single" and gpus * nodes > 1:
            raise UserError(f"--parallelism single with {gpus * nodes} GPUs: choose ddp or fsdp2")
        processes = 1 if cpu else gpus * nodes
        loaded = load_recipe(recipe, overrides or [], allow_import=allow_import or [], num_processes=processes)
        size = parse_size(memory, "--memory") if memory else this_machine_memory() if cpu else None
        hardware = Hardware(
            gpus=1 if cpu else gpus,
            nodes=1 if cpu else nodes,
            memory=size if size is not None else parse_size(gpu_memory, "--gpu-memory"),
            parallelism="single" if cpu else chosen,
            cpu=cpu,
            peak_tflops=peak_tflops,
            utilisation=utilisation,
        )
        made = make_plan(loaded, hardware, recipe_name=str(recipe))
        if as_json:
            from spa_recipes.atomic import dumps_json

            typer.echo(dumps_json(made.to_json(), indent=1))
        else:
            typer.echo(render(made))
    if not made.fits:
        raise typer.Exit(3)


@app.command()
def graph(recipe: RecipeArg, overrides: OverridesArg = None, allow_import: AllowImportOpt = None) -> None:
    """Print the stage graph: each stage with its inputs, model, reference and data sizes."""
    with _guard():
        from spa_recipes.runner.graph import build_graph, describe

        for stage in build_graph(_load(recipe, overrides, allow_import)):
            typer.echo(f"{stage.name}  [{stage.kind.name}]  fingerprint {stage.fingerprint}")
            for role, source in stage.inputs.items():
                typer.echo(f"    {role}: {describe(source)}")
            if stage.after:
                typer.echo(f"    after: {', '.join(stage.after)}")
            typer.echo(f"    reads: {', '.join(stage.kind.reads) or '-'}")
            if stage.sizes:
                typer.echo(f"    data: {stage.sizes}")


@app.command()
def status(run_dir: Annotated[Path, typer.Argument(help="a run directory (runs/<name>)")]) -> None:
    """Which stages of a run are done, running, cut off, interrupted, stale or pending, with times."""
    with _guard():
        import datetime

        from spa_recipes.recipe import load_recipe
        from spa_recipes.runner.run import stage_status

        resolved = run_dir / "recipe.yaml"
        if not resolved.exists():
            raise UserError(f"{run_dir}: not a run directory (no recipe.yaml)")
        for row in stage_status(run_dir, load_recipe(resolved)):
            started = row["started"]
            when = datetime.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S") if started else ""
            took = f"{row['seconds']:.1f}s" if row["seconds"] is not None else ""
            typer.echo(f"{row['stage']:<18} {row['status']:<11} {when:<20} {took}")


@app.command()
def clean(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (runs/<name>)", show_default=False)],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be removed; remove nothing")] = False,
    force: Annotated[bool, typer.Option("--force", help="take over a lock left by a run on another host")] = False,
) -> None:
    """Free disk: finished stages' resume state (checkpoints, shards) and folders of stages the recipe no longer has.

    Models, responses, scores, pairs, evaluations and metrics stay: the report and later stages read them.
    """
    with _guard():
        from spa_recipes.runner.clean import clean_run, human

        found = clean_run(run_dir, dry_run=dry_run, force=force)
        for item in found:
            typer.echo(f"{human(item.size):>10}  {item.path}  ({item.why})")
        verb = "would free" if dry_run else "freed"
        typer.echo(f"{verb} {human(sum(i.size for i in found))} in {len(found)} paths")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories (runs/<name>)", show_default=False)],
    compare: Annotated[bool, typer.Option("--compare", help="put the runs side by side in one report")] = False,
    out: Annotated[Path, typer.Option("--out", help="--compare: folder for the comparison")] = Path("compare"),
) -> None:
    """Write report.md and plots/*.png into each run directory, or compare runs (--compare) into --out."""
    with _guard():
        from spa_recipes.reporting import build_report, compare_runs

        if compare:
            written = compare_runs(list(run_dirs), out)
            typer.echo(f"{written.markdown} ({len(written.runs)} runs, {len(written.plots)} plots)")
            for warning in written.warnings:
                typer.echo(f"warning: {warning}")
            return
        for run_dir in run_dirs:
            written = build_report(run_dir)
            typer.echo(f"{written.markdown} ({len(written.plots)} plots in {written.markdown.parent / 'plots'})")
            for warning in written.warnings:
                typer.echo(f"warning: {warning}")


@app.command("export-alpacaeval")
def export_alpacaeval(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (runs/<name>)", show_default=False)],
    stage: Annotated[
        str,
        typer.Option(
            "--stage",
            help="eval stage (iter3_eval, eval_seed_dpo, eval_baseline) "
            "or, with --instructions, any stage with a model (iter3_train, seed_dpo)",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="JSON file to write (AlpacaEval's --model_outputs)")],
    instructions: Annotated[
        Path | None,
        typer.Option(
            "--instructions",
            help="answer these instead of exporting the hold-out responses: AlpacaEval's "
            "alpaca_eval.json or a JSON/JSONL list of {instruction, dataset}",
        ),
    ] = None,
    generator: Annotated[
        str | None, typer.Option("--generator", help="name in the records (default: run/stage)")
    ] = None,
    sample: Annotated[int, typer.Option("--sample", help="which sample per prompt to export (hold-out)")] = 0,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="with --instructions; default: evaluation.temperature")
    ] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="with --instructions")] = None,
) -> None:
    """Write a model's responses in AlpacaEval's model-output format, to run AlpacaEval 2.0 on them."""
    with _guard():
        from spa_recipes.data.alpacaeval import (
            export_stage_responses,
            generate_alpacaeval_outputs,
            read_instructions,
            write_outputs,
        )
        from spa_recipes.recipe import load_recipe
        from spa_recipes.runner.graph import build_graph

        resolved = run_dir / "recipe.yaml"
        if not resolved.exists():
            raise UserError(f"{run_dir}: not a run directory (no recipe.yaml)")
        recipe = load_recipe(resolved)
        stages = {s.name: s for s in build_graph(recipe)}
        name = generator or f"{recipe.run.name}/{stage}"
        if instructions is None:
            evals = [s for s, g in stages.items() if g.kind.name in EVALUATIONS]
            if stage not in evals:
                raise UserError(
                    f"--stage {stage}: not an evaluation stage of this run; choose one of: "
                    f"{', '.join(evals) or '(none: the recipe has no evaluator)'}, or give --instructions"
                )
            records = export_stage_responses(run_dir / stage, name, sample)
        else:
            # A stage that makes a model (sft, seed_dpo, train) or evaluates one (its policy input).
            with_model = [s for s, g in stages.items() if "model" in g.kind.outputs or g.kind.name in EVALUATIONS]
            if stage not in with_model:
                raise UserError(f"--stage {stage}: no model; choose one of: {', '.join(with_model)}")
            model = stage if "model" in stages[stage].kind.outputs else stages[stage].input_name("policy")
            model_path = str(run_dir / model / "model") if model in stages else str(model)
            if model in stages and not (run_dir / model / "model").is_dir():
                raise UserError(f"{run_dir / model}: the model of stage {model} is not there; run the recipe first")
            records = generate_alpacaeval_outputs(
                recipe,
                model_path,
                read_instructions(instructions),
                name,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
            )
        write_outputs(records, out)
        typer.echo(f"wrote {len(records)} records to {out} (generator '{name}')")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except SystemExit as exc:
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
