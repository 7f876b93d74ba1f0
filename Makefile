# PyTorch Automation Studio: `make run` starts everything, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

.PHONY: run worker test test-fast test-slow bench lint clean-venv

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)  ## Redis (embedded unless REDIS_URL), workers, API on :5000, UI on :8501
	$(PY) -m services.platform.launcher all

worker: $(STAMP)  ## only RQ workers, joining REDIS_URL (scale-out)
	$(PY) -m services.platform.launcher worker

test: $(STAMP)  ## the whole suite
	$(PY) -m pytest

test-fast: $(STAMP)  ## everything except the slow and browser tests
	$(PY) -m pytest -m "not slow and not browser"

test-slow: $(STAMP)  ## only the slow and browser tests
	$(PY) -m pytest -m "slow or browser"

bench: $(STAMP)  ## benchmarks (not tests): each prints ours next to the peer's
	$(PY) bench/bench_grabcut.py
	$(PY) bench/bench_augment.py
	$(PY) bench/bench_training.py
	$(PY) bench/bench_predict.py
	$(PY) bench/bench_api_start.py

lint: $(STAMP)
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)
