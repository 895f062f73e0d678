# meshwork: `make demo` and `make test` are all a fresh machine with python3 needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/mesh/v1/*.proto)

.PHONY: install proto check-proto lint typecheck test unit chaos demo bench clean

install: $(STAMP)

# Re-runs only when pyproject.toml changes, so `make install` is idempotent and cheap.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)

# Regenerates into a scratch folder and fails on any difference from the committed code.
check-proto: $(STAMP)
	@tmp=$$(mktemp -d) && \
	$(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=$$tmp --grpc_python_out=$$tmp --pyi_out=$$tmp $(PROTOS) && \
	for f in $$tmp/mesh/v1/*; do \
		if ! cmp -s $$f mesh/v1/$$(basename $$f); then \
			echo "generated code is stale: mesh/v1/$$(basename $$f) (run make proto)"; rm -rf $$tmp; exit 1; \
		fi; \
	done; rm -rf $$tmp; echo "generated code is up to date"

lint: $(STAMP)
	$(BIN)/ruff check mesh nodes tests bench deploy
	$(BIN)/ruff format --check mesh nodes tests bench deploy

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) check-proto lint typecheck
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The long reliability battery (`make test` runs the CI-sized one): every fault,
# load and hostile-input check with 5x the durations, the fuzzers with many more
# examples; then the figures as one table (docs/reliability.md quotes it).
chaos: $(STAMP)
	rm -rf build/chaos
	MESH_CHAOS_LONG=1 MESH_FUZZ_EXAMPLES=5000 $(BIN)/python -m pytest -q \
		tests/chaos tests/netns/test_chaos_lab.py tests/integration/test_hostile.py \
		tests/unit/test_fuzz.py
	@if $(BIN)/python -c "import atheris" 2>/dev/null; then \
		for target in frame core-link-state core-distance-vector envelope codec identity \
				topology node-config scenario; do \
			corpus=build/chaos/corpus-$$target; mkdir -p $$corpus; \
			$(BIN)/python tests/fuzz/atheris_targets.py --seeds $$target $$corpus && \
			$(BIN)/python tests/fuzz/atheris_targets.py $$target -runs=20000 $$corpus || exit 1; \
		done; \
	else echo "atheris not installed (.venv/bin/pip install atheris): coverage-guided fuzzing skipped"; fi
	$(BIN)/python -m nodes.chaos.report

demo: $(STAMP)
	$(BIN)/mesh demo

bench: $(STAMP)
	$(BIN)/python bench/envelope.py --json bench/results/envelope.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
