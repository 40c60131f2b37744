"""Decompression bombs under the byte limits: refused from their headers, and decode memory in flight bounded."""

from __future__ import annotations

import io
import tracemalloc

import grpc
import numpy as np
import pytest
from PIL import Image

from cbmir.bench.fuzz_inputs import deflated_dicom_bomb, png_bomb
from cbmir.services.embedding import ImageDecodeError, decode_image
from cbmir.services.embedding.declared import DeclaredSizeError, check_deflated_dicom, max_inflated_bytes
from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.engine import DEFAULT_MAX_IMAGE_PIXELS
from cbmir.services.query.server import start_server


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


def test_refusing_a_deflate_bomb_holds_one_chunk_not_the_limit(bombs) -> None:
    # The check used to inflate up to the limit (256 MiB at the default pixel limit) into one buffer per request:
    # `cbmir bench fuzz` saw the server's peak RSS rise ~840 MiB with two clients sending bombs, all refused.
    tracemalloc.start()
    try:
        with pytest.raises(DeclaredSizeError, match="inflates to more than"):
            check_deflated_dicom(bombs["dicom_1gib"], max_inflated_bytes(DEFAULT_MAX_IMAGE_PIXELS))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024
    assert check_deflated_dicom(deflated_dicom_bomb(0), 1 << 20) > 0  # a real one: its inflated size
