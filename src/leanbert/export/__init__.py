"""Exporting leanbert models as the plain BERT that computes the same outputs: `export(...)` or `leanbert-export`."""

from .export import ExportError, export

__all__ = ["ExportError", "export"]
