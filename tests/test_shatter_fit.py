"""The BERT → Shatter warm start (`leanbert.conversion.shatter_fit`) on tiny random layers and activations."""

import pytest
import torch
from transformers import BertConfig, BertModel

import leanbert
from conftest import attention_block_mse, layer_activations
from leanbert.conversion.metrics import attention_logit_rel_error
from leanbert.conversion.shatter_fit import closed_form, fit_shatter_attention

D, HEADS = 32, 4


def layer_pair(key_projection: bool = False):
    """A random 4-head BERT attention block (teacher), its biases non-zero too, and a Shatter one (student)."""
    torch.manual_seed(0)
    fields = dict(vocab_size=50, hidden_size=D, num_hidden_layers=1, intermediate_size=48,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    teacher = BertModel(BertConfig(**fields, num_attention_heads=HEADS, initializer_range=0.2)).eval()
    student = leanbert.ShatterModel(leanbert.ShatterConfig(**fields, key_projection=key_projection))
    teacher = teacher.encoder.layer[0].attention
    with torch.no_grad():
        for linear in (teacher.self.query, teacher.self.key, teacher.self.value, teacher.output.dense):
            linear.bias.normal_(std=0.5)
    return teacher, student.encoder.layer[0].attention


@pytest.mark.parametrize("key_projection", [False, True])
def test_closed_form_logits_are_the_mean_of_the_teacher_heads(key_projection):
    """Against the logits written out from both modules' weights (`metrics.attention_logits`), row constants aside."""
    teacher, student = layer_pair(key_projection)
    hidden, mask = layer_activations(D)
    closed_form(teacher, student)
    assert attention_logit_rel_error(teacher, student, hidden, mask) < 1e-6  # measured 2e-8


def test_teacher_with_identical_heads_is_reproduced():
    """When BERT's heads share one attention map, one Shatter map and equal parts reproduce the block exactly:
    the reported held-out MSE and the MSE of the blocks' own forward on every sequence are at rounding level."""
    teacher, student = layer_pair()
    head = D // HEADS
    with torch.no_grad():
        for linear in (teacher.self.query, teacher.self.key):
            linear.weight.copy_(linear.weight[:head].repeat(HEADS, 1))
            linear.bias.copy_(linear.bias[:head].repeat(HEADS))
    hidden, mask = layer_activations(D)
    stats = fit_shatter_attention(teacher, student, hidden, mask, refine_steps=0)
    assert stats["output_mse_before"] < 1e-10
    assert attention_block_mse(teacher, student, hidden, mask) < 1e-10  # measured 2e-14
