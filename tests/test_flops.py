"""bench/flops.py against torch's own FLOP counter: for tiny configs of BERT and every declared architecture and
variant (and Shatter's other partition, normalizer and key options), at two sequence lengths, the analytic count
equals what `torch.utils.flop_counter.FlopCounterMode` counts on an actual forward pass, and on forward plus
backward, exactly.

Counted attention runs as plain matmuls, which the counter sees (CPU SDPA runs a fused kernel that the counter has
no formula for, so it would count nothing for attention): "eager", each model's reference path (Shatter: the
paper's sum over parts), and "eager_math", an attention implementation registered here that computes what SDPA
computes with eager's matmuls, so that Shatter takes the factored fast path that the benchmarks run under SDPA. The
counter follows the same rules as flops.py (2·m·n·k per product, elementwise operations free), so exact equality is
the check that the analytic model has every product of the real forward, with the right shape.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AttentionInterface, BertConfig, BertForMaskedLM, BertModel

import leanbert
from bench import flops
from leanbert.modeling_encoder import eager_attention_forward

AttentionInterface.register("eager_math", eager_attention_forward)
FIELDS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99,
              max_position_embeddings=64)
SHATTER = next(architecture for architecture in leanbert.ARCHITECTURES if architecture.name == "Shatter")
# every declared model by its benchmark name, and Shatter's other options as (Architecture, extra fields)
CASES = {**{name: (name, {}) for name in flops.MODELS},
         "Shatter learned": (SHATTER, {"partition": "learned", "distance_scale": 8}),
         "Shatter sigmoid, key, P=3": (SHATTER, {"attention_normalizer": "sigmoid", "key_projection": True,
                                                  "num_parts": 3})}


# every declared model by its benchmark name, from the declarations themselves (not from flops.py, whose config
# for a name is what is tested): name -> (Architecture, or None for BERT; the variant's config fields)
DECLARED = {flops.REFERENCE: (None, {}),
            **{architecture.variant_label(variant): (architecture, extra) for architecture in leanbert.ARCHITECTURES
               for variant, extra in architecture.variants.items()}}


def test_flops_counts_every_declared_model():
    assert list(flops.MODELS) == list(DECLARED)


def build(model, fields: dict, head: str, implementation: str = "eager_math") -> torch.nn.Module:
    """`head` "Model" (bare encoder, no pooler) or "ForMaskedLM", with attention computed as plain matmuls; built
    from the declaration, independently of `flops.config_of`."""
    architecture, extra = DECLARED[model] if isinstance(model, str) else (model, {})
    config = (architecture.config_class if architecture else BertConfig)(**fields, **extra)
    config._attn_implementation = implementation
    if architecture is None:
        return BertModel(config, add_pooling_layer=False) if head == "Model" else BertForMaskedLM(config)
    cls = architecture.classes["AutoModel" if head == "Model" else "AutoModelForMaskedLM"]
    return cls(config, add_pooling_layer=False) if head == "Model" else cls(config)


def counted(module: torch.nn.Module, input_ids: torch.Tensor, backward: bool) -> int:
    with FlopCounterMode(display=False) as counter:
        output = module(input_ids=input_ids)
        if backward:
            (output[0].pow(2).mean()).backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seq_len", [7, 16])
def test_encoder_flops_match_flop_counter(case, seq_len):
    """What the benchmarks count (SDPA configs) is what the fast path runs; the eager path is counted too."""
    model, extra = CASES[case]
    fields, batch = {**FIELDS, **extra}, 3
    torch.manual_seed(0)
    module = build(model, fields, "Model")
    input_ids = torch.randint(1, FIELDS["vocab_size"], (batch, seq_len))
    assert counted(module, input_ids, backward=False) == flops.forward_flops(model, fields, seq_len, batch)
    assert counted(module, input_ids, backward=True) == flops.training_flops(model, fields, seq_len, batch)
    assert flops.forward_flops_per_token(model, fields, seq_len, batch) == pytest.approx(
        flops.forward_flops(model, fields, seq_len, batch) / (batch * seq_len))
    eager = build(model, fields, "Model", implementation="eager")
    products = flops.matmuls(eager.config, seq_len, batch)
    assert counted(eager, input_ids, backward=False) == sum(count for count, _ in products)
    assert counted(eager, input_ids, backward=True) == sum(count * (1 + grads) for count, grads in products)


@pytest.mark.parametrize("name", sorted(flops.MODELS))
def test_mlm_head_flops_match_flop_counter(name):
    torch.manual_seed(0)
    module = build(name, FIELDS, "ForMaskedLM")
    input_ids = torch.randint(1, FIELDS["vocab_size"], (2, 9))
    assert counted(module, input_ids, backward=True) == flops.training_flops(name, FIELDS, 9, 2, mlm_head=True)


def test_training_is_three_forwards_except_shatter_factors():
    """At BERT-base shape the training step is exactly 3× the forward for the models whose products all have two
    trainable operands, and within 0.1% of it for Shatter (its fixed partition factors need no gradient)."""
    base = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    for name in flops.MODELS:
        forward, training = flops.forward_flops(name, base, 512, 2), flops.training_flops(name, base, 512, 2)
        if name.startswith("Shatter"):
            assert 0.999 * 3 * forward < training < 3 * forward
        else:
            assert training == 3 * forward
