# Two commands for a fresh machine: `make demo` (convert the real MiniLM checkpoint to SymBert) and `make test`.
# torch==2.13.0 is installed first: it is the CPU build these machines serve locally, and it satisfies the
# package's own `torch>=2.4`, so pip installs no other (CUDA) torch afterwards.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/python examples/convert_minilm.py --output out/symbert-minilm

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -ra

bench: install
	$(BIN)/python bench/bench_speed.py

clean:
	rm -rf $(VENV) out build src/*.egg-info
