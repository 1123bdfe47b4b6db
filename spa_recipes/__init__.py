"""spa-recipes: Spread Preference Annotation (SPA) as declarative, resumable recipes."""

__version__ = "0.1.0"
