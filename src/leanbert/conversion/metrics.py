"""How close a converted attention block is to its source: the relative errors of the attention logits and of the
value-output path, written out from the weights in float64 as an independent check of the modules' forward."""

import math

import torch
from torch import nn

from ..modeling_encoder import LeanSelfAttention, split_heads
from ..modeling_shared_bert import SharedBertSelfAttention


def _linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ linear.weight.double().T + linear.bias.double()


def attention_logits(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pre-softmax logits (n, H, L, L) of a self-attention module on x (n, L, d), in float64, written out from
    the weights: a leanbert module's `reference_logits` (`LeanSelfAttention`), or transformers' BertSelfAttention's
    q k^T / sqrt(d_h). An independent check of each module's forward."""
    if isinstance(attention, LeanSelfAttention):
        return attention.reference_logits(x)
    x = x.double()
    count = attention.num_attention_heads  # transformers' BertSelfAttention
    q, k = split_heads(_linear(attention.query, x), count), split_heads(_linear(attention.key, x), count)
    return q @ k.transpose(-1, -2) * attention.scaling


def attention_values(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The values (n, H, L, d_h) of a BERT or SharedBert self-attention module on x (n, L, d), in float64."""
    if isinstance(attention, SharedBertSelfAttention):
        return attention.reference_values(x)
    return split_heads(_linear(attention.value, x.double()), attention.num_attention_heads)


@torch.no_grad()
def value_rel_error(teacher: nn.Module, student: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                    chunk: int = 16) -> float:
    """‖dense'(P v') − dense(P v)‖ / ‖dense(P v)‖ over real tokens, P the teacher's attention probabilities: how
    well the student's value-output path carries the teacher's, whatever its own attention maps. `teacher` /
    `student`: BERT / SharedBert attention blocks (`.self` and `.output.dense`)."""
    error = reference = 0.0
    for start in range(0, hidden.shape[0], chunk):
        x, valid = hidden[start : start + chunk], mask[start : start + chunk].bool()
        logits = attention_logits(teacher.self, x).masked_fill(~valid[:, None, None, :], float("-inf"))
        probs = logits.softmax(-1)  # (n, H, L, L)
        target, estimate = (_linear(block.output.dense, (probs @ attention_values(block.self, x)).transpose(1, 2)
                                    .flatten(2))[valid] for block in (teacher, student))
        error += (estimate - target).square().sum().item()
        reference += target.square().sum().item()
    return math.sqrt(error / reference)


@torch.no_grad()
def attention_logit_rel_error(teacher: nn.Module, student: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                              chunk: int = 16) -> float:
    """sqrt(Σ err²) / sqrt(Σ teacher²) over heads and valid (query, key) pairs of the attention logits, each row
    centred over its valid keys first (softmax ignores per-row constants, so BERT's key bias drops out).

    0 exactly when the student's logits equal the teacher's up to row constants. A single-head student (Shatter)
    is compared with the mean of the teacher's heads. `teacher` / `student`: attention blocks or their `.self`.
    """
    teacher, student = getattr(teacher, "self", teacher), getattr(student, "self", student)
    error = reference = 0.0
    for start in range(0, hidden.shape[0], chunk):
        x, valid = hidden[start : start + chunk], mask[start : start + chunk].bool()
        keys = valid[:, None, None, :].double()  # (n, 1, 1, L)
        pairs = (valid[:, None, :, None] & valid[:, None, None, :]).double()  # (n, 1, L, L)
        logits = []
        for module in (teacher, student):
            raw = attention_logits(module, x)
            logits.append(raw - (raw * keys).sum(-1, keepdim=True) / keys.sum(-1, keepdim=True))
        target, estimate = logits
        if estimate.shape[1] != target.shape[1]:
            target = target.mean(dim=1, keepdim=True)
        error += ((estimate - target).square() * pairs).sum().item()
        reference += (target.square() * pairs).sum().item()
    return math.sqrt(error / reference)
