"""Read tasks resize to the model's input before the object store: compact, fast, and the same vectors."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
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
from cbmir.services.embedding.resize import resize_unit, unit_pixels

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


def test_resize_is_torchs_antialiased_bilinear_and_embeds_alike(real_images: dict[str, bytes]) -> None:
    """resize_unit (Pillow, torch-free, so read workers never import torch) gives the pixels of
    torch.nn.functional.interpolate(antialias=True), the resize cbmir used before, on the real images read tasks
    resize; vectors of stored collections made with that resize stay valid for queries."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - the usual name

    model = EmbeddingModel.load("efficientnet_lite0", precision="fp32")
    ours, theirs = [], []
    for data in real_images.values():
        native = unit_pixels(decode_native(data, min_size=2 * SIZE).pixels)
        chw = torch.from_numpy(native).unsqueeze(0) if native.ndim == 2 else torch.from_numpy(native).permute(2, 0, 1)
        reference = F.interpolate(chw.unsqueeze(0), size=(SIZE, SIZE), mode="bilinear", align_corners=False,
                                  antialias=True)[0].numpy()
        resized = resize_unit(native, SIZE)
        assert resized.shape == reference.shape and resized.dtype == np.float32
        np.testing.assert_allclose(resized, reference, atol=1e-4)
        # as model.embed takes images: HxW or HxWx3 (already at the input size, so it resizes nothing)
        ours.append(resized[0] if len(resized) == 1 else resized.transpose(1, 2, 0))
        theirs.append(reference[0] if len(reference) == 1 else reference.transpose(1, 2, 0))
    a, b = model.embed(ours), model.embed(theirs)
    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert float(cosines.min()) >= 0.9999


def test_a_read_worker_decodes_without_importing_torch(tmp_path: Path) -> None:
    """The read task as Ray ships it (cloudpickle, by reference to its module) runs in a fresh process without
    torch: each read worker starts ~1.4 core-seconds sooner and ~300 MB smaller."""
    import cloudpickle

    from cbmir.ingestion.reader import read_task

    path = tmp_path / "large.jpg"
    path.write_bytes(_large_jpeg(sorted(_shared("brain-mri").rglob("*.jpg"))[0], "L"))
    task = tmp_path / "task.pickle"
    task.write_bytes(cloudpickle.dumps(read_task))
    code = (
        "import sys, cloudpickle, pyarrow as pa, ray\n"
        "from pathlib import Path\n"
        f"task = cloudpickle.loads(Path({str(task)!r}).read_bytes())\n"
        "assert 'torch' not in sys.modules, 'unpickling the read task imported torch'\n"
        "from cbmir.ingestion.batches import item_row\n"
        "from cbmir.ingestion.sources import SourceItem\n"
        f"item = item_row(SourceItem(uri={str(path)!r}, name='large.jpg'), 'test')\n"
        "import cbmir.ingestion.reader as reader\n"
        "row = reader.read_batch(pa.Table.from_pylist([item]), input_size=224).to_pylist()[0]\n"
        "assert row['status'] == 'ok' and row['shape'] == [224, 224], row\n"
        "print(sorted(m for m in ('torch', 'pymilvus') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


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
