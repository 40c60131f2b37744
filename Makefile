# The two commands of the README: `make demo` (set up, then run the main job) and `make test`.
.PHONY: setup demo test lint
setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/cbmir demo

test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check .
