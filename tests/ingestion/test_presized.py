"""Read tasks resize to the model's input before the object store: compact, fast, and the same vectors."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from cbmir.ingestion.batches import ID, PIXEL_DTYPE, PIXELS, SHAPE, STATUS, STATUS_OK, STATUS_PRESENT, item_row
from cbmir.ingestion.reader import read_batch, sorted_id_array
from cbmir.ingestion.sources import SourceItem
from cbmir.ingestion.wire import unpack
from cbmir.services.embedding import EmbeddingModel, decode_image, decode_resized, image_id
from cbmir.services.embedding.decode import decode_native

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
SIZE = 224  # efficientnet_lite0's input
LARGE = (3000, 2400)  # a clinical-size radiograph, width x height


def _shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data set not present: {path}")
    return path


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _large_jpeg(path: Path, mode: str) -> bytes:
    """A real image upscaled to 3000 x 2400 and re-encoded: the size of a chest radiograph."""
    return _jpeg(Image.open(path).convert(mode).resize(LARGE, Image.Resampling.BICUBIC))


def _read(paths: list[Path]) -> list[dict]:
    table = pa.Table.from_pylist([item_row(SourceItem(uri=str(p), name=p.name), "test") for p in paths])
    return read_batch(table, input_size=SIZE).to_pylist()


@pytest.fixture(scope="module")
def real_images() -> dict[str, bytes]:
    """Real brain-MRI JPEGs (512 px), MIAS PNGs (1024 px) and four of them re-encoded as 3000 x 2400 JPEGs."""
    brain = sorted(_shared("brain-mri").rglob("*.jpg"))[:: 97][:8]
    mias = sorted(_shared("mias").rglob("*.png"))[:: 53][:4]
    images = {p.name: p.read_bytes() for p in (*brain, *mias)}
    for i, path in enumerate((*brain[:2], *mias[:2])):
        images[f"large-{i}-{path.stem}.jpg"] = _large_jpeg(path, "RGB" if i % 2 else "L")
    return images


def test_fast_path_embeds_like_full_decode_and_resize(real_images: dict[str, bytes]) -> None:
    """JPEG draft / Pillow reduce / uint8 on the wire change the vectors by far less than the 0.99 cosine bar."""
    model = EmbeddingModel.load("efficientnet_lite0", precision="fp32")
    names = sorted(real_images)
    full = model.embed([decode_image(real_images[n]).pixels for n in names])
    fast = model.embed([decode_resized(real_images[n], model.preprocessing.input_size).pixels for n in names])
    cosines = (full * fast).sum(1) / (np.linalg.norm(full, axis=1) * np.linalg.norm(fast, axis=1))
    worst = names[int(np.argmin(cosines))]
    print(f"\ncosine fast vs full over {len(names)} real images: median {np.median(cosines):.5f}, "
          f"min {cosines.min():.5f} ({worst})")
    assert any(n.startswith("large-") for n in names)
    assert float(np.median(cosines)) >= 0.99
    assert float(cosines.min()) >= 0.98, f"{worst}: cosine {cosines.min():.4f}"


def test_large_jpeg_decodes_at_a_dct_scale_still_twice_the_input(real_images: dict[str, bytes]) -> None:
    data = next(v for k, v in real_images.items() if k.startswith("large-"))
    native = decode_native(data, min_size=2 * SIZE)
    height, width = native.pixels.shape[:2]
    assert min(height, width) >= 2 * SIZE  # the final resize still averages >= 2 x 2 pixels
    assert (width, height) == (LARGE[0] // 4, LARGE[1] // 4)  # 1/4 is the smallest DCT scale that keeps that
    assert native.pixels.dtype == np.uint8  # never a full-size float copy of an 8-bit image


def test_read_tasks_ship_model_sized_pixels_compactly(tmp_path: Path) -> None:
    """Resized images go as uint16 (8 bits would round off the averages), small 8-bit ones as their own uint8."""
    mias = sorted(_shared("mias").rglob("*.png"))[0]
    grey = np.asarray(Image.open(mias).convert("L"), dtype=np.uint16)
    sixteen = tmp_path / "mammogram-16bit.png"
    Image.fromarray((grey * 257).astype(np.uint16)).save(sixteen)  # 16 bits used
    large = tmp_path / "large.jpg"
    large.write_bytes(_large_jpeg(mias, "RGB"))

    small = tmp_path / "small.png"
    Image.open(mias).convert("L").resize((200, 160)).save(small)

    rows = _read([mias, sixteen, large, small])

    assert [r[STATUS] for r in rows] == [STATUS_OK] * 4
    assert [(r[SHAPE], r[PIXEL_DTYPE]) for r in rows] == [
        ([SIZE, SIZE], "uint16"), ([SIZE, SIZE], "uint16"), ([SIZE, SIZE, 3], "uint16"), ([160, 200], "uint8")]
    assert len(rows[2][PIXELS]) == SIZE * SIZE * 3 * 2  # 301 KB on the wire, not 3000 x 2400 x 3 x 4 = 86 MB
    # The 16-bit copy is the 8-bit image x 257: the same picture, up to the rounding of the 2x2 box averages
    # Pillow's reduce keeps in the source's own depth (8 bits: half a level).
    eight = unpack(rows[0][PIXELS], rows[0][SHAPE], rows[0][PIXEL_DTYPE]).astype(np.float64) / 65535
    wide = unpack(rows[1][PIXELS], rows[1][SHAPE], rows[1][PIXEL_DTYPE]).astype(np.float64) / 65535
    assert np.abs(eight - wide).max() <= 0.5 / 255 + 2 / 65535


def test_query_service_and_read_tasks_compute_the_same_pixels(tmp_path: Path) -> None:
    """The service calls decode_resized too, so a stored vector and a query vector come from equal pixels."""
    path = tmp_path / "large.jpg"
    path.write_bytes(_large_jpeg(sorted(_shared("brain-mri").rglob("*.jpg"))[0], "L"))
    row = _read([path])[0]
    query = decode_resized(path.read_bytes(), SIZE)
    np.testing.assert_array_equal(unpack(row[PIXELS], row[SHAPE], row[PIXEL_DTYPE]), query.pixels)
    assert row[ID] == image_id(query.content_key)


def test_a_stored_file_is_skipped_before_it_is_decoded(tmp_path: Path) -> None:
    """The id is the hash of the file's bytes: a rerun finds it without decoding (these bytes would not decode)."""
    path = tmp_path / "not-an-image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    stored_id = image_id("sha256:" + hashlib.sha256(path.read_bytes()).hexdigest())
    table = pa.Table.from_pylist([item_row(SourceItem(uri=str(path), name=path.name), "test")])

    row = read_batch(table, sorted_id_array([stored_id]), input_size=SIZE).to_pylist()[0]

    assert (row[STATUS], row[ID], row[PIXELS]) == (STATUS_PRESENT, stored_id, b"")
