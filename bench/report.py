"""BENCHMARKS.md, generated from the JSON results of the benchmarks (never edited by hand).

    python -m bench.report                                   # bench/results/*.json -> BENCHMARKS.md
    python -m bench.report --results bench/results/quick --output bench/results/quick/BENCHMARKS.md

Each benchmark module gives its own `markdown_section(results)` and `claims(results)`, which judges the papers'
claims declared for it (`leanbert.Architecture.claims`, through `bench.papers`); this script puts them together:
one line per claim with its verdict at our scale, then a section per measurement. A benchmark that has not run yet
is listed as pending, with the command that produces it. A declared claim for a benchmark that none of these is
stops the report (`papers.check_benchmarks`).
"""

import argparse
import json
import os
import re
from pathlib import Path

from bench import bench_convergence, bench_converted, bench_downstream, bench_parameters, bench_speed, papers
from bench.outputs import GENERATED, claim_report
from bench.runs import REPO
from leanbert.common.output import write_text_atomically

RESULTS = Path(__file__).resolve().parent / "results"
ARCHIVE = Path(__file__).resolve().parent / "archive"  # earlier one-off benchmarks and their results

# (title, module, results file, command that produces it, what it answers)
SECTIONS = [
    ("Parameters", bench_parameters, "parameters.json", "python -m bench.bench_parameters",
     "total and attention-block parameters at BERT-base and all-MiniLM-L6-v2 sizes, against the papers' figures"),
    ("Speed and memory", bench_speed, "speed.json", "python -m bench.bench_speed",
     "training-step and inference throughput and memory at BERT-base size, full and padded batches"),
    ("Speed and memory on a GPU", bench_speed, "gpu/speed.json", "bash bench/gpu.sh",
     "the same on a GPU in bf16"),
    ("Convergence", bench_convergence, "convergence.json", "python -m bench.bench_convergence",
     "masked-LM pretraining from scratch: validation loss against steps and time"),
    ("Downstream", bench_downstream, "downstream.json", "python -m bench.bench_downstream",
     "GLUE fine-tuning of the pretrained models, and of all-MiniLM-L6-v2 against its converted versions"),
    ("Converting a checkpoint", bench_converted, "converted.json", "python -m bench.bench_converted",
     "what converting all-MiniLM-L6-v2 costs, and what the converted models keep as sentence encoders against "
     "how long they are healed"),
]

# benchmarks of single features, each with its own generated table: (its file, in the results folder unless an
# absolute path, what it measured); listed where the file exists
OTHERS = [(ARCHIVE / "results" / "conversion.md", "converting all-MiniLM-L6-v2: STS-B Spearman and cosine to the "
                                                  "source (`bench/archive/bench_conversion.py`, archived)"),
          (ARCHIVE / "results" / "healing.md", "healing the converted models by distillation "
                                               "(`bench/archive/bench_healing.py`, archived)"),
          ("shatter_pretrain.md", "the small pretraining runs that chose Shatter's defaults "
                                  "(`python -m bench.bench_shatter_pretrain`)"),
          ("deploy.md", "inference of SymBert and SharedBert in their native form against their exact BERT export "
                        "(`python -m bench.bench_deploy`)")]

SCALE = """\
## What our scale cannot test

The papers pretrain BERT-base (110M parameters) on billions of tokens and report GLUE on fully trained models.
Here the convergence runs pretrain models of a few million parameters for a few million tokens on 2 CPU cores, and
fine-tune them on GLUE tasks they are far too small to solve well. So the GLUE claims (SymBert 79.36 vs 78.74,
SharedBert +0.38) are tested only in direction and within the seeds' spread, at a scale where differences under a
point cannot be resolved; the absolute GLUE numbers are not comparable with the papers'. Shatter's speed and
memory claims were measured on TPUs; here they are tested on a CPU (and on a GPU when `bench/gpu.sh` has been
run). Speed ratios on a shared CPU are noisy: each is given with the interquartile range of its round-by-round
ratios, and a verdict holds only when that range supports it.
"""


def load(results_dir: Path, name: str) -> dict | None:
    path = results_dir / name
    return json.loads(path.read_text()) if path.is_file() else None


def claims_table(entries: list[dict]) -> str:
    lines = ["| paper | claim | measured here | verdict |", "|---|---|---|---|"]
    lines += [f"| {e['paper']} | {e['claim']} | {e['measured']} | **{e['verdict']}** |" for e in entries]
    return "\n".join(lines) + "\n"


def machine_lines(loaded: dict) -> list[str]:
    """The machine and versions each result was measured with (they may differ between sittings)."""
    lines = []
    for title, results in loaded.items():
        info = results.get("machine", {})
        if not info and "date" in results:
            lines.append(f"- {title}: {results['date']} (independent of the machine)")
        elif info:
            lines.append(f"- {title}: {info.get('date', '?')}; torch {info.get('torch')}, transformers "
                         f"{info.get('transformers')}, leanbert {info.get('leanbert')}; {info.get('platform')}, "
                         f"{info.get('cpu_count')} CPUs" + (f", {info['gpu']}" if info.get("gpu") else ""))
    return lines


def section(module, results: dict, results_file: Path, report_folder: Path) -> str:
    """A benchmark's markdown section, its images linked from where the report lies."""
    folder = os.path.relpath(results_file.parent, report_folder)
    return re.sub(r"\]\(([\w.-]+\.png)\)", lambda m: f"]({Path(folder, m[1]).as_posix()})",
                  module.markdown_section(results))


# the benchmarks that make up the full run on the CPU, each estimating its whole wall time (`full_seconds`)
FULL_RUN = ["Speed and memory", "Convergence", "Downstream", "Converting a checkpoint"]


def full_run(loaded: dict) -> str:
    """How long the full run takes on this machine, from the wall time of the runs finished so far."""
    modules = {title: module for title, module, *_ in SECTIONS}
    estimates = {title: modules[title].full_seconds(loaded[title]) if title in loaded else None for title in FULL_RUN}
    known = ", ".join(f"{title.lower()} {seconds / 3600:.1f} h" for title, seconds in estimates.items()
                      if seconds is not None)
    if None in estimates.values():
        waiting = ", ".join(title.lower() for title, seconds in estimates.items() if seconds is None)
        return (f"How long the full run takes on 2 CPU cores is estimated once every long benchmark has finished a "
                f"run; waiting for: {waiting}" + (f" (estimated so far: {known})." if known else "."))
    return (f"The full run takes about {sum(estimates.values()) / 3600:.0f} hours on 2 CPU cores ({known}; from the "
            "wall time of the runs finished so far, scaled to all the runs planned).")


def current(module, results: dict) -> bool:
    """Whether results have the layout this version of the benchmark writes (its SCHEMA)."""
    return results.get("schema") == module.SCHEMA


def build(results_dir: Path, report_folder: Path) -> str:
    papers.check_benchmarks(dict.fromkeys(module.BENCHMARK for _, module, *_ in SECTIONS))
    found = {title: (module, results) for title, module, file, _, _ in SECTIONS
             if (results := load(results_dir, file))}
    stale = {title for title, (module, results) in found.items() if not current(module, results)}
    loaded = {title: results for title, (_, results) in found.items() if title not in stale}
    entries = []
    for title, module, file, command, what in SECTIONS:  # a benchmark not run yet: one pending line for its claims
        entries += module.claims(loaded[title]) if title in loaded else [
            {"paper": f"all ({title.lower()})", "claim": f"the claims on {what}", "verdict": "pending",
             "measured": f"not measured yet: `{command}`"}]
    hours = sum(results.get("seconds") or 0 for results in loaded.values()) / 3600  # each records its wall time
    shown = results_dir.relative_to(REPO) if results_dir.is_relative_to(REPO) else results_dir
    parts = [GENERATED, "# leanbert benchmarks: the papers' claims, measured\n",
             f"Generated by `python -m bench.report` from `{shown}/*.json` (`make bench` "
             "runs every benchmark, then this; `make bench-quick` gives a first look in under 10 minutes). Do not "
             "edit by hand.\n",
             f"The benchmarks took {hours:.1f} hours of wall time so far (pretraining, fine-tuning and the speed runs, "
             "summed over every run and sitting, on the machines listed below); they are resumable, so `make bench` "
             f"can be stopped and run again to continue, in other sittings and on other machines. {full_run(loaded)}\n",
             "## Machines and versions\n", "\n".join(machine_lines(loaded) or ["- nothing measured yet"]) + "\n",
             "## The claims\n",
             claims_table(entries) if entries else "No claim measured yet.\n",
             "Verdicts are computed from the numbers by the rule each benchmark states (`claims()` in its "
             "script); *pending*: the run has not happened yet; *inconclusive*: measured, but too little to decide "
             "by that rule (one seed, BERT not clearly past the plateau, a reference at chance level).\n", SCALE]
    for title, module, file, command, what in SECTIONS:
        parts.append(f"## {title}\n\n{what[0].upper() + what[1:]}.\n")
        if title in loaded:
            parts.append(section(module, loaded[title], results_dir / file, report_folder))
        elif title in stale:
            parts.append(f"Pending: `{file}` was written by an older version of the benchmark; run `{command}` "
                         "again.\n")
        else:
            parts.append(f"Pending: `{command}` has not written `{file}` yet.\n")
    others = [f"- [{Path(name).name}]({Path(os.path.relpath(results_dir / name, report_folder)).as_posix()}): {what}"
              for name, what in OTHERS if (results_dir / name).is_file()]
    if others:
        parts.append("## Other measurements\n\n" + "\n".join(others) + "\n")
    return "\n".join(parts)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results (bench/results)")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    claim_report(args.output)
    text = build(args.results.resolve(), args.output.resolve().parent)
    write_text_atomically(args.output, text)
    print(f"wrote {args.output}")
    return text


if __name__ == "__main__":
    main()
