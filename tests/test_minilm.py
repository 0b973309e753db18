"""Converting the real all-MiniLM-L6-v2 checkpoint with default settings (slow: a few minutes on 2 cores)."""

import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertModel

from conftest import real_minilm_path
from leanbert.conversion import convert
from leanbert.common.models import mean_pool
from leanbert.common.passages import read_passages

# Floors for the mean held-out embedding cosine to the source: SymBert's issue target; for SharedBert, below the
# measured 0.922 and well above the recipes it replaced (0.41, 0.66 in DESIGN.md; 0.815 for our first fit).
TARGET_COSINE = {"sym": 0.985, "shared": 0.9}


@pytest.mark.slow
@pytest.mark.parametrize("to", ["sym", "shared"])
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
