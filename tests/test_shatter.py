"""Shatter's relative partitions: partition of unity, the exact one-call expansion, and no leak from padding."""

import numpy as np
import pytest
import torch
from scipy.stats import binom
from transformers.masking_utils import create_bidirectional_mask

import leanbert
from conftest import model_class, tiny_config
from leanbert.configuration_shatter import MAX_NUM_PARTS
from leanbert.modeling_shatter import BernsteinPartition, bernstein_parts


def binomial_parts(relative: torch.Tensor, num_parts: int, scale: int) -> torch.Tensor:
    """scipy's binomial pmf: p_k(r) = P[Binomial(P - 1, (r + R) / 2R) = k], the Bernstein basis. (n,) -> (n, P)."""
    t = (relative.double().numpy()[:, None] + scale) / (2 * scale)
    return torch.from_numpy(binom.pmf(np.arange(num_parts), num_parts - 1, t))


@pytest.mark.parametrize("num_parts", [1, 2, 3, 5])
def test_bernstein_parts_are_the_binomial_distribution(num_parts):
    """Against scipy's binomial pmf at every relative distance; the ends are the first and the last unit vector."""
    scale = 511
    relative = torch.arange(-scale, scale + 1)
    parts = bernstein_parts(relative, num_parts, scale)
    torch.testing.assert_close(parts, binomial_parts(relative, num_parts, scale), atol=1e-12, rtol=0)
    unit = torch.eye(num_parts, dtype=torch.float64)
    torch.testing.assert_close(parts[0], unit[0], atol=0, rtol=0)
    torch.testing.assert_close(parts[-1], unit[-1], atol=0, rtol=0)


def test_learned_parts_start_from_bernstein_and_clip():
    """The model's own init against scipy's binomial pmf within the scale; beyond it, against a softmax over the
    first or last row of (random) logits."""
    model = leanbert.ShatterModel(tiny_config("shatter", partition="learned", distance_scale=8, num_parts=3))
    partition = model.encoder.layer[0].attention.self.partition
    relative = torch.arange(-8, 9)
    torch.testing.assert_close(partition(relative).double(), binomial_parts(relative, 3, 8), atol=1e-3, rtol=0)
    with torch.no_grad():
        partition.logits.normal_()
    parts = partition(torch.tensor([-40, 40]))
    torch.testing.assert_close(parts[0], partition.logits[0].softmax(-1))
    torch.testing.assert_close(parts[1], partition.logits[-1].softmax(-1))
    assert not torch.allclose(parts[0], parts[1])


@pytest.mark.parametrize("num_parts", [2, 3, 4])
def test_factorisation_reproduces_the_parts(num_parts):
    partition = BernsteinPartition(num_parts, 64)
    f, g = partition.factors(50, "cpu", torch.float64)
    positions = torch.arange(50)
    expected = partition(positions[None, :] - positions[:, None])  # (L, L, P): p_k(j - i)
    torch.testing.assert_close(torch.einsum("ia,jka->ijk", f, g), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("num_parts", [2, 3, 4])
@pytest.mark.parametrize("normalizer", ["softmax", "sigmoid"])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_one_call_expansion_equals_explicit_sum_over_parts(num_parts, normalizer, implementation):
    """o = Σ_k (A ⊙ P_k)(X V_k), computed here from float64 logits (softmax over valid keys, or sigmoid(s - log
    n_valid)) and the Bernstein parts themselves (checked against scipy above), equals both the eager path (the
    paper's sum) and the factored fast path (SDPA)."""
    torch.manual_seed(0)
    config = tiny_config("shatter", num_parts=num_parts, attention_normalizer=normalizer,
                         attn_implementation=implementation)
    attention = leanbert.ShatterModel(config).eval().encoder.layer[0].attention.self
    x = torch.randn(2, 11, config.hidden_size)
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0
    output, _ = attention(x, create_bidirectional_mask(config=config, inputs_embeds=x, attention_mask=mask))
    logits = attention.reference_logits(x)  # (B, 1, L, L) in float64, written out from the weights
    valid = mask.bool()[:, None, None, :]
    weights = (logits.masked_fill(~valid, float("-inf")).softmax(-1) if normalizer == "softmax" else
               torch.sigmoid(logits - valid.sum(-1, keepdim=True).double().log()) * valid).float()
    positions = torch.arange(11)
    parts = bernstein_parts(positions[None, :] - positions[:, None], num_parts, config.relative_scale).float()
    values = attention.value(x).view(2, 11, num_parts, -1)
    explicit = sum((weights[:, 0] * parts[..., p]) @ values[:, :, p] for p in range(num_parts))
    torch.testing.assert_close(output, explicit, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["shatter", "shatter/learned", "shatter/sigmoid", "sym_bert", "shared_bert"])
def test_no_information_flows_from_padding(arch):
    torch.manual_seed(0)
    model = model_class(arch, "Model")(tiny_config(arch)).eval()
    input_ids = torch.randint(1, 99, (1, 12))
    mask = torch.ones_like(input_ids)
    mask[:, 8:] = 0
    reference = model(input_ids, attention_mask=mask).last_hidden_state[:, :8]
    for _ in range(3):
        noisy = input_ids.clone()
        noisy[:, 8:] = torch.randint(1, 99, (1, 4))  # anything at padded positions
        torch.testing.assert_close(model(noisy, attention_mask=mask).last_hidden_state[:, :8], reference)


def test_bernstein_distance_scale_is_checked_when_the_model_is_built():
    """The config takes any distance_scale; Bernstein parts turn negative for |j - i| > R, so the model refuses
    R < max_position_embeddings - 1 and takes R = max_position_embeddings - 1. Clipping needs no such bound."""
    config = tiny_config("shatter", distance_scale=10)
    with pytest.raises(ValueError, match="distance_scale=10 must be >= max_position_embeddings - 1 = 63"):
        leanbert.ShatterModel(config)
    model = leanbert.ShatterModel(tiny_config("shatter", distance_scale=63)).eval()
    model(torch.randint(1, 99, (1, 64)))
    learned = leanbert.ShatterModel(tiny_config("shatter", partition="learned", distance_scale=10))
    assert learned.config.relative_scale == 10


@pytest.mark.parametrize("length", [512, 4096])
def test_factored_parts_keep_float32_precision_up_to_the_largest_num_parts(length):
    """At the largest num_parts the config allows, the factored Bernstein parts computed in float32 match the parts
    computed directly in float64 within 1e-4, for every relative distance at L = R = 512 and 4096. One part more
    exceeds it at 4096 (1.0e-4), two at 512 (1.1e-4): the bound is the float32 precision, not a margin."""
    partition = BernsteinPartition(MAX_NUM_PARTS, length)
    f, g = partition.factors(length, "cpu", torch.float32)  # (L, P), (L, P, P)
    exact = bernstein_parts(torch.arange(-(length - 1), length), MAX_NUM_PARTS, length)  # (2L - 1, P)
    positions = torch.arange(length)
    for rows in positions.split(512):  # 512 query positions at a time: (512, L, P)
        factored = torch.einsum("ia,jka->ijk", f[rows], g).double()
        direct = exact[positions[None, :] - rows[:, None] + length - 1]  # p_k(j - i)
        assert (factored - direct).abs().max() < 1e-4
