"""StoreWatcher: pings Milvus every few seconds and turns the answer into gRPC health (SERVING / NOT_SERVING)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from grpc_health.v1 import health, health_pb2

from cbmir.services.store import StoreError

log = logging.getLogger(__name__)

DEFAULT_CHECK_SECONDS = 3.0


class StoreWatcher:
    """Knows whether the store answers; queries fail fast with UNAVAILABLE while it does not, and health says so.

    Recovery needs nobody: the next successful ping (at most `interval` seconds after Milvus is back) sets
    SERVING again. A query that meets an unreachable store reports it, so health drops at once, not a tick later.
    """

    def __init__(self, ping: Callable[[], None], health_servicer: health.HealthServicer,
                 services: Iterable[str], interval: float = DEFAULT_CHECK_SECONDS) -> None:
        self._ping = ping
        self._health = health_servicer
        self._services = tuple(services)
        self.interval = interval
        self._available = True
        self._since = time.monotonic()
        self._reason = ""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self._available

    def unavailable_message(self) -> str:
        down = time.monotonic() - self._since
        # The reason names the store's address: it stays in the server log, never in a reply.
        return (f"the vector store is unreachable (for {down:.0f} s); health is NOT_SERVING and "
                f"recovers by itself within {self.interval:.0f} s of the store coming back: retry later")

    def check(self) -> bool:
        """Ping once now and publish the result."""
        try:
            self._ping()
        except StoreError as error:
            self._set(False, str(error))
        except Exception as error:  # noqa: BLE001 - an unexpected ping failure still means "cannot serve"
            self._set(False, f"{type(error).__name__}: {error}")
        else:
            self._set(True, "")
        return self._available

    def report_failure(self, reason: str) -> None:
        """A query met an unreachable store: stop serving now, and re-check soon."""
        self._set(False, reason)
        self._wake.set()

    def _set(self, available: bool, reason: str) -> None:
        with self._lock:
            changed = available != self._available
            self._available = available
            if changed:
                self._since = time.monotonic()
            if reason:
                self._reason = reason
            status = health_pb2.HealthCheckResponse.SERVING if available else health_pb2.HealthCheckResponse.NOT_SERVING
            if changed:
                for name in self._services:
                    self._health.set(name, status)
        if changed:
            if available:
                log.warning("vector store reachable again: SERVING")
            else:
                log.warning("vector store unreachable: NOT_SERVING", extra={"reason": reason})

    def start(self) -> StoreWatcher:
        self._thread = threading.Thread(target=self._run, name="cbmir-store-watch", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.check()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 30)
