"""The training commands end to end on tiny models and real text: `leanbert-pretrain` (every model type, from
scratch and from a checkpoint, bf16, whole-word masking, resume after a hard kill), `leanbert-finetune` on GLUE
(metrics recomputed independently from the saved model), the seeded masking and the `datasets` cache, transformers'
`Trainer` on leanbert models, and bad input refused in one line before any work.

Every model has 2 layers of width 32 and sees blocks of 32 tokens; the MiniLM tokenizer (30522 tokens) is real.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score
from transformers import (AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer,
                          BertConfig, BertModel)

import leanbert
from conftest import SHARED_DATA, fails_cleanly, model_class, real_minilm_path, snapshot, tiny_config
from leanbert.commands.finetune import main as finetune_main
from leanbert.commands.pretrain import main as pretrain_main
from leanbert.training import TrainingLoop
from leanbert.training.text import SeededMasking, packed_blocks

GLUE = SHARED_DATA / "glue"
GUTENBERG = SHARED_DATA / "text" / "gutenberg-pd"
SEQ = 32
HEADS = {"bert": "num_attention_heads=4,", "sym_bert": "num_attention_heads=4,",
         "shared_bert": "num_attention_heads=4,", "shatter": ""}  # Shatter is single-headed: no such field
CLASSES = {"bert": "BertForMaskedLM", "sym_bert": "SymBertForMaskedLM", "shared_bert": "SharedBertForMaskedLM",
           "shatter": "ShatterForMaskedLM"}


def overrides(model_type: str) -> str:
    return (HEADS.get(model_type, "") +
            "num_hidden_layers=2,hidden_size=32,intermediate_size=64,max_position_embeddings=64")


def text_slice(source: Path, target: Path, size: int, skip: int = 0) -> Path:
    """About `size` bytes of whole lines of `source`, after its first `skip` lines (read as a stream)."""
    kept, total = [], 0
    with source.open(encoding="utf-8") as file:
        for number, line in enumerate(file):
            if number < skip:
                continue
            kept.append(line)
            total += len(line.encode())
            if total >= size:
                break
    target.write_text("".join(kept), encoding="utf-8")
    return target


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def loop_spy(monkeypatch):
    """What each training loop starts with: the step (past a resumed checkpoint), the mixed precision accelerate
    runs in and the batching (masking) function."""
    seen = []
    original = TrainingLoop.run

    def run(self, *args, **kwargs):
        seen.append({"step": self.step, "mixed_precision": self.accelerator.mixed_precision,
                     "collate_fn": self.collate_fn})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainingLoop, "run", run)
    return seen


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """~150 KB of Gutenberg training text and ~6 KB of validation text, a shared datasets cache, the tokenizer."""
    root = tmp_path_factory.mktemp("training")
    return {"root": root, "train": text_slice(GUTENBERG / "train.txt", root / "train.txt", 150_000, skip=200),
            "valid": text_slice(GUTENBERG / "valid.txt", root / "valid.txt", 6_000, skip=50),
            "cache": root / "cache", "tokenizer": real_minilm_path()}


def pretrain_args(data, output, model_type="sym_bert", steps=3, batch=4, accumulation=1, *extra):
    return [str(a) for a in ("--model-type", model_type, "--tokenizer", data["tokenizer"], "--config-overrides",
                             overrides(model_type), "--train-file", data["train"], "--max-seq-length", SEQ,
                             "--per-device-batch-size", batch, "--gradient-accumulation-steps", accumulation,
                             "--max-train-steps", steps, "--cache-dir", data["cache"], "--output", output, *extra)]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def check_outputs(output: Path, model_type: str, steps: int, samples_per_step: int) -> tuple[dict, dict]:
    """What every pretraining run writes, checked: the model loads as its class, the report and curve count the
    steps and samples, the PNG is a picture, and perplexity is exp(validation loss). Returns (report, curve)."""
    model = AutoModelForMaskedLM.from_pretrained(output)
    assert type(model).__name__ == CLASSES[model_type] and model.config.model_type == model_type
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32  # the overrides were applied
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(output))
    report = read_json(output / "training_report.json")
    assert report["steps"] == steps and report["samples"] == steps * samples_per_step
    assert report["settings"]["model_type"] == model_type
    curve = read_json(output / "pretraining_curve.json")
    assert [p["step"] for p in curve["train"]] == list(range(1, steps + 1))
    assert [p["samples"] for p in curve["train"]] == [samples_per_step * s for s in range(1, steps + 1)]
    assert all(math.isfinite(p["loss"]) for p in curve["train"]) and curve["train"][-1]["loss"] == report["final_loss"]
    png = (output / "pretraining_curve.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    validation = report["validation"]
    assert curve["eval"][-1] == validation and validation["step"] == steps
    assert math.isfinite(validation["loss"]) and validation["perplexity"] == pytest.approx(math.exp(validation["loss"]),
                                                                                         rel=1e-9)
    assert not output.with_name(output.name + ".pretrain-checkpoints").exists()
    return report, curve


def blocks_by_hand(tokenizer, path: Path, length: int) -> list[list[int]]:
    """run_mlm.py's packing, written out: every non-blank line with its special tokens, concatenated, cut into
    blocks of `length` (the remainder dropped)."""
    stream = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            stream += tokenizer(line)["input_ids"]
    return [stream[i: i + length] for i in range(0, len(stream) // length * length, length)]


@pytest.fixture(scope="module")
def pretrained(data):
    """A SymBert pretrained from scratch for 30 steps at lr 1e-3 with a validation file (the module's reference run,
    also the start of the continued and fine-tuning runs)."""
    output = data["root"] / "sym_bert"
    code = pretrain_main(pretrain_args(data, output, "sym_bert", 30, 8, 1, "--learning-rate", "1e-3",
                                       "--validation-file", data["valid"], "--seed", "7"))
    assert code == 0
    return output


# ------------------------------------------------------------------------------------------------ pretraining


def test_pretraining_from_scratch_lowers_the_loss_and_reports_the_saved_models_validation_loss(data, pretrained):
    report, curve = check_outputs(pretrained, "sym_bert", 30, 8)
    losses = [p["loss"] for p in curve["train"]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), losses
    assert report["settings"]["validation_file"] == str(data["valid"].resolve())

    # the reported validation loss is the saved model's, recomputed here: the validation file packed by hand, masked
    # as the evaluation masks it (seed + 1, batches of the batch size, in order), mean over every masked token
    tokenizer = AutoTokenizer.from_pretrained(data["tokenizer"])
    blocks = blocks_by_hand(tokenizer, data["valid"], SEQ)
    assert report["validation_blocks"] == len(blocks)
    model = AutoModelForMaskedLM.from_pretrained(pretrained).eval()
    masking = SeededMasking(tokenizer, 0.15, False, seed=7 + 1)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(blocks), 8):
            batch = masking([{"input_ids": block} for block in blocks[start: start + 8]])
            logits = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"])).logits
            labels = batch["labels"]
            total += torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100],
                                                       reduction="sum").item()
            count += (labels != -100).sum().item()
    assert count > 0
    assert report["validation"]["loss"] == pytest.approx(total / count, rel=1e-4)


@pytest.mark.parametrize("model_type, extra", [
    ("bert", []),
    ("shared_bert", ["--mixed-precision", "bf16"]),  # bf16 autocast runs on the CPU
    ("shatter", ["--whole-word-masking"]),
], ids=["bert", "shared_bert-bf16", "shatter-whole_word_masking"])
def test_pretraining_every_model_type_with_gradient_accumulation(data, tmp_path, model_type, extra, loop_spy):
    """Also runs bf16 after and before fp32 in one process: each run gets accelerate's state in its precision."""
    output = tmp_path / model_type
    assert pretrain_main(pretrain_args(data, output, model_type, 3, 4, 2, *extra)) == 0
    [loop] = loop_spy
    assert loop["mixed_precision"] == ("bf16" if "--mixed-precision" in extra else "no")
    assert loop["collate_fn"].collator.whole_word_mask == ("--whole-word-masking" in extra)
    report, _ = check_outputs(output, model_type, 3, 4 * 2)
    settings = report["settings"]
    assert settings["gradient_accumulation_steps"] == 2 and settings["batch_size"] == 4
    assert settings["mixed_precision"] == ("bf16" if "--mixed-precision" in extra else "no")
    assert settings["whole_word_masking"] == ("--whole-word-masking" in extra)


def test_pretraining_continues_from_its_own_checkpoint(data, pretrained, tmp_path):
    output = tmp_path / "continued"
    args = ["--model", pretrained, "--train-file", data["train"], "--max-seq-length", SEQ, "--per-device-batch-size",
            8, "--max-train-steps", 2, "--learning-rate", "1e-3", "--validation-file", data["valid"], "--seed", 7,
            "--cache-dir", data["cache"], "--output", output]
    assert pretrain_main([str(a) for a in args]) == 0
    report, curve = check_outputs(output, "sym_bert", 2, 8)
    assert report["settings"]["model"] == str(pretrained)
    # the same seed gives the same first batch and masks: the pretrained weights meet it with a lower loss than the
    # fresh ones did
    first = read_json(pretrained / "pretraining_curve.json")["train"][0]["loss"]
    assert curve["train"][0]["loss"] < first - 0.1, (curve["train"][0]["loss"], first)


@pytest.mark.slow  # the real MiniLM checkpoint
def test_pretraining_continues_minilm_whose_checkpoint_has_no_masked_lm_head(data, tmp_path):
    output = tmp_path / "minilm_mlm"
    args = ["--model", data["tokenizer"], "--train-file", data["train"], "--max-seq-length", SEQ,
            "--per-device-batch-size", 2, "--max-train-steps", 2, "--learning-rate", "1e-4",
            "--validation-split", "0", "--cache-dir", data["cache"], "--output", output]
    assert pretrain_main([str(a) for a in args]) == 0
    model = AutoModelForMaskedLM.from_pretrained(output)
    assert type(model).__name__ == "BertForMaskedLM"
    report = read_json(output / "training_report.json")
    assert report["steps"] == 2 and math.isfinite(report["final_loss"])
    # the encoder is MiniLM's, moved by two AdamW steps of at most ~lr each (a fresh one would be far off)
    minilm = AutoModel.from_pretrained(data["tokenizer"]).state_dict()
    trained = model.bert.state_dict()
    for name, value in trained.items():
        torch.testing.assert_close(value, minilm[name], atol=1e-3, rtol=0, msg=name)
    assert any(not torch.equal(value, minilm[name]) for name, value in trained.items()), "nothing was trained"


# ------------------------------------------------------------------------------------------------ masking


def masking_examples(data, whole_words: bool, count: int = 40) -> list[dict]:
    tokenizer = AutoTokenizer.from_pretrained(data["tokenizer"])
    blocks = packed_blocks([str(data["valid"])], tokenizer, SEQ, whole_word_mask=whole_words,
                           cache_dir=str(data["cache"]), what="validation text")
    assert len(blocks) >= count
    return [blocks[i] for i in range(count)], tokenizer


def split_words(tokens: list[str], masked: list[bool]) -> int:
    """How many `##` continuation tokens differ in masking from the token before them (a word masked in part)."""
    return sum(1 for i in range(1, len(tokens)) if tokens[i].startswith("##") and masked[i] != masked[i - 1])


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(data):
    examples, tokenizer = masking_examples(data, whole_words=True)
    assert "offset_mapping" in examples[0]
    # a high probability, so that many words made of several pieces are chosen
    batch = SeededMasking(tokenizer, 0.4, True, seed=0)([dict(e) for e in examples])
    words_in_pieces, split = 0, 0
    for row in range(len(examples)):
        tokens = tokenizer.convert_ids_to_tokens(examples[row]["input_ids"])
        masked = (batch["labels"][row] != -100).tolist()
        split += split_words(tokens, masked)
        words_in_pieces += sum(1 for i in range(1, len(tokens)) if tokens[i].startswith("##") and masked[i])
    assert words_in_pieces >= 20 and split == 0, (words_in_pieces, split)
    # the check has teeth: token-level masking of the same blocks does split words
    plain = SeededMasking(tokenizer, 0.4, False, seed=0)([{k: v for k, v in e.items() if k != "offset_mapping"}
                                                          for e in examples])
    assert sum(split_words(tokenizer.convert_ids_to_tokens(e["input_ids"]), (plain["labels"][row] != -100).tolist())
               for row, e in enumerate(examples)) > 0


def test_seeded_masking_depends_on_seed_epoch_and_examples_only(data):
    examples, tokenizer = masking_examples(data, whole_words=False, count=16)
    first, second = examples[:8], examples[8:]

    def masks(batch_examples, seed, epoch, global_seed):
        masking = SeededMasking(tokenizer, 0.15, False, seed)
        masking.set_epoch(epoch)
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        batch = masking([dict(e) for e in batch_examples])
        assert torch.equal(torch.get_rng_state(), state), "the global generator was used"
        return batch["input_ids"], batch["labels"]

    reference = masks(first, 3, 0, 0)
    assert (reference[1] != -100).any()
    for again in (masks(first, 3, 0, 0), masks(first, 3, 0, 12345)):
        assert torch.equal(again[0], reference[0]) and torch.equal(again[1], reference[1])
    assert not torch.equal(masks(first, 3, 1, 0)[1], reference[1]), "another epoch must give other masks"
    assert not torch.equal(masks(first, 4, 0, 0)[1], reference[1]), "another seed must give other masks"
    # other blocks get other masked positions (not one pattern for every batch of this shape)
    other = masks(second, 3, 0, 0)
    plain = torch.tensor([[not s for s in e["special_tokens_mask"]] for e in first]) & \
        torch.tensor([[not s for s in e["special_tokens_mask"]] for e in second])
    assert not torch.equal((reference[1] != -100)[plain], (other[1] != -100)[plain])


# ------------------------------------------------------------------------------------------------ datasets cache


def cache_listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in folder.rglob("*.arrow")}


def test_packed_blocks_are_cached_and_rebuilt_for_another_block_length(data, tmp_path, monkeypatch):
    """As separate runs use it: each call with a freshly loaded tokenizer."""
    text = text_slice(GUTENBERG / "valid.txt", tmp_path / "text.txt", 20_000, skip=500)
    cache = tmp_path / "cache"

    def blocks(length):
        tokenizer = AutoTokenizer.from_pretrained(data["tokenizer"])
        return packed_blocks([str(text)], tokenizer, length, whole_word_mask=False, cache_dir=str(cache), what="text")

    first = blocks(SEQ)
    files = cache_listing(cache)
    assert first.cache_files and len(files) >= 3  # the raw text, its tokens, its blocks
    assert all(len(ids) == SEQ for ids in first["input_ids"])

    def no_tokenising(*args, **kwargs):
        raise AssertionError("the text was tokenised again")

    with monkeypatch.context() as patch:
        patch.setattr(type(AutoTokenizer.from_pretrained(data["tokenizer"])), "__call__", no_tokenising)
        second = blocks(SEQ)
    assert second.cache_files == first.cache_files and cache_listing(cache) == files
    assert second["input_ids"] == first["input_ids"]

    other = blocks(SEQ * 2)
    new_files = cache_listing(cache)
    assert set(files) < set(new_files) and all(new_files[name] == files[name] for name in files)
    assert {f["filename"] for f in other.cache_files}.isdisjoint(f["filename"] for f in first.cache_files)
    assert all(len(ids) == 2 * SEQ for ids in other["input_ids"]) and len(other) == len(first) // 2


def test_packed_blocks_cache_does_not_depend_on_the_tokenizer_having_been_used(data, tmp_path, monkeypatch):
    """The first call leaves the tokenizer with the padding and truncation state of its last call; a second call with
    that same tokenizer reads the blocks from the cache, tokenising nothing."""
    text = text_slice(GUTENBERG / "valid.txt", tmp_path / "text.txt", 5_000, skip=500)
    cache = tmp_path / "cache"
    tokenizer = AutoTokenizer.from_pretrained(data["tokenizer"])
    first = packed_blocks([str(text)], tokenizer, SEQ, whole_word_mask=False, cache_dir=str(cache), what="text")
    assert first["input_ids"] == blocks_by_hand(AutoTokenizer.from_pretrained(data["tokenizer"]), text, SEQ)
    # the blocks were written to the cache folder (not kept in memory, where every call would tokenise again)
    files = cache_listing(cache)
    cached = {Path(f["filename"]).resolve() for f in first.cache_files}
    assert cached and cached <= {p.resolve() for p in cache.rglob("*.arrow")}, (cached, sorted(files))

    def no_tokenising(*args, **kwargs):
        raise AssertionError("the text was tokenised again")

    monkeypatch.setattr(type(tokenizer), "__call__", no_tokenising)
    second = packed_blocks([str(text)], tokenizer, SEQ, whole_word_mask=False, cache_dir=str(cache), what="text")
    assert second.cache_files == first.cache_files and cache_listing(cache) == files
    assert second["input_ids"] == first["input_ids"]


# ------------------------------------------------------------------------------------------------ fine-tuning


@pytest.fixture(scope="module")
def tiny_bert_encoder(data):
    """A random 2-layer BERT encoder without a classification head, with the MiniLM tokenizer beside it."""
    folder = data["root"] / "tiny_bert_encoder"
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(data["tokenizer"])
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def finetune_args(model, task, output, steps=4, *extra):
    return [str(a) for a in ("--model", model, "--task", task, "--data-dir", GLUE, "--max-seq-length", SEQ,
                             "--per-device-batch-size", 8, "--max-train-steps", steps, "--learning-rate", "1e-3",
                             "--output", output, *extra)]


def read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    rows = [line.rstrip("\r\n").split("\t") for line in path.read_text(encoding="utf-8-sig").splitlines()
            if line.strip()]
    return rows[0], rows[1:]


def rte_dev_predictions(output: Path) -> tuple[np.ndarray, np.ndarray, torch.nn.Module]:
    """The saved model's logits on RTE's dev file (read here, not by leanbert), the gold ids in the Hugging Face
    glue order, and the model."""
    header, rows = read_tsv(GLUE / "RTE" / "dev.tsv")
    a, b, label = header.index("sentence1"), header.index("sentence2"), header.index("label")
    gold = np.array([("entailment", "not_entailment").index(row[label]) for row in rows])
    tokenizer = AutoTokenizer.from_pretrained(output)
    model = AutoModelForSequenceClassification.from_pretrained(output).eval()
    encoded = tokenizer([row[a] for row in rows], [row[b] for row in rows], truncation=True, max_length=SEQ,
                        padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits
    return logits.numpy(), gold, model


def check_rte_results(output: Path, steps: int) -> dict:
    results = read_json(output / "results.json")
    assert results["task"] == "rte" and results["steps"] == steps and results["main_metric"] == "accuracy"
    assert results["settings"]["steps"] == steps and results["settings"]["max_seq_length"] == SEQ
    metrics = results["metrics"]
    assert results["evaluations"] and results["evaluations"][-1] == metrics and metrics["step"] == steps
    logits, gold, model = rte_dev_predictions(output)
    assert model.config.id2label == {0: "entailment", 1: "not_entailment"}
    assert results["validation_examples"] == len(gold)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(gold, logits.argmax(-1)), abs=1e-12)
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(gold)).item()
    assert metrics["loss"] == pytest.approx(loss, rel=1e-4)
    assert (output / "finetuning_curve.png").read_bytes().startswith(b"\x89PNG")
    curve = read_json(output / "finetuning_curve.json")
    assert [p["step"] for p in curve["train"]] == list(range(1, steps + 1))
    return results


def test_finetuning_bert_on_rte_reports_the_saved_models_accuracy(tiny_bert_encoder, tmp_path):
    output = tmp_path / "rte"
    assert finetune_main(finetune_args(tiny_bert_encoder, "RTE", output, 4)) == 0
    check_rte_results(output, 4)
    assert type(AutoModelForSequenceClassification.from_pretrained(output)).__name__ == "BertForSequenceClassification"


def test_finetuning_a_pretrained_leanbert_encoder_on_rte(pretrained, tmp_path):
    # the pretrained SymBert's encoder, saved as a base model (its pooler starts from random values)
    encoder = tmp_path / "sym_encoder"
    AutoModel.from_pretrained(pretrained).save_pretrained(encoder)
    AutoTokenizer.from_pretrained(pretrained).save_pretrained(encoder)
    output = tmp_path / "sym_rte"
    assert finetune_main(finetune_args(encoder, "rte", output, 3)) == 0
    check_rte_results(output, 3)
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert type(model) is leanbert.SymBertForSequenceClassification and model.config.num_labels == 2
    # the encoder started from the pretrained one (a fresh one would be far off after 3 small steps)
    start = AutoModelForMaskedLM.from_pretrained(pretrained).base_model.embeddings.word_embeddings.weight
    assert (model.base_model.embeddings.word_embeddings.weight - start).abs().max().item() < 0.01


def test_finetuning_the_output_of_pretraining_directly(pretrained, tmp_path, capsys):
    """The pretraining output (a masked-LM checkpoint with its reports and card) is a fine-tuning start as it is: its
    encoder is loaded, its masked-LM head dropped, a classification head added."""
    output = tmp_path / "rte"
    code = finetune_main(finetune_args(pretrained, "rte", output, 1))
    assert code == 0, capsys.readouterr().err
    check_rte_results(output, 1)
    model = AutoModelForSequenceClassification.from_pretrained(output)
    assert type(model) is leanbert.SymBertForSequenceClassification and model.config.num_labels == 2
    # every encoder tensor is the pretrained one moved by one AdamW step, which moves no weight by more than the
    # learning rate (1e-3), plus weight decay's lr * 0.01 * |w|; a fresh initialisation would be ~0.02 away
    start = load_file(pretrained / "model.safetensors")
    finetuned = model.state_dict()
    encoder = [name for name in start if name.startswith("sym_bert.") and not name.startswith("sym_bert.pooler.")]
    assert encoder and all(name in finetuned for name in encoder), sorted(set(encoder) - set(finetuned))
    for name in encoder:
        torch.testing.assert_close(finetuned[name], start[name], atol=1.1e-3, rtol=0, msg=name)
    assert not any(name.startswith("cls.") for name in finetuned), "the masked-LM head was kept"


def test_finetuning_on_the_first_examples_only(tiny_bert_encoder, tmp_path):
    # as transformers' run_glue: --max-train-samples / --max-eval-samples keep the first N rows of each file
    output = tmp_path / "rte"
    extra = ["--max-train-samples", 20, "--max-eval-samples", 30, "--num-train-epochs", 2]
    args = [a for a in finetune_args(tiny_bert_encoder, "rte", output, 1, *extra)]
    del args[args.index("--max-train-steps"): args.index("--max-train-steps") + 2]
    assert finetune_main(args) == 0
    results = read_json(output / "results.json")
    assert results["train_examples"] == 20 and results["validation_examples"] == 30
    assert results["steps"] == 2 * math.ceil(20 / 8)  # two epochs of 20 examples in batches of 8
    logits, gold, _ = rte_dev_predictions(output)
    assert results["metrics"]["accuracy"] == pytest.approx(accuracy_score(gold[:30], logits[:30].argmax(-1)))


def test_finetuning_cuts_inputs_to_the_models_positions_unless_told(tiny_bert_encoder, tmp_path, capsys):
    # the tiny encoder has 64 positions: without --max-seq-length inputs are cut to 64, as run_glue clamps 128
    args = [a for a in finetune_args(tiny_bert_encoder, "rte", tmp_path / "rte", 1)]
    del args[args.index("--max-seq-length"): args.index("--max-seq-length") + 2]
    assert finetune_main(args) == 0
    assert read_json(tmp_path / "rte" / "results.json")["settings"]["max_seq_length"] == 64
    # a length the model cannot take, asked for, is refused
    capsys.readouterr()
    fails_cleanly(finetune_main, [*args, "--max-seq-length", "65", "--output", str(tmp_path / "long")],
                  "max_seq_length must be between 2 and the model's max_position_embeddings (64), got 65", tmp_path,
                  capsys)


def test_finetuning_stsb_with_a_validation_split(tiny_bert_encoder, tmp_path):
    output = tmp_path / "stsb"
    seed = 11
    assert finetune_main(finetune_args(tiny_bert_encoder, "stsb", output, 3, "--validation-split", "0.1",
                                       "--seed", seed)) == 0
    results = read_json(output / "results.json")
    header, rows = read_tsv(GLUE / "STS-B" / "train.tsv")
    assert results["task"] == "stsb" and results["main_metric"] == "pearson"
    assert results["validation_examples"] == round(0.1 * len(rows))
    assert results["train_examples"] + results["validation_examples"] == len(rows)
    metrics = results["metrics"]
    assert {"pearson", "spearmanr", "loss"} <= set(metrics) and results["evaluations"][-1] == metrics
    assert metrics["step"] == results["steps"] == 3
    model = AutoModelForSequenceClassification.from_pretrained(output).eval()
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"

    # the held-out rows are those `datasets` holds out of the file's rows with the run's seed (load_task's documented
    # split), read here from the TSV; the saved model's scores on them give the reported metrics, recomputed by scipy
    held_out = datasets.Dataset.from_dict({"row": list(range(len(rows)))}).train_test_split(
        test_size=results["validation_examples"], seed=seed)["test"]["row"]
    a, b, score = header.index("sentence1"), header.index("sentence2"), header.index("score")
    gold = np.array([float(rows[i][score]) for i in held_out], dtype=np.float32)
    tokenizer = AutoTokenizer.from_pretrained(output)
    encoded = tokenizer([rows[i][a] for i in held_out], [rows[i][b] for i in held_out], truncation=True,
                        max_length=SEQ, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**encoded).logits.squeeze(-1).double().numpy()
    assert metrics["pearson"] == pytest.approx(pearsonr(predicted, gold)[0], abs=1e-5)
    # ranks of near-equal scores swap with float32 rounding (padded to 8 rows there, to all rows here): measured 2e-5
    assert metrics["spearmanr"] == pytest.approx(spearmanr(predicted, gold)[0], abs=1e-3)
    assert metrics["loss"] == pytest.approx(np.mean((predicted - gold) ** 2), rel=1e-4)


# ------------------------------------------------------------------------------------------------ Trainer


@pytest.mark.parametrize("arch", ["sym_bert/symmetric", "shared_bert", "shatter"])
def test_transformers_trainer_trains_a_leanbert_classifier(arch, tmp_path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = model_class(arch, "ForSequenceClassification")(tiny_config(arch, num_labels=2))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    generator = torch.Generator().manual_seed(0)
    dataset = [{"input_ids": torch.randint(1, 99, (12,), generator=generator),
                "attention_mask": torch.ones(12, dtype=torch.long), "labels": torch.tensor(i % 2)} for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                             disable_tqdm=True)
    result = Trainer(model=model, args=args, train_dataset=dataset).train()
    assert result.global_step == 3 and math.isfinite(result.training_loss)
    changed = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert "classifier.weight" in changed and any("encoder" in name for name in changed), changed


# ------------------------------------------------------------------------------------------------ bad input


@pytest.fixture
def no_training(monkeypatch):
    """Training makes the test fail: bad input is refused before any work."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(TrainingLoop, "run", refuse)
    monkeypatch.setattr(TrainingLoop, "__init__", refuse)


@pytest.fixture(scope="module")
def bad(data):
    """A folder of inputs for the bad-input cases: texts, GLUE folders, a tiny checkpoint with a small vocabulary."""
    root = data["root"] / "bad"
    root.mkdir()
    text_slice(data["train"], root / "small.txt", 20_000)
    (root / "texts").mkdir()
    text_slice(data["train"], root / "texts" / "a.txt", 5_000)
    (root / "blank.txt").write_text("\n   \n\t\n\n")
    (root / "no_text").mkdir()
    (root / "no_text" / "notes.md").write_text("not a .txt file\n")
    (root / "bad_glue" / "RTE").mkdir(parents=True)
    (root / "bad_glue" / "RTE" / "train.tsv").write_text("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    (root / "bad_glue" / "RTE" / "dev.tsv").write_text("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    (root / "used_output").mkdir()
    (root / "used_output" / "notes.txt").write_text("someone's files")
    no_padding = AutoTokenizer.from_pretrained(data["tokenizer"])
    no_padding.pad_token = None
    no_padding.save_pretrained(root / "no_pad_tokenizer")
    config = tiny_config("sym_bert", vocab_size=100, max_position_embeddings=64)
    leanbert.SymBertForMaskedLM(config).save_pretrained(root / "small_vocab")
    AutoTokenizer.from_pretrained(data["tokenizer"]).save_pretrained(root / "small_vocab")
    ascii_lines = "".join(f"line {i} of plain text\n" for i in range(200))
    (root / "late_latin1.txt").write_bytes(ascii_lines.encode() + "caf\xe9 au lait\n".encode("latin-1"))
    rows = ["index\tsentence1\tsentence2\tlabel", *(f"{i}\ta{i}\tb{i}\tentailment" for i in range(8))]
    latin1_rows = [*rows[:2], "8\tcaf\xe9\tb\tentailment"]
    for name, body in (("good_glue", "\n".join(rows)), ("latin1_glue", "\n".join(latin1_rows))):
        (root / name / "RTE").mkdir(parents=True)
        for split in ("train", "dev"):
            (root / name / "RTE" / f"{split}.tsv").write_bytes(body.encode("latin-1") + b"\n")
    (root / "stsb_glue" / "STS-B").mkdir(parents=True)
    scores = ["0.5", "4.75", "5.0", "7", "2"]
    (root / "stsb_glue" / "STS-B" / "train.tsv").write_text("\n".join(
        ["index\tsentence1\tsentence2\tscore", *(f"{i}\ta\tb\t{score}" for i, score in enumerate(scores))]) + "\n")
    return root


def scratch(data, bad, *extra, model_type="sym_bert", train=None):
    return ["--model-type", model_type, "--tokenizer", data["tokenizer"], "--config-overrides", overrides(model_type),
            "--train-file", train or bad / "small.txt", "--max-seq-length", SEQ, "--max-train-steps", 2,
            "--cache-dir", data["cache"], "--output", bad / "out", *extra]


PRETRAIN_CASES = {
    "missing_train_file": (dict(train="{bad}/nowhere.txt"), [], "nowhere.txt' not found"),
    "blank_train_file": (dict(train="{bad}/blank.txt"), [], "is empty: no line holds text"),
    "folder_without_txt": (dict(train="{bad}/no_text"), [], "is a folder with no .txt files"),
    "unknown_model_type": (dict(model_type="roberta"), [], "unknown --model-type 'roberta'"),
    "unknown_config_field": (dict(), ["--config-overrides", "num_hidden_layers=2,hiden_size=32"],
                             "configs have no field 'hiden_size'"),
    "negative_layers": (dict(), ["--config-overrides", "num_hidden_layers=-1"], "num_hidden_layers=-1 is invalid"),
    "bert_decoder_override": (dict(model_type="bert"), ["--config-overrides", "is_decoder=true"],
                              "config override 'is_decoder' does not apply to pretraining a bert encoder"),
    "model_type_override": (dict(), ["--config-overrides", "num_hidden_layers=2,model_type=bert"],
                            "config override 'model_type' does not apply"),
    "bert_cross_attention_override": (dict(model_type="bert"), ["--config-overrides", "add_cross_attention=true"],
                                      "config override 'add_cross_attention' does not apply to pretraining a bert"),
    "return_dict_override": (dict(), ["--config-overrides", "return_dict=false"],
                             "config override 'return_dict' does not apply"),
    "non_integer_width": (dict(model_type="bert"), ["--config-overrides", "hidden_size=abc"], "hidden_size=abc"),
    "pad_token_override": (dict(), ["--config-overrides", "num_hidden_layers=2,pad_token_id=5"],
                           "config override 'pad_token_id' is not yours to set: pretraining takes it from the "
                           "tokenizer's padding token"),
    "ignore_index_override": (dict(), ["--config-overrides", "sparse_pred_ignore_index=0"],
                              "config override 'sparse_pred_ignore_index' is not yours to set"),
    # counted on the meta device and refused before anything is allocated (a real build would need terabytes)
    "too_large_for_memory": (dict(model_type="bert"), ["--config-overrides", "hidden_size=100000000,"
                                                       "num_attention_heads=1"],
                             "the bert config has 490,010,487,700,067,386 parameters: training it needs at least"),
    "output_not_empty": (dict(), ["--output", "{bad}/used_output"], "exists and is not empty; pass --force"),
    "resume_without_checkpoint": (dict(), ["--resume"], "--resume: no complete checkpoint"),
    "vocabulary_beyond_the_model": (dict(), ["--config-overrides", overrides("sym_bert") + ",vocab_size=1000"],
                                    "its ids would fall outside the embeddings"),
    "validation_split_2": (dict(), ["--validation-split", "2"], "validation_split must be in [0, 1), got 2"),
    "no_training_samples": (dict(), ["--max-train-samples", "0"],
                            "--max-train-samples: must be a positive integer, got 0"),
    "model_type_and_model": (dict(), ["--model", "{bad}/small_vocab"], "give either --model-type"),
    "not_utf8_past_the_start": (dict(train="{bad}/late_latin1.txt"), [], "is not UTF-8 text (line 201"),
    "tokenizer_without_padding": (dict(), ["--tokenizer", "{bad}/no_pad_tokenizer"], "has no padding token"),
    # BertConfig checks types only: leanbert applies its configs' field rules to BERT's fields
    "bert_zero_heads": (dict(model_type="bert"), ["--config-overrides", "num_attention_heads=0"],
                        "num_attention_heads=0 is invalid"),
    "bert_unknown_activation": (dict(model_type="bert"), ["--config-overrides", "hidden_act=swishy"],
                                "hidden_act='swishy' is invalid"),
    "bert_nan_epsilon": (dict(model_type="bert"), ["--config-overrides", "layer_norm_eps=nan"],
                         "layer_norm_eps=nan is invalid"),
    "bert_no_segment_types": (dict(model_type="bert"), ["--config-overrides", "type_vocab_size=0"],
                              "type_vocab_size=0 is invalid"),
    "cache_dir_inside_the_output": (dict(), ["--cache-dir", "{bad}/out/cache"], "is inside the output"),
    "cache_dir_is_the_checkpoint_folder": (dict(), ["--cache-dir", "{bad}/checkpoints", "--checkpoint-dir",
                                                    "{bad}/checkpoints"], "is the checkpoint folder itself"),
    "cache_dir_inside_the_text_folder": (dict(train="{bad}/texts"), ["--cache-dir", "{bad}/texts/cache"],
                                         "is inside the training text"),
    "cache_dir_a_file": (dict(), ["--cache-dir", "{bad}/blank.txt"], "exists and is not a folder"),
}
if not torch.cuda.is_available():
    PRETRAIN_CASES["fp16_on_the_cpu"] = (dict(), ["--mixed-precision", "fp16"], "needs a GPU")


@pytest.mark.parametrize("case", sorted(PRETRAIN_CASES))
def test_pretrain_refuses_bad_input_before_any_work(data, bad, case, capsys, no_training):
    options, extra, expected = PRETRAIN_CASES[case]
    options = {k: v.replace("{bad}", str(bad)) for k, v in options.items()}
    # a repeated option replaces the earlier one (argparse keeps the last)
    args = scratch(data, bad, *[str(a).replace("{bad}", str(bad)) for a in extra], **options)
    fails_cleanly(pretrain_main, args, expected, bad, capsys)


@pytest.mark.parametrize("model_type", ["bert", "sym_bert"])
def test_a_field_that_is_none_takes_a_number_override(model_type):
    """transformers types an override by the field's current value, and refuses any for a field that is None
    ("You can only update int, float, bool or string values ..., got 0.5"): classifier_dropout is one."""
    from transformers import AutoConfig

    from leanbert.common.errors import LeanbertError
    from leanbert.training.masked_lm import override_config

    config = override_config(AutoConfig.for_model(model_type), "classifier_dropout=0.25,num_hidden_layers=2")
    assert (config.classifier_dropout, config.num_hidden_layers) == (0.25, 2)
    with pytest.raises(LeanbertError, match="classifier_dropout takes a number, or none"):
        override_config(AutoConfig.for_model(model_type), "classifier_dropout=abc")
    with pytest.raises(LeanbertError, match="classifier_dropout=2 is invalid"):
        override_config(AutoConfig.for_model(model_type), "classifier_dropout=2")


def test_a_config_far_too_deep_for_memory_is_refused_without_building_every_layer(monkeypatch):
    """A module per layer takes about a millisecond to build even on the meta device: num_hidden_layers=100000 is
    counted from one and two layers (exactly: parameters grow linearly with the layers) and refused at once."""
    from transformers import BertConfig

    from leanbert.common import models
    from leanbert.common.errors import LeanbertError

    built = []

    class Counted:
        @staticmethod
        def from_config(config):
            built.append(config.num_hidden_layers)
            assert config.num_hidden_layers <= 70, "every layer was built"
            return AutoModelForMaskedLM.from_config(config)

    monkeypatch.setattr(models, "available_memory", lambda device=None: (0, "available"))
    config = dict(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=37)
    with torch.device("meta"):
        seventy = sum(p.numel() for p in AutoModelForMaskedLM.from_config(
            BertConfig(num_hidden_layers=70, **config)).parameters())
    with pytest.raises(LeanbertError, match=f"^the bert config has {seventy:,} parameters: training it needs"):
        models.check_training_memory(Counted, BertConfig(num_hidden_layers=70, **config), "the bert config")
    with pytest.raises(LeanbertError, match=r"^the bert config has [\d,]+ parameters: training it needs"):
        models.check_training_memory(Counted, BertConfig(num_hidden_layers=100000, **config), "the bert config")
    assert built == [1, 2, 1, 2]


def test_pretrain_refuses_a_validation_split_that_leaves_no_training_block(data, bad, capsys, no_training):
    """How many blocks the text packs into is known only once it is packed: the split is refused then, in one line
    after the packing's progress bars, before any training, and nothing is written."""
    before = snapshot(bad)
    code = pretrain_main([str(a) for a in scratch(data, bad, "--validation-split", "0.9999")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert code == 2 and errors == lines[-1:], lines
    assert re.fullmatch(r"leanbert-pretrain: error: validation_split 0\.9999 of the \d+ blocks the training text packs "
                        r"into would leave no training block; lower it or give --validation-file", errors[0]), errors
    assert snapshot(bad) == before


def test_pretrain_refuses_a_checkpoint_whose_tokenizer_outgrows_it_and_a_missing_model(data, bad, capsys,
                                                                                         no_training):
    common = ["--train-file", bad / "small.txt", "--max-seq-length", SEQ, "--max-train-steps", 2, "--output",
              bad / "out"]
    fails_cleanly(pretrain_main, ["--model", bad / "small_vocab", *common],
                  "has 30522 tokens but the model's vocab_size is 100", bad, capsys)
    fails_cleanly(pretrain_main, common, "give either --model-type", bad, capsys)


def altered_copy(bad: Path, name: str, json_file: str, changes: dict, code: dict[str, Path] | None = None) -> Path:
    """A copy of small_vocab called `name`, with `changes` made to its `json_file`, and the modules `code` names
    (file name: marker), each of which leaves its marker behind if it is ever run."""
    folder = bad / name
    if not folder.exists():
        folder.mkdir()
        for file in (bad / "small_vocab").iterdir():
            (folder / file.name).write_bytes(file.read_bytes())
        settings = json.loads((folder / json_file).read_text())
        (folder / json_file).write_text(json.dumps({**settings, **changes}))
        for module, marker in (code or {}).items():
            (folder / module).write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    return folder


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_training_refuses_a_model_folder_it_cannot_load_as_it_is_without_running_its_code(data, bad, command, capsys,
                                                                                          no_training, tmp_path):
    """Never ask to run, nor run, code shipped in a model folder; name what is wrong with a folder (a file given, a
    config at fault) rather than blame the weights."""
    main = pretrain_main if command == "pretrain" else finetune_main
    rest = (["--train-file", bad / "small.txt", "--max-seq-length", SEQ] if command == "pretrain"
            else ["--task", "rte", "--data-dir", GLUE, "--max-seq-length", SEQ])
    marker = tmp_path / "code-ran"
    # a type only the folder's own code defines; a tokenizer class likewise; 3 heads for width 32 (the config is at
    # fault, not the weights)
    foreign_model = altered_copy(bad, "foreign_code", "config.json", dict(
        model_type="zzz_unknown", auto_map={"AutoConfig": "configuration_zzz.ZzzConfig",
                                            "AutoModelForMaskedLM": "modeling_zzz.ZzzModel"}),
        code={"configuration_zzz.py": marker, "modeling_zzz.py": marker})
    foreign_tokenizer = altered_copy(bad, "foreign_tokenizer", "tokenizer_config.json", dict(
        tokenizer_class="ZzzTokenizer", auto_map={"AutoTokenizer": ["tokenization_zzz.ZzzTokenizer", None]}),
        code={"tokenization_zzz.py": marker})
    three_heads = altered_copy(bad, "three_heads", "config.json", dict(num_attention_heads=3))
    cases = {foreign_model: "is a 'zzz_unknown' model, a type neither transformers nor leanbert knows (its auto_map "
                            "points to code shipped with it",
             foreign_tokenizer: "needs code shipped with it to load (its auto_map names a class",
             bad / "small.txt": "is a file; give the model's folder",
             three_heads: "does not fit together: hidden_size=32 is not a multiple of num_attention_heads=3",
             # a checkpoint's config is held to what --config-overrides may not set
             altered_copy(bad, "decoder", "config.json", dict(is_decoder=True)):
                 "sets is_decoder=True: the model would attend causally, as a decoder",
             altered_copy(bad, "tuples", "config.json", dict(return_dict=False)):
                 "sets return_dict=False: the model would return plain tuples"}
    for model, expected in cases.items():
        fails_cleanly(main, ["--model", model, *rest, "--max-train-steps", 2, "--output", bad / "out"], expected, bad,
                      capsys)
    assert not marker.exists()


def test_a_model_that_is_neither_a_folder_nor_in_the_hub_cache_is_named_as_such_offline(data, bad, capsys,
                                                                                         no_training, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 sets it, whatever this run's env
    fails_cleanly(pretrain_main, ["--model", "no-such-model-folder", "--train-file", bad / "small.txt",
                                  "--output", bad / "out"],
                  "'no-such-model-folder' not found: no such folder, nor in the Hub cache (HF_HUB_OFFLINE", bad,
                  capsys)


def test_a_missing_tokenizer_folder_is_named_as_such_not_as_a_failed_connection(data, bad, capsys, no_training,
                                                                                  monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    fails_cleanly(pretrain_main, scratch(data, bad, "--tokenizer", bad / "no-such-tokenizer"),
                  f"tokenizer '{bad / 'no-such-tokenizer'}' not found: no such folder", bad, capsys)
    fails_cleanly(pretrain_main, scratch(data, bad, "--tokenizer", "no-such-tokenizer"),
                  "tokenizer 'no-such-tokenizer' not found: no such folder, nor in the Hub cache (HF_HUB_OFFLINE", bad,
                  capsys)


def test_an_interrupted_run_leaves_no_checkpoint_folder_it_saved_nothing_in(data, bad, tmp_path, capsys,
                                                                             monkeypatch):
    """Ctrl-C before the first checkpoint: exit 130, no empty checkpoint folder left beside the output, nor the
    parent folders the run made for them; a checkpoint folder the user made is left standing (empty, as it was)."""
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(TrainingLoop, "run", interrupted)
    args = scratch(data, bad)[:-2]
    output = tmp_path / "out"
    assert pretrain_main([str(a) for a in [*args, "--output", output]]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert pretrain_main([str(a) for a in [*args, "--output", tmp_path / "runs" / "today" / "out",
                                           "--checkpoint-dir", tmp_path / "ckpt" / "today"]]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    mine = tmp_path / "my-checkpoints"
    mine.mkdir()
    assert pretrain_main([str(a) for a in [*args, "--output", output, "--checkpoint-dir", mine]]) == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-checkpoints"] and not any(mine.iterdir())
    capsys.readouterr()


FINETUNE_CASES = {
    "unknown_task": (["--task", "squad"], "unknown GLUE task 'squad'"),
    "columns_do_not_fit": (["--task", "rte", "--data-dir", "{bad}/bad_glue"], "lacks the rte column(s)"),
    "validation_split_2": (["--task", "rte", "--validation-split", "2"], "strictly between 0 and 1, got 2.0"),
    "stsb_without_split": (["--task", "stsb"], "pass --validation-split"),
    "output_not_empty": (["--task", "rte", "--output", "{bad}/used_output"], "exists and is not empty"),
    "resume_without_checkpoint": (["--task", "rte", "--resume"], "--resume: no complete checkpoint"),
    "tsv_not_utf8": (["--task", "rte", "--data-dir", "{bad}/latin1_glue"], "RTE/train.tsv:3: not UTF-8 text"),
    "stsb_score_out_of_range": (["--task", "stsb", "--data-dir", "{bad}/stsb_glue", "--validation-split", "0.4"],
                                "train.tsv:5: score '7' is outside stsb's range 0-5"),
    "output_inside_the_data": (["--task", "rte", "--data-dir", "{bad}/good_glue", "--output",
                                "{bad}/good_glue/RTE/out"], "is inside the data"),
}
if not torch.cuda.is_available():
    FINETUNE_CASES["fp16_on_the_cpu"] = (["--task", "rte", "--mixed-precision", "fp16"], "needs a GPU")


@pytest.mark.parametrize("case", sorted(FINETUNE_CASES))
def test_finetune_refuses_bad_input_before_any_work(tiny_bert_encoder, bad, case, capsys, no_training):
    extra, expected = FINETUNE_CASES[case]
    args = ["--model", tiny_bert_encoder, "--data-dir", GLUE, "--max-seq-length", SEQ, "--max-train-steps", 2,
            "--output", bad / "out", *[str(a).replace("{bad}", str(bad)) for a in extra]]
    fails_cleanly(finetune_main, args, expected, bad, capsys)


def test_finetune_names_a_classification_head_of_another_size(tiny_bert, bad, capsys, no_training):
    """The tiny BERT's head has 3 labels, RTE has 2: one line saying so (transformers' own error would point at a
    load report that is silenced)."""
    args = ["--model", tiny_bert, "--task", "rte", "--data-dir", GLUE, "--max-seq-length", SEQ, "--max-train-steps", 2,
            "--output", bad / "out"]
    fails_cleanly(finetune_main, args, "has a classification head of another size than the 2 labels of rte", bad,
                  capsys)


# ------------------------------------------------------------------------------------------------ resume


def test_resume_after_a_hard_kill_matches_an_uninterrupted_run(data, tmp_path, loop_spy):
    def args(output, *extra):
        return pretrain_args(data, output, "sym_bert", 8, 4, 2, "--checkpoint-every", "3", "--seed", "5",
                             "--learning-rate", "1e-3", *extra)

    killed = tmp_path / "killed"
    checkpoint = tmp_path / "killed.pretrain-checkpoints" / "step_3" / "progress.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # as this process runs (one_thread)
    with open(tmp_path / "log.txt", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "leanbert.commands.pretrain", *args(killed)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-2000:]
    assert checkpoint.exists() and not killed.exists()

    assert pretrain_main(args(killed, "--resume")) == 0
    assert loop_spy[0]["step"] in (3, 6), "the resumed run did not continue from a checkpoint"
    assert pretrain_main(args(tmp_path / "straight")) == 0
    assert loop_spy[1]["step"] == 0
    resumed, straight = (read_json(tmp_path / name / "pretraining_curve.json") for name in ("killed", "straight"))
    assert [p["step"] for p in resumed["train"]] == list(range(1, 9))
    assert [p["loss"] for p in resumed["train"]] == [p["loss"] for p in straight["train"]]
    assert [p["samples"] for p in resumed["train"]] == [p["samples"] for p in straight["train"]]
    assert not [p.name for p in tmp_path.iterdir() if ".leanbert-" in p.name], "the killed run's leftovers remain"
    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("killed", "straight")]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], atol=1e-6, rtol=0, msg=name)
    assert not (tmp_path / "killed.pretrain-checkpoints").exists()
