# dtr — the commands a newcomer and CI run. `make test` is the test command
# (.ci/run calls exactly it); it creates .venv and installs what it needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev,etcd,docker,torch
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: help install proto docs lint typecheck unit integration chaos test soak demo bench etcd clean

help:
	@echo "make demo         install into $(VENV) (dtr, PyTorch CPU, a bundled etcd) and run dtr demo"
	@echo "make test         install into $(VENV), lint, typecheck, unit + integration + chaos tests"
	@echo "make unit         tests/unit only (no processes)"
	@echo "make integration  tests/integration (real etcd processes on loopback)"
	@echo "make chaos        tests/chaos: short chaos scenarios and the broken-coordinator check"
	@echo "make soak         30 minutes of every nemesis kind; summary in benchmarks/results/soak.md"
	@echo "make bench        benchmarks -> benchmarks/results/"
	@echo "make proto        regenerate dtr/proto from coordinator.proto"
	@echo "make docs         regenerate docs/configuration.md from the CLI's options"
	@echo "make etcd         run a development etcd (dtr etcd)"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

proto: $(STAMP)
	$(PY) -m dtr.proto.generate

docs: $(STAMP)
	$(PY) -m dtr.cli.reference > docs/configuration.md

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy maps folders to module names, so it checks a tree of links laid out
# the way the package installs (dtr/worker -> worker/ ...).
typecheck: $(STAMP)
	rm -rf build/typecheck && mkdir -p build/typecheck/dtr
	for f in dtr/*; do ln -s "$$PWD/$$f" build/typecheck/dtr/; done
	for p in coordinator worker chaos; do ln -s "$$PWD/$$p" build/typecheck/dtr/$$p; done
	ln -s "$$PWD/examples/ddp" build/typecheck/dtr/examples
	cd build/typecheck && ../../$(VENV)/bin/mypy --config-file ../../pyproject.toml -p dtr \
	  | sed -e 's#^dtr/coordinator/#coordinator/#' -e 's#^dtr/worker/#worker/#' -e 's#^dtr/chaos/#chaos/#' \
	    -e 's#^dtr/examples/#examples/ddp/#'

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

integration: $(STAMP)
	$(PY) -m pytest tests/integration -q

chaos: $(STAMP)
	$(PY) -m pytest tests/chaos -q

test: lint typecheck
	$(PY) -m pytest tests -q

# The main job on this machine: etcd, 3 coordinators and a DDP job of 2 torchrun
# agents x 2 ranks through a rank kill, an agent leaving and two leader kills
# (about 2 minutes on 2 cores). DEMO_ARGS passes options through, e.g.
# make demo DEMO_ARGS="--no-faults --keep".
DEMO_EXTRAS := etcd,torch
DEMO_ARGS ?=
demo:
	$(MAKE) --no-print-directory EXTRAS=$(DEMO_EXTRAS) install
	$(VENV)/bin/dtr demo $(DEMO_ARGS)

# Thirty minutes of every nemesis kind (benchmarks/soak.py: chaos/scenarios/
# soak-fleet.yaml, then soak-job.yaml), then the checkers; each run's history,
# results.json and logs stay in build/soak, the summary goes to
# benchmarks/results/soak.{json,md}. SOAK_ARGS passes options through, e.g.
# make soak SOAK_ARGS="--minutes 10 --seed 7".
SOAK_ARGS ?=
soak: $(STAMP)
	rm -rf build/soak && mkdir -p build/soak
	$(PY) benchmarks/soak.py --work-dir build/soak $(SOAK_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/ring.py
	$(PY) benchmarks/coordinator.py
	$(PY) benchmarks/commit_burst.py
	$(PY) benchmarks/register_burst.py
	$(PY) benchmarks/failover_seen.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/ddp_faults.py
	$(PY) benchmarks/worker.py
	$(PY) benchmarks/checkpoint.py
	$(PY) benchmarks/rendezvous.py

etcd: $(STAMP)
	$(VENV)/bin/dtr etcd

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
