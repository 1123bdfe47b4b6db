from spa_recipes.cli import main

# Guarded: engines that start worker processes by "spawn" (vLLM) re-import the main module in each worker.
if __name__ == "__main__":
    main()
