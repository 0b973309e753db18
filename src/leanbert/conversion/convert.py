"""BERT → leanbert conversion: copy what carries over, fit the attention scores on calibration text, measure.

The query/key path of each layer is approximated on the activations the source produces on real text (a closed
form in the activation-whitened space, then a short per-layer refinement); everything else copies exactly.
`Conversion` checks everything first (settings, source, calibration text) and then writes into a folder it is
given; `convert()` claims the output folder safely (see `leanbert.common.output`) and publishes it atomically.
"""

import json
import time
from importlib import import_module
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..architectures import ARCHITECTURES, CONVERTIBLE
from ..common.errors import check_integer
from ..common.models import load_bert, tokenize, weights_checksum
from ..common.output import SafeOutput
from ..common.passages import read_passages
from ..common.sentence_transformers import read_setup, write_setup
from ..publishing import write_model_card
from .calibration import check_calibration_size, check_calibration_tokens, layer_inputs
from .fidelity import dropout_agreement, pooled_embeddings
from .metrics import attention_logit_rel_error
from .refine import REFINE_STEPS
from .source import HEADS, ConversionError, leanbert_config_fields, transfer_weights

REPORT = "conversion_report.json"

# A converted model that loses to attention-probability dropout more than this many times as much of its sentence
# embedding as its source loses to all of its dropout (1 - `dropout_agreement`, at least 0.01) is written with that
# dropout off. A fitted SharedBert's query and key scales reach about 10 on MiniLM, so its attention is nearly one-hot
# and dropping one probability drops the token a query reads. On the held-out passages MiniLM's embeddings keep a
# cosine of 0.962 under its dropout (loss 0.038); converted, its SymBert's 0.961 and its Shatter's 0.912 (both keep
# it), its SharedBert's 0.489 with the same attention dropout and 0.967 without. Fine-tuned with that dropout, the
# healed SharedBert scored 55.5 on STS-B against the source's 83.8.
DROPOUT_LOSS_RATIO = 4


def set_attention_dropout(model, rate: float) -> None:
    """Set the attention-probability dropout of every layer of a leanbert `model` (its modules, not its config)."""
    for layer in model.base_model.encoder.layer:
        layer.attention.self.dropout.p = rate


class Conversion:
    """One conversion, validated on construction (settings, source, calibration text: one `ConversionError` naming
    the problem, before any computation) and run by `write_to(folder)`."""

    def __init__(self, source: str | Path, to: str, *, calibration_text: str | Path | None = None,
                 calibration_passages: int = 256, refine_steps: int = REFINE_STEPS, max_length: int = 128,
                 attention_mode: str | None = None, keep_attention_dropout: bool = False, allow_pickle: bool = False,
                 seed: int = 0):
        if to not in CONVERTIBLE:
            raise ConversionError(f"--to {to!r} is not supported; allowed: {', '.join(CONVERTIBLE)}")
        self.architecture = architecture = CONVERTIBLE[to]
        for name, value, low, high in (("refine_steps", refine_steps, 0, None), ("max_length", max_length, 2, None),
                                       ("calibration_passages", calibration_passages, 1, None),
                                       ("seed", seed, 0, 2**32 - 1)):
            check_integer(name, value, low, high)
        self.extra = {}
        if attention_mode is not None:
            if "attention_mode" not in architecture.config_class.field_rules:
                with_modes = [a.model_type for a in ARCHITECTURES if "attention_mode" in a.config_class.field_rules]
                raise ConversionError(f"--attention-mode applies to --to {' or '.join(with_modes)} only")
            self.extra = {"attention_mode": attention_mode}
        self.source, self.to, self.seed = str(source), to, seed
        if not isinstance(keep_attention_dropout, bool):
            raise ConversionError(f"keep_attention_dropout must be True or False, not {keep_attention_dropout!r}")
        self.keep_attention_dropout = keep_attention_dropout
        self.calibration_text, self.refine_steps, self.max_length = calibration_text, refine_steps, max_length
        self.calibration, available = read_passages(calibration_text, limit=calibration_passages, seed=seed,
                                                    what="calibration text")
        self.sentence_transformers = read_setup(source, allow_pickle=allow_pickle)  # checked before the weights
        self.teacher, self.tokenizer = load_bert(source, allow_pickle)
        self.config_class, self.prefix = architecture.config_class, architecture.name
        self.approximated = architecture.conversion.approximated
        fields = leanbert_config_fields(self.teacher.config)
        if not architecture.has_heads:  # a single-headed architecture (Shatter)
            fields.pop("num_attention_heads", None)
        try:
            self.config = self.config_class(**fields, **self.extra)
        except ValueError as error:
            raise ConversionError(f"the source's config does not fit {self.prefix}: {error}") from None
        limit = self.teacher.config.max_position_embeddings
        if max_length > limit:
            raise ConversionError(f"--max-length {max_length} exceeds the source's max_position_embeddings {limit}")
        check_calibration_size(len(self.calibration), max_length, self.config)
        self.batch = tokenize(self.tokenizer, self.calibration, max_length)
        where = repr(str(calibration_text)) if calibration_text else "(bundled)"
        check_calibration_tokens(self.batch, self.config.hidden_size, where)
        self.settings = {"calibration_text": str(calibration_text) if calibration_text else "bundled",
                         "calibration_passages": len(self.calibration), "calibration_passages_available": available,
                         "max_length": max_length, "refine_steps": refine_steps, "seed": seed,
                         "keep_attention_dropout": self.keep_attention_dropout}

    def note(self) -> str:
        """What to expect of the converted model: its variant's note in the declaration, else the default's."""
        notes, variants = self.architecture.conversion.notes, self.architecture.variants
        return notes.get(self.architecture.variant_of(self.config), notes[next(iter(variants))])

    def fit_attention_dropout(self, teacher, student, heldout,
                              clean: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
        """Measure how much of the source and of the converted model survives dropout (`dropout_agreement`, against
        `clean`, if given: their held-out embeddings with dropout off, which dropout settings do not change); turn
        the student's attention-probability dropout off (config and modules) when that dropout is what makes it far
        more fragile than the source (`DROPOUT_LOSS_RATIO`), unless `keep_attention_dropout` asks to keep it (then
        the report says what keeping it costs). Returns the measurements and any change, for the report."""
        teacher_clean, student_clean = clean or (None, None)
        source = dropout_agreement(teacher, heldout, self.seed, teacher_clean)
        converted = dropout_agreement(student, heldout, self.seed, student_clean)
        measured = {"source": source, "converted": converted,
                    "measure": "mean cosine between sentence embeddings (mean-pooled last hidden states) with "
                               "dropout on (training mode, seeded) and off, on the held-out passages: how much of "
                               "each model survives the dropout of fine-tuning"}
        rate = student.config.attention_probs_dropout_prob
        tolerated = DROPOUT_LOSS_RATIO * max(1 - source, 0.01)
        if rate == 0 or 1 - converted <= tolerated:
            return measured
        set_attention_dropout(student, 0.0)
        without = dropout_agreement(student, heldout, self.seed, student_clean)
        if 1 - without > tolerated:  # as fragile without it: attention dropout is not the cause, so it stays
            set_attention_dropout(student, rate)
            return {**measured, "converted_without_attention_dropout": without}
        if self.keep_attention_dropout:
            set_attention_dropout(student, rate)
            return {**measured, "converted_without_attention_dropout": without,
                    "kept": f"kept at {rate} as asked (--keep-attention-dropout), though with it on its sentence "
                            f"embeddings keep a cosine of only {converted:.3f} to those with dropout off "
                            f"({without:.3f} without it; the source's: {source:.3f}): fine-tuning with it may lose "
                            "much of the conversion"}
        student.config.attention_probs_dropout_prob = 0.0
        return {**measured, "converted": without, "converted_with_source_attention_dropout": converted,
                "attention_probs_dropout_prob": {"source": rate, "converted": 0.0},
                "why": f"with the source's attention-probability dropout ({rate}) on, its sentence embeddings keep a "
                       f"cosine of only {converted:.3f} to those with dropout off ({without:.3f} without it; the "
                       f"source's: {source:.3f}); its attention is too sharp for that dropout, so it is written "
                       "with it off"}

    def write_to(self, folder: Path) -> dict:
        """Convert, write the model, its tokenizer and `conversion_report.json` to `folder`; return the report."""
        started = time.perf_counter()
        teacher, config, prefix = self.teacher, self.config, self.prefix
        module, function = self.architecture.conversion.fit.rsplit(".", 1)
        fit = getattr(import_module(f".{module}", __package__), function)
        torch.manual_seed(self.seed)
        student = self.architecture.classes[HEADS[type(teacher).__name__]](config).eval()
        to_fit = transfer_weights(teacher, student, self.approximated)

        inputs = layer_inputs(teacher.base_model, self.batch)
        mask = self.batch["attention_mask"].bool()
        heldout = tokenize(self.tokenizer, read_passages(bundled="heldout.txt")[0], self.max_length)
        heldout_inputs = layer_inputs(teacher.base_model, heldout)
        heldout_mask = heldout["attention_mask"].bool()

        generator = torch.Generator().manual_seed(self.seed)
        layers = []
        teacher_layers, student_layers = teacher.base_model.encoder.layer, student.base_model.encoder.layer
        for index in tqdm(range(config.num_hidden_layers), desc=f"converting layers to {prefix}"):
            teacher_block, student_block = teacher_layers[index].attention, student_layers[index].attention
            with torch.enable_grad():
                stats = fit(teacher_block, student_block, inputs[index], mask, refine_steps=self.refine_steps,
                            generator=generator)
            stats["heldout_logit_rel_error"] = attention_logit_rel_error(
                teacher_block, student_block, heldout_inputs[index], heldout_mask)
            layers.append({"layer": index, **{key: float(value) for key, value in stats.items()}})

        with torch.no_grad():
            clean = pooled_embeddings(teacher.eval(), heldout), pooled_embeddings(student.eval(), heldout)
        cosines = torch.nn.functional.cosine_similarity(*clean, dim=-1)
        if not torch.isfinite(cosines).all() or not all(torch.isfinite(p).all() for p in student.parameters()):
            raise ConversionError("the fit diverged (non-finite weights or outputs); check the calibration text")
        dropout = self.fit_attention_dropout(teacher, student, heldout, clean)
        teacher_params, student_params = teacher.num_parameters(), student.num_parameters()
        report = {
            "source": self.source,
            "source_architecture": type(teacher).__name__,
            "source_checksum": weights_checksum(teacher),
            "target": config.model_type,
            "target_architecture": type(student).__name__,
            **{key: getattr(config, key) for key in self.architecture.variant_fields},
            "parameters": {"source": teacher_params, "converted": student_params,
                           "saved": teacher_params - student_params,
                           "saved_fraction": round(1 - student_params / teacher_params, 6)},
            "fitted_parameters": to_fit,
            "layers": layers,
            "fidelity": {"heldout_passages": len(cosines), "mean_cosine": cosines.mean().item(),
                         "min_cosine": cosines.min().item(),
                         "measure": "cosine between source and converted mean-pooled last hidden states on the "
                                    "bundled held-out passages (disjoint from calibration)"},
            "dropout": dropout,
            "note": self.note(),
            "settings": self.settings,
            "leanbert_version": __version__,
            "seconds": round(time.perf_counter() - started, 1),
        }
        student.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        write_setup(self.sentence_transformers, folder)  # modules.json, pooling, ...: see common.sentence_transformers
        (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        write_model_card(folder, kind="converted", source=self.source)
        return report


def convert(source: str | Path, to: str, output: str | Path, *, force: bool = False, **settings) -> dict:
    """Convert the BERT checkpoint `source` (folder or Hub id) to the architecture `to` (its model_type: "sym_bert",
    "shared_bert", "shatter", ...) in `output`.

    `settings` are `Conversion`'s (calibration_text, calibration_passages, refine_steps, max_length,
    attention_mode, keep_attention_dropout, allow_pickle, seed). Everything is checked before any work; the output
    is replaced only when the new one is complete, and only with `force` (see `leanbert.common.output`). Returns the
    conversion report, also written to `output/conversion_report.json`.
    """
    inputs = [("source", source), ("calibration text", settings.get("calibration_text"))]
    target = SafeOutput(output, inputs=inputs, force=force, command="leanbert-convert")
    conversion = Conversion(source, to, **settings)
    with target as staging:
        report = conversion.write_to(staging)
        target.publish()
    return report
