"""`leanbert-finetune` on one's own data: CSV/TSV/JSON-lines files and local datasets for classification,
regression and multi-label, CoNLL/JSON-lines files for token classification. Each run's reported metrics are
recomputed here from the saved model's own outputs on the files (read here with plain Python), with scikit-learn,
scipy and seqeval; predictions.tsv is checked against the saved model; bad input is one line, exit 2, nothing
written."""

import csv
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from seqeval.metrics import classification_report, f1_score
from sklearn.metrics import accuracy_score
from sklearn.metrics import f1_score as sk_f1
from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer,
                          BertConfig, BertModel)

from conftest import SHARED_DATA, fails_cleanly, real_minilm_path
from leanbert.commands.finetune import main as finetune_main
from leanbert.training import TrainingLoop
from leanbert.training.labelled import REGRESSION, Labelled, compute_metrics
from leanbert.training.tokens import aligner, entity_metrics

GLUE = SHARED_DATA / "glue"
SEQ = 32
CATEGORIES = ("billing", "shipping", "other")


def glue_rows(task: str, split: str, count: int) -> list[list[str]]:
    lines = (GLUE / task / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines[1:count + 1]]


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_torch_thread):
    """A tiny BERT encoder (the MiniLM tokenizer), and small files of each kind built from GLUE rows."""
    root = tmp_path_factory.mktemp("finetune_files")
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=48, max_position_embeddings=64)).save_pretrained(root / "encoder")
    tokenizer.save_pretrained(root / "encoder")
    sst = glue_rows("SST-2", "train", 60)
    with open(root / "tickets.csv", "w", newline="", encoding="utf-8") as file:  # quoted commas, string labels
        writer = csv.writer(file)
        writer.writerow(["id", "text", "category"])
        for i, (text, label) in enumerate(sst[:40]):
            writer.writerow([f"t{i}", f"{text.strip()}, really", CATEGORIES[2 if i % 5 == 0 else int(label)]])
    with open(root / "tickets_dev.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "text", "category"])
        for i, (text, label) in enumerate(sst[40:]):
            writer.writerow([f"d{i}", text.strip(), CATEGORIES[2 if i % 4 == 0 else int(label)]])
    stsb = glue_rows("STS-B", "train", 48)
    with open(root / "pairs.jsonl", "w", encoding="utf-8") as file:
        for row in stsb:
            file.write(json.dumps({"first": row[7], "second": row[8], "score": float(row[9])}) + "\n")
    with open(root / "topics.jsonl", "w", encoding="utf-8") as file:
        for i, (text, label) in enumerate(sst[:30]):
            topics = ["positive" if label == "1" else "negative"] + (["short"] if len(text) < 40 else [])
            file.write(json.dumps({"text": text, "label": topics}) + "\n")
    sentences = [("EU", "B-ORG"), ("rejects", "O"), ("German", "B-MISC"), ("call", "O"), ("to", "O"),
                 ("boycott", "O"), ("British", "B-MISC"), ("lamb", "O"), (".", "O"), ("", ""),
                 ("Peter", "B-PER"), ("Blackburn", "I-PER"), ("went", "O"), ("to", "O"), ("Brussels", "B-LOC"),
                 ("", ""), ("-DOCSTART-", "-X-"), ("", ""), ("The", "O"), ("European", "B-ORG"),
                 ("Commission", "I-ORG"), ("said", "O"), ("on", "O"), ("Thursday", "O"), ("in", "O"),
                 ("Luxembourg", "B-LOC"), ("", "")]
    conll = "".join(f"{word} NNP B-NP {tag}\n" if word else "\n" for word, tag in sentences)
    (root / "ner.conll").write_text(conll * 4, encoding="utf-8")
    (root / "ner_dev.conll").write_text(conll, encoding="utf-8")
    return {"root": root, "encoder": root / "encoder", "cache": root / "cache"}


def run(files, output: Path, *extra, steps: int = 2) -> dict:
    args = ["--model", files["encoder"], "--max-seq-length", SEQ, "--per-device-batch-size", 8, "--max-train-steps",
            steps, "--learning-rate", "1e-3", "--cache-dir", files["cache"], "--output", output, *extra]
    assert finetune_main([str(a) for a in args]) == 0
    return json.loads((output / "results.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def logits_of(output: Path, head, texts, pairs=None) -> np.ndarray:
    tokenizer = AutoTokenizer.from_pretrained(output)
    model = head.from_pretrained(output).eval()
    encoded = tokenizer(texts, pairs, truncation=True, max_length=SEQ, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**encoded).logits.numpy()


def predictions(output: Path) -> list[list[str]]:
    lines = (output / "predictions.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines]


def test_csv_with_string_labels_classifies_and_predicts(files, tmp_path):
    root, output = files["root"], tmp_path / "tickets"
    results = run(files, output, "--train-file", root / "tickets.csv", "--validation-file", root / "tickets_dev.csv",
                  "--test-file", root / "tickets_dev.csv", "--label-column", "category")
    assert results["problem_type"] == "single_label_classification" and results["main_metric"] == "accuracy"
    assert results["labels"] == sorted(CATEGORIES) and results["settings"]["text_columns"] == ["text"]
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.id2label == dict(enumerate(sorted(CATEGORIES)))
    dev = read_csv(root / "tickets_dev.csv")
    logits = logits_of(output, AutoModelForSequenceClassification, [row["text"] for row in dev])
    gold = [sorted(CATEGORIES).index(row["category"]) for row in dev]
    metrics = results["metrics"]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(gold, logits.argmax(-1)))
    assert metrics["macro_f1"] == pytest.approx(sk_f1(gold, logits.argmax(-1), average="macro", labels=[0, 1, 2],
                                                      zero_division=0))
    assert predictions(output) == [["id", "prediction"]] + [[row["id"], sorted(CATEGORIES)[i]]
                                                            for row, i in zip(dev, logits.argmax(-1))]
    card = (output / "README.md").read_text()
    assert "fine-tuned on `tickets.csv`" in card and "3 labels: `billing`, `other`, `shipping`" in card


def test_jsonl_pairs_with_scores_are_regression(files, tmp_path):
    output = tmp_path / "pairs"
    results = run(files, output, "--train-file", files["root"] / "pairs.jsonl", "--text-columns", "first,second",
                  "--label-column", "score", "--validation-split", "0.25", "--seed", "3")
    assert results["problem_type"] == "regression" and results["main_metric"] == "pearson"
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    rows = [json.loads(line) for line in (files["root"] / "pairs.jsonl").read_text().splitlines()]
    held_out = datasets.Dataset.from_dict({"row": list(range(len(rows)))}).train_test_split(
        test_size=12, seed=3)["test"]["row"]
    assert results["validation_examples"] == len(held_out) == 12
    scores = logits_of(output, AutoModelForSequenceClassification, [rows[i]["first"] for i in held_out],
                       [rows[i]["second"] for i in held_out])[:, 0]
    gold = np.array([rows[i]["score"] for i in held_out], dtype=np.float32)
    assert results["metrics"]["pearson"] == pytest.approx(pearsonr(scores, gold)[0], abs=1e-5)


def test_jsonl_label_lists_are_multi_label_and_a_second_run_reads_the_cache(files, tmp_path, monkeypatch):
    output = tmp_path / "topics"
    args = ["--train-file", files["root"] / "topics.jsonl", "--validation-split", "0.3", "--test-file",
            files["root"] / "topics.jsonl"]
    results = run(files, output, *args)
    assert results["problem_type"] == "multi_label_classification" and results["main_metric"] == "micro_f1"
    assert results["labels"] == ["negative", "positive", "short"]
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert model.config.problem_type == "multi_label_classification"
    rows = [json.loads(line) for line in (files["root"] / "topics.jsonl").read_text().splitlines()]
    chosen = logits_of(output, AutoModelForSequenceClassification, [row["text"] for row in rows]) > 0
    expected = [",".join(name for name, on in zip(results["labels"], row) if on) for row in chosen]
    assert predictions(output) == [["index", "prediction"]] + [[str(i), p] for i, p in enumerate(expected)]

    def no_tokenising(*args, **kwargs):
        raise AssertionError("the data was tokenised again")

    tokenizer = AutoTokenizer.from_pretrained(files["encoder"])
    monkeypatch.setattr(type(tokenizer), "__call__", no_tokenising)
    again = run(files, tmp_path / "again", *args)
    assert again["metrics"] == pytest.approx({**results["metrics"], "seconds": again["metrics"]["seconds"]})


def test_a_local_dataset_folder_and_a_save_to_disk_folder(files, tmp_path):
    rows = read_csv(files["root"] / "tickets.csv")
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_list([{"text": r["text"], "label": r["category"]} for r in rows[:30]]),
        validation=datasets.Dataset.from_list([{"text": r["text"], "label": r["category"]} for r in rows[30:]]))
    splits.save_to_disk(tmp_path / "saved")
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, split in splits.items():
        split.to_csv(folder / f"{name}.csv", index=False)
    for source in ("saved", "folder"):
        results = run(files, tmp_path / f"out_{source}", "--dataset-name", tmp_path / source, steps=1)
        assert results["labels"] == sorted(CATEGORIES) and results["validation_examples"] == 10
        assert results["task"] == source and results["dataset"] is None


def test_conll_token_classification_scores_entities(files, tmp_path):
    root, output = files["root"], tmp_path / "ner"
    results = run(files, output, "--task", "token-classification", "--train-file", root / "ner.conll",
                  "--validation-file", root / "ner_dev.conll", "--test-file", root / "ner_dev.conll", steps=3)
    tags = ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-ORG", "I-PER", "O"]
    assert results["problem_type"] == "token_classification" and results["labels"] == tags
    model = AutoModelForTokenClassification.from_pretrained(output).eval()
    tokenizer = AutoTokenizer.from_pretrained(output)
    sentences = [block.splitlines() for block in (root / "ner_dev.conll").read_text().split("\n\n")]
    sentences = [[line.split() for line in block] for block in sentences if block and "-DOCSTART-" not in block[0]]
    predicted, gold = [], []
    for sentence in sentences:
        encoded = tokenizer([word for word, *_ in sentence], is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            ids = model(**encoded).logits[0].argmax(-1).tolist()
        firsts = [i for i, word in enumerate(encoded.word_ids()) if word is not None and
                  (i == 0 or encoded.word_ids()[i - 1] != word)]
        predicted.append([tags[ids[i]] for i in firsts])
        gold.append([fields[-1] for fields in sentence])
    assert results["metrics"]["f1"] == pytest.approx(f1_score(gold, predicted, zero_division=0))
    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    assert set(results["entities"]) == {"LOC", "MISC", "ORG", "PER"}
    assert results["entities"]["LOC"]["f1"] == pytest.approx(report["LOC"]["f1-score"])
    assert results["entities"]["ORG"]["number"] == 2
    assert predictions(output)[1:] == [[str(i), " ".join(p)] for i, p in enumerate(predicted)]
    assert "| ORG |" in (output / "README.md").read_text()


def test_a_batch_without_any_labelled_token_neither_poisons_training_nor_its_loss(files, tmp_path):
    """JSON lines of eight sentences without a word and one with: in batches of one, most batches carry no label,
    where transformers' mean over no token is NaN. Every training loss and the evaluation loss stay finite (the
    evaluation's is that of the one sentence with words)."""
    root = tmp_path / "data"
    root.mkdir()
    sentences = [{"tokens": [], "tags": []}] * 8 + [
        {"tokens": ["Peter", "went", "to", "Brussels"], "tags": ["B-PER", "O", "O", "B-LOC"]}]
    for name in ("train.jsonl", "dev.jsonl"):
        (root / name).write_text("".join(json.dumps(row) + "\n" for row in sentences), encoding="utf-8")
    results = run(files, tmp_path / "ner", "--task", "token-classification", "--train-file", root / "train.jsonl",
                  "--validation-file", root / "dev.jsonl", "--per-device-batch-size", 1, steps=4)
    history = json.loads((tmp_path / "ner" / "finetuning_curve.json").read_text())
    assert len(history["train"]) == 4 and all(np.isfinite(entry["loss"]) for entry in history["train"])
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "ner").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "ner")
    encoded = tokenizer(sentences[-1]["tokens"], is_split_into_words=True, return_tensors="pt")
    labels = torch.full(encoded["input_ids"].shape, -100)
    tags = results["labels"]
    for i, word in enumerate(encoded.word_ids()):
        if word is not None and encoded.word_ids()[i - 1] != word:
            labels[0, i] = tags.index(sentences[-1]["tags"][word])
    with torch.no_grad():
        expected = model(**encoded, labels=labels).loss.item()
    assert results["metrics"]["loss"] == pytest.approx(expected, rel=1e-4)


def test_token_classification_on_two_processes_scores_each_sentence_once(files, tmp_path):
    """DDP over gloo: both ranks hold the same weights after the steps, and the entity counts are the dev file's
    (sentences of other lengths are padded to one width over the processes, and none is counted twice)."""
    from test_distributed import launch

    root, output = files["root"], tmp_path / "ner"
    done, ranks = launch(tmp_path, "finetune", [
        "--model", files["encoder"], "--task", "token-classification", "--train-file", root / "ner.conll",
        "--validation-file", root / "ner_dev.conll", "--max-seq-length", SEQ, "--per-device-batch-size", 2,
        "--max-train-steps", 2, "--learning-rate", "1e-3", "--cache-dir", files["cache"], "--output", output])
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(ranks) == 2 and ranks[0]["checksum"] == ranks[1]["checksum"] and ranks[0]["processes"] == 2
    results = json.loads((output / "results.json").read_text())
    dev_tags = [line.split()[-1] for line in (root / "ner_dev.conll").read_text().splitlines()
                if line.strip() and not line.startswith("-DOCSTART-")]
    assert results["validation_examples"] == 3 and results["metrics"]["samples"] == 2 * 2 * 2
    assert sum(entity["number"] for entity in results["entities"].values()) == sum(
        tag.startswith("B-") for tag in dev_tags) == 7


def test_sub_words_get_the_words_tag_once_or_all_with_label_all_tokens():
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    words, tags = ["Blackburnshire", "went"], ["B-LOC", "O"]
    names = ("B-LOC", "I-LOC", "O")
    pieces = tokenizer.tokenize("Blackburnshire")
    assert len(pieces) > 1  # the word is split: the case the alignment is about
    first = aligner(tokenizer, "tokens", "tags", names, 32, False)({"tokens": [words], "tags": [tags]})["labels"][0]
    every = aligner(tokenizer, "tokens", "tags", names, 32, True)({"tokens": [words], "tags": [tags]})["labels"][0]
    assert first == [-100, 0] + [-100] * (len(pieces) - 1) + [2, -100]
    assert every == [-100, 0] + [1] * (len(pieces) - 1) + [2, -100]


def test_entity_metrics_count_whole_entities():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]  # 2 of 3 found, 1 wrong: P 2/3, R 2/3
    overall, per_type = entity_metrics(predicted, gold)
    assert overall["precision"] == pytest.approx(2 / 3) and overall["recall"] == pytest.approx(2 / 3)
    assert overall["accuracy"] == pytest.approx(4 / 6)
    assert per_type["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1}
    assert per_type["PER"]["f1"] == 1.0


def test_a_correlation_of_constant_scores_is_undefined_with_its_reason():
    data = Labelled("x", None, None, None, ("a",), "label", REGRESSION, None)
    metrics, reasons = compute_metrics(data, np.full(4, 0.5), np.array([0.0, 1.0, 2.0, 3.0]))
    assert metrics == {"pearson": None, "spearmanr": None}
    assert "same score" in reasons["pearson"] and "NaN" not in json.dumps(metrics)


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture
def no_training(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(TrainingLoop, "__init__", refuse)


def bad_files(root: Path) -> None:
    (root / "empty.csv").write_text("")
    (root / "header.csv").write_text("text,label\n")
    (root / "widths.csv").write_text("text,label\na,x\nb,y,z\nc,x\n")
    (root / "short.tsv").write_text("text\tlabel\na\tx\nb\n")
    (root / "broken.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    (root / "mixed.csv").write_text("text,label\na,1\nb,spam\nc,2\n")
    (root / "good.csv").write_text("text,label\na,x\nb,y\nc,x\nd,y\n")
    (root / "unseen.csv").write_text("text,label\na,x\nb,z\n")
    (root / "three.csv").write_text("a,b,c,label\n1,2,3,x\n4,5,6,y\n")
    (root / "one_score.csv").write_text("text,label\na,0.5\nb,1.5\n")
    (root / "flat.csv").write_text("text,label\na,1.5\nb,1.5\nc,1.5\n")
    (root / "spread.csv").write_text("text,label\na,0.5\nb,1.5\nc,2.5\nd,3.0\n")
    (root / "notag.conll").write_text("EU B-ORG\nrejects\n\n")
    (root / "iobes.conll").write_text("EU S-ORG\nrejects O\n\n")
    (root / "good.conll").write_text("EU B-ORG\nrejects O\n\nPeter B-PER\n\n")
    (root / "no_entity.conll").write_text("rejects O\n\n")


BAD = {
    "missing_file": (["--train-file", "{root}/nope.csv"], "train file {root}/nope.csv not found"),
    "empty_file": (["--train-file", "{root}/empty.csv"], "train file {root}/empty.csv is empty"),
    "header_only": (["--train-file", "{root}/header.csv"], "has a header but no rows"),
    "wider_row": (["--train-file", "{root}/widths.csv"], "widths.csv:3: 3 fields, the header has 2"),
    "shorter_row": (["--train-file", "{root}/short.tsv"], "short.tsv:3: 1 fields, the header has 2"),
    "not_json": (["--train-file", "{root}/broken.jsonl"], "broken.jsonl:2: not a JSON object"),
    "unknown_extension": (["--train-file", "{root}/notag.conll"], "neither CSV, TSV nor JSON lines"),
    "no_such_text_column": (["--train-file", "{root}/good.csv", "--text-columns", "body"],
                            "has no column 'body'; its columns: 'text', 'label'"),
    "no_such_label_column": (["--train-file", "{root}/good.csv", "--label-column", "gold"],
                             "has no column 'gold'; its columns: 'text', 'label'"),
    "mixed_labels": (["--train-file", "{root}/mixed.csv"], "labels in 'label' mix types: integer (line 2) and text"),
    "unseen_validation_label": (["--train-file", "{root}/good.csv", "--validation-file", "{root}/unseen.csv"],
                                "validation labels never seen in training: 'z'"),
    "test_file_without_the_text_column": (["--train-file", "{root}/good.csv", "--validation-split", "0.5",
                                           "--test-file", "{root}/three.csv"],
                                          "the test data has no text column 'text' (train's); its columns: 'a'"),
    "three_text_columns": (["--train-file", "{root}/three.csv", "--text-columns", "a,b,c"],
                           "give one or two text columns (a text or a pair), got 3"),
    "no_validation": (["--train-file", "{root}/good.csv"], "nothing to validate on"),
    "one_validation_score": (["--train-file", "{root}/spread.csv", "--validation-file", "{root}/one_score.csv",
                              "--max-eval-samples", "1"], "1 validation example: Pearson and Spearman"),
    "constant_validation_scores": (["--train-file", "{root}/spread.csv", "--validation-file", "{root}/flat.csv"],
                                   "validation labels are all 1.5"),
    "conll_without_tag": (["--task", "token-classification", "--train-file", "{root}/notag.conll",
                           "--validation-split", "0.5"], "notag.conll:2: token 'rejects' has no tag"),
    "tag_outside_iob": (["--task", "token-classification", "--train-file", "{root}/iobes.conll",
                         "--validation-split", "0.5"], "iobes.conll:1: tag 'S-ORG' is not IOB"),
    "no_entity_to_score": (["--task", "token-classification", "--train-file", "{root}/good.conll",
                            "--validation-file", "{root}/no_entity.conll"], "hold no entity"),
    "dataset_not_loadable_offline": (["--dataset-name", "no-such-user/no-such-dataset"],
                                     "cannot load dataset 'no-such-user/no-such-dataset'"),
    "two_sources": (["--train-file", "{root}/good.csv", "--data-dir", GLUE, "--task", "rte"],
                    "give one source of data"),
    "glue_task_with_files": (["--task", "rte", "--train-file", "{root}/good.csv"], "--task 'rte' with --train-file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_before_any_work(files, tmp_path, case, capsys, no_training, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    bad_files(tmp_path)
    extra, expected = BAD[case]
    args = ["--model", files["encoder"], "--max-train-steps", 1, "--cache-dir", files["cache"], "--output",
            tmp_path / "out", *[str(a).replace("{root}", str(tmp_path)) for a in extra]]
    fails_cleanly(finetune_main, args, expected.replace("{root}", str(tmp_path)), tmp_path, capsys)


def test_a_head_of_another_size_names_the_cause(files, tmp_path, capsys, no_training):
    """A checkpoint with a 3-label head fine-tuned on 2 labels: the cause and what to do, not transformers' pointer
    to a load report."""
    head = tmp_path / "three_labels"
    model = AutoModelForSequenceClassification.from_pretrained(files["encoder"], num_labels=3)
    model.save_pretrained(head)
    AutoTokenizer.from_pretrained(files["encoder"]).save_pretrained(head)
    bad_files(tmp_path)
    args = ["--model", head, "--train-file", tmp_path / "good.csv", "--validation-file", tmp_path / "good.csv",
            "--max-train-steps", 1, "--cache-dir", files["cache"], "--output", tmp_path / "out"]
    fails_cleanly(finetune_main, args, "has a classification head of another size than the 2 labels of good.csv",
                  tmp_path, capsys)
