"""Configuration of SymBert: BERT with symmetric (pairwise) dot-product attention (arXiv 2406.06366)."""

from .configuration_encoder import POSITIVE, LeanEncoderConfig, choice, integer

ATTENTION_MODES = ("pairwise", "symmetric")


class SymBertConfig(LeanEncoderConfig):
    r"""Configuration of a [`SymBertModel`]; BERT's fields (see `LeanEncoderConfig`) plus:

    Args:
        num_attention_heads: Number of heads `H`; `hidden_size` must be a multiple of it (checked when the model
            is built).
        attention_mode: `"pairwise"` (default): scores `q_i B_h q_j^T` with a learned `d_h x d_h` matrix `B_h` per head,
            the paper's best variant. `"symmetric"`: `B_h = I`, so scores are symmetric in `i, j`.
        pairwise_init_std: Standard deviation of the normal init of `B_h`. The authors' code uses 1.0 and leaves
            `B_h` out of BERT's init routine; so do we.

    Example:

    ```python
    >>> from leanbert import SymBertConfig, SymBertModel
    >>> model = SymBertModel(SymBertConfig(attention_mode="pairwise"))
    ```
    """

    model_type = "sym_bert"

    num_attention_heads: int = 12
    attention_mode: str = "pairwise"
    pairwise_init_std: float = 1.0

    field_rules = {
        **LeanEncoderConfig.field_rules,
        "num_attention_heads": integer(),
        "attention_mode": choice(*ATTENTION_MODES),
        "pairwise_init_std": POSITIVE,
    }
