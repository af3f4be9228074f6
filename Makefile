# The README's two set-up commands. Each creates its own virtual environment.
#   make demo   install the serving stack (no torch) and start the gRPC server on the shipped demo model
#   make test   install everything (training extras, CPU onnxruntime, dev tools) and run the whole test suite
PYTHON ?= python3
SERVE_VENV ?= .venv-serve
DEV_VENV ?= .venv
# The CPU build of torch, pinned: an unpinned "torch" would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test lint

$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/pip install --quiet -e ".[cpu]"
	touch $@

$(DEV_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install --quiet --upgrade pip
	$(DEV_VENV)/bin/pip install --quiet "$(TORCH)"
	$(DEV_VENV)/bin/pip install --quiet -e ".[train,bench,cpu,dev]"
	touch $@

demo: $(SERVE_VENV)/.installed
	@echo "gRPC on 127.0.0.1:50051, metrics on http://127.0.0.1:9090/metrics; try:"
	@echo "  echo 'The package contains the documentation.' | $(SERVE_VENV)/bin/nmtserve translate --server 127.0.0.1:50051"
	$(SERVE_VENV)/bin/nmtserve serve

test: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m pytest -q

lint: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/ruff check . && $(DEV_VENV)/bin/ruff format --check .
