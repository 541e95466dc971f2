# The two commands: `make run` (whole stack + demo studies) and `make test` (the suite).
SHELL := /bin/bash
PY := .venv/bin/python
export TCP_NODELAY := 1

.PHONY: install run demo test lint typecheck pytest stop status bench-ingest bench-model bench-e2e bench-web bench-scale bench-scu bench-ct-read bench-storage-write bench-ort-spinning bench-large-buffers

install:
	ops/stack.sh install

# The local demo stack waits less for stability than a hospital would (60 s / 10 s defaults).
run: export MEDREGA_STABLE_AGE_S ?= 5
run: export MEDREGA_PACS_STABLE_AGE_S ?= 3
run: install
	ops/stack.sh start
	$(PY) -m ops.demo

demo:
	$(PY) -m ops.demo

test: install
	ops/stack.sh infra
	$(MAKE) lint typecheck pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck:
	.venv/bin/mypy shared services

pytest:
	$(PY) -m pytest -q $(PYTEST_ARGS)

stop:
	ops/stack.sh stop

status:
	ops/stack.sh status

bench-ingest:
	$(PY) -m ops.bench.ingest

bench-model:
	$(PY) -m ops.bench.model

bench-e2e:
	$(PY) -m ops.bench.e2e

bench-web:
	$(PY) -m ops.bench.web

bench-scale:
	nice $(PY) -m ops.bench.scale

bench-scu:
	$(PY) -m ops.bench.scu

bench-ct-read:
	$(PY) -m ops.bench.ct_read

bench-storage-write:
	$(PY) -m ops.bench.storage_write

bench-ort-spinning:
	$(PY) -m ops.bench.ort_spinning

bench-large-buffers:
	$(PY) -m ops.bench.large_buffers
