"""Loading the checkpoints leanbert starts from (a BERT source, a leanbert model) and facts about their weights.

Loading refuses what cannot be right rather than repairing it silently: weights missing from the files (which
transformers would fill with random values), a folder without a tokenizer (transformers would build a stand-in),
a tokenizer that produces ids the model does not have or cannot pad, and pickle files unless explicitly allowed.
"""

import copy
import hashlib
import json
import os
from pathlib import Path

import torch
import transformers
from huggingface_hub.constants import is_offline_mode
from transformers import CONFIG_MAPPING, AutoConfig, AutoTokenizer, PreTrainedModel

from .errors import LeanbertError, first_line

try:  # huggingface_hub 2.x speaks through httpx2, 1.x through httpx
    from httpx2 import TransportError as TRANSPORT_ERRORS
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import TransportError as TRANSPORT_ERRORS

# BERT classes a source may hold; their weights load into these transformers classes.
BERT_ARCHITECTURES = ("BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForNextSentencePrediction",
                      "BertForSequenceClassification", "BertForTokenClassification", "BertForQuestionAnswering",
                      "BertForMultipleChoice")
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "vocab.json")
# config switches that make a saved model something else than an encoder returning output objects: a checkpoint's
# config.json is held to what `--config-overrides` may not set (a causal model would train without a word, tuples
# would fail deep inside the training)
NOT_AN_ENCODER = {"is_decoder": (True, "the model would attend causally, as a decoder"),
                  "add_cross_attention": (True, "the model would expect an encoder's states to attend to"),
                  "return_dict": (False, "the model would return plain tuples"),
                  "torchscript": (True, "the model would return plain tuples")}
MIN_TOKENIZER_SIZE = 100  # transformers builds a 5-token stand-in from a tokenizer_config.json alone
# config fields that decide what a BERT computes besides its weights (a teacher must match in these too)
COMPUTATION_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id",
                      "position_embedding_type")


def hub_timeouts() -> None:
    """Give every request of huggingface_hub's shared HTTP client (which transformers' loading uses too) a connect and
    a read timeout. The client has none and several calls (`repo_info`, the revision look-up of every Hub id) pass
    `timeout=None`, so a stalled endpoint would hang a command for ever. The limits are huggingface_hub's own
    settings: HF_HUB_ETAG_TIMEOUT to connect, HF_HUB_DOWNLOAD_TIMEOUT to read and write (10 s each by default); a
    limit a call sets itself is kept. Called before each use of the Hub: the client is rebuilt after a fork."""
    from huggingface_hub import get_session

    session = get_session()
    if request_timeouts not in session.event_hooks["request"]:
        hooks = session.event_hooks
        session.event_hooks = {**hooks, "request": [*hooks["request"], request_timeouts]}


def request_timeouts(request) -> None:
    """The request hook of `hub_timeouts`: fill in the limits the request leaves open (None)."""
    from huggingface_hub import constants

    given = request.extensions.get("timeout") or {}
    limits = {"connect": constants.HF_HUB_ETAG_TIMEOUT, "read": constants.HF_HUB_DOWNLOAD_TIMEOUT,
              "write": constants.HF_HUB_DOWNLOAD_TIMEOUT, "pool": constants.HF_HUB_ETAG_TIMEOUT}
    request.extensions["timeout"] = {key: limit if given.get(key) is None else given[key]
                                     for key, limit in limits.items()}


def is_local(source: str | Path) -> bool:
    return Path(source).exists() or str(source).startswith((".", "/", "~"))


def code_refused(what: str, source: str | Path, error: BaseException) -> LeanbertError | None:
    """The one line for a model that only code shipped with it could load (an `auto_map` to a type neither
    transformers nor leanbert knows): leanbert never runs such code, and never asks. None for any other error."""
    if "contains custom code" not in str(error) and "references custom code" not in str(error):
        return None
    return LeanbertError(f"{what} {str(source)!r} needs code shipped with it to load (its auto_map names a class "
                         "neither transformers nor leanbert has); leanbert never runs a model folder's own code")


CHECKED_ON_HUB: set[str] = set()  # the Hub ids `check_on_hub` found, once per process


def check_on_hub(source: str, what: str) -> None:
    """Ask the Hub (HF_ENDPOINT) once for the model `source`, a name that is no local folder, before transformers
    loads it: its loading retries an unreachable or stalled endpoint with back-off, file after file, for minutes,
    then blames the connection for whatever went wrong. Here an unreachable, stalled or non-JSON endpoint, a refusal
    or an unknown id is one line naming the endpoint, within the timeouts. Offline (HF_HUB_OFFLINE), or when the
    endpoint cannot be reached and the Hub cache holds the model, the cache answers instead, as in transformers."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        raise LeanbertError(f"{what} {source!r} not found: no such folder, and not a Hub model id either "
                            "('org/name')") from None
    if is_offline_mode() or source in CHECKED_ON_HUB:
        return
    hub_timeouts()
    where = f"the Hub at {constants.ENDPOINT}"
    try:
        HfApi().model_info(source)
    except RepositoryNotFoundError:
        raise LeanbertError(f"{what} {source!r} not found: no such folder, nor a model on {where} (or one your token "
                            "may not read)") from None
    except HfHubHTTPError as error:
        response = getattr(error, "response", None)
        status = f"{response.status_code} {response.reason_phrase}".strip() if response is not None else ""
        raise LeanbertError(f"{where} refused {what} {source!r}: {status or first_line(error)}") from None
    except TRANSPORT_ERRORS as error:
        if isinstance(try_to_load_from_cache(source, "config.json"), str):  # as transformers does without a network:
            return  # the Hub cache has it
        raise LeanbertError(f"cannot reach {where} for {what} {source!r}: {type(error).__name__}: "
                            f"{first_line(error) or 'no answer'}; no folder {source!r} is here either (a folder "
                            "misnamed?); HF_HUB_OFFLINE=1 loads it from the Hub cache if it is there") from None
    except ValueError as error:  # a proxy's or captive portal's HTML page where JSON was expected
        raise LeanbertError(f"{where} answered for {what} {source!r} with something that is not the Hub's JSON "
                            f"({first_line(error)}); check HF_ENDPOINT and any proxy") from None
    CHECKED_ON_HUB.add(source)


def hub_failure(what: str, source: str | Path, error: BaseException) -> LeanbertError:
    """The one line for `what` of `source`, a name that is no local folder, which the Hub (or its cache) did not
    give: not found offline, or what the Hub at HF_ENDPOINT answered, naming that endpoint."""
    from huggingface_hub import constants

    if is_offline_mode() and isinstance(error, OSError):  # not in the cache
        return LeanbertError(f"{what} {str(source)!r} not found: no such folder, nor in the Hub cache "
                             "(HF_HUB_OFFLINE is set, so the Hub was not asked)")
    return LeanbertError(f"{what} {str(source)!r} not found: no such folder, and the Hub at {constants.ENDPOINT} did "
                         f"not give it: {first_line(error)}")


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
    else:
        check_on_hub(str(source), what)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except Exception as error:  # a corrupt, empty or foreign config.json, or an unknown Hub id
        refused = code_refused(what, source, error)
        if refused:
            raise refused from None
        if not is_local(source):
            raise hub_failure(what, source, error) from None
        raise LeanbertError(f"cannot read the config of {what} {str(source)!r}: {first_line(error)}") from None
    for field, (value, meaning) in NOT_AN_ENCODER.items():
        if getattr(config, field, not value) is value:
            raise LeanbertError(f"the config of {what} {str(source)!r} sets {field}={value}: {meaning}; leanbert works "
                                "with encoders that return transformers' output objects (set it back in its "
                                "config.json, or give another model)")
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
    if is_local(source) and not Path(source).is_dir():
        raise LeanbertError(f"{what} {str(source)!r} not found: no such folder")
    if not is_local(source):
        check_on_hub(str(source), what)
    if is_local(source) and not any((Path(source) / name).is_file() for name in VOCABULARY_FILES):
        raise LeanbertError(f"{what} {str(source)!r} has no tokenizer vocabulary (none of "
                            f"{', '.join(VOCABULARY_FILES)}); save the model's tokenizer next to it")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as error:
        refused = code_refused(f"the tokenizer of {what}", source, error)
        if refused:
            raise refused from None
        if not is_local(source):
            raise hub_failure(what if what == "tokenizer" else f"the tokenizer of {what}", source, error) from None
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
    if not is_local(source):
        check_on_hub(str(source), what)
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


def available_memory(device: torch.device | None = None) -> tuple[int, str]:
    """Bytes free for a new model on `device` and what they are: a GPU's free memory, else the host's available
    memory (psutil's count, else /proc/meminfo's MemAvailable, else free pages by os.sysconf)."""
    if device is not None and device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], f"free on {device}"
    try:
        import psutil

        return psutil.virtual_memory().available, "available"
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "available"
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free"


def size(count: float) -> str:
    """Bytes as people read them (1.5 GiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} EiB"  # pragma: no cover - the loop returns


# float32 weights, gradients and AdamW's two moments: what training holds per parameter before any activation
TRAINING_BYTES_PER_PARAMETER = 16


def check_training_memory(model_class, config, what: str, device: torch.device | None = None,
                          processes: int = 1) -> int:
    """Refuse, before anything is allocated, a model of `config` too large to train here: its parameters are
    counted on the meta device (nothing allocated, and the same errors as a real build for fields that do not fit
    together), times `TRAINING_BYTES_PER_PARAMETER`, times `processes` sharing the host, against the memory
    available (`available_memory`). Activations come on top, so passing is necessary, not sufficient. Returns the
    parameter count. A deep config is first counted from one and two layers (building a module per layer takes
    about a millisecond each, minutes for `num_hidden_layers=100000`), so that one far too large is refused at once."""
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers > MANY_LAYERS:
        counts = []
        for count in (1, 2):
            shallow = copy.deepcopy(config)
            shallow.num_hidden_layers = count
            with torch.device("meta"):
                counts.append(sum(p.numel() for p in model_class.from_config(shallow).parameters()))
        check_parameter_memory(counts[0] + (layers - 1) * (counts[1] - counts[0]), what, device, processes)
    with torch.device("meta"):
        meta = model_class.from_config(config)
    parameters = sum(p.numel() for p in meta.parameters())
    check_parameter_memory(parameters, what, device, processes)
    return parameters


# layers beyond which `check_training_memory` extrapolates from a shallow build before the full one
MANY_LAYERS = 64


def check_parameter_memory(parameters: int, what: str, device: torch.device | None, processes: int) -> None:
    """Refuse `parameters` to train that do not fit in the memory available (see `check_training_memory`)."""
    needed = parameters * TRAINING_BYTES_PER_PARAMETER * (1 if device is not None and device.type == "cuda"
                                                          else processes)
    free, kind = available_memory(device)
    if needed > free:
        shared = f" for {processes} processes" if processes > 1 and needed > parameters * 16 else ""
        raise LeanbertError(f"{what} has {parameters:,} parameters: training it needs at least {size(needed)}"
                            f"{shared} (float32 weights, gradients and AdamW's two moments, before activations), but "
                            f"{size(free)} is {kind}; make it smaller")


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
