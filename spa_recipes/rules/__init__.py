"""Rule-checked prompts: a small task for real chat models whose gold preference is a formatting rule in code."""
