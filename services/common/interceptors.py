"""The server interceptor every service runs: call context, access log, metrics and errors.

One JSON line per RPC (method, code, latency, request and trace ids; never a request field),
a latency histogram and an in-flight gauge per method, and the one place where domain errors
become gRPC statuses. An unexpected exception is logged with its traceback and reaches the
client as INTERNAL with the request id, never as UNKNOWN.
"""

import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import grpc
import structlog

from services.common import tracing
from services.common.context import (
    REQUEST_ID_HEADER,
    CallContext,
    current_call,
    new_request_id,
    trace_id_from_traceparent,
)
from services.common.errors import ServiceError, internal_status, to_grpc_status
from services.common.metrics import RPC_HANDLING_SECONDS, RPCS_IN_FLIGHT

log = structlog.get_logger("creditline.rpc")

# Probes and tooling call these constantly; they are counted but not logged line by line.
QUIET_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})


class ServiceInterceptor(grpc.ServerInterceptor):
    """Wraps every handler of a server; `domain` names the service in ErrorInfo."""

    def __init__(self, domain: str) -> None:
        self.domain = domain

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        _, _, full_method = handler_call_details.method.partition("/")
        service, _, method = full_method.partition("/")
        call = _Call(self.domain, service, method, handler_call_details.invocation_metadata)
        if handler.unary_unary:
            return handler._replace(unary_unary=call.wrap_unary(handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=call.wrap_unary(handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=call.wrap_stream(handler.unary_stream))
        return handler._replace(stream_stream=call.wrap_stream(handler.stream_stream))


class _Call:
    """The bookkeeping of one RPC, from its metadata to its last log line."""

    def __init__(self, domain: str, service: str, method: str, metadata) -> None:
        self.domain = domain
        self.service = service
        self.method = method
        headers = dict(metadata or ())
        self.request_id = headers.get(REQUEST_ID_HEADER) or new_request_id()
        self.traceparent = headers.get("traceparent")
        self.quiet = service in QUIET_SERVICES

    def wrap_unary(self, behavior: Callable) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            token, started = self._begin(context)
            try:
                return behavior(request, context)
            except Exception as error:  # noqa: BLE001 - every error leaves through one table
                self._abort(error, context)
            finally:
                self._end(token, started, context)

        return handle

    def wrap_stream(self, behavior: Callable) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            token, started = self._begin(context)
            try:
                yield from behavior(request, context)
            except Exception as error:  # noqa: BLE001
                self._abort(error, context)
            finally:
                self._end(token, started, context)

        return handle

    def _begin(self, context: grpc.ServicerContext):
        remaining = context.time_remaining()
        deadline = None if remaining is None or remaining > 1e8 else time.monotonic() + remaining
        trace_id = tracing.current_trace_id() or trace_id_from_traceparent(self.traceparent)
        token = current_call.set(CallContext(self.request_id, trace_id, deadline))
        RPCS_IN_FLIGHT.labels(self.service, self.method).inc()
        return token, time.perf_counter()

    def _abort(self, error: Exception, context: grpc.ServicerContext) -> NoReturn:
        if isinstance(error, ServiceError):
            status = to_grpc_status(error, self.domain)
            context.abort_with_status(status)  # raises, ending the RPC with this status
        if _already_aborted(context):
            raise error
        log.exception("rpc.unhandled_error", method=self.method, request_id=self.request_id)
        context.abort_with_status(internal_status(self.domain, self.request_id))

    def _end(self, token, started: float, context: grpc.ServicerContext) -> None:
        elapsed = time.perf_counter() - started
        final_code = _code_of(context) or grpc.StatusCode.OK
        call = current_call.get()
        current_call.reset(token)
        RPCS_IN_FLIGHT.labels(self.service, self.method).dec()
        RPC_HANDLING_SECONDS.labels(self.service, self.method, final_code.name).observe(elapsed)
        if self.quiet:
            return
        log.info(
            "rpc",
            method=f"{self.service}/{self.method}",
            code=final_code.name,
            latency_ms=round(elapsed * 1000, 3),
            request_id=self.request_id,
            trace_id=call.trace_id if call else None,
        )


def _code_of(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    code = context.code()
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return code
    return next((c for c in grpc.StatusCode if c.value[0] == code), None)


def _already_aborted(context: grpc.ServicerContext) -> bool:
    code = _code_of(context)
    return code is not None and code != grpc.StatusCode.OK
