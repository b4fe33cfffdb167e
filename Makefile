# The README's two commands: `make run` and `make test`.
SHELL := /bin/bash
KB := .venv/bin/kb
export KB_DATA_DIR ?= data
HOST ?= 127.0.0.1
PORT ?= 8000
QUESTION ?= What is the default upload size limit, and what happens to a larger file?

.PHONY: setup run demo serve test clean

setup:
	bash deploy/setup.sh

# Ingest the samples, answer a question with citations, then serve the API and the web page.
run: setup
	$(KB) ingest samples
	$(KB) ask "$(QUESTION)"
	@echo "==> serving http://$(HOST):$(PORT)  (web page /, OpenAPI /schema)"
	$(KB) serve --host $(HOST) --port $(PORT)

test:
	bash deploy/setup.sh --with-browser
	.venv/bin/python -m pytest -q -ra --durations=25 -n 2 --dist loadfile --no-loadscope-reorder

clean:
	rm -rf data .pytest_cache
