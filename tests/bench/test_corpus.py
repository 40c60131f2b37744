"""`cbmir bench corpus`: every format and DICOM syntax decodes with cbmir's own decoder at its declared size, and a
second run keeps what the first wrote."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from cbmir.bench.corpus import FORMAT_NAMES, SHARED_DATA, build_corpus, list_sources
from cbmir.services.embedding import decode_image

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "mias" / "labels.csv").is_file(),
                                reason=f"needs the shared data at {SHARED_DATA}")


@pytest.fixture
def corpus(speed_corpus: Path) -> Path:
    return speed_corpus


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_format_decodes_with_cbmir_at_its_declared_clinical_size(corpus: Path) -> None:
    rows = _manifest(corpus)
    assert sorted(r["format"] for r in rows) == sorted(FORMAT_NAMES)  # nothing skipped: every encoder is here
    for row in rows:
        width, height = int(row["width"]), int(row["height"])
        assert max(width, height) >= 2048
        decoded = decode_image((corpus / row["path"]).read_bytes())
        assert decoded.pixels.shape[:2] == (height, width), row
        assert decoded.pixels.std() > 0.01, row  # real picture content, not a blank frame
        if row["format"].startswith("dicom"):
            assert decoded.metadata["format"] == "dicom"
            assert decoded.metadata["bits"] == row["bits"], row


def test_readme_says_speed_not_quality_and_manifest_labels_come_from_the_sources(corpus: Path) -> None:
    readme = (corpus / "README.md").read_text()
    assert "SPEED, not for quality" in readme and "upscaled" in readme
    labels = {s.label for s in list_sources(SHARED_DATA)}
    assert all(row["label"] in labels for row in _manifest(corpus))


def test_rerun_keeps_the_files_already_written_and_adds_the_missing_ones(corpus: Path, tmp_path: Path) -> None:
    corpus = Path(shutil.copytree(corpus, tmp_path / "corpus"))  # the shared corpus stays as built
    before = {p.name: p.stat().st_mtime_ns for p in (corpus / "images").iterdir()}
    report = build_corpus(corpus, count=len(FORMAT_NAMES) + 1, seed=3, progress=False, workers=1,
                          say=lambda _: None)
    assert (report.written, report.skipped) == (1, len(FORMAT_NAMES))
    after = {p.name: p.stat().st_mtime_ns for p in (corpus / "images").iterdir()}
    assert {k: after[k] for k in before} == before
    assert len(_manifest(corpus)) == len(FORMAT_NAMES) + 1
