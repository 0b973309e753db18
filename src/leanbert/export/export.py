"""`leanbert-export`: a SymBert or SharedBert folder written as the plain BERT that computes the same outputs.

The output is an ordinary transformers BERT folder (`model_type: bert`, `BertModel` or `BertFor...` with the same
head, no code files, no `auto_map`), with the tokenizer, the sentence-transformers set-up when the model has one,
a model card and `export_report.json`. It loads with transformers 4.x or 5.x alone and runs wherever BERT runs
(text-embeddings-inference, vLLM, optimum's ONNX export, ...). `Export` checks everything before any work: the
folder is a leanbert model with a BERT form, whose weights fit its config, with a tokenizer. After writing, the
saved BERT is loaded back with transformers and run on a padded batch beside the source model, in float32 and in
float64; an export further from the exact outputs than float32 rounding explains is a bug (exit code 1) and nothing
is published.
"""

import copy
import json
import time
from pathlib import Path

import torch
import transformers

from .. import __version__
from ..architectures import BY_MODEL_TYPE
from ..common.errors import LeanbertError
from ..common.models import load_config, load_tokenizer, load_weights, weights_checksum
from ..common.output import SafeOutput
from ..common.sentence_transformers import read_setup, write_setup
from ..publishing import write_model_card
from .bert import bert_class, check_batch, max_difference, outputs, to_bert

REPORT = "export_report.json"
# How much further than the source model itself the exported BERT's outputs may be from the source's exact (float64)
# outputs, relative to their largest magnitude (at least 1): the folded weights' own float32 rounding stays near
# 1e-7. A model whose weights cancel (a converted SymBert's query/key weight can be large where its pairwise matrices
# shrink it back) is itself far from its exact outputs in float32; its export is then often nearer to them.
TOLERANCE = 1e-5
# Where the source model's own float32 error is large, the export's is of the same size but not below it on every
# output (two different sequences of roundings): up to twice the source's counts as the same function. A wrong fold
# is off by the size of the outputs themselves.
FLOAT32_MARGIN = 2


class ExportError(LeanbertError):
    """The model cannot be exported; the message is meant for the user as is."""


def load_leanbert(model: str | Path, allow_pickle: bool = False):
    """The leanbert model in `model` (a folder or Hub id) with its tokenizer; refused unless it has a BERT form."""
    config = load_config(model, "model")
    if config.model_type == "bert":
        raise ExportError(f"model {str(model)!r} is a plain BERT already (model_type 'bert'); nothing to export")
    architecture = BY_MODEL_TYPE.get(config.model_type)
    if architecture is None:
        raise ExportError(f"model {str(model)!r} is a {config.model_type!r} model; leanbert-export takes a "
                          f"leanbert model ({', '.join(BY_MODEL_TYPE)})")
    names = {cls.__name__: cls for cls in architecture.classes.values()}
    class_name = (config.architectures or [f"{architecture.name}Model"])[0]
    if class_name not in names:
        raise ExportError(f"model {str(model)!r} names the architecture {class_name!r}, which {architecture.name} "
                          f"does not have ({', '.join(sorted(names))})")
    if not architecture.has_bert_form:
        raise ExportError(f"model {str(model)!r} is a {architecture.name}, which has no BERT form (its attention "
                          "mixes values by relative-position parts, which BERT's attention cannot express); to serve "
                          "it without leanbert, export it to ONNX (README: 'Export to ONNX')")
    tokenizer = load_tokenizer(model, "model", config.vocab_size)
    loaded = load_weights(names[class_name], model, "model", allow_pickle)
    broken = next((name for name, tensor in loaded.state_dict().items()
                   if tensor.is_floating_point() and not torch.isfinite(tensor).all()), None)
    if broken is not None:
        raise ExportError(f"the weights of model {str(model)!r} hold non-finite values ({broken} holds NaN or "
                          "infinity): there is nothing exact to export")
    return loaded, tokenizer


class Export:
    """One export, validated on construction (one `LeanbertError` naming the problem, before any work) and run by
    `write_to(folder)`."""

    def __init__(self, model: str | Path, *, allow_pickle: bool = False):
        self.source = str(model)
        self.sentence_transformers = read_setup(model, "model", allow_pickle=allow_pickle)
        self.model, self.tokenizer = load_leanbert(model, allow_pickle)

    def write_to(self, folder: Path) -> dict:
        """Write the BERT form, its tokenizer, the sentence-transformers set-up, the report and the card; check
        the saved BERT against the source model; return the report."""
        started = time.perf_counter()
        model = self.model
        bert = to_bert(model)
        bert.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        write_setup(self.sentence_transformers, folder)

        saved_class = bert_class(model)
        saved = saved_class.from_pretrained(folder, dtype=torch.float32).eval()  # what a user loads
        batch = check_batch(model.config)
        exact, _ = outputs(copy.deepcopy(model).double(), batch)  # the source's function without float32 rounding
        broken = next((name for name, tensor in exact.items() if not torch.isfinite(tensor).all()), None)
        if broken is not None:  # finite weights whose outputs overflow even in float64
            raise ExportError(f"model {self.source!r} computes non-finite values ({broken} holds NaN or infinity): "
                              "there is nothing exact to export")
        expected, native_flops = outputs(model, batch)
        got, bert_flops = outputs(saved, batch)
        differences = max_difference(expected, got)
        source_error, exported_error = max_difference(expected, exact), max_difference(got, exact)
        scale = max(1.0, max(tensor.abs().max().item() for tensor in exact.values()))
        worst = max(exported_error, key=lambda name: exported_error[name] - FLOAT32_MARGIN * source_error[name])
        if exported_error[worst] > FLOAT32_MARGIN * source_error[worst] + TOLERANCE * scale:  # leanbert's fault
            raise RuntimeError(f"the exported BERT does not reproduce {self.source!r}: its output {worst} is "
                               f"{exported_error[worst]:.3g} from the source's exact (float64) value, where the "
                               f"source model itself is {source_error[worst]:.3g} from it")
        native_params, bert_params = model.num_parameters(), saved.num_parameters()
        config = model.config
        report = {
            "source": self.source,
            "source_architecture": type(model).__name__,
            "source_model_type": config.model_type,
            **({"attention_mode": config.attention_mode} if hasattr(config, "attention_mode") else {}),
            "source_checksum": weights_checksum(model),
            "exported_architecture": saved_class.__name__,
            "parameters": {"source": native_params, "exported": bert_params, "added": bert_params - native_params,
                           "added_fraction": round(bert_params / native_params - 1, 6)},
            "inference_flops": {"source": native_flops, "exported": bert_flops,
                                "ratio": round(bert_flops / native_flops, 6),
                                "batch": list(batch["input_ids"].shape),
                                "measure": "FLOPs of one forward pass on the check batch (torch's FlopCounterMode)"},
            "check": {"max_abs_difference": differences, "max": max(differences.values()),
                      "source_float32_error": max(source_error.values()),
                      "exported_float32_error": max(exported_error.values()),
                      "batch": f"{batch['input_ids'].shape[0]} random sequences of up to "
                               f"{batch['input_ids'].shape[1]} tokens with padding, two segments",
                      "measure": "max absolute difference between each output of the source model (leanbert) and "
                                 "of the exported folder loaded with transformers' BERT class, float32; and of each "
                                 "from the source model computed in float64 (its exact value): the export must be no "
                                 f"further from it than {FLOAT32_MARGIN} times the source itself, plus {TOLERANCE} "
                                 "times the outputs' scale"},
            "sparse_prediction": getattr(config, "sparse_prediction", False),
            "transformers_version": transformers.__version__,
            "leanbert_version": __version__,
            "seconds": round(time.perf_counter() - started, 1),
        }
        (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        write_model_card(folder, kind="exported", source=self.source)
        return report


def export(model: str | Path, output: str | Path, *, force: bool = False, allow_pickle: bool = False) -> dict:
    """Write the leanbert model `model` (a SymBert or SharedBert folder or Hub id) as plain BERT into `output`.

    Everything is checked before any work; the output is replaced only when the new one is complete, and only with
    `force` (see `leanbert.common.output`). Returns the report, also written to `output/export_report.json`.
    """
    target = SafeOutput(output, inputs=[("model", model)], force=force, command="leanbert-export")
    exporting = Export(model, allow_pickle=allow_pickle)
    with target as staging:
        report = exporting.write_to(staging)
        target.publish()
    return report
