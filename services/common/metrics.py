"""Prometheus metrics shared by every service, and the HTTP endpoint that serves them.

The RPC metrics follow the names of go-grpc-prometheus, so existing dashboards work.
"""

from prometheus_client import Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

RPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Time to handle an RPC, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
    buckets=LATENCY_BUCKETS,
)
RPCS_IN_FLIGHT = Gauge(
    "grpc_server_in_flight_requests",
    "RPCs being handled now, by method.",
    ["grpc_service", "grpc_method"],
)


def serve_metrics(host: str, port: int) -> int:
    """Starts the /metrics HTTP endpoint in a daemon thread; returns the bound port."""
    httpd, _thread = start_http_server(port, addr=host)
    return httpd.server_port
