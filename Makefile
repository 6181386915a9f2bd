PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
