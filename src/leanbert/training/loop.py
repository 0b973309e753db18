"""The one training loop of leanbert: pretraining, fine-tuning and healing all run through `TrainingLoop`.

It is `accelerate`'s own loop (as in accelerate's `examples/`), so the same code runs on a CPU, one GPU, several GPUs
or nodes (DDP, FSDP, DeepSpeed through `accelerate launch`) with mixed precision: `accelerator.prepare` wraps the
model, `accelerator.accumulate` handles gradient accumulation, `accelerator.save_state` / `load_state` checkpoint
and resume, `skip_first_batches` resumes mid-epoch with the same data order (the sampler is seeded per epoch), and
`transformers.get_scheduler` gives warm-up then linear or cosine decay. What a task adds is a loss hook (default:
the model's own `.loss`) and an evaluation hook.

Steps are optimizer steps over all processes: one step consumes `batch_size × gradient_accumulation_steps ×
num_processes` samples. Logged losses are averaged over those samples' micro-batches on every process.
"""

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import (DistributedType, get_torch_accelerator_backend, is_mps_available, is_npu_available,
                              is_xpu_available, parse_flag_from_env, set_seed)
from accelerate.utils import load as load_with_accelerate
from accelerate.utils.constants import RNG_STATE_NAME
from torch import nn
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.trainer_pt_utils import get_parameter_names

from ..common.checkpoints import CheckpointFolder
from ..common.errors import LeanbertError, check_integer, first_line

SCHEDULERS = ("linear", "cosine", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
MAX_SEED = 2**32 - 1  # what numpy's and accelerate's seeding accept
RANDOM_STATES = {"random_state", "numpy_random_seed", "torch_manual_seed"}  # what accelerate saves per process
# parameters that take no weight decay, by name, as transformers' Trainer decides (plus every LayerNorm)
NO_DECAY_PATTERNS = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


class TrainingError(LeanbertError):
    """Training cannot start or went wrong; the message is meant for the user as is."""


@dataclass
class TrainingSettings:
    """How to train; everything a resume must repeat exactly. Give `steps` or `epochs` (steps win)."""

    steps: int | None = None
    epochs: float | None = None
    batch_size: int = 32  # per process
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    scheduler: str = "linear"
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    eval_every: int | None = None  # steps; None: once, at the end
    checkpoint_every: int | None = None  # steps; None: no checkpoints
    seed: int = 0
    max_train_samples: int | None = None  # train / evaluate on the first N examples only (None: all)
    max_eval_samples: int | None = None

    def __post_init__(self):
        """Checked before anything is loaded; one `TrainingError` naming the first bad setting."""
        if self.steps is None and self.epochs is None:
            raise TrainingError("give the length of training: steps or epochs")
        for name, low, high in (("steps", 1, None), ("batch_size", 1, None), ("gradient_accumulation_steps", 1, None),
                                ("eval_every", 1, None), ("checkpoint_every", 1, None), ("seed", 0, MAX_SEED),
                                ("max_train_samples", 1, None), ("max_eval_samples", 1, None)):
            value = getattr(self, name)
            if value is not None or name in ("batch_size", "gradient_accumulation_steps", "seed"):
                check_integer(name, value, low, high)
        for name, positive in (("epochs", True), ("learning_rate", True), ("weight_decay", False),
                               ("warmup_ratio", False), ("max_grad_norm", False)):
            value = getattr(self, name)
            if value is None and name == "epochs":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                    value <= 0 if positive else value < 0):
                raise TrainingError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
        if self.warmup_ratio >= 1:
            raise TrainingError(f"warmup_ratio must be below 1, got {self.warmup_ratio!r}")
        for name, allowed in (("scheduler", SCHEDULERS), ("mixed_precision", MIXED_PRECISION)):
            if getattr(self, name) not in allowed:
                raise TrainingError(f"{name}={getattr(self, name)!r} is invalid; allowed: {', '.join(allowed)}")
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise TrainingError("mixed_precision='fp16' needs a GPU; on the CPU use 'bf16' or 'no'")

    def as_dict(self) -> dict:
        return asdict(self)


def first(data, count: int | None):
    """The first `count` examples of a map-style dataset (all of them when None or fewer), as transformers' example
    scripts cut theirs (`--max_train_samples`): `datasets.Dataset.select`, or a `torch.utils.data.Subset`."""
    if data is None or count is None or count >= len(data):
        return data
    return data.select(range(count)) if hasattr(data, "select") else torch.utils.data.Subset(data, range(count))


def on_cpu_only() -> bool:
    """Whether this run has no accelerator to use: ACCELERATE_USE_CPU is set (`accelerate launch --cpu`) or the
    machine has no GPU. accelerate then runs several processes (torchrun, `accelerate launch --multi_gpu`) as
    multi-CPU DDP over gloo, which it does only when told `cpu=True`."""
    has_device = torch.cuda.is_available() or is_xpu_available() or is_mps_available() or is_npu_available()
    return parse_flag_from_env("ACCELERATE_USE_CPU") or not has_device


def process_state() -> PartialState:
    """accelerate's process state (rank, main process, barriers), set up as `TrainingLoop`'s `Accelerator` sets it
    up, so that asking for it before the loop exists cannot fix another distributed set-up."""
    return PartialState(cpu=on_cpu_only())


def fresh_state(mixed_precision: str) -> None:
    """accelerate keeps one state per process and refuses an `Accelerator` with another mixed precision; a second
    run in the same process (a notebook, a script that heals and then fine-tunes) gets a new state, keeping the
    process group."""
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def check_requested_plugin(accelerator: Accelerator) -> None:
    """accelerate runs FSDP and DeepSpeed on GPUs only: on CPUs it quietly falls back to DDP (or to independent
    processes). A run configured for them stops here instead of training otherwise than asked."""
    for flag, name, kind in (("ACCELERATE_USE_FSDP", "FSDP", DistributedType.FSDP),
                             ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed", DistributedType.DEEPSPEED)):
        if parse_flag_from_env(flag) and accelerator.distributed_type != kind:
            raise TrainingError(f"the accelerate config asks for {name}, but accelerate set up "
                                f"{accelerator.distributed_type.value} on {accelerator.device.type}: it runs {name} on "
                                "GPUs only; on CPUs launch plain DDP (examples/accelerate/ddp_2proc.yaml)")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups as transformers' Trainer makes them: no weight decay on biases and normalisation weights;
    frozen parameters are left out."""
    decay = set(get_parameter_names(model, [nn.LayerNorm], NO_DECAY_PATTERNS))
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for name, p in named if name in decay], "weight_decay": weight_decay},
            {"params": [p for name, p in named if name not in decay], "weight_decay": 0.0}]


def default_loss(model, batch) -> torch.Tensor:
    return model(**batch).loss


class TrainingLoop:
    """Train `model` on `train_data` (a map-style dataset batched by `collate_fn`) with `settings`.

    `compute_loss(model, batch)` gives the loss of a batch from the prepared model (default: `model(**batch).loss`);
    `evaluate(model, loader, accelerator)` gives metrics on `eval_data` (every `eval_every` steps and at the end),
    by default the mean loss (`eval_collate_fn` batches `eval_data`, by default `collate_fn`). `dropout=False`
    trains in eval mode (distillation matches a teacher's deterministic outputs). A `collate_fn` with
    `set_epoch(epoch)` is told the epoch before each one starts, so that its randomness (masking) can depend on the
    epoch and the samples only, and be the same after a resume.
    """

    def __init__(self, model: nn.Module, settings: TrainingSettings, train_data, collate_fn: Callable, *,
                 eval_data=None, eval_collate_fn: Callable | None = None, compute_loss: Callable = default_loss,
                 evaluate: Callable | None = None, dropout: bool = True, name: str = "training"):
        self.settings, self.name, self.dropout = settings, name, dropout
        self.eval_every = settings.eval_every
        self.collate_fn, self.compute_loss = collate_fn, compute_loss
        self.evaluate = evaluate or evaluate_loss(compute_loss)
        fresh_state(settings.mixed_precision)
        self.accelerator = Accelerator(
            cpu=on_cpu_only(), mixed_precision=settings.mixed_precision,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=settings.seed))
        check_requested_plugin(self.accelerator)
        set_seed(settings.seed)
        self.train_data = train_data = first(train_data, settings.max_train_samples)
        self.eval_data = eval_data = first(eval_data, settings.max_eval_samples)
        generator = torch.Generator().manual_seed(settings.seed)
        train_loader = torch.utils.data.DataLoader(train_data, batch_size=settings.batch_size, shuffle=True,
                                                   collate_fn=collate_fn, generator=generator)
        eval_loader = None if eval_data is None else torch.utils.data.DataLoader(
            eval_data, batch_size=settings.batch_size, shuffle=False, collate_fn=eval_collate_fn or collate_fn)
        optimizer = torch.optim.AdamW(parameter_groups(model, settings.weight_decay), lr=settings.learning_rate)
        # what the prepared loader will yield per process (accelerate evens the last batches out over processes)
        batches_per_process = math.ceil(len(train_data) / (settings.batch_size * self.accelerator.num_processes))
        self.steps_per_epoch = math.ceil(batches_per_process / settings.gradient_accumulation_steps)
        if self.steps_per_epoch == 0:
            raise TrainingError("the training data is empty")
        self.total_steps = settings.steps or max(1, math.ceil(settings.epochs * self.steps_per_epoch))
        # accelerate steps a prepared scheduler once per process per step, as its examples scale it
        scheduler = get_scheduler(settings.scheduler, optimizer,
                                  num_warmup_steps=round(settings.warmup_ratio * self.total_steps)
                                  * self.accelerator.num_processes,
                                  num_training_steps=self.total_steps * self.accelerator.num_processes)
        self.model, self.optimizer, self.train_loader, self.scheduler = self.accelerator.prepare(
            model, optimizer, train_loader, scheduler)
        self.eval_loader = None if eval_loader is None else self.accelerator.prepare(eval_loader)
        self.history = {"train": [], "eval": []}
        self.step = self.samples = 0
        self.seconds = 0.0

    @property
    def progress(self) -> dict:
        """What a checkpoint records besides accelerate's state, and the run's report."""
        return {"step": self.step, "samples": self.samples, "seconds": round(self.seconds, 3),
                "history": self.history}

    def resume(self, path, progress: dict) -> None:
        """Continue from a checkpoint written by `run` (model, optimizer, scheduler and random states) by as many
        processes as made it (steps, the schedule and the data order are counted over all of them). accelerate
        skips random states it cannot load or apply without a word (the run would go on with other dropout and
        masks), so this process's are loaded here first, with the same weights-only loader, refused if they do
        not load, and checked to be in force once accelerate has loaded the checkpoint."""
        made_by = progress.get("processes")
        if made_by is not None and made_by != self.accelerator.num_processes:
            raise TrainingError(f"cannot resume from {str(path)!r}: it was made by {made_by} processes and this run "
                                f"has {self.accelerator.num_processes}; resume with {made_by}")
        states = Path(path) / f"{RNG_STATE_NAME}_{self.accelerator.process_index}.pkl"
        try:
            loaded = load_with_accelerate(states)
            problem = None if isinstance(loaded, dict) and RANDOM_STATES <= set(loaded) else "not random states"
        except Exception as error:  # absent, damaged, or refused by the weights-only loader
            problem = first_line(error)
        if problem:
            raise TrainingError(f"cannot resume from {str(path)!r}: its random states ({states.name}) do not load "
                                f"({problem}); accelerate would go on without them, so the run would not continue "
                                "as it started")
        try:
            self.accelerator.load_state(str(path))
        except Exception as error:  # a damaged file: torch's weights-only loader refuses code
            raise TrainingError(f"cannot resume from {str(path)!r}: {first_line(error)}") from None
        problem = random_states_problem(loaded)
        if problem:
            raise TrainingError(f"cannot resume from {str(path)!r}: accelerate did not restore its random states "
                                f"({states.name}: {problem}), so the run would not continue as it started")
        self.step, self.samples, self.seconds = progress["step"], progress["samples"], progress["seconds"]
        self.history = progress["history"]

    def batches(self):
        """Batches from the current step on, in the order an uninterrupted run sees them."""
        epoch, done = divmod(self.step, self.steps_per_epoch)
        while True:
            self.train_loader.set_epoch(epoch)
            if hasattr(self.collate_fn, "set_epoch"):
                self.collate_fn.set_epoch(epoch)
            loader = self.train_loader
            if done:
                loader = self.accelerator.skip_first_batches(loader, done * self.settings.gradient_accumulation_steps)
            for batch in loader:
                yield batch
            epoch, done = epoch + 1, 0

    def run(self, checkpoints: CheckpointFolder | None = None, extra_progress: dict | None = None,
            callback: Callable[[int, float], None] | None = None) -> dict:
        """Train to the last step, evaluating and checkpointing on the way; returns the history
        ({"train": [{step, epoch, samples, loss, learning_rate, seconds}], "eval": [{step, samples, seconds, ...}]}).
        `extra_progress` (the task's settings) is saved in every checkpoint; `callback(step, loss)` runs after every
        optimizer step, its evaluation and its checkpoint."""
        settings, accelerator = self.settings, self.accelerator
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.name,
                   disable=not accelerator.is_local_main_process)
        totals = torch.zeros(2, device=accelerator.device)  # loss × samples, samples (this step, this process)
        started = time.perf_counter()
        self.model.train(self.dropout)
        for batch in self.batches():
            if self.step >= self.total_steps:
                break
            with accelerator.accumulate(self.model):
                loss = self.compute_loss(self.model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(self.model.parameters(), settings.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            size, value = len(next(iter(batch.values()))), loss.detach().float()
            totals += torch.stack([value * size, value.new_tensor(size)])
            if not accelerator.sync_gradients:
                continue
            loss_sum, samples = accelerator.reduce(totals, "sum").tolist()
            totals.zero_()
            self.step, self.samples = self.step + 1, self.samples + int(samples)
            self.seconds += time.perf_counter() - started
            point = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), "samples": self.samples,
                     "loss": loss_sum / samples,
                     "learning_rate": self.scheduler.get_last_lr()[0], "seconds": round(self.seconds, 3)}
            self.history["train"].append(point)
            if not math.isfinite(point["loss"]):
                raise TrainingError(f"{self.name} diverged at step {self.step} (the loss is not finite); try a lower "
                                    "learning rate")
            bar.update()
            bar.set_postfix(loss=f"{point['loss']:.4f}")
            last = self.step == self.total_steps
            if self.eval_loader is not None and (last or (self.eval_every and self.step % self.eval_every == 0)):
                self.run_evaluation()
            if checkpoints is not None and settings.checkpoint_every and self.step % settings.checkpoint_every == 0 \
                    and not last:
                checkpoints.save(accelerator, self.step, {**self.progress, **(extra_progress or {})})
            if callback is not None:
                callback(self.step, point["loss"])
            started = time.perf_counter()
        bar.close()
        accelerator.wait_for_everyone()
        return self.history

    def run_evaluation(self) -> dict:
        self.model.eval()
        with torch.no_grad():
            metrics = self.evaluate(self.model, self.eval_loader, self.accelerator)
        self.model.train(self.dropout)
        self.history["eval"].append({"step": self.step, "samples": self.samples, "seconds": round(self.seconds, 3),
                                     **metrics})
        if self.accelerator.is_local_main_process:
            tqdm.write(f"{self.name} step {self.step}: " + ", ".join(
                f"{k} {'undefined' if v is None else format(v, '.4g')}" for k, v in metrics.items()))
        return metrics

    def unwrapped(self) -> nn.Module:
        """The trained model itself (not the DDP/FSDP wrapper), for `save_pretrained`."""
        return self.accelerator.unwrap_model(self.model)


def random_states_problem(states: dict) -> str | None:
    """Why the random generators are not in the `states` a checkpoint saved (None when they are): accelerate's
    `load_state` gives up on them without an error, or leaves the accelerator's generator alone when the checkpoint
    has no state for it (a checkpoint made on the CPU, resumed on a GPU)."""
    numpy_state = np.random.get_state()
    if random.getstate() != states["random_state"] or not all(
            np.array_equal(a, b) for a, b in zip(numpy_state, states["numpy_random_seed"])) \
            or not torch.equal(torch.get_rng_state(), torch.as_tensor(states["torch_manual_seed"])):
        return "the CPU generators were not restored"
    device_type, device_module = get_torch_accelerator_backend()
    if device_type is None:
        return None
    key = f"torch_{device_type}_manual_seed"
    if key not in states:
        return f"it holds no {device_type} generator state (it was made without a {device_type} device)"
    module = torch.get_device_module(device_type)
    if isinstance(states[key], torch.Tensor):  # the current device's (accelerate's torch.accelerator path)
        saved, current = [states[key]], [module.get_rng_state()]
    else:
        saved, current = list(states[key]), module.get_rng_state_all()
    if len(saved) != len(current) or not all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(saved, current)):
        return f"the {device_type} generators were not restored ({len(saved)} saved, {len(current)} devices here)"
    return None


def evaluate_loss(compute_loss: Callable) -> Callable:
    """An evaluation that reports the mean loss over the evaluation data (weighted by batch size, all processes)."""
    def evaluate(model, loader, accelerator) -> dict:
        losses = []
        for batch in loader:
            loss = compute_loss(model, batch).detach().float()
            losses.append(accelerator.gather_for_metrics(loss.repeat(len(next(iter(batch.values()))))))
        return {"loss": torch.cat(losses).mean().item()}
    return evaluate
