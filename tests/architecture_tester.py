"""The tests every architecture must pass, in the style of transformers' `ModelTesterMixin`.

Each declared architecture (`leanbert.ARCHITECTURES`) has one `ArchitectureTester` subclass (in
tests/test_architectures.py) that supplies, written by hand from the paper and independently of the code: the
parameter count of its self-attention in closed form, the FLOPs of its forward, and its attention logits. The rest
the mixin checks from the declaration alone: the model classes and Auto registration, the saved `auto_map` and
remote code, the fast attention path against eager, the conversion recipe, the model card. A tester that does not
supply something fails with NotImplementedError; an architecture without a tester fails
`test_every_architecture_has_a_tester`.
"""

import json
import os
import subprocess
import sys
import textwrap
from importlib import import_module

import pytest
import torch
import transformers
from transformers import BertConfig, BertModel

import leanbert

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, intermediate_size=37, max_position_embeddings=64,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_attention_heads=4)
AUTO_CLASSES = ("AutoModel", "AutoModelForMaskedLM", "AutoModelForSequenceClassification",
                "AutoModelForTokenClassification", "AutoModelForQuestionAnswering", "AutoModelForMultipleChoice")

REMOTE_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["leanbert"] = None  # any `import leanbert` now raises ImportError
    import torch
    from transformers import AutoModelForMaskedLM
    model = AutoModelForMaskedLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 9, 3, 7, 1, 0]]),
                       attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]])).logits
    torch.save(logits, sys.argv[2])
""")


def linear_parameters(inputs: int, outputs: int) -> int:
    return inputs * outputs + outputs


class ArchitectureTester:
    """Subclasses set `model_type` and supply the three hand-written references below."""

    model_type: str
    output_projection: bool  # whether BERT's output projection follows the attention, per the paper

    @property
    def architecture(self) -> leanbert.Architecture:
        return leanbert.architectures.BY_MODEL_TYPE[self.model_type]

    # -- what each architecture supplies ------------------------------------------------------------------------

    def attention_parameters(self, config) -> int:
        """The parameters of one self-attention module (`attention.self`), in closed form."""
        raise NotImplementedError(f"{type(self).__name__} does not give its parameter count in closed form")

    def attention_flops(self, config, batch_size: int, seq_len: int) -> int:
        """Forward FLOPs of one self-attention module (2·m·n·k per matrix product, elementwise free), by formula."""
        raise NotImplementedError(f"{type(self).__name__} does not give its FLOP formula")

    def logits(self, attention: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The paper's pre-softmax scores (n, H, L, L) of `attention` on x (n, L, d), written from its weights."""
        raise NotImplementedError(f"{type(self).__name__} does not write out its attention logits")

    # -- helpers ----------------------------------------------------------------------------------------------

    def config(self, variant: str = "", size: dict | None = None, **overrides):
        architecture = self.architecture
        fields = {key: value for key, value in (size or TINY).items() if key in architecture.config_class.field_rules}
        variant = variant or next(iter(architecture.variants))
        return architecture.config_class(**{**fields, **architecture.variants[variant], **overrides})

    def model(self, variant: str = "", auto: str = "AutoModel", seed: int = 0, **overrides):
        """A tiny model, its weights moved off their initial values so that nothing holds by construction."""
        torch.manual_seed(seed)
        model = self.architecture.classes[auto](self.config(variant, **overrides))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        return model.eval()

    @staticmethod
    def batch(vocab_size: int = TINY["vocab_size"]) -> dict:
        torch.manual_seed(1)
        input_ids = torch.randint(1, vocab_size, (2, 9))
        attention_mask = torch.ones_like(input_ids)
        attention_mask[1, 6:] = 0
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    # -- the suite --------------------------------------------------------------------------------------------

    def test_declares_every_head_and_registers_it(self):
        classes = self.architecture.classes
        assert sorted(classes) == sorted(AUTO_CLASSES)
        config = self.config()
        assert transformers.AutoConfig.for_model(self.model_type).__class__ is type(config)
        for auto, cls in classes.items():
            assert getattr(transformers, auto)._model_mapping[type(config)] is cls
            assert issubclass(cls.attention_class, leanbert.modeling_encoder.LeanSelfAttention)
        assert leanbert.architectures.BY_MODEL_TYPE[self.model_type] is self.architecture

    def test_lora_targets_name_attention_modules(self):
        names = {name.rsplit(".", 1)[-1] for name, _ in self.model().named_modules()}
        assert set(self.architecture.lora_target_modules) <= names

    @pytest.mark.parametrize("size", ["tiny", "bert-base"])
    def test_parameter_count_matches_closed_form(self, size):
        """Each declared variant against transformers' BertModel of the same size, less BERT's self-attention,
        plus the closed form; without BERT's output projection and positions where the architecture has none."""
        shape = TINY if size == "tiny" else BertConfig().to_dict()
        bert_config = BertConfig(**{key: shape[key] for key in TINY})
        d = bert_config.hidden_size
        with torch.device("meta"):
            bert = BertModel(bert_config).num_parameters()
            for variant in self.architecture.variants:
                config = self.config(variant, size={key: shape[key] for key in TINY})
                model = self.architecture.classes["AutoModel"](config)
                assert self.architecture.attention_class.has_output_projection == self.output_projection
                expected = (bert + config.num_hidden_layers * (
                    self.attention_parameters(config) - 3 * linear_parameters(d, d)
                    - (0 if self.output_projection else linear_parameters(d, d)))
                    - (0 if model.embeddings.position_embeddings is not None else config.max_position_embeddings * d))
                assert model.num_parameters() == expected, variant
                assert sum(p.numel() for p in model.encoder.layer[0].attention.self.parameters()) == \
                    self.attention_parameters(config)

    @pytest.mark.parametrize("seq_len", [7, 16])
    def test_flops_match_formula(self, seq_len):
        for variant in self.architecture.variants:
            for implementation in ("sdpa", "eager"):
                config = self.config(variant, attn_implementation=implementation)
                counted = self.architecture.attention_class.forward_matmuls(config, 3, seq_len)
                assert sum(flops for flops, _ in counted) == self.attention_flops(config, 3, seq_len), variant

    def test_reference_logits_are_the_papers(self):
        """The module's float64 write-out (what conversion measures with) equals the tester's, and the eager
        forward's attention probabilities are their softmax."""
        for variant in self.architecture.variants:
            model = self.model(variant)
            model.set_attn_implementation("eager")
            batch = self.batch()
            with torch.no_grad():
                out = model(**batch, output_attentions=True, output_hidden_states=True)
                attention = model.encoder.layer[0].attention.self
                expected = self.logits(attention, out.hidden_states[0].double())
                torch.testing.assert_close(attention.reference_logits(out.hidden_states[0]), expected)
                masked = expected.masked_fill(~batch["attention_mask"].bool()[:, None, None, :], float("-inf"))
                torch.testing.assert_close(out.attentions[0].double(), masked.softmax(-1), atol=1e-5, rtol=1e-4)

    def test_fast_path_equals_eager(self):
        for variant in self.architecture.variants:
            model = self.model(variant)
            batch = self.batch()
            with torch.no_grad():
                model.set_attn_implementation("sdpa")
                fast = model(**batch).last_hidden_state
                model.set_attn_implementation("eager")
                eager = model(**batch).last_hidden_state
            torch.testing.assert_close(fast, eager, atol=1e-5, rtol=1e-4)

    def test_saved_auto_map_and_remote_code(self, tmp_path):
        model = self.model(auto="AutoModelForMaskedLM")
        model.save_pretrained(tmp_path / "model")
        auto_map = json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]
        modeling = self.architecture.modeling.__name__.rsplit(".", 1)[-1]
        config_module = type(model.config).__module__.rsplit(".", 1)[-1]
        assert auto_map == {"AutoConfig": f"{config_module}.{type(model.config).__name__}",
                            **{auto: f"{modeling}.{cls.__name__}" for auto, cls in self.architecture.classes.items()}}
        env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
        result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, tmp_path / "model", tmp_path / "logits.pt"],
                                env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        with torch.no_grad():
            local = model(input_ids=torch.tensor([[5, 9, 3, 7, 1, 0]]),
                          attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]])).logits
        torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), local, atol=1e-6, rtol=0)

    def test_conversion_recipe_resolves(self):
        recipe = self.architecture.conversion
        assert (self.model_type in leanbert.architectures.CONVERTIBLE) == (recipe is not None)
        if recipe is None:
            return
        module, function = recipe.fit.rsplit(".", 1)
        assert callable(getattr(import_module(f"leanbert.conversion.{module}"), function))
        with torch.device("meta"):
            names = [name for name, _ in BertModel(BertConfig(**TINY)).named_parameters()]
        for fragment in recipe.approximated:
            assert any(fragment in name for name in names), fragment
        assert next(iter(self.architecture.variants)) in recipe.notes

    def test_card_names_the_paper(self):
        from leanbert.publishing.cards import about

        text = "\n".join(about(self.architecture.name, self.architecture, self.config().to_dict()))
        assert f"https://arxiv.org/abs/{self.architecture.arxiv}" in text
        assert f"`model_type: {self.model_type}`" in text
