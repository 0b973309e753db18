"""GLUE tasks read from their original TSV files (the layout of the GLUE download), and their metrics.

Files are small, so they are read with plain Python and turned into in-memory `datasets.Dataset`s; quotes inside
fields are kept as text (MRPC and SST-2 contain stray ones), and every problem with the files is a one-line
`LeanbertError` naming the file (and line) instead of a traceback deep inside a CSV parser. Fine-tuning takes a
task as a preset of its general path (`labelled.from_glue`): fixed columns, labels and metrics.
"""

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ..common.errors import LeanbertError


@dataclass(frozen=True)
class Task:
    """Where a task's files are and which columns hold its texts and label. In a file without a header (CoLA) the
    columns are named by their 0-based position: "3" is the fourth field."""

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None  # names in id order; None for regression
    header: bool
    score_range: tuple[float, float] | None = None  # regression: the scores the task's annotators could give

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def is_regression(self) -> bool:
        return self.labels is None


# Label orders follow the Hugging Face `glue` dataset, so that ids match models fine-tuned on it.
TASKS: dict[str, Task] = {task.name: task for task in (
    Task("cola", "CoLA", ("3",), "1", ("unacceptable", "acceptable"), header=False),
    Task("sst2", "SST-2", ("sentence",), "label", ("negative", "positive"), header=True),
    Task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("not_equivalent", "equivalent"), header=True),
    Task("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, header=True, score_range=(0.0, 5.0)),
    Task("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), header=True),
    Task("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("not_entailment", "entailment"), header=True),
    Task("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), header=True),
)}

HUB_DATASET = "nyu-mll/glue"  # the Hub's copy of GLUE, named in a fine-tuned model's card

# The metric to select checkpoints on and report first. MRPC: F1, the figure GLUE lists first for it.
_MAIN_METRIC = {"cola": "matthews_correlation", "mrpc": "f1", "stsb": "pearson"}


def get_task(task: str) -> Task:
    """The task of that name (any case), or an error listing the known ones."""
    found = TASKS.get(str(task).lower())
    if found is None:
        raise LeanbertError(f"unknown GLUE task {task!r}; known tasks: {', '.join(TASKS)}")
    return found


def _parse_label(task: Task, value: str, where: str) -> int | float:
    """A label id from a label name or a digit id; a float score for regression."""
    if task.is_regression:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise LeanbertError(f"{where}: score {value!r} is not a number")
        low, high = task.score_range or (-math.inf, math.inf)
        if not low <= score <= high:
            raise LeanbertError(f"{where}: score {value!r} is outside {task.name}'s range {low:g}-{high:g}")
        return score
    if value in task.labels:
        return task.labels.index(value)
    if value.isascii() and value.isdigit() and int(value) < task.num_labels:
        return int(value)
    raise LeanbertError(f"{where}: label {value!r} is not one of {', '.join(task.labels)} "
                        f"(or an id 0-{task.num_labels - 1})")


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """(number, line) of a UTF-8 file, a byte-order mark dropped; an unreadable or undecodable file is refused in
    one line naming it (and the line)."""
    try:
        raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf").splitlines(keepends=True)
    except OSError as error:
        raise LeanbertError(f"cannot read {path}: {error.strerror or error}") from None
    decoded = []
    for number, line in enumerate(raw, 1):
        try:
            decoded.append((number, line.decode("utf-8")))
        except UnicodeDecodeError as error:
            raise LeanbertError(f"{path}:{number}: not UTF-8 text ({error.reason})") from None
    return decoded


def _read_tsv(task: Task, path: Path) -> datasets.Dataset:
    """One labelled TSV file as a Dataset (text_a, text_b for pair tasks, label). Lines are split on tabs only, so
    quotes are plain text; a UTF-8 byte-order mark (MRPC) is dropped; blank lines are skipped."""
    lines = [(number, line.rstrip("\r\n").split("\t")) for number, line in _text_lines(path) if line.strip()]
    if not lines:
        raise LeanbertError(f"{path} is empty")
    if task.header:
        columns = lines.pop(0)[1]
        missing = [name for name in (*task.text_columns, task.label_column) if name not in columns]
        if missing:
            raise LeanbertError(f"{path}: the header lacks the {task.name} column(s) {', '.join(map(repr, missing))} "
                                f"(it has {', '.join(map(repr, columns))})")
        if not lines:
            raise LeanbertError(f"{path} has a header but no rows")
    else:  # the first row fixes the width, and the columns are named by position
        columns = [str(i) for i in range(len(lines[0][1]))]
        needed = 1 + max(int(name) for name in (*task.text_columns, task.label_column))
        if len(columns) < needed:
            raise LeanbertError(f"{path}:{lines[0][0]}: {len(columns)} tab-separated fields, but {task.name} files "
                                f"(no header) need at least {needed}")
    text_indices = [columns.index(name) for name in task.text_columns]
    label_index = columns.index(task.label_column)
    data = {"text_a": [], "text_b": [], "label": []}
    for number, fields in lines:
        where = f"{path}:{number}"
        if len(fields) != len(columns):
            raise LeanbertError(f"{where}: {len(fields)} tab-separated fields, expected {len(columns)}")
        for key, index in zip(("text_a", "text_b"), text_indices):
            data[key].append(fields[index])
        data["label"].append(_parse_label(task, fields[label_index], where))
    features = {"text_a": datasets.Value("string"), "text_b": datasets.Value("string"),
                "label": (datasets.Value("float32") if task.is_regression
                          else datasets.ClassLabel(names=list(task.labels)))}
    if len(text_indices) == 1:
        del data["text_b"], features["text_b"]
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def load_task(task: str, data_dir, *, validation_split: float | None = None,
              seed: int = 0) -> tuple[datasets.Dataset, datasets.Dataset]:
    """A task's train and validation sets, from `data_dir/<folder>/{train,dev}.tsv`.

    Validation is dev.tsv when `validation_split` is None. When `validation_split` (0 < x < 1) is given it is always
    honoured, even where a dev file exists: that fraction of train (rounded to whole rows) is held out, shuffled with
    `seed`, so that a dev set can be kept aside for a final evaluation. Without either there is nothing to validate on
    and the call is refused."""
    spec = get_task(task)
    if validation_split is not None and (isinstance(validation_split, bool)
                                         or not isinstance(validation_split, numbers.Real)
                                         or not 0 < validation_split < 1):
        raise LeanbertError(f"validation_split must be a number strictly between 0 and 1, got {validation_split!r}")
    root = Path(data_dir)
    if not root.is_dir():
        raise LeanbertError(f"{root} not found: no GLUE data folder there")
    folder = root / spec.folder
    if not folder.is_dir():
        raise LeanbertError(f"{folder} not found: no {spec.name} task folder in the GLUE data folder")
    train_path, dev_path = folder / "train.tsv", folder / "dev.tsv"
    if not train_path.is_file():
        raise LeanbertError(f"{train_path} not found: the {spec.name} task has no train file")
    if validation_split is None and not dev_path.is_file():
        raise LeanbertError(f"{dev_path} not found: the {spec.name} task has no dev file; "
                            f"pass --validation-split to hold out part of train")
    train = _read_tsv(spec, train_path)
    if validation_split is None:
        return train, _read_tsv(spec, dev_path)
    held_out = round(validation_split * len(train))
    if not 0 < held_out < len(train):
        raise LeanbertError(f"validation_split {validation_split} of the {len(train)} rows of {train_path} would leave "
                            f"{'validation' if held_out == 0 else 'train'} empty")
    split = train.train_test_split(test_size=held_out, seed=seed)
    return split["train"], split["test"]


def main_metric(task: str) -> str:
    """The metric to report first and to select checkpoints on: matthews_correlation (cola), f1 (mrpc),
    pearson (stsb), accuracy (the others)."""
    return _MAIN_METRIC.get(get_task(task).name, "accuracy")


def compute_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's GLUE metrics, main metric first. `predictions` are logits (N, num_labels), or scores (N,) or
    (N, 1) for regression; `labels` are (N,) ids or scores."""
    spec = get_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels).reshape(-1)
    expected = ((len(labels),), (len(labels), 1)) if spec.is_regression else ((len(labels), spec.num_labels),)
    if predictions.shape not in expected or not len(labels):
        raise LeanbertError(f"{spec.name} metrics need predictions of shape {' or '.join(map(str, expected))} "
                            f"for {len(labels)} labels, got {predictions.shape}")
    if spec.is_regression:
        scores = predictions.reshape(-1).astype(np.float64)
        return {"pearson": float(pearsonr(scores, labels)[0]), "spearmanr": float(spearmanr(scores, labels)[0])}
    ids = predictions.argmax(axis=-1)
    metrics = {"accuracy": float(accuracy_score(labels, ids))}
    if spec.name == "cola":
        metrics = {"matthews_correlation": float(matthews_corrcoef(labels, ids)), **metrics}
    if spec.name == "mrpc":
        metrics = {"f1": float(f1_score(labels, ids)), **metrics}
    return metrics
