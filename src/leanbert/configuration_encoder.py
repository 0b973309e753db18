"""Configuration fields shared by every leanbert encoder: BERT's, minus what each attention variant changes.

Each architecture's config subclasses `LeanEncoderConfig`, adds its attention fields and a `model_type`, and
extends `field_rules` with a rule for each of them. A field is checked whenever it is set: at construction, when a
config is loaded from a checkpoint, and on later assignment. A bad value raises `ValueError` naming the field, the
value and what is allowed (transformers' `@strict` raises an error that is not a `ValueError`, so it is not used).

Only single fields are checked here, as transformers' own configs do: rules that relate fields (heads dividing
`hidden_size`, `pad_token_id < vocab_size`, Shatter's `distance_scale`) are checked where the model is built, so
that a config can be built and edited one field at a time (transformers' `ConfigTester` builds
`hidden_size=37` with 12 heads).
"""

import dataclasses
import inspect
import math

from transformers import PretrainedConfig
from transformers.activations import ACT2FN


class Rule:
    """A check of one field's value, with the description of what it allows for the error message."""

    def __init__(self, check, allowed: str):
        self.check, self.allowed = check, allowed

    def __call__(self, field: str, value) -> None:
        """Raise `ValueError("<field>=<value> is invalid; <allowed>")` unless the value passes."""
        if not self.check(value):
            raise ValueError(f"{field}={value!r} is invalid; {self.allowed}")


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An int or a finite float; bools, strings, nan and infinities are not."""
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(low: int = 1, high: int | None = None) -> Rule:
    allowed = f"must be an integer >= {low}" if high is None else f"must be an integer in [{low}, {high}]"
    return Rule(lambda v: is_int(v) and low <= v and (high is None or v <= high), allowed)


def choice(*allowed: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in allowed, f"allowed: {', '.join(allowed)}")


def optional(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.check(v), f"{rule.allowed}, or None")


PROBABILITY = Rule(lambda v: is_real(v) and 0 <= v <= 1, "must be a number in [0, 1]")
POSITIVE = Rule(lambda v: is_real(v) and v > 0, "must be a finite number > 0")
NON_NEGATIVE = Rule(lambda v: is_real(v) and v >= 0, "must be a finite number >= 0")
BOOLEAN = Rule(lambda v: isinstance(v, bool), "must be True or False")


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
        pad_token_id: Id of the padding token (its embedding row is zeroed at init); below `vocab_size`.
        classifier_dropout: Dropout before classification heads; `None` uses `hidden_dropout_prob`.
        tie_word_embeddings: Tie the masked-LM decoder to the word embeddings, as BERT does.
        sparse_prediction: In `...ForMaskedLM`, when labels are given, run the prediction head only on the labelled
            positions and return their logits alone, as ModernBERT does: same loss, less compute and memory.
        sparse_pred_ignore_index: The label that marks a position as unlabelled for `sparse_prediction`.
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
    sparse_prediction: bool = False
    sparse_pred_ignore_index: int = -100

    field_rules = {  # field -> Rule; subclasses extend it with their own fields
        "vocab_size": integer(),
        "hidden_size": integer(),
        "num_hidden_layers": integer(),
        "intermediate_size": integer(),
        "hidden_act": choice(*sorted(ACT2FN)),
        "hidden_dropout_prob": PROBABILITY,
        "attention_probs_dropout_prob": PROBABILITY,
        "max_position_embeddings": integer(),
        "type_vocab_size": integer(),
        "initializer_range": NON_NEGATIVE,  # 0, 1.0 dropout and eps 0 are odd but valid, as BertConfig takes them
        "layer_norm_eps": NON_NEGATIVE,
        "pad_token_id": optional(integer(0)),
        "classifier_dropout": optional(PROBABILITY),
        "tie_word_embeddings": BOOLEAN,
        "sparse_prediction": BOOLEAN,
        "sparse_pred_ignore_index": Rule(is_int, "must be an integer"),
    }

    if not dataclasses.is_dataclass(PretrainedConfig):  # transformers 4, where configs are not dataclasses
        def __init__(self, **kwargs):
            """Every annotated field takes its declared default unless given, as in a transformers 5 dataclass config:
            without this, a config built on transformers 4 would save a config.json without its fields."""
            defaults = {name: klass.__dict__[name] for klass in reversed(type(self).__mro__)
                        if issubclass(klass, LeanEncoderConfig)
                        for name in inspect.get_annotations(klass) if name in klass.__dict__}
            super().__init__(**{**defaults, **kwargs})

    def __setattr__(self, name: str, value) -> None:
        if name in self.field_rules:
            self.field_rules[name](name, value)
        super().__setattr__(name, value)
