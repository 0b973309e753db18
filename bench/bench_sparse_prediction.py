"""Masked-LM training step with sparse prediction (ModernBERT's `sparse_prediction`) against the dense head.

At BERT-base size the masked-LM head's `(B, L, 30522)` logits and their cross-entropy are a large share of a
pretraining step, while only the ~15% masked positions carry a label. With `sparse_prediction=True` the head runs
on those alone. This measures what that saves in a full training step, for each leanbert architecture.

Run (from the repository root):

    .venv/bin/python -m bench.bench_sparse_prediction           # BERT-base: 12 layers, batch 8 x 128, all three
    .venv/bin/python -m bench.bench_sparse_prediction --quick   # SymBert, 2 layers, few rounds (~1 min)

Outputs in `--output-dir` (default `bench/results/`): `sparse_prediction.json` (raw step times, ratios, machine
info) and `sparse_prediction.png` (the ratios with their quartiles).

Method: each architecture's `...ForMaskedLM` is built once (hidden 768, 12 heads, vocab 30522, BERT's dropout 0.1)
and deep-copied with `sparse_prediction=True`, so both start from the same weights. A training step is forward with
labels on `--mask-rate` of the positions (random, the same batch every step), backward, AdamW step and
`zero_grad`. After `--warmup` untimed rounds, each of `--steps` rounds times one dense and one sparse step back to
back, the order flipped every round, so that machine noise hits both alike. Reported: the median of the per-round
ratios dense time / sparse time (> 1: sparse is faster) with its quartiles, and the median step times. As a check
that both compute the same thing, the eval-mode loss of both models on the batch before training is recorded.
glibc's malloc keeps freed memory, as in `bench_speed.py` (see its docstring).
"""

import argparse
import copy
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

import leanbert
from bench.bench_speed import keep_freed_memory
from bench.outputs import claim, write_file, write_json

# name -> (config class, ForMaskedLM class), from the package's registry of architectures
MODELS = {architecture.name: (architecture.config_class, architecture.classes["AutoModelForMaskedLM"])
          for architecture in leanbert.ARCHITECTURES}

VOCAB_SIZE = 30522
FULL = dict(layers=12, steps=10, warmup=2, models=list(MODELS))
QUICK = dict(layers=2, steps=4, warmup=1, models=list(MODELS)[:1])  # the first declared architecture


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK['models'][0]}, 2 layers, few rounds (smoke test)")
    parser.add_argument("--layers", type=int, help="number of layers (default 12; 2 with --quick)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    parser.add_argument("--mask-rate", type=float, default=0.15, help="share of labelled positions (default 0.15)")
    parser.add_argument("--steps", type=int, help="timed rounds (default 10; 4 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed rounds before timing (default 2; 1 with --quick)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS),
                        help="architectures (default all; SymBert with --quick)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 2:
        parser.error("--steps must be at least 2 for quartiles")
    return args


def build(name: str, layers: int) -> torch.nn.Module:
    """A BERT-base-size `...ForMaskedLM` of the architecture, dense prediction."""
    config_class, model_class = MODELS[name]
    heads = {"num_attention_heads": 12} if "num_attention_heads" in config_class.field_rules else {}
    config = config_class(vocab_size=VOCAB_SIZE, num_hidden_layers=layers, **heads, attn_implementation="sdpa")
    return model_class(config)  # the other fields' defaults are BERT-base's


def make_batch(args) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids and labels on a random `mask_rate` share of the positions (-100 elsewhere)."""
    generator = torch.Generator().manual_seed(args.seed)
    input_ids = torch.randint(1, VOCAB_SIZE, (args.batch, args.seq), generator=generator)
    labelled = torch.randperm(input_ids.numel(), generator=generator)[: round(args.mask_rate * input_ids.numel())]
    labels = torch.full((input_ids.numel(),), -100)
    labels[labelled] = input_ids.view(-1)[labelled]
    return input_ids, labels.view_as(input_ids)


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, input_ids, labels) -> float:
    """Seconds of one forward + backward + AdamW step."""
    start = time.perf_counter()
    model(input_ids=input_ids, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    return time.perf_counter() - start


def bench_model(name: str, args, input_ids, labels) -> dict:
    torch.manual_seed(args.seed)
    models = {"dense": build(name, args.layers)}
    models["sparse"] = copy.deepcopy(models["dense"])
    models["sparse"].config.sparse_prediction = True
    with torch.no_grad():
        eval_loss = {mode: model.eval()(input_ids=input_ids, labels=labels).loss.item()
                     for mode, model in models.items()}
    optimizers = {mode: torch.optim.AdamW(model.train().parameters(), lr=1e-4) for mode, model in models.items()}
    times = {mode: [] for mode in models}
    for round_index in tqdm(range(args.warmup + args.steps), desc=name, leave=False):
        for mode in list(models)[:: 1 if round_index % 2 == 0 else -1]:
            seconds = training_step(models[mode], optimizers[mode], input_ids, labels)
            if round_index >= args.warmup:
                times[mode].append(seconds)
    ratios = [dense / sparse for dense, sparse in zip(times["dense"], times["sparse"])]
    quartiles = statistics.quantiles(ratios, n=4)
    return dict(model=name, params=sum(p.numel() for p in models["dense"].parameters()),
                dense_step_s=times["dense"], sparse_step_s=times["sparse"],
                dense_median_s=statistics.median(times["dense"]), sparse_median_s=statistics.median(times["sparse"]),
                ratio_median=statistics.median(ratios), ratio_q1=quartiles[0], ratio_q3=quartiles[2],
                eval_loss_dense=eval_loss["dense"], eval_loss_sparse=eval_loss["sparse"])


def plot(results: dict, path: Path) -> None:
    """One bar per architecture: the median dense / sparse step-time ratio, its quartiles as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    figure, axis = plt.subplots(figsize=(6, 4))
    medians = [row["ratio_median"] for row in rows]
    errors = [[m - row["ratio_q1"] for m, row in zip(medians, rows)],
              [row["ratio_q3"] - m for m, row in zip(medians, rows)]]
    axis.bar([row["model"] for row in rows], [m - 1 for m in medians], bottom=1, yerr=errors, capsize=6)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_ylabel("dense step time / sparse step time")
    axis.set_title(f"sparse vs dense masked-LM prediction, training step\n{results['shape']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> dict:
    args = parse_args(argv)
    claim(args.output_dir, ["sparse_prediction.json", "sparse_prediction.png"])
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = keep_freed_memory()
    input_ids, labels = make_batch(args)
    rows = [bench_model(name, args, input_ids, labels) for name in tqdm(args.models, desc="models")]
    results = dict(
        machine=dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"), torch=torch.__version__,
                     transformers=transformers.__version__, leanbert=leanbert.__version__,
                     python=platform.python_version(), processor=platform.processor(), cpu_count=os.cpu_count(),
                     torch_threads=torch.get_num_threads(), allocator=allocator),
        shape=f"d=768, {args.layers} layers, vocab {VOCAB_SIZE}, batch {args.batch} x {args.seq}, "
              f"{int((labels != -100).sum())} labelled",
        steps=args.steps, warmup=args.warmup, rows=rows)
    write_json(args.output_dir, "sparse_prediction.json", results)
    write_file(args.output_dir, "sparse_prediction.png", lambda path: plot(results, path))
    for row in rows:
        print(f"{row['model']}: dense {row['dense_median_s']:.2f} s, sparse {row['sparse_median_s']:.2f} s, "
              f"dense / sparse {row['ratio_median']:.3f} (q1-q3 {row['ratio_q1']:.3f}-{row['ratio_q3']:.3f}); "
              f"eval loss {row['eval_loss_dense']:.6f} / {row['eval_loss_sparse']:.6f}")
    return results


if __name__ == "__main__":
    main()
