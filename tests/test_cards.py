"""Model cards: every folder leanbert writes gets a README.md whose metadata and numbers are the folder's own.

A tiny BERT is converted from a Hub id (served offline from a Hugging Face cache built here, with a card that states
a licence), from a plain local folder, healed, pretrained and fine-tuned; each card is read back with
`huggingface_hub.ModelCard.load` and its numbers compared with the reports. The card's snippets are run as written,
with leanbert imported and, in a fresh process where leanbert cannot be imported, with `trust_remote_code=True`.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from huggingface_hub import ModelCard
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

import leanbert
from leanbert.architectures import BY_MODEL_TYPE
from conftest import SHARED_DATA, real_minilm_path
from leanbert.publishing.cards import PLACEHOLDER, display, for_repo, write_model_card
from leanbert.common.passages import read_passages
from leanbert.conversion import convert
from leanbert.healing import heal
from leanbert.training.classification import finetune
from leanbert.training.masked_lm import pretrain

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"
SOURCE_CARD = textwrap.dedent("""\
    ---
    license: apache-2.0
    library_name: sentence-transformers
    tags:
    - sentence-transformers
    - feature-extraction
    pipeline_tag: sentence-similarity
    ---

    # tiny-bert, the source's own card

    A sentence-transformers model card that leanbert must not copy.
""")
ARCHITECTURES = BY_MODEL_TYPE


def python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def table_row(card: str, label: str) -> list[str]:
    """The cells after the first cell of the markdown table row that starts with `label`."""
    match = re.search(rf"^\| {re.escape(label)} \|(.*)\|$", card, flags=re.M)
    assert match, f"no row {label!r} in the card"
    return [cell.strip() for cell in match.group(1).split("|")]


def count(cell: str) -> int:
    return int(cell.split()[0].replace(",", ""))


@pytest.fixture(scope="module")
def hub_cache(tiny_bert, tmp_path_factory):
    """An offline Hugging Face cache holding `acme/tiny-bert`: the tiny BERT with a card that states a licence."""
    cache = tmp_path_factory.mktemp("hub_cache")
    repo = cache / "models--acme--tiny-bert"
    shutil.copytree(tiny_bert, repo / "snapshots" / SNAPSHOT)
    (repo / "snapshots" / SNAPSHOT / "README.md").write_text(SOURCE_CARD)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return cache


@pytest.fixture(scope="module")
def from_hub_id(hub_cache, calibration_file, tmp_path_factory):
    """`acme/tiny-bert` converted to Shatter by the command, as a user converting a Hub model would."""
    output = tmp_path_factory.mktemp("converted") / "shatter"
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "leanbert.commands.convert", "--source", "acme/tiny-bert", "--to",
                             "shatter", "--output", str(output), "--calibration-text", str(calibration_file),
                             "--refine-steps", "0"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def local_source(tiny_bert, tmp_path_factory):
    """The tiny BERT in a plain local folder, with the sentence-transformers-style card that states a licence."""
    folder = tmp_path_factory.mktemp("local") / "tiny-bert"
    shutil.copytree(tiny_bert, folder)
    (folder / "README.md").write_text(SOURCE_CARD)
    return folder


@pytest.fixture(scope="module")
def from_local(local_source, calibration_file, tmp_path_factory):
    output = tmp_path_factory.mktemp("converted_local") / "shatter"
    convert(str(local_source), "shatter", output, calibration_text=calibration_file, refine_steps=0)  # the quickest
    return output


def test_card_of_a_model_converted_from_a_hub_id(from_hub_id):
    card = ModelCard.load(from_hub_id / "README.md")
    report = json.loads((from_hub_id / "conversion_report.json").read_text())
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-classification"  # a BertForSequenceClassification source keeps its head
    assert {"leanbert", "shatter"} <= set(data.tags) and "sentence-transformers" not in data.tags
    assert data.base_model == "acme/tiny-bert" == report["source"]
    assert data.base_model_relation == "finetune"
    assert data.license == "apache-2.0"  # from the source's card
    assert data.datasets is None  # local calibration text is named in the body, not claimed as a Hub dataset

    text = card.text
    assert "the source's own card" not in text and "must not copy" not in text
    architecture = ARCHITECTURES["shatter"]
    assert f"https://arxiv.org/abs/{architecture.arxiv}" in text and f"arXiv {architecture.arxiv}" in text
    assert architecture.reconstruction in text
    parameters = report["parameters"]
    assert count(table_row(text, "source (BertForSequenceClassification)")[0]) == parameters["source"]
    assert count(table_row(text, "this model (ShatterForSequenceClassification)")[0]) == parameters["converted"]
    assert count(table_row(text, "saved")[0]) == parameters["saved"]
    mean, low = map(float, table_row(text, "converted"))
    assert mean == pytest.approx(report["fidelity"]["mean_cosine"], abs=5e-5)
    assert low == pytest.approx(report["fidelity"]["min_cosine"], abs=5e-5)
    assert f"leanbert {leanbert.__version__}" in text and "0 refinement steps" in text
    assert "[`acme/tiny-bert`](https://huggingface.co/acme/tiny-bert)" in text
    assert "## Healing" not in text and "after healing" not in text


def test_card_snippets_run_with_and_without_leanbert(from_hub_id, tmp_path):
    card = (from_hub_id / "README.md").read_text()
    with_leanbert, without = python_blocks(card)
    assert "import leanbert" in with_leanbert and "trust_remote_code=True" not in with_leanbert
    assert "import leanbert" not in without and "trust_remote_code=True" in without
    assert f'model_id = "{PLACEHOLDER}"' in with_leanbert

    local = for_repo(with_leanbert, str(from_hub_id))
    exec(compile(local, "README.md", "exec"), {"__name__": "__card__"})

    script = tmp_path / "snippet.py"
    script.write_text('import sys\nsys.modules["leanbert"] = None  # any `import leanbert` now fails\n'
                      + for_repo(without, str(from_hub_id))
                      + '\nassert type(model).__module__.startswith("transformers_modules."), type(model).__module__\n'
                        'assert sys.modules["leanbert"] is None\nprint("ran without leanbert")\n')
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ran without leanbert" in result.stdout


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_card_names_each_declared_architecture_and_its_paper(model_type, tmp_path):
    architecture = ARCHITECTURES[model_type]
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    heads = {} if model_type == "shatter" else {"num_attention_heads": 4}
    config = architecture.config_class(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                                       intermediate_size=37, max_position_embeddings=64, **heads)
    architecture.classes["AutoModelForMaskedLM"](config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    card = ModelCard.load(write_model_card(tmp_path, kind="pretrained"))
    assert card.data.pipeline_tag == "fill-mask" and card.data.tags == ["leanbert", model_type]
    # the papers are told apart by their arXiv ids: the card links its own paper and no other
    assert len({a.arxiv for a in ARCHITECTURES.values()}) == len(ARCHITECTURES)
    assert set(re.findall(r"arxiv\.org/abs/([\w.]+)", card.text)) == {architecture.arxiv}
    assert f"[arXiv {architecture.arxiv}](https://arxiv.org/abs/{architecture.arxiv})" in card.text
    others = [a for a in ARCHITECTURES.values() if a is not architecture]
    assert f"**{architecture.name}**" in card.text and not any(f"**{a.name}**" in card.text for a in others)
    # the paragraph on what is leanbert's reconstruction appears for an architecture that declares one, and only then
    paragraph = "**What is the paper's and what is leanbert's.**"
    if architecture.reconstruction:
        assert f"{paragraph} {architecture.reconstruction}" in card.text
    else:
        assert paragraph not in card.text
    assert not any(a.reconstruction and a.reconstruction in card.text for a in others)
    with_leanbert = for_repo(python_blocks(card.text)[0], str(tmp_path))
    exec(compile(with_leanbert, "README.md", "exec"), {"__name__": "__card__"})


def test_card_of_a_local_source_inherits_its_licence_but_names_no_base_model(from_local):
    card = ModelCard.load(from_local / "README.md")
    assert card.data.license == "apache-2.0"
    assert card.data.base_model is None and getattr(card.data, "base_model_relation", None) is None
    assert {"leanbert", "shatter"} <= set(card.data.tags)
    assert ("converted from `tiny-bert, the source's own card` (the title of its card; local folder `tiny-bert`)"
            in card.text and str(from_local.parent) not in card.text)
    architecture = ARCHITECTURES["shatter"]
    assert architecture.reconstruction in card.text and f"arXiv {architecture.arxiv}" in card.text


def test_card_names_a_local_source_by_what_it_says_it_is(from_local, tmp_path):
    """A local folder's name (`model` for the packaged all-MiniLM-L6-v2) tells a reader nothing: the card names the
    source by its own card's Hub id (the usage snippet whose name is the card's title), else by the Hub id its config
    was saved from, and says where that came from; a folder that says nothing keeps its name."""
    minilm = real_minilm_path()
    output = tmp_path / "converted"
    shutil.copytree(from_local, output)
    write_model_card(output, kind="converted", source=minilm)
    assert ("converted from `sentence-transformers/all-MiniLM-L6-v2` (named by its card; local folder "
            f"`{minilm.name}`)") in ModelCard.load(output / "README.md").text
    bare = tmp_path / "bare"
    bare.mkdir()
    config = json.loads((minilm / "config.json").read_text())
    (bare / "config.json").write_text(json.dumps(config))  # "_name_or_path": "nreimers/MiniLM-L6-H384-uncased"
    assert display(str(bare)) == ("`nreimers/MiniLM-L6-H384-uncased` (saved from it, by its config; local folder "
                                  "`bare`)")
    (bare / "config.json").write_text(json.dumps({**config, "_name_or_path": str(minilm)}))
    assert display(str(bare)) == "`bare` (local folder)"


def test_healed_card_reports_fidelity_before_and_after(local_source, from_local, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("\n".join(read_passages()[0][:64]))
    report = heal(str(local_source), from_local, text, tmp_path / "healed", steps=2, batch_size=8, max_length=32,
                  checkpoint_every=2)
    card = ModelCard.load(tmp_path / "healed" / "README.md")
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "text-classification"
    mean, low = map(float, table_row(card.text, "converted"))
    assert mean == pytest.approx(report["fidelity"]["mean_cosine"], abs=5e-5)
    after_mean, after_low = map(float, table_row(card.text, "after healing"))
    assert after_mean == pytest.approx(report["healing"]["fidelity_after"]["mean_cosine"], abs=5e-5)
    assert after_low == pytest.approx(report["healing"]["fidelity_after"]["min_cosine"], abs=5e-5)
    assert "Healed by distillation" in card.text and "healing_curve.png" in card.text
    manifest = json.loads((tmp_path / "healed" / ".leanbert-output.json").read_text())
    assert "README.md" in manifest["files"], "the card is part of the published output"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny Shatter pretrained from scratch for 3 steps on a little public-domain text."""
    root = tmp_path_factory.mktemp("pretrain")
    text = root / "train.txt"
    text.write_text((SHARED_DATA / "text" / "gutenberg-pd" / "valid.txt").read_text(encoding="utf-8")[:20_000])
    pretrain(root / "out", train_file=text, model_type="shatter", tokenizer=str(real_minilm_path()),
             config_overrides="num_hidden_layers=2,hidden_size=32,intermediate_size=64,max_position_embeddings=64",
             max_seq_length=32, cache_dir=str(root / "cache"), steps=3, batch_size=4, seed=0)
    return root / "out"


def test_pretraining_card(pretrained):
    card = ModelCard.load(pretrained / "README.md")
    report = json.loads((pretrained / "training_report.json").read_text())
    assert card.data.pipeline_tag == "fill-mask" and {"leanbert", "shatter"} <= set(card.data.tags)
    assert card.data.base_model is None and card.data.license is None and card.data.datasets is None
    assert count(table_row(card.text, "this model")[0]) == report["parameters"]
    assert float(table_row(card.text, "final training loss")[0]) == pytest.approx(report["final_loss"], abs=5e-5)
    assert float(table_row(card.text, "validation loss")[0]) == pytest.approx(report["validation"]["loss"], abs=5e-5)
    assert "from scratch (`shatter`" in card.text and "`train.txt` (local file)" in card.text
    with_leanbert = for_repo(python_blocks(card.text)[0], str(pretrained))
    exec(compile(with_leanbert, "README.md", "exec"), {"__name__": "__card__"})  # a fill-mask example


def test_finetuning_card(pretrained, tmp_path):
    glue = tmp_path / "glue" / "RTE"
    glue.mkdir(parents=True)
    for split, rows in (("train", 17), ("dev", 9)):  # the first rows of the real files
        lines = (SHARED_DATA / "glue" / "RTE" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
        (glue / f"{split}.tsv").write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
    results = finetune(tmp_path / "rte", model=str(pretrained), task="rte", data_dir=tmp_path / "glue",
                       max_seq_length=32, steps=2, batch_size=8, seed=0)
    card = ModelCard.load(tmp_path / "rte" / "README.md")
    assert card.data.pipeline_tag == "text-classification" and card.data.datasets == ["nyu-mll/glue"]
    assert card.data.metrics == ["accuracy"] and {"leanbert", "shatter"} <= set(card.data.tags)
    accuracy, loss, step = table_row(card.text, "final")
    assert float(accuracy) == pytest.approx(results["metrics"]["accuracy"], abs=5e-5)
    assert float(loss) == pytest.approx(results["metrics"]["loss"], abs=5e-5) and int(step) == results["steps"]
    assert "GLUE RTE" in card.text
    assert "`out` (local folder) is itself a leanbert model: ShatterForMaskedLM, pretrained with masked-LM" in card.text
    with_leanbert = for_repo(python_blocks(card.text)[0], str(tmp_path / "rte"))
    exec(compile(with_leanbert, "README.md", "exec"), {"__name__": "__card__"})


def test_card_of_a_bert_and_of_a_sentence_transformers_folder(from_hub_id, tmp_path):
    """A BERT that leanbert pretrained: no leanbert code, no paper, a transformers-only snippet. A folder with
    modules.json is tagged sentence-transformers."""
    bert = tmp_path / "bert"
    tokenizer = AutoTokenizer.from_pretrained(real_minilm_path())
    BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=37)).save_pretrained(bert)
    tokenizer.save_pretrained(bert)
    (bert / "training_report.json").write_text(json.dumps({"parameters": 1, "steps": 1, "final_loss": 1.0}))
    card = ModelCard.load(write_model_card(bert, kind="pretrained"))
    assert card.data.pipeline_tag == "fill-mask" and {"leanbert", "bert"} <= set(card.data.tags)
    assert "arxiv" not in card.text.lower() and "trust_remote_code" not in card.text
    (block,) = python_blocks(card.text)
    exec(compile(for_repo(block, str(bert)), "README.md", "exec"), {"__name__": "__card__"})

    sentence = tmp_path / "sentence"  # the converted model as the Transformer module of a mean-pooling set-up
    shutil.copytree(from_hub_id, sentence)
    (sentence / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (sentence / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (sentence / "1_Pooling").mkdir()
    (sentence / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 48,
                                                                     "pooling_mode_mean_tokens": True}))
    card = ModelCard.load(write_model_card(sentence, kind="converted"))
    assert "sentence-transformers" in card.data.tags and card.data.base_model == "acme/tiny-bert"
    blocks = python_blocks(card.text)
    assert len(blocks) == 4 and sum("SentenceTransformer(model_id" in block for block in blocks) == 2
    scope = {"__name__": "__card__"}
    exec(compile(for_repo(blocks[1], str(sentence)), "README.md", "exec"), scope)  # with leanbert
    assert scope["embeddings"].shape == (2, 48)
