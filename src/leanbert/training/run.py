"""One training run's files: its output folder (written atomically at the end) and its checkpoint folder (one run
at a time, resumed only with the same settings), both checked before any work, for every task on the loop."""

import contextlib
from collections.abc import Callable
from pathlib import Path


from ..common.checkpoints import CheckpointFolder
from ..common.output import SafeOutput
from .loop import TrainingLoop, process_state


class TrainingRun:
    """Checks `output` (against `inputs`, with `force`) and the checkpoint folder (default
    `<output>.<task>-checkpoints`) on construction; `check_resume(settings, resume, tokenizer)` finds the checkpoint
    to continue from, and `train(loop, write)` runs the loop and publishes what `write(folder)` writes."""

    def __init__(self, output: str | Path, inputs: list[tuple[str, str | Path]], *, command: str, task: str,
                 checkpoint_dir: str | Path | None = None, force: bool = False):
        self.command = command
        self.target = SafeOutput(output, inputs=inputs, force=force, command=command)
        output = Path(output)
        self.checkpoints = CheckpointFolder(checkpoint_dir or output.with_name(f"{output.name}.{task}-checkpoints"),
                                            inputs=[*inputs, ("output", output)], command=command)
        self.resume_from = None
        process_state().wait_for_everyone()  # every process checked the folders before the main one claims them

    def check_resume(self, settings: dict, resume: bool, tokenizer=None) -> None:
        """Find the checkpoint to continue from before any work (`CheckpointFolder.resume_point`): every input given
        on construction is fingerprinted by content, and `tokenizer` (the one the run tokenises with) by its
        pipeline, so that a resume on changed files, another tokenizer or another process count is refused."""
        self.settings = settings
        self.resume_from = self.checkpoints.resume_point(settings, resume, processes=process_state().num_processes,
                                                         tokenizer=tokenizer)

    def train(self, loop: TrainingLoop, write: Callable[[Path, dict, dict], None],
              callback: Callable[[int, float], None] | None = None) -> dict:
        """Resume if asked, train, and let the main process `write(folder, history, state_dict)` into the staging
        folder that `staged` publishes. The full state dict is gathered on every process (FSDP and DeepSpeed shard
        it)."""
        with self.staged() as staging:
            if self.resume_from is not None:
                loop.resume(*self.resume_from)
            history = loop.run(self.checkpoints, {"settings": self.settings}, callback)
            state_dict = loop.accelerator.get_state_dict(loop.model)
            if staging is not None:
                write(staging, history, state_dict)
        return history

    @contextlib.contextmanager
    def staged(self):
        """The staging folder on the main process (None on the others), with the checkpoint folder claimed and
        opened; published as the output when the block ends without error, and the checkpoints then removed."""
        state = process_state()
        with self.target if state.is_main_process else contextlib.nullcontext() as staging, \
                self.claimed(state.is_main_process):
            if state.is_main_process:
                self.checkpoints.open(self.command)
            yield staging
            state.wait_for_everyone()
            if state.is_main_process:
                self.target.publish()
                self.checkpoints.remove()
        state.wait_for_everyone()

    @contextlib.contextmanager
    def claimed(self, main: bool):
        """The checkpoint folder's lock, held by the main process for the whole run; the folder is removed at the end
        when the run saved no checkpoint in it (an interrupted run without `--checkpoint-every`), and whatever it holds
        for `leanbert-convert`, which cannot continue from a checkpoint (it would only stand in the next run's way)."""
        if main:
            self.checkpoints.claim(self.command)
        try:
            yield
        finally:
            if main:
                if self.command == "leanbert-convert":
                    self.checkpoints.remove()
                else:
                    self.checkpoints.remove_if_unused()
                self.checkpoints.release()
