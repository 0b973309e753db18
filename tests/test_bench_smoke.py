"""Smoke test of bench/bench_speed.py: the --quick run completes and writes complete, well-formed outputs."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "bench_speed.py"


def test_bench_speed_quick(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--output-dir", str(tmp_path)], cwd=REPO, check=True,
                   capture_output=True, timeout=120)
    results = json.loads((tmp_path / "speed.json").read_text())
    rows = results["rows"]
    models = {row["model"] for row in rows}
    assert "BertModel" in models and {"SymBert pairwise", "SymBert symmetric"} <= models
    settings = {(row["seq_len"], row["dropout"]) for row in rows}
    assert settings == {(16, 0.1), (16, 0.0), (32, 0.1), (32, 0.0)}
    assert sorted((row["model"], row["seq_len"], row["dropout"]) for row in rows) == sorted(
        (model, seq_len, dropout) for model in models for seq_len, dropout in settings)
    for row in rows:
        assert row["train_tokens_per_s"] > 0 and row["infer_tokens_per_s"] > 0
        assert row["params"] > 0 and row["activation_bytes"] > 0 and row["peak_bytes"] > row["activation_bytes"]
        assert row["train_tokens_per_s_ratio"] > 0 and row["train_page_faults"] >= 0
        low, middle, high = row["train_round_ratio_quartiles"]
        assert 0 < low <= middle <= high
    assert set(results["skipped"]).isdisjoint(models)
    assert {"torch", "transformers", "cpu_count", "device", "date", "allocator"} <= set(results["machine"])
    if sys.platform == "linux":  # glibc: the run must have switched malloc to keeping freed memory
        assert "keeping freed memory" in results["machine"]["allocator"]
    assert (tmp_path / "speed.md").read_text().count("\n| ") == len(rows) + 1
    assert (tmp_path / "speed.png").stat().st_size > 0
