"""`leanbert-export`: SymBert and SharedBert folders written as the plain BERT that computes the same outputs.

Exactness is checked against transformers' own BERT classes loading the exported folder (not leanbert's code), on
padded batches other than the one the export checks itself with; loading without leanbert and on transformers 4 is
in test_transformers4.py.
"""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from sentence_transformers import SentenceTransformer
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoTokenizer, BertConfig

import leanbert
from conftest import (HEADS, REPO, fails_cleanly, padded_token_batch, real_minilm_path, save_tiny_model, snapshot)
from leanbert.commands.export import main as export_main
from leanbert.conversion import convert
from leanbert.export import export
from leanbert.export.bert import outputs

EXPORTABLE = {"sym_bert": {}, "sym_bert/symmetric": {}, "shared_bert": {}}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(real_minilm_path())


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", sorted(EXPORTABLE))
def test_the_exported_bert_computes_what_the_leanbert_model_does(arch, head, tokenizer, tmp_path):
    model = save_tiny_model(arch, head, tmp_path / "native", tokenizer)
    report = export(tmp_path / "native", tmp_path / "bert")

    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == [f"Bert{head}"]
    assert "auto_map" not in config and not list((tmp_path / "bert").glob("*.py"))
    bert = getattr(transformers, f"Bert{head}").from_pretrained(tmp_path / "bert").eval()
    batch = padded_token_batch(model.config.vocab_size)
    expected, _ = outputs(model, batch)
    got, _ = outputs(bert, batch)
    assert sorted(got) == sorted(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0, msg=name)

    # BERT's parameters: as many as transformers' class of that size has, which the report states
    sizes = BertConfig(**{key: getattr(model.config, key) for key in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
        "max_position_embeddings", "num_labels")})
    assert bert.num_parameters() == getattr(transformers, f"Bert{head}")(sizes).num_parameters()
    assert report["parameters"] == {"source": model.num_parameters(), "exported": bert.num_parameters(),
                                    "added": bert.num_parameters() - model.num_parameters(),
                                    "added_fraction": pytest.approx(bert.num_parameters() / model.num_parameters() - 1,
                                                                    abs=1e-6)}
    assert report["parameters"]["added"] > 0  # the shared projections are full ones again
    assert report["check"]["max"] <= 1e-5 and report["exported_architecture"] == f"Bert{head}"
    assert (tmp_path / "bert" / "tokenizer.json").read_bytes() == (tmp_path / "native" / "tokenizer.json").read_bytes()


def test_reported_flops_are_those_of_both_models(tokenizer, tmp_path):
    """The report's FLOPs, recounted here on fresh loads and the same batch shape: BERT costs more."""
    model = save_tiny_model("sym_bert", "Model", tmp_path / "native", tokenizer)
    report = export(tmp_path / "native", tmp_path / "bert")
    count, length = report["inference_flops"]["batch"]
    ids = torch.randint(1, model.config.vocab_size, (count, length))
    counted = {}
    for name, folder in (("source", tmp_path / "native"), ("exported", tmp_path / "bert")):
        loaded = transformers.AutoModel.from_pretrained(folder).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            loaded(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        counted[name] = counter.get_total_flops()
    assert {key: report["inference_flops"][key] for key in counted} == counted
    assert counted["exported"] > counted["source"]


def test_the_card_says_what_the_model_was_and_what_it_costs(tokenizer, tmp_path):
    save_tiny_model("shared_bert", "ForSequenceClassification", tmp_path / "native", tokenizer)
    report = export(tmp_path / "native", tmp_path / "bert")
    card = (tmp_path / "bert" / "README.md").read_text()
    assert card.startswith("---\n") and "- leanbert\n- bert\n- shared_bert\n" in card
    assert "pipeline_tag: text-classification" in card
    assert "# BertForSequenceClassification, the exact BERT form of SharedBertForSequenceClassification" in card
    assert "arXiv 2412.00359" in card and "trust_remote_code" in card  # ... "no `trust_remote_code`"
    assert f"| this model (BertForSequenceClassification) | {report['parameters']['exported']:,} |" in card
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert snippets and all("trust_remote_code" not in s and "import leanbert" not in s for s in snippets)


def test_a_sentence_transformers_model_exports_with_its_modules(st_source, tmp_path):
    convert(str(st_source / "source"), "sym_bert", tmp_path / "sym", calibration_text=st_source / "text.txt",
            refine_steps=0)
    report = export(tmp_path / "sym", tmp_path / "bert")
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert (tmp_path / "bert" / name).read_bytes() == (tmp_path / "sym" / name).read_bytes(), name
    sentences = ["A man is eating food.", "The new movie is awesome.", "Two men are playing chess."]
    native = SentenceTransformer(str(tmp_path / "sym"), device="cpu")
    exported = SentenceTransformer(str(tmp_path / "bert"), device="cpu")
    assert type(exported[0].auto_model) is transformers.BertModel
    assert [type(m).__name__ for m in exported] == [type(m).__name__ for m in native]
    # This converted tiny model's query/key weights are large where its pairwise matrices shrink them (norm
    # 5.5e4 and 1.2): float32 rounds the leanbert model's own products at about 3e-3; the export, folded in float64,
    # is as near to the exact outputs. The report measures both against float64.
    assert report["check"]["exported_float32_error"] <= 2 * report["check"]["source_float32_error"] + 1e-5
    torch.testing.assert_close(exported.encode(sentences, convert_to_tensor=True),
                               native.encode(sentences, convert_to_tensor=True), atol=5e-3, rtol=0)


def test_the_readme_onnx_recipe_runs_on_the_exported_bert(tokenizer, tmp_path, monkeypatch):
    """The README's ONNX example, unchanged but for the folder, on an exported BERT: its own assertion compares
    ONNX Runtime with PyTorch; here the ONNX output is compared with the leanbert model too."""
    import numpy as np
    import onnxruntime

    block = next(b for b in re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
                 if "torch.onnx.export" in b)
    model = save_tiny_model("sym_bert", "Model", tmp_path / "tiny-symbert", tokenizer)
    export(tmp_path / "tiny-symbert", tmp_path / "tiny-bert")
    monkeypatch.chdir(tmp_path)
    exec(compile(block.replace('"tiny-symbert"', '"tiny-bert"'), "README.md", "exec"), {"__name__": "__readme__"})
    session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    batch = padded_token_batch(model.config.vocab_size)
    (hidden,) = session.run(["last_hidden_state"], {"input_ids": batch["input_ids"].numpy(),
                                                    "attention_mask": batch["attention_mask"].numpy()})
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    np.testing.assert_allclose(hidden, expected.numpy(), atol=1e-4, rtol=0)


def test_the_command_line_exports_and_reports(tokenizer, tmp_path, capsys):
    save_tiny_model("sym_bert", "ForMaskedLM", tmp_path / "native", tokenizer)
    assert export_main(["--model", str(tmp_path / "native"), "--output", str(tmp_path / "bert")]) == 0
    summary = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "bert" / "export_report.json").read_text())
    assert summary["architecture"] == "BertForMaskedLM" and summary["max_abs_difference"] == report["check"]["max"]
    # a second run is refused, then replaces its own output with --force: the model saved again with other weights,
    # the output holds the new ones
    fails_cleanly(export_main, ["--model", tmp_path / "native", "--output", tmp_path / "bert"], "not empty",
                  tmp_path, capsys)
    model = save_tiny_model("sym_bert", "ForMaskedLM", tmp_path / "native", tokenizer, seed=1)
    assert export_main(["--model", str(tmp_path / "native"), "--output", str(tmp_path / "bert"), "--force"]) == 0
    exported = transformers.BertForMaskedLM.from_pretrained(tmp_path / "bert").eval()
    batch = padded_token_batch(model.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(exported(**batch).logits, model(**batch).logits, atol=1e-5, rtol=0)
    result = subprocess.run([sys.executable, "-m", "leanbert.commands.export", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "leanbert-export" in result.stdout


@pytest.fixture
def folders(tokenizer, tiny_bert, tmp_path):
    """Folders export must refuse, and one it takes."""
    save_tiny_model("sym_bert", "Model", tmp_path / "sym", tokenizer)
    save_tiny_model("shatter", "Model", tmp_path / "shatter", tokenizer)
    shutil.copytree(tmp_path / "sym", tmp_path / "no-weights")
    (tmp_path / "no-weights" / "model.safetensors").unlink()
    shutil.copytree(tmp_path / "sym", tmp_path / "misfit")
    config = json.loads((tmp_path / "misfit" / "config.json").read_text())
    (tmp_path / "misfit" / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    shutil.copytree(tmp_path / "sym", tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "no-tokenizer" / name).unlink()
    shutil.copytree(tiny_bert, tmp_path / "bert")
    return tmp_path


@pytest.mark.parametrize("model, output, expected", [
    ("shatter", "out", "is a Shatter, which has no BERT form"),
    ("bert", "out", "is a plain BERT already"),
    ("no-weights", "out", "cannot load the weights of model"),
    ("misfit", "out", "do not fit its config"),
    ("no-tokenizer", "out", "has no tokenizer vocabulary"),
    ("missing", "out", "not found"),
    ("sym", "sym/out", "inside"),
    ("sym", "sym", "model"),
])
def test_bad_input_is_one_line_and_writes_nothing(folders, model, output, expected, capsys):
    fails_cleanly(export_main, ["--model", folders / model, "--output", folders / output], expected, folders, capsys)


def test_shatter_is_pointed_to_onnx(folders, capsys):
    fails_cleanly(export_main, ["--model", folders / "shatter", "--output", folders / "out"], "export it to ONNX",
                  folders, capsys)
    assert snapshot(folders)  # the folders are still there, untouched (fails_cleanly compared them)


def test_every_architecture_says_whether_it_has_a_bert_form():
    forms = {architecture.model_type: architecture.has_bert_form for architecture in leanbert.ARCHITECTURES}
    assert forms == {"sym_bert": True, "shared_bert": True, "shatter": False}


def test_a_wrong_fold_is_caught_and_nothing_is_published(tokenizer, tmp_path, monkeypatch, capsys):
    """The export's own check: with the pairwise matrices folded untransposed (B_h instead of B_h^T), the saved BERT
    computes other scores, and the export fails in one line without publishing."""
    from leanbert.modeling_sym_bert import SymBertSelfAttention

    right = SymBertSelfAttention.bert_projections

    def untransposed(self):
        projections = right(self)
        heads, size = self.pairwise.shape[:2]
        weight = self.query_key.weight.view(heads, size, -1)
        folded = torch.matmul(self.pairwise.detach(), weight.detach())  # B_h W_h: the transpose forgotten
        projections["query.weight"] = folded.reshape(-1, weight.shape[-1])
        return projections

    monkeypatch.setattr(SymBertSelfAttention, "bert_projections", untransposed)
    save_tiny_model("sym_bert", "Model", tmp_path / "native", tokenizer)
    before = snapshot(tmp_path)
    assert export_main(["--model", str(tmp_path / "native"), "--output", str(tmp_path / "bert")]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("leanbert-export")]  # not the saving's progress bar
    assert len(lines) == 1 and "internal error" in lines[0] and "the exported BERT does not reproduce" in lines[0]
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_a_model_with_broken_weights_is_refused(tokenizer, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    save_tiny_model("shared_bert", "Model", tmp_path / "native", tokenizer)
    weights = load_file(tmp_path / "native" / "model.safetensors")
    weights["encoder.layer.0.attention.self.value_scale"][3] = float("nan")
    save_file(weights, tmp_path / "native" / "model.safetensors", metadata={"format": "pt"})
    fails_cleanly(export_main, ["--model", tmp_path / "native", "--output", tmp_path / "bert"],
                  "encoder.layer.0.attention.self.value_scale holds NaN", tmp_path, capsys)
