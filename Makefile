# PyTorch Automation Studio: `make run` starts everything, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

.PHONY: run worker test test-fast test-stack bench lint coverage clean-venv

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)  ## Redis (embedded unless REDIS_URL), workers, API on :5000, UI on :8501
	$(PY) -m services.platform.launcher all

worker: $(STAMP)  ## only RQ workers, joining REDIS_URL (scale-out)
	$(PY) -m services.platform.launcher worker

# Two tiers, derived from the fixtures a test uses (tests/conftest.py): in-process, and the real stack; each on
# two xdist workers (a stack module's tests stay on one worker, whose session studio they share).
FAST := -m "not stack" -n 2
STACK := -m stack -n 2 --dist loadscope

test: $(STAMP)  ## the whole suite: the in-process tier, then the real-stack tier
	$(PY) -m pytest $(FAST)
	$(PY) -m pytest $(STACK)

test-fast: $(STAMP)  ## the in-process tier: no process, server or browser is started
	$(PY) -m pytest $(FAST)

test-stack: $(STAMP)  ## the real-stack tier: Redis, RQ workers, gunicorn, Streamlit, Chromium
	$(PY) -m pytest $(STACK)

coverage: $(STAMP)  ## branch coverage of engine/ and services/ in the test process, over the whole suite
	$(PY) -m coverage run -m pytest -q
	$(PY) -m coverage report --include="engine/*" | tail -1
	$(PY) -m coverage report --include="services/*" | tail -1

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
