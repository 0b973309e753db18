"""Checkpoints load with `trust_remote_code=True` in a Python process where leanbert cannot be imported."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, pipeline

from conftest import model_class, real_minilm_path, tiny_config

REMOTE_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["leanbert"] = None  # any `import leanbert` now raises ImportError
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, pipeline

    mlm_dir, cls_dir, out_file = sys.argv[1:4]
    inputs = dict(input_ids=torch.tensor([[101, 2023, 2003, 103, 102, 0]]),
                  attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]]))
    outputs = {}
    with torch.no_grad():
        for name, auto, folder in (("mlm", AutoModelForMaskedLM, mlm_dir),
                                   ("cls", AutoModelForSequenceClassification, cls_dir),
                                   ("base", AutoModel, cls_dir)):
            model = auto.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
            result = model(**inputs)
            outputs[name] = result[0].contiguous()
    fill = pipeline("fill-mask", model=mlm_dir, trust_remote_code=True)
    predictions = fill(sys.argv[4])
    outputs["fill_tokens"] = torch.tensor([p["token"] for p in predictions])
    outputs["fill_scores"] = torch.tensor([p["score"] for p in predictions])
    save_file(outputs, out_file)
""")


FILL_TEXT = "paris is the [MASK] of france."


def assert_fill_mask_top5(predictions_tokens, predictions_scores, model, tokenizer):
    """The pipeline's top 5 against softmax(logits at the mask).topk(5) of `model` run directly on the tokens."""
    inputs = tokenizer(FILL_TEXT, return_tensors="pt")
    position = inputs["input_ids"][0].tolist().index(tokenizer.mask_token_id)
    with torch.no_grad():
        scores, tokens = model.eval()(**inputs).logits[0, position].softmax(-1).topk(5)
    assert predictions_tokens.tolist() == tokens.tolist()
    torch.testing.assert_close(predictions_scores, scores, atol=0, rtol=1e-5)


@pytest.mark.parametrize("arch", ["sym_bert", "shared_bert", "shatter"])
def test_remote_code_loads_without_leanbert(arch, tmp_path):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    config = tiny_config(arch, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id)
    mlm = model_class(arch, "ForMaskedLM")(config).eval()
    cls = model_class(arch, "ForSequenceClassification")(tiny_config(arch, vocab_size=tokenizer.vocab_size,
                                                                      num_labels=3)).eval()
    mlm_dir, cls_dir = tmp_path / "mlm", tmp_path / "cls"
    mlm.save_pretrained(mlm_dir)
    tokenizer.save_pretrained(mlm_dir)
    cls.save_pretrained(cls_dir)
    assert len(json.loads((cls_dir / "config.json").read_text())["auto_map"]) == 7

    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, mlm_dir, cls_dir, tmp_path / "out.safetensors",
                             FILL_TEXT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    remote = load_file(tmp_path / "out.safetensors")
    inputs = dict(input_ids=torch.tensor([[101, 2023, 2003, 103, 102, 0]]),
                  attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]]))
    with torch.no_grad():
        torch.testing.assert_close(remote["mlm"], mlm(**inputs).logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(remote["cls"], cls(**inputs).logits, atol=1e-6, rtol=0)
        torch.testing.assert_close(remote["base"], cls.base_model(**inputs).last_hidden_state, atol=1e-6, rtol=0)
    assert_fill_mask_top5(remote["fill_tokens"], remote["fill_scores"], mlm, tokenizer)


def test_fill_mask_pipeline_with_leanbert_installed(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    model = model_class("sym_bert", "ForMaskedLM")(tiny_config("sym_bert", vocab_size=tokenizer.vocab_size))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    fill = pipeline("fill-mask", model=str(tmp_path))
    assert type(fill.model) is type(model)
    predictions = fill(FILL_TEXT)
    assert_fill_mask_top5(torch.tensor([p["token"] for p in predictions]),
                          torch.tensor([p["score"] for p in predictions]), model, tokenizer)
