"""Decompression bombs under the byte limits: refused from their headers, and decode memory in flight bounded."""

from __future__ import annotations

import io
import struct
import zlib

import grpc
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cbmir.services.embedding import ImageDecodeError, decode_image
from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.engine import DEFAULT_MAX_IMAGE_PIXELS
from cbmir.services.query.server import start_server


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A valid grey 8-bit PNG of width x height zeros: a few hundred KB declaring width*height pixels."""
    deflate = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def deflated_dicom_bomb(zeros: int) -> bytes:
    """A real small CT in the Deflated transfer syntax (written by pydicom), plus a private element of `zeros`
    zero bytes appended to its data set before deflating."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    written = io.BytesIO()
    ds.save_as(written, enforce_file_format=True)
    data = written.getvalue()
    meta_end = 132 + 12 + struct.unpack_from("<I", data, 132 + 8)[0]
    dataset = zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    # (7FE1,0010) LO private creator, then (7FE1,1001) OB of `zeros` bytes: after every standard element.
    creator = b"CBMIR BOMB"
    parts = [deflate.compress(dataset)]
    if zeros:
        parts += [deflate.compress(struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", len(creator)) + creator),
                  deflate.compress(struct.pack("<HH2sHI", 0x7FE1, 0x1001, b"OB", 0, zeros))]
        block = b"\x00" * (16 * 1024 * 1024)
        parts += [deflate.compress(block) for _ in range(zeros // len(block))]
    parts.append(deflate.flush())
    return data[:meta_end] + b"".join(parts)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"png_13000": png_bomb(13000, 13000), "dicom_1gib": deflated_dicom_bomb(1 << 30)}


@pytest.fixture(scope="module")
def server(corpus):
    # A small budget so the test can fill it: 24 MiB, while a 2000x2000 grey PNG costs ~19 MiB to decode.
    engine = corpus.engine(decode_budget_bytes=24 * 1024 * 1024)
    running = start_server(engine, host="127.0.0.1", port=0)
    client = RetrievalClient(f"127.0.0.1:{running.port}", timeout=60)
    yield engine, client
    client.close()
    running.stop()


def test_the_bombs_are_small_files(bombs) -> None:
    assert len(bombs["png_13000"]) < 400_000 and len(bombs["dicom_1gib"]) < 2_000_000


def test_a_png_declaring_13000_squared_is_refused_from_its_header_naming_the_limit(server, bombs) -> None:
    _, client = server
    with pytest.raises(grpc.RpcError) as raised:
        client.search(image=bombs["png_13000"], top_k=3)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "13000x13000" in raised.value.details() and str(DEFAULT_MAX_IMAGE_PIXELS) in raised.value.details()


def test_a_deflated_dicom_that_inflates_to_a_gibibyte_is_refused(server, bombs) -> None:
    _, client = server
    with pytest.raises(grpc.RpcError) as raised:
        client.search(image=bombs["dicom_1gib"], top_k=3)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inflates to more than" in raised.value.details()
    with pytest.raises(ImageDecodeError, match="inflates to more than"):  # ingestion's decoder too
        decode_image(bombs["dicom_1gib"])


def test_a_real_deflated_dicom_still_decodes() -> None:
    small = deflated_dicom_bomb(0)
    assert decode_image(small).pixels.shape == (128, 128)


def test_decodes_over_the_memory_budget_get_resource_exhausted_then_succeed(server) -> None:
    engine, client = server
    image = _png(2000, 2000)
    assert len(client.search(image=image, top_k=3).hits) == 3  # alone, it fits
    engine.decode_budget.acquire(10 * 1024 * 1024)  # another request holds 10 MiB of the 24
    try:
        with pytest.raises(grpc.RpcError) as raised:
            client.search(image=image, top_k=3)
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "decode budget" in raised.value.details()
    finally:
        engine.decode_budget.release(10 * 1024 * 1024)
    assert len(client.search(image=image, top_k=3).hits) == 3
    assert engine.decode_budget.in_flight == 0  # every admission released, refused ones included


def test_an_image_over_the_whole_budget_is_invalid_not_retryable(server) -> None:
    _, client = server
    with pytest.raises(grpc.RpcError) as raised:
        client.search(image=_png(3000, 3000), top_k=3)  # ~43 MiB to decode, budget 24 MiB
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "whole decode budget" in raised.value.details()
