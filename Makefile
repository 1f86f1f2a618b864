# Quick start: `make demo` (train and compare offline) and `make test` (lint + test suite).
# Both create .venv when it is missing. torch/torchvision install through constraints.txt.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
CACHE  ?= $(HOME)/.cache/imgclass

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	PATH="$(CURDIR)/$(BIN):$$PATH" CACHE="$(CACHE)" bash scripts/demo.sh

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench

test: lint
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/digits.py
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/classical_vs_sklearn.py
	$(BIN)/python bench/cifar_classical.py
	$(BIN)/python bench/embed_throughput.py
	$(BIN)/python bench/cifar_frozen.py
	$(BIN)/python bench/cifar_deep.py ../shared/datasets/cifar10-12k smallcnn

clean:
	rm -rf $(VENV) runs .pytest_cache
