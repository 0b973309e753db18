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

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..architectures import BY_MODEL_TYPE
from ..common.checkpoints import CheckpointFolder
from ..common.errors import LeanbertError, check_integer
from ..common.fingerprints import TOKENIZER_PARTS, short, tokenizer_parts
from ..common.models import load_bert, load_config, load_tokenizer, load_weights, read_json, tokenize, weights_checksum
from ..common.passages import read_passages
from ..common.sentence_transformers import read_setup, write_setup
from ..conversion import embedding_cosines, mean_pool
from ..publishing import write_model_card
from ..training import TrainingLoop, TrainingRun, TrainingSettings, process_state, write_curves

REPORT = "conversion_report.json"
# Lines shorter than this are headings and fragments (about ten tokens or fewer): too little context for the
# attention maps and hidden states that healing distils, so a text file's short lines are skipped.
MIN_PASSAGE_CHARS = 40
# Fewer distinct passages than this (or than the run draws, if it draws fewer) is text repeated, not a corpus: the
# student would fit a handful of passages, as calibration would (the conversion's minimum is the same).
MIN_DISTINCT_PASSAGES = 16
MAX_SEED = 2**32 - 1  # what numpy's and accelerate's seeding accept
DEFAULT_MAX_LENGTH = 128  # tokens per passage, or the teacher's positions if it has fewer


class HealingError(LeanbertError):
    """Healing cannot start; the message is meant for the user as is."""


def load_student(student: str | Path, teacher_checksum: str, allow_pickle: bool = False):
    """The converted model (any leanbert head), its tokenizer and its conversion report; refuses anything else,
    including a student whose report names other teacher weights than `teacher_checksum` or parameters the student
    does not have. Pickle weights (.bin) only with `allow_pickle`."""
    config = load_config(student, "student")
    if config.model_type not in BY_MODEL_TYPE:
        raise HealingError(f"student {str(student)!r} is a {config.model_type!r} model; healing takes a leanbert "
                           f"model converted from BERT ({', '.join(BY_MODEL_TYPE)})")
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
    classes = {cls.__name__: cls for cls in BY_MODEL_TYPE[config.model_type].classes.values()}
    model_class = classes.get(architecture) if isinstance(architecture, str) else None
    if model_class is None:
        raise HealingError(f"student {str(student)!r} names an unknown architecture {config.architectures}")
    model = load_weights(model_class, folder, "student", allow_pickle)
    fitted = report["fitted_parameters"]
    unknown = next((name for name in fitted if not isinstance(name, str) or name not in model.state_dict()), None)
    if unknown is not None or not set(fitted) & healable(model):
        what = (f"names {unknown!r}, which the student does not have" if unknown is not None
                else "names no parameter healing trains")
        raise HealingError(f"the conversion report of student {str(student)!r} does not fit it: its fitted_parameters "
                           f"{what}; convert the source again")
    return model, load_tokenizer(folder, "student", config.vocab_size), report


def healable(student) -> set[str]:
    """The parameters healing may train: the base model's, except the pooler (the distillation loss reads hidden
    states only, so neither the pooler nor a task head takes part)."""
    prefix = "" if student.base_model is student else student.base_model_prefix + "."
    return {name for name, _ in student.named_parameters()
            if name.startswith(prefix) and not name.startswith(f"{prefix}pooler.")}


def check_pair(teacher, teacher_tokenizer, student, student_tokenizer) -> None:
    """Teacher and student must share tokenizer (its vocabulary and the whole pipeline that turns text into ids:
    normalisation such as lowercasing, pre-tokenisation, special tokens) and layer shapes, or the student learns to
    match the teacher on other tokens than its own."""
    teacher_parts, student_parts = tokenizer_parts(teacher_tokenizer), tokenizer_parts(student_tokenizer)
    part = next((part for part in TOKENIZER_PARTS if teacher_parts[part] != student_parts[part]), None)
    if part == "vocabulary":
        raise HealingError(f"teacher and student tokenizers differ in their vocabulary ({len(teacher_parts[part])} "
                           f"vs {len(student_parts[part])} tokens); the student must be converted from this teacher")
    if part is not None:
        raise HealingError(f"teacher and student tokenizers differ in their {part} (teacher "
                           f"{short(teacher_parts[part])}, student {short(student_parts[part])}): the same text would "
                           "give them other tokens; heal with the teacher the student was converted from")
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
        self.teacher_path, self.text, self.allow_pickle = str(teacher), text, allow_pickle
        self.checkpoint_every = checkpoint_every
        self.passages, self.available = read_passages(text, limit=steps * batch_size, seed=seed,
                                                      min_chars=MIN_PASSAGE_CHARS, what="healing text")
        distinct, needed = len(set(self.passages)), min(MIN_DISTINCT_PASSAGES, steps * batch_size)
        if distinct < needed:
            raise HealingError(f"healing text {str(text)!r} holds {distinct} distinct passages of {MIN_PASSAGE_CHARS} "
                               f"characters or more; healing needs at least {needed} (a repeated passage counts "
                               "once)")
        self.teacher_setup = read_setup(teacher, "teacher", allow_pickle)  # sentence-transformers modules, if any
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
        self.student, self.tokenizer, self.report = load_student(student, self.teacher_checksum, self.allow_pickle)
        self.sentence_transformers = read_setup(student, "student", self.allow_pickle) or self.teacher_setup
        check_pair(self.teacher, self.teacher_tokenizer, self.student, self.tokenizer)
        self.settings["student_checksum"] = weights_checksum(self.student)

    def check_resume(self, checkpoints: CheckpointFolder, resume: bool) -> None:
        """Find the checkpoint to continue from (none for a fresh start) before any work."""
        self.checkpoints = checkpoints
        self.resume_from = checkpoints.resume_point(self.settings, resume, processes=process_state().num_processes,
                                                    tokenizer=getattr(self, "tokenizer", None))

    def write_to(self, folder: Path | None, callback: Callable[[int, float], None] | None = None) -> dict:
        """Heal (after `check_resume`) on the training loop; the main process writes the healed model, tokenizer,
        updated report and loss curve (JSON and PNG) to `folder`. `callback(step, loss)` runs after every optimizer
        step. Returns the updated report.

        The student's base model is what the loop prepares (and DDP synchronises): the distillation loss reads its
        hidden states only, so its task head is neither run nor trained; nor is its pooler."""
        settings, checkpoints = self.settings, self.checkpoints
        started = time.perf_counter()
        teacher, student, tokenizer = self.teacher, self.student, self.tokenizer
        attention_weight, max_length = settings["attention_weight"], settings["max_length"]
        if attention_weight > 0:
            teacher.set_attn_implementation("eager")
            student.set_attn_implementation("eager")
        base, trainable = student.base_model, healable(student)
        if settings["train"] == "converted":
            trainable &= set(self.report["fitted_parameters"])
        for name, parameter in student.named_parameters():
            parameter.requires_grad_(name in trainable)

        heldout = tokenize(tokenizer, read_passages(bundled="heldout.txt")[0], max_length)
        before = embedding_cosines(teacher, student, heldout)
        loop_settings = TrainingSettings(
            steps=settings["steps"], batch_size=settings["batch_size"], learning_rate=settings["learning_rate"],
            weight_decay=0.0, warmup_ratio=0.1, mixed_precision=settings["mixed_precision"],
            checkpoint_every=self.checkpoint_every, seed=settings["seed"])
        teacher_base = teacher.base_model

        def compute_loss(model, batch):
            with torch.no_grad():
                target = teacher_base(**batch, output_hidden_states=True, output_attentions=attention_weight > 0)
            out = model(**batch, output_hidden_states=True, output_attentions=attention_weight > 0)
            return distillation_loss(target, out, batch["attention_mask"], settings["objective"],
                                     settings["pooled_weight"], attention_weight)

        loop = TrainingLoop(base, loop_settings, self.passages, lambda texts: tokenize(tokenizer, texts, max_length),
                            compute_loss=compute_loss, dropout=False, name="healing")
        teacher.to(loop.accelerator.device)
        student.to(loop.accelerator.device)
        if loop.accelerator.is_main_process:
            checkpoints.open("leanbert-heal")
        if self.resume_from is not None:
            loop.resume(*self.resume_from)
        history = loop.run(checkpoints, {"settings": settings}, callback)
        student.eval()
        after = embedding_cosines(teacher, student, heldout)
        report = {**self.report, "healing": {
            "teacher": self.teacher_path, "teacher_checksum": self.teacher_checksum, "student": str(self.student_path),
            "text": str(self.text), "passages_available": self.available, "passages_used": len(self.passages),
            **{key: settings[key] for key in ("steps", "batch_size", "max_length", "learning_rate", "train",
                                               "objective", "pooled_weight", "attention_weight", "mixed_precision",
                                               "seed")},
            "processes": loop.accelerator.num_processes, "samples": loop.samples,
            "trained_parameters": sum(p.numel() for p in student.parameters() if p.requires_grad),
            "resumed_from_step": self.resume_from[1]["step"] if self.resume_from else None,
            "seconds": round(time.perf_counter() - started, 1), "final_loss": history["train"][-1]["loss"],
            "fidelity_before": {"mean_cosine": before.mean().item(), "min_cosine": before.min().item()},
            "fidelity_after": {"mean_cosine": after.mean().item(), "min_cosine": after.min().item()},
        }}
        if loop.accelerator.is_main_process and folder is not None:
            student.cpu().save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            write_setup(self.sentence_transformers, folder)
            (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
            write_curves(history, folder, "healing", ylabel="distillation loss")
            write_model_card(folder, kind="healed", source=self.teacher_path)
        loop.accelerator.wait_for_everyone()
        return report


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
    if student is None:
        raise HealingError("student is None; give the folder written by leanbert-convert")
    run = TrainingRun(output, [("teacher", teacher), ("student", student), ("healing text", text)],
                      command="leanbert-heal", task="heal", checkpoint_dir=checkpoint_dir, force=force)
    healing = Healing(teacher, student, text, **settings)
    healing.check_resume(run.checkpoints, resume)
    with run.staged() as staging:
        return healing.write_to(staging, callback)
