"""Tracing on: spans reach an OTLP collector and carry the caller's trace context."""

import json
import os
import signal
import subprocess
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from bench.harness import free_port
from creditline.scoring.v1 import scoring_service_pb2 as pb
from creditline.scoring.v1 import scoring_service_pb2_grpc

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC endpoint that keeps what it receives."""

    def __init__(self) -> None:
        self.spans = []
        self.received = threading.Event()

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_are_exported_with_the_incoming_trace_id():
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    collector_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port = free_port()
    env = {
        **os.environ,
        "CREDITLINE_SCORING_PORT": str(port),
        "CREDITLINE_SCORING_OTLP_ENDPOINT": f"127.0.0.1:{collector_port}",
        "CREDITLINE_SCORING_RELOAD_INTERVAL_SECONDS": "0",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.scoring"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(), timeout=60, wait_for_ready=True
            )
            next(u for u in watch if u.status == health_pb2.HealthCheckResponse.SERVING)
            stub = scoring_service_pb2_grpc.ScoringServiceStub(channel)
            stub.ListModels(
                pb.ListModelsRequest(), timeout=5, metadata=[("traceparent", TRACEPARENT)]
            )
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        server.stop(0)

    assert collector.received.is_set()
    traced = [s for s in collector.spans if s.trace_id.hex() == TRACE_ID]
    assert any("ListModels" in s.name for s in traced), [s.name for s in collector.spans]
    rpc_lines = [r for r in map(json.loads, output.splitlines()) if r["event"] == "rpc"]
    assert rpc_lines and rpc_lines[0]["trace_id"] == TRACE_ID
