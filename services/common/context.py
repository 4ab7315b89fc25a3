"""What the RPC being served knows about itself: request id, trace id, deadline and caller.

The server interceptor sets these for the thread serving a call; the client channel factory
reads them, so a downstream call carries the same request id and never outlives its caller.
The authentication interceptor (services.common.auth) adds the principal it authenticated, so
the access log names the caller and a servicer can read it with `current_principal()`.
"""

import contextvars
import os
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its name in the tokens file and its role."""

    name: str
    role: str


@dataclass
class CallContext:
    request_id: str
    trace_id: str | None
    # time.monotonic() by which the caller stops waiting, or None for no deadline.
    deadline: float | None
    # Set once by the authentication interceptor; None while authentication is off, and for a
    # caller it could not authenticate.
    principal: Principal | None = None

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


current_call: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "current_call", default=None
)


def current_principal() -> Principal | None:
    """The authenticated caller of the RPC being served, or None (authentication off, or no RPC
    being served on this thread)."""
    call = current_call.get()
    return None if call is None else call.principal


REQUEST_ID_HEADER = "x-request-id"


# The version (4) and variant bits of a random UUID, as uuid.UUID(version=4) sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def uuid4_hex() -> str:
    """`uuid.uuid4().hex` without the UUID object, which costs more than the randomness."""
    return f"{int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET:032x}"


def new_request_id() -> str:
    return uuid4_hex()


def trace_id_from_traceparent(value: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header (version-traceid-spanid-flags)."""
    if not value:
        return None
    parts = value.split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        return parts[1]
    return None
