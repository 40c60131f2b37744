#!/usr/bin/env bash
# Set up cbmir from a fresh clone: a virtualenv in .venv, every dependency, and the generated gRPC stubs.
# Idempotent and quick when nothing changed (a stamp records the pyproject.toml it installed).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "cbmir needs Python 3.11, found " + sys.version' 

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi

stamp=.venv/.cbmir-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing dependencies (first time: a few minutes, ~6 GB)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # compat mode puts the checkout on sys.path, so generated stubs and Ray workers see the same tree.
  .venv/bin/python -m pip install --quiet -e ".[dev,server]" --config-settings editable_mode=compat
  echo "$want" > "$stamp"
fi

.venv/bin/python -m services.query.protogen
echo "setup: ready (.venv/bin/cbmir --help)"
