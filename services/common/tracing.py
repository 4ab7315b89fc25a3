"""OpenTelemetry tracing: on when an OTLP endpoint is configured, off (and free) otherwise.

Trace context travels in the W3C `traceparent` header through the gRPC instrumentation's
server and client interceptors, so one trace spans monitoring, limits and scoring.
"""

import atexit

import grpc

_enabled = False


def configure_tracing(service: str, otlp_endpoint: str | None) -> bool:
    """Installs the tracer provider and exporter once a process; returns whether tracing is on."""
    global _enabled
    if not otlp_endpoint or _enabled:
        return _enabled
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(
        endpoint=otlp_endpoint, insecure=not otlp_endpoint.startswith("https://")
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    atexit.register(provider.shutdown)  # flush the last spans on the way out
    _enabled = True
    return True


def server_interceptors() -> list[grpc.ServerInterceptor]:
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor()]


def client_interceptors() -> list:
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import client_interceptor

    return [client_interceptor()]


def current_trace_id() -> str | None:
    """The id of the active span's trace, when tracing is on and a span is active."""
    if not _enabled:
        return None
    from opentelemetry import trace

    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
