"""Masked-LM pretraining of BERT or a leanbert model, from scratch or from a checkpoint, on the training loop.

Everything is checked before any work: the model type and config overrides (by building the model), the
tokenizer (its ids must fit the model's vocabulary), the text files, the output and checkpoint folders, and on
`resume` every setting. Then the text is tokenised and packed (cached by `datasets`), the model trained, and the
output folder written atomically: the model (`save_pretrained`), its tokenizer, `training_report.json` and the
curves (`pretraining_curve.json`, `.png`).
"""

import json
import math
import os
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import AutoConfig, AutoModelForMaskedLM

from .. import __version__
from ..architectures import ARCHITECTURES
from ..common.errors import LeanbertError, first_line
from ..common.models import check_training_memory, load_config, load_tokenizer, load_weights
from ..common.output import check_disjoint, check_writable, exists
from ..configuration_encoder import LeanEncoderConfig, integer
from ..publishing import write_model_card
from .curves import write_curves
from .loop import TrainingLoop, TrainingSettings, process_state
from .run import TrainingRun
from .text import SeededMasking, packed_blocks, text_source

MODEL_TYPES = ("bert", *(architecture.model_type for architecture in ARCHITECTURES))
# the rules leanbert's configs apply to BERT's fields, applied to a fresh BertConfig's overrides too (a zero head
# count, an unknown activation or a nan epsilon would otherwise fail inside the model or the training)
BERT_FIELD_RULES = {**LeanEncoderConfig.field_rules, "num_attention_heads": integer()}
# encoder fields pretraining sets itself: an override would be replaced without a word, or break the loss
SET_BY_PRETRAINING = {
    "pad_token_id": "pretraining takes it from the tokenizer's padding token",
    "sparse_pred_ignore_index": "the masking marks the positions without a label -100, the value it must keep"}


def override_config(config, overrides: str):
    """`key=value,...` applied as transformers' `update_from_string` does (the value takes the type of the field's
    current value) to the fields that shape the encoder (those leanbert's config rules cover); an unknown field, any
    other field (a decoder or cross-attention switch, `model_type`, an output flag) or a value the config refuses is
    one line."""
    if not overrides:
        return config
    rules = type(config).field_rules if isinstance(config, LeanEncoderConfig) else BERT_FIELD_RULES
    settable = sorted(set(rules) & set(config.to_dict()) - set(SET_BY_PRETRAINING))
    for item in overrides.split(","):
        key = item.partition("=")[0].strip()
        if "=" not in item or not key:
            raise LeanbertError(f"config override {item!r} is not key=value")
        if key not in config.to_dict():
            raise LeanbertError(f"config override {key!r}: {config.model_type} configs have no field {key!r}")
        if key in SET_BY_PRETRAINING:
            raise LeanbertError(f"config override {key!r} is not yours to set: {SET_BY_PRETRAINING[key]}")
        if key not in settable:  # is_decoder, add_cross_attention, model_type, architectures, return_dict, ...
            raise LeanbertError(f"config override {key!r} does not apply to pretraining a {config.model_type} "
                                "encoder (it would change what is trained, or what the output says it is); the "
                                f"fields that can be set: {', '.join(settable)}")
    # transformers takes a value's type from the field's current value: a field that is None (classifier_dropout)
    # is set here, its value read as a number where it is one (the field's rule then judges it)
    unset = {key.strip(): value for key, _, value in (item.partition("=") for item in overrides.split(","))
             if config.to_dict()[key.strip()] is None}
    typed = ",".join(item for item in overrides.split(",") if item.partition("=")[0].strip() not in unset)
    try:
        for key, value in unset.items():
            value = None if value.strip().lower() in ("none", "null") else number_or_text(value.strip())
            if isinstance(value, str):
                raise LeanbertError(f"config override '{key}={value}': {key} takes a number, or none")
            setattr(config, key, value)
        if typed:
            config.update_from_string(typed)
        if config.model_type == "bert":  # BertConfig checks types only; leanbert's configs check each field when set
            values = config.to_dict()
            for field, rule in BERT_FIELD_RULES.items():
                if field in values:
                    rule(field, values[field])
    except (ValueError, TypeError) as error:
        raise LeanbertError(f"config override {overrides!r}: {first_line(error)}") from None
    return config


def number_or_text(value: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def check_cache_folder(cache: Path, folders: list[tuple[str, str | Path]]) -> None:
    """Refuse a `--cache-dir` that is not a folder, that is or lies inside an input, the output or the checkpoint
    folder (datasets would write its files into them; one holding them is fine, as datasets keeps to subfolders of
    its own), or that this user cannot write."""
    if exists(cache) and not cache.is_dir():
        raise LeanbertError(f"cache folder {str(cache)!r} exists and is not a folder")
    check_disjoint(cache, "cache folder", folders, may_contain=True)
    check_writable(cache, "cache folder")


def build_model(model_type: str | None, overrides: str, model: str | None, tokenizer: str | None,
                allow_pickle: bool):
    """The model to pretrain and its tokenizer: a fresh `model_type` (vocabulary sized to the tokenizer, then the
    overrides) or the checkpoint `model` (a masked-LM head it lacks starts from random values, as in transformers)."""
    if (model_type is None) == (model is None):
        raise LeanbertError("give either --model-type (pretrain from scratch) or --model (continue a checkpoint)")
    if model is not None:
        if overrides:
            raise LeanbertError("--config-overrides applies to --model-type; a checkpoint keeps its config")
        config = load_config(model, "model")
        if config.model_type not in MODEL_TYPES:
            raise LeanbertError(f"model {str(model)!r} is a {config.model_type!r} model; pretraining takes "
                                f"{', '.join(MODEL_TYPES)}")
        tok = load_tokenizer(tokenizer or model, "tokenizer" if tokenizer else "model", config.vocab_size)
        return load_weights(AutoModelForMaskedLM, model, "model", allow_pickle, allow_missing=("cls.",)), tok
    if model_type not in MODEL_TYPES:
        raise LeanbertError(f"unknown --model-type {model_type!r}; choose one of {', '.join(MODEL_TYPES)}")
    if tokenizer is None:
        raise LeanbertError("--model-type needs --tokenizer (a folder holding a tokenizer)")
    size = len(load_tokenizer(tokenizer, "tokenizer", math.inf))
    config = override_config(AutoConfig.for_model(model_type, vocab_size=size), overrides)
    tok = load_tokenizer(tokenizer, "tokenizer", config.vocab_size)
    config.pad_token_id = tok.pad_token_id
    state = process_state()
    try:  # counted on the meta device first: a config too large for memory is refused before anything is allocated
        check_training_memory(AutoModelForMaskedLM, config, f"the {model_type} config", state.device,
                              int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        built = AutoModelForMaskedLM.from_config(config)
    except (ValueError, TypeError) as error:  # fields that do not fit together (hidden_size vs heads, ...)
        raise LeanbertError(f"the {model_type} config does not build: {first_line(error)}") from None
    return built, tok


def pretrain(output: str | Path, *, train_file: str | Path, model_type: str | None = None, config_overrides: str = "",
             model: str | None = None, tokenizer: str | None = None, validation_file: str | Path | None = None,
             validation_split: float = 0.05, max_seq_length: int = 128, mlm_probability: float = 0.15,
             whole_word_masking: bool = False, cache_dir: str | None = None, checkpoint_dir: str | Path | None = None,
             resume: bool = False, force: bool = False, allow_pickle: bool = False, callback=None,
             **training) -> dict:
    """Pretrain and write the model to `output`; `training` are `TrainingSettings`. Returns the report."""
    settings = TrainingSettings(**training)
    if not 0 < mlm_probability < 1:
        raise LeanbertError(f"mlm_probability must be between 0 and 1, got {mlm_probability!r}")
    if not 0 <= validation_split < 1:
        raise LeanbertError(f"validation_split must be in [0, 1), got {validation_split!r}")
    train_files = text_source(train_file, "training text")
    validation_files = None if validation_file is None else text_source(validation_file, "validation text")
    inputs = [(name, path) for name, path in [("training text", train_file), ("validation text", validation_file),
                                              ("model", model), ("tokenizer", tokenizer)] if path is not None]
    run = TrainingRun(output, inputs, command="leanbert-pretrain", task="pretrain", checkpoint_dir=checkpoint_dir,
                      force=force)
    if cache_dir is not None:  # datasets fills it before the output exists, so it must stand apart from every folder
        check_cache_folder(Path(cache_dir), [*inputs, ("output", output), ("checkpoint folder", run.checkpoints.path)])
    set_seed(settings.seed)
    net, tok = build_model(model_type, config_overrides, model, tokenizer, allow_pickle)
    if tok.mask_token is None:
        raise LeanbertError("the tokenizer has no mask token; masked-LM pretraining needs one")
    if max_seq_length > net.config.max_position_embeddings or max_seq_length < 8:
        raise LeanbertError(f"max_seq_length must be between 8 and the model's max_position_embeddings "
                            f"({net.config.max_position_embeddings}), got {max_seq_length}")
    recorded = {"model_type": net.config.model_type, "config_overrides": config_overrides,
                "model": None if model is None else str(model),
                "tokenizer": None if tokenizer is None else str(tokenizer),
                "train_file": str(Path(train_file).resolve()),
                "validation_file": None if validation_file is None else str(Path(validation_file).resolve()),
                "validation_split": validation_split, "max_seq_length": max_seq_length,
                "mlm_probability": mlm_probability, "whole_word_masking": whole_word_masking, **settings.as_dict()}
    run.check_resume(recorded, resume, tokenizer=tok)

    def blocks(files, what):
        with process_state().main_process_first():  # the others then read what it cached
            return packed_blocks(files, tok, max_seq_length, whole_word_mask=whole_word_masking,
                                 cache_dir=cache_dir, what=what)

    train = blocks(train_files, "training text")
    if validation_files is not None:
        validation = blocks(validation_files, "validation text")
    elif validation_split > 0 and len(train) >= 2:
        if len(train) - math.ceil(validation_split * len(train)) < 1:  # datasets' count of held-out blocks
            raise LeanbertError(f"validation_split {validation_split} of the {len(train)} blocks the training text "
                                "packs into would leave no training block; lower it or give --validation-file")
        split = train.train_test_split(test_size=validation_split, seed=settings.seed, shuffle=True)
        train, validation = split["train"], split["test"]
    else:
        validation = None
    masking = SeededMasking(tok, mlm_probability, whole_word_masking, settings.seed)
    loop = TrainingLoop(net, settings, train, masking, eval_data=validation, name="pretraining",
                        eval_collate_fn=SeededMasking(tok, mlm_probability, whole_word_masking, settings.seed + 1),
                        evaluate=evaluate_perplexity)
    report = {"settings": recorded, "train_blocks": len(loop.train_data),
              "validation_blocks": len(loop.eval_data or []),
              "parameters": sum(p.numel() for p in net.parameters()), "leanbert_version": __version__}

    def summarize(history: dict) -> dict:
        report.update(steps=loop.step, samples=loop.samples, tokens=loop.samples * max_seq_length,
                      seconds=history["train"][-1]["seconds"], final_loss=history["train"][-1]["loss"],
                      validation=history["eval"][-1] if history["eval"] else None)
        return report

    def write(folder: Path, history: dict, state_dict: dict) -> None:
        # tied tensors (the decoder's weight is the word embeddings) are stored once
        run.target.expected_bytes = sum({(t.device, t.data_ptr()): t.numel() * t.element_size()
                                         for t in state_dict.values()}.values())
        loop.unwrapped().save_pretrained(folder, state_dict=state_dict)
        tok.save_pretrained(folder)
        (folder / "training_report.json").write_text(json.dumps(summarize(history), indent=2) + "\n")
        write_curves(history, folder, "pretraining", ylabel="masked-LM loss")
        write_model_card(folder, kind="pretrained", source=model)

    return summarize(run.train(loop, write, callback))


def evaluate_perplexity(model, loader, accelerator) -> dict:
    """Validation masked-LM loss (mean over the masked tokens of every block, each block counted once over all
    processes) and its perplexity."""
    sums, counts = [], []
    for batch in loader:
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()  # (B, L, V)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (B, L)
        sums.append(accelerator.gather_for_metrics(loss.sum(1)))
        counts.append(accelerator.gather_for_metrics((labels != -100).sum(1)))
    loss = (torch.cat(sums).sum() / torch.cat(counts).sum().clamp(min=1)).item()
    return {"loss": loss, "perplexity": math.exp(min(loss, 50))}
