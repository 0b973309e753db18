"""A fourth architecture needs three files and no other edit: a config, a modeling file and one entry in
`architectures.py`. Declared here inside a copy of the package (plain BERT attention under the name ToyBert), it
must be registered with the Auto classes, save a full `auto_map`, load as remote code, pass the per-architecture
suite (`architecture_tester.py`) with its own tester, and be counted by bench/flops.py and bench_parameters.py and
described by the model card, all without any other file changed."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import leanbert
from architecture_tester import ArchitectureTester

REPO = Path(__file__).resolve().parents[1]

CONFIG = '''
"""Configuration of ToyBert: BERT's attention under another name, to test that a declaration is all it takes."""

from .configuration_encoder import LeanEncoderConfig, integer


class ToyBertConfig(LeanEncoderConfig):
    model_type = "toy_bert"
    output_projection = True

    num_attention_heads: int = 12

    field_rules = {**LeanEncoderConfig.field_rules, "num_attention_heads": integer()}
'''

MODELING = '''
"""ToyBert: BERT's own self-attention, softmax(q k^T / sqrt(d_h)) v."""

import torch
from torch import nn

from .configuration_toy_bert import ToyBertConfig
from .modeling_encoder import (LeanForMaskedLM, LeanForMultipleChoice, LeanForQuestionAnswering,
                               LeanForSequenceClassification, LeanForTokenClassification, LeanModel,
                               LeanPreTrainedModel, LeanSelfAttention, eager_attention_forward, head_size,
                               linear_flops, scores_flops, split_heads)
from .transformers_compat import ALL_ATTENTION_FUNCTIONS


class ToyBertSelfAttention(LeanSelfAttention):
    def __init__(self, config):
        super().__init__()
        self.config, self.head_size = config, head_size(config)
        self.scaling, self.is_causal = self.head_size**-0.5, False
        self.query, self.key, self.value = (nn.Linear(config.hidden_size, config.hidden_size) for _ in range(3))
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        shape = (*hidden_states.shape[:-1], -1, self.head_size)
        q, k, v = (layer(hidden_states).view(shape).transpose(1, 2) for layer in (self.query, self.key, self.value))
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        context, weights = attention_interface(self, q, k, v, attention_mask, scaling=self.scaling,
                                               dropout=self.dropout.p if self.training else 0.0, **kwargs)
        return context.reshape(*hidden_states.shape[:-1], -1), weights

    def reference_logits(self, x):
        x, heads = x.double(), self.config.num_attention_heads
        q = split_heads(x @ self.query.weight.double().T + self.query.bias.double(), heads)
        k = split_heads(x @ self.key.weight.double().T + self.key.bias.double(), heads)
        return q @ k.transpose(-1, -2) * self.scaling

    @classmethod
    def forward_matmuls(cls, config, batch_size, seq_len):
        d = config.hidden_size
        return [linear_flops(batch_size * seq_len, d, d)] * 3 + [scores_flops(batch_size, seq_len, d)] * 2

    @torch.no_grad()
    def bert_projections(self):
        return {f"{name}.{part}": getattr(getattr(self, name), part).clone()
                for name in ("query", "key", "value") for part in ("weight", "bias")}


class ToyBertPreTrainedModel(LeanPreTrainedModel):
    config: ToyBertConfig
    config_class = ToyBertConfig
    base_model_prefix = "toy_bert"
    attention_class = ToyBertSelfAttention


class ToyBertModel(LeanModel, ToyBertPreTrainedModel):
    pass


class ToyBertForMaskedLM(LeanForMaskedLM, ToyBertPreTrainedModel):
    base_model_class = ToyBertModel


class ToyBertForSequenceClassification(LeanForSequenceClassification, ToyBertPreTrainedModel):
    base_model_class = ToyBertModel


class ToyBertForTokenClassification(LeanForTokenClassification, ToyBertPreTrainedModel):
    base_model_class = ToyBertModel


class ToyBertForQuestionAnswering(LeanForQuestionAnswering, ToyBertPreTrainedModel):
    base_model_class = ToyBertModel


class ToyBertForMultipleChoice(LeanForMultipleChoice, ToyBertPreTrainedModel):
    base_model_class = ToyBertModel


__all__ = ["ToyBertForMaskedLM", "ToyBertForMultipleChoice", "ToyBertForQuestionAnswering",
           "ToyBertForSequenceClassification", "ToyBertForTokenClassification", "ToyBertModel",
           "ToyBertPreTrainedModel"]
'''

ENTRY = '''    Architecture(configuration_toy_bert.ToyBertConfig, modeling_toy_bert, arxiv="1810.04805",
                 title="BERT's multi-head attention under another name", lora_target_modules=("query", "value"),
                 conversion=None),
'''


def declare(architectures: Path) -> None:
    """Add the toy's entry at the end of the `ARCHITECTURES` tuple, and the import of its two files."""
    text = architectures.read_text()
    text = text.replace("\n\n\n", "\nfrom . import configuration_toy_bert, modeling_toy_bert  # noqa: E402\n\n\n", 1)
    start = text.index("ARCHITECTURES: tuple[Architecture, ...] = (")
    end = text.index("\n)\n", start) + 1
    architectures.write_text(text[:end] + ENTRY + text[end:])


# The toy's tester, written like the others in tests/test_architectures.py, and what bench and the card make of it
TOY_TESTS = '''
import torch
from transformers import BertConfig

import leanbert
from architecture_tester import ArchitectureTester, linear_parameters
from bench import bench_parameters, flops


def test_the_copy_is_what_runs():
    assert leanbert.__file__.startswith(TOY_ROOT), leanbert.__file__
    assert [a.model_type for a in leanbert.ARCHITECTURES][-1] == "toy_bert"


class TestToyBert(ArchitectureTester):
    model_type = "toy_bert"
    output_projection = True

    def attention_parameters(self, config):
        return 3 * linear_parameters(config.hidden_size, config.hidden_size)

    def attention_flops(self, config, batch_size, seq_len):
        d, n = config.hidden_size, batch_size * seq_len
        return 3 * 2 * n * d * d + 2 * 2 * batch_size * seq_len * seq_len * d

    def logits(self, attention, x):
        heads = attention.config.num_attention_heads
        q = torch.einsum("nld,ed->nle", x, attention.query.weight.double()) + attention.query.bias.double()
        k = torch.einsum("nld,ed->nle", x, attention.key.weight.double()) + attention.key.bias.double()
        q, k = (t.reshape(*t.shape[:2], heads, -1).transpose(1, 2) for t in (q, k))
        return q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5


def test_bench_counts_it_as_bert():
    fields = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
    assert "ToyBert" in flops.MODELS
    assert flops.training_flops("ToyBert", fields, 32, 2) == flops.training_flops("BertModel", fields, 32, 2)
    rows = {name: model.num_parameters() for name, _, _, _, model in bench_parameters.models(
        {**fields, "vocab_size": 99, "max_position_embeddings": 64, "type_vocab_size": 2})}
    assert rows["ToyBert"] == rows["BertModel"]
'''


def test_a_fourth_architecture_needs_three_files(tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(Path(leanbert.__file__).parent, root / "leanbert", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "leanbert" / "configuration_toy_bert.py").write_text(CONFIG)
    (root / "leanbert" / "modeling_toy_bert.py").write_text(MODELING)
    declare(root / "leanbert" / "architectures.py")
    (tmp_path / "test_toy.py").write_text(f"TOY_ROOT = {str(root)!r}\n" + textwrap.dedent(TOY_TESTS))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO / "tests"), str(REPO)]),
           "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir",
                             str(tmp_path), str(tmp_path / "test_toy.py")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = {line.split("::")[-1].split("[")[0] for line in result.stdout.splitlines() if line.startswith("PASSED")}
    suite = {name for name in dir(ArchitectureTester) if name.startswith("test_")}
    assert suite | {"test_the_copy_is_what_runs", "test_bench_counts_it_as_bert"} <= passed, passed
    assert " skipped" not in result.stdout and " failed" not in result.stdout
