"""Smoke test of bench/bench_speed.py: the --quick run completes and writes complete, well-formed outputs whose
derived numbers agree with the raw ones and with independently built models."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BertConfig, BertModel

import leanbert

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "bench_speed.py"

# The --quick shape, and each benchmarked model built here without the script's factories.
QUICK = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=512,
             max_position_embeddings=512)
MODELS = {
    "BertModel": lambda: BertModel(BertConfig(**QUICK), add_pooling_layer=False),
    **{f"{architecture.name} {label}".strip():
       lambda architecture=architecture, extra=extra: architecture.classes["AutoModel"](
           architecture.config_class(**QUICK, **extra), add_pooling_layer=False)
       for architecture in leanbert.ARCHITECTURES for label, extra in architecture.variants.items()},
}


def test_bench_speed_quick(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output-dir", str(tmp_path)], cwd=REPO, check=True,
                   capture_output=True, timeout=120)
    results = json.loads((tmp_path / "speed.json").read_text())
    rows = results["rows"]
    models = {row["model"] for row in rows}
    assert models == set(MODELS)  # BERT and every declared architecture in each of its variants
    settings = {(row["seq_len"], row["dropout"]) for row in rows}
    assert settings == {(16, 0.1), (16, 0.0), (32, 0.1), (32, 0.0)}
    assert sorted((row["model"], row["seq_len"], row["dropout"]) for row in rows) == sorted(
        (model, seq_len, dropout) for model in models for seq_len, dropout in settings)
    assert results["shape"] == "d=32, 2 layers, 4 heads, ffn 128, vocab 512"  # = QUICK
    bert = {(row["seq_len"], row["dropout"]): row for row in rows if row["model"] == "BertModel"}
    for row in rows:
        reference, tokens = bert[row["seq_len"], row["dropout"]], row["batch_size"] * row["seq_len"]
        assert row["train_tokens_per_s"] == pytest.approx(tokens / statistics.median(row["train_step_s"]))
        assert row["train_tokens_per_s_ratio"] == pytest.approx(row["train_tokens_per_s"]
                                                                / reference["train_tokens_per_s"])
        rounds = [bert_s / own_s for bert_s, own_s in zip(reference["train_step_s"], row["train_step_s"])]
        assert len(rounds) == results["steps"]
        assert row["train_round_ratio_quartiles"] == pytest.approx(statistics.quantiles(rounds, n=4))
        model = MODELS[row["model"]]()
        parameters = list(model.parameters())
        assert row["params"] == sum(p.numel() for p in parameters)
        # fp32 weights, gradients and AdamW's two moments: 16 bytes a parameter; plus AdamW's step count, one
        # fp32 scalar tensor per parameter tensor
        assert row["resident_bytes"] == 16 * row["params"] + 4 * len(parameters)
        # at least every layer's input is kept for the backward pass: B·L·d fp32 values per layer
        assert row["activation_bytes"] > tokens * QUICK["hidden_size"] * 4 * QUICK["num_hidden_layers"]
    assert {"torch", "transformers", "cpu_count", "device", "date", "allocator"} <= set(results["machine"])
    if sys.platform == "linux":  # glibc: the run must have switched malloc to keeping freed memory
        assert "keeping freed memory" in results["machine"]["allocator"]
    assert (tmp_path / "speed.md").read_text().count("\n| ") == len(rows) + 1
    assert (tmp_path / "speed.png").stat().st_size > 0


def test_bench_training_quick(tmp_path):
    """bench/bench_training.py at a tiny size without the cache part: the JSON's summaries agree with its raw
    times, and the PNG is written."""
    script = REPO / "bench" / "bench_training.py"
    steps, rounds, batch, seq = 2, 2, 2, 16
    subprocess.run([sys.executable, str(script), "--quick", "--skip-cache", "--layers", "1", "--hidden", "32",
                    "--heads", "2", "--vocab", "512", "--batch", str(batch), "--seq", str(seq), "--steps", str(steps),
                    "--rounds", str(rounds), "--warmup", "0", "--output-dir", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    results = json.loads((tmp_path / "training.json").read_text())
    over = results["overhead"]
    assert len(over["bare_s"]) == len(over["loop_s"]) == rounds
    assert over["ratios"] == pytest.approx([loop / bare for loop, bare in zip(over["loop_s"], over["bare_s"])])
    assert over["ratio_median"] == pytest.approx(statistics.median(over["ratios"]))
    assert [over["ratio_q1"], over["ratio_q3"]] == pytest.approx(statistics.quantiles(over["ratios"], n=4)[::2])
    assert over["bare_ms_per_step"] == pytest.approx(1e3 * statistics.median(over["bare_s"]) / steps)
    assert all(0 < later < whole for later, whole in zip(over["steady_loop_s"], over["loop_s"]))
    throughput = results["throughput"]
    rows = {row["model_type"]: row for row in throughput["rows"]}
    assert list(rows) == ["bert", "sym_bert", "shared_bert", "shatter"]
    assert throughput["tokens_per_run"] == steps * batch * seq
    assert [order[0] for order in throughput["orders"]] == ["bert", "sym_bert"]  # rotated every round
    for row in rows.values():
        assert row["tokens_per_s"] == pytest.approx([steps * batch * seq / s for s in row["run_s"]])
        assert row["ratio_to_bert"] == pytest.approx([own / bert for own, bert in
                                                      zip(row["tokens_per_s"], rows["bert"]["tokens_per_s"])])
        assert row["ratio_median"] == pytest.approx(statistics.median(row["ratio_to_bert"]))
        assert row["params"] > 0
    assert rows["bert"]["model_class"] == "BertForMaskedLM" and rows["shatter"]["model_class"] == "ShatterForMaskedLM"
    assert results["cache"] is None
    assert (tmp_path / "training.png").stat().st_size > 0
