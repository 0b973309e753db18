"""Training on `accelerate`: one loop (`TrainingLoop`) under masked-LM pretraining, GLUE fine-tuning and healing."""

from .loop import TrainingError, TrainingLoop, TrainingSettings, parameter_groups
from .run import TrainingRun

__all__ = ["TrainingError", "TrainingLoop", "TrainingRun", "TrainingSettings", "parameter_groups"]
