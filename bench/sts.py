"""STS-B evaluation of sentence embeddings (`bench_converted`, and the archived conversion and healing benchmarks):
Spearman correlation between cosine similarity of mean-pooled, L2-normalised embeddings and the gold similarity
scores. Used only for evaluation, never for fitting."""

import csv
import json
from collections.abc import Callable
from pathlib import Path

import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

STS_TRAIN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue" / "STS-B" / "train.tsv"


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of real tokens: (N, L, d) -> (N, d), as sentence-transformers pools."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def read_sts_pairs(path: Path = STS_TRAIN, limit: int | None = None) -> tuple[list[str], list[str], list[float]]:
    """(sentence1s, sentence2s, gold scores) from a GLUE STS-B tsv; the files hold bare quotes, so no quoting."""
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    rows = rows[:limit] if limit else rows
    return [r[7] for r in rows], [r[8] for r in rows], [float(r[-1]) for r in rows]


@torch.no_grad()
def embed(model, tokenizer, sentences: list[str], batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    """Mean-pooled, L2-normalised last hidden states, (N, d)."""
    model = model.eval()
    chunks = []
    for start in tqdm(range(0, len(sentences), batch_size), desc="embedding", leave=False):
        batch = tokenizer(sentences[start : start + batch_size], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        chunks.append(torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1))
    return torch.cat(chunks)


def sts_spearman(model, tokenizer, pairs) -> tuple[float, torch.Tensor]:
    """Spearman ×100 on the pairs, and the embeddings of all their sentences (first then second sentences)."""
    first, second, gold = pairs
    embeddings = embed(model, tokenizer, first + second)
    a, b = embeddings[: len(first)], embeddings[len(first) :]
    return 100 * spearmanr((a * b).sum(-1).numpy(), gold).statistic, embeddings


def earlier_rows(path: Path, pairs: int, keep: Callable[[dict], bool]) -> list[dict]:
    """The rows of an earlier result file that `keep` selects, if that run evaluated the same number of pairs: lets
    a benchmark re-measure some targets and keep the others."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    return [row for row in earlier["rows"] if keep(row)] if earlier.get("sts_pairs") == pairs else []
