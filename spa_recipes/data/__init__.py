"""Data sources beyond the toy world: preference datasets from files or the hub, and rule-checked prompt sets."""
