"""BERT → SymBert / SharedBert conversion: what copies exactly, what is approximated, and refusing bad input."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

import leanbert
from conftest import HEADS, real_minilm_path
from leanbert.conversion import convert, mean_pool
from leanbert.conversion.convert import DROPOUT_LOSS_RATIO, Conversion
from leanbert.common.errors import LeanbertError
from leanbert.common.passages import read_passages


def save_pickle_checkpoint(source: Path, folder: Path) -> None:
    """The legacy layout: config.json and pytorch_model.bin (a pickle), as transformers 4.x and older wrote."""
    model = BertForSequenceClassification.from_pretrained(source)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "leanbert.commands.convert", *map(str, args)], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)


@pytest.mark.parametrize("to", ["sym_bert", "shared_bert", "shatter"])
def test_convert_small_bert(tiny_bert, calibration_file, tmp_path, to):
    before = digest(tiny_bert)
    output = tmp_path / "converted"
    report = convert(str(tiny_bert), to, output, calibration_text=calibration_file, refine_steps=30)
    assert digest(tiny_bert) == before, "the source was modified"

    assert {"model.safetensors", "config.json", "tokenizer.json", "conversion_report.json"} <= set(
        p.name for p in output.iterdir())
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == json.loads((tiny_bert / "config.json").read_text())["id2label"]
    assert json.loads((output / "conversion_report.json").read_text()) == report

    teacher = BertForSequenceClassification.from_pretrained(tiny_bert).eval()
    student = AutoModelForSequenceClassification.from_pretrained(output).eval()
    prefix = {"sym_bert": "SymBert", "shared_bert": "SharedBert", "shatter": "Shatter"}[to]
    assert type(student) is getattr(leanbert, f"{prefix}ForSequenceClassification")
    assert config["auto_map"] == {"AutoConfig": f"configuration_{to}.{prefix}Config",
                                  **{"AutoModel" + ("" if head == "Model" else head): f"modeling_{to}.{prefix}{head}"
                                     for head in HEADS}}

    exact = {"classifier.weight", "bert.pooler.dense.weight", "bert.embeddings.word_embeddings.weight",
             "bert.encoder.layer.1.intermediate.dense.weight", "bert.encoder.layer.1.output.LayerNorm.weight"}
    if to == "sym_bert":  # the value path copies exactly; only scores are approximated
        exact |= {"bert.encoder.layer.0.attention.self.value.weight",
                  "bert.encoder.layer.0.attention.output.dense.weight"}
    student_state = student.state_dict()
    for name in exact:
        student_name = name.replace("bert.", f"{student.base_model_prefix}.", 1)
        torch.testing.assert_close(student_state[student_name], teacher.state_dict()[name], atol=0, rtol=0)

    def stored(folder):  # parameters counted from the weight file itself
        return sum(tensor.numel() for tensor in load_file(folder / "model.safetensors").values())

    assert report["parameters"]["source"] == stored(tiny_bert)
    assert report["parameters"]["converted"] == stored(output) < stored(tiny_bert)
    assert [layer["layer"] for layer in report["layers"]] == [0, 1]
    # measured: sym 0.33 / 0.18, shared 0.60 / 0.47, shatter 0.26 / 0.22; an unfitted block is near 1 or above
    assert all(layer["heldout_logit_rel_error"] < {"sym_bert": 0.5, "shared_bert": 0.8, "shatter": 0.4}[to]
               for layer in report["layers"])

    tokenizer = AutoTokenizer.from_pretrained(output)
    batch = tokenizer(read_passages(bundled="heldout.txt")[0][:8], padding=True, truncation=True, max_length=64,
                      return_tensors="pt")
    with torch.no_grad():
        source_logits, converted_logits = teacher(**batch).logits, student(**batch).logits
    cosine = torch.nn.functional.cosine_similarity(source_logits, converted_logits, dim=-1)
    if to != "shatter":  # a warm start, not an equivalent model: its classifier is not expected to agree yet
        assert cosine.min() > {"sym_bert": 0.98, "shared_bert": 0.8}[to], cosine

    # the reported fidelity is the written model's, recomputed: the cosine between the two models' mean-pooled last
    # hidden states of the held-out passages cut at 128 tokens
    heldout = tokenizer(read_passages(bundled="heldout.txt")[0], max_length=128, truncation=True,
                        padding="max_length", return_tensors="pt")
    with torch.no_grad():
        embeddings = [model.base_model(**heldout).last_hidden_state for model in (teacher, student)]
    weights = heldout["attention_mask"].unsqueeze(-1).float()
    embeddings = [(hidden * weights).sum(1) / weights.sum(1) for hidden in embeddings]
    cosines = torch.nn.functional.cosine_similarity(*embeddings, dim=-1)
    assert report["fidelity"]["mean_cosine"] == pytest.approx(cosines.mean().item(), abs=1e-4)
    assert report["fidelity"]["min_cosine"] == pytest.approx(cosines.min().item(), abs=1e-4)
    assert report["fidelity"]["mean_cosine"] > {"sym_bert": 0.99, "shared_bert": 0.9, "shatter": 0.8}[to]

    # How much of each model survives dropout, recomputed from the written folders, is what the report says; the
    # attention dropout written is the source's unless the report gives the reason it is not.
    assert report["dropout"]["source"] == pytest.approx(dropout_cosine(teacher, heldout), abs=1e-5)
    assert report["dropout"]["converted"] == pytest.approx(dropout_cosine(student, heldout), abs=1e-5)
    kept = "why" not in report["dropout"]
    assert student.config.attention_probs_dropout_prob == (teacher.config.attention_probs_dropout_prob if kept else 0)


@torch.no_grad()
def dropout_cosine(model, batch, seed=0) -> float:
    """Mean cosine of mean-pooled last hidden states with dropout on (seeded) and off; leaves the model in eval."""
    torch.manual_seed(seed)
    noisy = mean_pool(model.train().base_model(**batch).last_hidden_state, batch["attention_mask"])
    clean = mean_pool(model.eval().base_model(**batch).last_hidden_state, batch["attention_mask"])
    return torch.nn.functional.cosine_similarity(noisy, clean, dim=-1).mean().item()


def test_attention_too_sharp_for_the_source_dropout_is_turned_off(tiny_bert, calibration_file, tmp_path):
    """A converted model that attention-probability dropout makes far more fragile than its source gets that
    dropout turned off, in its config and in its modules, with the measurements and the reason: here a converted
    SharedBert whose query scales are sharpened, as fitting MiniLM sharpens them. Unsharpened, the same model keeps
    it; and so does one that turning it off would not mend (as fragile under the other dropout)."""
    convert(str(tiny_bert), "shared_bert", tmp_path / "converted", calibration_text=calibration_file, refine_steps=0)
    conversion = Conversion(str(tiny_bert), "shared_bert", calibration_text=calibration_file, refine_steps=0)
    teacher = BertForSequenceClassification.from_pretrained(tiny_bert).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    heldout = tokenizer(read_passages(bundled="heldout.txt")[0], max_length=128, truncation=True,
                        padding="max_length", return_tensors="pt")
    rate = teacher.config.attention_probs_dropout_prob
    assert rate > 0

    def converted(sharpen=1.0, other_dropout=None):
        """The converted model, its query scales multiplied by `sharpen`, its dropout other than on attention
        probabilities (embeddings, residual branches) set to `other_dropout`."""
        student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "converted")
        for module in student.modules():
            if isinstance(module, torch.nn.Dropout) and other_dropout is not None:
                module.p = other_dropout
        for layer in student.base_model.encoder.layer:
            layer.attention.self.query_scale.data *= sharpen
            layer.attention.self.dropout.p = rate
        return student

    student = converted()
    assert conversion.fit_attention_dropout(teacher, student, heldout).keys() == {"source", "converted", "measure"}
    assert student.config.attention_probs_dropout_prob == rate

    student = converted(sharpen=40, other_dropout=0.0)  # attention dropout is all that breaks it
    fragile = dropout_cosine(student, heldout)
    measured = conversion.fit_attention_dropout(teacher, student, heldout)
    tolerated = DROPOUT_LOSS_RATIO * (1 - measured["source"])
    assert measured["converted_with_source_attention_dropout"] == pytest.approx(fragile, abs=1e-5)
    assert 1 - fragile > tolerated >= 1 - measured["converted"]
    assert measured["attention_probs_dropout_prob"] == {"source": rate, "converted": 0.0}
    assert student.config.attention_probs_dropout_prob == 0.0
    assert all(layer.attention.self.dropout.p == 0.0 for layer in student.base_model.encoder.layer)
    assert measured["converted"] == pytest.approx(dropout_cosine(student, heldout), abs=1e-5)
    assert f"{fragile:.3f}" in measured["why"]

    keeping = Conversion(str(tiny_bert), "shared_bert", calibration_text=calibration_file, refine_steps=0,
                         keep_attention_dropout=True)
    student = converted(sharpen=40, other_dropout=0.0)  # as fragile, but the user asked to keep the dropout
    measured = keeping.fit_attention_dropout(teacher, student, heldout)
    assert "why" not in measured and student.config.attention_probs_dropout_prob == rate
    assert all(layer.attention.self.dropout.p == rate for layer in student.base_model.encoder.layer)
    assert measured["converted"] == pytest.approx(fragile, abs=1e-5) and f"{fragile:.3f}" in measured["kept"]
    assert 1 - measured["converted_without_attention_dropout"] <= tolerated

    student = converted(sharpen=40)  # sharp attention is fragile under the other dropout too: the cause is not it
    measured = conversion.fit_attention_dropout(teacher, student, heldout)
    assert 1 - measured["converted_without_attention_dropout"] > tolerated
    assert "why" not in measured and student.config.attention_probs_dropout_prob == rate
    assert all(layer.attention.self.dropout.p == rate for layer in student.base_model.encoder.layer)
    assert measured["converted"] == pytest.approx(dropout_cosine(student, heldout), abs=1e-5)


def test_keep_attention_dropout_reaches_the_report_and_the_card(tiny_bert, calibration_file, tmp_path):
    """--keep-attention-dropout is recorded in the report's settings, and a report that kept a harmful dropout at
    the user's request says so in the model card (the tiny model's attention is not sharp enough to trigger it)."""
    from leanbert.commands.convert import main
    from leanbert.publishing import write_model_card
    output = tmp_path / "kept"
    assert main(["--source", str(tiny_bert), "--to", "shared_bert", "--output", str(output), "--calibration-text",
                 str(calibration_file), "--refine-steps", "0", "--keep-attention-dropout"]) == 0
    report = json.loads((output / "conversion_report.json").read_text())
    assert report["settings"]["keep_attention_dropout"] is True
    report["dropout"]["kept"] = "kept at 0.1 as asked (--keep-attention-dropout), though it costs this much"
    (output / "conversion_report.json").write_text(json.dumps(report))
    card = write_model_card(output, kind="converted", source=str(tiny_bert)).read_text()
    assert "Attention-probability dropout was kept at 0.1 as asked" in card
    with pytest.raises(LeanbertError, match="keep_attention_dropout"):
        Conversion(str(tiny_bert), "shared_bert", calibration_text=calibration_file, keep_attention_dropout="no")


def test_symbert_conversion_of_an_exactly_representable_bert_is_lossless(calibration_file, tmp_path):
    """A BERT whose key projection equals its query projection up to a per-head invertible map is exactly a SymBert."""
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    torch.manual_seed(1)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=40, initializer_range=0.3)
    bert = BertForSequenceClassification(config)
    for layer in bert.bert.encoder.layer:
        attention = layer.attention.self
        mix = torch.block_diag(*[torch.randn(16, 16) * 0.5 + torch.eye(16) for _ in range(2)])
        attention.key.weight.data = mix @ attention.query.weight.data  # k_h = q_h A_h (no key bias needed)
    bert.save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    report = convert(str(tmp_path / "bert"), "sym_bert", tmp_path / "out", calibration_text=calibration_file,
                     refine_steps=0)
    assert report["layers"][0]["heldout_logit_rel_error"] < 1e-3
    assert report["fidelity"]["min_cosine"] > 0.9999


def test_refuses_non_empty_output_and_force_replaces_only_leanbert_outputs(tiny_bert, calibration_file, tmp_path):
    output = tmp_path / "taken"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    args = ("--source", tiny_bert, "--to", "sym_bert", "--output", output, "--refine-steps", "0", "--calibration-text",
            calibration_file)
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"leanbert-convert: error: output folder {str(output)!r} exists and is not empty; pass --force to replace it"]
    result = run_cli(*args, "--force")  # --force never deletes a file leanbert did not write
    assert result.returncode == 2 and "keep.txt" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in output.iterdir()] == ["keep.txt"] and (output / "keep.txt").read_text() == "precious"

    (output / "keep.txt").unlink()
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    written = digest(output)
    result = run_cli(*args, "--seed", "1")
    assert result.returncode == 2 and digest(output) == written
    result = run_cli(*args, "--seed", "1", "--force")  # leanbert's own, unchanged output: replaced
    assert result.returncode == 0, result.stderr[-2000:]
    assert digest(output)["model.safetensors"] != written["model.safetensors"]
    assert json.loads((output / "conversion_report.json").read_text())["settings"]["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"], "temporary folders or locks left behind"


@pytest.mark.parametrize("case", ["missing", "not_bert", "pickle_only", "inside_source", "bad_to"])
def test_bad_input_fails_with_one_clear_line(case, tiny_bert, tmp_path):
    source, to, output = tiny_bert, "sym_bert", tmp_path / "out"
    expected = {
        "missing": "not found: no such folder",
        "not_bert": "is a 'sym_bert' checkpoint; a BERT checkpoint (model_type 'bert') is needed",
        "pickle_only": "holds only pickle weights, .bin, which can run code: --allow-pickle trusts them",
        "inside_source": "is inside the source",
        "bad_to": "invalid choice: 'shatterz'",
    }[case]
    if case == "missing":
        source = tmp_path / "nowhere"
    elif case == "not_bert":
        source = tmp_path / "sym"
        leanbert.SymBertModel(leanbert.SymBertConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1,
                                                     intermediate_size=37)).save_pretrained(source)
    elif case == "pickle_only":
        source = tmp_path / "bin"
        save_pickle_checkpoint(tiny_bert, source)
        assert (source / "pytorch_model.bin").exists() and not (source / "model.safetensors").exists()
    elif case == "inside_source":
        output = tiny_bert / "converted"
    elif case == "bad_to":
        to = "shatterz"
    result = run_cli("--source", source, "--to", to, "--output", output)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("leanbert-convert: error: ") and expected in lines[0], lines
    assert not output.exists()


def test_pickle_source_converts_with_explicit_opt_in(tiny_bert, calibration_file, tmp_path):
    """A pytorch_model.bin source gives exactly the model its safetensors twin gives."""
    source = tmp_path / "bin"
    save_pickle_checkpoint(tiny_bert, source)
    settings = dict(calibration_text=calibration_file, refine_steps=0)
    report = convert(str(source), "sym_bert", tmp_path / "out", allow_pickle=True, **settings)
    convert(str(tiny_bert), "sym_bert", tmp_path / "twin", **settings)
    assert report["source_architecture"] == "BertForSequenceClassification"
    twin = load_file(tmp_path / "twin" / "model.safetensors")
    converted = load_file(tmp_path / "out" / "model.safetensors")
    assert converted.keys() == twin.keys()
    for name, tensor in converted.items():
        torch.testing.assert_close(tensor, twin[name], atol=0, rtol=0)


def test_conversion_error_for_missing_calibration_text(tiny_bert, tmp_path):
    with pytest.raises(LeanbertError, match="not found: no such file or folder"):
        convert(str(tiny_bert), "sym_bert", tmp_path / "out", calibration_text=tmp_path / "none.txt")
    assert list(tmp_path.iterdir()) == []
