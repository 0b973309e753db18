# Two commands for a fresh machine: `make demo` (convert the real MiniLM checkpoint to SymBert) and `make test`.
# torch==2.13.0 is installed first: it is the CPU build these machines serve locally, and it satisfies the
# package's own `torch>=2.4`, so pip installs no other (CUDA) torch afterwards.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install compat demo test bench bench-quick clean

install: $(STAMP)

# Environments with transformers 4.x and without leanbert, in which tests/test_transformers4.py loads what leanbert
# saved (each 2 to 3 minutes to build; rebuilt only when its requirements file changes).
COMPAT_VERSIONS := 4.57 4.48
COMPAT_STAMPS := $(foreach version,$(COMPAT_VERSIONS),.venv-transformers-$(version)/.installed)

compat: $(COMPAT_STAMPS)

.venv-transformers-%/.installed: tests/transformers4/requirements-%.txt
	$(PYTHON) -m venv .venv-transformers-$*
	.venv-transformers-$*/bin/pip install --quiet --upgrade pip
	.venv-transformers-$*/bin/pip install --quiet torch==2.13.0
	.venv-transformers-$*/bin/pip install --quiet -r $<
	touch $@

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python examples/convert_minilm.py --output out/symbert-minilm

test: install compat
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -ra

# Every benchmark, then BENCHMARKS.md from their JSON (bench/report.py); each runs as a module of the package
# `bench` from the repository root. The pretraining and fine-tuning runs are resumable: stop `make bench` at any
# point and run it again to continue (see BENCHMARKS.md for the time it takes). bench.bench_downstream pretrains each
# model (through bench.bench_convergence) and fine-tunes it in the same sitting: only bench/results outlives a
# machine, not the weights in bench/runs; bench.bench_convergence then has only to report.
bench: install
	$(BIN)/python -m bench.bench_parameters
	$(BIN)/python -m bench.bench_speed --resume
	$(BIN)/python -m bench.bench_deploy
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.bench_downstream
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.bench_convergence
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.bench_converted
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.bench_finetune_files
	$(BIN)/python -m bench.report

# A first look in under 10 minutes: tiny models, few steps, into bench/results/quick/ (the real results stay).
QUICK := bench/results/quick
bench-quick: install
	$(BIN)/python -m bench.bench_parameters --output-dir $(QUICK)
	$(BIN)/python -m bench.bench_speed --quick --output-dir $(QUICK)
	$(BIN)/python -m bench.bench_deploy --quick --output-dir $(QUICK)
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.bench_downstream --quick
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.bench_convergence --quick
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.bench_converted --quick
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.bench_finetune_files --quick --output-dir $(QUICK)
	$(BIN)/python -m bench.report --results $(QUICK) --output $(QUICK)/BENCHMARKS.md

clean:
	rm -rf $(VENV) .venv-transformers-* out build src/*.egg-info
