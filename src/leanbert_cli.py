"""The console scripts (`leanbert-convert`, `-heal`, `-pretrain`, `-finetune`, `-export`). Each imports its command
only here, inside the guard: loading torch and transformers takes seconds, and a Ctrl-C or SIGTERM in them ends
with one line and exit code 130, as one during the run does, instead of a traceback or a silent death; an
environment leanbert cannot run in (transformers older than 5) ends with one line and exit code 2. The commands are
in `leanbert.commands` (whose runner takes over the signals once loaded)."""

import importlib
import signal
import sys


def interrupt(signum, frame):
    raise KeyboardInterrupt


def launch(name: str) -> int:
    try:
        signal.signal(signal.SIGTERM, interrupt)
        command = importlib.import_module(f"leanbert.commands.{name}")
    except KeyboardInterrupt:
        print(f"leanbert-{name}: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    except ImportError as error:  # leanbert's own check of the transformers it runs with, or a missing package
        print(f"leanbert-{name}: error: {error}", file=sys.stderr)
        return 2
    return command.main()


def convert() -> int:
    return launch("convert")


def heal() -> int:
    return launch("heal")


def pretrain() -> int:
    return launch("pretrain")


def finetune() -> int:
    return launch("finetune")


def export() -> int:
    return launch("export")
