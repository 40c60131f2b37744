"""Fuzz: generated malformed requests through the real gRPC server, and malformed files through the real reader.

0 crashes (no INTERNAL/UNKNOWN status, no exception out of the reader), 0 hangs (every call has a deadline and
must answer within it), and the server still SERVING afterwards. Default suite: ~500 cases each; `-m slow`:
10,000 each.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import grpc
import pytest
from conftest import record_figures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cbmir.bench.fuzz_inputs import INJECTIONS, image_seeds, raw_field
from cbmir.ingestion.batches import ARRAY_INDEX, NAME, REASON, SPLIT, STATUS, STATUS_FAILED, STATUS_OK, URI
from cbmir.ingestion.reader import read_item
from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.proto import retrieval_pb2
from cbmir.services.query.server import ServerOptions, start_server
from cbmir.services.store.schema import FILTER_FIELDS

CALL_DEADLINE = 20.0  # seconds: a call that takes longer is a hang
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
           grpc.StatusCode.FAILED_PRECONDITION}
DIM = 1280


SEEDS = [seed for kind in image_seeds().values() for seed in kind]  # PNG, JPEG, DICOM in every syntax


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A real PNG/JPEG/DICOM with byte flips, truncation, inserted junk and overwritten 32-bit fields."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "int32", "dims"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[position] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[position:]
        elif op == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=64))
        elif op in ("int32", "dims"):
            value = draw(st.sampled_from([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 65535 * 65535 % 2**32]))
            data[position:position + 4] = struct.pack("<I" if op == "int32" else ">I", value)
    return bytes(data)


file_bytes = st.one_of(st.binary(max_size=4096), mutated_files(), st.sampled_from(SEEDS))
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
vectors = st.one_of(
    st.lists(floats, max_size=64),
    st.lists(st.floats(-1, 1, width=32), min_size=DIM - 1, max_size=DIM + 1),
    st.tuples(st.integers(0, DIM - 1), st.sampled_from([float("nan"), float("inf"), -float("inf"), 3.4e38]))
      .map(lambda p: [0.1] * p[0] + [p[1]] + [0.1] * (DIM - p[0] - 1)),
)
texts = st.one_of(st.text(max_size=80), st.sampled_from(INJECTIONS))
filters = st.dictionaries(st.one_of(st.sampled_from(FILTER_FIELDS), st.text(max_size=20), st.just("patient_name")),
                          texts, max_size=4)
ints = st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 1100))  # uint32 on the wire


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A serialized SearchRequest: any query kind, weird k/filters/options, sometimes unknown fields appended."""
    request = retrieval_pb2.SearchRequest(
        # Mostly plausible k and no filters, so that many requests get past validation into decode/embed/search.
        top_k=draw(st.one_of(st.integers(1, 20), st.integers(1, 20), ints)),
        filters=draw(st.one_of(st.just({}), st.just({}), filters)), prefilter=draw(st.integers(0, 7)),
        prefilter_class=draw(texts), exclude_query_id=draw(st.booleans()),
        min_confidence=draw(st.one_of(st.just(0.0), floats)),
        rerank=draw(st.one_of(st.just(""), st.just(""), st.just("hog"), texts)),
        k_prep=draw(st.one_of(st.just(0), ints)),
        collection=draw(st.one_of(st.just(""), st.just(""), texts, st.just("reliability"))),
    )
    if draw(st.booleans()):
        request.prefilter = 0
    kind = draw(st.sampled_from(["image", "image", "vector", "id", "none"]))
    if kind == "image":
        request.image = draw(file_bytes)
    elif kind == "vector":
        request.vector.values.extend(draw(vectors))
    elif kind == "id":
        request.id = draw(texts)
    wire = request.SerializeToString()
    if draw(st.booleans()):  # unknown fields a newer client might send: field numbers 900+, valid wire format
        number = draw(st.integers(900, 5000))
        payload = draw(st.binary(max_size=32))
        wire += raw_field(number, payload)
    return wire


@pytest.fixture(scope="module")
def fuzz_target(corpus):
    running = start_server(corpus.engine(max_top_k=1000), host="127.0.0.1", port=0, workers=4,
                           options=ServerOptions(store_check_seconds=1.0))
    client = RetrievalClient(f"127.0.0.1:{running.port}", timeout=CALL_DEADLINE)
    raw_search = client.channel.unary_unary("/cbmir.v1.RetrievalService/Search",
                                            request_serializer=lambda b: b,
                                            response_deserializer=retrieval_pb2.SearchResponse.FromString)
    yield client, raw_search
    client.close()
    running.stop()


def _fuzz_server(fuzz_target, examples: int) -> dict:
    client, raw_search = fuzz_target
    tally: dict[str, int] = {}
    slowest = [0.0]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(requests())
    def one(wire: bytes) -> None:
        started = time.perf_counter()
        try:
            raw_search(wire, timeout=CALL_DEADLINE)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            assert "Traceback" not in (error.details() or "")
        slowest[0] = max(slowest[0], time.perf_counter() - started)
        assert code in ALLOWED, f"{code}: {wire[:200]!r}"
        tally[code.name] = tally.get(code.name, 0) + 1

    one()
    assert client.health() == "SERVING"
    return {"requests": sum(tally.values()), "by_status": tally, "slowest_call_s": round(slowest[0], 3),
            "crashes": 0, "hangs": 0}


def _fuzz_reader(tmp_path: Path, examples: int) -> dict:
    path = tmp_path / "fuzzed"
    tally = {STATUS_OK: 0, STATUS_FAILED: 0}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(file_bytes)
    def one(data: bytes) -> None:
        path.write_bytes(data)
        row = read_item({URI: str(path), NAME: "fuzzed", ARRAY_INDEX: -1, SPLIT: ""}, None, input_size=224)
        assert row[STATUS] in (STATUS_OK, STATUS_FAILED)
        assert row[STATUS] == STATUS_OK or row[REASON]
        tally[row[STATUS]] += 1

    one()
    return {"files": sum(tally.values()), "decoded": tally[STATUS_OK], "rejected_with_reason": tally[STATUS_FAILED],
            "crashes": 0}


def test_fuzzed_requests_never_crash_or_hang_the_server(fuzz_target) -> None:
    record_figures("fuzz_server_ci", _fuzz_server(fuzz_target, 500))


def test_fuzzed_files_never_crash_the_ingestion_reader(tmp_path: Path) -> None:
    record_figures("fuzz_reader_ci", _fuzz_reader(tmp_path, 500))


@pytest.mark.slow
def test_ten_thousand_fuzzed_requests_never_crash_or_hang_the_server(fuzz_target) -> None:
    figures = _fuzz_server(fuzz_target, 10_000)
    assert figures["requests"] >= 10_000
    record_figures("fuzz_server", figures)


@pytest.mark.slow
def test_ten_thousand_fuzzed_files_never_crash_the_ingestion_reader(tmp_path: Path) -> None:
    figures = _fuzz_reader(tmp_path, 10_000)
    assert figures["files"] >= 10_000
    record_figures("fuzz_reader", figures)
