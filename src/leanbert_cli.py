"""The console scripts (`leanbert-convert`, `-heal`, `-pretrain`, `-finetune`, `-export`): the first frame of the
process, which owns its signals before the library loads, then runs `leanbert.commands.<name>.main`.

It is a module of its own, outside the `leanbert` package, because nothing inside that package runs before
`leanbert/__init__.py`, and that has to load torch and transformers' model code (about 5 CPU seconds): importing
leanbert registers its configs and models with the Auto classes and gives PEFT its LoRA targets (the documented
`import leanbert`), and transformers registers classes only, never names, so every config and model class is
defined on import, on top of `transformers.configuration_utils` (which imports torch) and `transformers.modeling_utils`.
The commands' own parsers need the same classes (`leanbert-convert --to` and `leanbert-pretrain --model-type` list
the declared architectures), so even `--help` loads them. A Ctrl-C or SIGTERM while they load ends with one line and
exit code 130, as one during the run does, instead of a traceback or a silent death; an environment leanbert cannot
run in (transformers older than 5, a missing dependency) ends with one line and exit code 2. Once loaded, the
command's runner (`leanbert.commands.cli.run`) takes the signals over.
"""

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
    # the command's runner owns the signals from here and hands back this default when it ends, so that a signal
    # after it (a launcher stopping the process as it exits) ends the process quietly instead of in a traceback
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
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
