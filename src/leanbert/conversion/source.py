"""Loading the BERT checkpoint a conversion starts from, and mapping its weights onto a leanbert model."""

from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel

# BERT class of the source -> leanbert head that keeps its task weights
HEADS = {
    "BertModel": "Model",
    "BertForMaskedLM": "ForMaskedLM",
    "BertForPreTraining": "ForMaskedLM",
    "BertForNextSentencePrediction": "Model",
    "BertForSequenceClassification": "ForSequenceClassification",
    "BertForTokenClassification": "ForTokenClassification",
    "BertForQuestionAnswering": "ForQuestionAnswering",
    "BertForMultipleChoice": "ForMultipleChoice",
}
DROPPED_HEAD_KEYS = ("cls.seq_relationship.",)  # next-sentence prediction has no leanbert counterpart


class ConversionError(Exception):
    """A conversion cannot start or finish; the message is meant for the user as is."""


def load_bert(source: str, allow_pickle: bool = False) -> tuple[PreTrainedModel, "transformers.PreTrainedTokenizerBase"]:
    """The source BERT (with its task head, in eval mode, float32) and its tokenizer, from a folder or a Hub id.

    Only safetensors weights are read unless `allow_pickle` is set: a `pytorch_model.bin` can run arbitrary code.
    """
    local = Path(source).exists() or source.startswith((".", "/", "~"))
    if local and not Path(source).is_dir():
        raise ConversionError(f"source {source!r} not found: no such folder or Hub model")
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as error:
        raise ConversionError(f"source {source!r} not found: no such folder or Hub model ({error})")
    if config.model_type != "bert":
        raise ConversionError(f"{source!r} is a {config.model_type!r} checkpoint; leanbert converts BERT checkpoints "
                              "(model_type 'bert')")
    if getattr(config, "is_decoder", False):
        raise ConversionError(f"{source!r} is a causal BERT decoder (is_decoder=True); leanbert converts encoders")
    architecture = (config.architectures or ["BertModel"])[0]
    if architecture not in HEADS:
        raise ConversionError(f"{source!r} holds a {architecture}; supported: {', '.join(HEADS)}")
    try:
        model = getattr(transformers, architecture).from_pretrained(
            source, use_safetensors=None if allow_pickle else True, dtype=torch.float32
        )
    except OSError as error:
        hint = "" if allow_pickle else " (only safetensors weights are read; pass --allow-pickle to trust a .bin)"
        raise ConversionError(f"cannot load weights from {source!r}{hint}: {error}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ConversionError(f"{source!r} has no usable tokenizer, which calibration needs: {error}")
    return model.eval(), tokenizer


def leanbert_config_fields(bert_config) -> dict:
    """The BERT config fields (and task labels) a leanbert config takes over unchanged."""
    fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
              "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "classifier_dropout",
              "id2label", "label2id", "problem_type")
    return {name: getattr(bert_config, name) for name in fields if getattr(bert_config, name, None) is not None}


def transfer_weights(teacher: PreTrainedModel, student: PreTrainedModel, approximated: tuple[str, ...]) -> list[str]:
    """Copy every teacher weight whose role the student keeps; return the student parameters left to fit.

    `approximated` are name fragments of teacher weights with no exact student counterpart (e.g.
    "attention.self.query."). Names are BERT's on both sides, apart from the base-model prefix.
    """
    prefix = student.base_model_prefix
    state = {}
    for name, tensor in teacher.state_dict().items():
        if any(part in name for part in approximated) or name.startswith(DROPPED_HEAD_KEYS):
            continue
        if name.startswith("bert."):  # a head model's encoder; a bare BertModel's names have no prefix
            name = f"{prefix}.{name.removeprefix('bert.')}"
        state[name] = tensor
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected:
        raise ConversionError(f"source weights with no place in the converted model: {sorted(unexpected)}")
    return sorted(set(missing) - set(student.all_tied_weights_keys))
