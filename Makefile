# attune: one-command set-up.
#
#   make demo    set up everything, then run the end-to-end demo (`attune demo`)
#   make test    set up everything, run the checks (make lint), start the local stack, run the
#                whole test suite, stop the stack
#   make notebook  set up everything, then JupyterLab over notebooks/ on 127.0.0.1:8888
#
# Needs: Python 3.11 as `python3` (override with PYTHON=...), Java 17, Maven 3.8, Go 1.24+ (make
# test only: the docker/ compose checker), and network access to PyPI, Maven Central, the Go
# module proxy and (for redis-server, installed by `attune stack up`) Debian.
# Every step is idempotent: a stamp file under var/stamps/ is named after the hash of what the
# step depends on (requirements.lock + pyproject.toml, the poms), so a second run does nothing
# and a changed lock or pom re-runs exactly the step it affects.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
MAKEFLAGS += --no-print-directory

PYTHON ?= python3
MVN ?= mvn
GO ?= go
UV_VERSION := 0.13.9
VENV := .venv
VAR := var
STAMPS := $(VAR)/stamps
SPARK_JARS := $(CURDIR)/$(VAR)/jars/spark
KAFKA_JARS := $(CURDIR)/$(VAR)/jars/kafka
PYTEST_ARGS ?=
NOTEBOOK_PORT ?= 8888
# Maven 3.8 prints colour resets even with -B -q; strip them from the log (pipefail keeps errors).
NO_ANSI := 2>&1 | sed -e 's/\x1b\[[0-9;]*m//g'

# TensorFlow Recommenders needs Keras 2 (tf-keras) under TensorFlow 2.21.
export TF_USE_LEGACY_KERAS := 1

SETUP_HASH := $(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
# jvm/writer: attune's own Spark jar (the real-time mode's JVM writer), built from its sources.
WRITER_SRC := jvm/writer/pom.xml $(sort $(wildcard jvm/writer/src/main/java/io/attune/spark/*.java))
JARS_HASH := $(shell cat jvm/spark/pom.xml jvm/kafka/pom.xml $(WRITER_SRC) | sha256sum | cut -c1-16)
SETUP_STAMP := $(STAMPS)/setup-$(SETUP_HASH)
JARS_STAMP := $(STAMPS)/jars-$(JARS_HASH)
# docker/composecheck: compose-go (the loader of `docker compose`), which the tests run on
# docker/compose.yaml; rebuilt when its sources or pinned modules change.
COMPOSECHECK := $(VAR)/bin/composecheck
COMPOSECHECK_SRC := docker/composecheck/go.mod docker/composecheck/go.sum docker/composecheck/main.go
COMPOSECHECK_HASH := $(shell cat $(COMPOSECHECK_SRC) | sha256sum | cut -c1-16)
COMPOSECHECK_STAMP := $(STAMPS)/composecheck-$(COMPOSECHECK_HASH)

# A stamp is only trusted while what it stands for is still there (someone may have deleted
# var/jars or uninstalled the package); otherwise this phony prerequisite forces the step.
SETUP_CHECK := $(if $(wildcard $(VENV)/bin/attune),,FORCE)
COMPOSECHECK_CHECK := $(if $(wildcard $(COMPOSECHECK)),,FORCE)
JARS_CHECK := $(if $(and $(wildcard $(SPARK_JARS)/delta-spark_*.jar),$(wildcard $(SPARK_JARS)/attune-spark-writer-*.jar),$(wildcard $(KAFKA_JARS)/kafka_2.13-*.jar)),,FORCE)

.PHONY: help setup jars composecheck browser test lint demo notebook stack-up stack-down stack-status FORCE

help:
	@echo "make demo          set up, then run the end-to-end demo (attune demo)"
	@echo "make test          set up, lint, start the stack, run unit + integration tests, stop it"
	@echo "make setup         .venv with the pinned requirements.lock and attune (editable)"
	@echo "make jars          Spark and Kafka jars from Maven Central, and the JVM writer (jvm/writer), into var/jars/"
	@echo "make composecheck  build var/bin/composecheck (compose-go) for the docker/ tests; needs Go"
	@echo "make browser       Chromium from Debian (the tests' UI screenshots)"
	@echo "make lint          ruff check, ruff format --check, mypy (every package), lint-imports"
	@echo "make notebook      set up, then JupyterLab over notebooks/ on 127.0.0.1:$(NOTEBOOK_PORT)"
	@echo "make stack-up | stack-down | stack-status"
	@echo "variables: PYTHON=$(PYTHON) PYTEST_ARGS='$(PYTEST_ARGS)' NOTEBOOK_PORT=$(NOTEBOOK_PORT)"

setup: $(SETUP_STAMP)

jars: $(JARS_STAMP)

composecheck: $(COMPOSECHECK_STAMP)

$(VENV)/pyvenv.cfg:
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v[:2] == (3, 11) else \
	  f"attune needs Python 3.11, but $(PYTHON) is {v.major}.{v.minor} ({sys.executable}); " \
	  "run make with PYTHON=/path/to/python3.11")'
	@echo "setup: creating $(VENV) with $$($(PYTHON) --version)"
	$(PYTHON) -m venv $(VENV)

$(SETUP_STAMP): $(VENV)/pyvenv.cfg $(SETUP_CHECK)
	@$(VENV)/bin/python -c 'import sys; v = sys.version_info; sys.exit(0 if v[:2] == (3, 11) else \
	  f"$(VENV) runs Python {v.major}.{v.minor}, attune needs 3.11: remove $(VENV) and run make again")'
	@if [ "$$($(VENV)/bin/uv --version 2>/dev/null | cut -d' ' -f2)" != "$(UV_VERSION)" ]; then \
	  echo "setup: installing uv==$(UV_VERSION) into $(VENV)"; \
	  $(VENV)/bin/python -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"; \
	fi
	@echo "setup: syncing $(VENV) with requirements.lock"
	$(VENV)/bin/uv pip sync --python $(VENV)/bin/python requirements.lock
	$(VENV)/bin/uv pip install --python $(VENV)/bin/python --no-deps -e .
	@rm -f $(STAMPS)/setup-*
	@mkdir -p $(STAMPS) && touch $@
	@echo "setup: done ($(VENV), stamp $@)"

$(JARS_STAMP): jvm/spark/pom.xml jvm/kafka/pom.xml $(WRITER_SRC) $(JARS_CHECK)
	@command -v java >/dev/null || { echo "jars: java not found; install a JDK 17" >&2; exit 1; }
	@command -v $(MVN) >/dev/null || { echo "jars: $(MVN) not found; install Maven 3.8+" >&2; exit 1; }
	@echo "jars: Spark jars (Delta Lake, Kafka connector) -> $(SPARK_JARS)"
	rm -rf $(SPARK_JARS)
	$(MVN) -q -B -f jvm/spark/pom.xml dependency:copy-dependencies -DoutputDirectory=$(SPARK_JARS) $(NO_ANSI)
	@echo "jars: attune's JVM writer (jvm/writer) and its Redis client -> $(SPARK_JARS)"
	$(MVN) -q -B -f jvm/writer/pom.xml -Dmaven.test.skip=true clean package dependency:copy-dependencies -DoutputDirectory=$(SPARK_JARS) $(NO_ANSI)
	cp jvm/writer/target/attune-spark-writer-0.jar $(SPARK_JARS)/
	@echo "jars: Kafka broker jars -> $(KAFKA_JARS)"
	rm -rf $(KAFKA_JARS)
	$(MVN) -q -B -f jvm/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory=$(KAFKA_JARS) $(NO_ANSI)
	@rm -f $(STAMPS)/jars-*
	@mkdir -p $(STAMPS) && touch $@
	@echo "jars: done ($$(ls $(SPARK_JARS) | wc -l) Spark jars, $$(ls $(KAFKA_JARS) | wc -l) Kafka jars)"

# Go fetches compose-go and its dependencies from the Go module proxy (pinned in go.sum).
$(COMPOSECHECK_STAMP): $(COMPOSECHECK_SRC) $(COMPOSECHECK_CHECK)
	@command -v $(GO) >/dev/null || { echo "composecheck: $(GO) not found; install Go 1.24 or newer" \
	  "(https://go.dev/doc/install, or Debian's golang-go), or run make with GO=/path/to/go" >&2; exit 1; }
	@echo "composecheck: building $(COMPOSECHECK) with $$($(GO) version | cut -d' ' -f3)"
	@mkdir -p $(VAR)/bin
	cd docker/composecheck && $(GO) build -trimpath -o $(CURDIR)/$(COMPOSECHECK) .
	@rm -f $(STAMPS)/composecheck-*
	@mkdir -p $(STAMPS) && touch $@
	@echo "composecheck: done ($(COMPOSECHECK), stamp $@)"

# Debian's Chromium, driven by Playwright for the UI screenshots the tests keep (Playwright
# never downloads a browser of its own here). Needs root and apt-get, like redis-server.
browser:
	@if ! command -v chromium >/dev/null; then \
	  command -v apt-get >/dev/null || { echo "browser: install Chromium (the UI tests need it)" >&2; exit 1; }; \
	  echo "browser: installing Chromium from Debian's packages"; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; \
	fi

# The checks run first: a lint error, a type error or a broken layer contract fails the run
# before the (much longer) test suite starts.
test: setup lint jars composecheck browser
	scripts/test.sh $(PYTEST_ARGS)

# mypy checks the packages listed in [tool.mypy] (attune, speed_layer, spark, models, benchmarks...);
# lint-imports checks the layer contracts in [tool.importlinter].
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

demo: setup jars
	$(VENV)/bin/attune demo

# The kernel is this .venv's Python, with TF_USE_LEGACY_KERAS exported above. Spark finds the
# jars by itself: spark.jars_dir (default var/jars/spark) is taken from the repository root,
# where each notebook moves first. The URL printed (with its token) opens the lab; Ctrl-C stops.
# Jupyter refuses to run as root unless told (our machines and CI are root): only then is it told.
notebook: setup jars
	exec $(VENV)/bin/jupyter lab --no-browser --ip=127.0.0.1 --port=$(NOTEBOOK_PORT) \
	  --port-retries=0 --ServerApp.root_dir=$(CURDIR)/notebooks \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

stack-up: setup jars
	$(VENV)/bin/attune stack up

stack-down:
	$(VENV)/bin/attune stack down

stack-status:
	$(VENV)/bin/attune stack status

FORCE:
