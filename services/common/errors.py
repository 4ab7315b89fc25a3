"""The domain errors of every service and the one table that maps them to gRPC statuses.

Domain code raises these; the server interceptor turns them into a `google.rpc.Status` with an
`ErrorInfo` (reason, domain, metadata) and, for bad input, `BadRequest` field violations.
Clients get a clear message that names no implementation detail.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One problem with one request field, addressed by its path (`features[age]`)."""

    field: str
    description: str


class ServiceError(Exception):
    """An error the client must see with a specific status code."""

    default_reason = "ERROR"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})


class InvalidArgument(ServiceError):
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], message: str | None = None, **kw) -> None:
        super().__init__(message or _summary(violations), **kw)
        self.violations = violations


class NotFound(ServiceError):
    default_reason = "NOT_FOUND"


class AlreadyExists(ServiceError):
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    default_reason = "FAILED_PRECONDITION"


class Aborted(ServiceError):
    default_reason = "ABORTED"


class Unavailable(ServiceError):
    default_reason = "UNAVAILABLE"


class ResourceExhausted(ServiceError):
    default_reason = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServiceError):
    """The caller's deadline came before the work was done (what was done stands)."""

    default_reason = "DEADLINE_EXCEEDED"


class Unauthenticated(ServiceError):
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    default_reason = "PERMISSION_DENIED"


STATUS_CODES: dict[type[ServiceError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Aborted: grpc.StatusCode.ABORTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_code_of(error: ServiceError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


class Violations:
    """Collects every field violation of a request, so the client hears of all of them at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def to_grpc_status(error: ServiceError, domain: str) -> grpc.Status:
    """The rich status (ErrorInfo, BadRequest) a client receives for a domain error."""
    code = status_code_of(error)
    details = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    ]
    if isinstance(error, InvalidArgument):
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=error.message, details=packed)
    )


def internal_status(domain: str, request_id: str) -> grpc.Status:
    """What a client is told of a bug on our side: nothing about it but where to look."""
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain=domain, metadata={"request_id": request_id}
    )
    any_detail = any_pb2.Any()
    any_detail.Pack(info)
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"internal error; quote request id {request_id}",
            details=[any_detail],
        )
    )


def _call_of(error: grpc.RpcError) -> grpc.Call:
    """The call a failed RPC raised: grpc raises an RpcError that is also its grpc.Call (and
    from_call reads only the code, details and trailing metadata RpcError has too)."""
    return cast(grpc.Call, error)


def violations_of(error: grpc.RpcError) -> list[FieldViolation]:
    """The BadRequest field violations a failed call carries, if any."""
    status = rpc_status.from_call(_call_of(error))
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
    return []


def error_info_of(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo (reason, domain, metadata) a failed call carries, if any."""
    status = rpc_status.from_call(_call_of(error))
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def _summary(violations: list[FieldViolation]) -> str:
    if not violations:
        return "invalid request"
    first = violations[0]
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return f"invalid request: {first.field}: {first.description}{more}"
