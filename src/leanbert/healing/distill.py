"""Healing: distil a converted leanbert model from the BERT it was converted from, on unlabelled text.

The student learns to reproduce the teacher's hidden states at every layer (or the last) and its mean-pooled
sentence embedding, and optionally its attention distributions (a KL term on the softmax of the attention logits).
Training runs through `accelerate`, so the same code uses the CPU, one GPU or several (`accelerate launch`), with
mixed precision where the hardware has it. Checkpoints (accelerate state) are written beside the output and a run
resumes from the latest one; the output folder is written atomically at the end.
"""

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer

import leanbert

from ..conversion.calibration import mean_pool, read_passages, tokenize
from ..conversion.convert import check_output, embedding_cosines, write_atomically
from ..conversion.source import ConversionError, load_bert

LEANBERT_TYPES = {config.model_type: config for config in leanbert.ARCHITECTURES}
REPORT = "conversion_report.json"


class HealingError(ConversionError):
    """Healing cannot start; the message is meant for the user as is."""


class Progress:
    """Step counter and loss curve, saved with every accelerate checkpoint so that a resumed run continues."""

    def __init__(self):
        self.step, self.curve = 0, []

    def state_dict(self) -> dict:
        return {"step": self.step, "curve": self.curve}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.curve = state["step"], state["curve"]


def read_text(path: str | Path) -> list[str]:
    """Passages (one per line, at least 40 characters) from a text file or every `*.txt` file under a folder."""
    path = Path(path)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise HealingError(f"healing text {str(path)!r} is not a text file or a folder of .txt files")
    passages = [p for f in files for p in read_passages(f) if len(p) >= 40]
    if not passages:
        raise HealingError(f"healing text {str(path)!r} holds no passages of 40 characters or more")
    return passages


def load_student(student: str | Path):
    """The converted model (any leanbert head) and its conversion report; refuses anything else."""
    folder = Path(student)
    if not (folder / "config.json").is_file():
        raise HealingError(f"student {str(student)!r} is not a model folder")
    config = AutoConfig.from_pretrained(folder)
    if config.model_type not in LEANBERT_TYPES:
        raise HealingError(f"student {str(student)!r} is a {config.model_type!r} model; healing takes a leanbert "
                           f"model converted from BERT ({', '.join(LEANBERT_TYPES)})")
    if not (folder / REPORT).is_file():
        raise HealingError(f"student {str(student)!r} has no {REPORT}: it was not converted from a BERT "
                           "checkpoint by leanbert-convert, so there is no teacher to heal it towards")
    model_class = getattr(leanbert, (config.architectures or [""])[0], None)
    if model_class is None:
        raise HealingError(f"student {str(student)!r} names an unknown architecture {config.architectures}")
    return model_class.from_pretrained(folder).eval(), json.loads((folder / REPORT).read_text())


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


def heal(
    teacher: str,
    student: str | Path,
    text: str | Path,
    output: str | Path,
    *,
    steps: int = 400,
    batch_size: int = 16,
    max_length: int = 128,
    learning_rate: float = 2e-4,
    train: str = "converted",
    objective: str = "all-layers",
    pooled_weight: float = 1.0,
    attention_weight: float = 0.0,
    mixed_precision: str = "no",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    force: bool = False,
    allow_pickle: bool = False,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> dict:
    """Distil `student` (a leanbert-converted folder) from `teacher` (its BERT source) on `text`; write the healed
    model, its tokenizer, the updated conversion report and the loss curve (JSON and PNG) to `output`.

    `train="converted"` trains only the parameters the conversion approximated (listed in the report), `"all"`
    everything. `attention_weight > 0` adds the teacher's attention distributions to the objective (both models
    then run the eager attention path, which returns them). `callback(step, loss)` runs after every optimizer
    step. Returns the updated report.
    """
    if train not in ("converted", "all"):
        raise HealingError(f"train={train!r} is invalid; allowed: converted, all")
    if objective not in ("all-layers", "last"):
        raise HealingError(f"objective={objective!r} is invalid; allowed: all-layers, last")
    if steps < 1 or batch_size < 1:
        raise HealingError("steps and batch size must be positive")
    if attention_weight < 0:
        raise HealingError(f"attention_weight={attention_weight} is invalid; must be >= 0")
    output = Path(output)
    if output.resolve() != Path(student).resolve():
        check_output(teacher, output, force)
    elif not force:
        raise HealingError("output is the student folder; pass --force to replace it with the healed model")
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else output.with_name(f"{output.name}.heal-checkpoints")
    passages = read_text(text)
    started = time.perf_counter()

    teacher_model, teacher_tokenizer = load_bert(teacher, allow_pickle)
    student_model, report = load_student(student)
    tokenizer = AutoTokenizer.from_pretrained(student)
    check_pair(teacher_model, teacher_tokenizer, student_model, tokenizer)
    if attention_weight > 0:
        teacher_model.set_attn_implementation("eager")
        student_model.set_attn_implementation("eager")
    trainable = set(report["fitted_parameters"]) if train == "converted" else None
    for name, parameter in student_model.named_parameters():
        parameter.requires_grad_(trainable is None or name in trainable)

    heldout = tokenize(tokenizer, read_passages(bundled="heldout.txt"), max_length)
    before = embedding_cosines(teacher_model, student_model, heldout)

    set_seed(seed)
    accelerator = Accelerator(mixed_precision=mixed_precision)
    order = torch.randperm(len(passages), generator=torch.Generator().manual_seed(seed))
    chosen = [passages[i] for i in order[: steps * batch_size].tolist()]
    chosen = (chosen * (steps * batch_size // len(chosen) + 1))[: steps * batch_size]  # small texts repeat
    loader = torch.utils.data.DataLoader(chosen, batch_size=batch_size, shuffle=False,
                                         collate_fn=lambda texts: tokenize(tokenizer, texts, max_length))
    parameters = [p for p in student_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / max(1, steps - warmup)) ** 0.5)
    teacher_base = teacher_model.base_model.to(accelerator.device)
    student_model, optimizer, loader, schedule = accelerator.prepare(student_model, optimizer, loader, schedule)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    if resume and (latest := latest_checkpoint(checkpoint_dir)) is not None:
        accelerator.load_state(str(latest))
    student_base = accelerator.unwrap_model(student_model).base_model

    bar = tqdm(total=steps, initial=progress.step, desc="healing", disable=not accelerator.is_local_main_process)
    for batch in accelerator.skip_first_batches(loader, progress.step):
        with torch.no_grad():
            teacher_out = teacher_base(**batch, output_hidden_states=True, output_attentions=attention_weight > 0)
        with accelerator.autocast():
            student_out = student_base(**batch, output_hidden_states=True, output_attentions=attention_weight > 0)
            loss = distillation_loss(teacher_out, student_out, batch["attention_mask"], objective, pooled_weight,
                                     attention_weight)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        progress.curve.append({"step": progress.step, "loss": loss.item()})
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if progress.step % checkpoint_every == 0 and progress.step < steps:
            save_checkpoint(accelerator, checkpoint_dir, progress.step)
        if callback is not None:
            callback(progress.step, loss.item())
    bar.close()

    healed = accelerator.unwrap_model(student_model).float().eval().cpu()
    after = embedding_cosines(teacher_model, healed, heldout)
    report = {**report, "healing": {
        "teacher": str(teacher), "student": str(student), "text": str(text), "passages_available": len(passages),
        "steps": steps, "batch_size": batch_size, "max_length": max_length, "learning_rate": learning_rate,
        "train": train, "trained_parameters": sum(p.numel() for p in parameters), "objective": objective,
        "pooled_weight": pooled_weight, "attention_weight": attention_weight, "mixed_precision": mixed_precision,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1), "final_loss": progress.curve[-1]["loss"],
        "fidelity_before": {"mean_cosine": before.mean().item(), "min_cosine": before.min().item()},
        "fidelity_after": {"mean_cosine": after.mean().item(), "min_cosine": after.min().item()},
    }}

    def write(folder: Path) -> None:
        healed.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        (folder / "healing_curve.json").write_text(json.dumps(progress.curve) + "\n")
        plot_curve(progress.curve, folder / "healing_curve.png")

    if accelerator.is_main_process:
        write_atomically(output, write)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    return report


def latest_checkpoint(folder: Path) -> Path | None:
    steps = sorted(folder.glob("step_*"), key=lambda p: int(p.name.removeprefix("step_"))) if folder.is_dir() else []
    return steps[-1] if steps else None


def save_checkpoint(accelerator: Accelerator, folder: Path, step: int) -> None:
    """Save accelerate state as `step_<n>` and drop older checkpoints once the new one is complete."""
    accelerator.save_state(str(folder / f"step_{step}"))
    if accelerator.is_main_process:
        for old in folder.glob("step_*"):
            if old.name != f"step_{step}":
                shutil.rmtree(old)


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
