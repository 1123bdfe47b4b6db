"""One module per stage kind; each declares ``KIND = StageKind(...)`` with its ``run(ctx) -> summary`` (see
:mod:`spa_recipes.runner.stage`), and :mod:`spa_recipes.runner.graph` places it."""
