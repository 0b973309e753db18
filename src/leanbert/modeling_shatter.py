"""Shatter: one attention head whose values depend on soft parts of the relative position (arXiv 2108.13032).

What the paper states: a single attention head; the relative positions j - i are softly partitioned into parts,
each part with its own value matrix, which is what lets one head replace many; no absolute positions needed.
What is our reconstruction (the method section was not available): the query-only score (keys are the layer
input, since with one head W_q W_k^T is one d x d bilinear form), the Bernstein-polynomial partition and its exact
one-call expansion (the fast path), the learned partition, folding the output projection into the value matrices,
and the sigmoid option. Each is a `ShatterConfig` field.

    o_i = Σ_k Σ_j a_ij p_k(j - i) V_k x_j = Σ_k [(A ⊙ P_k)(X V_k)]_i
"""

from math import comb

import torch
from torch import nn
from transformers.processing_utils import Unpack

from .configuration_shatter import ShatterConfig
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
    linear_flops,
    scores_flops,
)
from .transformers_compat import ALL_ATTENTION_FUNCTIONS, TransformersKwargs, init


# The learned partition starts from the Bernstein parts through their logarithm; the parts are exactly 0 at the ends
# of the range (t = 0 or 1), so they are raised to this floor first: finite logits that softmax can still move.
MIN_INITIAL_PART = 1e-4


def bernstein_parts(relative: torch.Tensor, num_parts: int, scale: int) -> torch.Tensor:
    """p_k(r) = C(m, k) t^k (1 - t)^(m - k), t = (r + R) / 2R, m = P - 1: non-negative for |r| <= R and summing
    to one for every r. (..., ) -> (..., P), float64."""
    m = num_parts - 1
    t = (relative.double() + scale) / (2 * scale)
    return torch.stack([comb(m, k) * t**k * (1 - t) ** (m - k) for k in range(num_parts)], dim=-1)


class BernsteinPartition(nn.Module):
    """Fixed Bernstein parts p_k(j - i) (`bernstein_parts`), which also factor as p_k(j - i) = Σ_a f_a(i) g_ka(j):
    the fast path (`ShatterSelfAttention.factored_forward`) uses that to never build an n x n part.

    With t = c_i + u_j, c_i = 1/2 - i/2R and u_j = j/2R, and p_k(t) = Σ_n β_kn t^n:
    p_k = Σ_a c_i^a · Σ_e β_k,a+e C(a+e, a) u_j^e, i.e. f_a(i) = c_i^a and g_ka(j) = Σ_e G_kae u_j^e.
    """

    def __init__(self, num_parts: int, scale: int):
        super().__init__()
        self.num_parts, self.scale = num_parts, scale
        m = num_parts - 1
        beta = [[0.0] * (m + 1) for _ in range(num_parts)]  # beta[k][n]: coefficient of t^n in p_k
        for k in range(num_parts):
            for l in range(m - k + 1):
                beta[k][k + l] = comb(m, k) * comb(m - k, l) * (-1) ** l
        self.expansion = [[[beta[k][a + e] * comb(a + e, a) if a + e <= m else 0.0 for e in range(m + 1)]
                           for a in range(m + 1)] for k in range(num_parts)]  # G[k][a][e]

    def forward(self, relative: torch.Tensor) -> torch.Tensor:
        return bernstein_parts(relative, self.num_parts, self.scale)

    def factors(self, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """f (L, m+1) and g (L, P, m+1) with p_k(j - i) = Σ_a f[i, a] g[j, k, a]."""
        positions = torch.arange(length, device=device, dtype=torch.float64) / (2 * self.scale)
        powers = positions[:, None] ** torch.arange(self.num_parts, device=device)  # (L, m+1): u^e
        f = (0.5 - positions)[:, None] ** torch.arange(self.num_parts, device=device)  # (L, m+1): c^a
        g = torch.einsum("le,kae->lka", powers, torch.tensor(self.expansion, device=device, dtype=torch.float64))
        return f.to(dtype), g.to(dtype)


class LearnedPartition(nn.Module):
    """p_k(r) = softmax_k(θ[clip(r, -R, R)]): a learned partition of unity over clipped relative distances,
    initialised to the Bernstein parts so that training starts from the fixed family."""

    def __init__(self, num_parts: int, scale: int):
        super().__init__()
        self.num_parts, self.scale = num_parts, scale
        self.logits = nn.Parameter(torch.empty(2 * scale + 1, num_parts))  # θ: (2R + 1, P)

    def initial_logits(self) -> torch.Tensor:
        distances = torch.arange(-self.scale, self.scale + 1)
        return bernstein_parts(distances, self.num_parts, self.scale).clamp(min=MIN_INITIAL_PART).log().float()

    def forward(self, relative: torch.Tensor) -> torch.Tensor:
        index = relative.clamp(-self.scale, self.scale) + self.scale
        return self.logits[index].softmax(dim=-1)


PARTITIONS = {"bernstein": BernsteinPartition, "learned": LearnedPartition}


class ShatterSelfAttention(LeanSelfAttention):
    """One head of full width d; values V_1..V_P (output projection folded in) mixed by soft relative parts.

    `forward` is the paper's sum over parts under the eager implementation and for the learned partition; with
    Bernstein parts under any other attention implementation (SDPA by default) it is `factored_forward`, the same
    sum computed by one call of that implementation, tested equal to the sum.

    The embeddings refuse sequences longer than max_position_embeddings and the Bernstein partition is built only
    with R >= max_position_embeddings - 1, so every distance it sees has |j - i| <= R, where its parts are valid.
    """

    has_output_projection = False  # V_1..V_P map into the residual stream themselves

    def __init__(self, config: ShatterConfig):
        super().__init__()
        scale, longest = config.relative_scale, config.max_position_embeddings
        if config.partition == "bernstein" and scale < longest - 1:
            raise ValueError(f"distance_scale={scale} must be >= max_position_embeddings - 1 = {longest - 1}: "
                             "Bernstein parts turn negative for |j - i| > distance_scale")
        self.config = config
        d, parts = config.hidden_size, config.num_parts
        self.num_parts = parts
        self.scaling = d**-0.5
        self.is_causal = False
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d) if config.key_projection else None
        self.value = nn.Linear(d, parts * d)  # V_1..V_P stacked
        self.partition = PARTITIONS[config.partition](parts, scale)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    @staticmethod
    def uses_factored_parts(config: ShatterConfig) -> bool:
        """Whether `forward` takes the factored fast path: Bernstein parts, and an implementation other than eager."""
        return config.partition == "bernstein" and config._attn_implementation not in (None, "eager")

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, L, d = hidden_states.shape
        q = self.query(hidden_states).unsqueeze(1)  # (B, 1, L, d): a single head
        k = (hidden_states if self.key is None else self.key(hidden_states)).unsqueeze(1)  # (B, 1, L, d)
        values = self.value(hidden_states).view(B, L, self.num_parts, d)  # (B, L, P, d): V_k x_j
        if self.uses_factored_parts(self.config):
            return self.factored_forward(q, k, values, attention_mask, **kwargs)

        # Relative sequence partitioning (the paper's eq.): o_i = Σ_k Σ_j a_ij p_k(j - i) V_k x_j
        #                                                      = Σ_k [(A ⊙ P_k)(X V_k)]_i
        weights = self.probabilities(q, k, attention_mask)[:, 0]  # (B, L, L): A
        positions = torch.arange(L, device=hidden_states.device)
        parts = self.partition(positions[None, :] - positions[:, None]).to(weights.dtype)  # (L, L, P): p_k(j - i)
        output = sum(torch.matmul(weights * parts[..., p], values[:, :, p]) for p in range(self.num_parts))
        return output, weights.unsqueeze(1)  # (B, L, d), (B, 1, L, L)

    def factored_forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        values: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The paper's sum with Bernstein parts, expanded: p_k(j - i) = Σ_a f_a(i) g_ka(j), so
        o_i = Σ_a f_a(i) [A · W_a]_i with W_a[j] = Σ_k g_ka(j) V_k x_j: one attention call with (m+1)·d-wide values
        instead of P explicit n x n products."""
        B, L, parts, d = values.shape
        f, g = self.partition.factors(L, values.device, values.dtype)  # (L, m+1), (L, P, m+1)
        # batched matmuls rather than einsum: several times faster on the CPU, forward and backward
        wide = torch.matmul(g.transpose(1, 2), values).reshape(B, 1, L, -1)  # (B, 1, L, (m+1)·d)
        if self.config.attention_normalizer == "softmax":
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            mixed, weights = attention_interface(
                self, q, k, wide, attention_mask,
                dropout=self.dropout.p if self.training else 0.0, scaling=self.scaling, **kwargs,
            )  # (B, L, 1, (m+1)·d)
        else:
            weights = self.probabilities(q, k, attention_mask)
            mixed = torch.matmul(weights, wide).transpose(1, 2)  # (B, L, 1, (m+1)·d)
        output = torch.matmul(f.unsqueeze(1), mixed.reshape(B, L, -1, d)).squeeze(2)  # (B, L, d)
        return output, weights

    def probabilities(self, q: torch.Tensor, k: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The attention matrix A (B, 1, L, L), explicitly: softmax, or sigmoid(s - log n) with n valid keys."""
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scaling  # (B, 1, L, L)
        valid = torch.ones_like(scores, dtype=torch.bool) if attention_mask is None else (
            attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        ).expand_as(scores)
        if self.config.attention_normalizer == "softmax":
            weights = scores.masked_fill(~valid, torch.finfo(scores.dtype).min).softmax(dim=-1)
        else:
            count = valid.sum(dim=-1, keepdim=True).clamp(min=1)
            weights = torch.sigmoid(scores - count.to(scores.dtype).log()) * valid
        return self.dropout(weights)

    def reference_logits(self, x: torch.Tensor) -> torch.Tensor:
        """q_i k_j^T / sqrt(d) with q = x W_q + b_q and k = x (or its key projection), one head, in float64:
        (n, L, d) -> (n, 1, L, L)."""
        x = x.double()
        q = x @ self.query.weight.double().T + self.query.bias.double()
        k = x if self.key is None else x @ self.key.weight.double().T + self.key.bias.double()
        return (q @ k.transpose(-1, -2) * self.scaling)[:, None]

    @classmethod
    def forward_matmuls(cls, config: ShatterConfig, batch_size: int, seq_len: int) -> list[tuple[int, int]]:
        """The query, the P value matrices (output folded in), any key projection and the scores; then either the P
        explicit (A ⊙ P_k)(X V_k) products or the factored path's one attention call with P·d-wide values between
        two products with the fixed factors, and the factors themselves."""
        tokens, d, parts = batch_size * seq_len, config.hidden_size, config.num_parts
        scores = scores_flops(batch_size, seq_len, d)
        products = [linear_flops(tokens, d, d), linear_flops(tokens, d, parts * d), scores]
        products += [linear_flops(tokens, d, d)] * config.key_projection
        if not cls.uses_factored_parts(config):
            return products + [scores] * parts
        return products + [(2 * seq_len * parts**3, 0),  # the factors g: (L, P) powers times (P, P, P) coefficients
                           (2 * tokens * parts * parts * d, 1),  # g_kaᵀ · V_k x_j: (P × P) per token and channel
                           (scores[0] * parts, 2),  # a · (P·d-wide values)
                           (2 * tokens * parts * d, 1)]  # Σ_a f_a(i) · mixed_a


class ShatterPreTrainedModel(LeanPreTrainedModel):
    config: ShatterConfig
    config_class = ShatterConfig  # transformers < 4.54 reads the class attribute, not the annotation
    base_model_prefix = "shatter"
    attention_class = ShatterSelfAttention
    _supports_flash_attn = False  # values are (P)·d wide, wider than queries
    _supports_flex_attn = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LearnedPartition):
            init.copy_(module.logits, module.initial_logits())


class ShatterModel(LeanModel, ShatterPreTrainedModel):
    """The bare Shatter encoder, returning hidden states and BERT's pooled [CLS] output."""


class ShatterForMaskedLM(LeanForMaskedLM, ShatterPreTrainedModel):
    base_model_class = ShatterModel


class ShatterForSequenceClassification(LeanForSequenceClassification, ShatterPreTrainedModel):
    base_model_class = ShatterModel


class ShatterForTokenClassification(LeanForTokenClassification, ShatterPreTrainedModel):
    base_model_class = ShatterModel


class ShatterForQuestionAnswering(LeanForQuestionAnswering, ShatterPreTrainedModel):
    base_model_class = ShatterModel


class ShatterForMultipleChoice(LeanForMultipleChoice, ShatterPreTrainedModel):
    base_model_class = ShatterModel


__all__ = [
    "ShatterForMaskedLM",
    "ShatterForMultipleChoice",
    "ShatterForQuestionAnswering",
    "ShatterForSequenceClassification",
    "ShatterForTokenClassification",
    "ShatterModel",
    "ShatterPreTrainedModel",
]
