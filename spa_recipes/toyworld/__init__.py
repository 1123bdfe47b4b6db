"""The embedded toy alignment world: a data source, a tiny Llama builder and the gold judge."""

from spa_recipes.toyworld.world import ToyWorld, build_tokenizer

__all__ = ["ToyWorld", "build_tokenizer"]
