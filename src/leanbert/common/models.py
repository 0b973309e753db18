"""Loading the checkpoints leanbert starts from (a BERT source, a leanbert model) and facts about their weights.

Loading refuses what cannot be right rather than repairing it silently: weights missing from the files (which
transformers would fill with random values), a folder without a tokenizer (transformers would build a stand-in),
a tokenizer that produces ids the model does not have or cannot pad, and pickle files unless explicitly allowed.
"""

import hashlib
import json
from pathlib import Path

import torch
import transformers
from huggingface_hub.constants import is_offline_mode
from transformers import CONFIG_MAPPING, AutoConfig, AutoTokenizer, PreTrainedModel

from .errors import LeanbertError, first_line

# BERT classes a source may hold; their weights load into these transformers classes.
BERT_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForNextSentencePrediction",
                      "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
                      "BertForMultipleChoice")
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "vocab.json")
MIN_TOKENIZER_SIZE = 100  # transformers builds a 5-token stand-in from a tokenizer_config.json alone
# config fields that decide what a BERT computes besides its weights (a teacher must match in these too)
COMPUTATION_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id",
                      "position_embedding_type")


def is_local(source: str | Path) -> bool:
    return Path(source).exists() or str(source).startswith((".", "/", "~"))


def code_refused(what: str, source: str | Path, error: BaseException) -> LeanbertError | None:
    """The one line for a model that only code shipped with it could load (an `auto_map` to a type neither
    transformers nor leanbert knows): leanbert never runs such code, and never asks. None for any other error."""
    if "contains custom code" not in str(error) and "references custom code" not in str(error):
        return None
    return LeanbertError(f"{what} {str(source)!r} needs code shipped with it to load (its auto_map names a class "
                         "neither transformers nor leanbert has); leanbert never runs a model folder's own code")


def load_config(source: str | Path, what: str):
    """The config of a folder or Hub id, or one line saying why it cannot be read. Code a folder ships with is never
    run (transformers would ask whether to run it): a model type that neither transformers nor leanbert knows is
    refused."""
    if is_local(source):
        folder = Path(source)
        if folder.is_file():
            raise LeanbertError(f"{what} {str(source)!r} is a file; give the model's folder (with its config.json)")
        if not folder.is_dir():
            raise LeanbertError(f"{what} {str(source)!r} not found: no such folder")
        if not (folder / "config.json").is_file():
            raise LeanbertError(f"{what} {str(source)!r} is not a model folder: it has no config.json")
        config = read_json(folder / "config.json", f"the config of {what}")
        model_type = config.get("model_type")
        if model_type is not None and (not isinstance(model_type, str) or model_type not in CONFIG_MAPPING):
            shipped = " (its auto_map points to code shipped with it, which leanbert never runs)" if (
                config.get("auto_map")) else ""
            raise LeanbertError(f"{what} {str(source)!r} is a {model_type!r} model, a type neither transformers nor "
                                f"leanbert knows{shipped}")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except Exception as error:  # a corrupt, empty or foreign config.json, or an unknown Hub id
        refused = code_refused(what, source, error)
        if refused:
            raise refused from None
        if not is_local(source) and is_offline_mode() and isinstance(error, OSError):  # not in the cache
            raise LeanbertError(f"{what} {str(source)!r} not found: no such folder, nor in the Hub cache "
                                "(HF_HUB_OFFLINE is set, so the Hub was not asked)") from None
        where = "" if is_local(source) else " (no such folder; asked the Hub)"
        raise LeanbertError(f"cannot read the config of {what} {str(source)!r}{where}: {first_line(error)}") from None
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        raise LeanbertError(f"the config of {what} {str(source)!r} does not fit together: hidden_size={hidden} is not "
                            f"a multiple of num_attention_heads={heads}")
    return config


def load_tokenizer(source: str | Path, what: str, vocab_size: int):
    """The tokenizer saved with a model; refused when absent, without a padding token (every leanbert command pads
    its batches) or when it can produce ids beyond `vocab_size`."""
    if is_local(source) and Path(source).is_file():
        raise LeanbertError(f"{what} {str(source)!r} is a file; give the folder that holds the tokenizer's files")
    if is_local(source) and not any((Path(source) / name).is_file() for name in VOCABULARY_FILES):
        raise LeanbertError(f"{what} {str(source)!r} has no tokenizer vocabulary (none of "
                            f"{', '.join(VOCABULARY_FILES)}); save the model's tokenizer next to it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as error:
        refused = code_refused(f"the tokenizer of {what}", source, error)
        if refused:
            raise refused from None
        raise LeanbertError(f"{what} {str(source)!r} has no usable tokenizer: {first_line(error)}") from None
    if len(tokenizer) < MIN_TOKENIZER_SIZE:
        raise LeanbertError(f"the tokenizer of {what} {str(source)!r} holds only {len(tokenizer)} tokens; save the "
                            "model's own tokenizer next to it")
    if tokenizer.pad_token is None:
        raise LeanbertError(f"the tokenizer of {what} {str(source)!r} has no padding token, which batches of texts of "
                            "different lengths need; set its pad_token and save it again")
    if len(tokenizer) > vocab_size:
        raise LeanbertError(f"the tokenizer of {what} {str(source)!r} has {len(tokenizer)} tokens but the model's "
                            f"vocab_size is {vocab_size}: its ids would fall outside the embeddings")
    return tokenizer


def load_weights(model_class, source: str | Path, what: str, allow_pickle: bool = False,
                 allow_missing: tuple[str, ...] = (), config=None) -> PreTrainedModel:
    """`model_class.from_pretrained(source)` in float32 eval mode, refusing missing, mis-shaped or unreadable
    weights, except missing ones under the modules `allow_missing` ("pooler.": `bert.pooler.dense.weight` too; a
    task head that starts from random values);
    `config` replaces the saved one (a head for another number of labels).
    Only safetensors files are read unless `allow_pickle` (a `pytorch_model.bin` can run code)."""
    try:
        # mismatched sizes are reported in `info` rather than raised (transformers' error points at a report
        # leanbert silences) and refused below, in one line that names the tensor
        model, info = model_class.from_pretrained(source, use_safetensors=None if allow_pickle else True, config=config,
                                                  dtype=torch.float32, output_loading_info=True,
                                                  ignore_mismatched_sizes=True, trust_remote_code=False)
    except Exception as error:
        refused = code_refused(what, source, error)
        if refused:
            raise refused from None
        if is_local(source):
            pickled = not any(Path(source).glob("*.safetensors")) and any(Path(source).glob("*.bin"))
        else:  # a Hub repository: transformers names the safetensors it did not find
            pickled = "safetensors" in str(error).lower()
        hint = " (it holds only pickle weights, .bin, which can run code: --allow-pickle trusts them)" if (
            pickled and not allow_pickle) else ""
        raise LeanbertError(f"cannot load the weights of {what} {str(source)!r}{hint}: {first_line(error)}") from None
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = sorted(key for key in set(info.get("missing_keys", ())) - tied
                     if not any(f".{module}" in f".{key}" for module in allow_missing))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise LeanbertError(f"the weights of {what} {str(source)!r} are incomplete: {len(missing)} tensors missing "
                            f"({shown})")
    if info.get("mismatched_keys"):
        name, saved, built = sorted(info["mismatched_keys"], key=str)[0]
        raise LeanbertError(f"the weights of {what} {str(source)!r} do not fit its config: {name} is "
                            f"{tuple(saved)} in the file but {tuple(built)} by the config "
                            f"({len(info['mismatched_keys'])} tensors differ)")
    return model.eval()


def load_bert(source: str | Path, allow_pickle: bool = False, what: str = "source"):
    """The BERT checkpoint `source` (a folder or Hub id) with its task head, float32, eval mode, and its tokenizer."""
    config = load_config(source, what)
    if config.model_type != "bert":
        raise LeanbertError(f"{what} {str(source)!r} is a {config.model_type!r} checkpoint; a BERT checkpoint "
                            "(model_type 'bert') is needed")
    if getattr(config, "is_decoder", False):
        raise LeanbertError(f"{what} {str(source)!r} is a causal BERT decoder (is_decoder=True); leanbert works "
                            "with encoders")
    architecture = (config.architectures or ["BertModel"])[0]
    if architecture not in BERT_ARCHITECTURES:
        raise LeanbertError(f"{what} {str(source)!r} holds a {architecture}; supported: "
                            f"{', '.join(BERT_ARCHITECTURES)}")
    tokenizer = load_tokenizer(source, what, config.vocab_size)
    model = load_weights(getattr(transformers, architecture), source, what, allow_pickle)
    return model, tokenizer


def read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LeanbertError(f"cannot read {what} {str(path)!r}: {first_line(error)}") from None
    if not isinstance(value, dict):
        raise LeanbertError(f"{what} {str(path)!r} is not a JSON object")
    return value


def weights_checksum(model: torch.nn.Module) -> str:
    """SHA-256 over the config fields that decide the computation and every tensor of the state dict (names,
    dtypes, shapes and float32 values, sorted by name): the same model gives the same checksum whatever file layout
    it was loaded from, and a model with other weights or another activation, epsilon, ... another one."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    fields = {name: getattr(config, name, None) for name in COMPUTATION_FIELDS}
    digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu", torch.float32 if tensor.is_floating_point() else tensor.dtype)
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(data.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenize(tokenizer, passages: list[str], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(passages, max_length=max_length, truncation=True, padding="max_length", return_tensors="pt")
