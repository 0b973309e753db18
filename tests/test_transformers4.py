"""What leanbert saves runs wherever BERT runs: on transformers 4.57 and 4.48 (environments without leanbert, built
by `make compat` from tests/transformers4/) and on this transformers 5 with leanbert blocked.

One module fixture saves every architecture, variant and head (weights moved off their init), their BERT exports and
a converted sentence-transformers model, computes every output here with leanbert, and each environment loads them
all in one process (tests/launched/load_without_leanbert.py): leanbert's own checkpoints with
`trust_remote_code=True`, the exports without it, as the Auto classes and sentence-transformers of that version
give them. Every output must equal this process's within 1e-5 (float32).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer

import leanbert
from conftest import HEADS, REPO, model_class, padded_token_batch, real_minilm_path, save_tiny_model
from leanbert.conversion import convert
from leanbert.export import export
from leanbert.export.bert import outputs

LOADER = REPO / "tests" / "launched" / "load_without_leanbert.py"
ENVIRONMENTS = {"5": Path(sys.executable), **{version: REPO / f".venv-transformers-{version}" / "bin" / "python"
                                              for version in ("4.57", "4.48")}}
OLD = ("4.57", "4.48")
TOLERANCE = 1e-5
SENTENCES = ["A man is eating food.", "Two men are playing chess in the park.", "The cat sits outside."]
# every architecture and named variant of the declaration, under "<model_type>-<variant>"
VARIANTS = {f"{a.model_type}-{name}" if name else a.model_type: (a, fields)
            for a in leanbert.ARCHITECTURES for name, fields in a.variants.items()}


def environment(version: str) -> Path:
    python = ENVIRONMENTS[version]
    assert python.exists(), f"no transformers {version} environment at {python.parent.parent}: run `make compat`"
    return python


@pytest.fixture(scope="module")
def saved(tmp_path_factory, st_source):
    """The folders, the jobs for the loader and the reference outputs computed here with leanbert."""
    root = tmp_path_factory.mktemp("everywhere")
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    batch = padded_token_batch(len(tokenizer))
    jobs = {"inputs": {key: value.tolist() for key, value in batch.items()}, "models": [],
            "attentions": [], "sentence_transformers": [], "tokenizers": [], "configs": [], "checkpointing": []}
    reference = {}

    def expect(name: str, model) -> None:
        for key, tensor in outputs(model, batch)[0].items():
            reference[f"{name}.{key}"] = tensor.float()

    for variant, (architecture, fields) in VARIANTS.items():
        for head in HEADS:
            name = f"{variant}-{head}"
            folder = root / "native" / name
            model = save_tiny_model(architecture.model_type, head, folder, tokenizer, **fields)
            auto = next(auto for auto, cls in architecture.classes.items() if cls is type(model))
            jobs["models"].append({"name": name, "folder": str(folder), "auto": auto, "remote": True,
                                   "round_trip": True})
            expect(name, model)
            if architecture.has_bert_form:
                export(folder, root / "exported" / name)
                jobs["models"].append({"name": f"exported-{name}", "folder": str(root / "exported" / name),
                                       "auto": auto, "remote": False})
                expect(f"exported-{name}", model)
        jobs["attentions"].append({"name": variant, "folder": str(root / "native" / f"{variant}-ForMaskedLM"),
                                   "auto": "AutoModelForMaskedLM"})
        eager = model_class(architecture.model_type, "ForMaskedLM").from_pretrained(
            root / "native" / f"{variant}-ForMaskedLM", attn_implementation="eager").eval()
        with torch.no_grad():
            output = eager(**batch, output_attentions=True, output_hidden_states=True, return_dict=False)
        flat = [tensor for value in output for tensor in (value if isinstance(value, tuple) else (value,))]
        layers = eager.config.num_hidden_layers
        assert len(flat) == 1 + (layers + 1) + layers  # logits, hidden states, attention maps
        reference.update({f"{variant}.eager.{index}": tensor.float() for index, tensor in enumerate(flat)})
        jobs["configs"].append(str(root / "native" / f"{variant}-Model"))
        jobs["checkpointing"].append(str(root / "native" / f"{variant}-Model"))
    jobs["tokenizers"] = [str(root / "native" / "sym_bert-pairwise-Model"),
                          str(root / "exported" / "sym_bert-pairwise-Model")]

    # module types as the published all-MiniLM-L6-v2 (and most of the Hub) names them, which every
    # sentence-transformers version reads; version 6 writes names that version 5 (the one for transformers 4) lacks
    shutil.copytree(st_source / "source", root / "st-source")
    modules = json.loads((root / "st-source" / "modules.json").read_text())
    for module in modules:
        module["type"] = f"sentence_transformers.models.{module['type'].rsplit('.', 1)[-1]}"
    (root / "st-source" / "modules.json").write_text(json.dumps(modules))
    convert(str(root / "st-source"), "shared_bert", root / "st-native", calibration_text=st_source / "text.txt",
            refine_steps=0)
    export(root / "st-native", root / "st-exported")
    embeddings = SentenceTransformer(str(root / "st-native"), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    for name, remote in (("st-native", True), ("st-exported", False)):
        jobs["sentence_transformers"].append({"name": name, "folder": str(root / name), "sentences": SENTENCES,
                                              "remote": remote})
        reference[f"{name}.embeddings"] = embeddings.float()
    (root / "jobs.json").write_text(json.dumps(jobs))
    return root, jobs, reference


@pytest.fixture(scope="module", params=sorted(ENVIRONMENTS))
def loaded(request, saved):
    """What one environment computed from the saved folders: (version, its tensors, its facts)."""
    root, _, _ = saved
    python = environment(request.param)
    out = root / f"loaded-{request.param}.safetensors"
    env = {**os.environ, "HF_MODULES_CACHE": str(root / f"modules-{request.param}"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(python), str(LOADER), str(root / "jobs.json"), str(out)], env=env,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    with safe_open(str(out), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        facts = json.loads(handle.metadata()["facts"])
    assert facts["transformers"].startswith(request.param), facts["transformers"]
    return request.param, tensors, facts


def assert_close(got: dict, reference: dict, names: list[str], suffix: str = "") -> None:
    checked = 0
    for name in names:
        keys = [key for key in reference if key.startswith(f"{name}.")]
        assert keys, name
        for key in keys:
            loaded_key = f"{name}{suffix}{key[len(name):]}"
            assert loaded_key in got, f"{loaded_key} was not returned"
            torch.testing.assert_close(got[loaded_key], reference[key], atol=TOLERANCE, rtol=0, msg=loaded_key)
            checked += 1
    assert checked >= 2 * len(names)  # at least a main output and the hidden states of each


def test_every_saved_head_loads_with_remote_code_and_matches(saved, loaded):
    _, jobs, reference = saved
    _, got, _ = loaded
    native = [job["name"] for job in jobs["models"] if job["remote"]]
    assert len(native) == len(VARIANTS) * len(HEADS) == 30
    assert_close(got, reference, native)


def test_load_save_load_round_trips(saved, loaded):
    _, jobs, reference = saved
    _, got, _ = loaded
    assert_close(got, reference, [job["name"] for job in jobs["models"] if job.get("round_trip")], ".round_trip")


def test_exported_bert_loads_without_code_and_matches_the_leanbert_model(saved, loaded):
    _, jobs, reference = saved
    _, got, _ = loaded
    exported = [job["name"] for job in jobs["models"] if not job["remote"]]
    assert len(exported) == 3 * len(HEADS)  # SymBert pairwise and symmetric, SharedBert
    assert_close(got, reference, exported)


def test_sentence_transformers_gives_the_same_embeddings(saved, loaded):
    _, _, reference = saved
    _, got, _ = loaded
    for name in ("st-native", "st-exported"):
        torch.testing.assert_close(got[f"{name}.embeddings"], reference[f"{name}.embeddings"], atol=TOLERANCE, rtol=0)


def test_eager_attention_weights_and_tuples_match(saved, loaded):
    """`output_attentions` with eager attention and `return_dict=False`, which transformers 4 serves through the
    fallbacks (output capture by hooks, tuples)."""
    _, _, reference = saved
    _, got, _ = loaded
    eager = {key: value for key, value in reference.items() if ".eager." in key}
    assert len(eager) == len(VARIANTS) * 6  # logits, 3 hidden states, 2 attention maps each
    for key, value in eager.items():
        torch.testing.assert_close(got[key], value, atol=TOLERANCE, rtol=0, msg=key)


def test_a_config_built_there_has_every_field(saved, loaded):
    """transformers 4 configs are not dataclasses: a fresh config must still hold (and so save) every field."""
    _, _, facts = loaded
    for folder, fields in facts["configs"].items():
        variant = Path(folder).name.removesuffix("-Model")
        expected = VARIANTS[variant][0].config_class().to_dict()
        for field in VARIANTS[variant][0].config_class.field_rules:
            assert fields.get(field) == expected[field], (variant, field, fields.get(field))
        assert fields["model_type (attribute)"] == fields["model_type"] == expected["model_type"]


def test_gradient_checkpointing_works_or_is_refused(saved, loaded):
    """transformers 4.48 has no GradientCheckpointingLayer: enabling checkpointing is refused, never ignored."""
    version, _, facts = loaded
    for folder, outcome in facts["checkpointing"].items():
        if version == "4.48":
            assert outcome.startswith("refused: ") and "gradient checkpointing" in outcome, outcome
        else:
            assert outcome == "trained, 2 layers checkpointed", (folder, outcome)


def test_autotokenizer_loads_berts_tokenizer(saved, loaded):
    """BERT's tokenizer without `trust_remote_code`; transformers 4 and an exported folder never ask to run code.
    (transformers 5 loads the config first, so it asks about a leanbert folder's config code: README, "Deploy".)"""
    version, _, facts = loaded
    for folder, outcome in facts["tokenizers"].items():
        assert outcome["class"].startswith("BertTokenizer"), outcome
        if version != "5" or "exported" in folder:
            assert not outcome["asked"], (folder, outcome)


@pytest.mark.parametrize("version", OLD)
def test_import_leanbert_on_transformers_4_fails_in_one_line(version, tmp_path):
    python = environment(version)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run([str(python), "-c", "import leanbert"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"ImportError: leanbert {leanbert.__version__} needs transformers >= 5.0 (this environment has {version}.")
    command = subprocess.run([str(python), "-c", "import sys, leanbert_cli; sys.exit(leanbert_cli.export())",
                              "--model", "m", "--output", "o"], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=300)
    lines = command.stderr.strip().splitlines()
    assert command.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("leanbert-export: error: leanbert "), lines
    assert list(tmp_path.iterdir()) == []


def test_optimum_exports_the_exported_bert_to_onnx(saved, tmp_path):
    """optimum's ONNX exporter (which pins transformers 4.57) takes the exported BERT as any BERT; ONNX Runtime's
    output equals the leanbert model's."""
    import onnxruntime

    root, jobs, reference = saved
    python = environment("4.57")
    folder = root / "exported" / "sym_bert-pairwise-Model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(python), "-m", "optimum.exporters.onnx", "--model", str(folder), "--task",
                             "feature-extraction", "--library-name", "transformers", str(tmp_path / "onnx")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {key: np.array(value, dtype=np.int64) for key, value in jobs["inputs"].items()
            if key in {i.name for i in session.get_inputs()}}
    (hidden,) = session.run(["last_hidden_state"], feed)
    expected = reference["exported-sym_bert-pairwise-Model.last_hidden_state"].numpy()
    np.testing.assert_allclose(hidden, expected, atol=1e-4, rtol=0)
