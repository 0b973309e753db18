"""Run by another Python (a transformers 4.x environment, or this one with leanbert blocked): load saved checkpoints
as a user without leanbert would, run them on a padded batch, and record every output tensor for the test to
compare with what the saving process computed.

    python load_without_leanbert.py JOBS.json OUT.safetensors

JOBS.json: {"inputs": {name: nested lists}, "models": [{"name", "folder", "auto", "remote", "round_trip"}],
"sentence_transformers": [{"name", "folder", "sentences", "remote"}]}. `remote` loads with
`trust_remote_code=True`; without it, a folder that needs code fails to load. `round_trip` also saves the loaded
model here and loads that again, recording its outputs as `<name>.round_trip.<field>`. Only torch, safetensors,
transformers and sentence-transformers are imported: `import leanbert` raises.
"""

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
recorded = {}


def record(name: str, model) -> None:
    """Every tensor of the model's output on the padded batch (multiple-choice models get it as one choice of two)."""
    batch = inputs
    if type(model).__name__.endswith("ForMultipleChoice"):
        batch = {key: torch.stack([value, value.flip(0)], dim=1) for key, value in inputs.items()}
    with torch.no_grad():
        output = model(**batch, output_hidden_states=True)
    for field, value in output.items():
        values = value if isinstance(value, tuple) else (value,)
        for index, tensor in enumerate(values):
            recorded[f"{name}.{field}.{index}"] = tensor.float().clone()


for job in jobs["models"]:
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
            again = auto.from_pretrained(folder, trust_remote_code=job["remote"]).eval()
            record(f"{job['name']}.round_trip", again)

for job in jobs.get("sentence_transformers", []):
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(job["folder"], device="cpu", trust_remote_code=job["remote"])
    recorded[f"{job['name']}.embeddings"] = encoder.encode(job["sentences"], convert_to_tensor=True).float()

recorded["transformers_version"] = torch.tensor([int(part) for part in transformers.__version__.split(".")[:2]])
save_file(recorded, out_file)
