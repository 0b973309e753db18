"""Training checkpoints that are leanbert's own: in a marked folder, written atomically, resumed without pickle.

A checkpoint folder holds a marker (`.leanbert-checkpoints.json`) and one `step_<n>` folder per checkpoint: the
`accelerate` state (model weights as safetensors; optimizer, scheduler and random states read back with torch's
weights-only loader, which cannot run code; no custom pickled objects) and `progress.json` (step, loss curve and
the run's settings, and the SHA-256 of every other file, checked by `verify()` before a resume). Each is written as
`step_<n>.partial` and renamed once complete, so a run killed while saving leaves an incomplete folder that
`latest()` skips and the next save removes (as does a save that runs out of disk space). A folder that holds anything
else is refused, and only these entries are ever deleted.

A checkpoint also records the number of processes that made it and the fingerprints of what decides the computation
(`fingerprints`: the contents of every input file, the tokenizer's pipeline); a resume with other inputs or another
process count is refused, naming the difference. The checksums detect accidents, not forgery (see README).
"""

import contextlib
import errno
import json
import os
import re
import shutil
import socket
from pathlib import Path

import torch

from .errors import LeanbertError
from .fingerprints import changed_input, changed_tokenizer_part, input_fingerprints, tokenizer_fingerprint
from .output import (check_disjoint, check_writable, holder_alive, lock_info, missing_parents, release_lock,
                     remove_if_empty, remove_tree, sha256_file, write_text_atomically)

MARK = ".leanbert-checkpoints.json"
PROGRESS = "progress.json"
STEP = re.compile(r"step_(\d+)(\.partial)?")


class CheckpointFolder:
    """The checkpoints of one run; checked on construction (before any work), created by `open()`."""

    def __init__(self, path: str | Path, *, inputs=(), command: str | None = None):
        self.path = Path(path)
        self.command = command  # the command of this run, for advice that fits it
        self.inputs = [(what, where) for what, where in inputs if what != "output"]
        self.fingerprints: dict | None = None
        if self.path.name in ("", ".", ".."):
            raise LeanbertError(f"checkpoint folder {str(path)!r} does not name a folder of its own")
        check_disjoint(self.path, "checkpoint folder", inputs)
        self.lock = self.path.with_name(f".{self.path.name}.leanbert-lock")
        check_writable(self.path, "checkpoint folder")
        self.ours = not self.path.exists() or (self.path / MARK).is_file()  # a folder the user made is left standing
        self.created: list[Path] = []
        if self.path.is_symlink() or (self.path.exists() and not self.path.is_dir()):
            raise LeanbertError(f"checkpoint folder {str(self.path)!r} exists and is not a folder")
        if self.path.is_dir() and any(self.path.iterdir()) and not (self.path / MARK).is_file():
            raise LeanbertError(f"checkpoint folder {str(self.path)!r} exists and holds files leanbert did not "
                                "write; give checkpoints a folder of their own")

    def claim(self, command: str) -> None:
        """Take the folder's lock (beside it) for this run, so that two runs never share checkpoints; a lock left by
        a dead run is taken over."""
        info = lock_info(command)
        self.created = missing_parents(self.path)
        try:
            self.lock.parent.mkdir(parents=True, exist_ok=True)
            if self.lock.exists():
                try:
                    held = json.loads(self.lock.read_text())
                except (OSError, ValueError):
                    held = {}
                if held and holder_alive(held):
                    raise LeanbertError(self.in_use(held))
                self.lock.unlink()
            fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise LeanbertError(f"checkpoint folder {str(self.path)!r} is in use by another leanbert run") from None
        except OSError as error:
            raise LeanbertError(f"cannot use checkpoint folder {str(self.path)!r}: {error.strerror or error}") from None
        with os.fdopen(fd, "w") as handle:
            json.dump(info, handle)

    def holder(self) -> dict | None:
        """What the lock says about the live run that holds this folder, or None (no lock, or a dead run's)."""
        try:
            held = json.loads(self.lock.read_text())
        except (OSError, ValueError):
            return None
        return held if isinstance(held, dict) and held and holder_alive(held) else None

    def in_use(self, held: dict) -> str:
        where = f" on {held['host']}" if held.get("host") not in (None, socket.gethostname()) else ""
        return (f"checkpoint folder {str(self.path)!r} is in use by another leanbert run, still running "
                f"({held.get('command') or 'leanbert'}, pid {held.get('pid')}{where}, since {held.get('since')}); wait "
                "for it to end, or give this run a --checkpoint-dir of its own")

    def release(self) -> None:
        """Give up the lock; the parent folders `claim()` created go too once nothing is left in them."""
        release_lock(self.lock)
        remove_if_empty(self.created)

    def open(self, command: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / MARK).is_file():
            write_text_atomically(self.path / MARK, json.dumps({"written_by": command}) + "\n")

    def entries(self) -> list[tuple[int, bool, Path]]:
        """(step, complete, path) of every checkpoint folder, oldest first."""
        if not (self.path / MARK).is_file():
            return []
        found = [(int(m[1]), not m[2], p) for p in self.path.iterdir() if (m := STEP.fullmatch(p.name)) and p.is_dir()]
        return sorted(found)

    def latest(self) -> tuple[Path, dict] | None:
        """The newest complete checkpoint and its progress, or None; incomplete ones are skipped."""
        for step, complete, path in reversed(self.entries()):
            if not complete:
                continue
            try:
                progress = json.loads((path / PROGRESS).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(progress, dict) and progress.get("step") == step:
                return path, progress
        return None

    def resume_point(self, settings: dict, resume: bool, *, processes: int | None = None,
                     tokenizer=None) -> tuple[Path, dict] | None:
        """The checkpoint a run with `settings` continues from (None for a fresh start), found before any work:
        refuses a folder a running run holds, a resume with no checkpoint, with any setting changed (naming the
        first), with another number of `processes`, with inputs whose contents changed or another `tokenizer`
        pipeline (naming the file or the part), and a fresh start that would discard an earlier run's checkpoints.
        Fingerprints the inputs for the checkpoints this run saves."""
        held = self.holder()
        if held is not None:
            raise LeanbertError(self.in_use(held))
        self.fingerprints = {"inputs": input_fingerprints(self.inputs),
                             "tokenizer": None if tokenizer is None else tokenizer_fingerprint(tokenizer)}
        latest = self.latest()
        if not resume:
            if latest is not None:
                advice = ("leanbert-convert cannot continue it (its converted model was not kept); delete that folder "
                          "to convert afresh" if self.command == "leanbert-convert" else
                          "pass --resume to continue it or delete that folder to start afresh")
                raise LeanbertError(f"checkpoint folder {str(self.path)!r} holds a checkpoint (step "
                                    f"{latest[1]['step']}) of an earlier run; {advice}")
            return None
        if latest is None:
            raise LeanbertError(f"--resume: no complete checkpoint in {str(self.path)!r}")
        saved = latest[1].get("settings", {})
        afresh = f"resume with the inputs the run started with, or delete {str(self.path)!r} to start afresh"
        changed = changed_input(latest[1].get("inputs") or {}, self.fingerprints["inputs"])
        for name, value in settings.items():
            if saved.get(name) != json.loads(json.dumps(value)):
                if changed is not None and name.endswith(("_checksum", "_sha256")):  # derived from a changed input
                    raise LeanbertError(f"--resume: {changed} since the checkpoint was made; {afresh}")
                raise LeanbertError(f"--resume: setting {name} is {value!r} but the checkpoint was made with "
                                    f"{saved.get(name)!r}; resume with the same settings")
        made_by = latest[1].get("processes")
        if processes is not None and made_by is not None and made_by != processes:
            raise LeanbertError(f"--resume: the checkpoint was made by {made_by} processes and this run has "
                                f"{processes}; steps, the learning-rate schedule and the data order are counted over "
                                f"all processes, so resume with {made_by} (accelerate launch --num_processes "
                                f"{made_by})")
        saved_tokenizer, tokenizer_now = latest[1].get("tokenizer"), self.fingerprints["tokenizer"]
        if isinstance(saved_tokenizer, dict) and tokenizer_now is not None:
            part = changed_tokenizer_part(saved_tokenizer, tokenizer_now)
            if part is not None:
                raise LeanbertError(f"--resume: the tokenizer's {part} changed since the checkpoint was made (it would "
                                    f"give other token ids); {afresh}")
        if changed is not None:
            raise LeanbertError(f"--resume: {changed} since the checkpoint was made; {afresh}")
        self.verify(*latest)
        return latest

    @staticmethod
    def verify(path: Path, progress: dict) -> None:
        """Refuse a checkpoint whose files are not exactly those it was saved with (damaged or tampered)."""
        files = progress.get("files")
        present = {p.name for p in path.iterdir() if p.is_file() and p.name != PROGRESS}
        if not isinstance(files, dict) or set(files) != present:
            raise LeanbertError(f"checkpoint {str(path)!r} does not hold the files it was saved with")
        for name, digest in files.items():
            if sha256_file(path / name) != digest:
                raise LeanbertError(f"checkpoint {str(path)!r} was changed after it was saved ({name}); "
                                    "it cannot be resumed from")

    def save(self, accelerator, step: int, progress: dict) -> None:
        """`accelerator.save_state` into `step_<step>.partial`, then progress.json, then the rename that makes it
        complete; older checkpoints are dropped after. Every process calls this (accelerate saves per process)."""
        partial = self.path / f"step_{step}.partial"
        if accelerator.is_main_process:
            for _, complete, path in self.entries():
                if not complete:
                    remove_tree(path)
        accelerator.wait_for_everyone()
        if self.fingerprints is None:
            self.fingerprints = {"inputs": input_fingerprints(self.inputs), "tokenizer": None}
        record = {"step": step, "processes": accelerator.num_processes, **self.fingerprints, **progress}
        with self.space_checked(partial, accelerator):
            accelerator.save_state(str(partial), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with self.space_checked(partial, accelerator):
                files = {p.name: sha256_file(p) for p in sorted(partial.iterdir()) if p.is_file()}
                write_text_atomically(partial / PROGRESS, json.dumps({**record, "files": files}) + "\n")
            partial.rename(self.path / f"step_{step}")
            for old_step, _, path in self.entries():
                if old_step != step:
                    remove_tree(path)
        accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def space_checked(self, partial: Path, accelerator):
        """A save that runs out of disk space (or quota) removes its incomplete checkpoint and ends in one line naming
        the folder and about the space a checkpoint takes; the newest complete checkpoint is kept."""
        try:
            yield
        except Exception as error:  # safetensors and torch.save report a full disk in their own exception types
            needed = checkpoint_bytes(accelerator)
            full = (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
                f"(os error {code})" in str(error) for code in (errno.ENOSPC, errno.EDQUOT)) or \
                shutil.disk_usage(self.path).free < needed
            if not full:
                raise
            with contextlib.suppress(OSError):  # another process may have removed it first
                remove_tree(partial)
            raise LeanbertError(f"no space left for a checkpoint in {str(self.path)!r}: one needs about "
                                f"{megabytes(needed)} and {megabytes(shutil.disk_usage(self.path).free)} are free; "
                                "free some space or give --checkpoint-dir on a larger disk") from None

    def remove_if_unused(self) -> None:
        """`remove()` when the run saved no checkpoint: an interrupted run leaves no empty folder behind."""
        if not self.entries():
            self.remove()

    def remove(self) -> None:
        """Delete every checkpoint and the marker; the folder itself only if leanbert made it and nothing else is
        left in it."""
        for _, _, path in self.entries():
            remove_tree(path)
        (self.path / MARK).unlink(missing_ok=True)
        if self.ours and self.path.is_dir() and not any(self.path.iterdir()):
            remove_if_empty([self.path])  # a mount point stays (it cannot be removed)


def checkpoint_bytes(accelerator) -> int:
    """About what one checkpoint of the prepared models and optimizers takes on disk: the bytes of their parameters,
    buffers and optimizer states, read locally (a `state_dict()` would gather FSDP shards: a collective that the
    other processes, not in this error, would never join)."""
    tensors = [t for model in accelerator._models for t in (*model.parameters(), *model.buffers())]
    for optimizer in accelerator._optimizers:
        tensors += [t for state in getattr(optimizer, "optimizer", optimizer).state.values() for t in state.values()
                    if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def megabytes(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"
