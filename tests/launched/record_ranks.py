"""Run by `accelerate launch` in the distributed tests: a leanbert command, with each rank recording what it
trained (a checksum of its weights, its step and sample counts) into the folder given first, so that the test can
compare the ranks. Only observation is added; the command runs as users run it."""

import json
import sys
from pathlib import Path

from leanbert.commands.heal import main as heal_main
from leanbert.commands.pretrain import main as pretrain_main
from leanbert.common.models import weights_checksum
from leanbert.training import TrainingLoop

record, command, arguments = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
train = TrainingLoop.run


def recorded_run(self, *args, **kwargs):
    history = train(self, *args, **kwargs)
    facts = {"checksum": weights_checksum(self.unwrapped()), "step": self.step, "samples": self.samples,
             "processes": self.accelerator.num_processes, "distributed_type": str(self.accelerator.distributed_type),
             "losses": [point["loss"] for point in history["train"]]}
    (record / f"rank{self.accelerator.process_index}.json").write_text(json.dumps(facts))
    return history


TrainingLoop.run = recorded_run
sys.exit({"pretrain": pretrain_main, "heal": heal_main}[command](arguments))
