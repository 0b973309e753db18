"""Token classification (named entities, chunks): words and IOB tags from CoNLL files or JSON lines (or a dataset),
tags aligned to sub-words and scored per entity as transformers' `run_ner.py` does.

- CoNLL: one token per line with its tag last (`EU B-ORG`, or CoNLL-2003's four columns), a blank line between
  sentences, `-DOCSTART-` lines skipped. JSON lines: a list of words and a list of tags per line (`tokens`,
  `tags` by default). Every tag is `O` or `B-`/`I-` and a type (IOB1 or IOB2); anything else is refused naming its
  line, before any work.
- A word's tag goes to its first sub-word; the others are ignored by the loss (-100), or with `label_all_tokens`
  carry it (a `B-` as the matching `I-`), as run_ner.py's `--label_all_tokens`.
- Metrics: entity-level precision, recall and F1 from seqeval (its default, conlleval-compatible mode, as
  run_ner.py's `evaluate.load("seqeval")`), token accuracy, and per-entity-type scores.
"""

import json
import re
from pathlib import Path

import datasets
import numpy as np
from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

from ..common.errors import LeanbertError
from .labelled import check_file, check_split_options, dataset_splits, load_file

TOKENS = "token_classification"  # the problem type, beside labelled.py's
TAG = re.compile(r"^(O|[BI]-.+)$")
CONLL_SUFFIXES = (".conll", ".txt", ".iob", ".bio")


def check_tag(tag, where: str) -> str:
    if not isinstance(tag, str) or not TAG.match(tag):
        raise LeanbertError(f"{where}: tag {tag!r} is not IOB (O, or B-/I- and an entity type)")
    return tag


def read_conll(path: Path, what: str) -> dict[str, list]:
    """{tokens: [[word]], tags: [[tag]]} of a CoNLL file (the token first, the tag last on every line)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise LeanbertError(f"{what} {path} is not UTF-8 text ({error.reason})") from None
    sentences, words, tags = {"tokens": [], "tags": []}, [], []
    for number, line in enumerate([*text.splitlines(), ""], 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences["tokens"].append(words)
                sentences["tags"].append(tags)
            words, tags = [], []
            continue
        if len(fields) < 2:
            raise LeanbertError(f"{what} {path}:{number}: token {fields[0]!r} has no tag")
        words.append(fields[0])
        tags.append(check_tag(fields[-1], f"{what} {path}:{number}"))
    if not sentences["tokens"]:
        raise LeanbertError(f"{what} {path} holds no tagged token")
    return sentences


def read_json_lines(path: Path, what: str, tokens: str, tags: str, test: bool) -> None:
    """Check a JSON-lines file of words and tags line by line (what `datasets` then reads)."""
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{what} {path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise LeanbertError(f"{where}: not a JSON object on its own line ({error.msg})") from None
        columns = list(row) if isinstance(row, dict) else []
        for column in (tokens, *(() if test else (tags,))):
            if column not in columns:
                raise LeanbertError(f"{where}: no field {column!r}; its fields: {', '.join(map(repr, columns))}")
            if not isinstance(row[column], list):
                raise LeanbertError(f"{where}: {column!r} is not a list")
        if not test:
            if len(row[tokens]) != len(row[tags]):
                raise LeanbertError(f"{where}: {len(row[tokens])} tokens but {len(row[tags])} tags")
            for tag in row[tags]:
                check_tag(tag, where)


def read_token_files(train_file, validation_file=None, test_file=None, *, text_columns=None, label_column=None,
                     validation_split: float | None = None, seed: int = 0, cache_dir: str | None = None):
    """(train, validation, test, tokens column, tags column, tag names, sources) from CoNLL or JSON-lines files."""
    tokens, tags = (text_columns or ["tokens"])[0], label_column or "tags"
    if text_columns is not None and len(text_columns) != 1:
        raise LeanbertError(f"token classification takes one column of words, got {len(text_columns)}: "
                            f"{', '.join(text_columns)}")
    paths = {"train": Path(train_file), "validation": validation_file and Path(validation_file),
             "test": test_file and Path(test_file)}
    loaded = {}
    for split, path in paths.items():
        if path is None:
            continue
        what = f"{split} file"
        if path.suffix.lower() in CONLL_SUFFIXES:
            if not path.is_file():
                raise LeanbertError(f"{what} {path} not found")
            if not path.read_bytes().strip():
                raise LeanbertError(f"{what} {path} is empty")
            sentences = read_conll(path, what)
            loaded[split] = datasets.Dataset.from_dict({tokens: sentences["tokens"], tags: sentences["tags"]})
            continue
        if check_file(path, what) != "json":
            raise LeanbertError(f"{what} {path}: token classification reads CoNLL ({', '.join(CONLL_SUFFIXES)}) "
                                "or JSON lines (.json, .jsonl)")
        read_json_lines(path, what, tokens, tags, split == "test")
        loaded[split] = load_file(path, "json", cache_dir, what)
    check_split_options(validation_split, validation_file is not None, "--validation-file")
    sources = [(f"{split} file", path) for split, path in paths.items() if path]
    return tagged(loaded, tokens, tags, validation_split, seed) + (sources,)


def read_token_dataset(name: str, config: str | None = None, *, train_split: str = "train",
                       validation_split_name: str = "validation", test_split: str | None = None, text_columns=None,
                       label_column=None, validation_split: float | None = None, seed: int = 0,
                       cache_dir: str | None = None):
    """As `read_token_files`, from a dataset `datasets` loads (tags as names, or ids of a ClassLabel sequence,
    `ner_tags` where there is no `tags`)."""
    roles, loaded = dataset_splits(name, config, cache_dir, train_split, validation_split_name, test_split,
                                   validation_split)
    columns = loaded["train"].column_names
    tokens = (text_columns or ["tokens"])[0]
    tags = label_column or ("tags" if "tags" in columns or "ner_tags" not in columns else "ner_tags")
    for role, data in loaded.items():
        missing = [c for c in (tokens, *(() if role == "test" else (tags,))) if c not in data.column_names]
        if missing:
            raise LeanbertError(f"the {roles[role]!r} split of dataset {name!r} has no column "
                                f"{', '.join(map(repr, missing))}; its columns: "
                                f"{', '.join(map(repr, data.column_names))}")
    names = getattr(getattr(loaded["train"].features[tags], "feature", None), "names", None)
    if names is not None:  # ClassLabel ids: back to tag names, checked as the files' are
        loaded = {role: data if role == "test" else data.map(
            lambda batch: {tags: [[names[i] for i in row] for row in batch[tags]]}, batched=True,
            features=datasets.Features({**data.features, tags: datasets.Sequence(datasets.Value("string"))}))
            for role, data in loaded.items()}
    for role, data in loaded.items():
        if role != "test":
            for number, row in enumerate(data[tags]):
                for tag in row:
                    check_tag(tag, f"dataset {name!r} split {roles[role]!r} row {number}")
    local = Path(name).exists()
    return tagged(loaded, tokens, tags, validation_split, seed) + ([("dataset", Path(name))] if local else [],)


def tagged(loaded: dict, tokens: str, tags: str, validation_split, seed: int):
    """Tag names (sorted, from train, as run_ner.py's), validation checked against them, validation held out if
    asked."""
    names = sorted({tag for row in loaded["train"][tags] for tag in row})
    if "validation" in loaded:
        unseen = sorted({tag for row in loaded["validation"][tags] for tag in row} - set(names))
        if unseen:
            raise LeanbertError(f"validation tags never seen in training: {', '.join(map(repr, unseen))}")
    train, validation = loaded["train"], loaded.get("validation")
    if validation_split is not None:
        held_out = round(validation_split * len(train))
        if not 0 < held_out < len(train):
            raise LeanbertError(f"validation_split {validation_split} of the {len(train)} train sentences would "
                                f"leave {'validation' if held_out == 0 else 'train'} empty")
        parts = train.train_test_split(test_size=held_out, seed=seed)
        train, validation = parts["train"], parts["test"]
    return train, validation, loaded.get("test"), tokens, tags, tuple(names)


def check_entities(validation: datasets.Dataset, tags: str) -> None:
    """Refuse, before training, validation data without an entity: recall (and so F1) would be undefined."""
    if not any(tag != "O" for row in validation[tags] for tag in row):
        raise LeanbertError(f"the {len(validation)} validation sentences hold no entity (every tag is O): "
                            "entity precision, recall and F1 would be undefined")


def aligner(tokenizer, tokens: str, tags: str, names: tuple[str, ...], max_seq_length: int, label_all_tokens: bool):
    """A batched `datasets.map` function: words to sub-words, tags to ids on first sub-words (-100 elsewhere, or the
    word's tag, B- as I-, with `label_all_tokens`), as run_ner.py's `tokenize_and_align_labels`. Without `tags`
    (a test set) the labels mark each word's first sub-word (0) for the predictions."""
    ids = {name: i for i, name in enumerate(names)}
    inside = [ids.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(names)]

    def align(batch):
        encoded = tokenizer(batch[tokens], is_split_into_words=True, truncation=True, max_length=max_seq_length)
        labels = []
        for row, word_tags in enumerate(batch[tags] if tags else [[names[0]] * len(w) for w in batch[tokens]]):
            previous, row_labels = None, []
            for word in encoded.word_ids(row):
                if word is None:
                    row_labels.append(-100)
                elif word != previous:
                    row_labels.append(ids[word_tags[word]])
                else:
                    row_labels.append(inside[ids[word_tags[word]]] if label_all_tokens and tags else -100)
                previous = word
            labels.append(row_labels)
        encoded["labels"] = labels
        return encoded

    return align


def entity_metrics(predicted: list[list[str]], gold: list[list[str]]) -> tuple[dict, dict]:
    """(overall precision, recall, F1 and token accuracy; per entity type precision, recall, F1 and count)."""
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    per_type = {name: {"precision": float(scores["precision"]), "recall": float(scores["recall"]),
                       "f1": float(scores["f1-score"]), "number": int(scores["support"])}
                for name, scores in report.items() if not name.endswith(" avg")}
    return {"f1": float(f1_score(gold, predicted, zero_division=0)),
            "precision": float(precision_score(gold, predicted, zero_division=0)),
            "recall": float(recall_score(gold, predicted, zero_division=0)),
            "accuracy": float(accuracy_score(gold, predicted))}, per_type


def tag_sequences(logits: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> tuple[list, list]:
    """(predicted, gold) tag names of the labelled positions of each row (padding and ignored sub-words dropped)."""
    ids = logits.argmax(-1)
    keep = labels != -100
    return ([[names[i] for i in row[mask]] for row, mask in zip(ids, keep)],
            [[names[i] for i in row[mask]] for row, mask in zip(labels, keep)])
