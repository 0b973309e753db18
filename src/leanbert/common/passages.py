"""Reading text passages (one per line) from a user's file or folder, or from text bundled with leanbert.

Files are streamed, never read whole: with `limit`, a reservoir sample of that many passages is kept (seeded, so
the same file and seed give the same passages), so memory stays bounded whatever the size of the corpus.
"""

import codecs
import os
import random
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from .errors import LeanbertError

MAX_LINE_BYTES = 1 << 20


def text_files(path: str | Path, what: str) -> list[Path]:
    """`path` itself if it is a file, or every `*.txt` file under it if it is a folder (sorted); a folder that
    cannot be listed is refused rather than read as one without text (but for `lost+found` and hidden folders,
    which hold no corpus)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        readable = os.access(path, os.R_OK | os.X_OK)  # else listing it would fail part way
        folders = [p for p in path.rglob("*") if p.is_dir() and not skipped(p.relative_to(path))] if readable else []
        unreadable = path if not readable else next(
            (folder for folder in folders if not os.access(folder, os.R_OK | os.X_OK)), None)
        if unreadable is not None:
            raise LeanbertError(f"cannot read {what} {str(unreadable)!r}: Permission denied (its .txt files cannot "
                                "be listed)")
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if files:
            return files
        raise LeanbertError(f"{what} {str(path)!r} is a folder with no .txt files")
    if path.exists():  # a device, a named pipe, a socket: read once, or never ending
        raise LeanbertError(f"{what} {str(path)!r} is not a regular file or folder; give a file of text or a folder "
                            "of .txt files")
    raise LeanbertError(f"{what} {str(path)!r} not found: no such file or folder")


def skipped(folder: Path) -> bool:
    """A folder inside a corpus that holds none of it: a file system's `lost+found`, or a hidden one (`.git`)."""
    return any(part == "lost+found" or part.startswith(".") for part in folder.parts)


def check_utf8(file: Path, what: str, chunk_size: int = 1 << 24) -> None:
    """Refuse a file that is unreadable or not UTF-8 anywhere, naming the line; decoded in large chunks at the
    speed of the disk (a fraction of a second for tens of megabytes), before any work."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    newlines = 0
    try:
        with open(file, "rb") as handle:
            while chunk := handle.read(chunk_size):
                pending = len(decoder.getstate()[0])  # the bytes of a character cut by the previous chunk
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as error:
                    line = newlines + chunk.count(b"\n", 0, max(error.start - pending, 0)) + 1
                    raise LeanbertError(f"{what} {str(file)!r} is not UTF-8 text (line {line}: {error.reason})") \
                        from None
                newlines += chunk.count(b"\n")
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:  # the file ends inside a character
        raise LeanbertError(f"{what} {str(file)!r} is not UTF-8 text (line {newlines + 1}: {error.reason})") from None
    except OSError as error:
        raise LeanbertError(f"cannot read {what} {str(file)!r}: {error.strerror or error}") from None


def lines(files: list[Path], what: str) -> Iterator[str]:
    """Stripped non-empty lines of `files`, streamed; a line longer than MAX_LINE_BYTES keeps its first
    MAX_LINE_BYTES (far more than any model reads) and the rest is skipped unread into memory. Undecodable or
    unreadable files fail with one clear line."""
    for file in files:
        try:
            with open(file, "rb") as handle:
                number = 0
                while raw := handle.readline(MAX_LINE_BYTES):
                    number += 1
                    cut = not raw.endswith(b"\n") and len(raw) == MAX_LINE_BYTES
                    while cut and (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                        pass
                    try:
                        line = raw.decode("utf-8").removeprefix("\ufeff").strip()
                    except UnicodeDecodeError as error:
                        if cut and error.start >= len(raw) - 3:  # the cut split a character
                            line = raw[: error.start].decode("utf-8").strip()
                        else:
                            raise LeanbertError(f"{what} {str(file)!r} is not UTF-8 text (line {number}: "
                                                f"{error.reason})") from None
                    if line:
                        yield line
        except OSError as error:
            raise LeanbertError(f"cannot read {what} {str(file)!r}: {error.strerror or error}") from None


def read_passages(path: str | Path | None = None, *, bundled: str = "calibration.txt", limit: int | None = None,
                  seed: int = 0, min_chars: int = 1, what: str = "text") -> tuple[list[str], int]:
    """Passages of at least `min_chars` characters from `path` (a file, or a folder of `.txt` files), or from the
    bundled file `bundled` when `path` is None. With `limit`, a seeded uniform sample of at most `limit` of them, in
    file order. Returns the passages and how many the text holds in all."""
    if path is None:
        stream = resources.files("leanbert.common").joinpath("data", bundled).read_text(encoding="utf-8")
        source = (line.strip() for line in stream.splitlines() if line.strip())
        path = f"bundled {bundled}"
    else:
        source = lines(text_files(path, what), what)
    rng = random.Random(seed)
    sample: list[tuple[int, str]] = []
    total = 0
    for passage in source:
        if len(passage) < min_chars:
            continue
        if limit is None or total < limit:
            sample.append((total, passage))
        elif (slot := rng.randrange(total + 1)) < limit:
            sample[slot] = (total, passage)
        total += 1
    if not sample:
        longer = f" of {min_chars} characters or more" if min_chars > 1 else ""
        raise LeanbertError(f"{what} {str(path)!r} holds no passages{longer}")
    return [passage for _, passage in sorted(sample)], total
