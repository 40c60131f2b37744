"""The reader turns every item into a row with a status; bad files become reasons, never exceptions."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from cbmir.ingestion.batches import (
    PIXEL_DTYPE,
    PIXELS,
    REASON,
    STATUS,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_PRESENT,
    item_row,
)
from cbmir.ingestion.reader import read_batch, sorted_id_array
from cbmir.ingestion.samples import BREASTMNIST_SUBSET
from cbmir.ingestion.sources import SourceItem
from cbmir.ingestion.wire import unpack
from cbmir.services.store import schema

SIZE = 224  # the input size of the default backbone


def _batch(items: list[SourceItem]) -> pa.Table:
    return pa.Table.from_pylist([item_row(item, "test") for item in items])


def test_unreadable_and_undecodable_files_become_failed_rows_with_reasons(tmp_path: Path,
                                                                           breastmnist_png_archive: Path) -> None:
    good = sorted((breastmnist_png_archive / "images").glob("*.png"))[0]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    noise = tmp_path / "noise.jpg"
    noise.write_bytes(bytes(range(256)) * 4)
    items = [SourceItem(uri=str(p), name=p.name) for p in (good, truncated, noise, tmp_path / "gone.png")]

    out = read_batch(_batch(items), input_size=SIZE).to_pylist()

    assert [row[STATUS] for row in out] == [STATUS_OK, STATUS_FAILED, STATUS_FAILED, STATUS_FAILED]
    assert all(row[REASON] for row in out[1:])
    assert out[3][REASON] == "file not found"
    # 28 x 28 is smaller than the model input: shipped at its own size, 8-bit as uint8.
    assert unpack(out[0][PIXELS], out[0]["shape"], out[0][PIXEL_DTYPE]).shape == (28, 28)
    assert out[0][PIXEL_DTYPE] == "uint8"


def test_ids_already_stored_are_marked_present_and_carry_no_pixels() -> None:
    items = [SourceItem(uri=str(BREASTMNIST_SUBSET), split="train", array_index=i, name=f"n{i}") for i in range(3)]
    first = read_batch(_batch(items), input_size=SIZE).to_pylist()
    stored = sorted_id_array({first[1][schema.ID]})

    again = read_batch(_batch(items), stored, input_size=SIZE).to_pylist()

    assert [row[STATUS] for row in again] == [STATUS_OK, STATUS_PRESENT, STATUS_OK]
    assert again[1][PIXELS] == b""
    assert [row[schema.ID] for row in again] == [row[schema.ID] for row in first]


def test_a_stored_pacs_instance_is_skipped_without_fetching_and_an_unreachable_one_fails_with_a_reason() -> None:
    import socket

    from cbmir.services.embedding import image_id
    from cbmir.services.embedding.decode import dicom_content_key

    with socket.socket() as sock:  # a port nothing listens on: any fetch would fail
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = f"dicomweb+http://127.0.0.1:{port}/dicom-web/studies/1.2.3/series/1.2.3.4/instances"
    stored, missing = SourceItem(uri=f"{root}/1.2.3.4.5", name="a.dcm"), SourceItem(uri=f"{root}/1.2.3.4.6", name="b")
    existing = sorted_id_array([image_id(dicom_content_key("1.2.3.4.5"), salt="salt")])
    out = read_batch(_batch([stored, missing]), existing, id_salt="salt", input_size=32).to_pylist()
    assert out[0]["status"] == "present" and out[0]["id"] == image_id(dicom_content_key("1.2.3.4.5"), salt="salt")
    assert out[1]["status"] == "failed" and "not reachable" in out[1]["reason"]


def test_a_rerun_skips_stored_dicom_and_png_files_without_decoding_them(tmp_path: Path, breastmnist_png_archive: Path,
                                                                        monkeypatch) -> None:
    import shutil

    from pydicom.data import get_testdata_file

    import cbmir.ingestion.reader as reader
    from cbmir.services.embedding.decode import decode_native, stored_content_key

    files = [Path(shutil.copy(get_testdata_file(name), tmp_path / name)) for name in ("CT_small.dcm", "MR_small.dcm")]
    files.append(sorted((breastmnist_png_archive / "images").glob("*.png"))[0])
    # The key read without decoding is the key the decode gives: the header's SOP Instance UID, or the bytes' hash.
    for path in files:
        assert stored_content_key(path.read_bytes()) == decode_native(path.read_bytes()).content_key
    assert stored_content_key(files[0].read_bytes()).startswith("dicom:")
    items = [SourceItem(uri=str(p), name=p.name) for p in files]
    first = read_batch(_batch(items), input_size=SIZE).to_pylist()
    assert [row[STATUS] for row in first] == [STATUS_OK] * 3

    def no_decode(*args, **kwargs):
        raise AssertionError("a stored image was decoded again")

    monkeypatch.setattr(reader, "decode_resized", no_decode)
    again = read_batch(_batch(items), sorted_id_array({row[schema.ID] for row in first}),
                       input_size=SIZE).to_pylist()

    assert [row[STATUS] for row in again] == [STATUS_PRESENT] * 3
    assert [row[schema.ID] for row in again] == [row[schema.ID] for row in first]


def test_a_dicom_header_that_cannot_be_read_keys_the_bytes_and_the_decode_says_why(tmp_path: Path) -> None:
    from cbmir.services.embedding.decode import file_content_key, stored_content_key

    broken = b"\0" * 128 + b"DICM" + b"\xff" * 40
    assert stored_content_key(broken) == file_content_key(broken)
    path = tmp_path / "broken.dcm"
    path.write_bytes(broken)

    out = read_batch(_batch([SourceItem(uri=str(path), name=path.name)]), input_size=SIZE).to_pylist()

    assert out[0][STATUS] == STATUS_FAILED and "DICOM" in out[0][REASON]
