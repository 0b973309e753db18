"""The BERT encoder skeleton that every leanbert architecture shares, written once.

Embeddings, the post-LN residual layer, the feed-forward block, the pooler and the five task heads are BERT's,
with BERT's parameter names (`embeddings.word_embeddings`, `attention.output.dense`, `cls.predictions`, ...), so
that a BERT checkpoint maps onto them one to one. An architecture contributes only its self-attention module and
its config, through the class attribute `attention_class` of its `PreTrainedModel`; see `modeling_sym_bert.py`.

Shapes: B batch, L sequence length, d hidden size, H heads, d_h = d / H.

This file ships next to each checkpoint (remote code): it imports only torch, transformers and its siblings, and runs
on transformers 4.48 and later (`transformers_compat.py`).
"""

import sys

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.processing_utils import Unpack

from .transformers_compat import (
    CAN_CHECKPOINT,
    GradientCheckpointingLayer,
    TransformersKwargs,
    can_return_tuple,
    capture_outputs,
    create_bidirectional_mask,
    init,
    merge_with_config_defaults,
)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling + mask) v, the reference every fused path is tested against."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, L, L)
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, L, H, d_v)
    return output, weights


class LeanSelfAttention(nn.Module):
    """What an architecture's self-attention module provides: to the shared encoder, and to conversion, export and
    the benchmarks, which read it from here rather than keeping lists of architectures.

    - `forward(hidden_states (B, L, d), attention_mask) -> (context (B, L, d), weights (B, H, L, L) or None)`, the
      paper's equation, through transformers' attention interface where it fits.
    - `has_output_projection`: whether BERT's output projection (`attention.output.dense`) follows. False when the
      module's value matrices already map into the residual stream.
    - `reference_logits(x)`: the pre-softmax scores (n, H, L, L) written out from the weights in float64, the
      paper's formula without the forward's shortcuts: what tests check `forward` against and what conversion
      measures its fidelity with.
    - `forward_matmuls(config, batch_size, seq_len)`: every matrix product of one forward pass, as (FLOPs, number of
      operands that need a gradient), in `torch.utils.flop_counter`'s count (benchmarks' FLOP counts).
    - `bert_projections()`: BERT's query, key and value weights and biases that compute exactly this attention,
      for modules that have such a BERT form (then `leanbert-export` writes the model as plain BERT); None if not.

    A module that does not supply `reference_logits` or `forward_matmuls` fails loudly where they are needed.
    """

    has_output_projection: bool = True

    def reference_logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not write out its attention logits (reference_logits)")

    @classmethod
    def forward_matmuls(cls, config, batch_size: int, seq_len: int) -> list[tuple[int, int]]:
        raise NotImplementedError(f"{cls.__name__} does not count its matrix products (forward_matmuls)")

    def bert_projections(self) -> dict[str, torch.Tensor] | None:
        return None

    @classmethod
    def has_bert_form(cls) -> bool:
        return cls.bert_projections is not LeanSelfAttention.bert_projections


def linear_flops(tokens: int, inputs: int, outputs: int) -> tuple[int, int]:
    """An (tokens x inputs) @ (inputs x outputs) product with a trainable weight: (FLOPs, 2 operands needing a
    gradient). Biases are elementwise and not counted."""
    return 2 * tokens * inputs * outputs, 2


def scores_flops(batch_size: int, seq_len: int, width: int) -> tuple[int, int]:
    """q·kᵀ (or a·v) over all heads together: batch × L × L × width multiply-adds, both operands trainable."""
    return 2 * batch_size * seq_len * seq_len * width, 2


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(n, L, d) -> (n, H, L, d / H)."""
    return x.view(*x.shape[:2], heads, -1).transpose(1, 2)


def head_size(config) -> int:
    """d_h = hidden_size / num_attention_heads. A rule between two config fields, so it is checked here, where the
    model is built, as BERT's attention does."""
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"hidden_size={config.hidden_size} must be a multiple of "
                         f"num_attention_heads={config.num_attention_heads}")
    return config.hidden_size // config.num_attention_heads


class LeanEmbeddings(nn.Module):
    """Word + segment (+ absolute position, unless the config turns them off) embeddings, LayerNorm, dropout."""

    def __init__(self, config):
        super().__init__()
        if config.pad_token_id is not None and config.pad_token_id >= config.vocab_size:
            raise ValueError(f"pad_token_id={config.pad_token_id} must be below vocab_size={config.vocab_size}")
        self.max_length = config.max_position_embeddings
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if getattr(config, "absolute_position_embeddings", True)
            else None
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.position_ids = nn.Buffer(torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        length = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
        # Every architecture stops at max_position_embeddings, also without absolute positions: Shatter's
        # Bernstein parts turn negative beyond it. On a symbolic length this `if` is a shape guard, which
        # torch.compile and torch.export turn into the range L <= max_position_embeddings (torch._check could not
        # name the length: its message may not depend on a symbolic value).
        if length > self.max_length:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings={self.max_length}, "
                             "the longest sequence this model accepts")
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)  # (B, L, d)
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        if self.position_embeddings is not None:
            if position_ids is None:
                position_ids = self.position_ids[:, : inputs_embeds.shape[1]]
            embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class LeanSelfOutput(nn.Module):
    """Output projection, dropout and post-LN residual. The projection is omitted for attention modules whose
    value matrices already map into the residual stream (`LeanSelfAttention.has_output_projection`)."""

    def __init__(self, config, project: bool = True):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size) if project else None
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            hidden_states = self.dense(hidden_states)
        return self.LayerNorm(self.dropout(hidden_states) + input_tensor)


class LeanAttention(nn.Module):
    """The attention block: the architecture's self-attention (`self`) followed by `output`, as in BERT."""

    def __init__(self, config, attention_class: type[LeanSelfAttention]):
        super().__init__()
        self.self = attention_class(config)
        self.output = LeanSelfOutput(config, project=attention_class.has_output_projection)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, weights = self.self(hidden_states, attention_mask, **kwargs)
        return self.output(context, hidden_states), weights


class LeanIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class LeanOutput(nn.Module):
    """Second feed-forward projection, dropout and post-LN residual."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class LeanLayer(GradientCheckpointingLayer):
    """One post-LN transformer layer: attention block, then feed-forward block."""

    def __init__(self, config, attention_class: type[LeanSelfAttention]):
        super().__init__()
        self.attention = LeanAttention(config, attention_class)
        self.intermediate = LeanIntermediate(config)
        self.output = LeanOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attention_output, _ = self.attention(hidden_states, attention_mask, **kwargs)
        return self.output(self.intermediate(attention_output), attention_output)


class LeanEncoder(nn.Module):
    def __init__(self, config, attention_class: type[LeanSelfAttention]):
        super().__init__()
        self.layer = nn.ModuleList([LeanLayer(config, attention_class) for _ in range(config.num_hidden_layers)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states, attention_mask, **kwargs)
        return hidden_states


class LeanPooler(nn.Module):
    """tanh(dense(h_[CLS])), BERT's pooler."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class LeanPredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class LeanLMPredictionHead(nn.Module):
    """Transform, then a decoder tied to the word embeddings with its own output bias."""

    def __init__(self, config):
        super().__init__()
        self.transform = LeanPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def _tie_weights(self) -> None:
        """Make the decoder's bias the head's `bias`. transformers 5 ties it through `_tied_weights_keys`; transformers
        4 ties only the decoder's weight from there and calls this after loading, without which the bias would load
        as zero or uninitialised memory."""
        self.decoder.bias = self.bias

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class LeanOnlyMLMHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = LeanLMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.predictions(sequence_output)


class LeanPreTrainedModel(PreTrainedModel):
    """Weights init and the transformers feature flags shared by all leanbert models.

    Subclasses set `config` (annotation), `base_model_prefix` and `attention_class` (a `LeanSelfAttention`); heads
    also set `base_model_class` (the architecture's `...Model`).
    """

    supports_gradient_checkpointing = CAN_CHECKPOINT
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["LeanEmbeddings", "LeanLayer"]
    _can_record_outputs = {"hidden_states": LeanLayer, "attentions": LeanAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LeanLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, LeanEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as transformers does, with the code files and an `auto_map` naming every Auto class, so that the
        checkpoint loads with any of them and `trust_remote_code=True` where leanbert is not installed."""
        self.config.auto_map = full_auto_map(type(self))
        return super().save_pretrained(save_directory, *args, **kwargs)


def full_auto_map(model_class: type[LeanPreTrainedModel]) -> dict[str, str]:
    """`{"AutoConfig": "configuration_x.XConfig", "AutoModel": "modeling_x.XModel", ...}` for an architecture X:
    every class of its modeling module that names an Auto class (`_auto_class`) for the same config."""
    config_class = model_class.config_class
    module = sys.modules[model_class.__module__]
    modeling = model_class.__module__.rsplit(".", 1)[-1]
    auto_map = {"AutoConfig": f"{config_class.__module__.rsplit('.', 1)[-1]}.{config_class.__name__}"}
    for cls in (getattr(module, name) for name in module.__all__):
        if getattr(cls, "_auto_class", None) and cls.config_class is config_class:
            auto_map[cls._auto_class] = f"{modeling}.{cls.__name__}"
    return auto_map


class LeanModel(LeanPreTrainedModel):
    """The bare encoder: embeddings, layers and (optionally) BERT's pooler."""

    _auto_class = "AutoModel"

    def __init__(self, config, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = LeanEmbeddings(config)
        self.encoder = LeanEncoder(config, self.attention_class)
        self.pooler = LeanPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        embedding_output = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)  # (B, L, d)
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=embedding_output, attention_mask=attention_mask
        )
        sequence_output = self.encoder(embedding_output, attention_mask, position_ids=position_ids, **kwargs)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output)


def classifier_dropout(config) -> nn.Dropout:
    rate = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
    return nn.Dropout(rate)


class LeanForMaskedLM(LeanPreTrainedModel):
    """Encoder with BERT's masked-LM head; the decoder is tied to the word embeddings."""

    _auto_class = "AutoModelForMaskedLM"

    def __init_subclass__(cls, **kwargs):
        """Each architecture's head ties its decoder to its own word embeddings, found by its `base_model_prefix`."""
        super().__init_subclass__(**kwargs)
        cls._tied_weights_keys = {
            "cls.predictions.decoder.weight": f"{cls.base_model_prefix}.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias",
        }

    def __init__(self, config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.base_model_class(config, add_pooling_layer=False))
        self.cls = LeanOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.cls.predictions.decoder = new_embeddings
        self.cls.predictions.bias = new_embeddings.bias

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MaskedLMOutput:
        r"""labels: token ids to predict at masked positions, -100 elsewhere.

        With `config.sparse_prediction` and labels given, the head runs only on the labelled positions (label !=
        `config.sparse_pred_ignore_index`), as ModernBERT does: the loss is the dense one, `logits` is
        `(n_labelled, vocab)` in the order of `labels[labelled]`, and the `(B, L, vocab)` logits, most of the head's
        compute and memory in pretraining, are never built. Otherwise `logits` is `(B, L, vocab)`."""
        outputs = self.base_model(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, return_dict=True, **kwargs
        )
        sequence_output = outputs.last_hidden_state  # (B, L, d)
        if self.config.sparse_prediction and labels is not None:
            # ModernBERT's sparse prediction: keep only the positions that carry a label
            labelled = labels != self.config.sparse_pred_ignore_index  # (B, L)
            sequence_output, labels = sequence_output[labelled], labels[labelled]  # (n_labelled, d), (n_labelled,)
        logits = self.cls(sequence_output)  # (B, L, vocab) or (n_labelled, vocab)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                              attentions=outputs.attentions)


class LeanForSequenceClassification(LeanPreTrainedModel):
    """Pooled [CLS] → dropout → linear. Regression, single- or multi-label loss by `config.problem_type`."""

    _auto_class = "AutoModelForSequenceClassification"

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self.base_model_class(config))
        self.dropout = classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""labels: class ids `(B,)`, floats `(B,)` for regression, or multi-hot floats `(B, num_labels)`."""
        outputs = self.base_model(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, return_dict=True, **kwargs
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                        attentions=outputs.attentions)


class LeanForTokenClassification(LeanPreTrainedModel):
    """Per-token dropout → linear, e.g. for named-entity recognition."""

    _auto_class = "AutoModelForTokenClassification"

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self.base_model_class(config, add_pooling_layer=False))
        self.dropout = classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> TokenClassifierOutput:
        r"""labels: class id per token `(B, L)`, -100 where no loss is wanted."""
        outputs = self.base_model(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, return_dict=True, **kwargs
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, L, num_labels)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config, **kwargs)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                     attentions=outputs.attentions)


class LeanForQuestionAnswering(LeanPreTrainedModel):
    """Extractive QA: a linear layer gives span start and end logits per token."""

    _auto_class = "AutoModelForQuestionAnswering"

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        setattr(self, self.base_model_prefix, self.base_model_class(config, add_pooling_layer=False))
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> QuestionAnsweringModelOutput:
        r"""start_positions, end_positions: token index of each answer span `(B,)`; out-of-range ones are ignored."""
        outputs = self.base_model(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, return_dict=True, **kwargs
        )
        logits = self.qa_outputs(outputs.last_hidden_state)  # (B, L, 2)
        start_logits, end_logits = (part.squeeze(-1).contiguous() for part in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions, **kwargs)
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                            hidden_states=outputs.hidden_states, attentions=outputs.attentions)


class LeanForMultipleChoice(LeanPreTrainedModel):
    """Each (B, C, L) choice is encoded separately; pooled [CLS] → linear gives one score per choice."""

    _auto_class = "AutoModelForMultipleChoice"

    def __init__(self, config):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.base_model_class(config))
        self.dropout = classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, 1)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MultipleChoiceModelOutput:
        r"""input_ids etc. have shape `(B, C, L)`; labels: index of the right choice `(B,)`."""
        num_choices = (input_ids if input_ids is not None else inputs_embeds).shape[1]

        def flat(tensor):  # (B, C, L, ...) -> (B * C, L, ...)
            return None if tensor is None else tensor.flatten(0, 1)

        outputs = self.base_model(
            flat(input_ids), flat(attention_mask), flat(token_type_ids), flat(position_ids), flat(inputs_embeds),
            return_dict=True, **kwargs,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output)).view(-1, num_choices)  # (B, C)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return MultipleChoiceModelOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states,
                                         attentions=outputs.attentions)
