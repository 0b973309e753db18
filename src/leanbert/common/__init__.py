"""Pieces every leanbert command shares: the user-facing error, safe output folders and checkpoints, reading text
passages, pooling, and the command-line runner. Conversion, healing and training import these, never each other."""

from .errors import LeanbertError

__all__ = ["LeanbertError"]
