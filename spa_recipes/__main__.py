from spa_recipes.cli import main

main()
