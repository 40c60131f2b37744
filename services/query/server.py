"""Build and run the gRPC server: RetrievalService, standard health checking, reflection, metrics."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.query.engine import RetrievalEngine
from services.query.proto import SERVICE_NAME, retrieval_pb2, retrieval_pb2_grpc
from services.query.servicer import RetrievalServicer

log = logging.getLogger(__name__)

DEFAULT_PORT = 50051
DEFAULT_MAX_MESSAGE_MB = 256


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def start_server(
    engine: RetrievalEngine,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    max_message_mb: int = DEFAULT_MAX_MESSAGE_MB,
    workers: int = 8,
) -> RunningServer:
    """Start serving on host:port (port 0 picks a free one) and return at once."""
    max_bytes = max_message_mb * 1024 * 1024
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cbmir-rpc"),
        options=[("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)],
    )
    retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(RetrievalServicer(engine), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (
        SERVICE_NAME,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port} (in use?)")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving", extra={"address": f"{host}:{bound}", "collection": engine.default_collection,
                               "model_id": engine.model.identity.model_id})
    return RunningServer(server, bound, health_servicer)


def serve_forever(running: RunningServer) -> None:
    """Block until SIGINT/SIGTERM, then drain in-flight RPCs and stop."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("shutting down")
    running.stop()


__all__ = ["DEFAULT_PORT", "RunningServer", "retrieval_pb2", "serve_forever", "start_server"]
