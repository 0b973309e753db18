"""Convergence of masked-LM pretraining from scratch: BERT against SymBert (pairwise and symmetric), SharedBert and
Shatter, side by side, with `leanbert-pretrain`.

    python -m bench.bench_convergence            # the full run (resumable: run it again to continue)
    python -m bench.bench_convergence --quick    # a first look in a few minutes
    python -m bench.bench_convergence --device cuda --dtype bf16 --hidden 768 --layers 12 --heads 12

Every model is built from the same BERT-shape fields and trained with the same command and settings: the same
tokenizer (an 8,192-word uncased WordPiece vocabulary trained on the training text, `bench/tokenizer/`; a small
vocabulary keeps the masked-LM head from dominating the cost at this size), the same text (`gutenberg-pd`
train.txt, packed into blocks), the same batch order and the same masks for a given seed (`leanbert-pretrain`
draws both from the seed), the same learning rate and schedule; at least two seeds each. Validation: the first
`--eval-blocks` blocks of valid.txt, every `--eval-every` steps.

Each run writes its own output folder under `--runs-dir`; an interrupted run continues from its last checkpoint.
`bench/results/convergence.json` (every validation curve with the settings of its run, and the analysis) and
`convergence.png` (validation loss against steps and against time) are rewritten after every run. Only
bench/results outlives a machine (the runs folder, with checkpoints and weights, is not tracked by git), so a run
that convergence.json records with the settings asked for is never repeated, wherever its folder went: the full run
spans sittings and machines. A run recorded with other settings is refused (another --output-dir keeps both).

Analysis, per seed and then mean ± standard deviation over seeds: the final validation loss; the plateau of a model
that ignores the context (`plateaus`: the unigram cross-entropy, and below it the best loss without context under
BERT's 80/10/10 masking, which BERT must clearly leave); the steps and the training time each model needs to reach
BERT's final validation loss of the same seed (linear interpolation between evaluations). Steps are exact. Time
is steps × the model's training-step time, measured once, before the first run, with every model side by side (the
same batch, round by round, the order alternating; recorded in convergence.json), because the runs themselves happen
at different times, in different sittings, on a machine whose load changes; each run's own measured time is kept as
well.
"""

import argparse
import json
import statistics
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

import leanbert
from leanbert.commands import pretrain as pretrain_command
from leanbert.training.masked_lm import override_config
from leanbert.training.text import packed_blocks, text_source
from bench import papers
from bench.bench_speed import round_robin
from bench.outputs import claim, refuse, run_main
from bench.runs import (DATA, QUICK_RUNS, RUNS, command_line, differences, finished, fmt_spread, located,
                        machine, recorded, run_command, running, save, saved, seeds_text, shown, spread,
                        use_device, wall_seconds)

RESULTS = Path(__file__).resolve().parent / "results"
TOKENIZER = Path(__file__).resolve().parent / "tokenizer"
TEXT = DATA / "text" / "gutenberg-pd"  # train.txt and valid.txt
REFERENCE = "BERT"
SCHEMA = 2  # the results' layout: report.py regenerates nothing from another
BENCHMARK = "convergence"  # the claims it judges: those declared for it (`Claim.benchmark`)
OWN_COMMAND = "python -m bench.bench_convergence"
EARLIER_COMMAND = "python bench/bench_convergence.py"  # how results recorded it before bench/ was a package

# name -> (model type, config fields): BERT and every declared architecture in each of its variants
MODELS = {REFERENCE: ("bert", {}),
          **{a.variant_label(label): (a.model_type, extra) for a in leanbert.ARCHITECTURES
             for label, extra in a.variants.items()}}
# BERT, each architecture's default variant, and every other variant that a declared convergence or downstream
# claim (bench_downstream fine-tunes these models) is about or compared with (the symmetric SymBert), in MODELS' order
CLAIMED = {name for architecture in leanbert.ARCHITECTURES for claim in architecture.claims
           if claim.benchmark in (BENCHMARK, "downstream")
           for name in (papers.model(architecture, claim), claim.against) if name}
DEFAULT_MODELS = [REFERENCE, *(name for name in MODELS if name in CLAIMED or name in {
    architecture.variant_label(papers.default_variant(architecture)) for architecture in leanbert.ARCHITECTURES})]

# 2,000 steps left BERT 0.07 nats below the context-free plateau (5.987 against 6.055, still falling slowly:
# bench/results/probes/convergence-2000-steps.json; with learning rate 3e-3, or 2 layers on blocks of 64, it fell
# no faster): the full run takes 8,000.
FULL = dict(hidden=128, layers=4, heads=4, seq_len=128, batch_size=32, steps=8000, eval_every=250, eval_blocks=512,
            learning_rate=1e-3, seeds=[0, 1])
QUICK = dict(hidden=32, layers=2, heads=2, seq_len=64, batch_size=16, steps=40, eval_every=10, eval_blocks=64,
             learning_rate=2e-3, seeds=[0, 1])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models, few steps: a first look")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), help="default: " + ", ".join(DEFAULT_MODELS))
    for name, kind in (("hidden", int), ("layers", int), ("heads", int), ("seq_len", int), ("batch_size", int),
                       ("steps", int), ("eval_every", int), ("eval_blocks", int), ("learning_rate", float)):
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"default {FULL[name]} ({QUICK[name]} "
                                                                            "with --quick)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1")
    parser.add_argument("--text", type=Path, default=TEXT, help="folder with train.txt and valid.txt (default "
                                                                 "shared/data/text/gutenberg-pd)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: mixed precision")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch CPU threads (default: torch's choice; time comes from step times measured side by "
                             "side, so runs made with other thread counts or in other sittings still compare)")
    parser.add_argument("--report-only", action="store_true",
                        help="pretrain nothing: write the results of the runs finished so far (also while another "
                             "process runs them)")
    parser.add_argument("--runs-dir", type=Path, help="where the runs' folders go (default bench/runs/convergence, "
                                                      "bench/runs-quick/convergence with --quick)")
    parser.add_argument("--output-dir", type=Path, help="default bench/results (bench/results/quick with --quick)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = args.models or DEFAULT_MODELS
    if REFERENCE not in args.models:
        parser.error(f"--models must include {REFERENCE}, the reference of every comparison")
    tag = "quick" if args.quick else ""
    args.runs_dir = args.runs_dir or (QUICK_RUNS if args.quick else RUNS) / "convergence"
    args.output_dir = args.output_dir or RESULTS / tag
    return args


def overrides(args, model_type: str, fields: dict) -> str:
    """`--config-overrides` of a model: the shared BERT shape (the fields its config has: Shatter has one head and
    no `num_attention_heads`), then the variant's own fields."""
    shape = dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                 intermediate_size=4 * args.hidden, max_position_embeddings=args.seq_len)
    known = AutoConfig.for_model(model_type).to_dict()
    return ",".join(f"{key}={value}" for key, value in {**shape, **fields}.items() if key in known)


def run_folder(args, name: str, seed: int) -> Path:
    return args.runs_dir / f"{name.lower().replace(' ', '-').replace('=', '')}-seed{seed}"


def run_settings(args, name: str, seed: int) -> dict:
    """What makes a run what it is: recorded with it, and checked before one is reused."""
    model_type, fields = MODELS[name]
    return {"config_overrides": overrides(args, model_type, fields), "steps": args.steps, "seed": seed,
            "batch_size": args.batch_size, "learning_rate": args.learning_rate, "max_seq_length": args.seq_len,
            "max_eval_samples": args.eval_blocks, "eval_every": args.eval_every,
            "mixed_precision": "bf16" if args.dtype == "bf16" else "no"}


def pretrain(args, name: str, seed: int, folder_needed: bool = False) -> bool:
    """One pretraining run with leanbert-pretrain, unless convergence.json records it (and, when `folder_needed`, its
    finished folder is on this machine): then False. Resumed from its checkpoint when interrupted."""
    if str(seed) in args.recorded.get("runs", {}).get(name, {}) and (
            not folder_needed or finished(run_folder(args, name, seed), "training_report.json",
                                          run_settings(args, name, seed))):
        return False
    model_type, fields = MODELS[name]
    return run_command(pretrain_command.main, [
        "--model-type", model_type, "--config-overrides", overrides(args, model_type, fields), "--tokenizer", TOKENIZER,
        "--train-file", args.text / "train.txt", "--validation-file", args.text / "valid.txt",
        "--max-eval-samples", args.eval_blocks, "--max-seq-length", args.seq_len,
        "--cache-dir", args.runs_dir / "datasets-cache", "--max-train-steps", args.steps,
        "--per-device-batch-size", args.batch_size, "--learning-rate", args.learning_rate,
        "--eval-every", args.eval_every, "--checkpoint-every", max(args.eval_every, args.steps // 10),
        "--seed", seed, "--mixed-precision", "bf16" if args.dtype == "bf16" else "no"],
        run_folder(args, name, seed), "training_report.json", "pretrain", settings=run_settings(args, name, seed))


def token_frequencies(args) -> tuple[np.ndarray, np.ndarray]:
    """Token frequencies of the training blocks (add-one smoothed, so that no word has probability 0) and of the
    validation blocks (the first `eval_blocks`), special tokens left out (they are never masked), read from the
    blocks `leanbert-pretrain` cached."""
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    counts = []
    for name, limit in (("train.txt", None), ("valid.txt", args.eval_blocks)):
        blocks = packed_blocks(text_source(args.text / name, name), tokenizer, args.seq_len, whole_word_mask=False,
                               cache_dir=str(args.runs_dir / "datasets-cache"), what=name)
        ids = np.asarray(blocks.select(range(min(limit or len(blocks), len(blocks))))["input_ids"]).ravel()
        counts.append(np.bincount(ids, minlength=len(tokenizer)).astype(np.float64))
    train, valid = counts[0] + 1, counts[1]
    train[tokenizer.all_special_ids] = valid[tokenizer.all_special_ids] = 0
    return train / train.sum(), valid / valid.sum()


def plateaus(p: np.ndarray, r: np.ndarray) -> dict:
    """What a model that ignores the context scores on the validation masked-LM loss, from the training text's
    token frequencies `p` and the validation text's `r` (nats):
    - "unigram": −Σ r log p, predicting every masked token from the frequencies alone;
    - "context_free": the best a model can do that sees only the masked position's own input token. BERT's masking
      (transformers' collator: of the chosen tokens 80% become [MASK], 10% a token drawn uniformly from the V-word
      vocabulary, 10% stay) leaves the true token visible at a tenth of them, so such a model predicts p after
      [MASK], and after a visible token s the posterior q(x | s) ∝ p(s)·[x = s] + p(x)/V. This is the plateau a
      model must clearly leave to have learnt anything from context."""
    V = len(p)
    log_p = np.log(np.where(p > 0, p, 1.0))  # 0 where p = 0: multiplied by r = 0 there (special tokens)
    cross = -(r * log_p).sum()
    z = p + 1 / V  # Z_s, the posterior's normalizer after a visible token s
    keep = np.where(r > 0, r * (1 + 1 / V) * -(log_p + np.log1p(1 / V) - np.log(z)), 0.0)  # x = s
    other = (cross + r * log_p + (1 - r) * np.log(V * z)) / V  # Σ over x ≠ s, for each s
    return {"unigram": float(cross), "context_free": float(0.8 * cross + 0.1 * keep.sum() + 0.1 * other.sum())}


def text_plateaus(args) -> dict:
    """`plateaus` of the runs' text: as convergence.json records them for the same text folder, block length and
    validation blocks (with --report-only, whatever it records), else computed (which tokenizes the training text)."""
    kept = args.recorded.get("options", {})
    same = ("text" in kept and located(kept["text"]).resolve() == Path(args.text).resolve()
            and all(kept.get(key) == getattr(args, key) for key in ("seq_len", "eval_blocks")))
    if "plateaus" in args.recorded and (same or args.report_only):
        return args.recorded["plateaus"]
    return plateaus(*token_frequencies(args))


def reach(curve: list[dict], target: float, key: str) -> float | None:
    """The `key` (step or time) at which the validation loss first reaches `target`, interpolated linearly between
    the two evaluations around that point (at the first evaluation: that evaluation's, an upper bound); None if it
    never does. A single evaluation at or below the target counts."""
    previous = None
    for point in curve:
        if point["loss"] <= target:
            if previous is None or previous["loss"] == point["loss"]:
                return float(point[key])
            share = (previous["loss"] - target) / (previous["loss"] - point["loss"])
            return previous[key] + share * (point[key] - previous[key])
        previous = point
    return None


def step_times(args, rounds: int = 10, warmup: int = 2) -> dict:
    """Seconds per training step (forward, masked-LM loss, backward, AdamW) of every model at the runs' shape and
    batch, measured side by side in paired rounds (bench_speed's round robin): per model the median step time and
    the median and quartiles of BERT's time / its time round by round. Measured once, before the first run, and
    recorded in convergence.json with the settings it was measured at (other settings or models measure it again).
    --report-only measures nothing, since measuring beside running work would fix skewed times for good: it keeps
    what convergence.json records, whatever machine it reports on."""
    if args.report_only or args.recorded.get("step_time_settings") == step_time_settings(args):
        return args.recorded.get("step_times") or {}
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 8192, (args.batch_size, args.seq_len), generator=generator)
    chosen = torch.rand(ids.shape, generator=generator) < 0.15
    batch = {"input_ids": ids.to(device), "labels": ids.masked_fill(~chosen, -100).to(device)}
    steps = {}
    for name in planned(args)[0]:
        model_type, fields = MODELS[name]
        config = override_config(AutoConfig.for_model(model_type, vocab_size=8192), overrides(args, model_type, fields))
        torch.manual_seed(0)
        model = AutoModelForMaskedLM.from_config(config).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(batch, model=model, optimizer=optimizer):
            with torch.autocast(device.type, torch.bfloat16, enabled=args.dtype == "bf16"):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        steps[name] = step
    times, _ = round_robin(steps, [batch] * (warmup + rounds), device, "step times")
    times = {name: values[warmup:] for name, values in times.items()}
    measured = {}
    for name, values in times.items():
        ratios = [bert / own for bert, own in zip(times[REFERENCE], values)]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        measured[name] = {"seconds": statistics.median(values), "ratio": statistics.median(ratios), "q1": q1,
                          "q3": q3, "rounds": rounds}
    return measured


def step_time_settings(args) -> dict:
    return {"models": planned(args)[0], "shape": overrides(args, "bert", {}), "batch_size": args.batch_size,
            "device": args.device, "dtype": args.dtype, "threads": args.threads}


def recorded_runs(args) -> dict:
    """The convergence.json an earlier sitting left in --output-dir ({} if none; one in another layout is refused),
    after checking that every run it records was made with the settings asked for now: one made otherwise is refused,
    never mixed in nor dropped."""
    results = recorded(args.output_dir, "convergence", SCHEMA)
    for name, seeds in results.get("runs", {}).items():
        for seed, run in seeds.items():
            differ = differences(run["settings"], run_settings(args, name, int(seed))) if name in MODELS else name
            if differ:
                refuse(f"{args.output_dir / 'convergence.json'} records {name} seed {seed} made with other settings "
                       f"({differ}): give another --output-dir, or move that file away to run it again")
    return results


def collect(args, step_seconds: dict) -> dict:
    """Every finished run's validation curve and report (those convergence.json records, and those finished in the
    runs folder), and the analysis against BERT; each evaluation's "time" is its step × the model's measured step
    time (`step_times`; None while that is not measured)."""
    runs = {name: dict(seeds) for name, seeds in args.recorded.get("runs", {}).items()}
    for name in args.models:
        for seed in args.seeds:
            folder = run_folder(args, name, seed)
            if not finished(folder, "training_report.json", run_settings(args, name, seed)):
                continue
            report = json.loads((folder / "training_report.json").read_text())
            curve = json.loads((folder / "pretraining_curve.json").read_text())["eval"]
            runs.setdefault(name, {})[str(seed)] = {  # str: as the JSON file has it
                "folder": shown(folder), "settings": run_settings(args, name, seed),
                "parameters": report["parameters"], "seconds": report["seconds"], "steps": report["steps"],
                "wall_seconds": wall_seconds(folder), "seconds_per_step": report["seconds"] / report["steps"],
                "final_loss": curve[-1]["loss"],
                "curve": [{"step": point["step"], "loss": point["loss"], "seconds": point["seconds"]}
                          for point in curve]}
    for name, seeds in runs.items():
        for run in seeds.values():
            run["curve"] = [{**point, "time": point["step"] * step_seconds[name]["seconds"] if name in step_seconds
                             else None} for point in run["curve"]]
    analysis = {}
    for name, seeds in runs.items():
        rows = {"final_loss": [], "steps_to_bert": [], "seconds_to_bert": [], "step_ratio": [], "time_ratio": [],
                "seconds_per_step": []}
        for seed, run in seeds.items():
            bert = runs.get(REFERENCE, {}).get(seed)
            rows["final_loss"].append(run["final_loss"])
            rows["seconds_per_step"].append(run["seconds_per_step"])
            if bert is None:
                continue
            target = bert["final_loss"]
            steps, bert_steps = reach(run["curve"], target, "step"), reach(bert["curve"], target, "step")
            rows["steps_to_bert"].append(steps)
            rows["step_ratio"].append(None if steps is None else steps / bert_steps)
            if name in step_seconds and REFERENCE in step_seconds:  # times only from step times measured
                seconds, bert_seconds = reach(run["curve"], target, "time"), reach(bert["curve"], target, "time")
                rows["seconds_to_bert"].append(seconds)
                rows["time_ratio"].append(None if seconds is None else seconds / bert_seconds)
        analysis[name] = {key: spread(values) for key, values in rows.items()}
        analysis[name]["parameters"] = next(iter(seeds.values()))["parameters"]
    return {"runs": runs, "analysis": analysis}


def plot(results: dict, path: Path) -> None:
    """Validation loss against steps and against training time, every model and seed, the context-free plateau
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = dict(zip(results["models"], plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for name, seeds in results["runs"].items():
        for index, (seed, run) in enumerate(sorted(seeds.items())):
            for axis, key in zip(axes, ("step", "time") if run["curve"][0]["time"] is not None else ("step",)):
                axis.plot([p[key] for p in run["curve"]], [p["loss"] for p in run["curve"]], color=colors[name],
                          alpha=0.85, linestyle="-" if index == 0 else "--", label=f"{name} seed {seed}")
    for axis, label in zip(axes, ("step", "training time (s): steps × measured step time")):
        axis.axhline(results["plateaus"]["context_free"], color="gray", linestyle=":", label="context-free plateau")
        axis.set(xlabel=label, ylabel="validation masked-LM loss")
    axes[0].legend(fontsize=7, ncol=2)
    figure.suptitle(f"masked-LM pretraining, {results['shape']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def side_by_side(entry: dict | None) -> str:
    if entry is None:
        return "–"
    return f"{entry['seconds']:.3f} (×{entry['ratio']:.2f}, {entry['q1']:.2f}–{entry['q3']:.2f})"


def command_text(command: str) -> str:
    """The command behind the table; when bench_downstream made these runs (it pretrains the models it fine-tunes
    through this script), also the script that makes them alone."""
    if command.startswith((OWN_COMMAND, EARLIER_COMMAND)):
        return f"`{command}`"
    return f"`{command}`, which pretrains these models through `{OWN_COMMAND}` (the same runs on their own)"


def markdown_section(results: dict) -> str:
    """The convergence table for BENCHMARKS.md."""
    analysis, plateau = results["analysis"], results["plateaus"]["context_free"]
    lines = [f"{results['shape']}; {results['settings']}. Seeds {results['seeds']}; mean ± standard deviation "
             f"over the seeds. Without context a model scores {results['plateaus']['unigram']:.3f} from the token "
             f"frequencies alone, {plateau:.3f} at best when it also copies the visible tokens (the plateau).",
             "", f"Command: {command_text(results['command'])}", "",
             "| model | parameters | final validation loss | steps to BERT's final loss | × BERT's steps "
             "| time to BERT's final loss (s) | × BERT's time | s/step, side by side (× BERT, q1–q3) "
             "| s/step in the run |", "|---|---|---|---|---|---|---|---|---|"]
    for name in results["models"]:
        row = analysis.get(name)
        if row is None:
            lines.append(f"| {name} | pending | | | | | | | |")
            continue
        lines.append(f"| {name} | {row['parameters']:,} | {fmt_spread(row['final_loss'])} "
                     f"| {fmt_spread(row['steps_to_bert'], 0)} | {fmt_spread(row['step_ratio'], 2)} "
                     f"| {fmt_spread(row['seconds_to_bert'], 0)} | {fmt_spread(row['time_ratio'], 2)} "
                     f"| {side_by_side(results.get('step_times', {}).get(name))} "
                     f"| {fmt_spread(row['seconds_per_step'], 3)} |")
    bert = analysis.get(REFERENCE)
    if bert is not None:
        margin = plateau - bert["final_loss"]["mean"]
        crossings = []
        for kind, level in (("unigram", results["plateaus"]["unigram"]), ("context-free", plateau)):
            steps = [reach(run["curve"], level, "step") for run in results["runs"][REFERENCE].values()]
            crossings.append(f"the {kind} one at step {fmt_spread(spread(steps), 0)}")
        lines += ["", f"BERT's validation loss left the plateaus at these steps (interpolated between evaluations): "
                      f"{' and '.join(crossings)}. It ends {abs(margin):.2f} nats {'below' if margin > 0 else 'above'}"
                      f" the context-free plateau"
                      + (f": at least {PLATEAU_MARGIN} nats in every seed, so it has clearly learnt from context."
                         if left_plateau(results) else
                         f": not {PLATEAU_MARGIN} nats past it in every seed, so no verdict is drawn (train longer).")]
    lines += ["", "![validation loss](convergence.png)"]
    return "\n".join(lines) + "\n"


# nats below the context-free plateau that every BERT seed must end, for any verdict: a perplexity e^-0.25 = 78% of
# the best that any model blind to the context reaches. Set before the full runs ended (the 2,000-step probe ended
# 0.07 below; the first full run was 0.15 below at step 3,250 and still falling).
PLATEAU_MARGIN = 0.25


def left_plateau(results: dict) -> bool:
    """Whether BERT has clearly learnt from context: every seed ends PLATEAU_MARGIN below the plateau."""
    bert = results.get("analysis", {}).get(REFERENCE)
    return bool(bert) and bert["final_loss"]["max"] < results["plateaus"]["context_free"] - PLATEAU_MARGIN


def full_seconds(results: dict) -> float | None:
    """The wall time of every run the results plan (models × seeds), from the mean of the runs finished so far."""
    times = [run["wall_seconds"] for seeds in results["runs"].values() for run in seeds.values() if run["wall_seconds"]]
    return statistics.fmean(times) * len(results["models"]) * len(results["seeds"]) if times else None


def claims(results: dict) -> list[dict]:
    """The convergence claims the architectures declare (`bench.papers`) against these runs, each about its variant
    (by default the architecture's default). Inconclusive unless at least two seeds of the model and of BERT have
    finished and BERT has clearly left the context-free plateau (`left_plateau`): before that, reaching BERT's loss
    only measures how fast a model learns token frequencies. Then a claim "×c of BERT's steps (or time)"
    (`step_ratio`, `time_ratio`, bound c) is reproduced when every seed's ratio is below c, partly when every seed is
    below 1 (faster than BERT, not by the claimed factor), and not reproduced otherwise (a seed slower than BERT, or
    never reaching BERT's final loss); a claim that the model trains worse than BERT (`final_loss_above`) is
    reproduced when its final validation loss is above BERT's in every seed. Both models follow the same linear decay
    to zero over the same steps, so a model as good as BERT reaches BERT's final loss only at the end: the step
    claims are read as "reaches BERT's quality sooner within one budget"."""
    return [{"paper": papers.paper(architecture), "claim": stated.text,
             **METRICS[stated.metric](results, papers.model(architecture, stated), architecture, stated)}
            for architecture, stated in papers.declared(BENCHMARK, METRICS)]


def ratio_verdict(results: dict, name: str, architecture, stated) -> dict:
    """A "×c of BERT's steps (or time) to BERT's final loss" claim (see `claims`): its measurement and verdict."""
    key, bound = stated.metric, papers.bound(architecture, stated)
    row = results.get("analysis", {}).get(name, {}).get(key)
    if row is None or row["n"] == 0:
        return {"verdict": "pending",
                "measured": "pending: not run yet" if row is None else "pending: step times not measured yet"}
    what = "steps" if key == "step_ratio" else "time (steps × step time measured side by side)"
    reached = row["n"] - row["missing"]
    measured = (f"{fmt_spread({**row, 'missing': 0}, 2)} × BERT's {what} to BERT's final validation loss "
                f"({reached} of {row['n']} seeds reach it)" if reached else
                f"does not reach BERT's final validation loss ({seeds_text(row['n'])})")
    worst = row["max"] if not row["missing"] else None
    if row["n"] < 2 or not left_plateau(results):
        verdict = "inconclusive"
    elif worst is not None and worst < bound:
        verdict = "reproduced"
    elif worst is not None and worst < 1:
        verdict = "partly"
    else:
        verdict = "not reproduced"
    return {"measured": measured, "verdict": verdict}


def worse_verdict(results: dict, name: str, architecture, stated) -> dict:
    """A "trains worse than BERT" claim (see `claims`): its measurement and verdict."""
    if stated.bound is not None:
        raise ValueError(f"{architecture.name}'s claim {stated.text!r}: {stated.metric} takes no bound")
    model, bert = results.get("analysis", {}).get(name), results.get("analysis", {}).get(REFERENCE)
    if not (model and bert):
        return {"measured": "pending: not run yet", "verdict": "pending"}
    worse = model["final_loss"]["min"] > bert["final_loss"]["max"]
    conclusive = model["final_loss"]["n"] >= 2 and left_plateau(results)
    return {"measured": f"final validation loss {fmt_spread(model['final_loss'])} vs BERT's "
                        f"{fmt_spread(bert['final_loss'])}",
            "verdict": ("reproduced" if worse else "not reproduced") if conclusive else "inconclusive"}


# what a convergence claim can name -> its judge: (results, the model's name, architecture, claim) -> measured, verdict
METRICS = {"step_ratio": ratio_verdict, "time_ratio": ratio_verdict, "final_loss_above": worse_verdict}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.report_only:
        claim(args.output_dir, saved("convergence"))
        args.recorded = recorded_runs(args)
        use_device(args.device)
    else:
        with session(args):
            prepare(args)
            for seed in args.seeds:  # seed by seed: after one sitting, whole seeds are comparable
                for name in args.models:
                    if pretrain(args, name, seed):
                        report(args)
    results = report(args)
    print(markdown_section(results))
    return results


@contextmanager
def session(args):
    """Around pretraining: convergence.json claimed (`outputs`) and read (`recorded_runs`), the runs folder held
    against a second benchmark, the device and thread count set."""
    claim(args.output_dir, saved("convergence"))
    claim(args.runs_dir, ["wall_seconds.json"])
    args.recorded = recorded_runs(args)
    with running(args.runs_dir):
        use_device(args.device)
        torch.set_num_threads(args.threads)
        yield


def prepare(args) -> None:
    """The plateaus and the step times (measured now if convergence.json lacks them: before any run, on the idle
    machine), recorded at once."""
    if "step_seconds" not in vars(args):
        args.baselines, args.step_seconds = text_plateaus(args), step_times(args)
        report(args)


def pretrained(args, name: str, seed: int) -> Path:
    """The finished run folder of `name` with `seed`, for bench_downstream to fine-tune (inside `session`): pretrained
    first where this machine lacks it (a new machine has only what convergence.json records), then recorded."""
    prepare(args)
    if pretrain(args, name, seed, folder_needed=True):
        report(args)
    return run_folder(args, name, seed)


def options(args) -> dict:
    """The options the runs were made with, recorded so that bench_downstream pretrains a missing model the same way
    (`from_options`)."""
    models, seeds = planned(args)
    return {"models": models, "seeds": seeds, "text": shown(args.text), "runs_dir": shown(args.runs_dir),
            "dtype": args.dtype, **{key: getattr(args, key) for key in FULL if key != "seeds"}}


def planned(args) -> tuple[list[str], list[int]]:
    """The models and seeds of these runs: those asked for now and those convergence.json already records (a
    sitting that runs a few of them does not narrow what the results cover)."""
    kept = args.recorded.get("options", {})
    recorded_models = [*kept.get("models", []), *args.recorded.get("runs", {})]
    models = list(dict.fromkeys([*args.models, *(name for name in recorded_models if name in MODELS)]))
    seeds = {*args.seeds, *kept.get("seeds", []), *(int(seed) for seeds in args.recorded.get("runs", {}).values()
                                                     for seed in seeds)}
    return models, sorted(seeds)


def from_options(recorded_options: dict, output_dir: Path, device: str) -> argparse.Namespace:
    args = parse_args(["--output-dir", str(output_dir), "--device", device])
    for key, value in recorded_options.items():
        setattr(args, key, located(value) if key in ("text", "runs_dir") else value)
    return args


def report(args) -> dict:
    """convergence.json and convergence.png from every run finished so far."""
    if "step_seconds" not in vars(args):  # --report-only: what is recorded, nothing measured
        args.baselines, args.step_seconds = text_plateaus(args), step_times(args)
    runs = collect(args, args.step_seconds)
    models, seeds = planned(args)
    return save({"schema": SCHEMA, "command": command_line(), "machine": machine(), "models": models, "seeds": seeds,
                 "seq_len": args.seq_len, "options": options(args),
                 "shape": f"d={args.hidden}, {args.layers} layers, {args.heads} heads, ffn {4 * args.hidden}, "
                          f"vocab 8192, blocks of {args.seq_len} tokens",
                 "settings": f"batch {args.batch_size}, {args.steps} steps, AdamW lr {args.learning_rate} (6% "
                             f"warm-up, linear decay), validation on {args.eval_blocks} blocks every "
                             f"{args.eval_every} steps, {args.device} {args.dtype}, {args.threads} CPU thread(s)",
                 "plateaus": args.baselines, "step_times": args.step_seconds,
                 "step_time_settings": (args.recorded.get("step_time_settings") if args.report_only else
                                        step_time_settings(args)) if args.step_seconds else None,
                 "seconds": sum(run.get("wall_seconds") or 0 for seeds in runs["runs"].values()
                                for run in seeds.values()), **runs},
                args.output_dir, "convergence", plot)


if __name__ == "__main__":
    run_main(main)
