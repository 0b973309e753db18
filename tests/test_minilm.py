"""Converting the real all-MiniLM-L6-v2 checkpoint with default settings (slow: a few minutes on 2 cores)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer, BertModel

from conftest import SHARED_DATA, real_minilm_path
from leanbert.conversion import convert, mean_pool
from leanbert.export import export
from leanbert.conversion.convert import DROPOUT_LOSS_RATIO
from leanbert.common.passages import read_passages

# Floors for the mean held-out embedding cosine to the source: SymBert's issue target; for SharedBert, below the
# measured 0.922 and well above the recipes it replaced (0.41 and 0.66 for the first ones tried; 0.815 for our
# first fit).
TARGET_COSINE = {"sym_bert": 0.985, "shared_bert": 0.9}


@pytest.mark.slow
@pytest.mark.parametrize("to", ["sym_bert", "shared_bert"])
def test_minilm_conversion_report_is_measured(to, tmp_path):
    source = real_minilm_path()
    output = tmp_path / to
    report = convert(str(source), to, output)
    assert json.loads((output / "conversion_report.json").read_text())["fidelity"] == report["fidelity"]

    # Recompute the reported cosine independently: fresh loads, the held-out passages, sentence-transformers pooling.
    tokenizer = AutoTokenizer.from_pretrained(output)
    batch = tokenizer(read_passages(bundled="heldout.txt")[0], max_length=128, truncation=True, padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        reference = mean_pool(BertModel.from_pretrained(source).eval()(**batch).last_hidden_state,
                              batch["attention_mask"])
        converted = mean_pool(AutoModel.from_pretrained(output).eval()(**batch).last_hidden_state,
                              batch["attention_mask"])
    cosine = torch.nn.functional.cosine_similarity(reference, converted, dim=-1)
    assert report["fidelity"]["mean_cosine"] == pytest.approx(cosine.mean().item(), abs=1e-4)
    assert report["fidelity"]["min_cosine"] == pytest.approx(cosine.min().item(), abs=1e-4)
    assert cosine.mean() >= TARGET_COSINE[to]
    assert report["parameters"]["converted"] < report["parameters"]["source"] == 22_713_216

    # The fitted SharedBert's attention is too sharp for MiniLM's attention dropout: conversion writes it off, says
    # why in the report and the card, and the model then keeps as much under dropout as the source. SymBert's is not.
    dropout = report["dropout"]
    tolerated = DROPOUT_LOSS_RATIO * (1 - dropout["source"])
    source_rate = json.loads((source / "config.json").read_text())["attention_probs_dropout_prob"]
    written_rate = json.loads((output / "config.json").read_text())["attention_probs_dropout_prob"]
    if to == "shared_bert":
        assert 1 - dropout["converted_with_source_attention_dropout"] > tolerated > 1 - dropout["converted"]
        assert written_rate == 0.0 < source_rate
        assert "Attention-probability dropout is off" in (output / "README.md").read_text()
    else:
        assert "why" not in dropout and 1 - dropout["converted"] <= tolerated
        assert written_rate == source_rate

    # its exact BERT form: plain BertModel, the same sentence embeddings through sentence-transformers
    exported = export(output, tmp_path / f"{to}-bert")
    # MiniLM's hidden states reach magnitudes near 20 on the check's random tokens, where float32 puts the source
    # model itself about 1e-5 from its exact (float64) outputs: the export is as near to them (measured 1.2e-5 apart
    # from the source for SymBert, 1.6e-5 for SharedBert)
    check = exported["check"]
    assert check["exported_float32_error"] <= 2 * check["source_float32_error"] and check["max"] <= 3e-5, check
    sentences = read_passages(bundled="heldout.txt")[0][:16]
    native = SentenceTransformer(str(output), device="cpu").encode(sentences, convert_to_tensor=True)
    bert = SentenceTransformer(str(tmp_path / f"{to}-bert"), device="cpu")
    assert type(bert[0].auto_model) is BertModel and bert.max_seq_length == 256
    torch.testing.assert_close(bert.encode(sentences, convert_to_tensor=True), native, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_a_whole_corpus_as_calibration_text_stays_in_bounded_memory(tmp_path):
    """Converting MiniLM with the 41 MB gutenberg-pd/train.txt samples 256 passages from the streamed file: the
    process peaks under 3 GB (it was killed at 21 GB when every passage's activations were kept)."""
    corpus = SHARED_DATA / "text" / "gutenberg-pd" / "train.txt"
    script = ("import resource, sys; from leanbert.commands.convert import main; code = main(sys.argv[1:]); "
              "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, "--source", str(real_minilm_path()), "--to", "sym_bert",
                             "--output", str(tmp_path / "out"), "--calibration-text", str(corpus),
                             "--refine-steps", "5"], capture_output=True, text=True, timeout=1200,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    peak = int(result.stderr.strip().splitlines()[-1])
    assert peak < 3 * 2**30, f"peak memory {peak / 2**30:.2f} GiB"
    settings = json.loads((tmp_path / "out" / "conversion_report.json").read_text())["settings"]
    lines = sum(1 for line in corpus.open(encoding="utf-8") if line.strip())
    assert settings["calibration_passages"] == 256 and settings["calibration_passages_available"] == lines
