"""The default install is free of GPL code, and docs/licences.md lists every runtime dependency it installs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("licences", ROOT / "scripts" / "licences.py")
assert spec is not None and spec.loader is not None
licences = importlib.util.module_from_spec(spec)
spec.loader.exec_module(licences)


def test_no_runtime_dependency_of_the_default_install_is_gpl() -> None:
    closure = licences.runtime_closure()
    assert {"pydicom", "torch", "pymilvus", "python-gdcm"} <= closure
    gpl = {name: licences.licence_of(name) for name in closure if licences.is_gpl(licences.licence_of(name))}
    assert gpl == {}, f"GPL in the default install: {gpl} (make it an opt-in extra, see docs/licences.md)"
    assert "pylibjpeg-libjpeg" in licences.runtime_closure(("gpl-jpeg",)) - closure


def test_the_licence_page_lists_every_runtime_dependency() -> None:
    page = (ROOT / "docs" / "licences.md").read_text()
    listed = {line.split("|")[1].strip() for line in page.splitlines() if line.startswith("| ") and "---" not in line}
    missing = licences.runtime_closure() - listed
    assert not missing, f"docs/licences.md misses {sorted(missing)}: run .venv/bin/python scripts/licences.py"


def test_gpl_is_recognised_and_lgpl_is_not_counted() -> None:
    assert licences.is_gpl("GNU General Public License v3 (GPLv3)") and licences.is_gpl("AGPL-3.0-only")
    assert not licences.is_gpl("GNU Lesser General Public License v2 or later (LGPLv2+)")
    assert not licences.is_gpl("LGPL-2.1-or-later") and not licences.is_gpl("Apache-2.0")
