"""leanbert's benchmarks: each measures the three architectures against transformers' `BertModel` and writes JSON,
markdown and plots to `bench/results/`; `bench/report.py` turns the JSON into BENCHMARKS.md.

A package, so that its modules import each other (`from bench.outputs import claim`) and the tests import them by
name (`from bench import flops`). Run a benchmark as a module from the repository root:

    python -m bench.bench_parameters
    python -m bench.bench_speed --quick
    python -m bench.report

`make bench` runs every benchmark, then the report; `make bench-quick` gives a first look in under 10 minutes.
The papers' claims that the benchmarks judge are declared with each architecture (`leanbert.Architecture.claims`,
read through `bench.papers`).
"""
