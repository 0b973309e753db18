"""SharedBert: BERT whose query, key and value come from one shared projection and three diagonal scalings.

Shared weights for query, key and value in BERT (arXiv 2412.00359). Everything outside self-attention is BERT's
(`modeling_encoder.py`).
"""

import torch
from torch import nn
from transformers.processing_utils import Unpack

from .configuration_shared_bert import SharedBertConfig
from .modeling_encoder import (
    LeanForMaskedLM,
    LeanForMultipleChoice,
    LeanForQuestionAnswering,
    LeanForSequenceClassification,
    LeanForTokenClassification,
    LeanModel,
    LeanPreTrainedModel,
    LeanSelfAttention,
    eager_attention_forward,
    head_size,
    linear_flops,
    scores_flops,
    split_heads,
)
from .transformers_compat import ALL_ATTENTION_FUNCTIONS, TransformersKwargs, init


class SharedBertSelfAttention(LeanSelfAttention):
    """s = x W_s + b_s; q = s ⊙ d_q, k = s ⊙ d_k, v = s ⊙ d_v; softmax(q k^T / sqrt(d_h)) v per head.

    One d->d matmul where BERT does three; the scalings are d-vectors, so the scores depend on d_q ⊙ d_k only.
    """

    def __init__(self, config: SharedBertConfig):
        super().__init__()
        self.config = config
        self.head_size = head_size(config)
        self.scaling = self.head_size**-0.5
        self.is_causal = False
        self.shared = nn.Linear(config.hidden_size, config.hidden_size)
        self.query_scale = nn.Parameter(torch.ones(config.hidden_size))  # d_q
        self.key_scale = nn.Parameter(torch.ones(config.hidden_size))  # d_k
        self.value_scale = nn.Parameter(torch.ones(config.hidden_size))  # d_v
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        heads_shape = (*hidden_states.shape[:-1], -1, self.head_size)
        s = self.shared(hidden_states)  # (B, L, d)
        # Shared weights for query, key and value (the paper's eq.): q = s ⊙ d_q, k = s ⊙ d_k, v = s ⊙ d_v
        q = (s * self.query_scale).view(heads_shape).transpose(1, 2)  # (B, H, L, d_h)
        k = (s * self.key_scale).view(heads_shape).transpose(1, 2)
        v = (s * self.value_scale).view(heads_shape).transpose(1, 2)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        context, weights = attention_interface(
            self,
            q,
            k,
            v,
            attention_mask,
            dropout=self.dropout.p if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return context.reshape(*hidden_states.shape[:-1], -1), weights  # (B, L, d)

    def reference_heads(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """s ⊙ scale per head with s = x W_s + b_s, in float64: (n, L, d) -> (n, H, L, d_h)."""
        s = x.double() @ self.shared.weight.double().T + self.shared.bias.double()
        return split_heads(s * scale.double(), self.config.num_attention_heads)

    def reference_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(s ⊙ d_q)(s ⊙ d_k)^T / sqrt(d_h) per head, in float64: (n, L, d) -> (n, H, L, L)."""
        q, k = self.reference_heads(x, self.query_scale), self.reference_heads(x, self.key_scale)
        return q @ k.transpose(-1, -2) * self.scaling

    def reference_values(self, x: torch.Tensor) -> torch.Tensor:
        """v = s ⊙ d_v per head, in float64: (n, L, d) -> (n, H, L, d_h)."""
        return self.reference_heads(x, self.value_scale)

    @classmethod
    def forward_matmuls(cls, config: SharedBertConfig, batch_size: int, seq_len: int) -> list[tuple[int, int]]:
        """The one shared projection, scores and a·v (the scalings are elementwise)."""
        d = config.hidden_size
        return [linear_flops(batch_size * seq_len, d, d)] + [scores_flops(batch_size, seq_len, d)] * 2

    @torch.no_grad()
    def bert_projections(self) -> dict[str, torch.Tensor]:
        """BERT's query, key and value weights and biases that give exactly these q, k and v (BERT's form, for an
        export): s ⊙ d_q = x (diag(d_q) W_s)^T + b_s ⊙ d_q, so W_q = diag(d_q) W_s and b_q = b_s ⊙ d_q in `nn.Linear`'s
        (out, in) layout, and so for the key and the value."""
        weight, bias = self.shared.weight, self.shared.bias
        return {f"{name}.{part}": tensor
                for name, scale in (("query", self.query_scale), ("key", self.key_scale), ("value", self.value_scale))
                for part, tensor in (("weight", scale[:, None] * weight), ("bias", scale * bias))}


class SharedBertPreTrainedModel(LeanPreTrainedModel):
    config: SharedBertConfig
    config_class = SharedBertConfig  # transformers < 4.54 reads the class attribute, not the annotation
    base_model_prefix = "shared_bert"
    attention_class = SharedBertSelfAttention

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SharedBertSelfAttention):
            for scale in (module.query_scale, module.key_scale, module.value_scale):
                init.ones_(scale)


class SharedBertModel(LeanModel, SharedBertPreTrainedModel):
    """The bare SharedBert encoder, returning hidden states and BERT's pooled [CLS] output."""


class SharedBertForMaskedLM(LeanForMaskedLM, SharedBertPreTrainedModel):
    base_model_class = SharedBertModel


class SharedBertForSequenceClassification(LeanForSequenceClassification, SharedBertPreTrainedModel):
    base_model_class = SharedBertModel


class SharedBertForTokenClassification(LeanForTokenClassification, SharedBertPreTrainedModel):
    base_model_class = SharedBertModel


class SharedBertForQuestionAnswering(LeanForQuestionAnswering, SharedBertPreTrainedModel):
    base_model_class = SharedBertModel


class SharedBertForMultipleChoice(LeanForMultipleChoice, SharedBertPreTrainedModel):
    base_model_class = SharedBertModel


__all__ = [
    "SharedBertForMaskedLM",
    "SharedBertForMultipleChoice",
    "SharedBertForQuestionAnswering",
    "SharedBertForSequenceClassification",
    "SharedBertForTokenClassification",
    "SharedBertModel",
    "SharedBertPreTrainedModel",
]
