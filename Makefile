# Two commands: `make demo` and `make test`. Each creates .venv and installs what is needed.
# TORCH_SPEC picks the torch wheel when the venv has none; a torch already visible to the venv
# (e.g. a system one, through --system-site-packages) is kept.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.attnsynth-installed

.PHONY: demo test test-slow bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,ui]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/attnsynth demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q -rs

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

clean:
	rm -rf demo_out .pytest_cache
