"""Per-layer refinement, the one every conversion uses: Adam on chosen parameters of a student attention block, so
that its output (after the block's LayerNorm) matches the teacher block's on calibration activations, plus any
extra loss terms a fit adds (SharedBert: the attention distributions). The block runs its own forward throughout.

A quarter of the calibration sequences is held out; the held-out error picks the best parameters seen
(the starting point included), so refinement never makes the held-out error worse.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

HOLDOUT_FRACTION = 0.25
EVAL_EVERY = 25
# The default number of Adam steps per layer (batches of 16 sequences, lr 1e-3): enough for the fits on MiniLM to
# settle; since the held-out error picks the best step, more steps cost time but never fidelity.
REFINE_STEPS = 300


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


@contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Within the block, `modules` are in eval mode (no dropout: targets and fits are deterministic); each one's
    training flag is restored after."""
    flags = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, flag in zip(modules, flags):
            module.train(flag)


@torch.no_grad()
def block_output(block: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The block's output (N, L, d) in eval mode, computed in chunks."""
    with evaluating(block):
        return torch.cat([block(hidden[i : i + batch_size],
                                attention_mask=additive_mask(mask[i : i + batch_size], hidden.dtype))[0]
                          for i in range(0, len(hidden), batch_size)])


def heldout_mse(student: nn.Module, hidden, mask, target, holdout, batch_size: int = 32) -> float:
    """The masked MSE of the student's output against `target` on the `holdout` sequences."""
    output = block_output(student, hidden[holdout], mask[holdout], batch_size)
    return masked_mse(output, target[holdout], mask[holdout]).item()


@contextmanager
def eager_attention(*blocks: nn.Module) -> Iterator[None]:
    """Within the block, the attention modules of `blocks` run transformers' eager path, whose forward also returns
    the attention probabilities (the fused SDPA path returns None); their configs' setting is restored after."""
    configs = list({id(block.self.config): block.self.config for block in blocks}.values())
    saved = [config._attn_implementation for config in configs]
    for config in configs:
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        for config, implementation in zip(configs, saved):
            config._attn_implementation = implementation


def _batches(train: torch.Tensor, batch_size: int, generator: torch.Generator,
             with_replacement: bool) -> Iterator[torch.Tensor]:
    """Endless batches of `train` indices: each drawn uniformly with replacement, or else epochs, each a fresh
    random order of all of `train` cut into batches (the last one may be smaller)."""
    while True:
        if with_replacement:
            yield train[torch.randint(len(train), (batch_size,), generator=generator)]
        else:
            yield from train[torch.randperm(len(train), generator=generator)].split(batch_size)


# extra_loss(hidden, mask, probabilities) of a batch: (B, L, d) inputs, (B, L) bool mask, the student's attention
# probabilities (B, H, L, L) from its forward (None unless it runs in `eager_attention`); a scalar to add.
ExtraLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def refine_block(student: nn.Module, parameters: list[nn.Parameter], hidden: torch.Tensor, mask: torch.Tensor,
                 target: torch.Tensor, train: torch.Tensor, holdout: torch.Tensor, steps: int,
                 generator: torch.Generator, lr: float = 1e-3, batch_size: int = 16,
                 extra_loss: ExtraLoss | None = None, with_replacement: bool = False) -> tuple[float, float]:
    """Adam on `parameters` (of `student`) for `steps` steps, each on `batch_size` of the `train` sequences (in a
    fresh random order every epoch, or drawn with replacement), minimising the masked MSE of the student's output
    against `target` (N, L, d) plus `extra_loss` if given; keeps the parameters with the best held-out MSE (on the
    `holdout` sequences). A fit may pass rows of `hidden` / `mask` / `target` twice with different masks
    (SharedBert's cut-short copies). Returns the held-out MSE before and after; the student's other parameters are
    untouched, its gradients None."""
    best_mse = before = heldout_mse(student, hidden, mask, target, holdout)
    best = [p.detach().clone() for p in parameters]
    flags = {p: p.requires_grad for p in student.parameters()}
    for p in student.parameters():
        p.requires_grad_(False)
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(parameters, lr=lr)
    batches = _batches(train, batch_size, generator, with_replacement)
    with evaluating(student):
        for step, index in zip(range(1, steps + 1), batches):
            output, probabilities = student(hidden[index], attention_mask=additive_mask(mask[index], hidden.dtype))
            loss = masked_mse(output, target[index], mask[index])
            if extra_loss is not None:
                loss = loss + extra_loss(hidden[index], mask[index], probabilities)
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
            p.grad = None
    for p, flag in flags.items():
        p.requires_grad_(flag)
    return before, best_mse
