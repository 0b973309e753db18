"""The teacher activations a conversion calibrates on, and the rules a calibration text must meet."""

import os

import torch
from tqdm.auto import tqdm

from .source import ConversionError

# The refinement holds out a quarter of the passages to pick its best step and trains on batches of 16: with fewer
# passages than a batch, its held-out error would rest on three passages or fewer.
MIN_PASSAGES = 16
TOKENS_PER_DIMENSION = 8  # whitening a d-dimensional activation needs well over d tokens
MEMORY_SHARE = 0.5  # calibration activations may take at most this share of the machine's memory


def check_calibration_size(passages: int, max_length: int, config) -> None:
    """Refuse a calibration set whose kept activations would not fit in memory (before anything is computed)."""
    layers = config.num_hidden_layers + 1
    needed = passages * max_length * config.hidden_size * layers * 4
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if needed > MEMORY_SHARE * total:
        raise ConversionError(f"--calibration-passages {passages} at --max-length {max_length} would keep "
                              f"{needed / 2**30:.1f} GiB of activations, more than half of this machine's "
                              f"{total / 2**30:.1f} GiB; use fewer passages")


def check_calibration_tokens(batch: dict[str, torch.Tensor], hidden_size: int, where: str) -> None:
    """Refuse calibration text too small for the fit: fewer than MIN_PASSAGES distinct passages or
    TOKENS_PER_DIMENSION real tokens of distinct passages per hidden dimension (the whitened least-squares fits turn
    degenerate below that). A passage repeated adds nothing to the fit, so repeats are counted once."""
    distinct = {tuple(ids[mask.bool()].tolist()) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])}
    passages, tokens = len(distinct), sum(map(len, distinct))
    needed = TOKENS_PER_DIMENSION * hidden_size
    if passages < MIN_PASSAGES or tokens < needed:
        raise ConversionError(f"calibration text {where} is too small for the fit: {passages} distinct passages "
                              f"and {tokens} tokens in them, at least {MIN_PASSAGES} passages and {needed} tokens "
                              f"({TOKENS_PER_DIMENSION} per hidden dimension) are needed")


@torch.no_grad()
def layer_inputs(bert, batch: dict[str, torch.Tensor], batch_size: int = 32) -> list[torch.Tensor]:
    """Hidden states entering each encoder layer (and the last layer's output) of `bert`: num_layers + 1 tensors
    of shape (N, L, d), computed in chunks of `batch_size` sequences."""
    chunks = []
    n = batch["input_ids"].shape[0]
    for start in tqdm(range(0, n, batch_size), desc="calibration pass", leave=False):
        part = {key: value[start : start + batch_size] for key, value in batch.items()}
        chunks.append(bert(**part, output_hidden_states=True).hidden_states)
    return [torch.cat(states) for states in zip(*chunks)]
