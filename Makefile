# The README's two set-up commands. Each creates its own virtual environment.
#   make demo   install the serving stack (no torch) and start the gRPC server on the shipped demo model
#   make test   install everything (training extras, CPU onnxruntime, dev tools) and run the whole test suite
PYTHON ?= python3
SERVE_VENV ?= .venv-serve
DEV_VENV ?= .venv
# The CPU build of torch, pinned: an unpinned "torch" would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test lint audit

$(SERVE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet --upgrade pip
	$(SERVE_VENV)/bin/pip install --quiet -e ".[cpu,eval,http]"
	touch $@

$(DEV_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install --quiet --upgrade pip
	$(DEV_VENV)/bin/pip install --quiet "$(TORCH)"
	$(DEV_VENV)/bin/pip install --quiet -e ".[train,bench,cpu,http,dev]"
	touch $@

demo: $(SERVE_VENV)/.installed
	@echo "gRPC on 127.0.0.1:50051, metrics on http://127.0.0.1:9090/metrics; try:"
	@echo "  echo 'The package contains the documentation.' | $(SERVE_VENV)/bin/nmtserve translate --server 127.0.0.1:50051"
	$(SERVE_VENV)/bin/nmtserve serve

test: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python -m pytest -q

# Ruff, then mypy over every package (.ci/typecheck.py resolves nmtserve.* to the folders).
lint: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/ruff check . && $(DEV_VENV)/bin/ruff format --check .
	$(DEV_VENV)/bin/python .ci/typecheck.py

# Known vulnerabilities in the serving dependencies (what `make demo` installs); CI runs it after `make test`.
audit: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python .ci/audit.py --out runs/audit

# Deployment assets (deploy/, docs/deploy.md): the image's pinned locks, the PrometheusRule generated from the rules
# file, and the dashboard plots of the docs (a local server and Debian's Prometheus, about two minutes of traffic).
.PHONY: deploy-assets
deploy-assets: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python deploy/docker/lock.py
	$(DEV_VENV)/bin/python deploy/tools/prometheusrule.py
	$(DEV_VENV)/bin/python deploy/tools/local_stack.py --duration 90 --render docs/img

# The serving image built for real with podman from the unchanged Dockerfile, on a base made locally with mmdebstrap
# (no registry is reachable here), and run as the Kubernetes manifests run it (deploy/tools/image_test.py, about two
# minutes; report in runs/image-test/cpu). image-gpu builds the GPU target (about 3 GB) and checks its CUDA provider;
# CI builds it only when asked (NMTSERVE_IMAGE_GPU=1).
.PHONY: image-test image-gpu
image-test: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python deploy/tools/image_test.py cpu

image-gpu: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python deploy/tools/image_test.py gpu
