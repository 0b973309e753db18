"""Loading on transformers 5: every tensor back as it was saved, in the dtype and on the device asked for.

transformers 5 builds a model on the meta device and re-initialises whatever it believes the checkpoint lacks,
buffers included; a tensor it wrongly re-initialises would load silently changed. So every parameter and buffer
(non-persistent ones too) of every architecture, variant and head is compared bit for bit after a reload.
"""

import copy

import pytest
import torch
import transformers
from transformers import AutoTokenizer

from conftest import ARCHITECTURES, HEADS, model_class, padded_token_batch, real_minilm_path, save_tiny_model
from leanbert.export.bert import outputs

AUTO = {"Model": "AutoModel", **{head: f"AutoModel{head}" for head in HEADS if head != "Model"}}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(real_minilm_path())


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_tensor_reloads_bit_equal(arch, head, tokenizer, tmp_path):
    model = save_tiny_model(arch, head, tmp_path, tokenizer)
    for loaded in (model_class(arch, head).from_pretrained(tmp_path),
                   getattr(transformers, AUTO[head]).from_pretrained(tmp_path)):
        saved, got = tensors(model), tensors(loaded)
        assert sorted(got) == sorted(saved)
        different = [name for name in saved if got[name].dtype != saved[name].dtype
                     or not torch.equal(got[name], saved[name])]
        assert not different, different


@pytest.fixture(scope="module")
def checkpoints(tokenizer, tmp_path_factory):
    """A SymBert masked-LM saved in float32 and the same weights saved in bfloat16."""
    root = tmp_path_factory.mktemp("dtypes")
    model = save_tiny_model("sym_bert", "ForMaskedLM", root / "float32", tokenizer)
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(root / "bfloat16")
    return root, model


def test_dtype_auto_keeps_the_saved_dtype(checkpoints):
    root, model = checkpoints
    batch = padded_token_batch(model.config.vocab_size)
    for dtype in (torch.float32, torch.bfloat16):
        loaded = transformers.AutoModelForMaskedLM.from_pretrained(root / str(dtype).removeprefix("torch."),
                                                                   dtype="auto").eval()
        assert {tensor.dtype for tensor in loaded.parameters()} == {dtype}
        expected = outputs(copy.deepcopy(model).to(dtype), batch)[0]
        for name, value in outputs(loaded, batch)[0].items():
            assert torch.equal(value, expected[name]), (dtype, name)


def test_dtype_bfloat16_casts_a_float32_checkpoint(checkpoints):
    root, model = checkpoints
    loaded = transformers.AutoModelForMaskedLM.from_pretrained(root / "float32", dtype=torch.bfloat16).eval()
    cast = copy.deepcopy(model).to(torch.bfloat16)
    assert all(torch.equal(value, tensors(cast)[name]) for name, value in tensors(loaded).items()
               if value.is_floating_point())
    batch = padded_token_batch(model.config.vocab_size)
    expected = outputs(cast, batch)[0]
    for name, value in outputs(loaded, batch)[0].items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, expected[name]), name


def test_device_map_auto_places_and_runs_it(checkpoints):
    root, model = checkpoints
    loaded = transformers.AutoModelForMaskedLM.from_pretrained(root / "float32", device_map="auto").eval()
    assert all(tensor.device.type == "cpu" for tensor in tensors(loaded).values())
    batch = padded_token_batch(model.config.vocab_size)
    expected = outputs(model, batch)[0]
    for name, value in outputs(loaded, batch)[0].items():
        torch.testing.assert_close(value, expected[name], atol=1e-6, rtol=0, msg=name)
