"""Every leanbert architecture, declared once.

An `Architecture` names its config class and its modeling module; everything else derives from that: the model
classes (every class of the module's `__all__` that names an Auto class in `_auto_class`), the Auto registration
(`leanbert/__init__.py`), the saved `auto_map` (`modeling_encoder.full_auto_map`, from the same `_auto_class`
attributes), the tied MLM decoder (`LeanForMaskedLM`, from `base_model_prefix`), PEFT's default LoRA targets and
the model card's facts; tests and benchmarks iterate over `ARCHITECTURES` (and `variants`). A new architecture
adds its config, its modeling file and one entry here.
"""

from dataclasses import dataclass, field
from types import ModuleType

from . import (configuration_shared_bert, configuration_shatter, configuration_sym_bert, modeling_shared_bert,
               modeling_shatter, modeling_sym_bert)


@dataclass(frozen=True)
class Architecture:
    config_class: type
    modeling: ModuleType
    arxiv: str  # the paper's arXiv id
    title: str  # what the paper proposes, in a line
    lora_target_modules: tuple[str, ...]  # the attention projections, as BERT's ("query", "value")
    reconstruction: str = ""  # what in leanbert's version is not from the paper, for the model card
    # named config variants that benchmarks compare, the default config first
    variants: dict[str, dict] = field(default_factory=lambda: {"": {}})

    @property
    def name(self) -> str:
        return self.config_class.__name__.removesuffix("Config")

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def classes(self) -> dict[str, type]:
        """{Auto class name: model class}, e.g. {"AutoModel": SymBertModel, "AutoModelForMaskedLM": ...}."""
        found = (getattr(self.modeling, name) for name in self.modeling.__all__)
        return {cls._auto_class: cls for cls in found
                if getattr(cls, "_auto_class", None) and cls.config_class is self.config_class}

    @property
    def has_bert_form(self) -> bool:
        """Whether its attention equals BERT's with particular weights (`bert_projections()`), so that
        `leanbert-export` can write its models as plain BERT."""
        return hasattr(next(iter(self.classes.values())).attention_class, "bert_projections")

    @property
    def exports(self) -> list[type]:
        """The public classes: the config and everything in the modeling module's `__all__`."""
        return [self.config_class, *(getattr(self.modeling, name) for name in self.modeling.__all__)]


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(configuration_sym_bert.SymBertConfig, modeling_sym_bert, arxiv="2406.06366",
                 title="Symmetric dot-product attention with a pairwise coefficient",
                 lora_target_modules=("query_key", "value"),
                 variants={"pairwise": {}, "symmetric": {"attention_mode": "symmetric"}}),
    Architecture(configuration_shared_bert.SharedBertConfig, modeling_shared_bert, arxiv="2412.00359",
                 title="One shared weight for query, key and value, with three diagonal scalings",
                 lora_target_modules=("shared",)),
    Architecture(configuration_shatter.ShatterConfig, modeling_shatter, arxiv="2108.13032",
                 title="Single-headed attention with relative sequence partitioning",
                 lora_target_modules=("query", "value"), variants={"P=2": {}, "P=3": {"num_parts": 3}},
                 reconstruction="The paper's method section was not available: the query-only score, the "
                                "Bernstein-polynomial partition, the learned partition, the folded output projection "
                                "and the sigmoid option are leanbert's reconstruction, each a ShatterConfig field."),
)
