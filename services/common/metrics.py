"""Prometheus metrics shared by every service, served on METRICS_PORT.

The gRPC metric names follow the go-grpc-prometheus convention that dashboards already know.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

RPC_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
RPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by status code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
RPC_LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "Time from the start of an RPC to its end on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def serve_metrics(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside the pod
    """Serve /metrics on `port` from a background thread; port 0 leaves it off."""
    if port == 0:
        return
    start_http_server(port, addr=address)
    logger.info("metrics served", extra={"metrics_port": port})


DEPENDENCY_UP = Gauge(
    "chatagent_dependency_up",
    "Whether a critical dependency watched by the process answers its health check (1) or not (0).",
    ["dependency"],
)
