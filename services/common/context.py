"""What the RPC being served knows about itself: request id, trace id and deadline.

The server interceptor sets these for the thread serving a call; the client channel factory
reads them, so a downstream call carries the same request id and never outlives its caller.
"""

import contextvars
import time
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class CallContext:
    request_id: str
    trace_id: str | None
    # time.monotonic() by which the caller stops waiting, or None for no deadline.
    deadline: float | None

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


current_call: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "current_call", default=None
)

REQUEST_ID_HEADER = "x-request-id"


def new_request_id() -> str:
    return uuid.uuid4().hex


def trace_id_from_traceparent(value: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header (version-traceid-spanid-flags)."""
    if not value:
        return None
    parts = value.split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return parts[1]
    return None
