"""Generation backends and the sharded, resumable output layout they share with judges."""

from spa_recipes.generation.shards import read_shards, run_sharded

__all__ = ["read_shards", "run_sharded"]
