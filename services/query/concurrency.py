"""The concurrent-call limit: over it, RESOURCE_EXHAUSTED at once, and the refusal audited like any other.

gRPC's own `maximum_concurrent_rpcs` refuses in its C-core loop, before any Python code sees the call, so those
refusals reached neither the audit log nor a log line with the peer. Here the outermost interceptor counts the
calls in flight (it runs on gRPC's polling thread, one call at a time) and hands a call over the limit a handler
that only refuses. That handler runs on a small pool of its own (gRPC's `experimental_thread_pool`), so the refusal
does not wait behind the admitted calls queued for a worker. gRPC's own limit stays, higher, as a backstop that
bounds the refusals in flight under a flood.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc

log = logging.getLogger(__name__)

REFUSAL_THREADS = 2
# Refusals in flight on top of the limit before gRPC core refuses by itself (unaudited): a refusal takes well
# under a millisecond, so only a flood of thousands of calls a second gets there.
REFUSAL_BACKLOG = 64
LOG_INTERVAL_S = 10.0  # one "over the limit" log line per interval, with the count refused since the last


_UNREAD = object()


def _ignore_request(_data: bytes) -> object:
    return _UNREAD  # a refused call's request is never parsed (gRPC takes None for a failed parse: INTERNAL)


class ConcurrencyLimitInterceptor(grpc.ServerInterceptor):
    """Admits at most `limit` calls at once; the next ones get RESOURCE_EXHAUSTED, each one audited."""

    def __init__(self, limit: int, on_refused: Callable[[Any, str, str, str], None] | None = None) -> None:
        if limit < 1:
            raise ValueError(f"max concurrent RPCs must be >= 1, got {limit}")
        self.limit = limit
        self.on_refused = on_refused
        self._lock = threading.Lock()
        self._in_flight = 0
        self._refused_since_log = 0
        self._last_log = -LOG_INTERVAL_S
        self.refusal_pool = futures.ThreadPoolExecutor(max_workers=REFUSAL_THREADS,
                                                       thread_name_prefix="cbmir-refusal")

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def backstop(self) -> int:
        """What to give gRPC's own maximum_concurrent_rpcs: the limit plus room for refusals in flight."""
        return self.limit + REFUSAL_BACKLOG

    def close(self) -> None:
        self.refusal_pool.shutdown(wait=False, cancel_futures=True)

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        with self._lock:
            admitted = self._in_flight < self.limit
            if admitted:
                self._in_flight += 1
        method = handler_call_details.method or ""
        return self._admitted(handler) if admitted else self._refusal(handler, method)

    def _release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _admitted(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The same handler; the slot is given back when the call ends (for a stream: when it is drained)."""
        def unary(inner: Callable[..., Any]) -> Callable[..., Any]:
            def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return inner(request, context)
                finally:
                    self._release()
            return behaviour

        def streaming(inner: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def behaviour(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                try:
                    yield from inner(request, context)
                finally:
                    self._release()
            return behaviour

        deserialize, serialize = handler.request_deserializer, handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), deserialize, serialize)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), deserialize, serialize)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), deserialize, serialize)
        return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), deserialize, serialize)

    def _refusal(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """A handler of the same streaming kind that answers RESOURCE_EXHAUSTED on the refusal pool."""
        message = f"server busy: {self.limit} calls in flight (--max-concurrent-rpcs); retry with backoff"

        def refuse(_request: Any, context: grpc.ServicerContext) -> Any:
            self._log_refusal(context.peer() or "")
            if self.on_refused is not None:
                self.on_refused(context, method, grpc.StatusCode.RESOURCE_EXHAUSTED.name, "concurrent call limit")
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

        refuse.experimental_thread_pool = self.refusal_pool  # type: ignore[attr-defined]
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(refuse, _ignore_request, serialize)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(refuse, _ignore_request, serialize)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(refuse, _ignore_request, serialize)
        return grpc.stream_stream_rpc_method_handler(refuse, _ignore_request, serialize)

    def _log_refusal(self, peer: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._refused_since_log += 1
            if now - self._last_log < LOG_INTERVAL_S:
                return
            self._last_log, refused, self._refused_since_log = now, self._refused_since_log, 0
        log.warning("over the concurrent call limit: refused", extra={"peer": peer, "limit": self.limit,
                                                                      "refused_since_last_line": refused})
