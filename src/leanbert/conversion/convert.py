"""BERT → leanbert conversion: copy what carries over, fit the attention scores on calibration text, measure.

The query/key path of each layer is approximated on the activations the source produces on real text (a closed
form in the activation-whitened space, then a short per-layer refinement); everything else copies exactly. The
result is written atomically: a temporary folder beside the output, renamed at the end.
"""

import json
import shutil
import tempfile
import time
from importlib import import_module
from pathlib import Path

import torch
from tqdm.auto import tqdm

import leanbert

from .calibration import layer_inputs, mean_pool, read_passages, tokenize
from .metrics import attention_logit_rel_error
from .source import HEADS, ConversionError, leanbert_config_fields, load_bert, transfer_weights

# --to name -> (config class, class-name prefix, teacher weight fragments that are approximated, fitting module);
# each fitting module `<to>_fit` has `fit_<to>_attention(teacher_block, student_block, hidden, mask, ...)`.
TARGETS = {
    "sym": (leanbert.SymBertConfig, "SymBert", ("attention.self.query.", "attention.self.key.")),
    "shared": (leanbert.SharedBertConfig, "SharedBert",
               ("attention.self.query.", "attention.self.key.", "attention.self.value.", "attention.output.dense.")),
    "shatter": (leanbert.ShatterConfig, "Shatter",
                ("attention.self.", "attention.output.dense.", "embeddings.position_embeddings.")),
}
LOSSY_NOTE = {
    "sym": "SymBert reproduces the source closely after calibration; check mean_cosine before relying on it.",
    "sym_symmetric": "Symmetric SymBert (B = I) cannot represent BERT's asymmetric scores: expect a cosine near 0.9 "
                     "on MiniLM and heal it before use.",
    "shared": "A converted SharedBert is a starting point, not an equivalent model: one projection cannot serve "
              "BERT's query, key and value at once. Heal it by distillation before use (leanbert-heal).",
    "shatter": "A Shatter warm start, not an equivalent model: one attention map replaces BERT's heads and absolute "
               "positions are dropped. Heal or fine-tune it before use.",
}


def check_output(source: str, output: Path, force: bool) -> None:
    """Refuse an output that would overwrite something without --force, or write into the source."""
    source_path = Path(source).resolve()
    if output.resolve() == source_path or source_path in output.resolve().parents:
        raise ConversionError(f"output {str(output)!r} is inside the source folder; choose another folder")
    if output.exists() and not output.is_dir():
        raise ConversionError(f"output {str(output)!r} exists and is not a folder")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ConversionError(f"output folder {str(output)!r} exists and is not empty; pass --force to replace it")


def write_atomically(output: Path, write) -> None:
    """Call `write(tmp_folder)`, then move the folder to `output` in one rename; on any failure keep nothing."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        write(tmp)
        if output.exists():
            old = output.with_name(f".{output.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
            output.rename(old)
            tmp.rename(output)
            shutil.rmtree(old)
        else:
            tmp.rename(output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@torch.no_grad()
def embedding_cosines(teacher, student, batch) -> torch.Tensor:
    """Cosine between source and converted mean-pooled last hidden states, one value per passage."""
    mask = batch["attention_mask"]
    source = mean_pool(teacher.base_model(**batch).last_hidden_state, mask)
    converted = mean_pool(student.base_model(**batch).last_hidden_state, mask)
    return torch.nn.functional.cosine_similarity(source, converted, dim=-1)


def convert(
    source: str,
    to: str,
    output: str | Path,
    *,
    calibration_text: str | Path | None = None,
    refine_steps: int = 300,
    max_length: int = 128,
    attention_mode: str = "pairwise",
    force: bool = False,
    allow_pickle: bool = False,
    seed: int = 0,
) -> dict:
    """Convert the BERT checkpoint `source` (folder or Hub id) to `to` ("sym", "shared" or "shatter") in `output`.

    Returns the conversion report, also written to `output/conversion_report.json`.
    """
    if to not in TARGETS:
        raise ConversionError(f"--to {to!r} is not supported; allowed: {', '.join(TARGETS)}")
    if refine_steps < 0:
        raise ConversionError(f"--refine-steps must be >= 0, got {refine_steps}")
    output = Path(output)
    check_output(source, output, force)
    try:
        calibration = read_passages(calibration_text)
    except (OSError, ValueError) as error:
        raise ConversionError(str(error))
    started = time.perf_counter()
    config_class, prefix, approximated = TARGETS[to]
    fit = getattr(import_module(f".{to}_fit", __package__), f"fit_{to}_attention")
    teacher, tokenizer = load_bert(source, allow_pickle)
    extra = {"attention_mode": attention_mode} if to == "sym" else {}
    fields = leanbert_config_fields(teacher.config)
    if to == "shatter":
        fields.pop("num_attention_heads")
    try:
        config = config_class(**fields, **extra)
    except ValueError as error:
        raise ConversionError(str(error))
    head = HEADS[type(teacher).__name__]
    torch.manual_seed(seed)
    student = getattr(leanbert, prefix + head)(config).eval()
    to_fit = transfer_weights(teacher, student, approximated)

    batch = tokenize(tokenizer, calibration, max_length)
    inputs = layer_inputs(teacher.base_model, batch)
    mask = batch["attention_mask"].bool()
    heldout = tokenize(tokenizer, read_passages(bundled="heldout.txt"), max_length)
    heldout_inputs = layer_inputs(teacher.base_model, heldout)
    heldout_mask = heldout["attention_mask"].bool()

    generator = torch.Generator().manual_seed(seed)
    layers = []
    teacher_layers, student_layers = teacher.base_model.encoder.layer, student.base_model.encoder.layer
    for index in tqdm(range(config.num_hidden_layers), desc=f"converting layers to {prefix}"):
        teacher_block, student_block = teacher_layers[index].attention, student_layers[index].attention
        with torch.enable_grad():
            stats = fit(teacher_block, student_block, inputs[index], mask, refine_steps=refine_steps,
                        generator=generator)
        stats["heldout_logit_rel_error"] = attention_logit_rel_error(
            teacher_block, student_block, heldout_inputs[index], heldout_mask)
        layers.append({"layer": index, **{key: float(value) for key, value in stats.items()}})

    cosines = embedding_cosines(teacher, student, heldout)
    teacher_params, student_params = teacher.num_parameters(), student.num_parameters()
    report = {
        "source": str(source),
        "source_architecture": type(teacher).__name__,
        "target": config.model_type,
        "target_architecture": type(student).__name__,
        **extra,
        "parameters": {"source": teacher_params, "converted": student_params,
                       "saved": teacher_params - student_params,
                       "saved_fraction": round(1 - student_params / teacher_params, 6)},
        "fitted_parameters": to_fit,
        "layers": layers,
        "fidelity": {"heldout_passages": len(cosines), "mean_cosine": cosines.mean().item(),
                     "min_cosine": cosines.min().item(),
                     "measure": "cosine between source and converted mean-pooled last hidden states on the "
                                "bundled held-out passages (disjoint from calibration)"},
        "note": LOSSY_NOTE["sym_symmetric" if extra.get("attention_mode") == "symmetric" else to],
        "settings": {"calibration_text": str(calibration_text) if calibration_text else "bundled",
                     "calibration_passages": len(calibration), "max_length": max_length,
                     "refine_steps": refine_steps, "seed": seed},
        "leanbert_version": leanbert.__version__,
        "seconds": round(time.perf_counter() - started, 1),
    }

    def write(folder: Path) -> None:
        student.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / "conversion_report.json").write_text(json.dumps(report, indent=2) + "\n")

    write_atomically(output, write)
    return report
