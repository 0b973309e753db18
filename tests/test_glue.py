"""GLUE reading against the real TSV files in shared/data/glue (counted here independently, with plain string
splitting), metrics against values derived by hand from their formulas, and every bad input as a one-line error."""

import math
from collections import Counter

import numpy as np
import pytest

from conftest import SHARED_DATA
from leanbert.common.errors import LeanbertError
from leanbert.training.glue import TASKS, compute_metrics, load_task, main_metric

GLUE = SHARED_DATA / "glue"
WITH_DEV = ("cola", "sst2", "mrpc", "rte", "wnli")


def rows(path, header: bool) -> list[list[str]]:
    """The data rows of a TSV file, split on tabs only, without a header line."""
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    return [line.split("\t") for line in lines[1 if header else 0:]]


@pytest.fixture(scope="module")
def loaded():
    return {name: load_task(name, GLUE) for name in WITH_DEV}


# Field positions (text_a, text_b, label) read off the files by eye, independently of TASKS.
POSITIONS = {"cola": (3, None, 1), "sst2": (0, None, 1), "mrpc": (3, 4, 0), "rte": (1, 2, 3), "wnli": (1, 2, 3)}
RTE_IDS = {"entailment": 0, "not_entailment": 1}  # the Hugging Face glue order


@pytest.mark.parametrize("name", WITH_DEV)
def test_train_and_dev_match_the_files_row_for_row(loaded, name):
    task = TASKS[name]
    text_a, text_b, label = POSITIONS[name]
    for dataset, split in zip(loaded[name], ("train", "dev")):
        file_rows = rows(GLUE / task.folder / f"{split}.tsv", header=name != "cola")
        assert len(dataset) == len(file_rows) > 0
        assert dataset.column_names == (["text_a", "label"] if text_b is None else ["text_a", "text_b", "label"])
        assert dataset["text_a"] == [row[text_a] for row in file_rows]
        if text_b is not None:
            assert dataset["text_b"] == [row[text_b] for row in file_rows]
        ids = [RTE_IDS[row[label]] if name == "rte" else int(row[label]) for row in file_rows]
        assert dataset["label"] == ids and set(ids) == set(range(task.num_labels))
        assert dataset.features["label"].names == list(task.labels)


def test_label_vocabularies_follow_the_hugging_face_glue_order():
    """Ids must mean what they mean in models fine-tuned on Hugging Face's `glue` dataset (CoLA 1 = acceptable)."""
    assert {name: task.labels for name, task in TASKS.items()} == {
        "cola": ("unacceptable", "acceptable"), "sst2": ("negative", "positive"),
        "mrpc": ("not_equivalent", "equivalent"), "stsb": None, "rte": ("entailment", "not_entailment"),
        "wnli": ("not_entailment", "entailment"), "qnli": ("entailment", "not_entailment")}


def test_cola_without_header_reads_its_first_row(loaded):
    train, dev = loaded["cola"]
    assert train[0] == {"text_a": "Our friends won't buy this analysis, let alone the next one we propose.",
                        "label": 1}
    assert dev[0]["text_a"] == "The sailors rode the breeze clear of the rocks."
    # dev.tsv has no final newline: its last row still counts.
    assert dev[-1]["text_a"] == rows(GLUE / "CoLA" / "dev.tsv", header=False)[-1][3]


def test_mrpc_bom_header_and_quotes_kept_as_text(loaded):
    assert (GLUE / "MRPC" / "train.tsv").read_bytes().startswith(b"\xef\xbb\xbfQuality")
    train, _ = loaded["mrpc"]
    first = rows(GLUE / "MRPC" / "train.tsv", header=True)[0]
    assert train[0] == {"text_a": first[3], "text_b": first[4], "label": int(first[0])}
    assert '" the witness "' in train[0]["text_a"]


def test_rte_names_map_to_ids(loaded):
    train, _ = loaded["rte"]
    assert train[0]["label"] == TASKS["rte"].labels.index("not_entailment") == 1


def test_stsb_needs_a_validation_split_and_splits_deterministically():
    with pytest.raises(LeanbertError, match="STS-B/dev.tsv not found.*--validation-split"):
        load_task("stsb", GLUE)
    total = len(rows(GLUE / "STS-B" / "train.tsv", header=True))
    train, validation = load_task("stsb", GLUE, validation_split=0.1, seed=3)
    assert len(train) + len(validation) == total and len(validation) == round(0.1 * total)
    whole = Counter((row[7], row[8], float(np.float32(row[9]))) for row in rows(GLUE / "STS-B" / "train.tsv", True))
    assert whole == Counter(zip(train["text_a"], train["text_b"], train["label"])) + Counter(
        zip(validation["text_a"], validation["text_b"], validation["label"]))
    assert all(isinstance(score, float) and 0 <= score <= 5 for score in validation["label"])
    again = load_task("stsb", GLUE, validation_split=0.1, seed=3)[1]
    other = load_task("stsb", GLUE, validation_split=0.1, seed=4)[1]
    assert again["text_a"] == validation["text_a"] and again["label"] == validation["label"]
    assert other["text_a"] != validation["text_a"]


def test_validation_split_is_honoured_even_with_a_dev_file(loaded):
    train, validation = load_task("rte", GLUE, validation_split=0.25, seed=0)
    assert len(train) + len(validation) == len(loaded["rte"][0])
    assert len(validation) == round(0.25 * len(loaded["rte"][0]))


def test_qnli_without_train_file_errors_clearly():
    with pytest.raises(LeanbertError, match=r"QNLI/train\.tsv not found: the qnli task has no train file"):
        load_task("qnli", GLUE, validation_split=0.1)


def one_hot(ids, width=2):
    return np.eye(width)[ids] * 3.0 - 1.0  # logits whose argmax is the id


def test_matthews_against_the_formula():
    labels = np.array([1, 1, 1, 1, 0, 0, 0])
    ids = np.array([1, 1, 1, 0, 1, 0, 0])
    tp, fn, fp, tn = 3, 1, 1, 2
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    metrics = compute_metrics("cola", one_hot(ids), labels)
    assert list(metrics) == ["matthews_correlation", "accuracy"]
    assert metrics["matthews_correlation"] == pytest.approx(mcc) and mcc == pytest.approx(5 / 12)
    assert metrics["accuracy"] == pytest.approx(5 / 7)


def test_mrpc_f1_against_counts():
    labels = np.array([1, 1, 1, 0, 0, 1, 0, 0])
    ids = np.array([1, 0, 1, 1, 1, 1, 0, 0])
    tp = int(((ids == 1) & (labels == 1)).sum())
    fp = int(((ids == 1) & (labels == 0)).sum())
    fn = int(((ids == 0) & (labels == 1)).sum())
    assert (tp, fp, fn) == (3, 2, 1)
    metrics = compute_metrics("mrpc", one_hot(ids), labels)
    assert metrics == pytest.approx({"f1": 2 * tp / (2 * tp + fp + fn), "accuracy": 5 / 8})
    assert list(metrics)[0] == main_metric("mrpc") == "f1"


def test_accuracy_and_regression_metrics():
    assert compute_metrics("rte", one_hot([0, 1, 1]), np.array([0, 1, 0])) == pytest.approx({"accuracy": 2 / 3})
    labels = np.array([0.0, 1.0, 2.5, 4.0, 5.0])
    assert compute_metrics("stsb", 2 * labels + 1, labels) == pytest.approx({"pearson": 1.0, "spearmanr": 1.0})
    cubed = compute_metrics("stsb", (labels ** 3)[:, None], labels)  # monotone, not linear
    assert cubed["spearmanr"] == pytest.approx(1.0) and cubed["pearson"] < 0.99
    noisy = labels + np.array([0.3, -0.2, 0.1, 0.4, -0.5])
    assert compute_metrics("stsb", noisy, labels)["pearson"] == pytest.approx(np.corrcoef(noisy, labels)[0, 1])


def test_main_metric():
    assert {name: main_metric(name) for name in TASKS} == {
        "cola": "matthews_correlation", "sst2": "accuracy", "mrpc": "f1", "stsb": "pearson", "rte": "accuracy",
        "wnli": "accuracy", "qnli": "accuracy"}
    for name in TASKS:
        assert (TASKS[name].num_labels, TASKS[name].is_regression) == ((1, True) if name == "stsb" else (2, False))


def refused(expected, call, *args, **kwargs):
    """Runs the call, checks it raises a one-line LeanbertError containing `expected`, and returns the message."""
    with pytest.raises(LeanbertError) as error:
        call(*args, **kwargs)
    message = str(error.value)
    assert expected in message and "\n" not in message
    return message


def write(root, folder, name, text):
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / folder / name).write_text(text, encoding="utf-8")
    return root / folder / name


RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def test_labels_as_digits_or_names_and_blank_lines(tmp_path):
    write(tmp_path, "RTE", "train.tsv", RTE_HEADER + "0\ta\tb\t1\n1\tc\td\tentailment\n\n")
    write(tmp_path, "RTE", "dev.tsv", RTE_HEADER + "0\te\tf\tnot_entailment\n")
    train, dev = load_task("RTE", tmp_path)
    assert train["label"] == [1, 0] and dev["label"] == [1] and dev["text_b"] == ["f"]
    # WNLI's names are in the other order (Hugging Face's glue: 0 not_entailment, 1 entailment); one row each side
    write(tmp_path, "WNLI", "train.tsv", RTE_HEADER + "0\ta\tb\tentailment\n1\tc\td\t0\n")
    halves = load_task("wnli", tmp_path, validation_split=0.5)
    assert [len(half) for half in halves] == [1, 1]
    assert sorted((row["text_a"], row["label"]) for half in halves for row in half) == [("a", 1), ("c", 0)]


def test_bad_input_is_one_line_naming_the_problem(tmp_path):
    message = refused("unknown GLUE task 'mnli'", load_task, "mnli", tmp_path)
    assert all(name in message for name in TASKS)
    refused(f"{tmp_path / 'no_such_folder'} not found: no GLUE data folder", load_task, "rte", tmp_path / "no_such_folder")
    refused(f"{tmp_path / 'RTE'} not found: no rte task folder", load_task, "rte", tmp_path)
    write(tmp_path, "RTE", "dev.tsv", RTE_HEADER + "0\ta\tb\tentailment\n")
    refused(f"{tmp_path / 'RTE' / 'train.tsv'} not found: the rte task has no train file", load_task, "rte", tmp_path)
    for split in (0, 1, -0.1, 1.5, True, "0.1", math.nan):
        refused("validation_split must be a number strictly between 0 and 1", load_task, "rte", tmp_path,
                validation_split=split)

    train = write(tmp_path, "RTE", "train.tsv", "")
    refused(f"{train} is empty", load_task, "rte", tmp_path)
    write(tmp_path, "RTE", "train.tsv", RTE_HEADER)
    refused(f"{train} has a header but no rows", load_task, "rte", tmp_path)
    write(tmp_path, "RTE", "train.tsv", "index\tsentence1\tsentence2\tgold\n0\ta\tb\tentailment\n")
    refused(f"{train}: the header lacks the rte column(s) 'label'", load_task, "rte", tmp_path)
    write(tmp_path, "RTE", "train.tsv", RTE_HEADER + "0\ta\tb\tentailment\n1\ta \"b\tc\"\tentailment\textra\n")
    refused(f"{train}:3: 5 tab-separated fields, expected 4", load_task, "rte", tmp_path)
    write(tmp_path, "RTE", "train.tsv", RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\tcontradiction\n")
    refused(f"{train}:3: label 'contradiction' is not one of entailment, not_entailment", load_task, "rte", tmp_path)
    write(tmp_path, "RTE", "train.tsv", RTE_HEADER + "0\ta\tb\t2\n")
    refused(f"{train}:2: label '2' is not one of", load_task, "rte", tmp_path)

    write(tmp_path, "RTE", "train.tsv", RTE_HEADER + "0\ta\tb\tentailment\n1\tc\td\tentailment\n")
    refused(f"validation_split 0.1 of the 2 rows of {train} would leave validation empty", load_task, "rte",
            tmp_path, validation_split=0.1)
    refused(f"validation_split 0.9 of the 2 rows of {train} would leave train empty", load_task, "rte", tmp_path,
            validation_split=0.9)

    stsb = write(tmp_path, "STS-B", "train.tsv", "sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\thigh\n")
    refused(f"{stsb}:3: score 'high' is not a number", load_task, "stsb", tmp_path, validation_split=0.5)
    write(tmp_path, "STS-B", "train.tsv", "sentence1\tsentence2\tscore\na\tb\t4.5\nc\td\t1\n")
    refused(f"{tmp_path / 'STS-B' / 'dev.tsv'} not found: the stsb task has no dev file; pass --validation-split", load_task, "stsb",
            tmp_path)

    cola = write(tmp_path, "CoLA", "train.tsv", "gj04\t1\n")
    refused(f"{cola}:1: 2 tab-separated fields, but cola files (no header) need at least 4", load_task, "cola",
            tmp_path, validation_split=0.5)
    write(tmp_path, "CoLA", "train.tsv", "gj04\t1\t\tGood.\ngj04\t0\t*\n")
    refused(f"{cola}:2: 3 tab-separated fields, expected 4", load_task, "cola", tmp_path, validation_split=0.5)

    refused("rte metrics need predictions of shape (3, 2) for 3 labels, got (3,)", compute_metrics, "rte",
            np.zeros(3), np.zeros(3))
    refused("unknown GLUE task 'squad'", main_metric, "squad")
