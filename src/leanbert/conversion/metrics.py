"""How close a converted attention block is to its source: the relative errors of the attention logits and of the
value-output path, written out from the weights in float64 as an independent check of the modules' forward."""

import math

import torch
from torch import nn


def _linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return x @ linear.weight.double().T + linear.bias.double()


def attention_logits(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pre-softmax logits (n, H, L, L) of a BERT, SymBert, SharedBert or Shatter self-attention module on
    x (n, L, d), in float64, written out from the weights: an independent check of each module's forward."""
    x = x.double()

    def heads(y, count):  # (n, L, d) -> (n, H, L, d / H)
        return y.view(*y.shape[:2], count, -1).transpose(1, 2)

    if hasattr(attention, "query_key"):  # SymBert: (q B_h) q^T
        count = attention.config.num_attention_heads
        q = heads(_linear(attention.query_key, x), count)
        q_left = q if attention.pairwise is None else q @ attention.pairwise.double()
        return q_left @ q.transpose(-1, -2) * attention.scaling
    if hasattr(attention, "shared"):  # SharedBert: (s ⊙ d_q)(s ⊙ d_k)^T
        count = attention.config.num_attention_heads
        s = _linear(attention.shared, x)
        q, k = heads(s * attention.query_scale.double(), count), heads(s * attention.key_scale.double(), count)
        return q @ k.transpose(-1, -2) * attention.scaling
    if hasattr(attention, "num_parts"):  # Shatter: one head, keys are the input (or its key projection)
        k = x if attention.key is None else _linear(attention.key, x)
        return (_linear(attention.query, x) @ k.transpose(-1, -2) * attention.scaling)[:, None]
    count = attention.num_attention_heads  # transformers' BertSelfAttention
    q, k = heads(_linear(attention.query, x), count), heads(_linear(attention.key, x), count)
    return q @ k.transpose(-1, -2) * attention.scaling


def attention_values(attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The values (n, H, L, d_h) of a BERT or SharedBert self-attention module on x (n, L, d), in float64."""
    x = x.double()
    if hasattr(attention, "shared"):  # SharedBert: s ⊙ d_v
        count = attention.config.num_attention_heads
        v = _linear(attention.shared, x) * attention.value_scale.double()
    else:
        count = attention.num_attention_heads
        v = _linear(attention.value, x)
    return v.view(*v.shape[:2], count, -1).transpose(1, 2)


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
