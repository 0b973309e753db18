"""The command-line runner every leanbert command shares: one line per failure, and exit codes a script can use.

- bad input (a `LeanbertError`, or a malformed option): one line naming the problem, exit code 2;
- Ctrl-C or SIGTERM: one line, exit code 130, nothing half-written (outputs are published atomically);
- a file or folder the user may not read or write, or a full or read-only disk: one line naming it, exit code 2
  (the checks before any work catch most; this catches any that slip past, at whatever point);
- anything else is a bug: one line with the exception, exit code 1 (`LEANBERT_TRACEBACK=1` shows the traceback);
- under a launcher (`accelerate launch`, torchrun), the line is read once, from the main process (`report`).
"""

import argparse
import contextlib
import errno
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..common.errors import LeanbertError, first_line


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line (exit code 2, as argparse's own), read once under a launcher
    (`report`): every rank parses the same arguments."""

    def error(self, message: str):
        sys.exit(report(self.prog, f"{self.prog}: error: {message} (see --help)", 2,
                        threading.current_thread() is threading.main_thread()))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**32 - 1], got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


for _check in (positive_int, non_negative_int, seed, positive_float, non_negative_float):
    _check.__name__ = "number" if "float" in _check.__name__ else "integer"  # argparse's "invalid <name> value"


def interrupt(signum, frame):
    """Ctrl-C or SIGTERM: stop the run, once (`quiet_signals`), so that its clean-up runs to its end."""
    quiet_signals()
    raise KeyboardInterrupt


def quiet_signals() -> None:
    """Ignore Ctrl-C and SIGTERM from here on: once a run is ending, a second signal (a launcher's SIGTERM after the
    terminal's SIGINT, which reach every rank) must neither cut its clean-up short nor break its exit into a
    KeyboardInterrupt traceback."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, ignore)


def ignore(signum, frame):
    """A handler that does nothing: unlike SIG_IGN, it also takes a signal that arrived while the handler changed,
    which Python would otherwise report as "Signal 15 ignored due to race condition" with a traceback."""


def launcher_rank() -> int:
    """This process's rank under a launcher (`accelerate launch`, torchrun: RANK, else LOCAL_RANK), 0 alone."""
    for name in ("RANK", "LOCAL_RANK"):
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 0


# How long a rank other than the main one waits before reporting its own failure: when every rank fails alike (bad
# input), the main one reports it and the launcher stops the others within this time, so the problem is read once.
RANK_GRACE_SECONDS = 10.0


def report(prog: str, line: str, code: int, in_main_thread: bool) -> int:
    """Print the failure `line` once under a launcher: the main rank at once; another rank only if it is still alive
    after `RANK_GRACE_SECONDS` (its failure was its own), marked with its rank, dying silently if the launcher stops
    it before. The launcher's report of the failed rank (TORCHELASTIC_ERROR_FILE) names the problem too."""
    rank = launcher_rank()
    if rank and in_main_thread:
        for signum in (signal.SIGTERM, signal.SIGINT):  # the launcher stopping this rank: no line, no traceback
            signal.signal(signum, signal.SIG_DFL)
        time.sleep(RANK_GRACE_SECONDS)
        line = f"{line} (rank {rank})"
    if error_file := os.environ.get("TORCHELASTIC_ERROR_FILE"):
        with contextlib.suppress(OSError):
            Path(error_file).write_text(json.dumps({"message": line, "timestamp": int(time.time())}))
    print(line, file=sys.stderr)
    return code


# What the machine, not leanbert, is short of: these are reported as the user's to fix, not as bugs.
ENVIRONMENT_ERRORS = (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def bug(prog: str, error: Exception, in_main_thread: bool = False) -> int:
    """Report an unexpected exception in one line (exit code 1), or raise it with LEANBERT_TRACEBACK set."""
    if os.environ.get("LEANBERT_TRACEBACK"):
        raise error
    return report(prog, f"{prog}: internal error: {type(error).__name__}: {first_line(error)} (a bug: please report "
                  "it; LEANBERT_TRACEBACK=1 shows the traceback)", 1, in_main_thread)


def run(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run `main(argv)` as the command `prog`, mapping failures to one line and an exit code. transformers' own
    warnings and loading bars are silenced: what leanbert would let them say (missing weights, say) it checks and
    reports itself."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if in_main_thread else None
    previous_int = signal.signal(signal.SIGINT, interrupt) if in_main_thread else None
    try:
        return main(argv)
    except LeanbertError as error:
        return report(prog, f"{prog}: error: {error}", 2, in_main_thread)
    except KeyboardInterrupt:
        if in_main_thread:
            quiet_signals()
        if launcher_rank() == 0:  # every rank is stopped alike: the main one says so
            print(f"{prog}: interrupted; no output was written or replaced", file=sys.stderr)
        return 130
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRORS:
            return bug(prog, error, in_main_thread)
        where = f" {str(error.filename)!r}" if error.filename else ""
        return report(prog, f"{prog}: error: cannot use{where}: {error.strerror or first_line(error)}", 2,
                      in_main_thread)
    except Exception as error:
        return bug(prog, error, in_main_thread)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
            # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGINT, signal.SIG_DFL if previous_int is None else previous_int)
