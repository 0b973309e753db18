"""Start of one SharedBert attention block from one BERT attention block, then per-layer refinement.

Lossy by nature: each head's single projection must carry both BERT's value subspace and its query/key subspace,
which barely overlap (CONVERSION_NOTES.md). The start keeps the value path exact (W_s = W_v, b_s = b_v, d_v = 1,
W_o copied), with d_q ⊙ d_k fitted by least squares to BERT's logits in that space; the refinement (`refine.py`)
then trains W_s, b_s, the three scalings and W_o against the teacher block's output on calibration text.
"""

import torch
from torch import nn

from .metrics import attention_logit_rel_error
from .refine import block_output, refine_block, split_holdout


@torch.no_grad()
def closed_form(teacher: nn.Module, student: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> None:
    """W_s = W_v exactly; the per-channel product c = d_q ⊙ d_k minimises Σ (Σ_c s_ic c s_jc - q_i·k_j)² over
    calibration pairs within each head (key side centred per sequence: constants over keys do not matter)."""
    bert, shared = teacher.self, student.self
    shared.shared.load_state_dict(bert.value.state_dict())
    student.output.load_state_dict(teacher.output.state_dict())
    shared.value_scale.fill_(1.0)
    heads, r = bert.num_attention_heads, bert.attention_head_size
    x = hidden[mask].double()  # (T, d) real tokens
    s = (x @ bert.value.weight.double().T + bert.value.bias.double()).view(-1, heads, r)  # (T, H, r)
    q = (x @ bert.query.weight.double().T + bert.query.bias.double()).view(-1, heads, r)
    k = (x @ bert.key.weight.double().T).view(-1, heads, r)
    k, s_key = k - k.mean(0), s - s.mean(0)
    # normal equations per head: (S^T S ∘ S_k^T S_k) c = rowsum(S^T Q ∘ S_k^T K)
    gram = torch.einsum("thi,thj->hij", s, s) * torch.einsum("thi,thj->hij", s_key, s_key)  # (H, r, r)
    rhs = (torch.einsum("thi,thj->hij", s, q) * torch.einsum("thi,thj->hij", s_key, k)).sum(-1)  # (H, r)
    c = torch.linalg.solve(gram + 1e-6 * gram.diagonal(dim1=1, dim2=2).mean() * torch.eye(r), rhs).flatten()
    shared.query_scale.copy_(c.sign() * c.abs().sqrt())
    shared.key_scale.copy_(c.abs().sqrt())


def fit_shared_attention(teacher: nn.Module, student: nn.Module, hidden: torch.Tensor, mask: torch.Tensor,
                         refine_steps: int = 300, generator: torch.Generator | None = None) -> dict[str, float]:
    """Start `student` (a `LeanAttention` with a `SharedBertSelfAttention`) from `teacher` (a `BertAttention`),
    then refine all of its attention parameters on `hidden` (N, L, d) / `mask` (N, L)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    mask = mask.bool()
    closed_form(teacher, student, hidden, mask)
    closed_form_error = attention_logit_rel_error(teacher, student, hidden, mask)
    target = block_output(teacher, hidden, mask)
    train, holdout = split_holdout(len(hidden), generator)
    parameters = [*student.self.parameters(), *student.output.dense.parameters()]
    before, after = refine_block(student, parameters, hidden, mask, target, train, holdout, refine_steps, generator)
    return {"logit_rel_error_closed_form": closed_form_error,
            "logit_rel_error": attention_logit_rel_error(teacher, student, hidden, mask),
            "output_mse_before": before, "output_mse_after": after}
