"""leanbert: leaner BERT encoders for Hugging Face transformers.

Importing the package registers every architecture with the Auto classes, so that
`AutoModel.from_pretrained("./symbert-minilm")` works like it does for BERT.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_shared_bert import SharedBertConfig
from .configuration_shatter import ShatterConfig
from .configuration_sym_bert import SymBertConfig
from .modeling_shared_bert import (
    SharedBertForMaskedLM,
    SharedBertForMultipleChoice,
    SharedBertForQuestionAnswering,
    SharedBertForSequenceClassification,
    SharedBertForTokenClassification,
    SharedBertModel,
    SharedBertPreTrainedModel,
)
from .modeling_shatter import (
    ShatterForMaskedLM,
    ShatterForMultipleChoice,
    ShatterForQuestionAnswering,
    ShatterForSequenceClassification,
    ShatterForTokenClassification,
    ShatterModel,
    ShatterPreTrainedModel,
)
from .modeling_sym_bert import (
    SymBertForMaskedLM,
    SymBertForMultipleChoice,
    SymBertForQuestionAnswering,
    SymBertForSequenceClassification,
    SymBertForTokenClassification,
    SymBertModel,
    SymBertPreTrainedModel,
)

__version__ = "0.1.0"

ARCHITECTURES = {
    SymBertConfig: (
        SymBertModel,
        SymBertForMaskedLM,
        SymBertForSequenceClassification,
        SymBertForTokenClassification,
        SymBertForQuestionAnswering,
        SymBertForMultipleChoice,
    ),
    SharedBertConfig: (
        SharedBertModel,
        SharedBertForMaskedLM,
        SharedBertForSequenceClassification,
        SharedBertForTokenClassification,
        SharedBertForQuestionAnswering,
        SharedBertForMultipleChoice,
    ),
    ShatterConfig: (
        ShatterModel,
        ShatterForMaskedLM,
        ShatterForSequenceClassification,
        ShatterForTokenClassification,
        ShatterForQuestionAnswering,
        ShatterForMultipleChoice,
    ),
}

_AUTO_MODEL_CLASSES = (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoModelForQuestionAnswering,
    AutoModelForMultipleChoice,
)

for _config_class, _model_classes in ARCHITECTURES.items():
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    for _auto_class, _model_class in zip(_AUTO_MODEL_CLASSES, _model_classes):
        _auto_class.register(_config_class, _model_class, exist_ok=True)

__all__ = [
    "SharedBertConfig",
    "SharedBertForMaskedLM",
    "SharedBertForMultipleChoice",
    "SharedBertForQuestionAnswering",
    "SharedBertForSequenceClassification",
    "SharedBertForTokenClassification",
    "SharedBertModel",
    "SharedBertPreTrainedModel",
    "ShatterConfig",
    "ShatterForMaskedLM",
    "ShatterForMultipleChoice",
    "ShatterForQuestionAnswering",
    "ShatterForSequenceClassification",
    "ShatterForTokenClassification",
    "ShatterModel",
    "ShatterPreTrainedModel",
    "SymBertConfig",
    "SymBertForMaskedLM",
    "SymBertForMultipleChoice",
    "SymBertForQuestionAnswering",
    "SymBertForSequenceClassification",
    "SymBertForTokenClassification",
    "SymBertModel",
    "SymBertPreTrainedModel",
]
