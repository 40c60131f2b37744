"""`cbmir search IMAGE --sheet out.html|png`: the query beside its hits' stored thumbnails, as a person sees it."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbmir.cli import main
from cbmir.ingestion.config import IngestConfig
from cbmir.ingestion.runner import run_ingestion
from cbmir.services.embedding import EmbeddingModel
from cbmir.services.embedding.thumbnail import THUMBNAIL_MAX_BYTES, THUMBNAIL_SIZE, base64_length, thumbnail_jpeg
from cbmir.services.query.engine import RetrievalEngine
from cbmir.services.query.server import start_server
from cbmir.services.store import MilvusStore
from cbmir.services.store import schema as store_schema

COLLECTION = "sheet"
K = 5


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_local, breastmnist_png_archive: Path) -> Iterator[tuple[str, Path]]:
    """24 real ultrasound images ingested (thumbnails made at ingest) and served over real gRPC."""
    workdir = tmp_path_factory.mktemp("sheet")
    uri = str(workdir / "cbmir.db")
    report = run_ingestion(IngestConfig(source=str(breastmnist_png_archive), milvus_uri=uri, collection=COLLECTION,
                                        actors=1, batch_size=12, split="train", limit=24, report_path=None,
                                        progress=False))
    assert report.ingested == 24
    store = MilvusStore(uri)
    engine = RetrievalEngine(store, EmbeddingModel.load("efficientnet_lite0"), COLLECTION, max_top_k=20)
    running = start_server(engine, host="127.0.0.1", port=0)
    yield f"127.0.0.1:{running.port}", breastmnist_png_archive
    running.stop()
    store.close()


def _query(archive: Path) -> Path:
    return sorted((archive / "images").glob("train_*.png"))[3]


def _search(target: str, image: Path, *extra: str) -> None:
    assert main(["search", str(image), "--target", target, "--collection", COLLECTION, "-k", str(K),
                 "--log-level", "WARNING", *extra]) == 0


def test_html_sheet_shows_the_query_and_each_hit_with_its_thumbnail_rank_score_and_label(
        served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target, archive = served
    out = tmp_path / "out.html"
    _search(target, _query(archive), "--sheet", str(out))
    page = out.read_text()
    pictures = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(pictures) == K + 1  # the query and every hit carry a picture
    for encoded in pictures:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= THUMBNAIL_SIZE
    for rank in range(1, K + 1):
        assert f"#{rank}  score" in page
    assert "#1  score 1.000" in page  # the query's stored copy comes first
    assert page.count("label malignant") + page.count("label normal_benign") == K
    printed = capsys.readouterr()
    assert "base64" not in printed.out and len(printed.out) < 4000  # the terminal gets the table, not the pictures


def test_png_sheet_is_an_image_with_a_tile_per_hit(served, tmp_path: Path) -> None:
    target, archive = served
    out = tmp_path / "out.png"
    _search(target, _query(archive), "--sheet", str(out))
    with Image.open(out) as sheet:
        pixels = np.asarray(sheet.convert("L"))
    assert sheet.format == "PNG" and sheet.width > 6 * THUMBNAIL_SIZE
    assert pixels.std() > 20  # pictures and text, not a blank canvas


def test_a_search_without_sheet_asks_for_no_thumbnails(served, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    target, archive = served
    _search(target, _query(archive), "--json")
    assert '"thumbnail"' not in capsys.readouterr().out


def test_sheet_path_must_be_html_or_png(served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target, archive = served
    with pytest.raises(SystemExit) as stopped:
        main(["search", str(_query(archive)), "--target", target, "--sheet", str(tmp_path / "out.pdf")])
    assert stopped.value.code == 2
    assert "write .html or .png" in capsys.readouterr().err


def test_any_thumbnail_fits_the_store_field() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (900, 700, 3), dtype=np.uint8)  # the worst case for JPEG
    assert len(thumbnail_jpeg(noise)) <= THUMBNAIL_MAX_BYTES
    assert base64_length(THUMBNAIL_MAX_BYTES) <= store_schema.THUMBNAIL_MAX_LENGTH
    assert store_schema.THUMBNAIL not in store_schema.OUTPUT_FIELDS  # kilobytes per hit only when asked


def test_a_thumbnail_keeps_the_aspect_and_averages_fine_detail_away_as_lanczos_does() -> None:
    # 512 x 384, stripes of ~7 px period under a bright disc: a thumbnail must average the stripes to grey, as a
    # Lanczos downscale does (box 4 x 4 here, REDUCING_GAP), where nearest-neighbour keeps them (27 levels off).
    y, x = np.mgrid[0:384, 0:512]
    picture = 127 + 100 * np.sin(x / 1.1) * np.cos(y / 1.7) + 60 * ((x - 256) ** 2 + (y - 192) ** 2 < 90**2)
    picture = np.stack([picture, picture * 0.8, picture * 0.6], axis=2).clip(0, 255).astype(np.uint8)

    with Image.open(io.BytesIO(thumbnail_jpeg(picture))) as thumb:
        shown = np.asarray(thumb.convert("RGB"), dtype=np.float32)
    lanczos = np.asarray(Image.fromarray(picture).resize((128, 96), Image.Resampling.LANCZOS), dtype=np.float32)

    assert shown.shape == (96, 128, 3)
    assert np.abs(shown - lanczos).mean() < 15.0  # measured 9.0, JPEG quality 85 included; nearest: 27


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_chromium_renders_the_html_sheet_with_its_pictures(served, tmp_path: Path) -> None:
    target, archive = served
    out = tmp_path / "out.html"
    _search(target, _query(archive), "--sheet", str(out))
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1100,420", out.as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(shot) as rendered:
        grey = np.asarray(rendered.convert("L"), dtype=np.float32)
    # Each picture sits in a black 128 px box: the rendered page must show the boxes and, inside, the images.
    dark = grey < 40
    assert dark.mean() > 0.05
    assert grey[dark.any(axis=1)].std() > 30
