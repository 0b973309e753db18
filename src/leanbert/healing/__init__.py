"""Healing converted checkpoints by distillation from their BERT source: `heal(...)` or `leanbert-heal`."""

from .distill import HealingError, heal

__all__ = ["HealingError", "heal"]
