"""GLUE fine-tuning of any checkpoint `AutoModelForSequenceClassification` loads (BERT, a converted or pretrained
leanbert model), on the training loop.

Checked before any work: the settings, the task and its files (`glue.load_task`), the output and checkpoint folders,
the model (BERT or leanbert; a classification head of another size is refused, a missing one starts from random
values as in transformers) and its tokenizer. Evaluation runs after every epoch (or every `eval_every` steps) with
the task's metric; the output holds the model, its tokenizer, `results.json` (every evaluation, the final metrics
and every setting) and the curves (`finetuning_curve.json`, `.png`). A sentence-transformers set-up of the
model (`modules.json`, pooling, ...) is not carried over: a classifier outputs logits, not sentence
embeddings (see `leanbert.common.sentence_transformers`).
"""

import json
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from .. import __version__
from ..architectures import ARCHITECTURES
from ..common.errors import LeanbertError
from ..common.models import load_config, load_tokenizer, load_weights
from ..publishing import write_model_card
from .curves import write_curves
from .glue import compute_metrics, get_task, load_task, main_metric
from .loop import TrainingLoop, TrainingSettings, first
from .run import TrainingRun

MODEL_TYPES = ("bert", *(architecture.model_type for architecture in ARCHITECTURES))
NEW_HEAD = ("classifier.", "pooler.")  # what a checkpoint without a classification head lacks
DEFAULT_MAX_SEQ_LENGTH = 128


def load_classifier(model: str | Path, task, allow_pickle: bool):
    """The checkpoint with a classification head for `task`, and its tokenizer."""
    config = load_config(model, "model")
    if config.model_type not in MODEL_TYPES:
        raise LeanbertError(f"model {str(model)!r} is a {config.model_type!r} model; fine-tuning takes "
                            f"{', '.join(MODEL_TYPES)}")
    tokenizer = load_tokenizer(model, "model", config.vocab_size)
    config.num_labels = task.num_labels
    config.problem_type = "regression" if task.is_regression else "single_label_classification"
    if not task.is_regression:
        config.id2label = dict(enumerate(task.labels))
        config.label2id = {label: i for i, label in enumerate(task.labels)}
    try:
        net = load_weights(AutoModelForSequenceClassification, model, "model", allow_pickle, allow_missing=NEW_HEAD,
                           config=config)
    except LeanbertError as error:
        if "do not fit" in str(error):
            raise LeanbertError(f"model {str(model)!r} has a classification head of another size than the "
                                f"{task.num_labels} labels of {task.name}; start from a checkpoint without "
                                "it") from None
        raise
    return net, tokenizer


def finetune(output: str | Path, *, model: str | Path, task: str, data_dir: str | Path,
             validation_split: float | None = None, max_seq_length: int | None = None, checkpoint_dir=None,
             resume: bool = False, force: bool = False, allow_pickle: bool = False, callback=None,
             **training) -> dict:
    """Fine-tune `model` on the GLUE `task` read from `data_dir`; `training` are `TrainingSettings` (with
    `eval_every=None` evaluation runs once per epoch). Inputs are cut to `max_seq_length` tokens (default 128, or
    the model's position count where it is smaller). Returns the results written to `results.json`."""
    settings = TrainingSettings(**training)
    spec = get_task(task)
    train, validation = load_task(spec.name, data_dir, validation_split=validation_split, seed=settings.seed)
    run = TrainingRun(output, [("model", model), ("data", Path(data_dir) / spec.folder)],
                      command="leanbert-finetune", task="finetune", checkpoint_dir=checkpoint_dir, force=force)
    set_seed(settings.seed)
    net, tokenizer = load_classifier(model, spec, allow_pickle)
    if max_seq_length is None:  # as transformers' run_glue: 128, or the model's positions if it has fewer
        max_seq_length = min(DEFAULT_MAX_SEQ_LENGTH, net.config.max_position_embeddings)
    if not 2 <= max_seq_length <= net.config.max_position_embeddings:
        raise LeanbertError(f"max_seq_length must be between 2 and the model's max_position_embeddings "
                            f"({net.config.max_position_embeddings}), got {max_seq_length}")
    recorded = {"model": str(model), "task": spec.name, "data_dir": str(Path(data_dir).resolve()),
                "validation_split": validation_split, "max_seq_length": max_seq_length, **settings.as_dict()}
    run.check_resume(recorded, resume)

    def encode(batch):
        texts = [batch["text_a"]] + ([batch["text_b"]] if "text_b" in batch else [])
        return tokenizer(*texts, truncation=True, max_length=max_seq_length)

    columns = [c for c in train.column_names if c != "label"]
    train, validation = first(train, settings.max_train_samples), first(validation, settings.max_eval_samples)
    train, validation = (part.map(encode, batched=True, remove_columns=columns) for part in (train, validation))
    loop = TrainingLoop(net, settings, train, DataCollatorWithPadding(tokenizer), eval_data=validation,
                        evaluate=lambda m, loader, acc: evaluate_task(spec.name, m, loader, acc), name=spec.name)
    if settings.eval_every is None:
        loop.eval_every = loop.steps_per_epoch
    results = {"task": spec.name, "main_metric": main_metric(spec.name), "settings": recorded,
               "train_examples": len(loop.train_data), "validation_examples": len(loop.eval_data),
               "parameters": sum(p.numel() for p in net.parameters()), "leanbert_version": __version__}

    def summarize(history: dict) -> dict:
        best = max(history["eval"], key=lambda e: e[results["main_metric"]])
        results.update(steps=loop.step, seconds=history["train"][-1]["seconds"], metrics=history["eval"][-1],
                       best=best, evaluations=history["eval"])
        return results

    def write(folder: Path, history: dict, state_dict: dict) -> None:
        loop.unwrapped().save_pretrained(folder, state_dict=state_dict)
        tokenizer.save_pretrained(folder)
        (folder / "results.json").write_text(json.dumps(summarize(history), indent=2) + "\n")
        write_curves(history, folder, "finetuning")
        write_model_card(folder, kind="finetuned", source=model)

    return summarize(run.train(loop, write, callback))


def evaluate_task(task: str, model, loader, accelerator) -> dict:
    """The task's metrics and the mean loss on the validation set, over every process (each example once)."""
    logits, labels, losses = [], [], []
    for batch in loader:
        out = model(**batch)
        logits.append(accelerator.gather_for_metrics(out.logits.float()))
        labels.append(accelerator.gather_for_metrics(batch["labels"]))
        losses.append(accelerator.gather_for_metrics(out.loss.float().repeat(len(batch["labels"]))))
    metrics = compute_metrics(task, torch.cat(logits).cpu().numpy(), torch.cat(labels).cpu().numpy())
    return {**metrics, "loss": torch.cat(losses).mean().item()}
