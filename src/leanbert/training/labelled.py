"""Labelled text for sequence classification and regression: CSV, TSV or JSON-lines files, or any dataset that
`datasets.load_dataset` reads (or a `save_to_disk` folder), with the text and label columns and the problem type
picked as transformers' `run_glue.py` picks them. GLUE's TSV layout is a preset of the same path (`from_glue`).

Files are checked before any work (missing, empty, unparseable, rows of different widths, labels mixing numbers and
text: one line naming the file and line), then read by `datasets`, so the table and its tokenisation are cached.
TSV files are read without quoting, as GLUE's are: quotes are text.
"""

import csv
import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score

from ..common.errors import LeanbertError, first_line
from ..common.fingerprints import file_sha256
from . import glue

SINGLE, REGRESSION, MULTI = "single_label_classification", "regression", "multi_label_classification"
READERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}
ID_COLUMNS = ("id", "idx")  # a row's own id, for predictions.tsv; never a default text column
MAIN_METRIC = {SINGLE: "accuracy", REGRESSION: "pearson", MULTI: "micro_f1", "token_classification": "f1"}


@dataclass
class Labelled:
    """Train, validation and (optional, labels not needed) test sets, with what the model needs to know of them.
    Labels are ids (classification), floats (regression) or multi-hot rows (multi-label) in `label_column`."""

    name: str  # what the data is called in reports and the card: a GLUE task, a file or a dataset name
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    text_columns: tuple[str, ...]
    label_column: str
    problem_type: str
    labels: tuple[str, ...] | None  # names in id order; None for regression
    sources: list[tuple[str, Path]] = field(default_factory=list)  # input files or folders, for the output checks
    glue: str | None = None  # the GLUE task this is a preset of
    hub_dataset: str | None = None  # a Hub dataset id, for the card's metadata

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def main_metric(self) -> str:
        return glue.main_metric(self.glue) if self.glue else MAIN_METRIC[self.problem_type]

    @property
    def description(self) -> str:
        """What the data is, in a sentence of the model card: "GLUE RTE", "`tickets.csv`", "dataset `x`"."""
        if self.glue:
            return f"GLUE {self.glue.upper()}"
        source = self.sources[0][0] if self.sources else "dataset"
        return f"`{self.name}` ({'Hub dataset' if self.hub_dataset else 'local ' + source})"

    def id_column(self, data: datasets.Dataset) -> str | None:
        return next((name for name in ID_COLUMNS if name in data.column_names), None)


def from_glue(task: str, data_dir, *, validation_split: float | None, seed: int) -> Labelled:
    """A GLUE task from its TSV layout (`glue.load_task`), as the general path takes it."""
    spec = glue.get_task(task)
    train, validation = glue.load_task(spec.name, data_dir, validation_split=validation_split, seed=seed)
    return Labelled(spec.name, train, validation, None, tuple(c for c in ("text_a", "text_b") if c in
                                                              train.column_names), "label",
                    REGRESSION if spec.is_regression else SINGLE, spec.labels,
                    sources=[("data", Path(data_dir) / spec.folder)], glue=spec.name, hub_dataset=glue.HUB_DATASET)


# ------------------------------------------------------------------------------------------------ files


def check_file(path: Path, what: str) -> str:
    """The `datasets` reader of a labelled file, after checking it exists, is not empty and has a known extension."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise LeanbertError(f"{what} {path} is neither CSV, TSV nor JSON lines (.csv, .tsv, .json, .jsonl)")
    if not path.is_file():
        raise LeanbertError(f"{what} {path} not found")
    try:
        if not path.read_bytes().strip():
            raise LeanbertError(f"{what} {path} is empty")
    except OSError as error:
        raise LeanbertError(f"cannot read {what} {path}: {error.strerror or error}") from None
    return reader


def label_kind(value) -> str:
    if isinstance(value, bool) or isinstance(value, str):
        return "text"
    if isinstance(value, numbers.Integral):
        return "integer"
    if isinstance(value, numbers.Real):
        return "number"
    if isinstance(value, list):
        return "list"
    return type(value).__name__


def text_kind(value: str) -> str:
    """How pandas will read a CSV cell: an integer, a number or text."""
    try:
        int(value)
        return "integer"
    except ValueError:
        try:
            float(value)
            return "number"
        except ValueError:
            return "text"


def scan_rows(path: Path, what: str) -> tuple[list[str], list[tuple[int, list]]]:
    """(columns, [(line, values)]) of a CSV/TSV/JSON-lines file, parsed as `datasets` will parse it; a row that does
    not parse or has another width (other keys) than the header is refused naming its line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise LeanbertError(f"{what} {path} is not UTF-8 text ({error.reason})") from None
    if READERS[path.suffix.lower()] == "json":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise LeanbertError(f"{what} {path}:{number}: not a JSON object on its own line "
                                    f"({error.msg})") from None
            if not isinstance(row, dict):
                raise LeanbertError(f"{what} {path}:{number}: a JSON {type(row).__name__}, not an object")
            if rows and list(row) != list(rows[0][1]):
                raise LeanbertError(f"{what} {path}:{number}: fields {', '.join(row)}; line {rows[0][0]} has "
                                    f"{', '.join(rows[0][1])}")
            rows.append((number, row))
        return list(rows[0][1]), [(number, list(row.values())) for number, row in rows]
    tsv = path.suffix.lower() == ".tsv"
    reader = csv.reader(text.splitlines(keepends=True), delimiter="\t" if tsv else ",",
                        quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL, strict=True)
    rows = []
    try:
        for values in reader:
            if values:
                rows.append((reader.line_num, values))
    except csv.Error as error:
        raise LeanbertError(f"{what} {path}:{reader.line_num}: not {'TSV' if tsv else 'CSV'} ({error})") from None
    header = rows.pop(0)[1]
    if not rows:
        raise LeanbertError(f"{what} {path} has a header but no rows")
    for number, values in rows:
        if len(values) != len(header):
            raise LeanbertError(f"{what} {path}:{number}: {len(values)} fields, the header has {len(header)}")
    return header, rows


def check_labels(path: Path, what: str, columns: list[str], rows, label_column: str) -> None:
    """Refuse rows without a label and labels that mix kinds (text with numbers, lists with single labels)."""
    index = columns.index(label_column)
    kinds = {}
    for number, values in rows:
        value = values[index]
        if value is None or value == "":
            raise LeanbertError(f"{what} {path}:{number}: no label in column {label_column!r}")
        kind = label_kind(value) if READERS[path.suffix.lower()] == "json" else text_kind(value)
        kinds.setdefault(kind, number)
    if "number" in kinds:  # integers among scores are scores too
        kinds.pop("integer", None)
    if len(kinds) > 1:
        (first, line_a), (second, line_b) = sorted(kinds.items(), key=lambda item: item[1])[:2]
        raise LeanbertError(f"{what} {path}: labels in {label_column!r} mix types: {first} (line {line_a}) and "
                            f"{second} (line {line_b})")


def load_file(path: Path, reader: str, cache_dir: str | None, what: str) -> datasets.Dataset:
    """The file as `datasets` reads it, cached under a name made of its contents' SHA-256 (`datasets` alone keys
    a file by path and modification time, so a file replaced under its old time would be read from the old cache)."""
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if path.suffix.lower() == ".tsv" else {}
    if reader == "csv":
        options["keep_default_na"] = False  # a text "NA" or "null" stays text
    try:
        return datasets.load_dataset(reader, name=f"leanbert-{file_sha256(path, what)}", split="train",
                                     data_files=str(path.resolve()), cache_dir=cache_dir, **options)
    except Exception as error:  # what the checks above let through (a full disk, a cache that cannot be written)
        raise LeanbertError(f"cannot read {path} with datasets: {first_line(error)}") from None


def read_files(train_file, validation_file=None, test_file=None, *, text_columns=None, label_column=None,
               validation_split: float | None = None, seed: int = 0, cache_dir: str | None = None) -> Labelled:
    """Labelled data from files; without a validation file, `validation_split` of train is held out."""
    label_column = label_column or "label"
    paths = {"train": Path(train_file), "validation": validation_file and Path(validation_file),
             "test": test_file and Path(test_file)}
    readers = {split: check_file(path, f"{split} file") for split, path in paths.items() if path}
    for split, path in paths.items():
        if path is None:
            continue
        columns, rows = scan_rows(path, f"{split} file")
        wanted = [*(text_columns or []), *([label_column] if split != "test" else [])]
        missing = [name for name in wanted if name not in columns]
        if missing:
            raise LeanbertError(f"{split} file {path} has no column {', '.join(map(repr, missing))}; its columns: "
                                f"{', '.join(map(repr, columns))}")
        if split != "test":
            check_labels(path, f"{split} file", columns, rows, label_column)
    check_split_options(validation_split, validation_file is not None, "--validation-file")
    loaded = {split: load_file(path, readers[split], cache_dir, f"{split} file") for split, path in paths.items()
              if path}
    sources = [(f"{split} file", path) for split, path in paths.items() if path]
    return labelled(paths["train"].name, loaded, text_columns, label_column, validation_split, seed, sources)


# ------------------------------------------------------------------------------------------------ datasets


def read_dataset(name: str, config: str | None = None, *, train_split: str = "train",
                 validation_split_name: str = "validation", test_split: str | None = None, text_columns=None,
                 label_column=None, validation_split: float | None = None, seed: int = 0,
                 cache_dir: str | None = None) -> Labelled:
    """Labelled data from `datasets.load_dataset(name, config)` (a Hub id, a local folder of data files) or a
    `save_to_disk` folder; without the validation split, `validation_split` of train is held out."""
    label_column = label_column or "label"
    wanted, loaded = dataset_splits(name, config, cache_dir, train_split, validation_split_name, test_split,
                                    validation_split)
    for role, data in loaded.items():
        wanted_columns = [*(text_columns or []), *([label_column] if role != "test" else [])]
        missing = [column for column in wanted_columns if column not in data.column_names]
        if missing:
            raise LeanbertError(f"the {wanted[role]!r} split of dataset {name!r} has no column "
                                f"{', '.join(map(repr, missing))}; its columns: "
                                f"{', '.join(map(repr, data.column_names))}")
    local = Path(name).exists()
    return labelled(name if not local else Path(name).name, loaded, text_columns, label_column, validation_split,
                    seed, [("dataset", Path(name))] if local else [], hub_dataset=None if local else name)


def dataset_splits(name: str, config: str | None, cache_dir: str | None, train_split: str,
                   validation_split_name: str, test_split: str | None, validation_split: float | None):
    """The dataset's splits by role: ({role: split name}, {role: split}) for train, validation (unless
    `validation_split` holds it out of train) and test (if asked); one line naming a split the dataset lacks."""
    found = load_named(name, config, cache_dir)
    check_split_options(validation_split, validation_split_name in found, f"a {validation_split_name!r} split")
    roles = {"train": train_split, "validation": validation_split_name if validation_split is None else None,
             "test": test_split}
    absent = [split for split in roles.values() if split and split not in found]
    if absent:
        raise LeanbertError(f"dataset {name!r} has no split {', '.join(map(repr, absent))}; its splits: "
                            f"{', '.join(map(repr, found))}")
    return roles, {role: found[split] for role, split in roles.items() if split}


def load_named(name: str, config: str | None, cache_dir: str | None) -> datasets.DatasetDict:
    """What `datasets` loads under that name, as a DatasetDict; one line naming the dataset when it cannot."""
    path = Path(name)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            found = datasets.load_from_disk(str(path))
        else:
            found = datasets.load_dataset(name, config, cache_dir=cache_dir)
    except Exception as error:
        raise LeanbertError(f"cannot load dataset {name!r}{f' ({config})' if config else ''}: "
                            f"{first_line(error)}") from None
    return found if isinstance(found, datasets.DatasetDict) else datasets.DatasetDict(train=found)


# ------------------------------------------------------------------------------------------------ both


def check_split_options(validation_split, has_validation: bool, validation: str) -> None:
    if validation_split is not None and (isinstance(validation_split, bool)
                                         or not isinstance(validation_split, numbers.Real)
                                         or not 0 < validation_split < 1):
        raise LeanbertError(f"validation_split must be a number strictly between 0 and 1, got {validation_split!r}")
    if validation_split is None and not has_validation:
        raise LeanbertError(f"nothing to validate on: give {validation} or --validation-split")


def default_text_columns(columns: list[str], label_column: str) -> tuple[str, ...]:
    """As run_glue.py: sentence1 and sentence2 where both exist, else the first two other columns (one if there is
    only one); id columns are not text."""
    others = [name for name in columns if name != label_column and name not in ID_COLUMNS]
    if "sentence1" in others and "sentence2" in others:
        return "sentence1", "sentence2"
    if not others:
        raise LeanbertError(f"no text column beside the label column {label_column!r}; the columns: "
                            f"{', '.join(map(repr, columns))}")
    return tuple(others[:2])


def label_values(feature) -> str:
    """The problem type a label feature makes, as run_glue.py decides it."""
    if isinstance(feature, datasets.ClassLabel):
        return SINGLE
    if isinstance(feature, list) or type(feature).__name__ in ("Sequence", "List", "LargeList"):
        return MULTI
    dtype = getattr(feature, "dtype", "")
    return REGRESSION if dtype.startswith("float") else SINGLE


def labelled(name: str, loaded: dict, text_columns, label_column: str, validation_split, seed: int, sources,
             hub_dataset: str | None = None) -> Labelled:
    """Pick the text columns and the problem type, build the label vocabulary from train, check validation
    against it, turn labels into ids and hold out validation if asked."""
    train = loaded["train"]
    if text_columns is not None and not 1 <= len(text_columns) <= 2:
        raise LeanbertError(f"give one or two text columns (a text or a pair), got {len(text_columns)}: "
                            f"{', '.join(text_columns)}")
    text_columns = tuple(text_columns or default_text_columns(train.column_names, label_column))
    for role, data in loaded.items():
        missing = [column for column in text_columns if column not in data.column_names]
        if missing:
            raise LeanbertError(f"the {role} data has no text column {', '.join(map(repr, missing))} (train's); its "
                                f"columns: {', '.join(map(repr, data.column_names))}")
    feature = train.features[label_column]
    problem = label_values(feature)
    labels = None
    if problem == SINGLE:
        if isinstance(feature, datasets.ClassLabel):
            labels = tuple(feature.names)
        else:
            labels = tuple(str(value) for value in sorted(set(train[label_column])))
    elif problem == MULTI:
        labels = tuple(str(value) for value in sorted({v for row in train[label_column] for v in row}))
    if labels is not None and len(labels) < 2:
        raise LeanbertError(f"the train labels in {label_column!r} hold {len(labels)} class "
                            f"({', '.join(labels)}): classification needs at least 2")
    if "validation" in loaded and labels is not None and not isinstance(feature, datasets.ClassLabel):
        values = loaded["validation"][label_column]
        seen = {str(v) for v in (values if problem == SINGLE else (v for row in values for v in row))}
        unseen = sorted(seen - set(labels))
        if unseen:
            raise LeanbertError(f"validation labels never seen in training: {', '.join(map(repr, unseen))} (train has "
                                f"{', '.join(map(repr, labels))})")
    if "validation" in loaded and problem == REGRESSION and \
            label_values(loaded["validation"].features[label_column]) != REGRESSION:
        loaded["validation"] = loaded["validation"].cast_column(label_column, datasets.Value("float32"))
    splits = {role: encode_labels(data, label_column, problem, labels, feature) if role != "test" else data
              for role, data in loaded.items()}
    if validation_split is not None:
        held_out = round(validation_split * len(splits["train"]))
        if not 0 < held_out < len(splits["train"]):
            raise LeanbertError(f"validation_split {validation_split} of the {len(splits['train'])} train rows would "
                                f"leave {'validation' if held_out == 0 else 'train'} empty")
        parts = splits["train"].train_test_split(test_size=held_out, seed=seed)
        splits["train"], splits["validation"] = parts["train"], parts["test"]
    return Labelled(name, splits["train"], splits["validation"], splits.get("test"), text_columns, label_column,
                    problem, labels, sources, hub_dataset=hub_dataset)


def encode_labels(data: datasets.Dataset, column: str, problem: str, labels, feature) -> datasets.Dataset:
    """Labels as the model's loss takes them: ids, float scores, or multi-hot float rows."""
    if problem == REGRESSION:
        return data if data.features[column].dtype == "float32" else data.cast_column(column, datasets.Value(
            "float32"))
    if isinstance(data.features[column], datasets.ClassLabel):
        return data
    ids = {name: i for i, name in enumerate(labels)}
    if problem == SINGLE:
        return data.map(lambda batch: {column: [ids[str(v)] for v in batch[column]]}, batched=True,
                        features=datasets.Features({**data.features, column: datasets.ClassLabel(names=list(labels))}),
                        desc="label ids")
    hot = datasets.Sequence(datasets.Value("float32"), length=len(labels))

    def multi_hot(batch):
        rows = np.zeros((len(batch[column]), len(labels)), dtype=np.float32)
        for row, values in enumerate(batch[column]):
            rows[row, [ids[str(v)] for v in values]] = 1
        return {column: rows.tolist()}

    return data.map(multi_hot, batched=True, features=datasets.Features({**data.features, column: hot}),
                    desc="multi-hot labels")


# ------------------------------------------------------------------------------------------------ metrics


def check_validation(data: Labelled, validation: datasets.Dataset) -> None:
    """Refuse, before training, a validation set on which the main metrics cannot be defined."""
    values = validation[data.label_column]
    if data.problem_type == REGRESSION:
        if len(values) < 2:
            raise LeanbertError(f"{len(values)} validation example: Pearson and Spearman correlations need at least 2")
        if len(set(values)) < 2:
            raise LeanbertError(f"the {len(values)} validation labels are all {values[0]:g}: a correlation with "
                                "constant labels is undefined")


def compute_metrics(data: Labelled, predictions: np.ndarray, labels: np.ndarray) -> tuple[dict, dict]:
    """(metrics, reasons): the problem's metrics, main metric first, and why any of them is undefined (None)."""
    if data.glue and data.problem_type == SINGLE:
        return glue.compute_metrics(data.glue, predictions, labels), {}
    if data.problem_type == REGRESSION:
        scores, labels = np.asarray(predictions).reshape(-1).astype(np.float64), np.asarray(labels).reshape(-1)
        if len(set(scores.tolist())) < 2:
            reason = f"the model gave every validation example the same score ({scores[0]:.4g})"
            return {"pearson": None, "spearmanr": None}, {"pearson": reason, "spearmanr": reason}
        return {"pearson": float(pearsonr(scores, labels)[0]), "spearmanr": float(spearmanr(scores, labels)[0])}, {}
    if data.problem_type == MULTI:
        chosen = (np.asarray(predictions) > 0).astype(int)
        labels = np.asarray(labels).astype(int)
        return {"micro_f1": float(f1_score(labels, chosen, average="micro", zero_division=0)),
                "macro_f1": float(f1_score(labels, chosen, average="macro", zero_division=0))}, {}
    ids = np.asarray(predictions).argmax(axis=-1)
    return {"accuracy": float(accuracy_score(labels, ids)),
            "macro_f1": float(f1_score(labels, ids, average="macro", labels=list(range(data.num_labels)),
                                       zero_division=0))}, {}
