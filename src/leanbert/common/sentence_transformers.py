"""Carrying a sentence-transformers set-up (pooling, normalisation, `max_seq_length`, prompts) from a source
checkpoint into a leanbert output, so that `SentenceTransformer(output)` behaves as `SentenceTransformer(source)`.

A folder is a sentence-transformers model when it holds `modules.json`. Its first module (a `Transformer`, path
"") is the model folder itself: leanbert writes that part (weights, config with its `auto_map`, tokenizer). What
this module carries is the rest, read and checked in full before any work and written unchanged after it:

- `modules.json` (the modules, their types and order), `sentence_bert_config.json` (the Transformer module's
  settings: `max_seq_length`, `do_lower_case`, ...) and `config_sentence_transformers.json` (prompts,
  `default_prompt_name`, `similarity_fn_name`; of its `__version__` fields, `transformers` and `pytorch` are set to
  the versions that wrote the new model, `sentence_transformers` is kept: its files are the source's);
- every other module's folder (`1_Pooling/`, `2_Dense/`, ...), which may hold only JSON files (each at most 1 MiB,
  parsed) and `model.safetensors` (parsed). A `pytorch_model.bin` (pickle, which can run code) is refused unless
  `allow_pickle`, and then read with `torch.load(weights_only=True)` and written as `model.safetensors`: an output
  never holds pickle. Anything else (code, subfolders) is refused, as are module types outside the
  `sentence_transformers` package (custom code). A module folder that is missing is refused, except for
  `Normalize`, which has no files (the published all-MiniLM-L6-v2 names `2_Normalize` without shipping it).

Every module after the Transformer works on its output (token embeddings of `hidden_size` features), and leanbert's
conversions keep `hidden_size`, so these modules apply to the new architecture unchanged.

Loading the output: with leanbert imported, `SentenceTransformer(output)` works as is (leanbert registers its
configs and models with the Auto classes, which transformers prefers to the `auto_map` code when
`trust_remote_code` is off); without leanbert, `SentenceTransformer(output, trust_remote_code=True)` runs the code
saved next to the weights (sentence-transformers passes the flag on to `AutoConfig` and `AutoModel`; a saved config
cannot set it).

Who carries it: `leanbert-convert` (from the source), `leanbert-heal` (from the student, which after conversion
holds the set-up, or else from the teacher) and `leanbert-convert --heal`. Fine-tuning (`leanbert-finetune`) does
not: it trains a sequence classifier, whose output is logits, not a sentence embedding, so pooling and
normalisation modules would describe a model that is no longer there. Nor does `leanbert-pretrain --model ...`:
masked-LM training moves the hidden states away from what the embedding model's pooling was trained on, so the
result is a new encoder to be trained into an embedding model, not an embedding model.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LeanbertError, first_line
from .models import check_on_hub, is_local

MODULES = "modules.json"
MODEL_CONFIG = "config_sentence_transformers.json"
# the Transformer module's own settings, under the names sentence-transformers looks for (BERT uses the first)
TRANSFORMER_CONFIGS = ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                       "sentence_camembert_config.json", "sentence_albert_config.json",
                       "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")
MAX_JSON_BYTES = 1 << 20
WEIGHTS = "model.safetensors"
PICKLE_WEIGHTS = "pytorch_model.bin"
MODULE_PATH = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NO_FILES_NEEDED = ("Normalize",)  # module classes that sentence-transformers builds with defaults when absent


@dataclass
class SentenceTransformersSetup:
    """A checked sentence-transformers set-up: `files` maps each path relative to the model folder to its bytes."""

    source: str
    modules: list[dict]
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def module_types(self) -> list[str]:
        return [module["type"] for module in self.modules]

    def write_to(self, folder: Path) -> None:
        """Write the set-up into the model folder `folder` (which leanbert's writer fills with the model)."""
        for name, data in self.files.items():
            path = Path(folder) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def write_setup(setup: "SentenceTransformersSetup | None", folder: Path) -> None:
    """`setup.write_to(folder)`, or nothing for a source that is not a sentence-transformers model."""
    if setup is not None:
        setup.write_to(folder)


def read_setup(source: str | Path, what: str = "source",
               allow_pickle: bool = False) -> SentenceTransformersSetup | None:
    """The sentence-transformers set-up of the model `source` (a folder or a Hub id), checked in full; None when
    `source` has no `modules.json`. Raises a one-line `LeanbertError` naming the file and the problem."""
    folder = Path(source) if is_local(source) else hub_folder(str(source), what)
    if folder is None or not (folder / MODULES).exists():
        return None
    where = f"{what} {str(source)!r}"
    modules = parse_modules(read_small_json(folder / MODULES, where), where)
    setup = SentenceTransformersSetup(str(source), modules)
    setup.files[MODULES] = (json.dumps(modules, indent=2) + "\n").encode()
    for name in TRANSFORMER_CONFIGS:
        if (folder / name).exists():
            settings = read_small_json(folder / name, where)
            check_transformer_settings(settings, name, where)
            setup.files[name] = (folder / name).read_bytes()
    if (folder / MODEL_CONFIG).exists():
        setup.files[MODEL_CONFIG] = model_config(read_small_json(folder / MODEL_CONFIG, where), where)
    for module in modules[1:]:
        setup.files.update(module_files(folder, module, where, allow_pickle))
    return setup


def hub_folder(repo_id: str, what: str) -> Path | None:
    """A local snapshot of the files of the Hub model `repo_id` that a set-up can consist of (module folders are
    named `<idx>_<Type>` by sentence-transformers)."""
    from huggingface_hub import snapshot_download

    patterns = [MODULES, MODEL_CONFIG, *TRANSFORMER_CONFIGS, "[0-9]*_*/*"]
    check_on_hub(repo_id, what)  # one line naming an endpoint that fails, not snapshot_download's retries
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:
        raise LeanbertError(f"cannot fetch the sentence-transformers files of {what} {repo_id!r}: "
                            f"{first_line(error)}") from None


def read_small_json(path: Path, where: str, name: str | None = None):
    """The JSON value in `path`, a regular file (or a link to one) of at most `MAX_JSON_BYTES`; `name` is how a
    message calls it (default: its file name)."""
    name = name or path.name
    try:
        if not path.is_file():
            raise LeanbertError(f"{where}: {name} is not a file")
        if path.stat().st_size > MAX_JSON_BYTES:
            raise LeanbertError(f"{where}: {name} is larger than {MAX_JSON_BYTES} bytes; a sentence-transformers "
                                "config file is small")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise LeanbertError(f"{where}: {name} is not valid JSON: {first_line(error)}") from None


def parse_modules(modules, where: str) -> list[dict]:
    """The entries of `modules.json`, checked: a list of {idx, name, path, type[, kwargs]}, the first one the
    Transformer at path "" (the model folder), the others in folders of their own."""
    def refuse(problem: str):
        raise LeanbertError(f"{where}: {MODULES} {problem}")

    if not isinstance(modules, list) or not modules:
        refuse("must be a non-empty JSON list of modules")
    paths, names = set(), set()
    for index, module in enumerate(modules):
        if not isinstance(module, dict):
            refuse(f"entry {index} is not a JSON object")
        for key in ("name", "path", "type"):
            if not isinstance(module.get(key), str):
                refuse(f"entry {index} has no string {key!r}")
        if "idx" in module and (isinstance(module["idx"], bool) or not isinstance(module["idx"], int)):
            refuse(f"entry {index} has a non-integer 'idx'")
        kwargs = module.get("kwargs", [])
        if not isinstance(kwargs, list) or not all(isinstance(item, str) for item in kwargs):
            refuse(f"entry {index} has 'kwargs' that are not a list of names")
        kind, path = module["type"], module["path"]
        if not kind.startswith("sentence_transformers."):
            refuse(f"entry {index} is a custom module type {kind!r} (code outside sentence-transformers), which "
                   "leanbert does not carry over")
        if path != "" and (not MODULE_PATH.fullmatch(path) or path in (".", "..")):
            refuse(f"entry {index} has the path {path!r}; module folders are plain names inside the model folder")
        if path in paths or module["name"] in names:
            refuse(f"names the module path {path!r} or name {module['name']!r} twice")
        paths.add(path)
        names.add(module["name"])
    first = modules[0]
    if first["path"] != "" or not first["type"].endswith("Transformer"):
        refuse(f"must start with the Transformer module in the model folder itself (path \"\"), not "
               f"{first['type']!r} at {first['path']!r}; leanbert converts the model in the folder's root")
    if "" in {module["path"] for module in modules[1:]}:
        refuse("places a second module in the model folder itself (path \"\")")
    return modules


def check_transformer_settings(settings, name: str, where: str) -> None:
    if not isinstance(settings, dict):
        raise LeanbertError(f"{where}: {name} is not a JSON object")
    length = settings.get("max_seq_length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise LeanbertError(f"{where}: {name} has max_seq_length {length!r}; a positive integer or null is needed")
    if not isinstance(settings.get("do_lower_case", False), bool):
        raise LeanbertError(f"{where}: {name} has a do_lower_case that is not true or false")


def model_config(config, where: str) -> bytes:
    """`config_sentence_transformers.json` with the `transformers` and `pytorch` versions of the new model."""
    if not isinstance(config, dict):
        raise LeanbertError(f"{where}: {MODEL_CONFIG} is not a JSON object")
    versions = config.get("__version__")
    if isinstance(versions, dict):
        import torch
        import transformers

        versions.update({key: value for key, value in (("transformers", transformers.__version__),
                                                       ("pytorch", torch.__version__)) if key in versions})
    return (json.dumps(config, indent=2) + "\n").encode()


def module_files(folder: Path, module: dict, where: str, allow_pickle: bool) -> dict[str, bytes]:
    """The checked files of one module's folder, by path relative to the model folder."""
    path, kind = module["path"], module["type"]
    directory = folder / path
    if not directory.is_dir():
        if kind.rsplit(".", 1)[-1] in NO_FILES_NEEDED and not directory.exists():
            return {}
        raise LeanbertError(f"{where}: {MODULES} names the module folder {path!r} ({kind}), which is missing")
    files, entries = {}, sorted(directory.iterdir())
    names = {entry.name for entry in entries}
    for entry in entries:
        name = f"{path}/{entry.name}"
        if entry.is_dir():
            raise LeanbertError(f"{where}: the module folder {path!r} holds a subfolder {entry.name!r}; leanbert "
                                "carries modules made of config files and safetensors weights only")
        if entry.suffix == ".json":
            read_small_json(entry, where, name)
            files[name] = entry.read_bytes()
        elif entry.name == WEIGHTS:
            files[name] = checked_safetensors(entry, name, where)
        elif entry.name == PICKLE_WEIGHTS:
            if WEIGHTS in names:
                continue  # the safetensors copy of the same weights is carried
            if not allow_pickle:
                raise LeanbertError(f"{where}: {name} is a pickle file (it can run code); pass --allow-pickle "
                                    "(allow_pickle=True) for a source you trust, and it is written as safetensors")
            files[f"{path}/{WEIGHTS}"] = pickle_to_safetensors(entry, name, where)
        else:
            raise LeanbertError(f"{where}: the module folder {path!r} holds {entry.name!r}; leanbert carries JSON "
                                f"config files and {WEIGHTS} only")
    return files


def checked_safetensors(path: Path, name: str, where: str) -> bytes:
    from safetensors.torch import load

    data = path.read_bytes()
    try:
        load(data)
    except Exception as error:
        raise LeanbertError(f"{where}: {name} is not a readable safetensors file: {first_line(error)}") from None
    return data


def pickle_to_safetensors(path: Path, name: str, where: str) -> bytes:
    import torch
    from safetensors.torch import save

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("not a dictionary of tensors")
        return save({key: value.detach().clone().contiguous() for key, value in state.items()})
    except Exception as error:
        raise LeanbertError(f"{where}: cannot read the weights {name}: {first_line(error)}") from None
