"""`cbmir bench decode` on a tiny clinical-size corpus: every candidate of every format runs, lands on the model's
input size, and its embeddings stay close to cbmir's full decode + resize."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbmir.bench.corpus import FORMAT_NAMES, SHARED_DATA
from cbmir.bench.decode import (
    INPUT_SIZE,
    REFERENCE,
    DecodeBenchConfig,
    bare_decode_rate,
    candidates,
    decode_plot,
    decode_table,
    run_decode_bench,
)

pytestmark = pytest.mark.skipif(not (SHARED_DATA / "mias" / "labels.csv").is_file(),
                                reason=f"needs the shared data at {SHARED_DATA}")


@pytest.fixture
def corpus(speed_corpus: Path) -> Path:
    return speed_corpus


def test_every_candidate_gives_the_model_input_close_to_cbmirs_pixels(corpus: Path) -> None:
    for path in sorted((corpus / "images").iterdir()):
        fmt = path.stem.split("-", 1)[1]
        data = path.read_bytes()
        found = candidates(fmt)
        reference = found[REFERENCE](data)
        assert reference.shape == (INPUT_SIZE, INPUT_SIZE)
        for name, decode in found.items():
            pixels = decode(data)
            assert pixels.shape == reference.shape and pixels.dtype == np.float32, (fmt, name)
            # same picture, same [0, 1] scale: a candidate that mis-scaled 12-bit data would be off by 16x
            assert float(np.abs(pixels - reference).mean()) < 0.02, (fmt, name)


def test_decode_bench_records_speed_per_core_and_embedding_agreement(corpus: Path, tmp_path: Path) -> None:
    config = DecodeBenchConfig(source=str(corpus), images_per_format=1, agreement_per_format=1, processes=1)
    record = run_decode_bench(config, progress=lambda _: None)
    rows = record["rows"]
    assert {r["format"] for r in rows} == set(FORMAT_NAMES)
    for row in rows:
        assert row["median_ms"] > 0 and max(row["width"], row["height"]) >= 2048
        assert row["cosine_median"] > 0.95, row  # the bar is 0.99 median over ~30 images: see the record
        if row["candidate"] == REFERENCE:
            assert row["parallel_img_s"] > 0 and row["cosine_min"] == pytest.approx(1.0, abs=1e-4)
    json.dumps(record, default=float)
    assert "candidate" in decode_table(record) and decode_plot(record, tmp_path).exists()


def test_bare_decode_rate_runs_one_process_per_core(corpus: Path) -> None:
    paths = [str(p) for p in sorted((corpus / "images").iterdir())[:2]]
    assert bare_decode_rate(paths, processes=2) > 0
