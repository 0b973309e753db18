"""Training on `accelerate`: one loop (`TrainingLoop` with its `TrainingSettings`, `TrainingRun` for its output and
checkpoint folders, `write_curves` for its loss curves) under masked-LM pretraining (`pretrain`), GLUE fine-tuning
(`finetune`) and healing.

`pretrain`, `finetune` and what they accept (`MODEL_TYPES`, `TASKS`) load on first use (PEP 562, as transformers'
package root loads its models): they bring in `datasets`, scikit-learn and scipy, which the loop, and so healing and
`leanbert-convert --heal`, never need.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from .curves import write_curves
from .loop import TrainingError, TrainingLoop, TrainingSettings, parameter_groups, process_state
from .run import TrainingRun

# public name -> the module of this package that defines it, imported when the name is first read
_LAZY = {"MODEL_TYPES": "masked_lm", "pretrain": "masked_lm", "finetune": "classification", "TASKS": "glue"}

__all__ = ["MODEL_TYPES", "TASKS", "TrainingError", "TrainingLoop", "TrainingRun", "TrainingSettings", "finetune",
           "parameter_groups", "pretrain", "process_state", "write_curves"]

if TYPE_CHECKING:
    from .classification import finetune
    from .glue import TASKS
    from .masked_lm import MODEL_TYPES, pretrain


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
