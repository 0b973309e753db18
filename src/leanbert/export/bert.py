"""A leanbert model written as the plain BERT that computes the same function.

SymBert's scores `q_i B_h q_jᵀ` and SharedBert's `q = s⊙d_q, k = s⊙d_k, v = s⊙d_v` are BERT's attention with
particular query, key and value weights: each such attention module says which (`bert_projections()`, in its
modeling file). Everything else in a leanbert model is BERT's already, under BERT's parameter names, so the BERT
form is the same state dict with the base model's prefix renamed to `bert` and those projections put in. An
architecture whose attention has no such method (Shatter: one head whose values mix relative-position parts) has no
BERT form.

The BERT form computes the same outputs at BERT's cost: SymBert's shared query/key projection and SharedBert's
single projection become three full projections again.
"""

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig

BERT_PREFIX = "bert"
# Config keys of a leanbert config that BertConfig does not have besides its architecture's own fields.
LEANBERT_ONLY_KEYS = ("auto_map", "architectures", "model_type", "transformers_version", "sparse_prediction",
                      "sparse_pred_ignore_index", "dtype", "torch_dtype")


def bert_class(model) -> type:
    """transformers' BERT class with the same head: `SymBertForMaskedLM` -> `BertForMaskedLM`."""
    head = type(model).__name__.removeprefix(type(model.base_model).__name__.removesuffix("Model"))
    return getattr(transformers, f"Bert{head}")


def bert_config(model) -> BertConfig:
    """The leanbert config with its attention fields dropped and everything else (sizes, dropout, labels, problem
    type, ...) kept, as a `BertConfig` naming the BERT class with the same head."""
    config = model.config
    own = set(type(config).field_rules) - set(BertConfig().to_dict())
    fields = {key: value for key, value in config.to_dict().items()
              if key not in own and key not in LEANBERT_ONLY_KEYS}
    return BertConfig(**fields, position_embedding_type="absolute", architectures=[bert_class(model).__name__])


def bert_state_dict(model) -> dict[str, torch.Tensor]:
    """The leanbert `model`'s weights under the names of its BERT form."""
    prefix = model.base_model_prefix
    is_base = model is model.base_model
    state = {}
    for name, tensor in model.state_dict().items():
        if ".attention.self." in name:
            continue
        if not is_base and name.startswith(f"{prefix}."):
            name = f"{BERT_PREFIX}.{name[len(prefix) + 1:]}"
        state[name] = tensor
    layers = "" if is_base else f"{BERT_PREFIX}."
    for index, layer in enumerate(model.base_model.encoder.layer):
        for name, tensor in layer.attention.self.bert_projections().items():
            state[f"{layers}encoder.layer.{index}.attention.self.{name}"] = tensor
    return state


def to_bert(model):
    """The BERT model (transformers' own class, eval mode, in the dtype of `model`) that computes what the leanbert
    `model` does. Every weight of it comes from `model`: a name it lacks or one left over is an error, not a random
    value."""
    bert = bert_class(model)(bert_config(model)).eval()
    missing, unexpected = bert.load_state_dict(bert_state_dict(model), strict=False)
    tied = set(getattr(bert, "all_tied_weights_keys", {}) or {})
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"BERT form of {type(model).__name__}: missing {sorted(set(missing) - tied)}, "
                           f"left over {sorted(unexpected)}")
    return bert.to(next(model.parameters()).dtype)


def check_batch(config, count: int = 8, length: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids with padding of different lengths (one row unpadded), segment ids on the second half, the
    batch on which a model and its BERT form are compared."""
    generator = torch.Generator().manual_seed(seed)
    length = min(length, config.max_position_embeddings)
    low = 1 if config.pad_token_id == 0 else 0
    input_ids = torch.randint(low, config.vocab_size, (count, length), generator=generator)
    lengths = torch.randint(2, length + 1, (count,), generator=generator)
    lengths[0] = length
    attention_mask = (torch.arange(length) < lengths[:, None]).long()
    if config.pad_token_id is not None:
        input_ids = input_ids.masked_fill(attention_mask == 0, config.pad_token_id)
    token_type_ids = (torch.arange(length) >= length // 2).long().expand(count, -1).clone()
    if config.type_vocab_size < 2:
        token_type_ids.zero_()
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


@torch.no_grad()
def outputs(model, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Every output tensor of `model` on `batch` (multiple-choice models see it as two choices), and the forward's
    FLOPs as torch's FlopCounterMode counts them."""
    if type(model).__name__.endswith("ForMultipleChoice"):
        batch = {key: torch.stack([value, value.flip(0)], dim=1) for key, value in batch.items()}
    counter = FlopCounterMode(display=False)
    with counter:
        result = model(**batch, output_hidden_states=True)
    tensors = {}
    for field, value in result.items():
        for index, tensor in enumerate(value if isinstance(value, tuple) else (value,)):
            tensors[f"{field}.{index}" if isinstance(value, tuple) else field] = tensor
    return tensors, counter.get_total_flops()


def max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max absolute difference per output; an output one side lacks or shapes that differ are infinite."""
    differences = {}
    for name in sorted(set(first) | set(second)):
        a, b = first.get(name), second.get(name)
        same_shape = a is not None and b is not None and a.shape == b.shape
        differences[name] = (a.float() - b.float()).abs().max().item() if same_shape else float("inf")
    return differences
