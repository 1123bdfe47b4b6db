"""One module per stage kind; each has ``run(ctx, stage, out_dir) -> summary dict`` (see spa_recipes.runner.run)."""
