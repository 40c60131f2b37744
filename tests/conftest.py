"""Shared fixtures: real sample archives, a real local Ray, a Milvus Lite file per test."""

from __future__ import annotations

import atexit
import csv
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbmir.ingestion.samples import BREASTMNIST_SUBSET, build_dicom_archive
from cbmir.services.store.milvus_server import MilvusServer

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# The per-deployment id salt ($CBMIR_HOME/id-salt) is created on first use: never in the real home from a test. Set
# at import so subprocesses (cbmir ingest) and Ray workers inherit it; the directory is removed at exit.
if "CBMIR_HOME" not in os.environ:
    os.environ["CBMIR_HOME"] = tempfile.mkdtemp(prefix="cbmir-test-home-")
    atexit.register(shutil.rmtree, os.environ["CBMIR_HOME"], True)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One real local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    """One real Milvus 2.3 standalone on 127.0.0.1 free ports for the session (it takes a few seconds to start)."""
    if importlib.util.find_spec("milvus") is None:
        pytest.skip("the PyPI package `milvus` is not installed (pip install 'cbmir[server]')")
    with MilvusServer(data_dir=tmp_path_factory.mktemp("milvus-server")) as server:
        yield server


@pytest.fixture(scope="session")
def breastmnist_png_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped BreastMNIST subset as a PNG directory with a labels.csv (image, label, split)."""
    root = tmp_path_factory.mktemp("breastmnist")
    data = np.load(BREASTMNIST_SUBSET)
    rows = []
    for split in ("train", "test"):
        for i, (pixels, label) in enumerate(zip(data[f"{split}_images"], data[f"{split}_labels"], strict=True)):
            name = f"images/{split}_{i:03d}.png"
            (root / "images").mkdir(exist_ok=True)
            Image.fromarray(pixels).save(root / name)
            rows.append({"image": name, "label": ["malignant", "normal_benign"][int(label)], "split": split})
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def dicom_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real DICOM files of several modalities from pydicom / pydicom-data, with labels.csv (label = modality)."""
    return build_dicom_archive(tmp_path_factory.mktemp("dicom"))


@pytest.fixture
def milvus_uri(tmp_path: Path) -> str:
    return str(tmp_path / "cbmir.db")
