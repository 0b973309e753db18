"""Inference speed of each exportable architecture in its native form against its BERT export (`leanbert-export`).

Which form to deploy: the native model (leanbert installed, or its code through `trust_remote_code=True`) or the
exported plain BERT, which runs wherever BERT runs and computes the same outputs at BERT's cost. This measures what
that cost is in inference time, beside transformers' own `BertModel` of the same size in the same run.

Run (from the repository root):

    .venv/bin/python -m bench.bench_deploy           # BERT-base: 12 layers, d=768, batch 8 x 128 (~3 minutes)
    .venv/bin/python -m bench.bench_deploy --quick   # 2 layers, few rounds (smoke test)

Outputs in `--output-dir` (default `bench/results/`): `deploy.json` (raw times, ratios, machine info), `deploy.md`
(the table) and `deploy.png` (the ratios with their quartiles).

Method: SymBert (pairwise and symmetric) and SharedBert base models are built at the size (weights moved off their
init, so that nothing is an identity) and exported in memory with `leanbert.export.bert.to_bert`, the function the
command uses; a `BertModel` of the same size is built apart. Every model runs in eval mode under `torch.no_grad()`
with SDPA attention on the same batch of random token ids. After `--warmup` untimed rounds, each of `--rounds`
rounds times one forward pass of every model back to back, the order reversed every other round. Reported per
architecture: the median of the per-round ratios exported time / native time (> 1: the native form is faster) with
its quartiles, the same for BERT / native, and the largest difference between native and exported outputs.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import BertConfig, BertModel

import leanbert
from leanbert.export.bert import to_bert
from bench.bench_speed import keep_freed_memory, paired
from bench.outputs import claim, run_main, write_file, write_json, write_text
from bench.runs import command_line, machine

VOCAB_SIZE = 30522
# name -> (architecture's model_type, variant) for every architecture with a BERT form, each variant
MODELS = {a.variant_label(name): (a, fields) for a in leanbert.ARCHITECTURES if a.has_bert_form
          for name, fields in a.variants.items()}
FILES = ["deploy.json", "deploy.md", "deploy.png"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 layers, few rounds (smoke test)")
    parser.add_argument("--layers", type=int, help="number of layers (default 12; 2 with --quick)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
    parser.add_argument("--rounds", type=int, help="timed rounds (default 16; 3 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed rounds (default 2; 1 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    for key, full, quick in (("layers", 12, 2), ("rounds", 16, 3), ("warmup", 2, 1)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 for quartiles")
    return args


def build(architecture, fields: dict, layers: int) -> torch.nn.Module:
    """A BERT-base-size base model of the architecture (SDPA), its weights moved off their init."""
    config = architecture.config_class(vocab_size=VOCAB_SIZE, num_hidden_layers=layers, num_attention_heads=12,
                                       attn_implementation="sdpa", **fields)
    model = architecture.classes["AutoModel"](config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    return model


@torch.no_grad()
def main(argv=None) -> dict:
    args = parse_args(argv)
    claim(args.output_dir, FILES)
    allocator = keep_freed_memory()
    torch.manual_seed(args.seed)
    models = {}
    for name, (architecture, fields) in tqdm(MODELS.items(), desc="building"):
        models[name] = build(architecture, fields, args.layers)
        models[f"{name} exported"] = to_bert(models[name]).eval()
    models["BertModel"] = BertModel(BertConfig(vocab_size=VOCAB_SIZE, num_hidden_layers=args.layers,
                                               attn_implementation="sdpa")).eval()
    generator = torch.Generator().manual_seed(args.seed)
    batch = {"input_ids": torch.randint(1, VOCAB_SIZE, (args.batch, args.seq), generator=generator)}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    difference = {name: (models[name](**batch).last_hidden_state
                         - models[f"{name} exported"](**batch).last_hidden_state).abs().max().item()
                  for name in MODELS}
    times = {name: [] for name in models}
    for round_index in tqdm(range(args.warmup + args.rounds), desc="rounds"):
        for name in list(models)[:: 1 if round_index % 2 == 0 else -1]:
            start = time.perf_counter()
            models[name](**batch)
            seconds = time.perf_counter() - start
            if round_index >= args.warmup:
                times[name].append(seconds)
    rows = [{"model": name, "params": models[name].num_parameters(),
             "exported_params": models[f"{name} exported"].num_parameters(),
             "native_median_s": statistics.median(times[name]),
             "exported_median_s": statistics.median(times[f"{name} exported"]),
             "exported_over_native": paired(times[f"{name} exported"], times[name]),
             "bert_over_native": paired(times["BertModel"], times[name]),
             "max_abs_difference": difference[name]} for name in MODELS]
    results = {"machine": machine(allocator=allocator), "command": command_line(),
               "shape": f"d=768, {args.layers} layers, 12 heads, vocab {VOCAB_SIZE}, batch {args.batch} x {args.seq}",
               "rounds": args.rounds, "warmup": args.warmup, "times": times,
               "bert_median_s": statistics.median(times["BertModel"]), "rows": rows}
    write_json(args.output_dir, "deploy.json", results)
    write_text(args.output_dir, "deploy.md", markdown(results))
    write_file(args.output_dir, "deploy.png", lambda path: plot(results, path))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    lines = ["# Native form or exported BERT: inference speed", "",
             f"Generated by `{results['command']}` ({results['machine']['date']}; {results['shape']}; eval, "
             f"no_grad, SDPA; median of {results['rounds']} paired rounds, q1–q3 in brackets; "
             f"{results['machine']['cpu_count']} CPUs, torch {results['machine']['torch']}). A ratio > 1: the native "
             "form is faster.", "",
             "| model | parameters (native → exported) | native s | exported s | exported / native | "
             "BertModel / native | max abs difference |", "|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        exported, bert = row["exported_over_native"], row["bert_over_native"]
        lines.append(f"| {row['model']} | {row['params']:,} → {row['exported_params']:,} | "
                     f"{row['native_median_s']:.3f} | {row['exported_median_s']:.3f} | ×{exported['ratio']:.3f} "
                     f"({exported['ratio_q1']:.3f}–{exported['ratio_q3']:.3f}) | ×{bert['ratio']:.3f} "
                     f"({bert['ratio_q1']:.3f}–{bert['ratio_q3']:.3f}) | {row['max_abs_difference']:.1e} |")
    lines += ["", f"transformers' `BertModel` of the same size: {results['bert_median_s']:.3f} s a batch.", "",
              "![native vs exported](deploy.png)", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Per architecture, the median time ratios (exported / native, BertModel / native) with their quartiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    figure, axis = plt.subplots(figsize=(7, 4))
    width = 0.38
    for offset, key, label in ((-width / 2, "exported_over_native", "exported BERT / native"),
                               (width / 2, "bert_over_native", "BertModel / native")):
        medians = [row[key]["ratio"] for row in rows]
        errors = [[m - row[key]["ratio_q1"] for m, row in zip(medians, rows)],
                  [row[key]["ratio_q3"] - m for m, row in zip(medians, rows)]]
        axis.bar([i + offset for i in range(len(rows))], [m - 1 for m in medians], width, bottom=1, yerr=errors,
                 capsize=5, label=label)
    axis.set_xticks(range(len(rows)), [row["model"] for row in rows])
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_ylabel("time ratio (> 1: native faster)")
    axis.set_title(f"inference, native form vs exported BERT\n{results['shape']}", fontsize=9)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    run_main(main)
