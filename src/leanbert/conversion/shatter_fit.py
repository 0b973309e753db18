"""Warm start of one Shatter attention block from one BERT attention block.

Not an equivalent model: BERT's H heads each have their own attention map, Shatter has one. The warm start keeps
what one map can keep. Scores: Shatter's single bilinear form takes the mean of BERT's per-head forms,
M = (1/H) Σ_h W_q^h W_k^hᵀ / sqrt(d_h) (the key bias drops out of the softmax). Values: if all heads shared one map
A, BERT's attention block would output A·X (W_o W_v)ᵀ + (W_o b_v + b_o), since rows of A sum to one; every part's
value matrix starts as that product, so the parts, which also sum to one, start out equal. A per-layer refinement
(`refine.py`) then fits the query and value matrices to the teacher block's output on calibration text.
"""

import math

import torch
from torch import nn

from .refine import REFINE_STEPS, block_output, refine_block, split_holdout


@torch.no_grad()
def closed_form(teacher: nn.Module, student: nn.Module) -> None:
    """Set the student's query (and key, if any), value matrices and output LayerNorm from the teacher."""
    bert, shatter = teacher.self, student.self
    heads, d = bert.num_attention_heads, bert.query.weight.shape[1]
    scale = math.sqrt(d) / (heads * math.sqrt(bert.attention_head_size))
    w_q, b_q, w_k = bert.query.weight.double(), bert.query.bias.double(), bert.key.weight.double()  # (d, d)
    # Shatter logit (x_i W^T + b)·x_j / sqrt(d) = mean over heads of x_i W_q^hT W_k^h x_j / sqrt(d_h) (+ bias term)
    shatter.query.weight.copy_(scale * w_k.T @ w_q)
    shatter.query.bias.copy_(scale * b_q @ w_k)
    if shatter.key is not None:
        shatter.key.weight.copy_(torch.eye(d))
        shatter.key.bias.zero_()
    w_o, b_o = teacher.output.dense.weight.double(), teacher.output.dense.bias.double()
    value = w_o @ bert.value.weight.double()  # (d, d): W_o W_v
    value_bias = w_o @ bert.value.bias.double() + b_o
    shatter.value.weight.copy_(value.repeat(shatter.num_parts, 1))
    shatter.value.bias.copy_(value_bias.repeat(shatter.num_parts))
    student.output.LayerNorm.load_state_dict(teacher.output.LayerNorm.state_dict())


def fit_shatter_attention(teacher: nn.Module, student: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                          refine_steps: int = REFINE_STEPS,
                          generator: torch.Generator | None = None) -> dict[str, float]:
    """Warm-start `student` (a `LeanAttention` with a `ShatterSelfAttention`) from `teacher` (a `BertAttention`),
    then refine its attention parameters on `hidden` (N, L, d) / `mask` (N, L) for `refine_steps` steps."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    mask = mask.bool()
    closed_form(teacher, student)
    target = block_output(teacher, hidden, mask)
    train, holdout = split_holdout(len(hidden), generator)
    attention = student.self
    parameters = list(attention.parameters())
    before, after = refine_block(student, parameters, hidden, mask, target, train, holdout, refine_steps, generator)
    return {"output_mse_before": before, "output_mse_after": after}
