"""A sentence-transformers source keeps its set-up through conversion and healing: `SentenceTransformer(output)`
has the source's modules, `max_seq_length`, prompts and similarity, gives unit-norm embeddings close to the
source's, with leanbert imported and with `trust_remote_code=True` without it. Bad set-ups fail before any work."""

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
try:
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer
except ImportError:  # sentence-transformers < 6
    from sentence_transformers.models import Dense, Normalize, Pooling, Transformer
from transformers import AutoModel, AutoTokenizer

from conftest import real_minilm_path
from leanbert.commands.convert import main as convert_main
from leanbert.common.errors import LeanbertError
from leanbert.common.passages import read_passages
from leanbert.common.sentence_transformers import read_setup
from leanbert.conversion import convert
from leanbert.healing import heal

HELDOUT = read_passages(bundled="heldout.txt")[0]
SENTENCES = ["A man is eating food.", "A man is riding a horse.", "The new movie is awesome.",
             "The cat sits outside.", "Two men are playing chess in the park."]

REMOTE_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["leanbert"] = None  # any `import leanbert` now raises ImportError
    import json
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer

    folder, texts, out_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    try:
        SentenceTransformer(folder)
        raise SystemExit("loaded without trust_remote_code")
    except ValueError as error:
        assert "trust_remote_code" in str(error), error
    model = SentenceTransformer(folder, trust_remote_code=True)
    assert type(model[0].auto_model).__module__.startswith("transformers_modules."), type(model[0].auto_model)
    print(json.dumps({"modules": [type(m).__name__ for m in model], "max_seq_length": model.max_seq_length}))
    save_file({"embeddings": model.encode(texts, convert_to_tensor=True).contiguous()}, out_file)
""")


def module_names(model: SentenceTransformer) -> list[str]:
    return [type(module).__name__ for module in model]


def encode(model: SentenceTransformer, texts: list[str]) -> torch.Tensor:
    return model.encode(texts, convert_to_tensor=True, batch_size=16)


def without_leanbert(folder: Path, texts: list[str], tmp_path: Path) -> tuple[dict, torch.Tensor]:
    """Load `folder` in a process where leanbert cannot be imported (it must refuse without trust_remote_code);
    return its modules and max_seq_length, and its embeddings of `texts`."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, folder, json.dumps(texts), tmp_path / "emb.st"],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), load_file(tmp_path / "emb.st")["embeddings"]


@pytest.fixture(scope="module")
def converted(st_source):
    output = st_source / "converted"
    report = convert(str(st_source / "source"), "shared_bert", output, calibration_text=st_source / "text.txt",
                     refine_steps=0)
    return output, report


def assert_same_setup(source: SentenceTransformer, output: SentenceTransformer) -> None:
    assert module_names(output) == module_names(source)
    assert output.max_seq_length == source.max_seq_length
    assert output.prompts == source.prompts and output.default_prompt_name == source.default_prompt_name
    assert output.similarity_fn_name == source.similarity_fn_name
    assert output[0].do_lower_case == source[0].do_lower_case


def test_conversion_keeps_the_modules_and_the_reported_fidelity(st_source, converted):
    output, report = converted
    source = SentenceTransformer(str(st_source / "source"))
    model = SentenceTransformer(str(output))
    assert module_names(model) == ["Transformer", "Pooling", "Normalize"]
    assert type(model[0].auto_model).__name__ == "SharedBertModel"
    assert_same_setup(source, model)
    assert model.max_seq_length == 128 != AutoTokenizer.from_pretrained(real_minilm_path()).model_max_length
    assert model.prompts["query"] == "query: " and model.similarity_fn_name == "dot"

    embeddings = encode(model, HELDOUT)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(HELDOUT)), atol=1e-5, rtol=0)
    cosine = torch.nn.functional.cosine_similarity(encode(source, HELDOUT), embeddings, dim=-1)
    # the report's measure exactly: mean-pooled, the held-out passages truncated to 128 tokens (= max_seq_length)
    assert cosine.mean().item() == pytest.approx(report["fidelity"]["mean_cosine"], abs=1e-4)
    assert cosine.min().item() == pytest.approx(report["fidelity"]["min_cosine"], abs=1e-4)
    written = json.loads((output / ".leanbert-output.json").read_text())["files"]
    assert {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
            "1_Pooling/config.json", "2_Normalize/config.json"} <= set(written)


def test_without_leanbert_it_loads_with_trust_remote_code(converted, tmp_path):
    output, _ = converted
    setup, remote = without_leanbert(output, SENTENCES, tmp_path)
    assert setup == {"modules": ["Transformer", "Pooling", "Normalize"], "max_seq_length": 128}
    torch.testing.assert_close(remote, encode(SentenceTransformer(str(output)), SENTENCES), atol=1e-5, rtol=0)


def test_healing_keeps_the_modules_from_the_student_or_else_the_teacher(st_source, converted, tmp_path):
    output, _ = converted
    bare = tmp_path / "bare_student"  # converted by a leanbert that dropped the set-up
    shutil.copytree(output, bare)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        (bare / name).unlink()
    source = SentenceTransformer(str(st_source / "source"))
    for student in (output, bare):
        healed = tmp_path / f"healed_{student.name}"
        heal(str(st_source / "source"), student, st_source / "text.txt", healed, steps=2, batch_size=4,
             max_length=32)
        model = SentenceTransformer(str(healed))
        assert_same_setup(source, model)
        # healing changed the student's weights, and sentence-transformers embeds with the healed ones: its embeddings
        # are the healed encoder's last hidden states, mean-pooled over the real tokens and scaled to unit norm
        start, weights = load_file(student / "model.safetensors"), load_file(healed / "model.safetensors")
        assert weights.keys() == start.keys()
        assert any(not torch.equal(weights[name], start[name]) for name in start), "healing changed no weight"
        tokenizer = AutoTokenizer.from_pretrained(healed)
        encoder = AutoModel.from_pretrained(healed).eval()
        batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=source.max_seq_length,
                          return_tensors="pt")
        with torch.no_grad():
            hidden = encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(encode(model, SENTENCES), pooled / pooled.norm(dim=-1, keepdim=True), atol=1e-5,
                                   rtol=1e-4)


def test_convert_with_heal_keeps_the_modules(st_source, capsys):
    output = st_source / "convert_heal"
    assert convert_main(["--source", str(st_source / "source"), "--to", "shatter", "--output", str(output),
                         "--calibration-text", str(st_source / "text.txt"), "--refine-steps", "0", "--heal",
                         "--heal-text", str(st_source / "text.txt"), "--heal-steps", "2",
                         "--heal-batch-size", "4"]) == 0
    assert "healing" in json.loads((output / "conversion_report.json").read_text())
    assert_same_setup(SentenceTransformer(str(st_source / "source")), SentenceTransformer(str(output)))


def test_real_minilm_layout_without_a_normalize_folder_is_read():
    """The published all-MiniLM-L6-v2 names 2_Normalize in modules.json but ships no such folder."""
    folder = real_minilm_path()
    assert not (folder / "2_Normalize").exists()
    setup = read_setup(folder)
    assert [t.rsplit(".", 1)[-1] for t in setup.module_types] == ["Transformer", "Pooling", "Normalize"]
    assert set(setup.files) == {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
                                "1_Pooling/config.json"}
    assert setup.files["sentence_bert_config.json"] == (folder / "sentence_bert_config.json").read_bytes()
    versions = json.loads(setup.files["config_sentence_transformers.json"])["__version__"]
    assert versions["sentence_transformers"] == "2.0.0" and versions["transformers"] != "4.6.1"


def test_a_plain_bert_folder_has_no_setup(tiny_bert):
    assert read_setup(tiny_bert) is None


def test_dense_weights_are_carried_as_safetensors_and_pickle_only_on_request(st_source, tmp_path):
    torch.manual_seed(1)
    dense = Dense(48, 16)
    model = SentenceTransformer(modules=[Transformer(str(st_source / "bert")), Pooling(48, "mean"), dense,
                                         Normalize()])
    for safe in (True, False):
        folder = tmp_path / f"source_{safe}"
        model.save(str(folder), safe_serialization=safe)
        if not safe:
            assert (folder / "2_Dense" / "pytorch_model.bin").is_file()
            with pytest.raises(LeanbertError, match="2_Dense/pytorch_model.bin is a pickle file"):
                read_setup(folder)
        carried = tmp_path / f"carried_{safe}"
        read_setup(folder, allow_pickle=not safe).write_to(carried)
        assert sorted(p.name for p in (carried / "2_Dense").iterdir()) == ["config.json", "model.safetensors"]
        assert not list(carried.rglob("*.bin"))
        weights = load_file(carried / "2_Dense" / "model.safetensors")
        for name, tensor in dense.state_dict().items():
            torch.testing.assert_close(weights[name], tensor, atol=0, rtol=0)


def test_a_hub_source_reads_its_setup_from_the_downloaded_files(st_source, monkeypatch):
    import huggingface_hub

    requested = {}

    def snapshot_download(repo_id, allow_patterns):
        requested.update(repo_id=repo_id, patterns=allow_patterns)
        return str(st_source / "source")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    # as `make test` runs (HF_HUB_OFFLINE=1): online, leanbert would first ask the Hub whether the model exists
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    setup = read_setup("org/st-model")
    assert requested["repo_id"] == "org/st-model" and "modules.json" in requested["patterns"]
    assert "1_Pooling/config.json" in setup.files


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def break_setup(folder: Path, case: str) -> None:
    modules_file = folder / "modules.json"
    modules = json.loads(modules_file.read_text())
    if case == "not_json":
        modules_file.write_text('[{"idx": 0, "name": "0", "path": ""')
    elif case == "not_a_list":
        modules_file.write_text('{"0": "sentence_transformers.models.Transformer"}')
    elif case == "missing_folder":
        shutil.rmtree(folder / "1_Pooling")
    elif case == "escaping_path":
        modules[1]["path"] = "../elsewhere"
        modules_file.write_text(json.dumps(modules))
    elif case == "custom_type":
        modules[1]["type"] = "custom_pooling.Pooling"
        modules_file.write_text(json.dumps(modules))
    elif case == "transformer_in_subfolder":
        modules[0]["path"] = "0_Transformer"
        modules_file.write_text(json.dumps(modules))
    elif case == "code_in_module":
        (folder / "1_Pooling" / "pooling.py").write_text("import os\n")
    elif case == "bad_module_config":
        (folder / "1_Pooling" / "config.json").write_text("{not json")
    elif case == "bad_max_seq_length":
        (folder / "sentence_bert_config.json").write_text('{"max_seq_length": "long"}')


BAD_SETUPS = {
    "not_json": "modules.json is not valid JSON",
    "not_a_list": "modules.json must be a non-empty JSON list of modules",
    "missing_folder": "modules.json names the module folder '1_Pooling'",
    "escaping_path": "has the path '../elsewhere'",
    "custom_type": "custom module type 'custom_pooling.Pooling'",
    "transformer_in_subfolder": "must start with the Transformer module in the model folder itself",
    "code_in_module": "the module folder '1_Pooling' holds 'pooling.py'",
    "bad_module_config": "1_Pooling/config.json is not valid JSON",
    "bad_max_seq_length": "sentence_bert_config.json has max_seq_length 'long'",
}


@pytest.mark.parametrize("case", sorted(BAD_SETUPS))
def test_a_bad_setup_fails_before_any_work_with_one_line(st_source, case, tmp_path, capsys, monkeypatch):
    source = tmp_path / "source"
    shutil.copytree(st_source / "source", source)
    break_setup(source, case)
    before = snapshot(tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("the weights were loaded before the set-up was checked")

    monkeypatch.setattr(importlib.import_module("leanbert.conversion.convert"), "load_bert", no_work)
    code = convert_main(["--source", str(source), "--to", "shared_bert", "--output", str(tmp_path / "out"),
                         "--calibration-text", str(st_source / "text.txt")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("leanbert-convert: error: source "), lines
    assert BAD_SETUPS[case] in lines[0], lines
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


# How far below the report's stated mean cosine sentence-transformers' own encoding may fall. The report embeds the
# 64 held-out passages cut at 128 tokens (its --max-length); MiniLM's max_seq_length is 256, and 17 of the passages
# are longer than 128 tokens, so they are embedded whole, at positions the attention fit never saw in calibration
# (measured with refine_steps=20: 0.99343 against the stated 0.99370, i.e. -0.0003; the longer passages 0.9923).
# Five short everyday sentences are another distribution than the report's passages: a mean over 6-10 tokens
# averages less of the attention error away (measured 0.98840, i.e. -0.0053). Margins of about twice the measured
# gap for the sentences, ten times for the passages; cut at 128 tokens the stated value itself must come out.
HELDOUT_MARGIN, SENTENCE_MARGIN = 0.003, 0.01


@pytest.mark.slow
def test_real_minilm_keeps_its_sentence_transformers_setup(tmp_path):
    """all-MiniLM-L6-v2 converted to SymBert: Transformer, Pooling, Normalize; unit-norm embeddings; max_seq_length
    256; the report's cosine reproduced by sentence-transformers; the same embeddings without leanbert."""
    output = tmp_path / "sym"
    report = convert(str(real_minilm_path()), "sym_bert", output, refine_steps=20)
    assert json.loads((output / "conversion_report.json").read_text())["fidelity"] == report["fidelity"]
    source = SentenceTransformer(str(real_minilm_path()))
    model = SentenceTransformer(str(output))
    assert module_names(model) == module_names(source) == ["Transformer", "Pooling", "Normalize"]
    assert type(model[0].auto_model).__name__ == "SymBertModel"
    assert model.max_seq_length == source.max_seq_length == 256
    assert_same_setup(source, model)

    embeddings = encode(model, HELDOUT + SENTENCES)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(embeddings)), atol=1e-5, rtol=0)
    cosine = torch.nn.functional.cosine_similarity(encode(source, HELDOUT + SENTENCES), embeddings, dim=-1)
    stated = report["fidelity"]["mean_cosine"]
    assert cosine[:len(HELDOUT)].mean() >= stated - HELDOUT_MARGIN  # see the margins' comment
    assert cosine[len(HELDOUT):].mean() >= stated - SENTENCE_MARGIN
    # Cut at the report's 128 tokens, sentence-transformers reproduces the stated cosine itself.
    source.max_seq_length = model.max_seq_length = 128
    short = torch.nn.functional.cosine_similarity(encode(source, HELDOUT), encode(model, HELDOUT), dim=-1)
    assert short.mean().item() == pytest.approx(stated, abs=1e-4)
    model.max_seq_length = 256

    setup, remote = without_leanbert(output, SENTENCES, tmp_path)
    assert setup == {"modules": ["Transformer", "Pooling", "Normalize"], "max_seq_length": 256}
    torch.testing.assert_close(remote, embeddings[len(HELDOUT):], atol=1e-5, rtol=0)
