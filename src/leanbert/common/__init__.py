"""Shared I/O and safety, under everything that reads or writes a model: the user-facing error (`errors`), safe output
folders (`output`) and leanbert's own training checkpoints (`checkpoints`), fingerprints of inputs by content
(`fingerprints`), bounded reading of text passages with the
bundled calibration and held-out text (`passages`, `data/`), loading checkpoints without repairing them silently
(`models`), and carrying a source's sentence-transformers set-up into an output (`sentence_transformers`). Of leanbert
it imports only the package's version; what publishes a model is in `leanbert.publishing`."""

from .errors import LeanbertError

__all__ = ["LeanbertError"]
