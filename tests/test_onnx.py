"""ONNX export: `torch.onnx.export(..., dynamo=True)` with dynamic batch and sequence, run in ONNX Runtime, matches
PyTorch for every architecture, base model and classification head, on a batch of another shape and with padding.
Also runs the README's "Export to ONNX" example."""

import re

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import leanbert
from conftest import ARCHITECTURES, REPO, TINY, model_class, tiny_config

# head -> ONNX output names, in the order the ModelOutput flattens
OUTPUTS = {"Model": ["last_hidden_state", "pooler_output"], "ForSequenceClassification": ["logits"]}


def export(model: torch.nn.Module, path, output_names: list[str]) -> None:
    """Export with a (2, 6) all-ones example; batch and sequence dynamic, the sequence up to the model's limit."""
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=model.config.max_position_embeddings)
    example = torch.randint(1, model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    torch.onnx.export(
        model, (example, torch.ones_like(example)), path, dynamo=True,
        input_names=["input_ids", "attention_mask"], output_names=output_names,
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
    )


@pytest.mark.parametrize("head", sorted(OUTPUTS))
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_onnx_runtime_matches_pytorch(arch, head, tmp_path):
    torch.manual_seed(0)
    # one layer: every module and op, at two thirds of the export time (no leanbert layer depends on its index);
    # initializer_range 0.2: O(1) logits, so that the tolerance below is a relative one for every output
    config = tiny_config(arch, num_hidden_layers=1, num_labels=3, initializer_range=0.2)
    model = model_class(arch, head)(config).eval()
    assert model.config._attn_implementation == "sdpa"
    path = tmp_path / "model.onnx"
    export(model, path, OUTPUTS[head])
    onnx.checker.check_model(path)

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == OUTPUTS[head]
    for onnx_input in session.get_inputs():  # symbolic batch and sequence, not the example's 2 and 6
        assert all(isinstance(dim, str) for dim in onnx_input.shape), onnx_input.shape

    # another batch size and length than the export example, and row 1 padded after 9 tokens
    input_ids = torch.randint(1, model.config.vocab_size, (3, 13), generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    input_ids[1, 9:] = model.config.pad_token_id
    got = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
    with torch.no_grad():
        expected = model(input_ids, attention_mask)
    assert len(got) == len(OUTPUTS[head])
    for name, value in zip(OUTPUTS[head], got):
        reference = expected[name].numpy()
        assert value.shape == reference.shape, name
        # float32 end to end on O(1) values: ONNX Runtime's reordered sums differ by ~1e-6 (measured <= 2e-6)
        np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-5, err_msg=f"{arch} {head} {name}")
    # the padding changed the padded row, so the mask reached the ONNX graph (not folded as the all-ones example)
    unpadded = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": np.ones_like(input_ids.numpy())})
    assert not np.allclose(unpadded[0][1], got[0][1], atol=1e-3)
    np.testing.assert_allclose(unpadded[0][0], got[0][0], rtol=1e-5, atol=1e-5)


def test_readme_onnx_example_runs(tmp_path, monkeypatch):
    blocks = [block for block in re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
              if "torch.onnx.export" in block]
    assert len(blocks) == 1, "the README should have one ONNX export example"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    # the checkpoint the README's "Use" example saves, here at the tests' tiny size
    config = leanbert.SymBertConfig(**TINY, num_attention_heads=4, attention_mode="pairwise")
    leanbert.SymBertForMaskedLM(config).save_pretrained("tiny-symbert")
    scope = {"__name__": "__readme__"}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    # the graph the example wrote, run here on yet another batch size and length with another padded row: both of its
    # outputs are those of the model the example exported (whose pooler starts from random values, so that model)
    session = onnxruntime.InferenceSession(tmp_path / "model.onnx", providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == OUTPUTS["Model"]
    input_ids = torch.randint(1, config.vocab_size, (4, 17), generator=torch.Generator().manual_seed(5))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 5:] = 0
    input_ids[2, 5:] = config.pad_token_id
    got = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
    with torch.no_grad():
        expected = scope["model"](input_ids, attention_mask)
    for name, value in zip(OUTPUTS["Model"], got):
        np.testing.assert_allclose(value, expected[name].numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
    with torch.no_grad():  # and the padding mattered: the padded row is not the unpadded one's
        unpadded = scope["model"](input_ids, torch.ones_like(attention_mask)).last_hidden_state
    assert not torch.allclose(unpadded[2], expected.last_hidden_state[2], atol=1e-3)
