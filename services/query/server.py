"""Build and run the gRPC server: RetrievalService, health, reflection, TLS/mTLS, token auth, audit, limits."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cbmir.services.query.audit import AuditLog, refusal_recorder
from cbmir.services.query.auth import Authenticator, TokenAuthInterceptor
from cbmir.services.query.concurrency import ConcurrencyLimitInterceptor
from cbmir.services.query.engine import RetrievalEngine
from cbmir.services.query.malformed import MalformedRequestInterceptor
from cbmir.services.query.proto import DEFAULT_MAX_MESSAGE_MB, SERVICE_NAME, retrieval_pb2, retrieval_pb2_grpc
from cbmir.services.query.servicer import RetrievalServicer
from cbmir.services.query.tls import ServerTls, check_plaintext_allowed, server_credentials
from cbmir.services.query.watch import DEFAULT_CHECK_SECONDS, StoreWatcher

log = logging.getLogger(__name__)

DEFAULT_PORT = 50051
DEFAULT_WORKERS = 8
# RPCs admitted at once (running + queued for a worker thread); the next one gets RESOURCE_EXHAUSTED at once
# instead of waiting in an unbounded queue until every client times out. Default: 4 queued per worker.
DEFAULT_QUEUE_PER_WORKER = 4


@dataclass
class ServerOptions:
    """How the server listens and whom it lets in. The defaults are the loopback development setup."""

    tls: ServerTls | None = None
    authenticator: Authenticator = field(default_factory=lambda: Authenticator({}))
    insecure: bool = False  # allow plain text / no client authentication on a non-loopback address
    audit_log: str | None = None  # JSON-lines file, one record per RPC
    max_concurrent_rpcs: int | None = None  # None: workers * (1 + DEFAULT_QUEUE_PER_WORKER)
    store_check_seconds: float = DEFAULT_CHECK_SECONDS  # 0: no watcher (health stays SERVING)
    # A second, plain-text listener serving only grpc.health.v1 from its own threads: probes are answered under
    # any load (the main port's --max-concurrent-rpcs and worker threads count every call, health included) and
    # the kubelet's native gRPC probe, which has no TLS, can reach it when the service port speaks TLS only.
    # None: off. It says SERVING / NOT_SERVING and nothing else, so it needs neither TLS nor a token.
    health_port: int | None = None
    health_host: str = "127.0.0.1"
    # Tokens that may also call Erase (each passes the token check too); none: Erase answers FAILED_PRECONDITION.
    admin: Authenticator = field(default_factory=lambda: Authenticator({}))
    id_salt: str = ""  # the salt Erase hashes ids with; "": the deployment's ($CBMIR_HOME/id-salt)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    watcher: StoreWatcher | None = None
    audit: AuditLog | None = None
    max_concurrent_rpcs: int = 0
    health_server: grpc.Server | None = None
    health_port: int = 0  # the health listener's port; 0 when there is none
    limiter: ConcurrencyLimitInterceptor | None = None

    def stop(self, grace: float = 2.0) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.health_server is not None:
            self.health_server.stop(0).wait()
        if self.limiter is not None:
            self.limiter.close()
        if self.audit is not None:
            self.audit.close()


def start_server(
    engine: RetrievalEngine,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
    workers: int = DEFAULT_WORKERS,
    options: ServerOptions | None = None,
) -> RunningServer:
    """Start serving on host:port (port 0 picks a free one) and return at once."""
    options = options or ServerOptions()
    check_plaintext_allowed(host, options.tls, options.authenticator.enabled, options.insecure)
    max_bytes = max_message_mb * 1024 * 1024
    max_concurrent = options.max_concurrent_rpcs or workers * (1 + DEFAULT_QUEUE_PER_WORKER)
    if max_concurrent < 1:
        raise ValueError(f"max concurrent RPCs must be >= 1, got {max_concurrent}")
    audit = AuditLog(options.audit_log) if options.audit_log else None
    on_refused = refusal_recorder(audit) if audit is not None else None
    # Outermost first: a call over the limit is refused before anything else runs, then garbage bytes before
    # anything reads them. Every refusal is audited too.
    limiter = ConcurrencyLimitInterceptor(max_concurrent, on_refused)
    interceptors: list[grpc.ServerInterceptor] = [limiter, MalformedRequestInterceptor(on_refused)]
    if options.authenticator.enabled:
        interceptors.append(TokenAuthInterceptor(options.authenticator, on_refused))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cbmir-rpc"),
        interceptors=interceptors,
        options=[("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)],
        maximum_concurrent_rpcs=limiter.backstop(),
    )
    health_servicer = health.HealthServicer()
    watched = ("", SERVICE_NAME)
    watcher = None
    if options.store_check_seconds > 0:
        collection = engine.default_collection
        watcher = StoreWatcher(lambda: engine.store.ping(collection), health_servicer, watched,
                               interval=options.store_check_seconds)
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(
        RetrievalServicer(engine, options.authenticator, audit, watcher, admin=options.admin,
                          id_salt=options.id_salt), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (
        SERVICE_NAME,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, server)
    address = f"{host}:{port}"
    bound = (server.add_secure_port(address, server_credentials(options.tls)) if options.tls
             else server.add_insecure_port(address))
    if bound == 0:
        raise OSError(f"cannot listen on {address} (in use?)")
    server.start()
    health_server, health_port = (_start_health_listener(health_servicer, options.health_host, options.health_port)
                                  if options.health_port is not None else (None, 0))
    for name in watched:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if watcher is not None:
        watcher.check()
        watcher.start()
    security = ("mutual TLS" if options.tls and options.tls.mutual else "TLS" if options.tls else "plain text")
    log.info("serving", extra={"address": f"{host}:{bound}", "collection": engine.default_collection,
                               "model_id": engine.model.identity.model_id, "transport": security,
                               "token_auth": options.authenticator.enabled, "audit_log": options.audit_log or "",
                               "workers": workers, "max_concurrent_rpcs": max_concurrent})
    return RunningServer(server, bound, health_servicer, watcher, audit, max_concurrent, health_server, health_port,
                         limiter)


HEALTH_LISTENER_THREADS = 2


def _start_health_listener(servicer: health.HealthServicer, host: str, port: int) -> tuple[grpc.Server, int]:
    """grpc.health.v1 alone, plain text, on its own threads, sharing the main server's health state."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=HEALTH_LISTENER_THREADS,
                                                    thread_name_prefix="cbmir-health"),
                         interceptors=[MalformedRequestInterceptor()])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen for health checks on {host}:{port} (in use?)")
    server.start()
    log.info("health listener", extra={"address": f"{host}:{bound}"})
    return server, bound


def serve_forever(running: RunningServer) -> None:
    """Block until SIGINT/SIGTERM, then drain in-flight RPCs and stop."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    running.stop()


__all__ = ["DEFAULT_PORT", "RunningServer", "ServerOptions", "retrieval_pb2", "serve_forever", "start_server"]
