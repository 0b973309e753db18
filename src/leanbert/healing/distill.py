"""Healing: distil a converted leanbert model from the BERT it was converted from, on unlabelled text.

The student learns to reproduce the teacher's hidden states at every layer (or the last) and its mean-pooled
sentence embedding, and optionally its attention distributions (a KL term on the softmax of the attention logits).
Training runs through `accelerate`, so the same code uses the CPU, one GPU or several (`accelerate launch`), with
mixed precision where the hardware has it. Everything is checked before training starts: the settings, the text,
the teacher (its weights must be the ones the student's conversion report names, by checksum), the student and the
output and checkpoint folders. Checkpoints are leanbert's own (`leanbert.common.checkpoints`: safetensors and JSON,
written atomically), and `resume=True` continues from the newest complete one only if every setting matches. The
output folder is written atomically at the end (`leanbert.common.output`).
"""

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

import leanbert

from ..common.checkpoints import CheckpointFolder
from ..common.errors import LeanbertError, check_integer, first_line
from ..common.models import (embedding_cosines, load_bert, load_config, load_tokenizer, load_weights,
                             mean_pool, read_json, tokenize, weights_checksum)
from ..common.output import SafeOutput
from ..common.passages import read_passages

LEANBERT_TYPES = {config.model_type: config for config in leanbert.ARCHITECTURES}
REPORT = "conversion_report.json"
MIN_PASSAGE_CHARS = 40
MAX_SEED = 2**32 - 1  # what numpy's and accelerate's seeding accept
DEFAULT_MAX_LENGTH = 128  # tokens per passage, or the teacher's positions if it has fewer


class HealingError(LeanbertError):
    """Healing cannot start; the message is meant for the user as is."""


def load_student(student: str | Path, teacher_checksum: str):
    """The converted model (any leanbert head), its tokenizer and its conversion report; refuses anything else,
    including a student whose report names other teacher weights than `teacher_checksum`."""
    config = load_config(student, "student")
    if config.model_type not in LEANBERT_TYPES:
        raise HealingError(f"student {str(student)!r} is a {config.model_type!r} model; healing takes a leanbert "
                           f"model converted from BERT ({', '.join(LEANBERT_TYPES)})")
    folder = Path(student)
    if not (folder / REPORT).is_file():
        raise HealingError(f"student {str(student)!r} has no {REPORT}: it was not converted from a BERT "
                           "checkpoint by leanbert-convert, so there is no teacher to heal it towards")
    report = read_json(folder / REPORT, "conversion report")
    if not isinstance(report.get("fitted_parameters"), list) or not isinstance(report.get("source_checksum"), str):
        raise HealingError(f"the conversion report of student {str(student)!r} lacks fitted_parameters or "
                           "source_checksum (written by an older leanbert?); convert the source again")
    if report["source_checksum"] != teacher_checksum:
        raise HealingError(f"the teacher's weights are not those the student was converted from (checksum "
                           f"{teacher_checksum[:12]} vs {report['source_checksum'][:12]} in its report, whose source "
                           f"was {report.get('source')!r})")
    architecture = (config.architectures or [""])[0]
    model_class = getattr(leanbert, architecture, None) if isinstance(architecture, str) else None
    if model_class is None:
        raise HealingError(f"student {str(student)!r} names an unknown architecture {config.architectures}")
    model = load_weights(model_class, folder, "student")
    return model, load_tokenizer(folder, "student", config.vocab_size), report


def check_pair(teacher, teacher_tokenizer, student, student_tokenizer) -> None:
    """Teacher and student must share tokenizer, vocabulary and layer shapes, or distillation is meaningless."""
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise HealingError("teacher and student tokenizers differ; the student must be converted from this teacher")
    for field in ("vocab_size", "hidden_size", "num_hidden_layers"):
        if getattr(teacher.config, field) != getattr(student.config, field):
            raise HealingError(f"teacher and student differ in {field}: {getattr(teacher.config, field)} vs "
                               f"{getattr(student.config, field)}")


def distillation_loss(teacher_out, student_out, mask: torch.Tensor, objective: str, pooled_weight: float,
                      attention_weight: float = 0.0):
    """Mean over layers of the masked MSE between hidden states, plus `pooled_weight` · (1 - cos) of the
    mean-pooled last hidden states (the sentence embedding), plus `attention_weight` · `attention_kl` (which needs
    both outputs to carry `attentions`)."""
    layers = range(1, len(teacher_out.hidden_states)) if objective == "all-layers" else [-1]
    weights = mask.unsqueeze(-1).to(student_out.last_hidden_state.dtype)  # (B, L, 1)
    count = weights.sum() * student_out.last_hidden_state.shape[-1]
    mse = sum(((student_out.hidden_states[i] - teacher_out.hidden_states[i]) ** 2 * weights).sum() / count
              for i in layers) / len(layers)
    pooled = torch.nn.functional.cosine_similarity(mean_pool(student_out.last_hidden_state, mask),
                                                   mean_pool(teacher_out.last_hidden_state, mask), dim=-1)
    loss = mse + pooled_weight * (1 - pooled).mean()
    if attention_weight > 0:
        loss = loss + attention_weight * attention_kl(teacher_out.attentions, student_out.attentions, mask)
    return loss


def attention_kl(teacher: tuple[torch.Tensor, ...], student: tuple[torch.Tensor, ...], mask: torch.Tensor):
    """KL(teacher ‖ student) of the attention distributions (B, H, L, L) per layer, head and real query, averaged.
    Both are softmaxes of the attention logits, so this matches the logits up to what the softmax ignores. A
    single-headed student (Shatter) is matched to the teacher's mean over heads."""
    total = 0.0
    for p, q in zip(teacher, student):
        if q.shape[1] != p.shape[1]:
            p = p.mean(1, keepdim=True)
        kl = (p * (p.clamp_min(1e-12).log() - q.float().clamp_min(1e-12).log())).sum(-1)  # (B, H, L)
        total = total + kl.mean(1)[mask.bool()].mean()
    return total / len(teacher)


def check_settings(steps, batch_size, max_length, learning_rate, train, objective, pooled_weight,
                   attention_weight, mixed_precision, checkpoint_every, seed) -> None:
    """Every healing setting, checked before anything is loaded; one `HealingError` naming the first bad one."""
    def number(name, value, positive):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
                value <= 0 if positive else value < 0):
            raise HealingError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")

    for name, value, low, high in (("steps", steps, 1, None), ("batch_size", batch_size, 1, None),
                                   ("checkpoint_every", checkpoint_every, 1, None), ("seed", seed, 0, MAX_SEED),
                                   ("max_length", 2 if max_length is None else max_length, 2, None)):
        check_integer(name, value, low, high)
    number("learning_rate", learning_rate, positive=True)
    number("pooled_weight", pooled_weight, positive=False)
    number("attention_weight", attention_weight, positive=False)
    for name, value, allowed in (("train", train, ("converted", "all")),
                                 ("objective", objective, ("all-layers", "last")),
                                 ("mixed_precision", mixed_precision, ("no", "fp16", "bf16"))):
        if value not in allowed:
            raise HealingError(f"{name}={value!r} is invalid; allowed: {', '.join(allowed)}")
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise HealingError("mixed_precision='fp16' needs a GPU; on the CPU use 'bf16' or 'no'")


class Healing:
    """One healing run, validated on construction (settings, text, teacher and student) and run by
    `write_to(folder)` on every process of an `accelerate launch`. `student=None` defers the student to
    `set_student` (for `leanbert-convert --heal`, whose student exists only once the conversion has run)."""

    def __init__(self, teacher: str, student: str | Path | None, text: str | Path, *, steps: int = 400,
                 batch_size: int = 16, max_length: int | None = None, learning_rate: float = 2e-4,
                 train: str = "converted",
                 objective: str = "all-layers", pooled_weight: float = 1.0, attention_weight: float = 0.0,
                 mixed_precision: str = "no", checkpoint_every: int = 100, allow_pickle: bool = False,
                 seed: int = 0):
        check_settings(steps, batch_size, max_length, learning_rate, train, objective, pooled_weight,
                       attention_weight, mixed_precision, checkpoint_every, seed)
        self.teacher_path, self.text = str(teacher), text
        self.checkpoint_every = checkpoint_every
        self.passages, self.available = read_passages(text, limit=steps * batch_size, seed=seed,
                                                      min_chars=MIN_PASSAGE_CHARS, what="healing text")
        self.teacher, self.teacher_tokenizer = load_bert(teacher, allow_pickle, what="teacher")
        self.teacher_checksum = weights_checksum(self.teacher)
        positions = self.teacher.config.max_position_embeddings
        if max_length is None:
            max_length = min(DEFAULT_MAX_LENGTH, positions)
        elif max_length > positions:
            raise HealingError(f"max_length {max_length} exceeds the teacher's max_position_embeddings {positions}")
        passages_sha256 = hashlib.sha256("\n".join(self.passages).encode()).hexdigest()
        self.settings = {"teacher": str(teacher), "teacher_checksum": self.teacher_checksum,
                         "text": str(Path(text).resolve()), "steps": steps, "batch_size": batch_size,
                         "max_length": max_length, "learning_rate": learning_rate, "train": train,
                         "objective": objective, "pooled_weight": pooled_weight, "attention_weight": attention_weight,
                         "mixed_precision": mixed_precision, "seed": seed,
                         "text_sha256": passages_sha256}  # derived settings last: a message names the cause
        if student is not None:
            self.set_student(student)

    def set_student(self, student: str | Path) -> None:
        self.student_path = Path(student)
        self.student, self.tokenizer, self.report = load_student(student, self.teacher_checksum)
        check_pair(self.teacher, self.teacher_tokenizer, self.student, self.tokenizer)
        self.settings["student_checksum"] = weights_checksum(self.student)

    def check_resume(self, checkpoints: CheckpointFolder, resume: bool) -> None:
        """Find the checkpoint to continue from (none for a fresh start) before any work, refusing a resume that
        cannot be faithful and a fresh start that would discard an earlier run's checkpoints."""
        self.checkpoints = checkpoints
        self.resume_from = self.resume_point(checkpoints, resume)

    def resume_point(self, checkpoints: CheckpointFolder, resume: bool):
        latest = checkpoints.latest()
        if not resume:
            if latest is not None:
                raise HealingError(f"checkpoint folder {str(checkpoints.path)!r} holds a checkpoint (step "
                                   f"{latest[1]['step']}) of an earlier run; pass --resume to continue it or "
                                   "delete that folder to start afresh")
            return None
        if latest is None:
            raise HealingError(f"--resume: no complete checkpoint in {str(checkpoints.path)!r}")
        saved = latest[1].get("settings", {})
        for name, value in self.settings.items():
            if saved.get(name) != value:
                raise HealingError(f"--resume: setting {name} is {value!r} but the checkpoint was made with "
                                   f"{saved.get(name)!r}; resume with the same settings")
        checkpoints.verify(*latest)
        return latest

    def write_to(self, folder: Path | None, callback: Callable[[int, float], None] | None = None) -> dict:
        """Heal (after `check_resume`); the main process writes the healed model, tokenizer, updated report and loss
        curve (JSON and PNG) to `folder`. `callback(step, loss)` runs after every optimizer step. Returns the
        updated report."""
        settings, checkpoints, resume_from = self.settings, self.checkpoints, self.resume_from
        steps, batch_size, max_length = settings["steps"], settings["batch_size"], settings["max_length"]
        started = time.perf_counter()
        teacher_model, student_model, tokenizer = self.teacher, self.student, self.tokenizer
        attention_weight = settings["attention_weight"]
        if attention_weight > 0:
            teacher_model.set_attn_implementation("eager")
            student_model.set_attn_implementation("eager")
        trainable = set(self.report["fitted_parameters"]) if settings["train"] == "converted" else None
        for name, parameter in student_model.named_parameters():
            parameter.requires_grad_(trainable is None or name in trainable)

        heldout = tokenize(tokenizer, read_passages(bundled="heldout.txt")[0], max_length)
        before = embedding_cosines(teacher_model, student_model, heldout)

        set_seed(settings["seed"])
        accelerator = Accelerator(mixed_precision=settings["mixed_precision"])
        passages = self.passages
        order = torch.randperm(len(passages), generator=torch.Generator().manual_seed(settings["seed"]))
        chosen = [passages[i] for i in order.tolist()]
        chosen = (chosen * (steps * batch_size // len(chosen) + 1))[: steps * batch_size]  # small texts repeat
        loader = torch.utils.data.DataLoader(chosen, batch_size=batch_size, shuffle=False,
                                             collate_fn=lambda texts: tokenize(tokenizer, texts, max_length))
        parameters = [p for p in student_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=settings["learning_rate"], weight_decay=0.0)
        warmup = max(1, steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / max(1, steps - warmup)) ** 0.5)
        teacher_base = teacher_model.base_model.to(accelerator.device)
        student_model, optimizer, loader, schedule = accelerator.prepare(student_model, optimizer, loader, schedule)
        step, curve = 0, []
        if accelerator.is_main_process:
            checkpoints.open("leanbert-heal")
        if resume_from is not None:
            try:
                accelerator.load_state(str(resume_from[0]))
            except Exception as error:  # a damaged or tampered file: torch's weights-only loader refuses code
                raise HealingError(f"cannot resume from {str(resume_from[0])!r}: {first_line(error)}") from None
            step, curve = resume_from[1]["step"], resume_from[1]["curve"]
        student_base = accelerator.unwrap_model(student_model).base_model

        bar = tqdm(total=steps, initial=step, desc="healing", disable=not accelerator.is_local_main_process)
        for batch in accelerator.skip_first_batches(loader, step):
            with torch.no_grad():
                teacher_out = teacher_base(**batch, output_hidden_states=True, output_attentions=attention_weight > 0)
            with accelerator.autocast():
                student_out = student_base(**batch, output_hidden_states=True, output_attentions=attention_weight > 0)
                loss = distillation_loss(teacher_out, student_out, batch["attention_mask"], settings["objective"],
                                         settings["pooled_weight"], attention_weight)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            curve.append({"step": step, "loss": loss.item()})
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
            if step % self.checkpoint_every == 0 and step < steps:
                checkpoints.save(accelerator, step, {"curve": curve, "settings": settings})
            if callback is not None:
                callback(step, loss.item())
        bar.close()
        if not math.isfinite(curve[-1]["loss"]):
            raise HealingError("healing diverged (the loss is not finite); try a lower --learning-rate")

        healed = accelerator.unwrap_model(student_model).float().eval()
        after = embedding_cosines(teacher_model, healed, heldout)
        report = {**self.report, "healing": {
            "teacher": self.teacher_path, "teacher_checksum": self.teacher_checksum, "student": str(self.student_path),
            "text": str(self.text), "passages_available": self.available, "passages_used": len(passages),
            **{key: settings[key] for key in ("steps", "batch_size", "max_length", "learning_rate", "train",
                                               "objective", "pooled_weight", "attention_weight", "mixed_precision",
                                               "seed")},
            "trained_parameters": sum(p.numel() for p in parameters),
            "resumed_from_step": resume_from[1]["step"] if resume_from else None,
            "seconds": round(time.perf_counter() - started, 1), "final_loss": curve[-1]["loss"],
            "fidelity_before": {"mean_cosine": before.mean().item(), "min_cosine": before.min().item()},
            "fidelity_after": {"mean_cosine": after.mean().item(), "min_cosine": after.min().item()},
        }}
        if accelerator.is_main_process and folder is not None:
            healed.cpu().save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
            (folder / "healing_curve.json").write_text(json.dumps(curve) + "\n")
            plot_curve(curve, folder / "healing_curve.png")
        accelerator.wait_for_everyone()
        return report


def default_checkpoint_dir(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.name}.heal-checkpoints")


def heal(teacher: str, student: str | Path, text: str | Path, output: str | Path, *,
         checkpoint_dir: str | Path | None = None, resume: bool = False, force: bool = False,
         callback: Callable[[int, float], None] | None = None, **settings) -> dict:
    """Distil `student` (a leanbert-converted folder) from `teacher` (its BERT source) on `text` (a text file, one
    passage per line, or a folder of `.txt` files); write the healed model, its tokenizer, the updated conversion
    report and the loss curve (JSON and PNG) to `output`.

    `settings` are `Healing`'s: `train="converted"` trains only the parameters the conversion approximated (listed
    in the report), `"all"` everything; `attention_weight > 0` adds the teacher's attention distributions to the
    objective (both models then run the eager attention path, which returns them). Checkpoints go to
    `checkpoint_dir` (default `<output>.heal-checkpoints`, removed when healing finishes). Returns the report.
    """
    inputs = [("teacher", teacher), ("student", student), ("healing text", text)]
    target = SafeOutput(output, inputs=inputs, force=force, command="leanbert-heal")
    checkpoints = CheckpointFolder(checkpoint_dir or default_checkpoint_dir(output),
                                   inputs=[*inputs, ("output", output)])
    if student is None:
        raise HealingError("student is None; give the folder written by leanbert-convert")
    healing = Healing(teacher, student, text, **settings)
    healing.check_resume(checkpoints, resume)
    main = PartialState().is_main_process
    with target if main else contextlib.nullcontext() as staging, claimed(checkpoints, main, "leanbert-heal"):
        report = healing.write_to(staging, callback)
        if main:
            target.publish()
            checkpoints.remove()
    return report


@contextlib.contextmanager
def claimed(checkpoints: CheckpointFolder, main: bool, command: str):
    """The checkpoint folder's lock, held by the main process for the whole run."""
    if main:
        checkpoints.claim(command)
    try:
        yield checkpoints
    finally:
        if main:
            checkpoints.release()


def plot_curve(curve: list[dict], path: Path, window: int = 20) -> None:
    """Loss per step, and its running mean over `window` steps (one batch is a noisy estimate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [p["step"] for p in curve], torch.tensor([p["loss"] for p in curve])
    running = losses.cumsum(0)
    running[window:] = running[window:] - running[:-window].clone()
    running = running / torch.arange(1, len(losses) + 1).clamp(max=window)
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(steps, losses, color="tab:blue", alpha=0.3, label="per step")
    axis.plot(steps, running, color="tab:blue", label=f"mean of {min(window, len(losses))} steps")
    axis.set(xlabel="step", ylabel="distillation loss", yscale="log", title="healing")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
