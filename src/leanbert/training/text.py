"""Text for masked-LM pretraining: read, tokenised and packed with `datasets` (cached), masked by transformers'
collator with masks that depend only on the seed, the epoch and the block, so that a resumed run sees the very
masks an uninterrupted one would.

As transformers' `run_mlm.py` does without `--line_by_line`: every non-empty line is tokenised with its special
tokens, the token streams are concatenated and cut into blocks of `max_seq_length` (the remainder is dropped).
`datasets` caches the tokenised blocks under a fingerprint of the files, the tokenizer and the settings, so a
second run on the same text starts training at once.
"""

import hashlib
import json
from itertools import chain
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling

from ..common.errors import LeanbertError, first_line
from ..common.passages import check_utf8, lines, text_files

COLUMNS = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "offset_mapping")


def text_source(path: str | Path, what: str) -> list[str]:
    """The `.txt` files of `path` (a file or a folder), refused before any work when missing, unreadable, not UTF-8
    anywhere, or without a non-empty line."""
    files = text_files(path, what)
    for file in files:
        check_utf8(file, what)
    for file in files:
        if next(lines([file], what), None) is not None:
            return [str(f) for f in files]
    raise LeanbertError(f"{what} {str(path)!r} is empty: no line holds text")


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def tokenizer_digest(tokenizer) -> str:
    """What decides the token ids: the vocabulary, the special tokens and the pipeline (normaliser, pre-tokeniser,
    model, post-processor), but not the padding and truncation state, which every call of the tokenizer resets."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pipeline = type(tokenizer).__name__
    if backend is not None:
        pipeline = {key: value for key, value in json.loads(backend.to_str()).items()
                    if key not in ("padding", "truncation")}
    return fingerprint(sorted(tokenizer.get_vocab().items()), tokenizer.all_special_tokens, pipeline)


def packed_blocks(files: list[str], tokenizer, max_seq_length: int, *, whole_word_mask: bool,
                  cache_dir: str | None, what: str) -> datasets.Dataset:
    """Blocks of `max_seq_length` tokens from `files`, tokenised and packed once and then read from the cache."""
    try:
        raw = datasets.load_dataset("text", data_files={"train": files}, split="train", cache_dir=cache_dir)
    except Exception as error:  # a cache that cannot be written after all (a full disk)
        raise LeanbertError(f"cannot load {what} {files[0]!r} into the datasets cache: {first_line(error)}") from None
    settings = fingerprint(raw._fingerprint, tokenizer_digest(tokenizer), max_seq_length, whole_word_mask)

    def tokenize(batch):
        texts = [line for line in batch["text"] if line.strip()]
        return tokenizer(texts, return_special_tokens_mask=True, return_offsets_mapping=whole_word_mask)

    def pack(batch):
        stream = {key: list(chain.from_iterable(batch[key])) for key in batch}
        length = len(stream["input_ids"]) // max_seq_length * max_seq_length
        return {key: [values[i: i + max_seq_length] for i in range(0, length, max_seq_length)]
                for key, values in stream.items()}

    try:
        tokens = raw.map(tokenize, batched=True, remove_columns=["text"], new_fingerprint=settings + "-tokens",
                         desc=f"tokenising {what}")
        blocks = tokens.map(pack, batched=True, batch_size=1000, new_fingerprint=settings + "-blocks",
                            desc=f"packing {what} into blocks of {max_seq_length}")
    except Exception as error:  # a full disk (the text itself was checked before any work)
        raise LeanbertError(f"cannot tokenise {what} {files[0]!r}: {first_line(error)}") from None
    if len(blocks) == 0:
        raise LeanbertError(f"{what} {files[0]!r} is shorter than one block of {max_seq_length} tokens")
    return blocks.with_format(columns=[c for c in COLUMNS if c in blocks.column_names])


class SeededMasking:
    """transformers' `DataCollatorForLanguageModeling`, its random draws seeded by (seed, epoch, the batch's
    tokens) rather than the global generator: accelerate reads one batch ahead, so masks drawn from the global
    generator would shift by a batch after a resume. `set_epoch` gives each epoch fresh masks."""

    def __init__(self, tokenizer, mlm_probability: float, whole_word_mask: bool, seed: int):
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability,
                                                        whole_word_mask=whole_word_mask)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        digest = hashlib.blake2b(f"{self.seed}/{self.epoch}/".encode(), digest_size=8)
        for example in examples:
            digest.update(np.asarray(example["input_ids"], dtype=np.int64).tobytes())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest.digest(), "little") % 2**63)
            return dict(self.collator(examples))
