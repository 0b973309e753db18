"""One training run's files: its output folder (written atomically at the end) and its checkpoint folder (one run
at a time, resumed only with the same settings), both checked before any work, for every task on the loop."""

import contextlib
from collections.abc import Callable
from pathlib import Path

from accelerate import PartialState

from ..common.checkpoints import CheckpointFolder
from ..common.output import SafeOutput
from .loop import TrainingLoop


class TrainingRun:
    """Checks `output` (against `inputs`, with `force`) and the checkpoint folder (default
    `<output>.<task>-checkpoints`) on construction; `check_resume(settings, resume)` finds the checkpoint to
    continue from, and `train(loop, write)` runs the loop and publishes what `write(folder)` writes."""

    def __init__(self, output: str | Path, inputs: list[tuple[str, str | Path]], *, command: str, task: str,
                 checkpoint_dir: str | Path | None = None, force: bool = False):
        self.command = command
        self.target = SafeOutput(output, inputs=inputs, force=force, command=command)
        output = Path(output)
        self.checkpoints = CheckpointFolder(checkpoint_dir or output.with_name(f"{output.name}.{task}-checkpoints"),
                                            inputs=[*inputs, ("output", output)])
        self.resume_from = None

    def check_resume(self, settings: dict, resume: bool) -> None:
        self.settings = settings
        self.resume_from = self.checkpoints.resume_point(settings, resume)

    def train(self, loop: TrainingLoop, write: Callable[[Path, dict, dict], None],
              callback: Callable[[int, float], None] | None = None) -> dict:
        """Resume if asked, train, and let the main process `write(folder, history, state_dict)` into the staging
        folder that is then published as the output; the checkpoints are removed once it is. The full state dict is
        gathered on every process (FSDP and DeepSpeed shard it)."""
        main = PartialState().is_main_process
        with self.target if main else contextlib.nullcontext() as staging, self.claimed(main):
            if main:
                self.checkpoints.open(self.command)
            if self.resume_from is not None:
                loop.resume(self.resume_from[0], self.resume_from[1])
            history = loop.run(self.checkpoints, {"settings": self.settings}, callback)
            state_dict = loop.accelerator.get_state_dict(loop.model)
            if main:
                write(staging, history, state_dict)
                self.target.publish()
                self.checkpoints.remove()
            loop.accelerator.wait_for_everyone()
        return history

    @contextlib.contextmanager
    def claimed(self, main: bool):
        """The checkpoint folder's lock, held by the main process for the whole run."""
        if main:
            self.checkpoints.claim(self.command)
        try:
            yield
        finally:
            if main:
                self.checkpoints.release()
