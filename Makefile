# payswitch: `make run` brings the whole system up; `make test` runs the suite. Both create .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint fmt bench demo clean help cluster cluster-down

help:
	@echo "make run    start PostgreSQL, hsm_sim, host and switch (Ctrl-C stops them)"
	@echo "make demo   the tour on the running system (after make run), ending in a payout: the day"
	@echo "            closed early, its clearing file written and settled, the merchant report shown"
	@echo "make test   run the whole test suite against a throwaway PostgreSQL"
	@echo "make lint   ruff + mypy"
	@echo "make bench  run the benchmarks in bench/ and print their figures (the headline ones: the median of"
	@echo "            5 runs, the same-run baseline beside; BENCH_ARGS=\"--runs 1 e2e\" for fewer)"
	@echo "make cluster  etcd, 3 Patroni PostgreSQL members, HAProxy, HSM, host, switch on loopback in"
	@echo "              var/cluster (payswitch cluster status; make cluster-down stops it)"
	@echo "make clean  stop the embedded PostgreSQL and remove .venv and var/"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "payswitch needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/payswitch run

demo: $(STAMP)
	$(VENV)/bin/payswitch demo tour

# The whole topology on loopback (ops/cluster.py); HOSTS=N SWITCHES=N for more nodes.
cluster: $(STAMP)
	$(VENV)/bin/payswitch cluster up --hosts $(or $(HOSTS),1) --switches $(or $(SWITCHES),1)

cluster-down: $(STAMP)
	$(VENV)/bin/payswitch cluster down

# Two workers (pytest-xdist): half the suite waits on live processes and sockets, not the CPU; on this
# 2-core machine the whole suite takes 13 min so, against 27 in one process. PYTEST_ARGS=-n0: one process.
PYTEST_ARGS ?= -n 2
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# BENCH_ARGS: e.g. "--runs 1 e2e host" (python -m bench's own: runs, module names, -- module options)
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	-[ -x $(VENV)/bin/payswitch ] && $(VENV)/bin/payswitch db down
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
