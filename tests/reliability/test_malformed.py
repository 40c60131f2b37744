"""Bytes that are not protobuf: INVALID_ARGUMENT on every service and method kind, and a log that stays quiet."""

from __future__ import annotations

import logging

import grpc
import pytest

from cbmir.services.query.server import start_server

# Not protobuf: 0xff... is a varint that never ends; 0x0a 0x7f is a length-delimited field longer than the data.
GARBAGE = (b"\xff" * 16, b"\x0a\x7fshort", b"\x12\x05abc")
UNARY = ("/cbmir.v1.RetrievalService/Search", "/cbmir.v1.RetrievalService/DescribeCollection",
         "/grpc.health.v1.Health/Check")


@pytest.fixture(scope="module")
def server(corpus):
    running = start_server(corpus.engine(), host="127.0.0.1", port=0)
    yield running
    running.stop()


def _identity(data: bytes) -> bytes:
    return data


def test_garbage_gets_invalid_argument_on_every_method_and_one_log_line(server, caplog) -> None:
    caplog.set_level(logging.INFO)
    codes = []
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for method in UNARY:
            call = channel.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)
            for data in GARBAGE:
                with pytest.raises(grpc.RpcError) as raised:
                    call(data, timeout=20)
                codes.append(raised.value.code())
                assert "malformed request" in raised.value.details()
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch", request_serializer=_identity,
                                     response_deserializer=_identity)
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(watch(GARBAGE[0], timeout=20)))
        codes.append(raised.value.code())
        reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                        request_serializer=_identity, response_deserializer=_identity)
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(reflect(iter([GARBAGE[0]]), timeout=20)))
        codes.append(raised.value.code())
        # The server still answers a well-formed call on the same connection.
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=_identity,
                                    response_deserializer=_identity)
        assert check(b"", timeout=20) == b"\x08\x01"  # HealthCheckResponse(status=SERVING)
    assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT} and len(codes) == 3 * len(GARBAGE) + 2
    text = caplog.text
    assert "Exception deserializing" not in text and "Traceback" not in text
    refused_lines = [r for r in caplog.records if r.getMessage() == "malformed request refused"]
    assert len(refused_lines) == 1  # one peer, 11 refusals: one line, the rest counted in the next line
