"""The server interceptor every service runs: call context, access log, metrics and errors.

One JSON line per RPC (method, code, latency, request and trace ids, the authenticated
principal's name; never a request field or a token),
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
from services.common.handlers import wrap_handler
from services.common.metrics import RPC_HANDLING_SECONDS, RPCS_IN_FLIGHT

log = structlog.get_logger("creditline.rpc")

# Probes and tooling call these constantly; they are counted but not logged line by line.
QUIET_SERVICES = frozenset({"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"})


class ServiceInterceptor(grpc.ServerInterceptor):
    """Wraps every handler of a server; `domain` names the service in ErrorInfo.

    Each method's handler is wrapped once, on its first call, and the wrapper reused: this
    runs on the thread that dispatches every call, so per-call work stays in the handler.
    """

    def __init__(self, domain: str) -> None:
        self.domain = domain
        # method path -> (the handler as given, the handler wrapped)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        path = handler_call_details.method
        cached = self._wrapped.get(path)
        if cached is None or cached[0] is not handler:
            cached = (handler, _Method(self.domain, path).wrap(handler))
            self._wrapped[path] = cached
        return cached[1]


class _Method:
    """The bookkeeping of one method's RPCs, from their metadata to their last log line."""

    def __init__(self, domain: str, path: str) -> None:
        self.domain = domain
        _, _, full_method = path.partition("/")
        self.full_method = full_method
        self.service, _, self.method = full_method.partition("/")
        self.quiet = self.service in QUIET_SERVICES
        self._in_flight = RPCS_IN_FLIGHT.labels(self.service, self.method)
        self._handling: dict[grpc.StatusCode, Any] = {}  # histogram children by final code

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return wrap_handler(handler, self.wrap_unary, self.wrap_stream)

    def wrap_unary(self, behavior: Callable) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            call, token, started = self._begin(context)
            try:
                return behavior(request, context)
            except Exception as error:  # noqa: BLE001 - every error leaves through one table
                self._abort(call, error, context)
            finally:
                self._end(call, token, started, context)

        return handle

    def wrap_stream(self, behavior: Callable) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call, token, started = self._begin(context)
            try:
                yield from behavior(request, context)
            except Exception as error:  # noqa: BLE001
                self._abort(call, error, context)
            finally:
                self._end(call, token, started, context)

        return handle

    def _begin(self, context: grpc.ServicerContext):
        request_id: str | None = None
        traceparent: str | None = None
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, bytes):  # only `-bin` headers carry bytes
                continue
            if key == REQUEST_ID_HEADER:
                request_id = value
            elif key == "traceparent":
                traceparent = value
        remaining = context.time_remaining()
        deadline = None if remaining is None or remaining > 1e8 else time.monotonic() + remaining
        trace_id = tracing.current_trace_id() or trace_id_from_traceparent(traceparent)
        call = CallContext(request_id or new_request_id(), trace_id, deadline)
        token = current_call.set(call)
        self._in_flight.inc()
        return call, token, time.perf_counter()

    def _abort(
        self, call: CallContext, error: Exception, context: grpc.ServicerContext
    ) -> NoReturn:
        if isinstance(error, ServiceError):
            status = to_grpc_status(error, self.domain)
            context.abort_with_status(status)  # raises, ending the RPC with this status
        if _already_aborted(context):
            raise error
        if not context.is_active():  # the client cancelled or went away: no one to answer
            raise error
        log.exception("rpc.unhandled_error", method=self.method, request_id=call.request_id)
        context.abort_with_status(internal_status(self.domain, call.request_id))

    def _end(self, call: CallContext, token, started: float, context) -> None:
        elapsed = time.perf_counter() - started
        final_code = _code_of(context) or grpc.StatusCode.OK
        current_call.reset(token)
        self._in_flight.dec()
        handling = self._handling.get(final_code)
        if handling is None:
            handling = RPC_HANDLING_SECONDS.labels(self.service, self.method, final_code.name)
            self._handling[final_code] = handling
        handling.observe(elapsed)
        if self.quiet:
            return
        log.info(
            "rpc",
            method=self.full_method,
            code=final_code.name,
            latency_ms=round(elapsed * 1000, 3),
            request_id=call.request_id,
            trace_id=call.trace_id,
            principal=call.principal.name if call.principal is not None else None,
        )


def _code_of(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    # ServicerContext.code() is grpc's (experimental) API; the grpc stubs lack it.
    code = context.code()  # type: ignore[attr-defined]
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return code
    return next((c for c in grpc.StatusCode if c.value[0] == code), None)


def _already_aborted(context: grpc.ServicerContext) -> bool:
    code = _code_of(context)
    return code is not None and code != grpc.StatusCode.OK
