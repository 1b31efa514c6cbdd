# Two commands do everything from a fresh clone:
#   make run   - install into .venv and start the whole local stack (`cadre up`)
#   make test  - install into .venv and run the full test suite on embedded services
# Both need Python 3.11 (set PYTHON=/path/to/python3.11 if it is not `python3.11`/`python3`).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := embedded,dev
PYTEST_ARGS ?=

.PHONY: run test install system-deps lint constraints clean

run: install
	$(BIN)/cadre up $(ARGS)

test: install
	@$(BIN)/ruff check .
	@# pytest exits 5 when it collected no test: report it rather than fail the build.
	@$(BIN)/pytest $(PYTEST_ARGS); code=$$?; \
	  if [ $$code -eq 5 ]; then echo "pytest: no tests were collected"; exit 0; fi; exit $$code

install: $(STAMP) system-deps

$(BIN)/python:
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if v == (3, 11) else "Cadre needs Python 3.11, found %d.%d at $(PYTHON); run: make PYTHON=/path/to/python3.11" % v)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

# System packages the project needs at run time. bubblewrap runs the local code sandbox.
system-deps:
	@if command -v bwrap >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing bubblewrap (code sandbox) with apt-get"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null) \
	    || echo "warning: could not install bubblewrap; the local code sandbox will be unavailable"; \
	else \
	  echo "warning: bubblewrap is missing; install it (sudo apt-get install bubblewrap) for the local code sandbox"; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# Re-pin every installed package after a dependency change in pyproject.toml.
constraints: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@{ echo "# Every installed package, pinned: \`make\` installs with \`-c constraints.txt\`. Regenerate with"; \
	   echo "# \`make constraints\` after changing dependencies in pyproject.toml."; \
	   $(BIN)/python -m pip freeze --exclude-editable; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
