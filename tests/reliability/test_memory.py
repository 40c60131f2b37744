"""cbmir serve limits glibc's malloc arenas (the 40-client RSS bound of docs/reliability.md depends on it)."""

from __future__ import annotations

import ctypes.util
import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.system() != "Linux" or not ctypes.util.find_library("c"), reason="glibc only")
def test_serve_limits_malloc_arenas_unless_the_operator_set_them() -> None:
    probe = ("import os; from cbmir.services.query.memory import limit_malloc_arenas; "
             "print(limit_malloc_arenas())")
    env_free = {k: v for k, v in __import__("os").environ.items() if k != "MALLOC_ARENA_MAX"}
    applied = subprocess.run([sys.executable, "-c", probe], env=env_free, capture_output=True, text=True, check=True)
    assert applied.stdout.strip() == "True"
    theirs = subprocess.run([sys.executable, "-c", probe], env={**env_free, "MALLOC_ARENA_MAX": "4"},
                            capture_output=True, text=True, check=True)
    assert theirs.stdout.strip() == "False"
