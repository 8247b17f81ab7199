"""rl2f: train language models to learn from natural-language feedback."""

__version__ = "0.1.0"
