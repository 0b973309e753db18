"""Analytic FLOP counts of a forward pass and a training step, for BertModel and every leanbert architecture.

What is counted: every matrix product of the bare encoder (no pooler), at 2·m·n·k FLOPs for an (m×k)·(k×n)
product: the linear layers (weights only: bias additions are elementwise), the attention scores q·kᵀ and the
attention-weighted values a·v, SymBert's per-head pairwise matrix, and Shatter's relative-part products (including
the float64 Bernstein factors, computed once per layer and batch). Not counted: elementwise operations (biases,
softmax, GELU, LayerNorm, dropout, scalings, residuals) and embedding lookups. The MLM head (transform d×d and
decoder d×vocab on every position) is counted only with `mlm_head=True`. These are the rules of
`torch.utils.flop_counter.FlopCounterMode`, against which tests/test_flops.py checks every count exactly.

Forward FLOPs per token and layer (length L, width d, head width d_h, feed-forward width I, Shatter's P parts,
batch B); every model adds the feed-forward's 4·d·I:

    BERT                      8d² + 4Ld                      (Q, K, V, output; scores, a·v over all heads)
    SymBert pairwise          6d² + 4Ld + 2d·d_h             (one query-key projection; the per-head q·B_h)
    SymBert symmetric         6d² + 4Ld
    SharedBert                4d² + 4Ld                      (one shared projection, output)
    Shatter, Bernstein parts  2d² + 2Pd² + 2Ld + 2PLd + 2P²d + 2Pd + 2P³/B
                              (query; P value matrices, output folded in; one head of width d, its one SDPA call
                              with P·d-wide values; the part factors g before and f after it; the factors
                              themselves; + 2d² with key_projection)
    Shatter, learned parts    2d² + 2Pd² + 2Ld + 2PLd        (P explicit n×n products)

A training step is the forward pass plus, for every product, one product of the same size per operand that needs
a gradient: 3× the forward for products of two trainable operands, 2× for Shatter's products with its fixed
partition factors, 1× for those factors themselves. So a training step is 3× the forward for BERT, SymBert and
SharedBert and slightly less for Shatter.

    from bench.flops import forward_flops_per_token
    forward_flops_per_token("Shatter P=2", dict(hidden_size=768, num_hidden_layers=12), seq_len=512)
"""

from transformers import BertConfig

import leanbert
from leanbert.architectures import BY_MODEL_TYPE

REFERENCE = "BertModel"

# name -> (architecture, extra config fields): BERT (architecture None), then every declared architecture in each
# of its variants ("SymBert pairwise", "SymBert symmetric", "SharedBert", "Shatter P=2", ...)
MODELS: dict[str, tuple[leanbert.Architecture | None, dict]] = {
    REFERENCE: (None, {}),
    **{architecture.variant_label(label): (architecture, extra)
       for architecture in leanbert.ARCHITECTURES for label, extra in architecture.variants.items()},
}


def config_of(model: str | leanbert.Architecture, fields: dict):
    """The model's config from BERT-shape `fields`, the variant's own fields added; `model` is a name of `MODELS`
    or an `Architecture` (whose variant fields are then part of `fields`). Configs use SDPA, as the benchmarks run
    them (Shatter's FLOPs depend on its attention implementation)."""
    architecture, extra = MODELS[model] if isinstance(model, str) else (model, {})
    return (architecture.config_class if architecture else BertConfig)(**fields, **extra, attn_implementation="sdpa")


def matmuls(config, seq_len: int, batch_size: int, mlm_head: bool = False) -> list[tuple[int, int]]:
    """(forward FLOPs, number of operands that need a gradient) of every matrix product of one forward pass over a
    (batch_size, seq_len) batch. A leanbert architecture's self-attention counts its own products
    (`LeanSelfAttention.forward_matmuls`); BERT's Q, K, V, scores and a·v are written here."""
    n, d, inter = batch_size * seq_len, config.hidden_size, config.intermediate_size
    linear = lambda inputs, outputs: (2 * n * inputs * outputs, 2)  # noqa: E731
    layer = [linear(d, inter), linear(inter, d)]  # feed-forward
    model_type = getattr(config, "model_type", "bert")
    if model_type == "bert":
        scores = (2 * n * seq_len * d, 2)  # q·kᵀ over all heads together: heads × L × L × d_h
        layer += [linear(d, d)] * 4 + [scores, scores]  # Q, K, V, output; scores, a·v
    else:
        attention = BY_MODEL_TYPE[model_type].attention_class
        layer += attention.forward_matmuls(config, batch_size, seq_len)
        layer += [linear(d, d)] * attention.has_output_projection  # attention.output.dense
    head = [linear(d, d), linear(d, config.vocab_size)] if mlm_head else []
    return layer * config.num_hidden_layers + head


def forward_flops(model, fields: dict, seq_len: int, batch_size: int = 1, mlm_head: bool = False) -> int:
    """FLOPs of one forward pass over a (batch_size, seq_len) batch. `model`: a name of `MODELS` or an
    `Architecture`; `fields`: BERT-shape config fields (hidden_size, num_hidden_layers, ...)."""
    return sum(flops for flops, _ in matmuls(config_of(model, fields), seq_len, batch_size, mlm_head))


def training_flops(model, fields: dict, seq_len: int, batch_size: int = 1, mlm_head: bool = False) -> int:
    """FLOPs of forward and backward over a (batch_size, seq_len) batch (the optimizer step is elementwise)."""
    return sum(flops * (1 + grads) for flops, grads in matmuls(config_of(model, fields), seq_len, batch_size, mlm_head))


def forward_flops_per_token(model, fields: dict, seq_len: int, batch_size: int = 1, mlm_head: bool = False) -> float:
    """Forward FLOPs per token (padding included) at this sequence length. Exactly linear in the batch but for
    Shatter's Bernstein factors (2·L·P³ per layer, shared by the batch), hence `batch_size`."""
    return forward_flops(model, fields, seq_len, batch_size, mlm_head) / (batch_size * seq_len)


def training_flops_per_token(model, fields: dict, seq_len: int, batch_size: int = 1, mlm_head: bool = False) -> float:
    """Training-step FLOPs per token (padding included): about 3× `forward_flops_per_token`."""
    return training_flops(model, fields, seq_len, batch_size, mlm_head) / (batch_size * seq_len)
