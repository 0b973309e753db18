"""Configuration fields shared by every leanbert encoder: BERT's, minus what each attention variant changes.

Each architecture's config subclasses `LeanEncoderConfig`, adds its attention fields and a `model_type`, and
extends `check_fields` with its own rules. Invalid values raise `ValueError` naming the field and what is allowed,
at construction time and again when a config is loaded from a checkpoint.
"""

from transformers import PretrainedConfig
from transformers.activations import ACT2FN


def require(condition: bool, field: str, value, allowed: str) -> None:
    """Raise `ValueError("<field>=<value> is invalid; <allowed>")` unless `condition` holds."""
    if not condition:
        raise ValueError(f"{field}={value!r} is invalid; {allowed}")


class LeanEncoderConfig(PretrainedConfig):
    r"""BERT's configuration fields, shared by SymBert, SharedBert and Shatter.

    Args:
        vocab_size: Number of token ids the word embedding and the masked-LM decoder cover.
        hidden_size: Width `d` of the residual stream.
        num_hidden_layers: Number of encoder layers.
        intermediate_size: Width of the feed-forward block.
        hidden_act: Activation of the feed-forward block (a key of `transformers.activations.ACT2FN`).
        hidden_dropout_prob: Dropout on embeddings and on each residual branch.
        attention_probs_dropout_prob: Dropout on attention probabilities.
        max_position_embeddings: Longest sequence the model accepts.
        type_vocab_size: Number of segment (token type) ids.
        initializer_range: Standard deviation of the normal init of linear and embedding weights.
        layer_norm_eps: Epsilon of every LayerNorm.
        pad_token_id: Id of the padding token (its embedding row is zeroed at init).
        classifier_dropout: Dropout before classification heads; `None` uses `hidden_dropout_prob`.
        tie_word_embeddings: Tie the masked-LM decoder to the word embeddings, as BERT does.
    """

    _auto_class = "AutoConfig"  # save_pretrained ships this file (and its siblings) with every checkpoint

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    classifier_dropout: float | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check_fields()

    def check_fields(self) -> None:
        """Validate every field; subclasses call `super().check_fields()` and add their own rules."""
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                      "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, field)
            require(isinstance(value, int) and value > 0, field, value, "must be a positive integer")
        for field in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, field)
            if value is None and field == "classifier_dropout":
                continue
            require(isinstance(value, (int, float)) and 0 <= value < 1, field, value, "must be in [0, 1)")
        require(self.initializer_range > 0, "initializer_range", self.initializer_range, "must be positive")
        require(self.layer_norm_eps > 0, "layer_norm_eps", self.layer_norm_eps, "must be positive")
        require(self.hidden_act in ACT2FN, "hidden_act", self.hidden_act, f"allowed: {sorted(ACT2FN)}")
        pad = self.pad_token_id
        require(pad is None or 0 <= pad < self.vocab_size, "pad_token_id", pad, "must be in [0, vocab_size) or None")


def check_heads(config) -> None:
    """Rules for `num_attention_heads`, shared by the multi-head architectures."""
    heads = config.num_attention_heads
    require(isinstance(heads, int) and heads > 0, "num_attention_heads", heads, "must be a positive integer")
    require(config.hidden_size % heads == 0, "num_attention_heads", heads,
            f"must divide hidden_size={config.hidden_size}")
