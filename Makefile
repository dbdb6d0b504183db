# `make serve` and `make test` each set up everything they need on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
HOST   ?= 127.0.0.1
PORT   ?= 8000
TORCH_VERSION ?= 2.13.0
# Where pip finds torch. Empty: pip's usual index, whose Linux x86_64 torch is the CUDA build
# (what a GPU machine wants, several GB). On a CPU-only machine that has no local CPU wheel,
# point it at PyTorch's CPU wheel index: make serve TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: serve test lint format bench clean

# Re-install only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch pinned on its own first: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# the compiled CPU decoding code, into numba's disk cache (about 30 s, once; as the image build does)
	$(BIN)/python -c "from app.lm.generate import precompile; precompile()"
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m app serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff, then the type checker on app/ ([tool.mypy] in pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check app tests bench
	$(BIN)/ruff format --check app tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format app tests bench
	$(BIN)/ruff check --fix app tests bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache

# Build the Docker image with podman and smoke-test it in a chroot (root; minutes, a few GB).
# Deliberately not part of `test` or .ci/run: see scripts/verify-image.sh.
.PHONY: verify-image
verify-image:
	scripts/verify-image.sh
