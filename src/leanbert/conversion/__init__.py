"""Converting BERT checkpoints into leanbert architectures: `convert(...)` (or `Conversion`, checked before it runs)
and the measures of how close the result is to its source (`embedding_cosines`, `dropout_agreement`, on
`mean_pool`ed sentence embeddings), which healing reports too. The command is `leanbert-convert`."""

from .convert import Conversion, convert
from .fidelity import dropout_agreement, embedding_cosines, mean_pool, pooled_embeddings
from .refine import REFINE_STEPS
from .source import ConversionError

__all__ = ["REFINE_STEPS", "Conversion", "ConversionError", "convert", "dropout_agreement", "embedding_cosines",
           "mean_pool", "pooled_embeddings"]
