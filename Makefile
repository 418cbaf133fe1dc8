PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)

.PHONY: run lint test unit screenshots bench-match bench-relay bench-soak clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/aftertalk serve --demo $(ARGS)

# ruff on everything; mypy as configured in pyproject.toml ([tool.mypy]: strict on the pure modules)
LINT_PATHS := core matcher chat gateway tests bench

lint: $(STAMP)
	@status=0; \
	echo "ruff check $(LINT_PATHS)"; $(BIN)/ruff check --output-format concise $(LINT_PATHS) || status=1; \
	echo "mypy (see [tool.mypy] in pyproject.toml)"; $(BIN)/mypy || status=1; \
	exit $$status

# axe-core for the browser tests' accessibility audits: npm, pinned by tests/browser/axe/package-lock.json
AXE := tests/browser/axe/node_modules/axe-core/axe.min.js
$(AXE): tests/browser/axe/package.json tests/browser/axe/package-lock.json
	cd tests/browser/axe && npm ci --no-audit --no-fund --loglevel=error
	touch $(AXE)

test: $(STAMP) lint
	bash .ci/system-deps
	$(MAKE) $(AXE)
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

# the README's screenshots (docs/screenshots/): the browser tests, saving them there instead of a scratch folder
screenshots: $(STAMP)
	bash .ci/system-deps
	$(MAKE) $(AXE)
	AFTERTALK_SCREENSHOTS=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -q tests/browser

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench-match: $(STAMP)
	$(BIN)/python bench/match_bench.py $(ARGS)

# the Django Channels peer lives in its own venv: never part of the project's dependencies
PEERS_VENV := bench/.venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed-$(shell cat bench/peers/requirements.txt | md5sum | cut -c1-8)

$(PEERS_STAMP): bench/peers/requirements.txt
	$(PY) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --upgrade pip
	$(PEERS_VENV)/bin/pip install -q -r bench/peers/requirements.txt
	touch $(PEERS_STAMP)

bench-relay: $(STAMP) $(PEERS_STAMP)
	$(BIN)/python bench/relay_bench.py $(ARGS)

# group fan-out (issue 12): 100 groups of 8 on two gateways, then one-on-one in the same sitting (ours only)
.PHONY: bench-groups
bench-groups: $(STAMP)
	$(BIN)/python bench/groups_bench.py $(ARGS)

bench-soak: $(STAMP)
	$(BIN)/python bench/soak.py $(ARGS)

.PHONY: bench-load bench-idle bench-availability bench-recovery
bench-load: $(STAMP)
	$(BIN)/python bench/load_test.py $(ARGS)

bench-availability: $(STAMP)
	$(BIN)/python bench/availability_burst.py $(ARGS)

bench-recovery: $(STAMP)
	$(BIN)/python bench/recovery_bench.py $(ARGS)

bench-idle: $(STAMP)
	$(BIN)/python bench/idle_conns.py $(ARGS)

# the screening model: held-out quality, thresholds, speed and memory (docs/safety-eval.md)
.PHONY: eval-safety eval-safety-live train-screening
eval-safety: $(STAMP)
	$(BIN)/python bench/eval_safety.py $(ARGS)

eval-safety-live: $(STAMP)
	bash .ci/system-deps
	$(BIN)/python bench/safety_live.py $(ARGS)

train-screening: $(STAMP)
	$(BIN)/python -m chat.screening.train $(ARGS)

clean:
	rm -rf $(VENV) .aftertalk-data tests/browser/axe/node_modules
