"""Text for masked-LM pretraining: read, tokenised and packed with `datasets` (cached), masked by transformers'
collator with masks that depend only on the seed, the epoch and the block, so that a resumed run sees the very
masks an uninterrupted one would, and with at least one masked token in every batch.

As transformers' `run_mlm.py` does without `--line_by_line`: every non-empty line is tokenised with its special
tokens, the token streams are concatenated and cut into blocks of `max_seq_length` (the remainder is dropped).
`datasets` caches the text and its tokenised blocks under a fingerprint of the files' contents (not their paths
and modification times, which a replaced file can keep), the tokenizer's pipeline and the settings, so a second
run on the same text starts training at once and a run on changed text never reads the old blocks. A cache file
that does not load (truncated, damaged) is named and rebuilt.
"""

import errno
import hashlib
import json
import sys
from itertools import chain
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from transformers import DataCollatorForLanguageModeling

from ..common.errors import LeanbertError, first_line
from ..common.fingerprints import contents_digest, tokenizer_fingerprint
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
    """One digest of what decides the tokenizer's ids (`tokenizer_fingerprint`: vocabulary, normaliser,
    pre-tokeniser, model, post-processor, special tokens), for cache keys."""
    return fingerprint(tokenizer_fingerprint(tokenizer))


# what a cache file that does not load raises: pyarrow on a truncated or damaged Arrow file, json on its metadata
DAMAGED_CACHE = (pa.ArrowException, json.JSONDecodeError, EOFError)


def from_cache(build, rebuild, cache: str, what: str):
    """`build()`, which reads or writes the datasets cache `cache`; a cache file that does not load is rebuilt
    (`rebuild()`) with one line saying so, and a cache that cannot be written (a full disk) is one error naming it,
    with the temporary file `datasets` was writing next to a cache file removed (it leaves it when the disk fills)."""
    folder = Path(cache).parent if cache.endswith(".arrow") else None
    before = temporary_files(folder)
    try:
        try:
            return build()
        except DAMAGED_CACHE as error:
            print(f"leanbert: the datasets cache of {what} {cache!r} does not load ({first_line(error)}); "
                  "rebuilding it", file=sys.stderr)
            return rebuild()
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            for path in temporary_files(folder) - before:
                path.unlink(missing_ok=True)
            raise LeanbertError(f"no space left for the datasets cache of {what} in {cache!r}: "
                                f"{error.strerror}; free some space or give --cache-dir on a larger disk") from None
        raise LeanbertError(f"cannot use the datasets cache of {what} {cache!r}: {first_line(error)}") from None
    except DAMAGED_CACHE as error:
        raise LeanbertError(f"the datasets cache of {what} {cache!r} does not load even when rebuilt "
                            f"({first_line(error)}); delete it") from None


def temporary_files(folder: Path | None) -> set[Path]:
    """The temporary files (`tmp*`, as `datasets.Dataset.map` names them) in a cache folder."""
    try:
        return set(folder.glob("tmp*")) if folder is not None and folder.is_dir() else set()
    except OSError:
        return set()


def packed_blocks(files: list[str], tokenizer, max_seq_length: int, *, whole_word_mask: bool,
                  cache_dir: str | None, what: str) -> datasets.Dataset:
    """Blocks of `max_seq_length` tokens from `files`, tokenised and packed once and then read from the cache, which
    is keyed by the files' contents (streamed SHA-256), the tokenizer's pipeline and the settings."""
    contents = contents_digest(files, what)
    settings = fingerprint(contents, tokenizer_fingerprint(tokenizer), max_seq_length, whole_word_mask)

    def load(mode=None):  # the text's own cache, named by its contents (datasets keys it by path and mtime)
        return datasets.load_dataset("text", name=f"leanbert-{contents}", data_files={"train": files},
                                     split="train", cache_dir=cache_dir, download_mode=mode)

    folder = cache_dir or datasets.config.HF_DATASETS_CACHE
    raw = from_cache(load, lambda: load(datasets.DownloadMode.FORCE_REDOWNLOAD), str(folder), what)
    here = str(Path(raw.cache_files[0]["filename"]).parent) if raw.cache_files else str(folder)

    def tokenize(batch):
        texts = [line for line in batch["text"] if line.strip()]
        return tokenizer(texts, return_special_tokens_mask=True, return_offsets_mapping=whole_word_mask)

    def pack(batch):
        stream = {key: list(chain.from_iterable(batch[key])) for key in batch}
        length = len(stream["input_ids"]) // max_seq_length * max_seq_length
        return {key: [values[i: i + max_seq_length] for i in range(0, length, max_seq_length)]
                for key, values in stream.items()}

    def step(source, function, name, description, **options):
        def run(cached=True):
            return source.map(function, batched=True, new_fingerprint=f"{settings}-{name}", desc=description,
                              load_from_cache_file=cached, **options)
        return from_cache(run, lambda: run(cached=False), str(Path(here) / f"cache-{settings}-{name}.arrow"), what)

    tokens = step(raw, tokenize, "tokens", f"tokenising {what}", remove_columns=["text"])
    blocks = step(tokens, pack, "blocks", f"packing {what} into blocks of {max_seq_length}", batch_size=1000)
    if len(blocks) == 0:
        raise LeanbertError(f"{what} {files[0]!r} is shorter than one block of {max_seq_length} tokens")
    chunks = blocks.data.column("special_tokens_mask").chunks  # scanned until a maskable token, chunk by chunk
    if not any(pc.min(chunk.flatten()).as_py() == 0 for chunk in chunks if len(chunk)):
        raise LeanbertError(f"{what} {files[0]!r} holds no token that can be masked (every token is a special "
                            "token of the tokenizer)")
    return blocks.with_format(columns=[c for c in COLUMNS if c in blocks.column_names])


class SeededMasking:
    """transformers' `DataCollatorForLanguageModeling`, its random draws seeded by (seed, epoch, the batch's
    tokens) rather than the global generator: accelerate reads one batch ahead, so masks drawn from the global
    generator would shift by a batch after a resume. `set_epoch` gives each epoch fresh masks.

    A batch in which the collator masked no token (small batches, short blocks, a low `mlm_probability`) gets one
    masked token, drawn with the same seeded generator: the masked-LM loss is a mean over masked tokens, so with
    none it is 0/0 = NaN, which would poison the step (and read as a divergence). Masking one token rather than
    skipping the step keeps every optimizer step a real step on every process (DDP needs every rank's backward) and
    leaves the masking rate all but unchanged."""

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
            batch = dict(self.collator(examples))
            if (batch["labels"] != -100).any():
                return batch
            special = torch.tensor([list(example["special_tokens_mask"]) for example in examples]).bool()
            candidates = (~special & batch["attention_mask"].bool()).nonzero()
            if len(candidates) == 0:  # a batch of special tokens only: mask any real one
                candidates = batch["attention_mask"].bool().nonzero()
            row, column = candidates[torch.randint(len(candidates), ()).item()].tolist()
            batch["labels"][row, column] = batch["input_ids"][row, column]
            batch["input_ids"][row, column] = self.collator.tokenizer.mask_token_id
            return batch
