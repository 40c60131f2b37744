"""Fixtures of the benchmark and evaluation tests."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbmir.ingestion.samples import BREASTMNIST_SUBSET


def write_patient_archive(root: Path, label_of: Callable[[int, np.ndarray], str], patient_prefix: str = "",
                          count: int = 24) -> Path:
    """`count` images, patient i // 2; `label_of(index, labels)` names the tissue label of image `index`."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    data = np.load(BREASTMNIST_SUBSET)
    rows = []
    for i in range(count):
        name = f"images/img{i:02d}.png"
        Image.fromarray(data["train_images"][i]).save(root / name)
        rows.append({"image": name, "patient_id": f"{patient_prefix}{i // 2}",
                     "tissue": label_of(i, data["train_labels"])})
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "patient_id", "tissue"])
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def patient_archive_writer() -> Callable[..., Path]:
    """A MIAS-like archive for tests: BreastMNIST PNGs, two per 'patient', manifest image,patient_id,tissue."""
    return write_patient_archive


@pytest.fixture(scope="session")
def speed_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny clinical-size corpus (an image of every format) for the corpus and decode benchmark tests."""
    from cbmir.bench.corpus import FORMAT_NAMES, build_corpus

    out = tmp_path_factory.mktemp("speed-corpus")
    build_corpus(out, count=len(FORMAT_NAMES), seed=3, progress=False, workers=2, say=lambda _: None)
    return out
