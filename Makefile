# Every target sets up what it needs, idempotently: the venv at .venv, the
# pinned dependencies, and the sha256-pinned model weights.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CLUSTER := $(VENV)/.installed-cluster
export AIRFLOW_PRIVACY_MODEL_DIR ?= $(CURDIR)/.cache/models
export YOLO_OFFLINE ?= 1
MODELS := $(AIRFLOW_PRIVACY_MODEL_DIR)/.fetched

.PHONY: install models system-deps test system-test demo bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

models: $(MODELS)

$(MODELS): $(STAMP) airflow_privacy/core/models.py
	$(BIN)/airflow-privacy models fetch
	mkdir -p $(VENV)/share/airflow-privacy
	ln -sfn $(AIRFLOW_PRIVACY_MODEL_DIR) $(VENV)/share/airflow-privacy/models
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .

system-deps:
	bash scripts/system-deps.sh

test: $(STAMP) $(MODELS) lint system-deps
	$(BIN)/pytest -p no:cacheprovider

$(CLUSTER): $(STAMP) pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,cluster]'
	touch $@

# A real Airflow cluster on 127.0.0.1: PostgreSQL, Redis, scheduler, dag-processor,
# API server and two Celery workers, running the sharded S3 example DAG.
system-test: $(CLUSTER) $(MODELS)
	$(BIN)/python -m tests.system.cluster install
	timeout -k 60 40m $(BIN)/pytest -p no:cacheprovider -m system tests/system -s

demo: $(STAMP) $(MODELS)
	$(BIN)/python scripts/demo.py

bench: $(STAMP) $(MODELS)
	$(BIN)/python bench/quality.py
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) .cache demo-output bench/results
