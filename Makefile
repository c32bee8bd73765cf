# driftloop — `make help` lists the targets. Every target installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= demo-out
SCENARIO ?= tweets

.DEFAULT_GOAL := help
.PHONY: help setup data demo test lint compile bench clean prometheus monitoring evidently-venv ab-manifests mlserver

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[kfp,serving,dev,report]'
	@touch $@

setup: $(STAMP) ## Create .venv and install the pinned dependencies (idempotent)

data: $(STAMP) ## Fetch the real data sets (tweets, Elec2) from PyPI wheels into data/, sha256-verified
	$(BIN)/python -m driftloop.demo.datasets --out data

demo: $(STAMP) data ## Serve a model, replay real data as days, run the pipeline daily (SCENARIO=tweets|elec2|sample)
	$(BIN)/driftloop demo --scenario $(SCENARIO) --out $(OUT)

prometheus: ## Install Debian's prometheus and prometheus-pushgateway when missing (the metrics tests run them)
	@for pkg in prometheus prometheus-pushgateway; do \
	  command -v $$pkg >/dev/null 2>&1 && continue; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -q $$pkg >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$pkg >/dev/null)) \
	    && echo "installed $$pkg (Debian package)" || exit 1; \
	  else echo "make: $$pkg is missing and cannot be installed here (needs root and apt-get on Debian): install it, e.g. sudo apt-get install $$pkg" >&2; exit 1; fi; \
	done

test: $(STAMP) data prometheus ## Run the whole test suite (fetches the data sets, installs prometheus + pushgateway)
	$(BIN)/python -m pytest -q

lint: $(STAMP) ## ruff + mypy
	$(BIN)/ruff check src tests
	$(BIN)/mypy

compile: $(STAMP) ## Write components/*/component.yaml (+README) and pipelines/continuous_training.yaml
	$(BIN)/driftloop compile

monitoring: $(STAMP) ## Write manifests/monitoring/: the Grafana dashboard, rules.yaml and the PrometheusRule
	$(BIN)/python -m driftloop.serving.monitoring --out manifests/monitoring

ab-manifests: $(STAMP) ## Write manifests/components/ab-test/: the example A/B test's InferenceGraph (kustomize component)
	$(BIN)/python -m driftloop.rollout.ab_graph --out manifests/components/ab-test

EVIDENTLY_VENV ?= .venvs/evidently
evidently-venv: ## Evidently 0.7.23 in its own venv (drift_vs_evidently.py uses it when .venv lacks Evidently)
	test -x $(EVIDENTLY_VENV)/bin/python || python3.11 -m venv $(EVIDENTLY_VENV)
	$(EVIDENTLY_VENV)/bin/python -m pip install -q -c constraints.txt evidently==0.7.23

# MLServer + mlserver-sklearn (KServe's V2 sklearn runtime), the serving benchmark's peer, in
# a venv of its own (its pins need not agree with ours); the model's own scikit-learn, numpy,
# pandas and joblib versions so that it unpickles the same model.joblib. uvloop 0.21.0: with
# uvloop >= 0.22 MLServer 1.7.1's inference worker dies at start (mlserver/parallel/worker.py
# _ignore_signals calls asyncio.get_event_loop(), which uvloop then refuses) and no model loads.
MLSERVER_VENV ?= .venvs/mlserver
$(MLSERVER_VENV)/.installed: constraints.txt
	@test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(MLSERVER_VENV)/bin/python -m pip install -q --upgrade pip
	$(MLSERVER_VENV)/bin/python -m pip install -q mlserver==1.7.1 mlserver-sklearn==1.7.1 uvloop==0.21.0 \
	  $$(grep -E '^(scikit-learn|numpy|pandas|joblib|scipy|threadpoolctl)==' constraints.txt)
	@touch $@

mlserver: $(MLSERVER_VENV)/.installed ## Install MLServer 1.7.1 + mlserver-sklearn in $(MLSERVER_VENV) (serving benchmark peer)

$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[kfp,serving,dev,report,bench]'
	@touch $@

bench: $(VENV)/.installed-bench $(MLSERVER_VENV)/.installed data ## Run every benchmark at its quick size (tables + plots in benchmarks/results)
	$(BIN)/python benchmarks/orchestration_overhead.py
	$(BIN)/python benchmarks/drift_vs_evidently.py --quick
	$(BIN)/python benchmarks/retraining_policy.py --quick
	$(BIN)/python benchmarks/serving_latency.py --quick --mlserver $(MLSERVER_VENV)
	$(BIN)/python benchmarks/sink_throughput.py --quick
	$(BIN)/python benchmarks/ingest_shards.py --quick
	$(BIN)/python benchmarks/ab_test.py --quick
	$(BIN)/python benchmarks/active_learning.py --quick
	$(BIN)/python benchmarks/challengers.py --quick

clean: ## Remove the virtualenv and generated output
	rm -rf $(VENV) .venvs $(OUT) .pytest_cache .mypy_cache .ruff_cache
