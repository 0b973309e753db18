"""Sparse masked-LM prediction (ModernBERT's `sparse_prediction`): with labels, the head runs on the labelled
positions only, and loss and gradients are those of the dense head."""

import json
import re

import pytest
import torch
from conftest import TINY, model_class, tiny_config
from transformers import AutoConfig

import leanbert

# (row, column) of the labelled positions of conftest's `batch`, all on real tokens (row 1 is padded from 6 on)
LABELLED = ((0, 1), (0, 4), (0, 8), (1, 0), (1, 5))


def masked_lm(arch: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return model_class(arch, "ForMaskedLM")(tiny_config(arch, **overrides)).eval()


def make_labels(input_ids: torch.Tensor, unlabelled: int = -100) -> torch.Tensor:
    labels = torch.full_like(input_ids, unlabelled)
    rows, columns = zip(*LABELLED)
    labels[rows, columns] = (input_ids[rows, columns] * 7 + 3) % TINY["vocab_size"]
    return labels


def run(model, sparse: bool, input_ids, attention_mask, labels):
    """Loss, logits and the gradient of every parameter, with sparse prediction on or off."""
    model.config.sparse_prediction = sparse
    model.zero_grad(set_to_none=True)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    output.loss.backward()
    return output.loss.detach(), output.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_sparse_loss_gradients_and_logits_equal_dense(arch, batch):
    input_ids, attention_mask = batch
    labels = make_labels(input_ids)
    model = masked_lm(arch)
    dense_loss, dense_logits, dense_grads = run(model, False, input_ids, attention_mask, labels)
    sparse_loss, sparse_logits, sparse_grads = run(model, True, input_ids, attention_mask, labels)
    assert dense_logits.shape == (*input_ids.shape, TINY["vocab_size"])
    assert sparse_logits.shape == (len(LABELLED), TINY["vocab_size"])
    torch.testing.assert_close(sparse_logits, dense_logits[labels != -100])
    torch.testing.assert_close(sparse_loss, dense_loss)
    assert sparse_grads.keys() == dense_grads.keys()
    for name, grad in sparse_grads.items():
        torch.testing.assert_close(grad, dense_grads[name], msg=lambda text: f"{name}: {text}")


def test_sparse_pred_ignore_index_marks_the_unlabelled_positions(batch):
    """Positions labelled -1 are left out when `sparse_pred_ignore_index=-1`; the loss is the dense one on -100s."""
    input_ids, attention_mask = batch
    model = masked_lm("sym_bert", sparse_prediction=True, sparse_pred_ignore_index=-1)
    sparse = model(input_ids=input_ids, attention_mask=attention_mask, labels=make_labels(input_ids, -1))
    model.config.sparse_prediction = False
    dense = model(input_ids=input_ids, attention_mask=attention_mask, labels=make_labels(input_ids))
    assert sparse.logits.shape == (len(LABELLED), TINY["vocab_size"])
    torch.testing.assert_close(sparse.loss, dense.loss)


def test_without_labels_logits_are_dense(arch, batch):
    input_ids, attention_mask = batch
    model = masked_lm(arch, sparse_prediction=True)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        model.config.sparse_prediction = False
        reference = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert logits.shape == (*input_ids.shape, TINY["vocab_size"])
    torch.testing.assert_close(logits, reference)


@pytest.mark.parametrize("config_class", [architecture.config_class for architecture in leanbert.ARCHITECTURES])
def test_config_fields_round_trip(config_class, tmp_path):
    assert (config_class().sparse_prediction, config_class().sparse_pred_ignore_index) == (False, -100)
    config_class(sparse_prediction=True, sparse_pred_ignore_index=-1).save_pretrained(tmp_path)
    for load in (config_class.from_pretrained, AutoConfig.from_pretrained):
        loaded = load(tmp_path)
        assert (type(loaded), loaded.sparse_prediction, loaded.sparse_pred_ignore_index) == (config_class, True, -1)


@pytest.mark.parametrize("config_class", [architecture.config_class for architecture in leanbert.ARCHITECTURES])
@pytest.mark.parametrize("field,value", [
    ("sparse_prediction", "yes"), ("sparse_prediction", 1), ("sparse_prediction", None),
    ("sparse_pred_ignore_index", True), ("sparse_pred_ignore_index", -100.0), ("sparse_pred_ignore_index", "-100"),
    ("sparse_pred_ignore_index", None),
])
def test_bad_value_is_refused(config_class, field, value, tmp_path):
    """At construction, on assignment and on loading, as every config field (test_configs.py)."""
    invalid = re.escape(f"{field}={value!r} is invalid; ")
    with pytest.raises(ValueError, match=invalid):
        config_class(**{field: value})
    config = config_class()
    with pytest.raises(ValueError, match=invalid):
        setattr(config, field, value)
    config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(ValueError, match=invalid):
        config_class.from_pretrained(tmp_path)
