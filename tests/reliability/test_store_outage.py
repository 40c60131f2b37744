"""Milvus unreachable: queries get UNAVAILABLE fast, health says NOT_SERVING, and both recover by themselves.

Against a real Milvus 2.3 standalone: behind a loopback TCP forwarder that cuts and restores the path (default
suite, seconds), and stopped and restarted on the same data directory and port (`slow`: a restart takes ~1 min).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from conftest import COLLECTION, build_collection, record_figures
from tcp_proxy import TcpProxy

from cbmir.services.query.client import RetrievalClient
from cbmir.services.query.engine import RetrievalEngine
from cbmir.services.query.server import ServerOptions, start_server
from cbmir.services.store import MilvusStore, StoreBusyError
from cbmir.services.store.milvus import is_backpressure
from cbmir.services.store.milvus_server import MilvusServer, free_ports

pytestmark = pytest.mark.skipif(importlib.util.find_spec("milvus") is None,
                                reason="the PyPI package `milvus` is not installed (pip install 'cbmir[server]')")
STORE_TIMEOUT = 3.0
CHECK_SECONDS = 0.5


def _record(name: str, values: dict) -> None:
    record_figures(name, values)


def _wait(condition: Callable[[], bool], seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"condition not met in {seconds} s")


def _health(client: RetrievalClient) -> str:
    try:
        return client.health()
    except grpc.RpcError as error:
        return error.code().name


def _search_code(client: RetrievalClient, vector: list[float]) -> tuple[grpc.StatusCode, float]:
    started = time.perf_counter()
    try:
        client.search(vector=vector, top_k=3)
        return grpc.StatusCode.OK, time.perf_counter() - started
    except grpc.RpcError as error:
        return error.code(), time.perf_counter() - started


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory, reliability_model):
    data = tmp_path_factory.mktemp("milvus-outage")
    server = MilvusServer(data_dir=data, port=free_ports(1)[0]).start()
    build_collection(server.uri, reliability_model, rows=20)
    yield server
    server.stop()


def _serve(uri: str, model) -> tuple:
    store = MilvusStore(uri, timeout=STORE_TIMEOUT)
    engine = RetrievalEngine(store, model, COLLECTION)
    running = start_server(engine, host="127.0.0.1", port=0,
                           options=ServerOptions(store_check_seconds=CHECK_SECONDS))
    return store, running, RetrievalClient(f"127.0.0.1:{running.port}", timeout=30)


def test_cut_network_path_gives_unavailable_fast_and_recovers_by_itself(milvus, reliability_model) -> None:
    proxy = TcpProxy(milvus.port).start()
    store, running, client = _serve(proxy.uri, reliability_model)
    vector = np.full(reliability_model.dim, 0.1).tolist()
    try:
        assert _search_code(client, vector)[0] == grpc.StatusCode.OK and _health(client) == "SERVING"
        proxy.cut()
        code, first_latency = _search_code(client, vector)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert first_latency < 2 * STORE_TIMEOUT + 1
        not_serving_after = _wait(lambda: _health(client) == "NOT_SERVING", 2 * STORE_TIMEOUT + 5)
        code, fast_latency = _search_code(client, vector)
        assert code == grpc.StatusCode.UNAVAILABLE and fast_latency < 0.5
        proxy.restore()
        serving_after = _wait(lambda: _health(client) == "SERVING", 60)
        assert _search_code(client, vector)[0] == grpc.StatusCode.OK
    finally:
        client.close()
        running.stop()
        store.close()
        proxy.stop()
    _record("outage_network_cut", {"store_timeout_s": STORE_TIMEOUT, "check_interval_s": CHECK_SECONDS,
                                   "first_unavailable_s": round(first_latency, 3),
                                   "not_serving_after_s": round(not_serving_after, 3),
                                   "unavailable_while_down_s": round(fast_latency, 4),
                                   "serving_again_after_restore_s": round(serving_after, 3)})


@pytest.mark.slow
def test_milvus_stopped_and_restarted_on_the_same_data_recovers_by_itself(milvus, reliability_model) -> None:
    store, running, client = _serve(milvus.uri, reliability_model)
    vector = np.full(reliability_model.dim, 0.1).tolist()
    try:
        assert _search_code(client, vector)[0] == grpc.StatusCode.OK
        milvus.stop()
        code, first_latency = _search_code(client, vector)
        assert code == grpc.StatusCode.UNAVAILABLE and first_latency < 2 * STORE_TIMEOUT + 1
        _wait(lambda: _health(client) == "NOT_SERVING", 2 * STORE_TIMEOUT + 5)
        code, fast_latency = _search_code(client, vector)
        assert code == grpc.StatusCode.UNAVAILABLE and fast_latency < 0.5
        started = time.monotonic()
        milvus.start()  # same data_dir, same port
        milvus_ready = time.monotonic() - started
        _wait(lambda: _health(client) == "SERVING", 180)
        serving_after = time.monotonic() - started
        assert _search_code(client, vector)[0] == grpc.StatusCode.OK
        assert store.count(COLLECTION) == 20  # nothing lost across the restart
    finally:
        client.close()
        running.stop()
        store.close()
    _record("outage_restart", {"first_unavailable_s": round(first_latency, 3),
                               "unavailable_while_down_s": round(fast_latency, 4),
                               "milvus_restart_s": round(milvus_ready, 1),
                               "serving_again_after_restart_began_s": round(serving_after, 1)})


class _Quota(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@pytest.mark.parametrize(("code", "message", "busy"), [
    (8, "rate limit exceeded[rate=0.1]", True),
    (9, "deny to write, reason: memory quota exhausted", True),
    (65535, "quota exceeded[reason=disk quota exceeded, please allocate more resources]", True),
    (1100, "collection not found[database=default][collection=x]", False),
])
def test_quota_and_rate_limit_errors_are_classified_retriable(code, message, busy) -> None:
    assert is_backpressure(_Quota(code, message)) is busy


def test_upsert_rides_out_write_backpressure_with_backoff(milvus, reliability_model, monkeypatch) -> None:
    from pymilvus.exceptions import MilvusException

    store = MilvusStore(milvus.uri, timeout=STORE_TIMEOUT)
    refusals = iter([MilvusException(code=8, message="rate limit exceeded[rate=1]"),
                     MilvusException(code=9, message="deny to write: memory quota exhausted")])
    attempts = []

    def refusing(real):
        def write(*args, **kwargs):
            attempts.append(time.monotonic())
            refusal = next(refusals, None)
            if refusal is not None:
                raise refusal
            return real(*args, **kwargs)
        return write

    # The store writes with upsert, or delete + insert on servers older than 2.3.10: refuse whichever it uses.
    for method in ("upsert", "insert"):
        monkeypatch.setattr(store.client, method, refusing(getattr(store.client, method)))
    monkeypatch.setattr("cbmir.services.store.milvus.time.sleep", lambda s: None)
    first = store.client.query(COLLECTION, filter="", output_fields=["id"], limit=1)[0]["id"]
    row = store.get_rows(COLLECTION, [first])
    assert store.upsert(COLLECTION, [dict(r) for r in row.values()]) == 1
    assert len(attempts) == 3
    with pytest.raises(StoreBusyError, match="shedding load"):
        store._call(lambda **_: (_ for _ in ()).throw(MilvusException(code=8, message="rate limit exceeded")))
    store.close()
