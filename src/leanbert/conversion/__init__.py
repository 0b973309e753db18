"""Converting BERT checkpoints into leanbert architectures: `convert(...)` or the `leanbert-convert` command."""

from .convert import convert
from .source import ConversionError

__all__ = ["ConversionError", "convert"]
