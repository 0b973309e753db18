"""Behaviour of every architecture's model family, on tiny random configs."""

import math

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    BertModel,
)
from transformers.masking_utils import create_bidirectional_mask

import leanbert
import test_architectures
from architecture_tester import ArchitectureTester
from conftest import ARCHITECTURES, HEADS, model_class, num_heads, tiny_config

# each architecture's tester (tests/test_architectures.py), for its attention logits written out from the paper
TESTERS = {tester.model_type: tester() for tester in ArchitectureTester.__subclasses__()}
assert test_architectures  # imported for its testers
AUTO_CLASSES = dict(zip(HEADS, (AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification,
                                AutoModelForTokenClassification, AutoModelForQuestionAnswering,
                                AutoModelForMultipleChoice)))


def build(arch, head="Model", **overrides):
    torch.manual_seed(0)
    return model_class(arch, head)(tiny_config(arch, **overrides)).eval()


def test_padding_does_not_change_real_tokens(arch, batch):
    input_ids, attention_mask = batch
    model = build(arch)
    padded = model(input_ids, attention_mask=attention_mask).last_hidden_state
    alone = model(input_ids[1:, :6]).last_hidden_state
    torch.testing.assert_close(padded[1, :6], alone[0], atol=1e-5, rtol=1e-5)


# Shatter's learned partition always computes the paper's sum over parts, with an explicit n x n attention matrix,
# and its sigmoid normalizer's fast path builds that matrix too (sigmoid is elementwise): neither calls a kernel.
NO_ATTENTION_INTERFACE = {"shatter/learned", "shatter/sigmoid"}


def count_sdpa_calls(monkeypatch) -> list:
    """Wrap torch's scaled_dot_product_attention (which transformers' sdpa path calls) in a call counter."""
    calls, sdpa = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *args, **kwargs: calls.append(1) or sdpa(*args, **kwargs))
    return calls


def test_eager_and_sdpa_agree(arch, batch, monkeypatch):
    """sdpa runs torch's fused kernel once per layer (counted), eager never; their outputs agree (for Shatter with
    Bernstein parts: the factored fast path against the paper's sum over parts)."""
    input_ids, attention_mask = batch
    calls = count_sdpa_calls(monkeypatch)
    eager = build(arch, attn_implementation="eager")
    sdpa = build(arch, attn_implementation="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    real = attention_mask.bool()
    out_eager = eager(input_ids, attention_mask=attention_mask).last_hidden_state[real]
    assert len(calls) == 0
    out_sdpa = sdpa(input_ids, attention_mask=attention_mask).last_hidden_state[real]
    assert len(calls) == (0 if arch in NO_ATTENTION_INTERFACE else sdpa.config.num_hidden_layers)
    torch.testing.assert_close(out_eager, out_sdpa, atol=1e-5, rtol=1e-5)


def test_set_attn_implementation_switches_kernel(arch, batch, monkeypatch):
    """Counted calls of torch's fused kernel: one per layer before the switch to eager, none after."""
    input_ids, attention_mask = batch
    calls = count_sdpa_calls(monkeypatch)
    model = build(arch)
    model(input_ids, attention_mask=attention_mask)
    assert len(calls) == (0 if arch in NO_ATTENTION_INTERFACE else model.config.num_hidden_layers)
    calls.clear()
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    model(input_ids, attention_mask=attention_mask)
    assert len(calls) == 0


def test_every_parameter_gets_a_gradient(arch, batch):
    input_ids, attention_mask = batch
    model = build(arch, "ForMaskedLM").train()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    model(input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
    model_seq = build(arch, "ForSequenceClassification").train()
    model_seq(input_ids, attention_mask=attention_mask, labels=torch.tensor([0, 1])).loss.backward()
    for m in (model, model_seq):
        missing = [name for name, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"no gradient reaches {missing}"


def test_output_attentions_and_hidden_states(arch, batch):
    """Against float64 logits written out from the weights by the architecture's tester, normalized here over the
    valid keys; hidden states against the embeddings and the first layer called directly."""
    input_ids, attention_mask = batch
    model = build(arch, attn_implementation="eager")
    out = model(input_ids, attention_mask=attention_mask, output_attentions=True, output_hidden_states=True)
    config = model.config
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert len(out.attentions) == config.num_hidden_layers
    torch.testing.assert_close(out.hidden_states[0], model.embeddings(input_ids))
    mask = create_bidirectional_mask(config=config, inputs_embeds=out.hidden_states[0], attention_mask=attention_mask)
    torch.testing.assert_close(out.hidden_states[1], model.encoder.layer[0](out.hidden_states[0], mask))
    layer0 = model.encoder.layer[0].attention.self
    logits = TESTERS[config.model_type].logits(layer0, out.hidden_states[0].double())
    expected = reference_weights(logits, attention_mask,
                                 getattr(config, "attention_normalizer", "softmax"))
    assert out.attentions[0].shape == expected.shape == (2, num_heads(config), 9, 9)
    torch.testing.assert_close(out.attentions[0].double(), expected, atol=1e-6, rtol=1e-5)


def reference_weights(logits: torch.Tensor, attention_mask: torch.Tensor, normalizer: str) -> torch.Tensor:
    """softmax over the valid keys, or sigmoid(logit - log n_valid) on them and 0 on padding."""
    valid = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L)
    if normalizer == "softmax":
        return logits.masked_fill(~valid, float("-inf")).softmax(-1)
    return torch.sigmoid(logits - valid.sum(-1, keepdim=True).double().log()) * valid


def test_symmetric_mode_gives_symmetric_scores(batch):
    input_ids, _ = batch
    model = build("sym_bert/symmetric", attn_implementation="eager")
    weights = model(input_ids, output_attentions=True).attentions[0]  # softmax of a symmetric matrix S
    logits = weights.log()  # S_ij - logsumexp_i, so S_ij - S_ji = log w_ij - log w_ji + c_i - c_j
    asym = logits - logits.transpose(-1, -2)
    row_term = (asym - asym.mean(-1, keepdim=True))  # removes c_i; what is left must be antisymmetric c_j
    torch.testing.assert_close(row_term, row_term[..., :1, :].expand_as(row_term), atol=1e-4, rtol=1e-4)


def test_token_types_and_positions_matter(arch, batch):
    input_ids, _ = batch
    model = build(arch)
    base = model(input_ids).last_hidden_state
    torch.testing.assert_close(model(input_ids, position_ids=torch.arange(9)[None]).last_hidden_state, base)
    assert not torch.allclose(model(input_ids, token_type_ids=torch.ones_like(input_ids)).last_hidden_state, base)
    shifted = model(input_ids, position_ids=torch.arange(9)[None] + 3).last_hidden_state
    if model.embeddings.position_embeddings is not None:
        assert not torch.allclose(shifted, base)
    reversed_order = model(input_ids.flip(1)).last_hidden_state.flip(1)
    assert not torch.allclose(reversed_order, base, atol=1e-4), "the model cannot tell word order"


def test_inputs_embeds_equal_input_ids(arch, batch):
    input_ids, attention_mask = batch
    model = build(arch)
    embeds = model.get_input_embeddings()(input_ids)
    torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state,
                               model(input_ids, attention_mask=attention_mask).last_hidden_state)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model(input_ids, inputs_embeds=embeds)


def test_activation_checkpointing_gives_same_gradients(arch, batch):
    """A forward hook counts attention calls: checkpointing recomputes the layer in backward (2 calls a step, not
    1), and the gradients equal those without it."""
    input_ids, attention_mask = batch
    grads = []
    for checkpointing in (False, True):
        model = build(arch, "ForMaskedLM").train()
        if checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
        calls = []
        model.base_model.encoder.layer[0].attention.register_forward_hook(lambda *_: calls.append(1))
        model(input_ids, attention_mask=attention_mask, labels=input_ids).loss.backward()
        assert len(calls) == (2 if checkpointing else 1)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_torch_compile_matches_eager_mode(arch, batch):
    input_ids, attention_mask = batch
    model = build(arch)
    reference = model(input_ids, attention_mask=attention_mask).last_hidden_state
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(input_ids, attention_mask=attention_mask).last_hidden_state, reference,
                               atol=1e-5, rtol=1e-5)


def test_bf16(arch, batch):
    input_ids, attention_mask = batch
    model = build(arch)
    reference = model(input_ids, attention_mask=attention_mask).last_hidden_state
    bf16 = model.to(torch.bfloat16)(input_ids, attention_mask=attention_mask).last_hidden_state
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), reference, atol=0.1, rtol=0.05)


def test_save_and_load_give_identical_outputs(arch, batch, tmp_path):
    input_ids, attention_mask = batch
    model = build(arch, "ForMaskedLM")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight, "decoder not tied"
    torch.testing.assert_close(loaded(input_ids, attention_mask=attention_mask).logits,
                               model(input_ids, attention_mask=attention_mask).logits, atol=0, rtol=0)


@pytest.mark.parametrize("head", HEADS)
def test_auto_classes_resolve_every_head(arch, head):
    config = tiny_config(arch)
    assert type(AutoConfig.for_model(config.model_type)) is type(config)
    model = AUTO_CLASSES[head].from_config(config)
    assert type(model) is model_class(arch, head)


def test_checkpoint_config_has_full_auto_map_and_code(arch, tmp_path):
    build(arch, "ForTokenClassification").save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    prefix = ARCHITECTURES[arch][0].name
    assert set(config.auto_map) == {"AutoConfig", *(auto.__name__ for auto in AUTO_CLASSES.values())}
    assert config.auto_map["AutoModelForMultipleChoice"].endswith(f".{prefix}ForMultipleChoice")
    for entry in config.auto_map.values():
        assert (tmp_path / (entry.split(".")[0] + ".py")).exists()
    assert (tmp_path / "modeling_encoder.py").exists() and (tmp_path / "configuration_encoder.py").exists()


@pytest.mark.parametrize("problem_type,labels", [
    ("regression", torch.tensor([0.5, -1.0])),
    ("single_label_classification", torch.tensor([0, 2])),
    ("multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])),
])
def test_sequence_classification_losses(arch, batch, problem_type, labels):
    input_ids, attention_mask = batch
    num_labels = 1 if problem_type == "regression" else 3
    model = build(arch, "ForSequenceClassification", num_labels=num_labels, problem_type=problem_type)
    out = model(input_ids, attention_mask=attention_mask, labels=labels)
    loss_fns = {
        "regression": lambda: torch.nn.functional.mse_loss(out.logits.squeeze(-1), labels),
        "single_label_classification": lambda: torch.nn.functional.cross_entropy(out.logits, labels),
        "multi_label_classification": lambda: torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels),
    }
    assert out.logits.shape == (2, num_labels)
    torch.testing.assert_close(out.loss, loss_fns[problem_type]())


def test_token_classification_question_answering_multiple_choice(arch, batch):
    input_ids, attention_mask = batch
    tokens = build(arch, "ForTokenClassification", num_labels=5)
    labels = torch.randint(0, 5, input_ids.shape).masked_fill(attention_mask == 0, -100)
    out = tokens(input_ids, attention_mask=attention_mask, labels=labels)
    assert out.logits.shape == (2, 9, 5)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), labels.flatten()))

    qa = build(arch, "ForQuestionAnswering")
    out = qa(input_ids, attention_mask=attention_mask, start_positions=torch.tensor([1, 2]),
             end_positions=torch.tensor([3, 40]))  # 40 is out of range: ignored
    expected = (torch.nn.functional.cross_entropy(out.start_logits, torch.tensor([1, 2]))
                + torch.nn.functional.cross_entropy(out.end_logits[:1], torch.tensor([3]))) / 2
    torch.testing.assert_close(out.loss, expected)

    choice = build(arch, "ForMultipleChoice")
    choices = torch.stack([input_ids, input_ids.flip(0), input_ids.roll(1, dims=1)], dim=1)  # (B, C=3, L)
    out = choice(choices, attention_mask=attention_mask[:, None].expand(-1, 3, -1), labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 2])))


def test_shared_bert_attention_block_shrinks_by_two_thirds():
    """Against transformers' BertModel at base size: its query + key + value against SharedBert's one module."""
    with torch.device("meta"):
        bert = BertModel(BertConfig()).encoder.layer[0].attention.self
        shared = leanbert.SharedBertModel(leanbert.SharedBertConfig()).encoder.layer[0].attention.self
    bert_qkv = sum(p.numel() for module in (bert.query, bert.key, bert.value) for p in module.parameters())
    saving = 1 - sum(p.numel() for p in shared.parameters()) / bert_qkv  # 0.665366...
    assert math.floor(saving * 10_000) / 100 == 66.53  # README and paper: 66.53%, truncated (66.54 rounded)


def test_shared_bert_attention_follows_the_paper_equations():
    """q = s ⊙ d_q, k = s ⊙ d_k, v = s ⊙ d_v with s = x W_s + b_s, written out per head, against the module."""
    torch.manual_seed(0)
    config = tiny_config("shared_bert", attn_implementation="eager")
    attention = leanbert.SharedBertModel(config).encoder.layer[0].attention.self
    with torch.no_grad():
        for scale in (attention.query_scale, attention.key_scale, attention.value_scale):
            scale.copy_(torch.randn_like(scale))  # mixed signs, away from the ones they start at
    x = torch.randn(2, 7, config.hidden_size)
    s = attention.shared(x)
    heads = config.num_attention_heads
    q, k, v = ((s * scale).view(2, 7, heads, -1).transpose(1, 2)
               for scale in (attention.query_scale, attention.key_scale, attention.value_scale))
    expected = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v).transpose(1, 2).flatten(2)
    torch.testing.assert_close(attention(x)[0], expected, atol=1e-5, rtol=1e-5)


def test_heads_must_divide_hidden_size(arch):
    """The config takes any pair (as BertConfig does); building the model refuses one that does not divide."""
    config = tiny_config(arch, hidden_size=30)
    if not ARCHITECTURES[arch][0].has_heads:  # one head of any width
        assert not hasattr(config, "num_attention_heads")
        assert model_class(arch, "Model")(config).config.hidden_size == 30
    else:
        with pytest.raises(ValueError, match="hidden_size=30 must be a multiple of num_attention_heads=4"):
            model_class(arch, "Model")(config)


def test_pad_token_id_must_be_in_the_vocabulary(arch):
    config = tiny_config(arch, pad_token_id=99)  # the config takes it, as BertConfig does
    with pytest.raises(ValueError, match="pad_token_id=99 must be below vocab_size=99"):
        model_class(arch, "Model")(config)


def test_sequences_stop_at_max_position_embeddings(arch):
    """Every architecture, also Shatter without absolute positions, accepts L = max_position_embeddings and
    refuses one token more with an error naming both (BERT fails later with a shape mismatch)."""
    model = build(arch)
    limit = model.config.max_position_embeddings
    input_ids = torch.randint(1, 99, (1, limit + 1))
    assert model(input_ids[:, :limit]).last_hidden_state.shape == (1, limit, model.config.hidden_size)
    message = f"sequence length {limit + 1} exceeds max_position_embeddings={limit}"
    with pytest.raises(ValueError, match=message):
        model(input_ids)
    with pytest.raises(ValueError, match=message):
        model(inputs_embeds=model.get_input_embeddings()(input_ids))


@pytest.mark.parametrize("arch", ["sym_bert", "shared_bert", "shatter"])
def test_torch_export_with_dynamic_sequence_length(arch):
    """The length check is a shape guard: export keeps the sequence dimension dynamic up to the limit, the exported
    program refuses longer inputs, and a range beyond the limit is refused at export."""
    model = build(arch)
    limit = model.config.max_position_embeddings
    input_ids = torch.randint(1, 99, (2, limit + 1))
    length = torch.export.Dim("length", min=2, max=limit)
    exported = torch.export.export(model, (), {"input_ids": input_ids[:, :9]},
                                   dynamic_shapes={"input_ids": {1: length}}).module()
    for n in (5, limit):
        torch.testing.assert_close(exported(input_ids=input_ids[:, :n]).last_hidden_state,
                                   model(input_ids[:, :n]).last_hidden_state, atol=1e-5, rtol=1e-5)
    with pytest.raises(Exception, match=f"size\\(\\)\\[1\\] <= {limit}"):  # the exported program's guard
        exported(input_ids=input_ids)
    with pytest.raises(Exception, match=f"(?s)Constraints violated.* <= {limit}"):
        torch.export.export(model, (), {"input_ids": input_ids[:, :9]},
                            dynamic_shapes={"input_ids": {1: torch.export.Dim("length", max=limit + 1)}})


def test_pairwise_init_follows_config(batch):
    model = build("sym_bert", pairwise_init_std=0.5)
    pairwise = torch.cat([layer.attention.self.pairwise.flatten() for layer in model.encoder.layer])
    assert abs(pairwise.std().item() - 0.5) < 0.1
