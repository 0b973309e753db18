"""The long benchmarks at toy size, end to end: bench_convergence.py (pretraining with leanbert-pretrain, resumable
run by run), bench_downstream.py (fine-tuning its models with leanbert-finetune) and report.py (BENCHMARKS.md from
their JSON). Their numbers are checked against the runs' own outputs and against independent computations; the
real runs take hours and are not part of the tests."""

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import leanbert
from bench import (bench_convergence, bench_converted, bench_downstream, bench_parameters, bench_speed, outputs,
                   report)
from bench.runs import fmt_spread, signed, spread
from leanbert.architectures import Claim

REPO = Path(__file__).resolve().parents[1]

TEXT = REPO.parent / "shared" / "data" / "text" / "gutenberg-pd"
GLUE = REPO.parent / "shared" / "data" / "glue"
MODELS = ["BERT", "SymBert pairwise"]
TOY = ["--hidden", "16", "--layers", "1", "--heads", "2", "--seq-len", "32", "--batch-size", "4", "--steps", "6",
       "--eval-every", "2", "--eval-blocks", "8", "--learning-rate", "3e-3", "--device", "cpu"]


@pytest.fixture(scope="module")
def convergence(tmp_path_factory):
    """A toy convergence run of two models and two seeds on slices of the real text."""
    root = tmp_path_factory.mktemp("bench")
    text = root / "text"
    text.mkdir()
    for name, count in (("train.txt", 400), ("valid.txt", 150)):
        lines = (TEXT / name).read_text(encoding="utf-8").splitlines()[:count]
        (text / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = [*TOY, "--models", *MODELS, "--seeds", "0", "1", "--text", str(text), "--runs-dir", str(root / "runs"),
            "--output-dir", str(root / "results")]
    environment, threads = dict(os.environ), torch.get_num_threads()
    yield root, args, bench_convergence.main(args)
    os.environ.clear()  # the benchmark sets its device and thread count for its process: not for the other tests
    os.environ.update(environment)
    torch.set_num_threads(threads)


def plateaus_by_hand(root: Path) -> tuple[float, float]:
    """The plateaus from the text itself: lines tokenised as the packing does ([CLS] a [SEP] per line), blocks of 32
    tokens, the remainder dropped; the validation side limited to the first 8 blocks. The context-free optimum by
    brute force over every visible token s: the joint of (true x, shown s) and the posterior q(x | s) written out
    whole from the 80/10/10 masking."""
    tokenizer = AutoTokenizer.from_pretrained(bench_convergence.TOKENIZER)
    counts = []
    for name, blocks in (("train.txt", None), ("valid.txt", 8)):
        lines = [line for line in (root / "text" / name).read_text(encoding="utf-8").splitlines() if line.strip()]
        ids = [token for line in lines for token in tokenizer(line)["input_ids"]]
        ids = ids[: len(ids) // 32 * 32][: None if blocks is None else blocks * 32]
        counts.append(np.bincount(ids, minlength=len(tokenizer)).astype(float))
    train, valid = counts
    keep = np.ones(len(train), bool)
    keep[tokenizer.all_special_ids] = False
    train = np.where(keep, train + 1, 0)  # add-one smoothing of the training counts
    p, r = train / train.sum(), np.where(keep, valid, 0) / valid[keep].sum()
    vocabulary = len(p)
    unigram = -(r[r > 0] * np.log(p[r > 0])).sum()
    context_free = 0.8 * unigram  # after [MASK]: the frequencies
    for s in range(vocabulary):  # a visible token s: kept (x = s) or drawn at random (any x)
        joint = 0.1 * r / vocabulary
        joint[s] += 0.1 * r[s]
        posterior = p / vocabulary
        posterior[s] += p[s]
        posterior /= posterior.sum()
        present = joint > 0
        context_free -= (joint[present] * np.log(posterior[present])).sum()
    return float(unigram), float(context_free)


def first_reach(curve: list[dict], target: float) -> float | None:
    """The step at which the loss first reaches `target`, interpolated from the evaluation before (None: never)."""
    steps, losses = [p["step"] for p in curve], [p["loss"] for p in curve]
    below = [i for i, loss in enumerate(losses) if loss <= target]
    if not below:
        return None
    i = below[0]
    if i == 0 or losses[i] == losses[i - 1]:
        return float(steps[i])
    return float(np.interp(target, [losses[i], losses[i - 1]], [steps[i], steps[i - 1]]))


def minus(text: str) -> str:
    return text.replace("-", "−")


def expected_claims_table(convergence: dict, glue: dict, chance: dict) -> list[str]:
    """BENCHMARKS.md's claims table after the toy runs (BERT and SymBert pairwise pretrained with the fixture's seeds,
    fine-tuned with seed 0 on RTE and STS-B), written from the papers' claims and the rules BENCHMARKS.md states,
    with the numbers recomputed from the runs: the validation curves (checked against the runs' own files above) and
    the fine-tunings' GLUE scores (`glue`, from their results.json)."""
    def row(paper: str, claim: str, measured: str, verdict: str) -> str:
        return f"| {paper} | {claim} | {measured} | **{verdict}** |"

    sym, shared, shatter = "SymBert (arXiv 2406.06366)", "SharedBert (arXiv 2412.00359)", "Shatter (arXiv 2108.13032)"
    lines = [row("all (parameters)", "the claims on total and attention-block parameters at BERT-base and "
                 "all-MiniLM-L6-v2 sizes, against the papers' figures", "not measured yet: "
                 "`python -m bench.bench_parameters`", "pending"),
             row("all (speed and memory)", "the claims on training-step and inference throughput and memory at "
                 "BERT-base size, full and padded batches", "not measured yet: `python -m bench.bench_speed`",
                 "pending"),
             row("all (speed and memory on a gpu)", "the claims on the same on a GPU in bf16",
                 "not measured yet: `bash bench/gpu.sh`", "pending")]
    # convergence: SymBert's step ratio to BERT's final loss, seed by seed (every seed run so far); nothing else has run
    runs = convergence["runs"]
    seeds = sorted(runs["BERT"])
    assert sorted(runs["SymBert pairwise"]) == seeds
    ratios = []
    for seed in seeds:
        target = runs["BERT"][seed]["final_loss"]
        steps, bert_steps = first_reach(runs["SymBert pairwise"][seed]["curve"], target), first_reach(
            runs["BERT"][seed]["curve"], target)
        ratios.append(None if steps is None else steps / bert_steps)
    reached = [ratio for ratio in ratios if ratio is not None]
    if reached:
        measured = (f"{np.mean(reached):.2f}" + (f" ± {np.std(reached, ddof=1):.2f}" if len(reached) > 1 else "")
                    + f" × BERT's steps to BERT's final validation loss ({len(reached)} of {len(seeds)} seeds "
                    "reach it)")
    else:
        measured = f"does not reach BERT's final validation loss ({len(seeds)} seeds)"
    # a verdict only once BERT ends 0.25 nats below the context-free plateau in every seed
    if max(runs["BERT"][seed]["final_loss"] for seed in seeds) >= convergence["plateaus"]["context_free"] - 0.25:
        verdict = "inconclusive"
    elif len(reached) == len(seeds) and max(reached) < 0.6:  # "about half": every seed below 0.6 of BERT's steps
        verdict = "reproduced"
    else:
        verdict = "partly" if len(reached) == len(seeds) and max(reached) < 1 else "not reproduced"
    lines += [row(sym, "about half the pretraining steps of BERT to converge", measured, verdict),
              row(shared, "pretraining time down by about a tenth (time to BERT's final loss)",
                  "pending: not run yet", "pending"),
              row(shatter, "fewer pretraining steps to converge than BERT", "pending: not run yet", "pending"),
              row(sym, "symmetric attention without the pairwise matrix trains worse than BERT",
                  "pending: not run yet", "pending")]
    # downstream: SymBert against BERT over the two tasks, one seed (so no verdict); BERT learnt a task when its score
    # beats always answering the majority label by 0.02
    model, bert = (np.mean([glue[name][task] for task in ("rte", "stsb")]) for name in ("SymBert pairwise", "BERT"))
    learnt = sum(glue["BERT"][task] > chance[task] + 0.02 for task in ("rte", "stsb"))
    difference = minus(f"{round((model - bert) * 100, 1) + 0.0:+.1f}")
    lines.append(row(sym, "GLUE equal or better than BERT (79.36 vs 78.74)",
                     f"mean GLUE score of 2 tasks {model * 100:.1f} vs {bert * 100:.1f}: {difference} points paired "
                     f"over 1 seed; BERT learnt {learnt} of 2 tasks", "inconclusive"))
    lines += [row(paper, claim, "pending: not run yet", "pending") for paper, claim in (
        (shared, "GLUE +0.38% over BERT"), (shared, "GLUE +5.81% over symmetric attention"),
        (shared, "GLUE +1.06% over pairwise attention"), (shatter, "BERT-base quality on GLUE"))]
    # the converted group has not run: each converted model's target (its declaration's) is pending
    lines += [row("leanbert conversion", f"{name} (converted, healed) fine-tunes within {drop} GLUE points of "
                  f"all-MiniLM-L6-v2 (no task more than {task} below, no run at chance)",
                  "pending: not every task has run", "pending")
              for name, drop, task in (("SymBert", "0.2", "1.0"), ("SharedBert", "1.0", "2.5"))]
    lines.append(row("all (converting a checkpoint)", "the claims on what converting all-MiniLM-L6-v2 costs, and what "
                     "the converted models keep as sentence encoders against how long they are healed",
                     "not measured yet: `python -m bench.bench_converted`", "pending"))
    return lines


def test_convergence_reports_each_runs_curve_and_the_analysis_follows_from_it(convergence):
    root, _, results = convergence
    assert results["models"] == MODELS and set(results["runs"]) == set(MODELS)
    assert json.loads((root / "results" / "convergence.json").read_text()) == json.loads(json.dumps(results))
    assert (root / "results" / "convergence.png").read_bytes().startswith(b"\x89PNG")
    for name, seeds in results["runs"].items():
        assert set(seeds) == {"0", "1"}
        for seed, run in seeds.items():
            curve = json.loads((Path(run["folder"]) / "pretraining_curve.json").read_text())["eval"]
            assert [p["step"] for p in run["curve"]] == [2, 4, 6] == [p["step"] for p in curve]
            assert [p["loss"] for p in run["curve"]] == [p["loss"] for p in curve]
            assert run["final_loss"] == curve[-1]["loss"]
    # the two seeds of one model see other batches and masks (leanbert-pretrain draws both from the seed)
    assert results["runs"]["BERT"]["0"]["curve"][0]["loss"] != results["runs"]["BERT"]["1"]["curve"][0]["loss"]
    for seed in ("0", "1"):
        bert, sym = results["runs"]["BERT"][seed], results["runs"]["SymBert pairwise"][seed]
        target = bert["final_loss"]
        steps = [p["step"] for p in sym["curve"]]
        losses = [p["loss"] for p in sym["curve"]]
        below = [i for i, loss in enumerate(losses) if loss <= target]
        expected = None
        if below:  # interpolated between the evaluation before the first one below the target and that one
            i = below[0]
            expected = float(steps[0]) if i == 0 else float(np.interp(target, [losses[i], losses[i - 1]],
                                                                        [steps[i], steps[i - 1]]))
        assert bench_convergence.reach(sym["curve"], target, "step") == pytest.approx(expected)
    unigram, context_free = plateaus_by_hand(root)
    assert results["plateaus"]["unigram"] == pytest.approx(unigram, rel=1e-9)
    assert results["plateaus"]["context_free"] == pytest.approx(context_free, rel=1e-9)
    assert context_free < unigram  # a tenth of the masked tokens stays visible
    # time = steps × the step time measured side by side; BERT against itself is exactly 1 every round
    times = results["step_times"]
    assert set(times) == set(MODELS) and times["BERT"]["ratio"] == times["BERT"]["q1"] == 1.0
    assert results["step_time_settings"]["models"] == MODELS
    for name, seeds in results["runs"].items():
        for run in seeds.values():
            assert [p["time"] for p in run["curve"]] == pytest.approx([p["step"] * times[name]["seconds"]
                                                                       for p in run["curve"]])
    analysis = results["analysis"]["SymBert pairwise"]["final_loss"]
    finals = [results["runs"]["SymBert pairwise"][s]["final_loss"] for s in ("0", "1")]
    assert analysis["mean"] == pytest.approx(np.mean(finals)) and analysis["std"] == pytest.approx(np.std(finals,
                                                                                                         ddof=1))


def test_convergence_never_repeats_a_recorded_run_even_on_a_new_machine(convergence, capsys):
    root, args, first = convergence
    ledger = root / "runs" / "wall_seconds.json"
    before = json.loads(ledger.read_text())
    assert set(before) == {bench_convergence.run_folder(bench_convergence.parse_args(args), name, seed).name
                           for name in MODELS for seed in (0, 1)}
    assert [run["wall_seconds"] for seeds in first["runs"].values() for run in seeds.values()] == [
        before[Path(run["folder"]).name] for seeds in first["runs"].values() for run in seeds.values()]
    assert first["seconds"] == pytest.approx(sum(before.values()))
    assert bench_convergence.full_seconds(first) == pytest.approx(sum(before.values()))  # every planned run is done
    stamps = {p: p.stat().st_mtime_ns for p in (root / "runs").glob("*/model.safetensors")}
    assert len(stamps) == len(MODELS) * 2
    again = bench_convergence.main(args)
    assert json.loads(ledger.read_text()) == before  # nothing ran
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["runs"] == first["runs"]
    # a new machine has bench/results but not the runs folder: convergence.json's records stand, nothing runs again
    moved = root / "runs-elsewhere"
    (root / "runs").rename(moved)
    try:
        fresh = bench_convergence.main(args)
        assert not list((root / "runs").glob("*-seed*"))
        assert fresh["runs"] == first["runs"] and fresh["analysis"] == first["analysis"]
        assert fresh["step_times"] == first["step_times"]  # measured once, recorded
        # reporting elsewhere (another thread count) measures nothing and drops nothing
        reported = bench_convergence.main([*args, "--report-only", "--threads", str(torch.get_num_threads() + 1)])
        assert reported["step_times"] == first["step_times"] and reported["runs"] == first["runs"]
    finally:
        shutil.rmtree(root / "runs")
        moved.rename(root / "runs")
    # a seed not recorded yet runs alone, and joins the recorded ones
    more = bench_convergence.main([*args[: args.index("--seeds")], "--seeds", "2", *args[args.index("--seeds") + 3:]])
    after = json.loads(ledger.read_text())
    assert set(after) - set(before) == {f"{name.lower().replace(' ', '-')}-seed2" for name in MODELS}
    assert {k: after[k] for k in before} == before
    assert {name: set(seeds) for name, seeds in more["runs"].items()} == {name: {"0", "1", "2"} for name in MODELS}
    assert more["seeds"] == [0, 1, 2] and more["runs"]["BERT"]["0"] == first["runs"]["BERT"]["0"]
    # finished runs made with other settings are refused, not mixed in
    with pytest.raises(SystemExit) as stop:
        bench_convergence.main([*args, "--steps", "8"])
    assert stop.value.code == 2 and "made with other settings (steps: 6 there, 8 now" in capsys.readouterr().err


def test_downstream_fine_tunes_every_pretrained_run_and_report_gathers_the_claims(convergence, tmp_path, capsys):
    root, _, _ = convergence
    results_dir = root / "results"
    args = ["--quick", "--groups", "pretrained", "--tasks", "rte", "stsb", "--seeds", "0", "--device", "cpu",
            "--runs-dir", str(tmp_path / "runs"), "--output-dir", str(results_dir)]
    results = bench_downstream.main(args)
    assert set(results["scores"]["pretrained"]) == set(MODELS)
    glue = {}  # model -> task -> GLUE score, from the fine-tuning runs' own results.json
    for name in MODELS:
        for task in ("rte", "stsb"):
            run = results["scores"]["pretrained"][name][task]["0"]
            folder = tmp_path / "runs" / "pretrained" / f"{bench_downstream.slug(name)}-{task}-seed0"
            saved = json.loads((folder / "results.json").read_text())
            metrics = saved["metrics"]  # GLUE's score: STS-B the mean of its two correlations, RTE accuracy
            expected = (metrics["pearson"] + metrics["spearmanr"]) / 2 if task == "stsb" else metrics["accuracy"]
            glue.setdefault(name, {})[task] = expected
            assert run["score"] == pytest.approx(expected)
            assert saved["settings"]["model"] == str(root / "runs" / bench_convergence.run_folder(
                bench_convergence.parse_args(["--runs-dir", str(root / "runs")]), name, 0).name)
            assert saved["train_examples"] == 64 and saved["validation_examples"] == 64
        mean = results["summary"]["pretrained"][name]["mean"]["mean"]
        assert mean == pytest.approx((results["scores"]["pretrained"][name]["rte"]["0"]["score"]
                                      + results["scores"]["pretrained"][name]["stsb"]["0"]["score"]) / 2)
    # chance on RTE: the majority training label's share of the 64 dev pairs used, counted from the files here
    train_labels = [line.split("\t")[-1] for line in (GLUE / "RTE" / "train.tsv").read_text().splitlines()[1:]]
    majority = max(set(train_labels), key=train_labels.count)
    dev_labels = [line.split("\t")[-1] for line in (GLUE / "RTE" / "dev.tsv").read_text().splitlines()[1:65]]
    assert results["chance"] == {"rte": pytest.approx(dev_labels.count(majority) / 64), "stsb": 0.0}
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "runs" / "pretrained" / "bert-rte-seed0")
    assert model.config.model_type == "bert" and model.config.num_labels == 2
    assert results["seconds"] == pytest.approx(sum(json.loads(
        (tmp_path / "runs" / "pretrained" / "wall_seconds.json").read_text()).values()))
    # the full run's time is open while the converted group has no finished model; every planned one done: the sum
    assert results["models"] == {"pretrained": MODELS, "converted": list(bench_downstream.CONVERTED)}
    assert bench_downstream.full_seconds(results) is None
    assert bench_downstream.full_seconds({**results, "models": {"pretrained": MODELS}}) == pytest.approx(
        results["seconds"])
    # each score records what made its model: the pretraining run's settings as convergence.json records them
    pretraining = json.loads((results_dir / "convergence.json").read_text())["runs"]
    for name in MODELS:
        assert results["scores"]["pretrained"][name]["rte"]["0"]["settings"]["pretraining"] == \
            pretraining[name]["0"]["settings"]
    # on a new machine (no runs folder) downstream.json's records stand: nothing is fine-tuned again
    again = bench_downstream.main([*args[:-4], "--runs-dir", str(tmp_path / "new"), "--output-dir", str(results_dir)])
    assert not (tmp_path / "new" / "pretrained").exists() and again["scores"] == results["scores"]
    reported = bench_downstream.main([*args[:-4], "--report-only", "--runs-dir", str(tmp_path / "other"),
                                      "--output-dir", str(results_dir)])
    assert reported["scores"] == results["scores"] and not (tmp_path / "other").exists()
    # scores recorded with other settings are refused, not mixed in nor dropped
    before = (results_dir / "downstream.json").read_bytes()
    with pytest.raises(SystemExit) as stop:
        bench_downstream.main([*args, "--dtype", "bf16"])
    assert stop.value.code == 2 and (results_dir / "downstream.json").read_bytes() == before
    assert "made with other settings (mixed_precision: 'no' there, 'bf16' now)" in capsys.readouterr().err
    text = report.build(results_dir, tmp_path)
    # the claims table, row by row, as written here from the papers and from the runs' own outputs: every claim of
    # the three papers, pending where its model has not run, judged where it has
    chance = {"rte": dev_labels.count(majority) / 64, "stsb": 0.0}
    table = text[text.index("## The claims\n"):text.index("\nVerdicts are computed")].splitlines()
    assert table[2:4] == ["| paper | claim | measured here | verdict |", "|---|---|---|---|"]
    assert [line for line in table[4:] if line] == expected_claims_table(
        json.loads((results_dir / "convergence.json").read_text()), glue, chance)
    assert "Pending: `python -m bench.bench_speed` has not written `speed.json` yet." in text
    hours = bench_convergence.full_seconds(json.loads((results_dir / "convergence.json").read_text())) / 3600
    assert ("waiting for: speed and memory, downstream, converting a checkpoint (estimated so far: convergence "
            f"{hours:.1f} h)") in text
    # images linked from where the report lies
    assert f"![validation loss]({os.path.relpath(results_dir, tmp_path)}/convergence.png)" in text


def test_downstream_pretrains_again_a_recorded_model_whose_weights_a_new_machine_lacks(tmp_path):
    """Only bench/results outlives a machine: a model that convergence.json records but that no fine-tuning has used
    yet is pretrained again (the same seed, the same run) and fine-tuned in that sitting."""
    text = tmp_path / "text"
    text.mkdir()
    for name, count in (("train.txt", 200), ("valid.txt", 100)):
        lines = (TEXT / name).read_text(encoding="utf-8").splitlines()[:count]
        (text / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    results_dir, runs = tmp_path / "results", tmp_path / "runs"
    first = bench_convergence.main([*TOY, "--models", "BERT", "--seeds", "0", "--text", str(text), "--runs-dir",
                                    str(runs), "--output-dir", str(results_dir)])
    shutil.rmtree(runs)  # a new machine
    results = bench_downstream.main(["--quick", "--groups", "pretrained", "--tasks", "rte", "--device", "cpu",
                                     "--runs-dir", str(tmp_path / "finetuning"), "--output-dir", str(results_dir)])
    curve = json.loads((runs / "bert-seed0" / "pretraining_curve.json").read_text())["eval"]
    assert [p["loss"] for p in curve] == [p["loss"] for p in first["runs"]["BERT"]["0"]["curve"]]
    assert list(results["scores"]["pretrained"]) == ["BERT"]
    assert (tmp_path / "finetuning" / "pretrained" / "bert-rte-seed0" / "results.json").is_file()
    recorded = json.loads((results_dir / "convergence.json").read_text())
    assert [p["loss"] for p in recorded["runs"]["BERT"]["0"]["curve"]] == [p["loss"] for p in curve]


@pytest.mark.parametrize("name, module", [("convergence", bench_convergence), ("downstream", bench_downstream)])
def test_results_in_another_layout_are_refused_not_rewritten(name, module, tmp_path, capsys):
    outputs.write_json(tmp_path, f"{name}.json", {"schema": module.SCHEMA - 1, "runs": {"BERT": {}}})
    before = (tmp_path / f"{name}.json").read_bytes()
    with pytest.raises(SystemExit) as stop:
        module.main(["--quick", "--output-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")])
    assert stop.value.code == 2 and "another version of the benchmark" in capsys.readouterr().err
    assert (tmp_path / f"{name}.json").read_bytes() == before and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("ratios, bert_losses, verdict", [
    ([0.45, 0.55], [5.0, 5.1], "reproduced"), ([0.5, 0.8], [5.0, 5.1], "partly"),
    ([0.7, 1.1], [5.0, 5.1], "not reproduced"), ([0.5, None], [5.0, 5.1], "not reproduced"),
    ([None, None], [5.0, 5.1], "not reproduced"),
    ([0.45], [5.0], "inconclusive"),  # one seed
    ([0.45, 0.55], [5.0, 5.8], "inconclusive"),  # a BERT seed has not clearly left the plateau (6.0 - 0.25)
    ([0.45, 0.55], [5.0, 5.7], "reproduced"),
])
def test_convergence_verdicts_follow_the_step_ratios(ratios, bert_losses, verdict):
    results = {"models": ["BERT", "SymBert pairwise"], "plateaus": {"unigram": 6.5, "context_free": 6.0},
               "analysis": {"BERT": {"final_loss": spread(bert_losses)},
                            "SymBert pairwise": {"step_ratio": spread(ratios)}}}
    claim = next(c for c in bench_convergence.claims(results) if c["claim"].startswith("about half"))
    assert claim["verdict"] == verdict
    reached = sum(r is not None for r in ratios)
    assert (f"{reached} of {len(ratios)} seeds" if reached else "does not reach") in claim["measured"]


@pytest.mark.parametrize("value, text", [(-0.84, "−0.8"), (0.84, "+0.8"), (-0.04, "+0.0"), (0.0, "+0.0")])
def test_signed_differences_use_the_minus_sign_of_the_tables_and_never_a_negative_zero(value, text):
    assert signed(value) == text


@pytest.mark.parametrize("scores, text", [([-0.021, -0.019], "−2.0 ± 0.1"), ([0.031, 0.029], "3.0 ± 0.1"),
                                          ([-0.0004, 0.0], "0.0 ± 0.0")])
def test_table_cells_print_negative_means_with_the_tables_minus_sign(scores, text):
    assert fmt_spread(spread(scores), 1, 100) == text


def test_reach_interpolates_between_evaluations():
    curve = [{"step": 100, "loss": 7.0}, {"step": 200, "loss": 6.0}, {"step": 300, "loss": 5.5}]
    assert bench_convergence.reach(curve, 6.5, "step") == 150.0  # halfway from 7.0 to 6.0
    assert bench_convergence.reach(curve, 5.75, "step") == 250.0
    assert bench_convergence.reach(curve, 7.5, "step") == 100.0  # already at the first evaluation
    assert bench_convergence.reach(curve, 5.0, "step") is None


def downstream_results(model_scores: list[list[float]], bert_scores: list[list[float]], chance: float = 0.5) -> dict:
    """Downstream results of two tasks: per model, scores[seed][task]."""
    def runs(scores):
        return {task: {str(seed): {"score": by_task[i]} for seed, by_task in enumerate(scores)}
                for i, task in enumerate(("rte", "sst2"))}
    return {"tasks": ["rte", "sst2"], "chance": {"rte": chance, "sst2": chance},
            "scores": {"pretrained": {"BERT": runs(bert_scores), "SymBert pairwise": runs(model_scores)}}}


@pytest.mark.parametrize("model, bert, verdict", [
    ([[0.62, 0.80], [0.60, 0.78]], [[0.60, 0.80], [0.61, 0.79]], "reproduced"),  # paired differences +0.01, -0.01
    ([[0.55, 0.70], [0.56, 0.71]], [[0.60, 0.80], [0.61, 0.79]], "not reproduced"),  # -0.075 and -0.065
    ([[0.62, 0.80]], [[0.60, 0.80]], "inconclusive"),  # one seed
    ([[0.60, 0.52], [0.60, 0.52]], [[0.50, 0.51], [0.51, 0.50]], "inconclusive"),  # BERT at chance: nothing learnt
])
def test_downstream_verdicts_pair_seeds_and_need_a_reference_above_chance(model, bert, verdict):
    claim = next(c for c in bench_downstream.claims(downstream_results(model, bert))
                 if c["paper"].startswith("SymBert"))
    assert claim["verdict"] == verdict
    assert {1: "paired over 1 seed", 2: "paired over 2 seeds"}[len(model)] in claim["measured"]


@pytest.mark.parametrize("shared, verdict", [
    ([[0.66, 0.84], [0.67, 0.83]], "reproduced"),  # +0.05 over the symmetric model in both seeds
    ([[0.61, 0.81], [0.62, 0.78]], "not reproduced"),  # +0.01 and 0.0: not measurably better
])
def test_sharedbert_must_be_measurably_better_than_symmetric_attention(shared, verdict):
    results = downstream_results([[0.61, 0.79], [0.62, 0.78]], [[0.60, 0.80], [0.61, 0.79]])
    pretrained = results["scores"]["pretrained"]
    pretrained["SymBert symmetric"] = pretrained["SymBert pairwise"]
    pretrained["SharedBert"] = downstream_results(shared, shared)["scores"]["pretrained"]["BERT"]
    claim = next(c for c in bench_downstream.claims(results) if c["claim"] == "GLUE +5.81% over symmetric attention")
    assert claim["verdict"] == verdict and "paired over 2 seeds" in claim["measured"]


def test_downstream_table_lists_every_planned_model_and_marks_missing_runs_pending():
    """A planned model whose scores are not recorded yet (or were dropped to run it again) keeps its row."""
    scores = {"rte": spread([0.55, 0.56]), "mean": spread([0.55, 0.56])}
    results = {"tasks": ["rte"], "chance": {"rte": 0.5}, "command": "python bench/bench_downstream.py",
               "models": {"converted": ["all-MiniLM-L6-v2", "SharedBert (converted, healed)"]},
               "settings": {"converted": "--learning-rate 5e-5", "tasks": {"rte": ""}, "heal_steps": 400},
               "summary": {"converted": {"all-MiniLM-L6-v2": scores}}}
    rows = [line for line in bench_downstream.markdown_section(results).splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| all-MiniLM-L6-v2 | 55.5 ± 0.7 | 55.5 ± 0.7 |",
                        "| SharedBert (converted, healed) | pending | pending |"]


def test_report_marks_results_of_another_layout_as_stale_and_missing_ones_as_pending(tmp_path):
    (tmp_path / "speed.json").write_text(json.dumps({"rows": []}))  # written by a version without a schema
    text = report.build(tmp_path, tmp_path)
    assert "Pending: `speed.json` was written by an older version of the benchmark; run " \
           "`python -m bench.bench_speed` again." in text
    assert "Pending: `python -m bench.bench_convergence` has not written `convergence.json` yet." in text
    assert text.count("**pending**") == len(report.SECTIONS)  # one pending claim line per benchmark not measured


def test_an_interrupted_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(convergence, tmp_path,
                                                                                         monkeypatch):
    from leanbert.training.loop import TrainingLoop

    root, args, first = convergence
    args = [*args[: args.index("--models")], "--models", "BERT", "--seeds", "0", "--text", str(root / "text"),
            "--runs-dir", str(tmp_path / "runs"), "--output-dir", str(tmp_path / "results")]
    evaluate = TrainingLoop.run_evaluation

    def interrupted(loop):  # Ctrl-C at the evaluation of step 4, after the checkpoint of step 2
        if loop.step == 4:
            raise KeyboardInterrupt
        return evaluate(loop)

    monkeypatch.setattr(TrainingLoop, "run_evaluation", interrupted)
    with pytest.raises(SystemExit) as stop:  # stopped as Ctrl-C stops a command: code 130, no traceback
        bench_convergence.main(args)
    assert stop.value.code == 130
    checkpoints = tmp_path / "runs" / "bert-seed0.pretrain-checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_2"]
    monkeypatch.setattr(TrainingLoop, "run_evaluation", evaluate)
    resumed = bench_convergence.main(args)
    assert [p["loss"] for p in resumed["runs"]["BERT"]["0"]["curve"]] == pytest.approx(
        [p["loss"] for p in first["runs"]["BERT"]["0"]["curve"]], rel=1e-5)
    ledger = json.loads((tmp_path / "runs" / "wall_seconds.json").read_text())
    assert list(ledger) == ["bert-seed0"]  # one run, its two sittings summed


def test_convergence_states_where_bert_left_each_plateau():
    curves = {"0": [(100, 7.0), (200, 6.0), (300, 5.5)], "1": [(100, 6.9), (200, 6.3), (300, 5.8)]}
    runs = {seed: {"curve": [{"step": step, "loss": loss} for step, loss in curve], "final_loss": curve[-1][1]}
            for seed, curve in curves.items()}
    results = {"models": ["BERT"], "seeds": [0, 1], "shape": "toy", "settings": "toy", "command": "toy",
               "plateaus": {"unigram": 6.5, "context_free": 6.2}, "runs": {"BERT": runs}, "step_times": {},
               "analysis": {"BERT": {"final_loss": spread([5.5, 5.8]), "parameters": 1, **{
                   key: spread([]) for key in ("steps_to_bert", "step_ratio", "seconds_to_bert", "time_ratio",
                                               "seconds_per_step")}}}}
    text = bench_convergence.markdown_section(results)
    # unigram 6.5: seed 0 at 100 + 100 * 0.5 / 1.0 = 150, seed 1 at 100 + 100 * 0.4 / 0.6; context-free 6.2 likewise
    unigram = spread([150.0, 100 + 100 * 0.4 / 0.6])
    context_free = spread([100 + 100 * 0.8 / 1.0, 200 + 100 * 0.1 / 0.5])
    assert (f"the unigram one at step {fmt_spread(unigram, 0)} and the context-free one at step "
            f"{fmt_spread(context_free, 0)}") in text
    # 5.8 is 0.4 below 6.2, 5.5 is 0.7 below: both past the margin
    assert "ends 0.55 nats below the context-free plateau: at least 0.25 nats in every seed" in text


def test_convergence_names_its_own_script_when_downstream_made_the_runs():
    made_here = bench_convergence.command_text("python -m bench.bench_convergence --seeds 0")
    assert made_here == "`python -m bench.bench_convergence --seeds 0`"
    # results recorded before bench/ was a package name the script by its path
    assert bench_convergence.command_text("python bench/bench_convergence.py") == "`python bench/bench_convergence.py`"
    for downstream in ("python -m bench.bench_downstream", "python bench/bench_downstream.py"):
        made_by_downstream = bench_convergence.command_text(downstream)
        assert made_by_downstream == (f"`{downstream}`, which pretrains these models through "
                                      "`python -m bench.bench_convergence` (the same runs on their own)")


# results as minimal as a benchmark's `claims` reads before it judges the declared claims
EMPTY_RESULTS = {"sizes": {}, "rows": [], "machine": {"device": "cpu", "dtype": "fp32"}, "shape": "toy"}


def declaring(monkeypatch, name: str, *claims) -> None:
    """Replace the claims that the architecture `name` declares, for this test."""
    replaced = tuple(dataclasses.replace(architecture, claims=claims) if architecture.name == name else architecture
                     for architecture in leanbert.ARCHITECTURES)
    monkeypatch.setattr(leanbert, "ARCHITECTURES", replaced)


@pytest.mark.parametrize("module", [bench_parameters, bench_speed, bench_convergence, bench_downstream])
@pytest.mark.parametrize("claim, error", [
    (dict(metric="no_such_metric"), "cannot judge the metric 'no_such_metric'"),
    (dict(metric=None, variant="no such variant"), "declares no variant 'no such variant'"),
])
def test_a_declared_claim_that_a_benchmark_cannot_judge_stops_it(module, claim, error, monkeypatch):
    """Never left out: a claim naming a metric the benchmark does not judge, or a variant its architecture does not
    declare, raises where the benchmark judges its claims (and so stops the report too)."""
    fields = {**claim, "metric": claim["metric"] or next(iter(module.METRICS))}
    declaring(monkeypatch, "SymBert", Claim(module.BENCHMARK, "a claim", **fields))
    with pytest.raises(ValueError, match=error):
        module.claims(EMPTY_RESULTS)


def test_claims_against_another_model_are_judged_only_where_the_benchmark_compares_models(monkeypatch):
    declaring(monkeypatch, "SharedBert", Claim("speed", "faster than SymBert", metric="train_ratio", bound=1.0,
                                               against="SymBert pairwise"))
    with pytest.raises(ValueError, match="compares with BERT only"):
        bench_speed.claims(EMPTY_RESULTS)
    declaring(monkeypatch, "SharedBert", Claim("downstream", "better than a model nobody declared",
                                               metric="glue_above", against="SymBert diagonal"))
    with pytest.raises(ValueError, match="no architecture declares the model 'SymBert diagonal'"):
        bench_downstream.claims({})
    declaring(monkeypatch, "SharedBert", Claim("convergence", "fewer steps, by how much unsaid", metric="step_ratio"))
    with pytest.raises(ValueError, match="needs a bound"):
        bench_convergence.claims({"analysis": {"SharedBert": {"step_ratio": spread([0.5, 0.5])}}})


def test_report_refuses_a_claim_that_no_benchmark_judges(monkeypatch, tmp_path):
    declaring(monkeypatch, "Shatter", Claim("latency", "lower latency than BERT on a TPU", metric="ms"))
    with pytest.raises(ValueError, match="names the benchmark 'latency', which no benchmark is"):
        report.build(tmp_path, tmp_path)


def test_a_newly_declared_claim_is_judged_with_no_edit_to_the_benchmark(monkeypatch, tmp_path):
    """A claim added to a declaration gets its row, judged by the benchmark's rule: here "a quarter fewer
    attention-block parameters" for Shatter, which its P=2 variant meets (three d×d matrices for BERT's four) and its
    P=3 variant does not (four)."""
    results = bench_parameters.main(["--output-dir", str(tmp_path)])
    shatter = next(architecture for architecture in leanbert.ARCHITECTURES if architecture.name == "Shatter")
    declaring(monkeypatch, "Shatter", *shatter.claims, Claim("parameters", "a quarter fewer attention-block "
                                                             "parameters", metric="attention_block", bound=-25.0))
    entry = bench_parameters.claims(results)[-1]
    rows = {row["variant"]: row for row in results["sizes"]["BERT-base"]["models"] if row["architecture"] == "Shatter"}
    d = 768  # BERT-base: per layer BERT has 4 (d² + d) + 2d in the attention block, Shatter P=2 3 (d² + d) + 2d
    fewer = 100 * ((3 * (d * d + d) + 2 * d) / (4 * (d * d + d) + 2 * d) - 1)
    assert rows["P=2"]["change_pct"]["attention_block"] == pytest.approx(fewer, abs=1e-4)
    assert rows["P=3"]["change_pct"]["attention_block"] == 0.0  # four d×d matrices, as BERT's
    assert entry == {"paper": "Shatter (arXiv 2108.13032)", "claim": "a quarter fewer attention-block parameters",
                     "verdict": "partly", "measured": minus(f"{fewer:+.2f}% (P=2), +0.00% (P=3); total ")
                     + minus(f"{rows['P=2']['change_pct']['total']:+.2f}%, {rows['P=3']['change_pct']['total']:+.2f}%")}


def test_downstream_keeps_the_scores_recorded_before_conversions_were_named_by_model_type(tmp_path, monkeypatch):
    """downstream.json of the full run records its conversions by the `leanbert-convert --to` names of the time
    ("sym", "shared") and with the healing steps only, not the whole recipe: read now, the pretrained models' and the
    source's scores stand, and the converted models' scores, made by an earlier recipe, move whole to "superseded"
    (kept, named by model type, never mixed in): nothing is lost and nothing runs."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # what the benchmark sets for its process, restored afterwards
    for name in ("convergence.json", "downstream.json"):  # the full run's results, as a benchmark wrote them
        outputs.write_json(tmp_path, name, json.loads((REPO / "bench" / "results" / name).read_text()))
    recorded = json.loads((tmp_path / "downstream.json").read_text())
    converted = recorded["scores"]["converted"]
    assert {runs["rte"]["0"]["settings"]["conversion"]["to"] for runs in converted.values() if
            runs["rte"]["0"]["settings"]["conversion"]} == {"sym", "shared"}
    results = bench_downstream.main(["--report-only", "--device", "cpu", "--output-dir", str(tmp_path),
                                     "--runs-dir", str(tmp_path / "runs")])
    assert results["scores"]["pretrained"] == recorded["scores"]["pretrained"]
    assert results["summary"]["pretrained"] == recorded["summary"]["pretrained"]
    assert list(results["scores"]["converted"]) == ["all-MiniLM-L6-v2"]
    assert results["scores"]["converted"]["all-MiniLM-L6-v2"] == converted["all-MiniLM-L6-v2"]
    moved = {(entry["model"], entry["task"], entry["seed"]): entry["run"] for entry in results["superseded"]}
    assert {key: run["score"] for key, run in moved.items()} == {
        (name, task, int(seed)): run["score"] for name, by_task in converted.items() if name != "all-MiniLM-L6-v2"
        for task, runs in by_task.items() for seed, run in runs.items()}
    assert {run["settings"]["conversion"]["to"] for run in moved.values()} == {"sym_bert", "shared_bert"}
    verdicts = {c["claim"]: c["verdict"] for c in bench_downstream.claims(results)
                if c["paper"] == "leanbert conversion"}
    assert len(verdicts) == 2 and set(verdicts.values()) == {"pending"}
    again = bench_downstream.main(["--report-only", "--device", "cpu", "--output-dir", str(tmp_path),
                                   "--runs-dir", str(tmp_path / "runs")])
    assert again["superseded"] == results["superseded"]  # read back: kept once, not moved again nor lost
    assert not (tmp_path / "runs").exists()


def converted_scores(model: list[list[float]], source: list[list[float]]) -> dict:
    """Converted-group scores of two tasks, scores[seed][task], for the SymBert conversion and its source."""
    def runs(scores):
        return {task: {str(seed): {"score": by_task[i]} for seed, by_task in enumerate(scores)}
                for i, task in enumerate(("rte", "cola"))}
    return {"all-MiniLM-L6-v2": runs(source), "SymBert (converted, healed)": runs(model)}


SOURCE_SCORES = [[0.60, 0.30], [0.62, 0.28], [0.61, 0.29]]


@pytest.mark.parametrize("model, verdict, measured", [
    ([[0.60, 0.30], [0.62, 0.277], [0.61, 0.29]], "reproduced", "paired over 3 seeds"),  # mean −0.05, cola −0.1
    ([[0.60, 0.29], [0.61, 0.27], [0.60, 0.28]], "not reproduced", ": −0.8 points"),  # every task within 1.0
    ([[0.622, 0.285], [0.642, 0.265], [0.632, 0.275]], "not reproduced", "worst task cola −1.5"),  # mean +0.35
    ([[0.61, 0.30], [0.62, 0.01], [0.62, 0.29]], "not reproduced", "at chance: cola seed 1"),
    ([[0.60, 0.30], [0.62, 0.28]], "inconclusive", "paired over 2 seeds"),  # fewer seeds than the target needs
])
def test_a_converted_model_is_held_to_its_architectures_target(model, verdict, measured):
    """SymBert's declared target: at most 0.2 points below its source on the mean, 1.0 on any task, no run at
    chance, over three seeds; each condition alone fails it."""
    target = leanbert.architectures.BY_MODEL_TYPE["sym_bert"].conversion.target
    assert (target.glue_mean_drop, target.glue_task_drop) == (0.2, 1.0)
    scores = converted_scores(model, SOURCE_SCORES[: len(model)])
    entry = bench_downstream.converted_claim(scores, ["rte", "cola"], {"rte": 0.5, "cola": 0.0},
                                             "SymBert (converted, healed)", "all-MiniLM-L6-v2", target)
    assert entry["verdict"] == verdict and measured in entry["measured"], entry


def converted_results(kept: dict[int, float], convert_seconds: float, budgets=(100, 400, 1600)) -> dict:
    """bench_converted results for SymBert: the source's Spearman 80, healed at each budget to `kept[steps]`, each
    healing taking a minute per 100 steps."""
    args = bench_converted.parse_args([])
    healed = {str(steps): {"spearman": 80 * kept[steps], "kept": kept[steps], "seconds": 0.6 * steps,
                           "heldout_cosine": 0.99, "resumed_from_step": None} for steps in budgets}
    return {"schema": bench_converted.SCHEMA, "command": "python -m bench.bench_converted",
            "settings": bench_converted.settings(args), "targets": ["sym_bert"], "source": {"spearman": 80.0},
            "cost": {"sym_bert": {source: {"wall_seconds": convert_seconds, "seconds": convert_seconds - 8,
                                           "peak_mib": 2000, "heldout_cosine": 0.995}
                                  for source in (bench_converted.SOURCE, bench_converted.BERT_BASE)}},
            "quality": {"sym_bert": {"converted": {"spearman": 79.0, "kept": 79 / 80}, "healed": healed}},
            "seconds": 3600.0}


@pytest.mark.parametrize("kept, seconds, verdicts", [
    ({100: 0.99, 400: 0.9985, 1600: 0.999}, 80.0, ["reproduced", "reproduced", "reproduced"]),
    ({100: 0.99, 400: 0.997, 1600: 0.999}, 95.0, ["not reproduced", "reproduced", "not reproduced"]),
])
def test_converting_is_judged_on_its_time_and_on_what_the_default_healing_keeps(kept, seconds, verdicts):
    """The default healing (400 steps, 4 minutes here) is the one judged; a longer one keeping more does not count."""
    results = converted_results(kept, seconds)
    assert [entry["verdict"] for entry in bench_converted.claims(results)] == verdicts
    assert f"{kept[400]:.2%}" in bench_converted.claims(results)[2]["measured"]
    text = bench_converted.markdown_section(results)
    assert f"| SymBert | 400 | 4.0 | {80 * kept[400]:.2f} | {kept[400] * 100:.2f}% | 0.9900 |" in text
    assert f"| SymBert | {bench_converted.BERT_BASE} | {seconds:.0f} | {seconds - 8:.0f} | 2000 | 0.9950 |" in text
    assert bench_converted.full_seconds(results) == 3600.0  # every planned measurement made


def test_converting_results_of_another_recipe_are_kept_apart_and_measured_anew(tmp_path):
    """converted.json made by another healing recipe moves whole to "superseded"; with nothing measured the claims
    are pending and the full run's time unknown."""
    earlier = converted_results({100: 0.99, 400: 0.998, 1600: 0.999}, 80.0)
    earlier["settings"]["recipe"]["healing"]["learning_rate"] = 1e-3  # made otherwise
    outputs.write_json(tmp_path, "converted.json", earlier)
    results = bench_converted.main(["--report-only", "--output-dir", str(tmp_path)])
    assert results["superseded"][0]["quality"] == earlier["quality"] and "quality" not in results
    assert {entry["verdict"] for entry in bench_converted.claims(results)} == {"pending"}
    assert bench_converted.full_seconds(results) is None
    assert json.loads((tmp_path / "converted.json").read_text())["superseded"] == results["superseded"]
    assert (tmp_path / "converted.png").is_file()


def test_the_recipe_a_score_records_is_what_the_commands_run():
    """Benchmarks record the library's defaults (`Conversion`, `Healing`) as the recipe of a converted model, and make
    the model with the commands: their defaults must be the same, or a score would stand for another recipe."""
    from leanbert.commands import convert as convert_command
    from leanbert.commands import heal as heal_command
    from bench.runs import conversion_recipe

    recipe = conversion_recipe(quick=False, heal_steps=400)
    healing = heal_command.parse_args(["--teacher", "t", "--student", "s", "--text", "x", "--output", "o"])
    for key, value in {**heal_command.healing_kwargs(healing), "checkpoint_every": healing.checkpoint_every,
                       "seed": healing.seed}.items():
        assert recipe["healing"][key] == value, key
    conversion = vars(convert_command.parse_args(["--source", "s", "--to", "sym_bert", "--output", "o"]))
    for key, value in recipe["conversion"].items():
        assert conversion[key] == value, key
