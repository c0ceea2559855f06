# Two entry points for a fresh machine (Debian, Python 3.11, no GPU): `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
# escnn and medmnist go in without their dependencies; the pins live in pyproject.toml [tool.reproduce].
NO_DEPS = $$($(BIN)/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['tool']['reproduce']['no-deps']))")

.PHONY: install run test bench clean-results

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(NO_DEPS)
	touch $@

# Regenerates the embedded data (verified against data.dvc), then every stage of dvc.yaml, then says
# whether the run reproduced the committed results (git status clean) or what to commit.
VERSIONED = dvc.lock results/default
run: install
	PATH="$(BIN):$$PATH" reproduce fetch
	PATH="$(BIN):$$PATH" dvc repro
	cat results/default/table.md
	@echo "report: reports/default/index.html"
	@if ! git rev-parse --git-dir >/dev/null 2>&1; then :; \
	elif [ -z "$$(git status --porcelain -- $(VERSIONED))" ]; then \
	  echo "reproduced: dvc.lock and results/default/ are the committed ones, byte for byte (git status clean)"; \
	else \
	  echo "dvc.lock or results/default/ differ from the commit (a code or study change, or another platform's rounding):"; \
	  git status --short -- $(VERSIONED); \
	  echo "to record these results: git add $(VERSIONED) && git commit && dvc push dvc.yaml data.dvc"; \
	fi

# Lint and format check, the test suite, per-sample gradients of every study against brute force on the
# trainer's batches, then the CI regression study through DVC and its check against baselines/ci.json.
test: install
	PATH="$(BIN):$$PATH" ruff check .
	PATH="$(BIN):$$PATH" ruff format --check .
	PATH="$(BIN):$$PATH" pytest -q
	PATH="$(BIN):$$PATH" reproduce verify studies/*.yaml
	PATH="$(BIN):$$PATH" reproduce fetch
	PATH="$(BIN):$$PATH" dvc repro pipelines/ci/dvc.yaml
	PATH="$(BIN):$$PATH" reproduce check studies/ci.yaml

bench: install
	PATH="$(BIN):$$PATH" python bench/bench_per_sample_grads.py
