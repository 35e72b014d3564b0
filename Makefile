# The README's two commands: `make book` builds the whole book, `make test` runs every test.
# Both first run `make setup`, which creates .venv and installs moecalc with its extras
# (once: it is redone only when pyproject.toml or constraints.txt changes). constraints.txt pins
# the exact versions the committed notebooks were executed with.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup book test clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "moecalc needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,book]'
	touch $(STAMP)

# Executes the notebooks whose inputs changed (book/executed/, committed), regenerates the
# table of contents and builds book/_build/html. `$(BIN)/moecalc book --force` re-executes all.
book: setup
	$(BIN)/moecalc book

# tests/ and nbval over every executed notebook, on 2 xdist workers (see pyproject.toml).
test: setup
	$(BIN)/python -m pytest -n 2

clean:
	rm -rf book/_build
