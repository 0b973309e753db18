"""Output folders that are safe by construction, treating a user's files as `git` and `rsync` do.

Every leanbert command that writes a folder goes through `SafeOutput`:

- **Check** (before any work): the output must not overlap an input in either direction (symlinks resolved), must
  not be a file, a symlink or a mount point (the result is renamed into place from beside it), must be writable
  (it or the folder it will be made in), and must be empty or absent, or, with `force`, hold only files that
  leanbert wrote there and nobody changed since (listed with their SHA-256 in the folder's manifest,
  `.leanbert-output.json`). Nothing else is ever deleted or overwritten, with or
  without `force`.
- **Claim** (in the first second): a lock file beside the output, so a concurrent run on the same output fails
  clearly, and a private staging folder beside it, which also proves the parent is writable.
- **Publish** (after the result is complete): files get the mode the user's umask gives; the manifest is written,
  files are flushed to disk, and the staging folder replaces the output in one atomic exchange (Linux
  `renameat2(RENAME_EXCHANGE)`; elsewhere two renames, undone on failure). At every instant either the old or the
  new output is in place. The old copy is then removed file by file, only files the manifest lists, unchanged.
  If the output changed meanwhile or the file system refuses the swap, the finished result is kept beside it
  (`<name>.leanbert-unpublished-<pid>`, or in its staging folder, marked) and the error says where.
- **Recovery**: a run killed at any point leaves its lock behind; the next run on that output sees that the lock's
  process is gone, puts back an old output that the kill left aside, removes the dead run's staging folder and
  says what it did.
- **Release** (always): the lock goes, the staging folder too unless it was published, and so do the parent folders
  the run made for its output if it ended with nothing in them.
"""

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

from .. import __version__
from .errors import LeanbertError, first_line

MANIFEST = ".leanbert-output.json"
STAGING_MARK = ".leanbert-staging"
UNPUBLISHED_MARK = ".leanbert-unpublished"  # a finished result that could not be moved out of its staging folder


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(path: str | Path, what: str) -> Path:
    """`path` with symbolic links resolved, or one line saying why it cannot be (a loop, a name too long)."""
    try:
        os.fsencode(str(path)).decode("utf-8")
        try:
            os.lstat(path)
        except FileNotFoundError:
            pass  # an output to be created
        return Path(path).resolve()
    except (OSError, RuntimeError, UnicodeError) as error:
        reason = getattr(error, "strerror", None) or first_line(error)
        raise LeanbertError(f"{what} {str(path)!r} cannot be used: {reason}") from None


def exists(path: str | Path) -> bool:
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def check_disjoint(path: Path, what: str, inputs: Iterable[tuple[str, str | Path | None]],
                   may_contain: bool = False) -> None:
    """Refuse `path` (an output, checkpoint or cache folder) when it overlaps any local input, in either direction
    (or only when it is or lies inside one, with `may_contain`: a cache folder whose writer keeps to subfolders of its
    own). The output and checkpoint folder are compared even before they exist (they will)."""
    target = resolve(path, what)
    for name, value in inputs:
        if value is None or (name not in ("output", "checkpoint folder") and not exists(value)):
            continue  # a Hub id or the bundled text: nothing local to overlap
        source = resolve(value, name)
        if target == source:
            raise LeanbertError(f"{what} {str(path)!r} is the {name} itself; choose another folder")
        if source in target.parents:
            raise LeanbertError(f"{what} {str(path)!r} is inside the {name} {str(value)!r}; choose another folder")
        if target in source.parents and not may_contain:
            raise LeanbertError(f"{what} {str(path)!r} contains the {name} {str(value)!r}; choose another folder")


def mount_points(table: bytes) -> set[str]:
    """The mount points a Linux mount table (`/proc/self/mountinfo`) lists: its fifth field, with the octal escapes
    of spaces and backslashes undone, decoded as the file system's names are (`os.fsdecode`)."""
    points = (line.split()[4] for line in table.splitlines() if len(line.split()) > 4)
    return {os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda code: bytes([int(code[1], 8)]), point)) for point in points}


def is_mount_point(path: Path) -> bool:
    """Whether `path` is a mount point, a bind mount of a folder of the same file system included (the mount table
    lists those; `os.path.ismount` only compares devices)."""
    if os.path.ismount(path):
        return True
    try:
        return str(path.resolve()) in mount_points(Path("/proc/self/mountinfo").read_bytes())
    except (OSError, RuntimeError, ValueError):  # no /proc (not Linux), a symlink loop
        return False


def check_writable(path: Path, what: str) -> None:
    """Refuse, before any work, a folder this user could not create or fill: its nearest existing ancestor (where it
    will be created, with a staging folder beside it) must be writable, and the folder itself, when it exists,
    readable and writable, as `cp` would need at the end of the run. (What is not a folder is left to the caller.)"""
    existing = next((parent for parent in path.parents if exists(parent)), Path("."))
    if not existing.is_dir():
        raise LeanbertError(f"cannot write the {what} {str(path)!r}: {str(existing)!r} is not a folder")
    places = [(existing, os.W_OK | os.X_OK)]
    if path.is_dir() and not path.is_symlink():
        places.append((path, os.R_OK | os.W_OK | os.X_OK))
    for place, mode in places:
        if not os.access(place, mode):
            raise LeanbertError(f"cannot write the {what} {str(path)!r}: {str(place)!r} is not "
                                f"{'writable' if mode == os.W_OK | os.X_OK else 'readable and writable'} "
                                "(Permission denied)")


def missing_parents(path: Path) -> list[Path]:
    """The folders above `path` that do not exist yet, innermost first: those a run is about to create, and so the
    only ones it may remove again (`remove_if_empty`) when it ends without publishing anything in them."""
    missing = []
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            break
        missing.append(parent)
    return missing


def remove_if_empty(folders: list[Path]) -> None:
    """Remove `folders` (innermost first) while they are empty, like `git clone` after a failed clone; the first one
    holding anything (a published output, a file the user put there meanwhile) stops it, so nothing is lost."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def umask() -> int:
    """The process's umask: from /proc on Linux (setting it, even back at once, would race with other threads
    creating files), else by setting it back at once."""
    try:
        return int(next(line.split()[1] for line in Path("/proc/self/status").read_text().splitlines()
                        if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, IndexError, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def share_as_umask_says(folder: Path) -> None:
    """Give every file and folder under `folder` the mode the user's umask gives new ones: some writers (temporary
    files renamed into place) leave them readable by their owner alone, which a shared model folder must not be."""
    mask = umask()
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


def foreign_entries(folder: Path) -> list[str]:
    """Entries of `folder` that leanbert did not write there or that changed since: everything but the files its
    manifest lists with the same size and SHA-256. Empty for an empty folder."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        listed = {}
    ours = {parent.as_posix() for name in (listed if isinstance(listed, dict) else ())
            for parent in Path(name).parents if parent != Path(".")}  # folders holding leanbert's files
    foreign = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if name == MANIFEST or (path.is_dir() and not path.is_symlink() and name in ours):
            continue
        if path.is_dir() and not path.is_symlink():
            foreign.append(name + "/")
            continue
        entry = listed.get(name) if isinstance(listed, dict) else None
        if (path.is_symlink() or not isinstance(entry, dict) or path.stat().st_size != entry.get("size")
                or sha256_file(path) != entry.get("sha256")):
            foreign.append(name)
    if (folder / MANIFEST).exists() and not listed and not foreign:
        foreign.append(MANIFEST)  # an unreadable manifest is not ours to delete
    return foreign


def write_manifest(folder: Path, command: str) -> None:
    """List every file under `folder` with its size and SHA-256, so a later `--force` knows what is leanbert's."""
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (MANIFEST, STAGING_MARK)}
    text = json.dumps({"written_by": f"leanbert {__version__}", "command": command, "files": files}, indent=1)
    write_text_atomically(folder / MANIFEST, text + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    """Write a small file through a temporary sibling and one rename: readers see the old or the new text."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def fsync_tree(folder: Path, recursive: bool = True) -> None:
    """Flush every file and folder under `folder` (or the folder alone) to disk, so a power loss cannot publish a
    half-written output."""
    for path in [*(folder.rglob("*") if recursive else ()), folder]:
        if path.is_symlink():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 with RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def remove_listed(folder: Path) -> list[str]:
    """Delete what `foreign_entries` does not name (leanbert's unchanged files), then empty folders; return what
    was kept."""
    kept = foreign_entries(folder)
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        name = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink():
            if name + "/" not in kept and not any(path.iterdir()):
                path.rmdir()
        elif name not in kept:
            path.unlink()
    if (folder / MANIFEST).exists() and MANIFEST not in kept:
        (folder / MANIFEST).unlink()
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return kept


def process_start(pid: int) -> str | None:
    """The start time of a process (Linux), to tell a live process from a later one that reused its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_alive(lock: dict) -> bool:
    if lock.get("host") != socket.gethostname():
        return True  # another machine's run: we cannot tell, so it is taken as running
    pid = lock.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return lock.get("start") is None or process_start(pid) == lock["start"]


def disk_full(error: BaseException) -> bool:
    """Whether `error` is a full disk or an exhausted quota: an OSError, or safetensors' and torch's own exception
    types, which carry the OS error in their message."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(f"(os error {code})" in str(error) or os.strerror(code) in str(error)
               for code in (errno.ENOSPC, errno.EDQUOT))


def tree_bytes(folder: Path) -> int:
    """The bytes of the files under `folder` (0 if it is gone)."""
    with contextlib.suppress(OSError):
        return sum(path.lstat().st_size for path in folder.rglob("*") if path.is_file())
    return 0


def mebibytes(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


class SafeOutput:
    """One run's output folder: checked on construction, claimed by `with`, replaced only by `publish()`.

    ```python
    output = SafeOutput("out/model", inputs=[("source", source)], force=args.force)  # raises LeanbertError
    with output as staging:      # lock taken, leftovers of killed runs recovered, staging folder created
        model.save_pretrained(staging)
        output.publish()         # atomic; without it (an error, Ctrl-C) the old output stays untouched
    ```
    """

    def __init__(self, path: str | Path, *, inputs: Iterable[tuple[str, str | Path | None]] = (),
                 force: bool = False, command: str = "leanbert"):
        self.path, self.force, self.command = Path(path), force, command
        if self.path.name in ("", ".", ".."):
            raise LeanbertError(f"output {str(path)!r} does not name a new folder; give a folder name such as "
                                "out/model")
        check_disjoint(self.path, "output", inputs)
        self.lock = self.path.with_name(f".{self.path.name}.leanbert-lock")
        self.staging = self.path.with_name(f".{self.path.name}.leanbert-new-{os.getpid()}")
        self.aside = self.path.with_name(f".{self.path.name}.leanbert-old-{os.getpid()}")
        check_writable(self.path, "output")
        self.check_replaceable()
        self.created: list[Path] = []
        self.leave_staging = False
        self.expected_bytes = 0  # what the result will take, where a writer knows it: named if the disk fills

    def check_replaceable(self) -> None:
        """Refuse an output that this run may not replace (see the module docstring)."""
        path = self.path
        if path.is_symlink():
            raise LeanbertError(f"output {str(path)!r} is a symbolic link; give the folder it points to")
        if path.exists() and not path.is_dir():
            raise LeanbertError(f"output {str(path)!r} exists and is not a folder")
        if is_mount_point(path):
            raise LeanbertError(f"output {str(path)!r} is a mount point: the finished result is renamed into place "
                                "from beside it, which cannot cross file systems; give a folder inside it, such as "
                                f"{str(path / 'model')!r}")
        if not path.is_dir() or not any(path.iterdir()):
            return
        if not self.force:
            raise LeanbertError(f"output folder {str(path)!r} exists and is not empty; pass --force to replace it")
        if not os.access(path, os.W_OK | os.X_OK):
            raise LeanbertError(f"output folder {str(path)!r} is not writable, so its old files cannot be removed")
        foreign = foreign_entries(path)
        if foreign:
            shown = ", ".join(map(repr, foreign[:3])) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise LeanbertError(f"output folder {str(path)!r} holds files leanbert did not write or that changed "
                                f"since ({shown}); --force only replaces leanbert's own outputs, so move them away "
                                "or choose another folder")

    def __enter__(self) -> Path:
        parent = self.path.parent
        self.created = missing_parents(self.path)
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.take_lock()
        except OSError as error:
            raise LeanbertError(f"cannot write the output {str(self.path)!r} in {str(parent)!r}: "
                                f"{error.strerror or error}") from None
        try:
            self.check_replaceable()  # again, now that the output is ours: it may have changed since the check
            if exists(self.staging):  # kept by an earlier run of a process with this pid (containers reuse them)
                self.leave_staging = True
                raise LeanbertError(f"{str(self.staging)!r} is left by an earlier run whose process had this one's id "
                                    "and may hold a result it could not publish; look inside, then move it away")
            self.staging.mkdir()
            (self.staging / STAGING_MARK).write_text(f"{self.command}\n")
        except BaseException:
            self.release()
            raise
        return self.staging

    def __exit__(self, kind, error, traceback) -> None:
        """Release the output; a run that filled the disk (or quota) ends in one line naming the output and the
        space, with nothing of it left behind."""
        written = tree_bytes(self.staging) if error is not None and disk_full(error) else None
        self.release()
        if written is not None:
            free = shutil.disk_usage(next(p for p in self.path.parents if p.is_dir())).free  # its parents may be gone
            needed = (f"about {mebibytes(self.expected_bytes)}" if self.expected_bytes > written else
                      f"more than the {mebibytes(written)} written when the disk filled")
            raise LeanbertError(f"no space left for the output {str(self.path)!r}: the result needs {needed} and "
                                f"{mebibytes(free)} are free; free some space or give --output on a larger disk") \
                from None

    def take_lock(self) -> None:
        info = lock_info(self.command)
        for _ in range(3):
            try:
                fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self.recover_stale_lock()
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(info, handle)
            return
        raise LeanbertError(f"cannot take the lock {str(self.lock)!r} on output {str(self.path)!r}")

    def recover_stale_lock(self) -> None:
        """Clean up after a run on this output that died (its lock remains), or refuse if it is still running."""
        try:
            lock = json.loads(self.lock.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):  # empty or garbled: a run starting right now, or one killed while starting
            lock = {}
        fresh = not lock and time.time() - self.lock.stat().st_mtime < 10
        if fresh or (lock and holder_alive(lock)):
            raise LeanbertError(f"output {str(self.path)!r} is being written by another leanbert run (pid "
                                f"{lock.get('pid')}, {lock.get('command')}, since {lock.get('since')}); wait for it,"
                                f" or delete {str(self.lock)!r} if that run is gone")
        taken = self.lock.with_name(f"{self.lock.name}.stale-{os.getpid()}")
        try:
            os.rename(self.lock, taken)  # only one recovering run wins this rename
        except FileNotFoundError:
            return
        messages = []
        pid = lock.get("pid")
        aside = self.path.with_name(f".{self.path.name}.leanbert-old-{pid}")
        if aside.is_dir():
            if not self.path.exists():
                os.rename(aside, self.path)
                messages.append(f"put back the previous output from {aside.name}")
            else:
                kept = remove_listed(aside)
                if kept:
                    messages.append(f"kept {aside.name}: it holds files leanbert did not write ({', '.join(kept)})")
        prefix = f".{self.path.name}.leanbert-new-"  # compared as text: the name may hold glob characters
        for staging in [p for p in self.path.parent.iterdir() if p.name.startswith(prefix)]:
            if (staging / UNPUBLISHED_MARK).is_file():
                messages.append(f"kept {staging.name}: it holds a finished result that run could not publish")
            elif (staging / STAGING_MARK).is_file():
                remove_tree(staging)
                messages.append(f"removed the unfinished {staging.name}")
            elif staging.name.endswith(f"-{pid}") and (kept := remove_listed(staging)):
                messages.append(f"kept {staging.name}: it holds files leanbert did not write ({', '.join(kept)})")
        taken.unlink()
        print(f"leanbert: an earlier run on {str(self.path)!r} (pid {pid}) was interrupted; "
              + ("; ".join(messages) or "nothing was left to clean up"), file=sys.stderr)

    def publish(self) -> None:
        """Replace the output with the staging folder in one atomic step (see the module docstring)."""
        share_as_umask_says(self.staging)
        write_manifest(self.staging, self.command)
        fsync_tree(self.staging)
        try:
            self.check_replaceable()
        except LeanbertError as error:  # the output changed during the run: keep both, tell the user
            self.keep_unpublished(str(error))
        emptied = self.path.is_dir() and not any(self.path.iterdir())
        try:
            if emptied:
                self.path.rmdir()  # an empty folder holds nothing to keep
            (self.staging / STAGING_MARK).unlink()
            old = self.swap_in()
        except OSError as error:  # the file system refused (the output became a mount point, went read-only, ...)
            if emptied and not self.path.exists():
                with contextlib.suppress(OSError):
                    self.path.mkdir()  # the empty folder goes back where it was
            self.keep_unpublished(f"cannot put the result in place of output {str(self.path)!r}: "
                                  f"{error.strerror or error}")
        except BaseException:
            if self.staging.is_dir():  # not swapped in: still ours to remove
                (self.staging / STAGING_MARK).write_text(f"{self.command}\n")
            raise
        fsync_tree(self.path.parent, recursive=False)
        if old is None:
            return
        try:
            reason = "files changed in it while this run wrote" if remove_listed(old) else None
        except OSError as error:
            reason = f"it could not be removed ({error.strerror or error})"
        if reason:
            kept = self.path.with_name(f"{self.path.name}.leanbert-previous-{os.getpid()}")
            os.rename(old, kept)
            print(f"leanbert: the previous output {str(self.path)!r} is kept in {str(kept)!r}: {reason}",
                  file=sys.stderr)

    def keep_unpublished(self, reason: str) -> NoReturn:
        """Keep the finished result that could not be published (beside the output, or where it was staged if even
        that rename fails), so that a failure at the very end loses nothing, and say where it is."""
        self.leave_staging = True  # release() leaves it alone, whatever marks it holds
        kept = self.path.with_name(f"{self.path.name}.leanbert-unpublished-{os.getpid()}")
        if exists(kept):  # one kept by an earlier run of a process with this pid (containers reuse them)
            kept = kept.with_name(f"{kept.name}-{time.time_ns()}")
        try:
            os.rename(self.staging, kept)
        except OSError:  # the parent folder refuses too: the mark keeps a later run's recovery off it
            kept = self.staging
            with contextlib.suppress(OSError):
                (kept / UNPUBLISHED_MARK).write_text(f"{self.command}: {reason}\n")
        if kept != self.staging or (kept / UNPUBLISHED_MARK).is_file():
            with contextlib.suppress(OSError):
                (kept / STAGING_MARK).unlink(missing_ok=True)
        raise LeanbertError(f"{reason}; the new result is kept in {str(kept)!r}") from None

    def swap_in(self) -> Path | None:
        """Put the staging folder in the output's place; return where the old output now stands (None if none)."""
        if not self.path.exists():
            os.rename(self.staging, self.path)
            return None
        if exchange(self.staging, self.path):
            return self.staging
        os.rename(self.path, self.aside)
        try:
            os.rename(self.staging, self.path)
        except BaseException as error:
            try:
                os.rename(self.aside, self.path)
            except OSError as restore:  # the old output cannot go back either: say where it stands
                raise OSError(restore.errno, f"{restore.strerror or restore}; the previous output stands in "
                                             f"{str(self.aside)!r}") from error
            raise
        return self.aside

    def release(self) -> None:
        """Remove the staging folder unless it was published, the lock, and the parent folders this run created if
        nothing was published in them (an interrupted run leaves the disk as it found it)."""
        if self.staging.is_dir() and (self.staging / STAGING_MARK).is_file() and not self.leave_staging:
            remove_tree(self.staging)
        release_lock(self.lock)
        remove_if_empty(self.created)


def lock_info(command: str) -> dict:
    """What a lock file says about the run holding it: enough to tell later whether that run is still alive."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": process_start(os.getpid()),
            "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def release_lock(lock: Path) -> None:
    """Delete `lock` if this process holds it."""
    try:
        held = json.loads(lock.read_text())
    except (OSError, ValueError):
        return
    if held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
        try:
            lock.unlink()
        except OSError:  # its folder turned read-only: the next run on this output finds it stale and recovers
            pass


def remove_tree(folder: Path) -> None:
    """Delete a folder that leanbert created in this run or a dead one (a staging folder or checkpoint)."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    folder.rmdir()
