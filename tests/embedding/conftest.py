"""pytest setup for the embedding tests."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    # Small CI machines: keep torch from oversubscribing the cores when model tests run.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
