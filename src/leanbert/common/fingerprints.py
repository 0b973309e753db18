"""Fingerprints of what decides a computation, by content rather than by path: the bytes of input files (SHA-256,
streamed) and a tokenizer's pipeline (vocabulary, normalisation, pre-tokenisation, model, post-processing, special
tokens). Caches are keyed by them, and a resume or a teacher/student pair whose fingerprints differ is refused.

They detect accidents (a replaced text, a re-saved tokenizer that lowercases), not forgery: whoever can write the
files can write fingerprints that match them.
"""

import hashlib
import json
from pathlib import Path

from .errors import LeanbertError
from .output import sha256_file
from .passages import skipped, text_files

_DIGESTS: dict[tuple, str] = {}
# the parts of a tokenizer, in the order a difference is reported
TOKENIZER_PARTS = ("vocabulary", "normalizer", "pre_tokenizer", "model", "post_processor", "special tokens")


def digest(*parts) -> str:
    """A short digest of JSON-serialisable `parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def file_sha256(path: Path, what: str) -> str:
    """The SHA-256 of a file's bytes, streamed, and hashed once per process while its stat data (device, inode,
    size, modification and change time) stay the same, as git's index trusts them: a file rewritten in place, even
    with its old modification time, gets a new change time and is hashed again."""
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if key not in _DIGESTS:
            _DIGESTS[key] = sha256_file(path)
    except OSError as error:
        raise LeanbertError(f"cannot read {what} {str(path)!r}: {error.strerror or error}") from None
    return _DIGESTS[key]


def contents_digest(files, what: str) -> str:
    """One digest of the contents of `files`, in order: a `datasets.load_dataset` config name (`name=`) that keys
    its cache by content, where `datasets` alone keys local files by path and modification time."""
    return digest([file_sha256(Path(file), what) for file in files])


# inputs that are model folders: what transformers loads from them lies at their top (config, weights, tokenizer
# files); their sub-folders (sentence-transformers modules, onnx/ exports) and notes (README.md, the card) do not
# decide the training
MODEL_INPUTS = ("model", "teacher", "student", "source", "tokenizer")


def content_fingerprint(path: str | Path, what: str) -> dict[str, str] | None:
    """{file: SHA-256} of the files an input `path` holds: the file itself, or a folder's files by their path in it.
    A text input (`what` ends in "text") holds the `.txt` files leanbert reads from it; a model folder
    (`MODEL_INPUTS`) the files at its top but its markdown notes; any other folder (data) all its files but hidden
    ones. None for a path that is not local (a Hub model id)."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return {path.name: file_sha256(path, what)}
    if what.endswith("text"):
        files = text_files(path, what)
    elif what in MODEL_INPUTS:
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".md")
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and not skipped(p.relative_to(path)))
    return {p.relative_to(path).as_posix(): file_sha256(p, what) for p in files}


def input_fingerprints(inputs) -> dict[str, dict]:
    """{what: {"path": ..., "files": content_fingerprint}} of a run's `(what, path)` inputs."""
    return {what: {"path": str(path), "files": content_fingerprint(path, what)} for what, path in inputs}


def changed_input(saved: dict, current: dict) -> str | None:
    """What differs between two `input_fingerprints` (None if nothing): the input and its file, named."""
    for what, now in current.items():
        then = saved.get(what)
        if not isinstance(then, dict) or then.get("files") is None or now["files"] is None:
            continue
        before, after = then["files"], now["files"]
        for name in sorted(set(before) | set(after)):
            if before.get(name) == after.get(name):
                continue
            folder = Path(now["path"])
            file = str(folder / name) if folder.is_dir() else now["path"]
            if name not in before:
                return f"{what} {now['path']!r} gained {name!r}"
            if name not in after:
                return f"{what} {now['path']!r} lost {name!r}"
            return f"{what} {file!r} has other contents"
    return None


def tokenizer_parts(tokenizer) -> dict[str, object]:
    """What decides a tokenizer's ids, part by part: its vocabulary, its normaliser (lowercasing, accents), its
    pre-tokeniser, its model's settings, its post-processor (the special tokens it adds) and its special tokens.
    A fast tokenizer's parts come from its `tokenizers` pipeline (padding and truncation left out: every call sets
    them); a slow one's normalisation from its `do_lower_case`, `strip_accents` and `tokenize_chinese_chars`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    pipeline = json.loads(backend.to_str()) if backend is not None else {}
    init = getattr(tokenizer, "init_kwargs", {}) or {}
    if backend is None:
        normalizer = {key: init.get(key) for key in ("do_lower_case", "strip_accents", "tokenize_chinese_chars")}
    else:
        normalizer = pipeline.get("normalizer")
    model = pipeline.get("model") or {"type": type(tokenizer).__name__}
    return {"vocabulary": sorted(tokenizer.get_vocab().items()), "normalizer": normalizer,
            "pre_tokenizer": pipeline.get("pre_tokenizer"),
            "model": {key: value for key, value in model.items() if key != "vocab"},
            "post_processor": pipeline.get("post_processor"),
            "special tokens": {"tokens": sorted(map(str, tokenizer.all_special_tokens)),
                               "added": pipeline.get("added_tokens")}}


def tokenizer_fingerprint(tokenizer) -> dict[str, str]:
    """`tokenizer_parts`, each as a digest: what a checkpoint records and a cache key includes."""
    return {part: digest(value) for part, value in tokenizer_parts(tokenizer).items()}


def changed_tokenizer_part(saved: dict, current: dict) -> str | None:
    """The first part of two `tokenizer_fingerprint`s that differs, or None."""
    return next((part for part in TOKENIZER_PARTS if part in saved and saved[part] != current.get(part)), None)


def short(value, limit: int = 160) -> str:
    """`value` as compact JSON, cut to `limit` characters, for a one-line message."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."

