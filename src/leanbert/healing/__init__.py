"""Healing converted checkpoints by distillation from their BERT source: `heal(...)` (or `Healing`, checked before it
runs, which `leanbert-convert --heal` uses) and the command `leanbert-heal`."""

from .distill import Healing, HealingError, heal

__all__ = ["Healing", "HealingError", "heal"]
