"""Configuration of SharedBert: BERT with one projection shared by query, key and value (arXiv 2412.00359)."""

from .configuration_encoder import LeanEncoderConfig, integer


class SharedBertConfig(LeanEncoderConfig):
    r"""Configuration of a [`SharedBertModel`]; BERT's fields (see `LeanEncoderConfig`) plus:

    Args:
        num_attention_heads: Number of heads `H`; `hidden_size` must be a multiple of it (checked when the model
            is built).

    Each layer has one d->d projection with bias and three learned per-channel scalings (query, key, value),
    initialised to ones.

    Example:

    ```python
    >>> from leanbert import SharedBertConfig, SharedBertModel
    >>> model = SharedBertModel(SharedBertConfig())
    ```
    """

    model_type = "shared_bert"

    num_attention_heads: int = 12

    field_rules = {**LeanEncoderConfig.field_rules, "num_attention_heads": integer()}
