"""Speed and memory of the leanbert encoders against transformers' own `BertModel` (SDPA) of the same size.

Every architecture in `ARCHITECTURES` is built from one shared dict of BERT fields and measured side by side
with `BertModel(attn_implementation="sdpa")` in the same run (DESIGN.md section 5). Absolute numbers on shared
CPU machines are noisy: read the ratios against BERT.

Run (from the repository root):

    .venv/bin/python bench/bench_speed.py               # BERT-base, seq 128 (batch 8) and 512 (batch 2)
    .venv/bin/python bench/bench_speed.py --threads 1   # on a machine shared with other jobs (see below)
    .venv/bin/python bench/bench_speed.py --quick       # tiny config, few steps: a smoke test (< 1 min)
    .venv/bin/python bench/bench_speed.py --device cuda --dtype bf16 --batch-sizes 64 16 --steps 20

Outputs in `--output-dir` (default `bench/results/`): `speed.json` (raw numbers and machine info), `speed.md`
(a markdown table, also printed) and `speed.png` (bar plots of the ratios).

Method:
- Settings: every (sequence length, batch size) pair times every dropout in `--dropout` (default 0.1 and 0.0;
  on the CPU, SDPA runs a fused kernel only without attention dropout). Dropout applies to the hidden states and
  the attention probabilities alike. Inputs are random token ids without padding (no attention mask).
- Training step: forward of the bare encoder (no pooler), loss = mean of the squared last hidden state, backward,
  AdamW step (`--optimizer`), `zero_grad(set_to_none=False)`. Inference: forward under `torch.inference_mode()`
  in eval mode.
- Timing: `--warmup` untimed rounds, then `--steps` timed rounds; each round runs one step of every model in turn
  (round-robin, the order reversed every other round), so that machine noise hits all models alike. Reported:
  tokens/s from the median step time, and its ratio to BertModel's (> 1: faster than BERT); as a measure of the
  noise, the quartiles of the ratio computed round by round. With the six entries of `ARCHITECTURES` and
  `--steps 7` the run took 25 minutes on 2 idle cores. When other processes compete for the cores, two torch
  threads stall on each other (a step can take 5x longer): `--threads 1` is then faster and steadier (40 minutes
  on 2 cores shared with two other busy processes).
- Allocator (CPU): by default the run first tells glibc's malloc to keep freed memory (`mallopt`: no mmap'd
  chunks, no trimming), as jemalloc or tcmalloc would (PyTorch's CPU performance tuning guide). Otherwise glibc
  returns each step's large activation buffers to the kernel and the next step page-faults them in afresh: measured
  here, 30,000 to 290,000 minor faults and up to 3 s of system time per BERT-base step, varying with the allocation
  history of whichever model ran before, which swamped the differences between models. With it a step faults no
  pages after warm-up; every row records its median minor page faults per timed training step
  (`train_page_faults`) as the check. `--system-malloc` measures without it.
- Memory (training step, measured once per model and setting after warmup): "activation" is the largest increase
  of allocated memory over the resident state during one step; "peak" = resident + activation, where resident is
  the bytes of weights + gradients + optimizer state (all kept allocated between steps). On CUDA from
  `torch.cuda.max_memory_allocated`; on the CPU from the allocation events of `torch.profiler` with
  `profile_memory=True` (every tensor allocation and free through PyTorch's CPU allocator, in time order; exact,
  independent of glibc's caching and of the other models alive in the process; scratch space that BLAS/oneDNN
  allocate outside PyTorch is not seen). Cross-checked once against the peak-RSS increase of a fresh process
  (`MALLOC_MMAP_THRESHOLD_=65536`, VmHWM reset through /proc/self/clear_refs): BERT-base, batch 8 x 128, within 1 MiB.
"""

import argparse
import ctypes
import ctypes.util
import datetime
import gc
import itertools
import json
import os
import platform
import resource
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import transformers
from torch._C._profiler import _EventType
from tqdm import tqdm
from transformers import BertConfig, BertModel

import leanbert

REFERENCE = "BertModel"
MIB = 2**20


def bert_model(fields: dict) -> torch.nn.Module:
    return BertModel(BertConfig(**fields, attn_implementation="sdpa"), add_pooling_layer=False)


def leanbert_model(architecture: leanbert.Architecture, **extra):
    """Factory for the architecture's bare encoder with its config's `extra` fields."""

    def build(fields: dict) -> torch.nn.Module:
        config = architecture.config_class(**fields, **extra, attn_implementation="sdpa")
        return architecture.classes["AutoModel"](config, add_pooling_layer=False)

    return build


# name -> factory(BERT-shape fields) -> bare encoder: BERT, the reference of every ratio, then every declared
# architecture in each of its variants ("SymBert pairwise", "SymBert symmetric", "SharedBert", "Shatter P=2", ...)
ARCHITECTURES = {
    REFERENCE: bert_model,
    **{f"{architecture.name} {label}".strip(): leanbert_model(architecture, **extra)
       for architecture in leanbert.ARCHITECTURES for label, extra in architecture.variants.items()},
}

# Defaults of the shape and run arguments: the full benchmark (BERT-base) and --quick.
FULL = dict(hidden=768, layers=12, heads=12, vocab=30522, seq_lens=[128, 512], batch_sizes=[8, 2], steps=5,
            warmup=2, threads=None)
QUICK = dict(hidden=32, layers=2, heads=4, vocab=512, seq_lens=[16, 32], batch_sizes=[2], steps=2, warmup=1,
             threads=1)  # one thread: tiny ops on two threads stall on a busy machine


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny config and few steps (smoke test)")
    parser.add_argument("--hidden", type=int, help="hidden size (default 768)")
    parser.add_argument("--layers", type=int, help="number of layers (default 12)")
    parser.add_argument("--heads", type=int, help="attention heads (default 12)")
    parser.add_argument("--intermediate", type=int, help="feed-forward width (default 4 x hidden)")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default 30522)")
    parser.add_argument("--seq-lens", type=int, nargs="+", help="sequence lengths (default 128 512)")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        help="batch size per sequence length, or one for all (default 8 2)")
    parser.add_argument("--dropout", type=float, nargs="+", dest="dropouts", default=[0.1, 0.0],
                        help="dropout settings, each for hidden states and attention probabilities (default 0.1 0.0)")
    parser.add_argument("--steps", type=int, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, help="untimed rounds before timing (default 2)")
    parser.add_argument("--models", nargs="+", choices=list(ARCHITECTURES), default=list(ARCHITECTURES),
                        help="subset of the architectures (default all)")
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
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.intermediate = args.intermediate or 4 * args.hidden
    if len(args.batch_sizes) == 1:
        args.batch_sizes *= len(args.seq_lens)
    if len(args.batch_sizes) != len(args.seq_lens):
        parser.error("give one batch size, or one per sequence length")
    return args


def model_fields(args: argparse.Namespace, dropout: float) -> dict:
    """The BERT-shape config fields every architecture is built from."""
    return dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                intermediate_size=args.intermediate, vocab_size=args.vocab,
                max_position_embeddings=max(512, *args.seq_lens),
                hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


class Runner:
    """One model with its AdamW optimizer and the two measured steps."""

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: str, optimizer: str):
        self.model = model.to(device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=optimizer == "adamw_torch_fused")
        self.device = device
        self.dtype = dtype

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.dtype == "bf16" else nullcontext()

    def train_step(self, input_ids: torch.Tensor) -> None:
        with self.autocast():
            hidden = self.model(input_ids=input_ids).last_hidden_state
        hidden.float().pow(2).mean().backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)

    def infer_step(self, input_ids: torch.Tensor) -> None:
        with torch.inference_mode(), self.autocast():
            self.model(input_ids=input_ids)

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


def round_robin(steps: dict, input_ids: torch.Tensor, rounds: int, device: torch.device, desc: str) -> tuple:
    """Seconds and minor page faults per call of each `steps[name](input_ids)`, one call of every model per round;
    the order of the models flips every round, so that no model always runs right after the same one."""
    times, faults = {name: [] for name in steps}, {name: [] for name in steps}
    for round_index in tqdm(range(rounds), desc=desc, leave=False):
        for name in list(steps)[:: 1 if round_index % 2 == 0 else -1]:
            synchronize(device)
            start_faults = minor_faults()  # read outside the timed span
            start = time.perf_counter()
            steps[name](input_ids)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            faults[name].append(minor_faults() - start_faults)
    return times, faults


def activation_bytes(step, input_ids: torch.Tensor, device: torch.device) -> int:
    """Largest increase of allocated memory over its starting value during `step(input_ids)`."""
    synchronize(device)
    if device.type == "cuda":
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step(input_ids)
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step(input_ids)
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


def build_runners(args, dropout: float) -> dict:
    """A `Runner` per architecture, each built from the same seed."""
    runners = {}
    for name in args.models:
        torch.manual_seed(args.seed)
        runners[name] = Runner(ARCHITECTURES[name](model_fields(args, dropout)), torch.device(args.device),
                               args.dtype, args.optimizer)
    return runners


def bench_setting(args, seq_len: int, batch_size: int, dropout: float) -> list[dict]:
    """Measure every model at this dropout on one random batch of shape (batch_size, seq_len)."""
    device = torch.device(args.device)
    runners = build_runners(args, dropout)
    generator = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(1, args.vocab, (batch_size, seq_len), generator=generator).to(device)
    desc = f"seq {seq_len} x batch {batch_size}, dropout {dropout}"
    for runner in runners.values():
        runner.model.train()
    train_steps = {name: runner.train_step for name, runner in runners.items()}
    round_robin(train_steps, input_ids, args.warmup, device, f"{desc}: warmup")
    activation = {name: activation_bytes(step, input_ids, device) for name, step in train_steps.items()}
    train, train_faults = round_robin(train_steps, input_ids, args.steps, device, f"{desc}: train")
    for runner in runners.values():
        runner.model.eval()
    infer_steps = {name: runner.infer_step for name, runner in runners.items()}
    infer, _ = round_robin(infer_steps, input_ids, args.warmup + args.steps, device, f"{desc}: inference")
    tokens = batch_size * seq_len
    resident = {name: runner.resident_bytes() for name, runner in runners.items()}
    rows = [dict(model=name, seq_len=seq_len, batch_size=batch_size, dropout=dropout, params=runner.num_params(),
                 train_step_s=train[name], train_tokens_per_s=tokens / statistics.median(train[name]),
                 train_page_faults=statistics.median(train_faults[name]),
                 infer_step_s=infer[name][args.warmup:],
                 infer_tokens_per_s=tokens / statistics.median(infer[name][args.warmup:]),
                 resident_bytes=resident[name], activation_bytes=activation[name],
                 peak_bytes=resident[name] + activation[name])
            for name, runner in runners.items()]
    return add_ratios(rows)


def add_ratios(rows: list[dict]) -> list[dict]:
    """Each row's throughputs and memory divided by the reference model's in the same setting, and the quartiles
    of its training speed ratio round by round (the two steps of a round ran back to back), which show the noise."""
    reference = next((row for row in rows if row["model"] == REFERENCE), None)
    for row in rows:
        for key in ("train_tokens_per_s", "infer_tokens_per_s", "activation_bytes", "peak_bytes", "params"):
            row[f"{key}_ratio"] = row[key] / reference[key] if reference and reference[key] else None
        rounds = [ref / own for ref, own in zip(reference["train_step_s"], row["train_step_s"])] if reference else []
        row["train_round_ratio_quartiles"] = statistics.quantiles(rounds, n=4) if len(rounds) > 1 else None
    return rows


def machine_info(args) -> dict:
    info = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), torch=torch.__version__,
                transformers=transformers.__version__, leanbert=leanbert.__version__, python=platform.python_version(),
                platform=platform.platform(), processor=platform.processor(), cpu_count=os.cpu_count(),
                torch_threads=torch.get_num_threads(), device=args.device, dtype=args.dtype, allocator=args.allocator,
                optimizer=args.optimizer)
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return info


def fmt_ratio(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def fmt_quartiles(quartiles) -> str:
    return "–" if quartiles is None else f"{quartiles[0]:.2f}–{quartiles[2]:.2f}"


def markdown(results: dict) -> str:
    header = ("| model | seq len | batch | dropout | params (M) | train tok/s | × BERT | rounds q1–q3 | infer tok/s "
              "| × BERT | peak MiB | act. MiB | act. × BERT |")
    lines = ["# leanbert speed vs BertModel (SDPA)\n",
             ", ".join(f"{key} {value}" for key, value in results["machine"].items()) + "\n",
             f"Shape: {results['shape']}; {results['steps']} timed rounds after {results['warmup']} warm-up, "
             "median step; ratios vs BertModel in the same setting (tok/s: > 1 is faster; memory: < 1 is "
             "smaller); rounds q1–q3: quartiles of the training ratio taken round by round. Memory of the "
             "training step: act. = allocated on top of weights + grads + AdamW state, peak = that resident state "
             "+ act.\n",
             f"Minor page faults per timed training step (median, largest over the rows): "
             f"{max((row['train_page_faults'] for row in results['rows']), default=0):.0f}.\n",
             header, "|" + "---|" * (header.count("|") - 1)]
    for row in results["rows"]:
        lines.append(
            f"| {row['model']} | {row['seq_len']} | {row['batch_size']} | {row['dropout']} | {row['params'] / 1e6:.2f} "
            f"| {row['train_tokens_per_s']:.0f} | {fmt_ratio(row['train_tokens_per_s_ratio'])} "
            f"| {fmt_quartiles(row['train_round_ratio_quartiles'])} "
            f"| {row['infer_tokens_per_s']:.0f} | {fmt_ratio(row['infer_tokens_per_s_ratio'])} "
            f"| {row['peak_bytes'] / MIB:.1f} | {row['activation_bytes'] / MIB:.1f} "
            f"| {fmt_ratio(row['activation_bytes_ratio'])} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Bar plots of the three ratios vs BertModel, one group of bars per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in results["rows"] if row["model"] != REFERENCE]
    settings = list(dict.fromkeys((row["seq_len"], row["dropout"]) for row in rows))
    models = list(dict.fromkeys(row["model"] for row in rows))
    metrics = {"train_tokens_per_s_ratio": "training tok/s × BERT (> 1 faster)",
               "infer_tokens_per_s_ratio": "inference tok/s × BERT (> 1 faster)",
               "activation_bytes_ratio": "training activation memory × BERT (< 1 smaller)"}
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.4), squeeze=False)
    width = 0.8 / max(len(models), 1)
    for axis, (key, title) in zip(axes[0], metrics.items()):
        for index, model in enumerate(models):
            values = {(row["seq_len"], row["dropout"]): row[key] for row in rows if row["model"] == model}
            heights = [(values.get(setting) or 1.0) - 1.0 for setting in settings]  # bars grow from 1.0
            axis.bar([x + index * width for x in range(len(settings))], heights, width, bottom=1.0, label=model)
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(settings))],
                        [f"L={seq} p={dropout}" for seq, dropout in settings])
        axis.set_title(title, fontsize=10)
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=len(models), fontsize=9)
    figure.suptitle(f"leanbert vs BertModel (SDPA), {results['machine']['device']}, {results['shape']}", fontsize=10)
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.allocator = "system malloc" if args.system_malloc else keep_freed_memory()
    rows = []
    shapes = list(zip(args.seq_lens, args.batch_sizes))
    for (seq_len, batch_size), dropout in tqdm(list(itertools.product(shapes, args.dropouts)), desc="settings"):
        rows += bench_setting(args, seq_len, batch_size, dropout)
        gc.collect()
    results = dict(machine=machine_info(args),
                   shape=f"d={args.hidden}, {args.layers} layers, {args.heads} heads, ffn {args.intermediate}, "
                         f"vocab {args.vocab}",
                   steps=args.steps, warmup=args.warmup, rows=rows)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "speed.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.output_dir / "speed.md").write_text(table)
    plot(results, args.output_dir / "speed.png")
    print(table)
    return results


if __name__ == "__main__":
    main()
