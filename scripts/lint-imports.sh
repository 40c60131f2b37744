#!/usr/bin/env bash
# Check the import layers of pyproject.toml ([tool.importlinter]) on the package as a wheel installs it.
# The source tree maps its top folders (services/, ingestion/, ...) into `cbmir`, which import-linter cannot
# follow (and, run from the checkout, it would find cbmir/ there first), so the package is built and installed into a scratch folder first (a few seconds, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation --no-compile --target "$scratch/site" . \
  2> >(grep -v "WARNING: Location" >&2)
# Run from the scratch folder: import-linter puts the working directory first on sys.path.
config="$PWD/pyproject.toml" linter="$PWD/.venv/bin/lint-imports"
cd "$scratch/site" && PYTHONPATH="$scratch/site" "$linter" "$config"
