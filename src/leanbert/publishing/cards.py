"""Model cards (`README.md`) for every folder leanbert writes: converted, healed, pretrained and fine-tuned models.

`write_model_card(folder, kind=...)` is called by each writer inside its staging folder, after the model and its
report are written and before the folder is published, so the card is part of the output (and of its manifest).
Everything it says is read from what the folder holds: `config.json` (architecture, head, sizes), the reports
(`conversion_report.json`, `training_report.json`, `results.json`) and the declaration in
`leanbert.architectures` (paper, what is reconstructed). Only the licence comes from elsewhere: the `license:` in the
YAML of the source's own card, when the source has one (a local `README.md`, or the Hub's, read from the cache or
downloaded; a failure leaves the licence out). The source's card itself is never copied.

Metadata (YAML, through `huggingface_hub.ModelCardData`):

- `library_name: transformers`; `pipeline_tag` from the saved class: fill-mask (`...ForMaskedLM`),
  text-classification, token-classification, question-answering, feature-extraction (`...Model`); none for
  multiple choice, which has no Hub task;
- `tags`: `leanbert`, the model type, `sentence-transformers` if the folder has a `modules.json`;
- `base_model`: the model this one derives from, only when that is a Hub id (a Hub source, or a local folder in the
  Hugging Face cache, `models--org--name`), or inherited from a local start folder's own leanbert card; a local
  path is not a Hub id (the Hub checks `base_model` when a card is committed), so it is named in the body instead;
- `base_model_relation: finetune`. The Hub knows four relations: adapter, merge, quantized, finetune. A converted
  model has new attention weights fitted to the source (and healing, pretraining and fine-tuning train them): its
  weights changed by fitting, which is what "finetune" says; it is not an adapter (the weights stand alone), not a
  merge (one parent) and not quantized (same precision, another architecture);
- `license` inherited as above; `datasets: [nyu-mll/glue]` for GLUE fine-tuning (the GLUE task by name) and
  `metrics`; local text (calibration, healing, pretraining) is named in the body only.

The body: the architecture and its paper (arXiv link; for Shatter the declaration's note on what is reconstructed),
the lineage (source, settings, leanbert version), parameter counts, fidelity to the source (mean and minimum cosine
of sentence embeddings, before and after healing), training results, and snippets that load the model, with
leanbert and with `trust_remote_code=True` without it (and with sentence-transformers, for a folder that has a
`modules.json`). The snippets read `model_id = "path/to/this/model"`;
`for_repo(text, repo_id)` puts the Hub id there (`publishing.hub` does so in the card it uploads).
"""

import json
import re
from pathlib import Path

from ..architectures import BY_MODEL_TYPE
from ..common.models import is_local

PLACEHOLDER = "path/to/this/model"
CARD = "README.md"
KINDS = ("converted", "healed", "pretrained", "finetuned", "exported")
RELATION = "finetune"  # see the module docstring
GLUE_DATASET = "nyu-mll/glue"
# class-name suffix -> (Auto class, Hub pipeline tag); the longest suffix that matches wins
HEADS = {
    "ForMaskedLM": ("AutoModelForMaskedLM", "fill-mask"),
    "ForSequenceClassification": ("AutoModelForSequenceClassification", "text-classification"),
    "ForTokenClassification": ("AutoModelForTokenClassification", "token-classification"),
    "ForQuestionAnswering": ("AutoModelForQuestionAnswering", "question-answering"),
    "ForMultipleChoice": ("AutoModelForMultipleChoice", None),
    "Model": ("AutoModel", "feature-extraction"),
}
HUB_METRICS = {"pearson": "pearsonr", "spearmanr": "spearmanr", "accuracy": "accuracy", "f1": "f1",
               "matthews_correlation": "matthews_correlation", "macro_f1": "f1", "micro_f1": "f1",
               "precision": "precision", "recall": "recall"}
PROBLEMS = {"single_label_classification": "classification", "regression": "regression",
            "multi_label_classification": "multi-label classification", "token_classification": "token classification"}
REPORTS = ("conversion_report.json", "training_report.json", "results.json")
EXPORT_REPORT = "export_report.json"


def for_repo(text: str, repo_id: str) -> str:
    """The card `text` with its snippets pointing at the Hub repository `repo_id` instead of a local folder."""
    return text.replace(f'model_id = "{PLACEHOLDER}"', f'model_id = "{repo_id}"')


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def hub_id(source: str | None) -> str | None:
    """The Hub id of `source`: itself when it is one, the repository of a folder in the Hugging Face cache
    (`.../models--org--name/snapshots/<commit>`), else None."""
    from huggingface_hub.utils import validate_repo_id

    if not source:
        return None
    candidate = None
    if is_local(source):
        for part in reversed(Path(source).expanduser().resolve().parts):
            if part.startswith("models--"):
                candidate = part.removeprefix("models--").replace("--", "/")
                break
    else:
        candidate = source
    try:
        validate_repo_id(candidate)
    except Exception:  # HFValidationError, or None
        return None
    return candidate or None


def source_card(source: str | None):
    """The source's own card (`ModelCard`), or None: a local folder's README.md, else the Hub's (from the cache, or
    downloaded unless offline). Never fails: a card is a nicety, the conversion or training is what counts."""
    from huggingface_hub import ModelCard

    if not source:
        return None
    path = Path(source).expanduser() / CARD if is_local(source) else None
    try:
        if path is None:
            from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

            cached = try_to_load_from_cache(source, CARD)
            if isinstance(cached, str):
                path = Path(cached)
            elif not constants.HF_HUB_OFFLINE:
                path = Path(hf_hub_download(source, CARD))
        return ModelCard.load(path) if path is not None and path.is_file() else None
    except Exception:  # no card, a card without YAML, no network: the licence stays unknown
        return None


# a Hub id in a card's usage snippets: from_pretrained('org/name'), SentenceTransformer('org/name'), model_id = "..."
HUB_ID_IN_SNIPPET = re.compile(r"""(?:from_pretrained|SentenceTransformer|model_id\s*=)\(?\s*"""
                               r"""['"]([\w.-]+/[\w.-]+)['"]""")


def known_as(folder: Path) -> tuple[str, str] | None:
    """What a local model folder says it is, and where that is said: the Hub repository of a Hugging Face cache
    folder; else its own card's (not a leanbert card's: that one says how it was made) Hub id, from its usage
    snippets (the one whose name is the card's title, else the most used), or its title; else the Hub id its config
    was saved from (`_name_or_path`). None when nothing says."""
    if hub_id(str(folder)):
        return hub_id(str(folder)), "from the Hugging Face cache"
    card = source_card(str(folder))
    if card is not None and "leanbert" not in (getattr(card.data, "tags", None) or []):
        title = next((line[2:].strip() for line in card.text.splitlines() if line.startswith("# ")), None)
        ids = HUB_ID_IN_SNIPPET.findall(card.text)
        named = [i for i in ids if title and i.split("/")[-1].casefold() == title.casefold()]
        if named or ids:
            return (named or sorted(ids, key=ids.count, reverse=True))[0], "named by its card"
        if title:
            return title, "the title of its card"
    saved_from = read_json(folder / "config.json").get("_name_or_path")
    if isinstance(saved_from, str) and not is_local(saved_from) and hub_id(saved_from):
        return saved_from, "saved from it, by its config"
    return None


def display(path: str | None) -> str:
    """How a source or data path appears on a card: a Hub id as is; a local model folder by what it says it is
    (`known_as`) and the folder's name, since the name alone (`model`) tells a reader nothing; another local path by
    its name (the card is meant to be published; the full path is in the report)."""
    if not path:
        return "(none)"
    path = str(path)
    if path == "bundled":
        return "the passages bundled with leanbert"
    if is_local(path):
        local = Path(path).expanduser()
        name = local.resolve().name if local.exists() else (local.name or path)
        if not local.is_dir():
            return f"`{name}` (local file)"
        known = known_as(local)
        if known is None:
            return f"`{name}` (local folder)"
        return f"`{known[0]}` ({known[1]}; local folder `{name}`)"
    return f"[`{path}`](https://huggingface.co/{path})"


def number(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def fixed(value, digits: int) -> str:
    """`value` with `digits` decimals, or "n/a" where a report (perhaps edited by hand) holds no number."""
    return f"{value:.{digits}f}" if is_number(value) else "n/a"


def scientific(value) -> str:
    return f"{value:.1e}" if is_number(value) else "n/a"


def mapping(report: dict, key: str) -> dict:
    """`report[key]` when it is a JSON object, else {}: a card is written from whatever the reports hold."""
    value = report.get(key)
    return value if isinstance(value, dict) else {}


def head_of(class_name: str) -> tuple[str, str | None]:
    for suffix in sorted(HEADS, key=len, reverse=True):
        if class_name.endswith(suffix):
            return HEADS[suffix]
    return "AutoModel", "feature-extraction"


def auto_class(class_name: str, architecture) -> str:
    """The Auto class that loads `class_name`: from the declaration for leanbert classes, by suffix for BERT's."""
    if architecture is not None:
        for auto, cls in architecture.classes.items():
            if cls.__name__ == class_name:
                return auto
    return head_of(class_name)[0]


def snippet(auto: str, architecture, remote: bool) -> str:
    """A runnable example for the head `auto`, loading with leanbert imported or with remote code."""
    example = {
        "AutoModelForMaskedLM": [
            'inputs = tokenizer(f"Paris is the {tokenizer.mask_token} of France.", return_tensors="pt")',
            "with torch.no_grad():",
            "    logits = model(**inputs).logits",
            'position = inputs["input_ids"][0].tolist().index(tokenizer.mask_token_id)',
            "print(tokenizer.decode(logits[0, position].argmax()))"],
        "AutoModelForSequenceClassification": [
            'inputs = tokenizer("A man is playing a guitar.", "Someone plays music.", return_tensors="pt")',
            "with torch.no_grad():",
            "    logits = model(**inputs).logits",
            "print(logits if model.config.problem_type == \"regression\" else "
            "model.config.id2label[int(logits.argmax(-1))])"],
        "AutoModelForMultipleChoice": [
            'pairs = tokenizer(["The sky is", "The sky is"], ["blue.", "made of cheese."], padding=True, '
            'return_tensors="pt")',
            "with torch.no_grad():",
            "    logits = model(**{key: value.unsqueeze(0) for key, value in pairs.items()}).logits",
            "print(logits.softmax(-1))"],
        "AutoModel": [
            'inputs = tokenizer(["A first sentence.", "Another one."], padding=True, return_tensors="pt")',
            "with torch.no_grad():",
            "    hidden = model(**inputs).last_hidden_state",
            'mask = inputs["attention_mask"].unsqueeze(-1)',
            "embeddings = (hidden * mask).sum(1) / mask.sum(1)  # mean pooling: one vector per sentence",
            "print(embeddings.shape)"],
    }.get(auto, [
        'inputs = tokenizer("Paris is the capital of France.", return_tensors="pt")',
        "with torch.no_grad():",
        "    outputs = model(**inputs)",
        "print({key: tuple(value.shape) for key, value in outputs.items()})"])
    lines = ["import torch", f"from transformers import {auto}, AutoTokenizer", ""]
    if architecture is not None and not remote:
        lines += [f"import leanbert  # registers {architecture.name} with transformers' Auto classes", ""]
    lines += [f'model_id = "{PLACEHOLDER}"  # this folder, or its id on the Hub',
              f"tokenizer = AutoTokenizer.from_pretrained(model_id{', trust_remote_code=True' if remote else ''})",
              f"model = {auto}.from_pretrained(model_id{', trust_remote_code=True' if remote else ''}).eval()",
              *example]
    return "```python\n" + "\n".join(lines) + "\n```"


def local_card_title(start: str | None) -> str | None:
    """The title of a local start folder's leanbert card ("ShatterForMaskedLM, pretrained with masked-LM")."""
    if not start or not is_local(start):
        return None
    card = source_card(start)
    if card is None or "leanbert" not in (getattr(card.data, "tags", None) or []):
        return None
    title = next((line[2:].strip() for line in card.text.splitlines() if line.startswith("# ")), None)
    return title or None


def inherited_base_model(start: str | None) -> str | None:
    """A local start folder's own `base_model` (a leanbert card in it), so that lineage survives local steps."""
    if not start or not is_local(start):
        return None
    card = source_card(start)
    value = getattr(card.data, "base_model", None) if card is not None else None
    return value if isinstance(value, str) else None


def declared(model_type):
    """The declared architecture of a `model_type` read from a user's file (anything, even not a string), or None."""
    return BY_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None


def write_model_card(folder: str | Path, *, kind: str, source: str | Path | None = None) -> Path:
    """Write `folder/README.md` for the model saved in `folder`; `kind` is how it was made ("converted", "healed",
    "pretrained", "finetuned"), `source` the model it started from (a folder or Hub id; for converted and healed
    models the conversion report's source by default). Returns the card's path."""
    from huggingface_hub import ModelCardData

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    folder = Path(folder)
    config = read_json(folder / "config.json")
    conversion, training, results = (read_json(folder / name) for name in REPORTS)
    exported = read_json(folder / EXPORT_REPORT)
    if source is None and kind in ("converted", "healed", "exported"):
        source = (exported if kind == "exported" else conversion).get("source")
    source = None if source is None else str(source)
    model_type = config.get("model_type", "")
    architecture = declared(model_type)
    class_name = (config.get("architectures") or [f"{architecture.name if architecture else 'Bert'}Model"])[0]
    auto = auto_class(class_name, architecture)
    pipeline_tag = head_of(class_name)[1]

    base_model = hub_id(source) or inherited_base_model(source)
    origin = source_card(source)
    license_ = getattr(origin.data, "license", None) if origin is not None else None
    tags = ["leanbert", model_type, exported.get("source_model_type")]
    tags += ["sentence-transformers"] if (folder / "modules.json").is_file() else []
    data = ModelCardData(
        library_name="transformers", pipeline_tag=pipeline_tag, tags=[tag for tag in tags if tag],
        base_model=base_model, base_model_relation=RELATION if base_model else None,
        license=license_ if isinstance(license_, str) else None,
        datasets=[results.get("dataset", GLUE_DATASET)] if kind == "finetuned" and results.get(
            "dataset", GLUE_DATASET) else None,
        metrics=list(dict.fromkeys(HUB_METRICS[m] for m in mapping(results, "metrics") if m in HUB_METRICS)) or None)

    name = architecture.name if architecture else "BERT"
    title = {"converted": f"{class_name}, converted from {display(source)}",
             "healed": f"{class_name}, converted from {display(source)} and healed by distillation",
             "pretrained": f"{class_name}, pretrained with masked-LM",
             "finetuned": f"{class_name}, fine-tuned on {finetuned_on(results)}",
             "exported": f"{class_name}, the exact BERT form of {exported.get('source_architecture')} "
                         f"{display(source)}"}[kind]
    body = [f"# {title}", ""]
    if kind == "exported":
        body += export_sections(exported, source, base_model, license_)
        body += usage(auto, None, sentence_transformers=(folder / "modules.json").is_file())
        return save_card(folder, data, body)
    body += about(name, architecture, config)
    body += lineage(source, base_model, conversion, training, results, license_)
    body += parameters(conversion, training or results)
    body += fidelity(conversion)
    body += training_results(kind, training, results)
    body += usage(auto, architecture, sentence_transformers=(folder / "modules.json").is_file())
    return save_card(folder, data, body)


def save_card(folder: Path, data, body: list[str]) -> Path:
    """Write the card (YAML metadata, then the body's lines) to `folder/README.md`."""
    from huggingface_hub import ModelCard

    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body).rstrip() + "\n"
    path = folder / CARD
    ModelCard(text).save(path)
    return path


def export_sections(exported: dict, source, base_model, license_) -> list[str]:
    """What an exported BERT is, where it comes from, that it computes the same outputs and what that costs."""
    native = declared(exported.get("source_model_type"))
    paper = (f" ([arXiv {native.arxiv}](https://arxiv.org/abs/{native.arxiv}): {native.title[0].lower()}"
             f"{native.title[1:]})" if native else "")
    mode = f", attention_mode `{exported['attention_mode']}`" if "attention_mode" in exported else ""
    check, counts, flops = (mapping(exported, key) for key in ("check", "parameters", "inference_flops"))
    added = counts.get("added_fraction")
    lines = ["## Model", "",
             f"A plain BERT (`model_type: bert`, transformers' `{exported.get('exported_architecture')}`): no custom "
             "code, no `trust_remote_code`. It loads with transformers 4.x and 5.x alone and runs wherever BERT runs "
             "(text-embeddings-inference, vLLM, optimum's ONNX export, transformers.js, candle).", "",
             f"It was trained or converted as **{native.name if native else exported.get('source_model_type')}**"
             f"{paper}{mode}, whose attention is BERT's with particular weights; `leanbert-export` (leanbert "
             f"{exported.get('leanbert_version')}) multiplied those weights out. Its outputs are those of the "
             f"source: on {check.get('batch')}, every output (hidden states, pooler, logits) differs from the source "
             f"model's by at most {scientific(check.get('max'))} in float32, where the source model itself is within "
             f"{scientific(check.get('source_float32_error'))} of its exact (float64) outputs and this model within "
             f"{scientific(check.get('exported_float32_error'))}.", "",
             "## Lineage", "", f"- Exported from {display(source)}, a {exported.get('source_architecture')}."]
    lines += provenance(source, base_model, license_)
    if exported.get("sparse_prediction"):
        lines.append("- The source predicted masked tokens sparsely in training (`sparse_prediction`); BERT computes "
                     "the same logits at every position.")
    lines += ["", f"`{EXPORT_REPORT}` in this repository holds every measurement.", "",
              "## Cost", "",
              "The same function at BERT's cost: the shared projections of the source are three full ones again. "
              "Keep the source model where leanbert (or remote code) can run and its lower cost matters.", "",
              "| | parameters | inference FLOPs |", "|---|---|---|",
              f"| source ({exported.get('source_architecture')}) | {number(counts.get('source'))} | "
              f"{number(flops.get('source'))} |",
              f"| this model ({exported.get('exported_architecture')}) | {number(counts.get('exported'))} | "
              f"{number(flops.get('exported'))} |", "",
              f"FLOPs of one forward pass on the batch of the check ({flops.get('batch')}); this model costs "
              f"×{fixed(flops.get('ratio'), 3)} as much and has "
              f"{fixed(100 * added if is_number(added) else None, 2)}% more "
              "parameters.", ""]
    return lines


def about(name: str, architecture, config: dict) -> list[str]:
    sizes = (f"{config.get('num_hidden_layers')} layers, hidden size {config.get('hidden_size')}, "
             + (f"{config['num_attention_heads']} attention heads, " if "num_attention_heads" in config else "")
             + f"vocabulary {number(config.get('vocab_size'))}, up to {config.get('max_position_embeddings')} tokens")
    if architecture is None:
        return ["## Model", "", f"A BERT encoder ({sizes}) written by leanbert.", ""]
    arxiv = architecture.arxiv
    lines = ["## Model", "",
             f"**{name}** (`model_type: {architecture.model_type}`): {architecture.title[0].lower()}"
             f"{architecture.title[1:]}. Paper: [arXiv {arxiv}](https://arxiv.org/abs/{arxiv}). "
             f"Everything outside self-attention is BERT's. This model: {sizes}.", ""]
    if architecture.reconstruction:
        lines += [f"**What is the paper's and what is leanbert's.** {architecture.reconstruction}", ""]
    return lines


def lineage(source, base_model, conversion: dict, training: dict, results: dict, license_) -> list[str]:
    lines = ["## Lineage", ""]
    if conversion:
        settings = mapping(conversion, "settings")
        mode = f", attention_mode `{conversion['attention_mode']}`" if "attention_mode" in conversion else ""
        lines += [f"- Converted from {display(conversion.get('source'))}, a "
                  f"{conversion.get('source_architecture')}, by `leanbert-convert` (leanbert "
                  f"{conversion.get('leanbert_version')}): calibrated on "
                  f"{settings.get('calibration_passages')} passages of {display(settings.get('calibration_text'))}, "
                  f"max length {settings.get('max_length')}, {settings.get('refine_steps')} refinement steps, seed "
                  f"{settings.get('seed')}{mode}."]
        if conversion.get("note"):
            lines.append(f"- {conversion['note']}")
        dropout = mapping(conversion, "dropout")
        if "why" in dropout:
            lines.append(f"- Attention-probability dropout is off in this model's config: {dropout['why']}. Set "
                         "`attention_probs_dropout_prob` to turn it back on.")
        elif "kept" in dropout:
            lines.append(f"- Attention-probability dropout was {dropout['kept']}.")
        healing = mapping(conversion, "healing")
        if healing:
            lines.append(f"- Healed by distillation from {display(healing.get('teacher'))} on "
                         f"{healing.get('passages_used')} passages of {display(healing.get('text'))}: "
                         f"{healing.get('steps')} steps of {healing.get('batch_size')}, learning rate "
                         f"{healing.get('learning_rate')}, parameters trained: {healing.get('train')}, objective "
                         f"{healing.get('objective')}, attention weight {healing.get('attention_weight')}, seed "
                         f"{healing.get('seed')}.")
    if training:
        settings = mapping(training, "settings")
        start = (f"continued from {display(settings['model'])}" if settings.get("model") else
                 f"from scratch (`{settings.get('model_type')}`"
                 + (f", config overrides `{settings['config_overrides']}`" if settings.get("config_overrides") else "")
                 + ")")
        lines.append(f"- Masked-LM pretraining {start} by `leanbert-pretrain` (leanbert "
                     f"{training.get('leanbert_version')}) on {display(settings.get('train_file'))}: "
                     f"{training.get('steps')} steps, {number(training.get('tokens'))} tokens in blocks of "
                     f"{settings.get('max_seq_length')}, batch {settings.get('batch_size')} × "
                     f"{settings.get('gradient_accumulation_steps')} accumulation per process, learning rate "
                     f"{settings.get('learning_rate')} ({settings.get('scheduler')}), masking probability "
                     f"{settings.get('mlm_probability')}, seed {settings.get('seed')}.")
    if results:
        settings = mapping(results, "settings")
        data = (f" (data: {display(settings.get('data_dir'))})" if settings.get("data_dir") else "")
        lines.append(f"- Fine-tuned from {display(settings.get('model'))} on {finetuned_on(results)}{data} by "
                     f"`leanbert-finetune` (leanbert {results.get('leanbert_version')}): {results.get('steps')} "
                     f"steps, batch {settings.get('batch_size')}, learning rate {settings.get('learning_rate')}, "
                     f"max length {settings.get('max_seq_length')}, seed {settings.get('seed')}.")
    lines += provenance(source, base_model, license_)
    reports = [f"`{name}`" for name, report in zip(REPORTS, (conversion, training, results)) if report]
    if reports:
        lines += ["", f"{', '.join(reports)} in this repository hold{'s' if len(reports) == 1 else ''} every "
                      "setting and measurement."]
    return lines + [""]


def provenance(source, base_model, license_) -> list[str]:
    """Lineage lines: what a local leanbert start folder itself came from (its card), and the licence."""
    lines = []
    origin = local_card_title(source)
    if origin:
        lines.append(f"- {display(source)} is itself a leanbert model: {origin}"
                     + (f", derived from {display(base_model)}" if base_model else "") + ".")
    if isinstance(license_, str):
        lines.append(f"- Licence: `{license_}`, as stated by the source's card.")
    elif source:
        lines.append("- Licence: the source's card states none; the source's terms apply to what derives from it.")
    else:
        lines.append("- Licence: none stated; the training text's terms may apply.")
    return lines


def parameters(conversion: dict, report: dict) -> list[str]:
    counts = mapping(conversion, "parameters")
    if all(is_number(counts.get(key)) for key in ("source", "converted", "saved", "saved_fraction")):
        return ["## Parameters", "", "| model | parameters |", "|---|---|",
                f"| source ({conversion.get('source_architecture')}) | {number(counts['source'])} |",
                f"| this model ({conversion.get('target_architecture')}) | {number(counts['converted'])} |",
                f"| saved | {number(counts['saved'])} ({100 * counts['saved_fraction']:.2f}%) |", ""]
    if isinstance(report.get("parameters"), int):
        return ["## Parameters", "", "| model | parameters |", "|---|---|",
                f"| this model | {number(report['parameters'])} |", ""]
    return []


def fidelity(conversion: dict) -> list[str]:
    measured = mapping(conversion, "fidelity")
    if not measured:
        return []
    lines = ["## Fidelity to the source", "",
             f"Measured on {measured.get('heldout_passages')} passages: the {measured.get('measure')}.", "",
             "| | mean cosine | min cosine |", "|---|---|---|",
             f"| converted | {fixed(measured.get('mean_cosine'), 4)} | {fixed(measured.get('min_cosine'), 4)} |"]
    after = mapping(mapping(conversion, "healing"), "fidelity_after")
    if after:
        lines.append(f"| after healing | {fixed(after.get('mean_cosine'), 4)} | {fixed(after.get('min_cosine'), 4)} |")
    return lines + [""]


def training_results(kind: str, training: dict, results: dict) -> list[str]:
    lines = []
    if training:
        validation = mapping(training, "validation")
        lines += ["## Pretraining results", "", "| | value |", "|---|---|",
                  f"| steps | {number(training.get('steps'))} |", f"| samples | {number(training.get('samples'))} |",
                  f"| final training loss | {fixed(training.get('final_loss'), 4)} |"]
        if validation:
            lines += [f"| validation loss | {fixed(validation.get('loss'), 4)} |",
                      f"| validation perplexity | {fixed(validation.get('perplexity'), 2)} |"]
        lines += ["", "![pretraining curve](pretraining_curve.png)", ""]
    if results:
        metrics, best = mapping(results, "metrics"), mapping(results, "best")
        names = [key for key in metrics if key not in ("step", "samples", "seconds", "loss")]
        lines += [f"## Results on {finetuned_on(results)} (validation: "
                  f"{number(results.get('validation_examples'))} examples)", ""]
        labels = results.get("labels")
        if results.get("problem_type") in PROBLEMS:
            lines += [f"Task: {PROBLEMS[results['problem_type']]}"
                      + (f", {len(labels)} labels: {', '.join(f'`{label}`' for label in labels)}"
                         if isinstance(labels, list) else "") + ".", ""]
        lines += ["| | " + " | ".join(names) + " | loss | step |", "|---" * (len(names) + 3) + "|",
                  "| final | " + " | ".join(fixed(metrics[n], 4) for n in names)
                  + f" | {fixed(metrics.get('loss'), 4)} | {metrics.get('step')} |"]
        if best:
            lines.append("| best | " + " | ".join(fixed(best.get(n), 4) for n in names)
                         + f" | {fixed(best.get('loss'), 4)} | {best.get('step')} |")
        undefined = mapping(results, "undefined")
        for name, why in undefined.items():
            lines += ["", f"{name} is undefined (n/a above): {why}."]
        entities = mapping(results, "entities")
        if entities:
            lines += ["", "| entity type | precision | recall | f1 | number |", "|---|---|---|---|---|"]
            for name in entities:
                scores = mapping(entities, name)
                lines.append(f"| {name} | " + " | ".join(fixed(scores.get(key), 4) for key in ("precision", "recall",
                                                                                              "f1"))
                             + f" | {scores.get('number')} |")
        lines += ["", f"The main metric is {results.get('main_metric')}; the saved model is the final one.", "",
                  "![fine-tuning curve](finetuning_curve.png)", ""]
    if kind == "healed":
        lines += ["![healing curve](healing_curve.png)", ""]
    return lines


def finetuned_on(results: dict) -> str:
    """What a model was fine-tuned on: the results' own words ("GLUE RTE", "`tickets.csv` (local train file)"), or
    the GLUE task of results written before they had them."""
    return str(results.get("data") or f"GLUE {str(results.get('task', '')).upper()}")


def sentence_snippet(architecture, remote: bool) -> str:
    """A runnable sentence-transformers example (the folder holds a modules.json)."""
    lines = ["from sentence_transformers import SentenceTransformer", ""]
    if architecture is not None and not remote:
        lines += [f"import leanbert  # registers {architecture.name} with transformers' Auto classes", ""]
    lines += [f'model_id = "{PLACEHOLDER}"  # this folder, or its id on the Hub',
              f"model = SentenceTransformer(model_id{', trust_remote_code=True' if remote else ''})",
              'embeddings = model.encode(["A man is playing a guitar.", "Someone plays music."])',
              "print(model.similarity(embeddings, embeddings))"]
    return "```python\n" + "\n".join(lines) + "\n```"


def usage(auto: str, architecture, sentence_transformers: bool = False) -> list[str]:
    lines = ["## Use", ""]
    if architecture is None:
        lines += ["With transformers alone:", "", snippet(auto, None, remote=False), ""]
        if sentence_transformers:
            lines += ["With sentence-transformers (its modules, pooling and settings are in this repository):", "",
                      sentence_snippet(None, remote=False), ""]
        return lines
    lines += ["With leanbert installed:", "", snippet(auto, architecture, remote=False), ""]
    if sentence_transformers:
        lines += ["As a sentence-transformers model (its modules, pooling and settings are in this repository), "
                  "with leanbert installed:", "", sentence_snippet(architecture, remote=False), ""]
    lines += ["Without leanbert: the model's code is in this repository (`configuration_*.py`, `modeling_*.py`) and "
              "`config.json` maps every Auto class to it. `trust_remote_code=True` runs that code: read it first, and "
              "pin a `revision` when loading from the Hub.", "", snippet(auto, architecture, remote=True), ""]
    if sentence_transformers:
        lines += ["With sentence-transformers, without leanbert:", "", sentence_snippet(architecture, remote=True), ""]
    return lines
