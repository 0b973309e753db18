"""Every leanbert architecture, declared once: `ARCHITECTURES` is the only list of them.

An `Architecture` names its config class and its modeling module, its paper, its LoRA targets, its benchmarked
variants, the paper's claims and how BERT checkpoints convert into it; everything else derives from the entry and
from the self-attention module it contributes (`modeling_encoder.LeanSelfAttention`): the model classes (every class
of the module's `__all__` that names an Auto class in `_auto_class`), the Auto registration (`leanbert/__init__.py`),
the saved `auto_map` (`modeling_encoder.full_auto_map`), the tied MLM decoder (`LeanForMaskedLM`, from
`base_model_prefix`), PEFT's default LoRA targets, `leanbert-convert --to <model_type>` (`conversion`), the export to
BERT (`bert_projections`), conversion's fidelity metrics (`reference_logits`), bench's FLOP counts
(`forward_matmuls`) and parameter counts, the claims that BENCHMARKS.md judges, and the model card's facts.

A new architecture adds its config file, its modeling file, one entry here and, if BERT checkpoints convert into
it, its fit in `conversion/`; tests then ask for its tester (tests/test_architectures.py).
"""

from dataclasses import dataclass, field
from types import ModuleType

from . import (configuration_shared_bert, configuration_shatter, configuration_sym_bert, modeling_shared_bert,
               modeling_shatter, modeling_sym_bert)


@dataclass(frozen=True)
class QualityTarget:
    """What a converted and healed model (`leanbert-convert` and `leanbert-heal` with their defaults) must keep of
    the BERT it came from: leanbert's own promise, not a paper's, judged in `bench/` on all-MiniLM-L6-v2.

    `glue_mean_drop`: GLUE points (x100, mean of the benchmarked tasks, paired seed by seed) the fine-tuned model
    may lose against the fine-tuned source; `glue_task_drop`: what any one task may lose (mean over seeds);
    `encoder_kept`: the fraction of the source's STS-B Spearman it keeps as a sentence encoder, without
    fine-tuning. Every seed of every task must also score above chance (`bench_downstream.ABOVE_CHANCE`).
    """

    glue_mean_drop: float
    glue_task_drop: float
    encoder_kept: float


@dataclass(frozen=True)
class ConversionRecipe:
    """How `leanbert-convert` turns a BERT checkpoint into the architecture. Everything whose name contains none of
    `approximated` copies over exactly (`conversion/source.py`); the fit approximates the rest, layer by layer.

    `fit` names the fitting function as `"<module of leanbert.conversion>.<function>"`, as `auto_map` names classes:
    `fit(teacher_block, student_block, hidden, mask, refine_steps=..., generator=...) -> dict` fills one student
    attention block from the teacher's on the teacher's calibration activations and returns its statistics.
    `notes`: per variant (a key of `Architecture.variants`; the default variant's note serves any other), what to
    expect of the converted model, for its report. `target`: what the converted and healed default variant must
    keep of its source; None where conversion gives only a warm start (no BERT form to reproduce).
    """

    fit: str
    approximated: tuple[str, ...]
    notes: dict[str, str]
    target: QualityTarget | None = None


@dataclass(frozen=True)
class Claim:
    """A claim of the architecture's paper, as a benchmark measures it against BERT (`bench/`, BENCHMARKS.md).

    `benchmark` names the benchmark that judges it ("parameters", "speed", "convergence", "downstream") and `metric`
    what it compares, one of the metrics that benchmark judges (`METRICS` in its script): a claim a benchmark cannot
    judge stops it with an error, it is never left out. `bound` is the paper's figure or threshold in the metric's
    unit, which the benchmark's rule compares the measurement with; None where the metric takes none, and for
    parameters and speed where the paper claims nothing (the row then reports the measurement for reference). The
    claim is about the architecture's default variant unless `variant` names another, and against BERT unless
    `against` names another model by its label (e.g. "SymBert symmetric"). `order` places its row among the
    benchmark's claims in BENCHMARKS.md (ascending; equal orders keep the order of `ARCHITECTURES`).
    """

    benchmark: str
    text: str  # the claim as BENCHMARKS.md states it
    metric: str
    bound: float | None = None
    variant: str | None = None
    against: str | None = None
    order: int = 0


@dataclass(frozen=True)
class Architecture:
    config_class: type
    modeling: ModuleType
    arxiv: str  # the paper's arXiv id
    title: str  # what the paper proposes, in a line
    lora_target_modules: tuple[str, ...]  # the attention projections, as BERT's ("query", "value")
    conversion: ConversionRecipe | None  # None: leanbert-convert does not offer it
    reconstruction: str = ""  # what in leanbert's version is not from the paper, for the model card
    # named config variants that benchmarks compare, the default config first
    variants: dict[str, dict] = field(default_factory=lambda: {"": {}})
    claims: tuple[Claim, ...] = ()  # the paper's claims that the benchmarks judge

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
    def attention_class(self) -> type:
        """Its self-attention module (a `modeling_encoder.LeanSelfAttention`): what the architecture contributes."""
        return self.classes["AutoModel"].attention_class

    @property
    def has_bert_form(self) -> bool:
        """Whether its attention equals BERT's with particular weights (`bert_projections()`), so that
        `leanbert-export` can write its models as plain BERT."""
        return self.attention_class.has_bert_form()

    @property
    def has_heads(self) -> bool:
        """Whether its config has BERT's `num_attention_heads` (Shatter has a single head)."""
        return "num_attention_heads" in self.config_class.field_rules

    def variant_label(self, variant: str) -> str:
        """The display name of a variant, e.g. "SymBert pairwise", or "SharedBert" for an unnamed default."""
        return f"{self.name} {variant}".strip()

    @property
    def variant_fields(self) -> list[str]:
        """The config fields that tell its variants apart (SymBert: attention_mode)."""
        return sorted({key for fields in self.variants.values() for key in fields})

    def variant_of(self, config) -> str:
        """The declared variant that `config` is: the first whose fields it all has, the default last."""
        default, *others = self.variants.items()
        return next((label for label, fields in others
                     if all(getattr(config, key, None) == value for key, value in fields.items())), default[0])

    @property
    def exports(self) -> list[type]:
        """The public classes: the config and everything in the modeling module's `__all__`."""
        return [self.config_class, *(getattr(self.modeling, name) for name in self.modeling.__all__)]


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(configuration_sym_bert.SymBertConfig, modeling_sym_bert, arxiv="2406.06366",
                 title="Symmetric dot-product attention with a pairwise coefficient",
                 lora_target_modules=("query_key", "value"),
                 conversion=ConversionRecipe(
                     fit="sym_fit.fit_sym_attention",
                     approximated=("attention.self.query.", "attention.self.key."),
                     notes={"pairwise": "SymBert reproduces the source closely after calibration; check mean_cosine "
                                        "before relying on it.",
                            "symmetric": "Symmetric SymBert (B = I) cannot represent BERT's asymmetric scores: expect "
                                         "a cosine near 0.9 on MiniLM and heal it before use."},
                     target=QualityTarget(glue_mean_drop=0.2, glue_task_drop=1.0, encoder_kept=0.998)),
                 variants={"pairwise": {}, "symmetric": {"attention_mode": "symmetric"}},
                 claims=(Claim("parameters", "−6% parameters vs BERT-base", metric="total", bound=-6.0),
                         Claim("speed", "no per-step speed claim (fewer parameters, fewer steps to converge); measured "
                                        "for reference", metric="train_ratio", order=2),
                         Claim("convergence", "about half the pretraining steps of BERT to converge",
                               metric="step_ratio", bound=0.6),
                         Claim("convergence", "symmetric attention without the pairwise matrix trains worse than BERT",
                               metric="final_loss_above", variant="symmetric", order=1),
                         Claim("downstream", "GLUE equal or better than BERT (79.36 vs 78.74)",
                               metric="glue_not_below"))),
    Architecture(configuration_shared_bert.SharedBertConfig, modeling_shared_bert, arxiv="2412.00359",
                 title="One shared weight for query, key and value, with three diagonal scalings",
                 lora_target_modules=("shared",),
                 conversion=ConversionRecipe(
                     fit="shared_fit.fit_shared_attention",
                     approximated=("attention.self.query.", "attention.self.key.", "attention.self.value.",
                                   "attention.output.dense."),
                     notes={"": "A converted SharedBert is a starting point, not an equivalent model: one projection "
                                "cannot serve BERT's query, key and value at once. Heal it by distillation before use "
                                "(leanbert-heal)."},
                     target=QualityTarget(glue_mean_drop=1.0, glue_task_drop=2.5, encoder_kept=0.993)),
                 claims=(Claim("parameters", "−66.53% attention-block (Q/K/V) parameters", metric="qkv",
                               bound=-66.53),
                         Claim("speed", "training time down by about a tenth (per step: ×1/0.9 = ×1.11 throughput)",
                               metric="train_ratio", bound=1 / 0.9, order=1),
                         Claim("convergence", "pretraining time down by about a tenth (time to BERT's final loss)",
                               metric="time_ratio", bound=0.9),
                         Claim("downstream", "GLUE +0.38% over BERT", metric="glue_not_below"),
                         Claim("downstream", "GLUE +5.81% over symmetric attention", metric="glue_above",
                               against="SymBert symmetric"),
                         Claim("downstream", "GLUE +1.06% over pairwise attention", metric="glue_above",
                               against="SymBert pairwise"))),
    Architecture(configuration_shatter.ShatterConfig, modeling_shatter, arxiv="2108.13032",
                 title="Single-headed attention with relative sequence partitioning",
                 lora_target_modules=("query", "value"), variants={"P=2": {}, "P=3": {"num_parts": 3}},
                 conversion=ConversionRecipe(
                     fit="shatter_fit.fit_shatter_attention",
                     approximated=("attention.self.", "attention.output.dense.", "embeddings.position_embeddings."),
                     notes={"P=2": "A Shatter warm start, not an equivalent model: one attention map replaces BERT's "
                                   "heads and absolute positions are dropped. Heal or fine-tune it before use."}),
                 reconstruction="The paper's method section was not available: the query-only score, the "
                                "Bernstein-polynomial partition, the learned partition, the folded output projection "
                                "and the sigmoid option are leanbert's reconstruction, each a ShatterConfig field.",
                 claims=(Claim("parameters", "no parameter-count claim (our reconstruction: at or below BERT's count "
                                             "at the same d)", metric="total"),
                         Claim("speed", "15% faster per training step than BERT (TPU, BERT-base)",
                               metric="train_ratio", bound=1.15),
                         Claim("speed", "over 50% less memory than BERT (TPU, BERT-base)", metric="activation_ratio",
                               bound=0.5),
                         Claim("convergence", "fewer pretraining steps to converge than BERT", metric="step_ratio",
                               bound=1.0),
                         Claim("downstream", "BERT-base quality on GLUE", metric="glue_not_below"))),
)

# model_type -> Architecture: how a saved model's config finds its declaration
BY_MODEL_TYPE: dict[str, Architecture] = {architecture.model_type: architecture for architecture in ARCHITECTURES}
# model_type -> Architecture, for those that BERT checkpoints convert into (`leanbert-convert --to`)
CONVERTIBLE: dict[str, Architecture] = {model_type: architecture for model_type, architecture in BY_MODEL_TYPE.items()
                                        if architecture.conversion is not None}
