# The two commands a fresh machine needs:  make demo  and  make test
#
#   make install              CPU PyTorch (no CUDA download) + movierec + test tools, into .venv
#   make install TORCH=cu126  a CUDA build from PyTorch's index instead (TORCH=cuda: PyPI's CUDA 13 build)
#   make demo [PORT=8100] [MOVIEREC_HOME=/tmp/x]
#   make test [STRICT=1]      checks prerequisites, lints (ruff, mypy), runs pytest; STRICT=1 (CI) fails on any missing component
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
TORCH   ?= cpu
DATA    ?= ../shared/data
MOVIEREC_HOME ?= artifacts
PORT    ?= 8000
STRICT  ?=
PYTEST_ARGS ?= -q
# The MongoDB wire server the tests start (mongoeco needs Python >= 3.13, so it has its own venv).
MONGOECO_VENV ?= $(VENV)/mongoeco
STAMP    = $(VENV)/.installed-torch-$(TORCH)

.PHONY: demo test install test-deps check lint clean bench

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/install.py
	@$(PY) scripts/install.py --check-python
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python scripts/install.py --torch $(TORCH)
	@rm -f $(VENV)/.installed-torch-*
	@touch $@

## test-deps: what the tests need beyond the package: the MongoDB wire server's venv
test-deps: $(MONGOECO_VENV)/installed.txt

$(MONGOECO_VENV)/installed.txt: tests/mongo_server.py | $(STAMP)
	$(BIN)/python tests/mongo_server.py --install $(MONGOECO_VENV) $(if $(STRICT),--strict)

## check: every component the tests use is there (STRICT=1: a missing one stops here)
check: $(STAMP)
	@MONGOECO_VENV=$(abspath $(MONGOECO_VENV)) MOVIEREC_DATA=$(DATA) \
		$(BIN)/python scripts/check_prereqs.py $(if $(STRICT),--strict)

## demo: data -> prepare -> train (bounded, reused) -> evaluate -> recommend -> API on $(PORT)
demo: install
	$(BIN)/movierec demo --data-root $(DATA) --home $(MOVIEREC_HOME) --port $(PORT)

## lint: ruff (style, imports, bugbear) and mypy (types) over the package
lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/mypy

## test: lint, then the whole test suite (what .ci/run calls, with STRICT=1)
test: install test-deps check lint
	@MONGOECO_VENV=$(abspath $(MONGOECO_VENV)) MOVIEREC_DATA=$(DATA) $(if $(STRICT),MOVIEREC_STRICT_TESTS=1) \
		$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status = 5 ]; then echo "error: pytest collected no tests (PYTEST_ARGS=$(PYTEST_ARGS))" >&2; fi; \
	exit $$status

bench: install
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) $(MOVIEREC_HOME)

## Containers (docs/containers.md). images: both images with the local Docker (TORCH=cu126 for the CUDA builds)
IMAGE_TAG ?= local
DOCKER    ?= docker
.PHONY: images compose-check compose-up kind-cluster skaffold-dev

images:
	$(DOCKER) build -f services/Dockerfile --build-arg TORCH=$(TORCH) -t movierec:$(IMAGE_TAG) .
	$(DOCKER) build -f services/Dockerfile.torchserve --build-arg TORCH=$(TORCH) \
		$(if $(filter-out cpu,$(TORCH)),--build-arg BASE_TAG=0.12.0-gpu) -t movierec-torchserve:$(IMAGE_TAG) .

## compose-check: what works without Docker: hadolint, `docker-compose config`, skaffold.yaml against its schema
compose-check: $(STAMP)
	$(BIN)/hadolint --config .hadolint.yaml services/Dockerfile services/Dockerfile.torchserve
	$(BIN)/docker-compose -f docker-compose.yml config --quiet
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests/test_containers.py

## compose-up: the whole platform on this machine (first run trains a small model in the init service)
compose-up:
	@test -f .env || cp .env.example .env
	$(DOCKER) compose up --build

## kind-cluster, skaffold-dev: the dev loop on kind (README "Dev loop on kind")
kind-cluster:
	kind create cluster --config manifests/kind/cluster.yaml

skaffold-dev:
	skaffold dev --kube-context kind-movierec
