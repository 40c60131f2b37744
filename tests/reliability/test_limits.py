"""Overload gives RESOURCE_EXHAUSTED at once (explicit max concurrent RPCs), and the server serves again after."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc

from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.engine import RetrievalEngine, SearchQuery, SearchResult
from cbmir.services.query.proto import retrieval_pb2
from cbmir.services.query.server import ServerOptions, start_server


class SlowEngine(RetrievalEngine):
    """The real engine, 0.4 s slower per search: a heavy query (a 100 MB DICOM) without the 100 MB."""

    def search(self, query: SearchQuery) -> SearchResult:
        time.sleep(0.4)
        return super().search(query)


def test_overload_is_refused_with_resource_exhausted_not_queued_forever(corpus) -> None:
    engine = SlowEngine(corpus.store, corpus.model, "reliability")
    running = start_server(engine, host="127.0.0.1", port=0, workers=2,
                           options=ServerOptions(max_concurrent_rpcs=4, store_check_seconds=0))
    try:
        with RetrievalClient(f"127.0.0.1:{running.port}", timeout=30) as client:
            request = retrieval_pb2.SearchRequest(id=corpus.ids[0], top_k=3)
            started = time.perf_counter()
            done_at: dict[int, float] = {}
            calls = []
            for i in range(24):  # each call timed from the moment it is sent, whenever this loop gets the CPU
                calls.append(client.stub.Search.future(request, timeout=30))
                calls[-1].add_done_callback(lambda _, i=i: done_at.__setitem__(i, time.perf_counter() - started))
            codes = []
            refused_after, answered_after = [], []
            for i, call in enumerate(calls):
                try:
                    call.result()
                    codes.append(grpc.StatusCode.OK)
                    answered_after.append(done_at[i])
                except grpc.RpcError as error:
                    codes.append(error.code())
                    if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        refused_after.append(done_at[i])
            assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
            assert 4 <= codes.count(grpc.StatusCode.OK) < 24
            # Refusals come at once, not after waiting in a queue for the slow calls ahead: the first is back
            # before any admitted call has finished its 0.4 s (a queue would refuse only after them, if at all).
            assert min(refused_after) < min(answered_after)
            # Once the burst is over the server answers normally.
            assert client.search(id=corpus.ids[0], top_k=3).hits[0].id == corpus.ids[0]
            assert client.health() == "SERVING"
    finally:
        running.stop()


def test_health_port_answers_while_the_service_port_is_saturated(corpus) -> None:
    # A liveness probe on the service port counts against --max-concurrent-rpcs and waits for a worker thread:
    # under load the kubelet would kill a healthy pod. The health listener has its own threads and no limit.
    engine = SlowEngine(corpus.store, corpus.model, "reliability")
    running = start_server(engine, host="127.0.0.1", port=0, workers=1,
                           options=ServerOptions(max_concurrent_rpcs=2, store_check_seconds=0, health_port=0))
    try:
        assert running.health_port > 0
        with RetrievalClient(f"127.0.0.1:{running.port}", timeout=30) as client, \
                RetrievalClient(f"127.0.0.1:{running.health_port}", timeout=2) as probe:
            request = retrieval_pb2.SearchRequest(id=corpus.ids[0], top_k=3)
            calls = [client.stub.Search.future(request, timeout=30) for _ in range(6)]
            time.sleep(0.1)  # the burst is in: one search running, one queued, the rest refused
            with_burst = []
            for _ in range(3):
                with_burst.append(probe.health())
                try:
                    with_burst.append(client.health())
                except grpc.RpcError as error:
                    with_burst.append(error.code().name)
            codes = []
            for call in calls:
                try:
                    call.result()
                    codes.append("OK")
                except grpc.RpcError as error:
                    codes.append(error.code().name)
            assert "RESOURCE_EXHAUSTED" in codes  # the service port was saturated during the probes
            assert with_burst[0::2] == ["SERVING"] * 3  # the health port answered every time
            assert "RESOURCE_EXHAUSTED" in with_burst[1::2]  # while the service port refused health itself
    finally:
        running.stop()


def test_every_call_refused_over_the_limit_is_audited_with_its_peer(corpus, tmp_path: Path) -> None:
    # gRPC core's own limit refused before any Python code ran: those refusals never reached the audit log.
    audit_path = tmp_path / "audit.jsonl"
    engine = SlowEngine(corpus.store, corpus.model, "reliability")
    running = start_server(engine, host="127.0.0.1", port=0, workers=2,
                           options=ServerOptions(max_concurrent_rpcs=3, store_check_seconds=0,
                                                 audit_log=str(audit_path)))
    try:
        with RetrievalClient(f"127.0.0.1:{running.port}", timeout=30) as client:
            request = retrieval_pb2.SearchRequest(id=corpus.ids[0], top_k=3)
            calls = [client.stub.Search.future(request, timeout=30) for _ in range(20)]
            refused = []
            for call in calls:
                try:
                    call.result()
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                    assert "--max-concurrent-rpcs" in (error.details() or "")
                    refused.append(error)
            assert refused
        assert running.limiter is not None and running.limiter.in_flight == 0  # every admitted slot given back
    finally:
        running.stop()
    records = [json.loads(line) for line in audit_path.read_text().splitlines()]
    exhausted = [r for r in records if r["status"] == "RESOURCE_EXHAUSTED"]
    assert len(exhausted) == len(refused)
    assert all(r["peer"].startswith(("ipv4:127.0.0.1", "ipv6:")) and r["method"] == "Search" for r in exhausted)
    assert all(r.get("reason") == "concurrent call limit" for r in exhausted)
    assert len([r for r in records if r["status"] == "OK"]) == 20 - len(refused)
