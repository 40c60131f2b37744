"""Prometheus metrics of the query service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REQUESTS = Counter("cbmir_requests_total", "RPCs handled", ["method", "code"])
STAGE_SECONDS = Histogram(
    "cbmir_stage_seconds",
    "Time per request stage",
    ["stage"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
IN_FLIGHT = Gauge("cbmir_requests_in_flight", "RPCs being handled now")


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on host:port; port 0 disables it."""
    if port:
        start_http_server(port, addr=host)
