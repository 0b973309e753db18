"""The command-line runner every leanbert command shares: one line per failure, and exit codes a script can use.

- bad input (a `LeanbertError`, or a malformed option): one line naming the problem, exit code 2;
- Ctrl-C or SIGTERM: one line, exit code 130, nothing half-written (outputs are published atomically);
- a file or folder the user may not read or write, or a full or read-only disk: one line naming it, exit code 2
  (the checks before any work catch most; this catches any that slip past, at whatever point);
- anything else is a bug: one line with the exception, exit code 1 (`LEANBERT_TRACEBACK=1` shows the traceback).
"""

import argparse
import errno
import math
import os
import signal
import sys
import threading
from collections.abc import Callable

from ..common.errors import LeanbertError, first_line


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its usage errors as one line (exit code 2, as argparse's own)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


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
    raise KeyboardInterrupt


# What the machine, not leanbert, is short of: these are reported as the user's to fix, not as bugs.
ENVIRONMENT_ERRORS = (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def bug(prog: str, error: Exception) -> int:
    """Report an unexpected exception in one line (exit code 1), or raise it with LEANBERT_TRACEBACK set."""
    if os.environ.get("LEANBERT_TRACEBACK"):
        raise error
    print(f"{prog}: internal error: {type(error).__name__}: {first_line(error)} (a bug: please report "
          "it; LEANBERT_TRACEBACK=1 shows the traceback)", file=sys.stderr)
    return 1


def run(prog: str, main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run `main(argv)` as the command `prog`, mapping failures to one line and an exit code. transformers' own
    warnings and loading bars are silenced: what leanbert would let them say (missing weights, say) it checks and
    reports itself."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, interrupt) if in_main_thread else None
    try:
        return main(argv)
    except LeanbertError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output was written or replaced", file=sys.stderr)
        return 130
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRORS:
            return bug(prog, error)
        where = f" {str(error.filename)!r}" if error.filename else ""
        print(f"{prog}: error: cannot use{where}: {error.strerror or first_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        return bug(prog, error)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
