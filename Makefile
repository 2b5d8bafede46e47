# oqcluster — every target does its own set-up (venv, Debian packages, dockerd,
# node image) and can be run again. See README.md.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
STAGE := scripts/stage.sh
# Molecule scenarios run by `make test` (molecule/demo is the demo cluster, not a test):
# default (the bundled engine), openquake (the real OpenQuake engine).
SCENARIOS ?= default openquake
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml engine/pyproject.toml | sha256sum | cut -c1-12)

.PHONY: print-scenarios help venv host-deps image demo demo-down test test-fast lint unit molecule clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

$(STAMP): requirements.lock pyproject.toml engine/pyproject.toml
	@echo ">>> creating the control-node venv in $(VENV)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e . -e 'engine[webui]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP) ## create/refresh the control-node venv (.venv)

host-deps: ## install docker.io, debootstrap, chromium; start dockerd (root or sudo)
	@bash scripts/host-deps.sh

image: host-deps ## build the Debian 12 systemd node image (cached by recipe hash)
	@bash molecule/images/build.sh

demo: venv host-deps ## bring up the local 3-node demo cluster and run the demo calculation (FLAVOR=openquake: the real engine)
	$(BIN)/oqcluster demo up $(if $(FLAVOR),--flavor $(FLAVOR))

demo-down: venv host-deps ## remove the demo cluster
	$(BIN)/oqcluster demo down

lint: venv ## ruff, yamllint, ansible-lint (production profile)
	@$(STAGE) "lint: ruff" ruff check .
	@$(STAGE) "lint: yamllint" yamllint --strict .
	@$(STAGE) "lint: ansible-lint" ansible-lint --profile production

unit: venv ## pytest: unit, golden-file, engine and CLI tests (no containers)
	@$(STAGE) "pytest" pytest

test-fast: lint unit ## everyday subset: lint + pytest, no containers

molecule: venv image ## the Molecule scenarios (containers)
	@for scenario in $(SCENARIOS); do \
	    $(STAGE) "molecule test -s $$scenario" molecule test -s $$scenario || exit 1; \
	done

test: host-deps lint unit molecule molecule-kernel-ci ## everything CI runs: lint, pytest, Molecule (containers, then kernel VMs)

MUTATION_ARGS ?=
.PHONY: mutation
mutation: venv ## break each guarded property of the demo cluster in turn: verify must name it, its fix heal it
	$(BIN)/python scripts/mutation.py -i inventories/local $(MUTATION_ARGS)

print-scenarios:
	@echo $(SCENARIOS)

clean: ## remove the venv and caches (not the demo cluster: make demo-down)
	rm -rf $(VENV) .pytest_cache .ruff_cache

# --- engine benchmark (bench/engine.py): oqzmq vs the real OpenQuake engine, multiprocessing,
# dask.distributed. The peers live in their own venv; the engine's dependencies stay lean.
BENCH_VENV := .cache/bench-venv
BENCH_STAMP := $(BENCH_VENV)/.installed-$(shell cat bench/requirements.lock engine/pyproject.toml | sha256sum | cut -c1-12)
BENCH_ARGS ?=

$(BENCH_STAMP): bench/requirements.lock engine/pyproject.toml
	@echo ">>> creating the benchmark venv in $(BENCH_VENV) (about 1 GB)"
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --no-deps -r bench/requirements.lock
	$(BENCH_VENV)/bin/pip install --quiet --no-deps -e engine
	rm -f $(BENCH_VENV)/.installed-* && touch $@

.PHONY: bench
bench: $(BENCH_STAMP) ## engine benchmark table (BENCH_ARGS="--quick --only 'oqzmq zmq,dask'")
	$(BENCH_VENV)/bin/python bench/engine.py $(BENCH_ARGS)

# --- provisioning at scale (bench/scale.py): 1 master + N workers in containers reached over
# ssh (a sudo user, a key generated for the run, pinned host keys), timed: first converge,
# no-change re-run (must be changed=0), oqcluster verify, the demo over all workers. Not in CI.
SCALE_ARGS ?=

.PHONY: bench-scale
bench-scale: venv image ## provisioning time vs workers (SCALE_ARGS="--workers 2,4 --json FILE")
	$(BIN)/python bench/scale.py $(SCALE_ARGS)

# The same engine figures on the demo cluster (`make demo FLAVOR=oqzmq` first): tasks run in
# the worker containers, results cross the Docker network to the master (real TCP).
DEMO_MASTER ?= oq-demo-master
CLUSTER_BENCH_ARGS ?=
.PHONY: bench-cluster
bench-cluster: ## oqz workers bench on the demo cluster (tiny tasks/s, large results MB/s)
	docker exec $(DEMO_MASTER) runuser -u openquake -- /opt/openquake/venv/bin/oqz workers start
	docker exec $(DEMO_MASTER) runuser -u openquake -- /opt/openquake/venv/bin/oqz workers bench $(CLUSTER_BENCH_ARGS)

.PHONY: bench-profile
bench-profile: $(BENCH_STAMP) ## CPU per task of the master, workerpool and workers (zmq mode)
	$(BENCH_VENV)/bin/python bench/cpuprofile.py $(BENCH_ARGS)

# --- the real-kernel scenario (molecule/kernel): a master and two workers as QEMU VMs
# (software CPU) from a Debian 12 image cached by recipe hash outside the repository.
# `make test` runs the reduced form without idempotence (molecule-kernel-ci); each step prints its time. The VMs are destroyed at the end,
# also on failure or Ctrl-C, unless KERNEL_KEEP=1 (then: molecule login -s kernel -h oq-master,
# and `molecule destroy -s kernel` when done). Only one of the two can run at a time (ports).
# KERNEL_SCENARIO=kernel-small: the reduced form, one master and one worker.
KERNEL_STEPS ?= syntax create prepare converge idempotence verify
KERNEL_KEEP ?=
KERNEL_SCENARIO ?= kernel

.PHONY: molecule-kernel
molecule-kernel: venv host-deps ## Molecule on real-kernel VMs: kernel NFS, swap+reboot, firewall, cgroup v2
	@$(STAGE) "kernel: VM image" bash molecule/images/vm/build.sh
	@$(STAGE) "$(KERNEL_SCENARIO): destroy leftovers" molecule destroy -s $(KERNEL_SCENARIO)
	@[[ -n "$(KERNEL_KEEP)" ]] || \
	    trap '$(STAGE) "$(KERNEL_SCENARIO): destroy" molecule destroy -s $(KERNEL_SCENARIO)' EXIT; \
	for step in $(KERNEL_STEPS); do \
	    $(STAGE) "$(KERNEL_SCENARIO): $$step" molecule $$step -s $(KERNEL_SCENARIO) || exit 1; \
	done

# What fits in CI's 90 minutes next to the rest on 2 cores (about 50 min): one master and
# one worker, every step but idempotence (13 more minutes; the container scenario proves
# idempotence on every run). molecule/kernel/README.md has the figures.
.PHONY: molecule-kernel-ci
molecule-kernel-ci: ## kernel-small without the idempotence step (part of make test)
	@$(MAKE) --no-print-directory molecule-kernel KERNEL_SCENARIO=kernel-small \
	    KERNEL_STEPS="syntax create prepare converge verify" KERNEL_KEEP=
