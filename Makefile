# Quick start:  make run   (set up and serve the app at http://localhost:8501)
#               make test  (set up and run every test, browser test included)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast setup browser bench clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium + chromedriver for the real-browser test (never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium via apt"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "WARNING: could not install chromium; the browser test will be skipped"; }

run: $(STAMP)
	$(PY) -m cvs_core.cli ensure-models
	$(VENV)/bin/streamlit run streamlit_app.py --server.port 8501

test: $(STAMP) browser
	$(PY) -m cvs_core.cli ensure-models
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser"

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache runs
