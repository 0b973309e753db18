"""The console scripts (`leanbert-convert`, `-heal`, `-pretrain`, `-finetune`). Each imports its command only
here, inside the guard: loading torch and transformers takes seconds, and a Ctrl-C in them ends with one line and
exit code 130, as one during the run does, instead of a traceback. The commands are in `leanbert.commands`."""

import importlib
import sys


def launch(name: str) -> int:
    try:
        command = importlib.import_module(f"leanbert.commands.{name}")
    except KeyboardInterrupt:
        print(f"leanbert-{name}: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return command.main()


def convert() -> int:
    return launch("convert")


def heal() -> int:
    return launch("heal")


def pretrain() -> int:
    return launch("pretrain")


def finetune() -> int:
    return launch("finetune")
