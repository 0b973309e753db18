"""One tester per declared architecture (the suite is `architecture_tester.ArchitectureTester`): each writes out,
from its paper, the parameter count of its self-attention, its FLOPs and its attention logits."""

import torch

import leanbert
from architecture_tester import ArchitectureTester, linear_parameters


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:  # (n, L, d) -> (n, H, L, d / H)
    return x.reshape(x.shape[0], x.shape[1], heads, -1).permute(0, 2, 1, 3)


def scores(batch_size: int, seq_len: int, d: int) -> int:
    """q·kᵀ (or a·v) over all heads: B × L × L × d multiply-adds."""
    return 2 * batch_size * seq_len * seq_len * d


class TestSymBert(ArchitectureTester):
    """s_ij = q_i B_h q_jᵀ / sqrt(d_h), q = x W + b shared by query and key (arXiv 2406.06366)."""

    model_type = "sym_bert"
    output_projection = True

    def attention_parameters(self, config) -> int:
        d, heads = config.hidden_size, config.num_attention_heads
        pairwise = heads * (d // heads) ** 2 if config.attention_mode == "pairwise" else 0
        return 2 * linear_parameters(d, d) + pairwise  # query_key, value, B_h

    def attention_flops(self, config, batch_size: int, seq_len: int) -> int:
        n, d = batch_size * seq_len, config.hidden_size
        pairwise = 2 * n * d * (d // config.num_attention_heads) if config.attention_mode == "pairwise" else 0
        return 2 * (2 * n * d * d) + 2 * scores(batch_size, seq_len, d) + pairwise

    def logits(self, attention, x):
        w, b = attention.query_key.weight.double(), attention.query_key.bias.double()
        heads = attention.config.num_attention_heads
        q = split_heads(torch.einsum("nld,ed->nle", x, w) + b, heads)
        pairwise = (torch.eye(q.shape[-1], dtype=torch.float64).expand(heads, -1, -1)
                    if attention.pairwise is None else attention.pairwise.double())
        return torch.einsum("nhia,hab,nhjb->nhij", q, pairwise, q) / q.shape[-1] ** 0.5


class TestSharedBert(ArchitectureTester):
    """q = s ⊙ d_q, k = s ⊙ d_k, v = s ⊙ d_v with s = x W_s + b_s (arXiv 2412.00359)."""

    model_type = "shared_bert"
    output_projection = True

    def attention_parameters(self, config) -> int:
        return linear_parameters(config.hidden_size, config.hidden_size) + 3 * config.hidden_size

    def attention_flops(self, config, batch_size: int, seq_len: int) -> int:
        d = config.hidden_size
        return 2 * batch_size * seq_len * d * d + 2 * scores(batch_size, seq_len, d)

    def logits(self, attention, x):
        s = torch.einsum("nld,ed->nle", x, attention.shared.weight.double()) + attention.shared.bias.double()
        heads = attention.config.num_attention_heads
        q = split_heads(s * attention.query_scale.double(), heads)
        k = split_heads(s * attention.key_scale.double(), heads)
        return torch.einsum("nhia,nhja->nhij", q, k) / q.shape[-1] ** 0.5


class TestShatter(ArchitectureTester):
    """One head; o_i = Σ_k Σ_j a_ij p_k(j - i) V_k x_j (arXiv 2108.13032), keys the input unless projected."""

    model_type = "shatter"
    output_projection = False  # folded into the P value matrices

    def attention_parameters(self, config) -> int:
        d, parts = config.hidden_size, config.num_parts
        learned = (2 * config.relative_scale + 1) * parts if config.partition == "learned" else 0
        return (1 + config.key_projection) * linear_parameters(d, d) + linear_parameters(d, parts * d) + learned

    def attention_flops(self, config, batch_size: int, seq_len: int) -> int:
        n, d, parts = batch_size * seq_len, config.hidden_size, config.num_parts
        projections = 2 * n * d * d * (1 + config.key_projection) + 2 * n * d * parts * d
        if config.partition == "learned" or config._attn_implementation in (None, "eager"):
            return projections + scores(batch_size, seq_len, d) * (1 + parts)  # A, then P products (A ⊙ P_k) X V_k
        # factored: the factors g, g·V per token, one a·v with P·d-wide values, f·mixed per token
        return (projections + scores(batch_size, seq_len, d) * (1 + parts) + 2 * seq_len * parts**3
                + 2 * n * parts * parts * d + 2 * n * parts * d)

    def logits(self, attention, x):
        q = torch.einsum("nld,ed->nle", x, attention.query.weight.double()) + attention.query.bias.double()
        k = x if attention.key is None else (torch.einsum("nld,ed->nle", x, attention.key.weight.double())
                                             + attention.key.bias.double())
        return (torch.einsum("nid,njd->nij", q, k) / x.shape[-1] ** 0.5)[:, None]


def test_every_architecture_has_a_tester():
    """A newly declared architecture fails here until it supplies its tester."""
    testers = {tester.model_type for tester in ArchitectureTester.__subclasses__()}
    assert {architecture.model_type for architecture in leanbert.ARCHITECTURES} <= testers
