"""Requests that are not valid protobuf: INVALID_ARGUMENT and one rate-limited log line, not INTERNAL and a trace.

gRPC's own deserialization failure answers INTERNAL ("Exception deserializing request!") and logs a traceback per
call, so a peer sending garbage floods the log. This interceptor gives every method a deserializer that cannot
fail: a message that does not parse arrives as `MalformedRequest` and is refused before the servicer sees it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 60.0  # at most one log line per peer per interval; the line says how many were refused since


class MalformedRequest:
    """What a request that does not parse becomes: the reason, without the bytes."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # noqa: BLE001 - any parse failure is the client's malformed message
            return MalformedRequest(f"{type(error).__name__}: {str(error)[:100]}")
    return parse


class _RateLimitedLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refused(self, peer: str, method: str, reason: str) -> None:
        peer = peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer  # ipv4:1.2.3.4:port → per host, not per port
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(peer, -LOG_INTERVAL_S) < LOG_INTERVAL_S:
                self._suppressed[peer] = self._suppressed.get(peer, 0) + 1
                return
            if len(self._last) > 10_000:  # bounded: a scan from many addresses cannot grow it without end
                self._last.clear()
                self._suppressed.clear()
            self._last[peer] = now
            suppressed = self._suppressed.pop(peer, 0)
        log.warning("malformed request refused", extra={"peer": peer, "method": method, "reason": reason,
                                                        "refused_since_last_line": suppressed})


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    """Wraps every handler so that an unparseable request gets INVALID_ARGUMENT (outermost interceptor)."""

    def __init__(self, on_refused: Callable[[Any, str, str, str], None] | None = None) -> None:
        self._log = _RateLimitedLog()
        self.on_refused = on_refused  # the audit log's hook: every refused call is audited, only the log is limited

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method or ""

        def refuse(request: MalformedRequest, context: grpc.ServicerContext) -> None:
            self._log.refused(context.peer() or "", method, request.reason)
            if self.on_refused is not None:
                self.on_refused(context, method, grpc.StatusCode.INVALID_ARGUMENT.name, "malformed request")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "malformed request: the bytes are not a valid protobuf message for this method")

        def checked_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            for request in requests:
                if isinstance(request, MalformedRequest):
                    refuse(request, context)
                yield request

        parse = _tolerant(handler.request_deserializer)
        serialize = handler.response_serializer
        def checked(inner: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
            def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, MalformedRequest):
                    refuse(request, context)
                return inner(request, context)
            return behaviour

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(checked(handler.unary_unary), parse, serialize)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(checked(handler.unary_stream), parse, serialize)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary
            return grpc.stream_unary_rpc_method_handler(
                lambda requests, context: inner_su(checked_stream(requests, context), context), parse, serialize)
        inner_ss = handler.stream_stream
        return grpc.stream_stream_rpc_method_handler(
            lambda requests, context: inner_ss(checked_stream(requests, context), context), parse, serialize)
