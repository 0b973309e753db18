"""Run by another Python (a transformers 4.x environment, or this one with leanbert blocked): load saved checkpoints
as a user without leanbert would, run them on a padded batch, and record every output tensor for the test to
compare with what the saving process computed.

    python load_without_leanbert.py JOBS.json OUT.safetensors

JOBS.json holds "inputs" (name -> nested lists: the batch) and lists of jobs:
- "models": {"name", "folder", "auto", "remote", "round_trip"}: load with the Auto class (`remote`:
  `trust_remote_code=True`; without it, a folder that needs code fails to load), record every output as
  `<name>.<field>[.<index>]`; `round_trip` also saves the loaded model here and records the reloaded one's outputs
  as `<name>.round_trip.<field>...`;
- "attentions": {"name", "folder", "auto"}: loaded with eager attention and run with `output_attentions=True` and
  `return_dict=False`: `<name>.eager.<i>`, every element of the tuple (attentions included);
- "sentence_transformers": {"name", "folder", "sentences", "remote"}: `<name>.embeddings`;
- "tokenizers": folders for `AutoTokenizer.from_pretrained` without `trust_remote_code`: whether it asked to run
  code (the prompt is answered "no") and the class it gave;
- "configs": folders whose config class is built afresh here (`Config()`): the fields it would save;
- "checkpointing": folders whose model is trained one step with gradient checkpointing, or refuses it.
Facts that are not tensors go into the file's metadata as JSON. Only torch, safetensors, transformers and
sentence-transformers are imported: `import leanbert` raises.
"""

import builtins
import json
import sys
import tempfile

sys.modules["leanbert"] = None  # any `import leanbert` now raises ImportError

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

jobs_file, out_file = sys.argv[1:3]
jobs = json.loads(open(jobs_file, encoding="utf-8").read())
inputs = {key: torch.tensor(value) for key, value in jobs["inputs"].items()}
recorded, facts = {}, {"transformers": transformers.__version__}


def record(name: str, model) -> None:
    """Every tensor of the model's output on the padded batch (multiple-choice models see it as two choices)."""
    batch = inputs
    if type(model).__name__.endswith("ForMultipleChoice"):
        batch = {key: torch.stack([value, value.flip(0)], dim=1) for key, value in inputs.items()}
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
    for field, value in output.items():
        for index, tensor in enumerate(value if isinstance(value, tuple) else (value,)):
            key = f"{name}.{field}.{index}" if isinstance(value, tuple) else f"{name}.{field}"
            recorded[key] = tensor.float().clone()


for job in jobs.get("models", []):
    auto = getattr(transformers, job["auto"])
    model = auto.from_pretrained(job["folder"], trust_remote_code=job["remote"]).eval()
    origin = type(model).__module__
    expected = "transformers_modules." if job["remote"] else "transformers.models."
    if not origin.startswith(expected):
        raise SystemExit(f"{job['name']}: {type(model).__name__} came from {origin}, not {expected}")
    record(job["name"], model)
    if job.get("round_trip"):
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            record(f"{job['name']}.round_trip", auto.from_pretrained(folder, trust_remote_code=job["remote"]).eval())

for job in jobs.get("attentions", []):
    model = getattr(transformers, job["auto"]).from_pretrained(job["folder"], trust_remote_code=True,
                                                               attn_implementation="eager").eval()
    with torch.no_grad():
        output = model(**inputs, output_attentions=True, output_hidden_states=True, return_dict=False)
    flat = [tensor for value in output for tensor in (value if isinstance(value, tuple) else (value,))]
    for index, tensor in enumerate(flat):
        recorded[f"{job['name']}.eager.{index}"] = tensor.float().clone()

for job in jobs.get("sentence_transformers", []):
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(job["folder"], device="cpu", trust_remote_code=job["remote"])
    recorded[f"{job['name']}.embeddings"] = encoder.encode(job["sentences"], convert_to_tensor=True).float()

prompts = []
builtins.input = lambda prompt="": prompts.append(prompt) or "n"
for folder in jobs.get("tokenizers", []):
    prompts.clear()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    facts.setdefault("tokenizers", {})[folder] = {"class": type(tokenizer).__name__, "asked": bool(prompts)}

for folder in jobs.get("configs", []):
    config_class = type(transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True))
    config = config_class()
    facts.setdefault("configs", {})[folder] = {**config.to_dict(), "model_type (attribute)": config.model_type}

for folder in jobs.get("checkpointing", []):
    model = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True).train()
    try:
        model.gradient_checkpointing_enable()
    except ValueError as error:
        facts.setdefault("checkpointing", {})[folder] = f"refused: {error}"
        continue
    model(**inputs).last_hidden_state.sum().backward()
    checkpointed = sum(getattr(layer, "gradient_checkpointing", False) for layer in model.modules())
    facts.setdefault("checkpointing", {})[folder] = f"trained, {checkpointed} layers checkpointed"

save_file(recorded, out_file, metadata={"facts": json.dumps(facts)})
