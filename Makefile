# The two commands of the README: `make demo` (set up, then run the main job) and `make test`.
.PHONY: setup demo test lint
setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/cbmir demo

test: lint
	.venv/bin/python -m pytest -q

# ruff, and the import layers of docs/DESIGN.md (import-linter, pyproject [tool.importlinter])
lint: setup
	.venv/bin/ruff check .
	./scripts/lint-imports.sh
