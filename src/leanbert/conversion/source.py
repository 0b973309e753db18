"""Mapping a BERT source's weights onto a leanbert model, and the error conversion reports to users."""

from transformers import PreTrainedModel

from ..common.errors import LeanbertError

# BERT class of the source -> leanbert head that keeps its task weights
HEADS = {  # BERT's class -> the Auto class of its leanbert counterpart (`Architecture.classes`)
    "BertModel": "AutoModel",
    "BertForMaskedLM": "AutoModelForMaskedLM",
    "BertForPreTraining": "AutoModelForMaskedLM",
    "BertForNextSentencePrediction": "AutoModel",
    "BertForSequenceClassification": "AutoModelForSequenceClassification",
    "BertForTokenClassification": "AutoModelForTokenClassification",
    "BertForQuestionAnswering": "AutoModelForQuestionAnswering",
    "BertForMultipleChoice": "AutoModelForMultipleChoice",
}
DROPPED_HEAD_KEYS = ("cls.seq_relationship.",)  # next-sentence prediction has no leanbert counterpart


class ConversionError(LeanbertError):
    """A conversion cannot start or finish; the message is meant for the user as is."""


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
    prefix = "" if student.base_model is student else f"{student.base_model_prefix}."
    own = student.state_dict()
    state = {}
    for name, tensor in teacher.state_dict().items():
        if any(part in name for part in approximated) or name.startswith(DROPPED_HEAD_KEYS):
            continue
        if name.startswith("bert."):  # a head model's encoder; a bare BertModel's names have no prefix
            name = prefix + name.removeprefix("bert.")
        if name.startswith(f"{prefix}pooler.") and name not in own:
            continue  # BertForPreTraining's pooler serves only the dropped next-sentence head
        state[name] = tensor
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected:
        raise ConversionError(f"source weights with no place in the converted model: {sorted(unexpected)}")
    return sorted(set(missing) - set(student.all_tied_weights_keys))
