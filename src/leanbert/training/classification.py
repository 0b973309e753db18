"""Fine-tuning of any checkpoint `AutoModelForSequenceClassification` (or `AutoModelForTokenClassification`) loads
(BERT, a converted or pretrained leanbert model), on the training loop: GLUE tasks, which are presets of the
general path, one's own files or a dataset (`labelled.py`: classification, regression, multi-label), and token
classification (`tokens.py`).

Checked before any work: the settings, the data (its files, columns, labels, and whether its validation set can
give the metrics), the output and checkpoint folders, the model (BERT or leanbert; a classification head of
another size is refused, a missing one starts from random values as in transformers) and its tokenizer. Evaluation
runs after every epoch (or every `eval_every` steps); the output holds the model, its tokenizer, `results.json`
(every evaluation, the final metrics and every setting), `predictions.tsv` for a test set, and the curves
(`finetuning_curve.json`, `.png`). A sentence-transformers set-up of the model (`modules.json`, pooling, ...) is
not carried over: a classifier outputs logits, not sentence embeddings (train those with sentence-transformers'
own trainer; see `leanbert.common.sentence_transformers`).
"""

import contextlib
import json
from pathlib import Path

import datasets
import torch
from accelerate.utils import set_seed
from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification,
                          DataCollatorForTokenClassification, DataCollatorWithPadding)

from .. import __version__
from ..architectures import ARCHITECTURES
from ..common.errors import LeanbertError
from ..common.fingerprints import digest, tokenizer_fingerprint
from ..common.models import load_config, load_tokenizer, load_weights
from ..publishing import write_model_card
from .curves import write_curves
from .glue import TASKS
from .labelled import (MULTI, REGRESSION, Labelled, check_validation, compute_metrics, from_glue, read_dataset,
                       read_files)
from .loop import TrainingLoop, TrainingSettings, first, process_state
from .run import TrainingRun
from .tokens import TOKENS, aligner, check_entities, entity_metrics, read_token_dataset, read_token_files, tag_sequences

MODEL_TYPES = ("bert", *(architecture.model_type for architecture in ARCHITECTURES))
NEW_HEAD = ("classifier.", "pooler.")  # what a checkpoint without a classification head lacks
DEFAULT_MAX_SEQ_LENGTH = 128
TOKENS_TASK = "token-classification"  # --task for token classification; none, or a GLUE name, for sequences


def load_classifier(model: str | Path, data: Labelled, allow_pickle: bool):
    """The checkpoint with a classification head (per sequence or per token) for `data`, and its tokenizer."""
    config = load_config(model, "model")
    if config.model_type not in MODEL_TYPES:
        raise LeanbertError(f"model {str(model)!r} is a {config.model_type!r} model; fine-tuning takes "
                            f"{', '.join(MODEL_TYPES)}")
    tokenizer = load_tokenizer(model, "model", config.vocab_size)
    config.num_labels = data.num_labels
    config.problem_type = None if data.problem_type == TOKENS else data.problem_type
    if data.labels is not None:
        config.id2label = dict(enumerate(data.labels))
        config.label2id = {label: i for i, label in enumerate(data.labels)}
    head = AutoModelForTokenClassification if data.problem_type == TOKENS else AutoModelForSequenceClassification
    try:
        net = load_weights(head, model, "model", allow_pickle, allow_missing=NEW_HEAD, config=config)
    except LeanbertError as error:
        if "do not fit" in str(error) and "classifier." in str(error):
            raise LeanbertError(f"model {str(model)!r} has a classification head of another size than the "
                                f"{data.num_labels} labels of {data.name} ({str(error).split(': ', 1)[1]}); start "
                                "from the encoder without it: save AutoModel.from_pretrained(model) and fine-tune "
                                "that") from None
        raise
    return net, tokenizer


def finetune(output: str | Path, *, model: str | Path, task: str | None = None, data_dir: str | Path | None = None,
             train_file=None, validation_file=None, test_file=None, dataset_name: str | None = None,
             dataset_config: str | None = None, train_split: str = "train", validation_split_name: str = "validation",
             test_split: str | None = None, text_columns=None, label_column: str | None = None,
             label_all_tokens: bool = False, validation_split: float | None = None, max_seq_length: int | None = None,
             cache_dir: str | None = None, checkpoint_dir=None, resume: bool = False, force: bool = False,
             allow_pickle: bool = False, callback=None, **training) -> dict:
    """Fine-tune `model` on a GLUE `task` read from `data_dir`, or on files (`train_file`, ...) or a dataset
    (`dataset_name`) for sequence classification/regression (`task` None) or `task="token-classification"`;
    `training` are `TrainingSettings` (with `eval_every=None` evaluation runs once per epoch). Inputs are cut to
    `max_seq_length` tokens (default 128, or the model's position count where it is smaller). With a test set,
    `predictions.tsv` holds its predictions. Returns the results written to `results.json`."""
    settings = TrainingSettings(**training)
    with quiet_datasets():
        data = read_data(task, data_dir=data_dir, train_file=train_file, validation_file=validation_file,
                         test_file=test_file, dataset_name=dataset_name, dataset_config=dataset_config,
                         train_split=train_split, validation_split_name=validation_split_name, test_split=test_split,
                         text_columns=text_columns, label_column=label_column, validation_split=validation_split,
                         seed=settings.seed, cache_dir=cache_dir)
    check_measurable(data, first(data.validation, settings.max_eval_samples))
    run = TrainingRun(output, [("model", model), *data.sources], command="leanbert-finetune", task="finetune",
                      checkpoint_dir=checkpoint_dir, force=force)
    set_seed(settings.seed)
    net, tokenizer = load_classifier(model, data, allow_pickle)
    if max_seq_length is None:  # as transformers' run_glue: 128, or the model's positions if it has fewer
        max_seq_length = min(DEFAULT_MAX_SEQ_LENGTH, net.config.max_position_embeddings)
    if not 2 <= max_seq_length <= net.config.max_position_embeddings:
        raise LeanbertError(f"max_seq_length must be between 2 and the model's max_position_embeddings "
                            f"({net.config.max_position_embeddings}), got {max_seq_length}")
    recorded = {"model": str(model), "task": data.glue or data.problem_type,
                **({"data_dir": str(Path(data_dir).resolve())} if data.glue else {}),
                **{name: str(Path(path).resolve()) for name, path in (("train_file", train_file),
                   ("validation_file", validation_file), ("test_file", test_file)) if path},
                **({"dataset_name": dataset_name, "dataset_config": dataset_config} if dataset_name else {}),
                "text_columns": list(data.text_columns), "label_column": data.label_column,
                **({"label_all_tokens": label_all_tokens} if data.problem_type == TOKENS else {}),
                "validation_split": validation_split, "max_seq_length": max_seq_length, **settings.as_dict()}
    run.check_resume(recorded, resume, tokenizer=tokenizer)

    train, validation = first(data.train, settings.max_train_samples), first(data.validation, settings.max_eval_samples)
    with process_state().main_process_first():  # one process tokenises into the cache, the others read it
        train, validation = (tokenized(part, data, tokenizer, max_seq_length, label_all_tokens)
                             for part in (train, validation))
        test = None if data.test is None else tokenized(data.test, data, tokenizer, max_seq_length, label_all_tokens,
                                                        labelled=False)
    collator = (DataCollatorForTokenClassification(tokenizer) if data.problem_type == TOKENS
                else DataCollatorWithPadding(tokenizer))
    per_type = {}
    loop = TrainingLoop(net, settings, train, collator, eval_data=validation, name=data.name,
                        compute_loss=labelled_loss,
                        evaluate=lambda m, loader, acc: evaluate_task(data, m, loader, acc, per_type))
    if settings.eval_every is None:
        loop.eval_every = loop.steps_per_epoch
    results = {"task": data.name, "data": data.description, "dataset": data.hub_dataset,
               "problem_type": data.problem_type, "main_metric": data.main_metric,
               **({"labels": list(data.labels)} if data.labels else {}), "settings": recorded,
               "train_examples": len(loop.train_data), "validation_examples": len(loop.eval_data),
               **({"test_examples": len(test)} if test is not None else {}),
               "parameters": sum(p.numel() for p in net.parameters()), "leanbert_version": __version__}

    def summarize(history: dict) -> dict:
        main = results["main_metric"]
        defined = [e for e in history["eval"] if e.get(main) is not None]
        best = max(defined, key=lambda e: e[main]) if defined else history["eval"][-1]
        results.update(steps=loop.step, seconds=history["train"][-1]["seconds"], metrics=history["eval"][-1],
                       best=best, evaluations=history["eval"], **per_type)
        return results

    def write(folder: Path, history: dict, state_dict: dict) -> None:
        trained = loop.unwrapped()
        trained.save_pretrained(folder, state_dict=state_dict)
        tokenizer.save_pretrained(folder)
        if test is not None:
            write_predictions(folder / "predictions.tsv", data, trained, test, collator, settings.batch_size)
            results["predictions"] = "predictions.tsv"
        (folder / "results.json").write_text(json.dumps(summarize(history), indent=2) + "\n")
        write_curves(history, folder, "finetuning")
        write_model_card(folder, kind="finetuned", source=model)

    return summarize(run.train(loop, write, callback))


@contextlib.contextmanager
def quiet_datasets():
    """No `datasets` progress bars while the data is read and checked: bad input is reported in one line."""
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.enable_progress_bars()


def read_data(task: str | None, *, data_dir, train_file, validation_file, test_file, dataset_name, dataset_config,
              train_split, validation_split_name, test_split, text_columns, label_column, validation_split, seed,
              cache_dir) -> Labelled:
    """The labelled data from the one source given (a GLUE folder, files, or a dataset), checked."""
    tokens = task is not None and str(task).lower() == TOKENS_TASK
    sources = [name for name, given in (("--data-dir", data_dir), ("--train-file", train_file),
                                        ("--dataset-name", dataset_name)) if given is not None]
    if len(sources) != 1:
        raise LeanbertError("give one source of data: --data-dir (with a GLUE --task), --train-file or "
                            f"--dataset-name{'; got ' + ', '.join(sources) if sources else ''}")
    if data_dir is not None:
        if task is None or tokens:
            raise LeanbertError("--data-dir is a GLUE folder: give a GLUE --task "
                                f"({', '.join(TASKS)}), or --train-file for your own files")
        if text_columns or label_column or validation_file or test_file:
            raise LeanbertError("a GLUE task fixes its files and columns: --text-columns, --label-column, "
                                "--validation-file and --test-file go with --train-file")
        return from_glue(task, data_dir, validation_split=validation_split, seed=seed)
    if task is not None and not tokens:
        raise LeanbertError(f"--task {task!r} with {sources[0]}: leave --task out for sequence classification or "
                            f"regression, or give --task {TOKENS_TASK}")
    if (validation_file or test_file) and train_file is None:
        raise LeanbertError("--validation-file and --test-file go with --train-file")
    if text_columns is not None and len(text_columns) > 2:
        raise LeanbertError(f"give one or two text columns (a text or a pair), got {len(text_columns)}: "
                            f"{', '.join(text_columns)}")
    common = dict(text_columns=text_columns, label_column=label_column, validation_split=validation_split, seed=seed,
                  cache_dir=cache_dir)
    named = dict(train_split=train_split, validation_split_name=validation_split_name, test_split=test_split)
    if not tokens:
        if train_file is not None:
            return read_files(train_file, validation_file, test_file, **common)
        return read_dataset(dataset_name, dataset_config, **named, **common)
    if train_file is not None:
        *parts, sources = read_token_files(train_file, validation_file, test_file, **common)
        name = Path(train_file).name
    else:
        *parts, sources = read_token_dataset(dataset_name, dataset_config, **named, **common)
        name = Path(dataset_name).name if Path(dataset_name).exists() else dataset_name
    train, validation, test, words, tags, names = parts
    hub = None if train_file is not None or Path(dataset_name).exists() else dataset_name
    return Labelled(name, train, validation, test, (words,), tags, TOKENS, names, sources, hub_dataset=hub)


def check_measurable(data: Labelled, validation) -> None:
    if data.problem_type == TOKENS:
        check_entities(validation, data.label_column)
    else:
        check_validation(data, validation)


def encoder(data: Labelled, tokenizer, max_seq_length: int, label_all_tokens: bool, labelled: bool):
    """The batched `datasets.map` function that tokenises a split (its labels as `labels` where `labelled`)."""
    if data.problem_type == TOKENS:
        return aligner(tokenizer, data.text_columns[0], data.label_column if labelled else None, data.labels,
                       max_seq_length, label_all_tokens)

    def encode(batch):
        encoded = tokenizer(*[batch[column] for column in data.text_columns], truncation=True,
                            max_length=max_seq_length)
        if labelled:
            encoded["labels"] = batch[data.label_column]
        return encoded

    return encode


def tokenized(part, data: Labelled, tokenizer, max_seq_length: int, label_all_tokens: bool, labelled: bool = True):
    """A split tokenised by `datasets` (cached under a fingerprint of the rows, the tokenizer and the settings), with
    only the model's inputs and labels left."""
    key = digest(part._fingerprint, tokenizer_fingerprint(tokenizer), max_seq_length, data.text_columns,
                      data.label_column, data.labels, data.problem_type, label_all_tokens, labelled)
    encode = encoder(data, tokenizer, max_seq_length, label_all_tokens, labelled)
    return part.map(encode, batched=True, remove_columns=part.column_names, new_fingerprint=key,
                    desc=f"tokenising {data.name}")


def write_predictions(path: Path, data: Labelled, model, test, collator, batch_size: int) -> None:
    """`predictions.tsv` as run_glue.py writes it: the row's id (its `id`/`idx` column) or number, and the
    predicted label name, the score, the names of a multi-label prediction (comma-separated), or the tags of a
    sentence's words (space-separated; a word's tag is its first sub-word's)."""
    id_column = data.id_column(data.test)
    ids = data.test[id_column] if id_column else range(len(test))
    loader = torch.utils.data.DataLoader(test, batch_size=batch_size, collate_fn=collator)
    device, predictions = next(model.parameters()).device, []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            words = batch.pop("labels", None)  # token classification: >= 0 on each word's first sub-word
            logits = model(**{key: value.to(device) for key, value in batch.items()}).logits.float().cpu().numpy()
            if data.problem_type == TOKENS:
                predictions += [" ".join(data.labels[i] for i in row.argmax(-1)[mask >= 0])
                                for row, mask in zip(logits, words.numpy())]
            else:
                predictions += [prediction_text(data, row) for row in logits]
    lines = [f"{id_column or 'index'}\tprediction", *(f"{i}\t{p}" for i, p in zip(ids, predictions))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def prediction_text(data: Labelled, logits) -> str:
    if data.problem_type == REGRESSION:
        return f"{float(logits[0]):.3f}"
    if data.problem_type == MULTI:
        return ",".join(name for name, value in zip(data.labels, logits) if value > 0)
    return data.labels[int(logits.argmax())]


def labelled_loss(model, batch) -> torch.Tensor:
    """The model's loss, or 0 for a batch none of whose tokens carries a label (token classification: padding and
    later sub-words are -100), where transformers' mean over no token is NaN. The 0 keeps the graph (logits · 0), so
    that under DDP every process still runs its backward pass."""
    out = model(**batch)
    return out.loss if (batch["labels"] != -100).any() else out.logits.sum() * 0.0


def evaluate_task(data: Labelled, model, loader, accelerator, extra: dict) -> dict:
    """The metrics and the mean loss on the validation set, over every process (each example once). `extra` gets
    what the last evaluation adds to results.json: per-entity-type scores, and why a metric is undefined (None)."""
    logits, labels, losses, predicted, gold = [], [], [], [], []
    for batch in loader:
        out = model(**batch)
        labelled = (batch["labels"] != -100).any()
        loss = out.loss.float() if labelled else torch.full((), torch.nan, device=out.logits.device)
        losses.append(accelerator.gather_for_metrics(loss.repeat(len(batch["labels"]))))  # NaN: no labelled token
        if data.problem_type == TOKENS:  # rows of other lengths: padded to one width over processes, then tags
            batch_logits = accelerator.pad_across_processes(out.logits.float(), dim=1)
            batch_labels = accelerator.pad_across_processes(batch["labels"], dim=1, pad_index=-100)
            rows = tag_sequences(accelerator.gather_for_metrics(batch_logits).cpu().numpy(),
                                 accelerator.gather_for_metrics(batch_labels).cpu().numpy(), data.labels)
            predicted += rows[0]
            gold += rows[1]
            continue
        logits.append(accelerator.gather_for_metrics(out.logits.float()))
        labels.append(accelerator.gather_for_metrics(batch["labels"]))
    extra.clear()
    if data.problem_type == TOKENS:
        metrics, extra["entities"] = entity_metrics(predicted, gold)
    else:
        metrics, undefined = compute_metrics(data, torch.cat(logits).cpu().numpy(), torch.cat(labels).cpu().numpy())
        if undefined:
            extra["undefined"] = undefined
    losses = torch.cat(losses)
    losses = losses[~losses.isnan()]  # batches with no labelled token have no loss
    return {**metrics, "loss": losses.mean().item() if len(losses) else None}
