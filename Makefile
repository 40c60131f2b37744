# The two commands of the README: `make demo` (set up, then run the main job) and `make test`.
.PHONY: setup demo test lint
setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/cbmir demo

# Two workers, whole test files each (pytest-xdist --dist loadfile: module fixtures stay in one process). Most of
# the suite waits on Ray, Milvus and gRPC start-ups, so two workers on 2 cores cut the wall time by about a third.
# Tests that count or kill every Ray process of the machine (marker machine_wide) run after, alone. The 15
# slowest are listed at the end, so every CI log says where the suite's time goes (the target is ~10 minutes).
test: lint
	.venv/bin/python -m pytest -q -n 2 --dist loadfile -m "not slow and not machine_wide" --durations=15
	.venv/bin/python -m pytest -q -m "machine_wide and not slow"

# ruff, and the import layers of docs/DESIGN.md (import-linter, pyproject [tool.importlinter])
lint: setup
	.venv/bin/ruff check .
	./scripts/lint-imports.sh
