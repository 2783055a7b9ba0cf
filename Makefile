# The two commands a fresh machine needs:  make demo  and  make test
#
#   make install              CPU PyTorch (no CUDA download) + movierec + test tools, into .venv
#   make install TORCH=cu126  a CUDA build from PyTorch's index instead (TORCH=cuda: PyPI's CUDA 13 build)
#   make demo [PORT=8100] [MOVIEREC_HOME=/tmp/x]
#   make test [STRICT=1]      checks prerequisites, lints (ruff, mypy), runs pytest; STRICT=1 (CI) fails on any missing component
#   make web                  the web page the API serves at / (Next.js, needs Node >= 20; install and demo build it when Node is there)
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

.PHONY: demo test install test-deps system-deps check lint clean bench

install: $(STAMP) web

$(STAMP): pyproject.toml constraints.txt scripts/install.py
	@$(PY) scripts/install.py --check-python
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python scripts/install.py --torch $(TORCH)
	@rm -f $(VENV)/.installed-torch-*
	@touch $@

## test-deps: what the tests need beyond the package: the MongoDB wire server's venv
test-deps: system-deps $(MONGOECO_VENV)/installed.txt

## system-deps: the Debian packages the tests use, when missing: Java 17 (TorchServe), Chromium (the page's tests).
## As root with apt-get they are installed; otherwise this says what to install (and `make check` names them too).
SYSTEM_PACKAGES = java:openjdk-17-jre-headless chromium:chromium
system-deps:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
		command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing$$missing (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "missing Debian packages:$$missing (sudo apt-get install$$missing)"; fi

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
test: install test-deps check lint web-check
	@MONGOECO_VENV=$(abspath $(MONGOECO_VENV)) MOVIEREC_DATA=$(DATA) $(if $(STRICT),MOVIEREC_STRICT_TESTS=1) \
		$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status = 5 ]; then echo "error: pytest collected no tests (PYTEST_ARGS=$(PYTEST_ARGS))" >&2; fi; \
	exit $$status

## web: the page the API serves at / (Next.js static export into services/web/out). Without Node >= 20 it says
## so and the API runs without its page (/ explains); STRICT=1 makes that an error (the browser tests need it).
WEB      = services/web
NODE_OK := $(shell node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' 2>/dev/null && echo yes)
WEB_SOURCES = $(shell find $(WEB)/app $(WEB)/components $(WEB)/lib -type f 2>/dev/null) \
	$(WEB)/package.json $(WEB)/next.config.ts $(WEB)/tsconfig.json
.PHONY: web web-check

web:
ifeq ($(NODE_OK),yes)
	@$(MAKE) --no-print-directory $(WEB)/out/index.html
else
	@echo "web: no Node.js >= 20 on PATH ($$(node --version 2>/dev/null || echo none)): the API runs without its page;" \
		"install Node.js 20 or later, then make web" >&2
	@$(if $(STRICT),echo "error: STRICT=1: the web page and its browser tests need Node.js >= 20" >&2; exit 2,true)
endif

$(WEB)/node_modules/.package-lock.json: $(WEB)/package-lock.json
	cd $(WEB) && NEXT_TELEMETRY_DISABLED=1 npm ci --no-audit --no-fund
	@touch $@

$(WEB)/out/index.html: $(WEB)/node_modules/.package-lock.json $(WEB_SOURCES)
	cd $(WEB) && NEXT_TELEMETRY_DISABLED=1 npm run build
	@touch $@

## web-check: the page's type check (tsc --noEmit), eslint and unit tests (vitest); part of make test
web-check: web
ifeq ($(NODE_OK),yes)
	cd $(WEB) && NEXT_TELEMETRY_DISABLED=1 npm run --silent check
endif

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
