"""Per-layer refinement: Adam on chosen parameters of a student attention block, so that its output (after the
block's LayerNorm) matches the teacher block's on calibration activations.

A quarter of the calibration sequences is held out; the held-out error picks the best parameters seen
(the starting point included), so refinement never makes the held-out error worse.
"""

import torch
from torch import nn

HOLDOUT_FRACTION = 0.25
EVAL_EVERY = 25


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, L) bool -> (N, 1, 1, L) additive mask: 0 on real keys, the dtype's minimum on padding."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)[
        :, None, None
    ]


def masked_mse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens and features of (output - target)²."""
    valid = mask[..., None].to(output.dtype)
    return ((output - target).square() * valid).sum() / (valid.sum() * output.shape[-1])


def split_holdout(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random (train, holdout) split of n sequence indices."""
    order = torch.randperm(n, generator=generator)
    n_holdout = max(1, round(HOLDOUT_FRACTION * n))
    return order[n_holdout:], order[:n_holdout]


@torch.no_grad()
def block_output(block: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The block's output (N, L, d) in eval mode, computed in chunks."""
    was_training = block.training
    block.eval()
    outputs = [block(hidden[i : i + batch_size], attention_mask=additive_mask(mask[i : i + batch_size],
                                                                              hidden.dtype))[0]
               for i in range(0, len(hidden), batch_size)]
    block.train(was_training)
    return torch.cat(outputs)


def heldout_mse(student: nn.Module, hidden, mask, target, holdout, batch_size: int = 32) -> float:
    output = block_output(student, hidden[holdout], mask[holdout], batch_size)
    return masked_mse(output, target[holdout], mask[holdout]).item()


def refine_block(student: nn.Module, parameters: list[nn.Parameter], hidden: torch.Tensor, mask: torch.Tensor,
                 target: torch.Tensor, train: torch.Tensor, holdout: torch.Tensor, steps: int,
                 generator: torch.Generator, lr: float = 1e-3, batch_size: int = 16) -> tuple[float, float]:
    """Adam on `parameters` (of `student`) for `steps` steps against `target`; keeps the best held-out parameters.
    Returns the held-out MSE before and after."""
    best_mse = before = heldout_mse(student, hidden, mask, target, holdout)
    best = [p.detach().clone() for p in parameters]
    flags = {p: p.requires_grad for p in student.parameters()}
    for p in student.parameters():
        p.requires_grad_(False)
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    was_training = student.training
    student.eval()  # no dropout: the target is deterministic
    batches = iter(())
    for step in range(1, steps + 1):
        index = next(batches, None)
        if index is None:
            batches = iter(train[torch.randperm(len(train), generator=generator)].split(batch_size))
            index = next(batches)
        output = student(hidden[index], attention_mask=additive_mask(mask[index], hidden.dtype))[0]
        loss = masked_mse(output, target[index], mask[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % EVAL_EVERY == 0 or step == steps:
            mse = heldout_mse(student, hidden, mask, target, holdout)
            if mse < best_mse:
                best_mse, best = mse, [p.detach().clone() for p in parameters]
    with torch.no_grad():
        for p, value in zip(parameters, best):
            p.copy_(value)
    for p, flag in flags.items():
        p.requires_grad_(flag)
    student.train(was_training)
    return before, best_mse
