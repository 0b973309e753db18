"""Text that a conversion calibrates on and measures with, and the teacher activations it yields."""

from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm


def read_passages(path: str | Path | None = None, bundled: str = "calibration.txt") -> list[str]:
    """Non-empty lines of `path` (one passage per line), or of a text file bundled with leanbert."""
    if path is None:
        text = resources.files("leanbert.conversion").joinpath("data", bundled).read_text(encoding="utf-8")
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration text {str(path)!r} is not a file")
        text = path.read_text(encoding="utf-8")
    passages = [line.strip() for line in text.splitlines() if line.strip()]
    if not passages:
        raise ValueError(f"calibration text {str(path)!r} holds no passages")
    return passages


def tokenize(tokenizer, passages: list[str], max_length: int = 128) -> dict[str, torch.Tensor]:
    return tokenizer(passages, max_length=max_length, truncation=True, padding="max_length", return_tensors="pt")


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


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of real tokens: (N, L, d) -> (N, d), as sentence-transformers pools."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
