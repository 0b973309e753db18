"""SymBert: BERT whose query and key share one projection, scored through a learned per-head pairwise matrix.

Symmetric Dot-Product Attention for Efficient Training of BERT Language Models (Courtois et al., 2024,
arXiv 2406.06366). Everything outside self-attention is BERT's (`modeling_encoder.py`).
"""

import torch
from torch import nn
from transformers.processing_utils import Unpack

from .configuration_sym_bert import SymBertConfig
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


class SymBertSelfAttention(LeanSelfAttention):
    """One projection q = xW + b serves as query and key; scores s_ij = q_i B_h q_j^T / sqrt(d_h).

    The fast path folds B_h into the query side (q' = q B_h, n·d·d_h extra flops) and hands (q', q, v) to any
    standard attention kernel, so SDPA and flash attention apply unchanged.
    """

    def __init__(self, config: SymBertConfig):
        super().__init__()
        self.config = config
        self.head_size = head_size(config)
        self.scaling = self.head_size**-0.5
        self.is_causal = False
        self.query_key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.pairwise = (
            nn.Parameter(torch.empty(config.num_attention_heads, self.head_size, self.head_size))  # (H, d_h, d_h)
            if config.attention_mode == "pairwise"
            else None
        )
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        heads_shape = (*hidden_states.shape[:-1], -1, self.head_size)
        q = self.query_key(hidden_states).view(heads_shape).transpose(1, 2)  # (B, H, L, d_h), also the key
        v = self.value(hidden_states).view(heads_shape).transpose(1, 2)  # (B, H, L, d_h)
        # Symmetric dot-product attention with pairwise coefficient: s_ij = q_i B_h q_j^T / sqrt(d_h)
        q_pairwise = q if self.pairwise is None else torch.matmul(q, self.pairwise)  # (B, H, L, d_h)

        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        context, weights = attention_interface(
            self,
            q_pairwise,
            q,
            v,
            attention_mask,
            dropout=self.dropout.p if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        return context.reshape(*hidden_states.shape[:-1], -1), weights  # (B, L, d)

    def reference_logits(self, x: torch.Tensor) -> torch.Tensor:
        """s_ij = q_i B_h q_j^T / sqrt(d_h) with q = x W + b, in float64: (n, L, d) -> (n, H, L, L)."""
        x = x.double()
        q = split_heads(x @ self.query_key.weight.double().T + self.query_key.bias.double(),
                        self.config.num_attention_heads)
        q_left = q if self.pairwise is None else q @ self.pairwise.double()
        return q_left @ q.transpose(-1, -2) * self.scaling

    @classmethod
    def forward_matmuls(cls, config: SymBertConfig, batch_size: int, seq_len: int) -> list[tuple[int, int]]:
        """The query-key and value projections, scores and a·v; with the pairwise matrix, q B_h (d_h x d_h per head
        and token)."""
        tokens, d = batch_size * seq_len, config.hidden_size
        products = [linear_flops(tokens, d, d)] * 2 + [scores_flops(batch_size, seq_len, d)] * 2
        if config.attention_mode == "pairwise":
            products.append((2 * tokens * d * d // config.num_attention_heads, 2))
        return products

    @torch.no_grad()
    def bert_projections(self) -> dict[str, torch.Tensor]:
        """BERT's query, key and value weights and biases that give exactly these scores (BERT's form, for an export):
        per head h, q_h B_h = x (B_h^T W_h)^T + b_h B_h, so W_q[h] = B_h^T W_qk[h] and b_q[h] = b_qk[h] B_h in
        `nn.Linear`'s (out, in) layout; W_k = W_qk, b_k = b_qk; B_h = I for the symmetric mode. Folded in float64."""
        weight, bias = self.query_key.weight.double(), self.query_key.bias.double()
        query_weight, query_bias = weight, bias
        if self.pairwise is not None:
            heads, size = self.pairwise.shape[:2]
            pairwise = self.pairwise.double()  # (H, d_h, d_h)
            query_weight = torch.matmul(pairwise.transpose(1, 2), weight.view(heads, size, -1)).reshape(weight.shape)
            query_bias = torch.matmul(bias.view(heads, 1, size), pairwise).reshape(bias.shape)
        dtype = self.query_key.weight.dtype
        return {"query.weight": query_weight.to(dtype), "query.bias": query_bias.to(dtype),
                "key.weight": self.query_key.weight.clone(), "key.bias": self.query_key.bias.clone(),
                "value.weight": self.value.weight.clone(), "value.bias": self.value.bias.clone()}


class SymBertPreTrainedModel(LeanPreTrainedModel):
    config: SymBertConfig
    config_class = SymBertConfig  # transformers < 4.54 reads the class attribute, not the annotation
    base_model_prefix = "sym_bert"
    attention_class = SymBertSelfAttention

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SymBertSelfAttention) and module.pairwise is not None:
            init.normal_(module.pairwise, mean=0.0, std=self.config.pairwise_init_std)


class SymBertModel(LeanModel, SymBertPreTrainedModel):
    """The bare SymBert encoder, returning hidden states and BERT's pooled [CLS] output."""


class SymBertForMaskedLM(LeanForMaskedLM, SymBertPreTrainedModel):
    base_model_class = SymBertModel


class SymBertForSequenceClassification(LeanForSequenceClassification, SymBertPreTrainedModel):
    base_model_class = SymBertModel


class SymBertForTokenClassification(LeanForTokenClassification, SymBertPreTrainedModel):
    base_model_class = SymBertModel


class SymBertForQuestionAnswering(LeanForQuestionAnswering, SymBertPreTrainedModel):
    base_model_class = SymBertModel


class SymBertForMultipleChoice(LeanForMultipleChoice, SymBertPreTrainedModel):
    base_model_class = SymBertModel


__all__ = [
    "SymBertForMaskedLM",
    "SymBertForMultipleChoice",
    "SymBertForQuestionAnswering",
    "SymBertForSequenceClassification",
    "SymBertForTokenClassification",
    "SymBertModel",
    "SymBertPreTrainedModel",
]
