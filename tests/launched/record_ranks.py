"""Run by `accelerate launch` in the distributed tests: a leanbert command, with each rank recording what it
trained (a checksum of its weights, its step and sample counts) into the folder given first, so that the test can
compare the ranks. Only observation is added; the command runs as users run it, but for an interruption (as by
Ctrl-C) after the step that STOP_AFTER_STEP names, when set."""

import json
import os
import sys
from pathlib import Path

from leanbert.commands.finetune import main as finetune_main
from leanbert.commands.heal import main as heal_main
from leanbert.commands.pretrain import main as pretrain_main
from leanbert.common.models import weights_checksum
from leanbert.training import TrainingLoop

record, command, arguments = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
train = TrainingLoop.run
stop_after = int(os.environ.get("STOP_AFTER_STEP", "0"))


def stop(step, loss):
    if step == stop_after:
        raise KeyboardInterrupt


def recorded_run(self, checkpoints=None, extra_progress=None, callback=None):
    history = train(self, checkpoints, extra_progress, stop if stop_after else callback)
    facts = {"checksum": weights_checksum(self.unwrapped()), "step": self.step, "samples": self.samples,
             "processes": self.accelerator.num_processes, "distributed_type": str(self.accelerator.distributed_type),
             "losses": [point["loss"] for point in history["train"]]}
    (record / f"rank{self.accelerator.process_index}.json").write_text(json.dumps(facts))
    return history


TrainingLoop.run = recorded_run
sys.exit({"pretrain": pretrain_main, "heal": heal_main, "finetune": finetune_main}[command](arguments))
