#!/usr/bin/env bash
# Set up cbmir from a fresh clone: a virtualenv in .venv, every dependency, and cbmir itself (editable; building
# it generates the gRPC stubs of proto/ into cbmir/v1/). Idempotent and quick when nothing changed (a stamp
# records the build inputs it installed: pyproject.toml, setup.py and the .proto files).
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
want=$(cat pyproject.toml setup.py proto/cbmir/v1/*.proto | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing dependencies (first time: a few minutes, ~6 GB)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # Editable: the folders of this checkout map into the one `cbmir` package (pyproject [tool.setuptools]).
  .venv/bin/python -m pip install --quiet -e ".[dev,server]"
  echo "$want" > "$stamp"
fi

# dcmtk (storescu, echoscu): the DICOM peer nobody here wrote, for the dicom-node tests (docs/pacs.md). Debian only,
# and only as root; elsewhere those tests skip.
if ! command -v storescu >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing dcmtk (apt)"
  apt-get install -y -qq dcmtk >/dev/null
fi

echo "setup: ready (.venv/bin/cbmir --help)"
