"""Who may call what: TLS material, bearer tokens, roles, and the one interceptor that checks them.

Transport: a service with `tls_cert_file` and `tls_key_file` serves TLS; with `tls_ca_file` too
it requires client certificates signed by that CA (mTLS), and its own channels present the same
certificate and verify servers against the same CA (`load_tls`).

Callers: every RPC carries `authorization: Bearer <token>`. The tokens file (`tokens_file`)
maps principals to roles and stores only the sha256 digest of each token:

    principals:
      - {name: loan-servicing, role: loan_servicing, token_sha256: 9f86d08...}

`PERMISSIONS` is the one table of which roles may call each RPC, keyed by full method name;
a method missing from it is refused to every caller. Health and reflection need no token.
A missing or unknown token is UNAUTHENTICATED, a known one without the role PERMISSION_DENIED;
neither says more than that. The interceptor runs inside the service interceptor
(services.common.interceptors), which logs and counts the refused calls like any other and turns
the errors raised here into statuses with an ErrorInfo.
"""

import hashlib
import hmac
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import grpc
import yaml
from google.protobuf import descriptor_pool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.common.context import Principal, current_call
from services.common.errors import PermissionDenied, Unauthenticated
from services.common.handlers import wrap_handler
from services.common.settings import ServiceSettings

Role = Literal[
    "loan_servicing", "app_backend", "messaging", "collections", "monitoring", "limits", "operator"
]
ROLES: tuple[str, ...] = get_args(Role)

AUTHORIZATION_HEADER = "authorization"
UNAUTHENTICATED_MESSAGE = "a valid bearer token is required"
PERMISSION_DENIED_MESSAGE = "this principal may not call this method"

# Services any caller may reach without a token: probes and tooling.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

_LIMITS = "/creditline.limits.v1.LimitsService/"
_SCORING = "/creditline.scoring.v1.ScoringService/"
_MONITORING = "/creditline.monitoring.v1.MonitoringService/"


def _roles(*roles: Role) -> frozenset[str]:
    """The given roles, and operators, who may call every RPC."""
    return frozenset({*roles, "operator"})


# Every RPC of every service and the roles that may call it. A test compares the keys with the
# services' descriptors, so a new RPC fails the tests until it is given its roles here.
PERMISSIONS: Mapping[str, frozenset[str]] = {
    # LimitsService: app backends act for customers; loan servicing moves the ledger;
    # monitoring reports signals; operators do everything, and alone the rest.
    _LIMITS + "OpenAccount": _roles("app_backend"),
    _LIMITS + "GetAccount": _roles("app_backend"),
    # The customer's own decision history, which they may appeal, and their own cap.
    _LIMITS + "ListLimitEvents": _roles("app_backend"),
    _LIMITS + "Draw": _roles("loan_servicing"),
    _LIMITS + "Repay": _roles("loan_servicing"),
    _LIMITS + "RequestIncrease": _roles("app_backend"),
    _LIMITS + "ReviewAccount": _roles(),
    _LIMITS + "RunReview": _roles(),
    _LIMITS + "ReportSignals": _roles("monitoring"),
    _LIMITS + "FreezeAccount": _roles(),
    _LIMITS + "UnfreezeAccount": _roles(),
    _LIMITS + "CloseAccount": _roles(),
    _LIMITS + "ResolveAnomaly": _roles(),
    _LIMITS + "RequestReopen": _roles("app_backend"),
    _LIMITS + "EnrollHardship": _roles(),
    _LIMITS + "SetPreferences": _roles("app_backend"),
    _LIMITS + "FileAppeal": _roles("app_backend"),
    _LIMITS + "ListAppeals": _roles(),
    _LIMITS + "ResolveAppeal": _roles(),
    _LIMITS + "SimulatePolicy": _roles(),
    _LIMITS + "StreamSimulatePolicy": _roles(),
    # The messaging backend delivers the notices to customers and says when they arrived.
    _LIMITS + "WatchNotices": _roles("messaging"),
    _LIMITS + "AcknowledgeNotice": _roles("messaging"),
    # The collections system carries out the early collections steps and says when it did.
    _LIMITS + "WatchTreatmentSteps": _roles("collections"),
    _LIMITS + "AcknowledgeTreatmentStep": _roles("collections"),
    _LIMITS + "RunCollections": _roles(),
    # An app backend builds the customer's "why did my line change" page from it.
    _LIMITS + "GetCustomerView": _roles("app_backend"),
    # ScoringService: read-only; the services that decide call it.
    _SCORING + "Score": _roles("limits", "monitoring"),
    _SCORING + "BatchScore": _roles("limits", "monitoring"),
    _SCORING + "GetModel": _roles("limits", "monitoring"),
    _SCORING + "ListModels": _roles("limits", "monitoring"),
    # MonitoringService: loan servicing publishes the repayment events.
    _MONITORING + "Ingest": _roles("loan_servicing"),
    _MONITORING + "PublishEvents": _roles("loan_servicing"),
    _MONITORING + "WatchAlerts": _roles(),
    _MONITORING + "ListAlerts": _roles(),
    _MONITORING + "GetAccountRisk": _roles(),
}


def unlisted_methods(
    services: Iterable[str], permissions: Mapping[str, frozenset[str]] = PERMISSIONS
) -> list[str]:
    """The RPCs of these services (by full name, as generated code registers them) that the
    table lacks, so that no one may call them. Services unknown to the descriptor pool are
    skipped."""
    pool = descriptor_pool.Default()
    missing = []
    for name in services:
        try:
            service = pool.FindServiceByName(name)
        except KeyError:
            continue
        missing += [
            f"/{name}/{method.name}"
            for method in service.methods
            if f"/{name}/{method.name}" not in permissions
        ]
    return missing


# -- files named by the settings -------------------------------------------------------------


def _read(settings: ServiceSettings, field: str) -> bytes:
    path = getattr(settings, field)
    try:
        return Path(path).read_bytes()
    except OSError as error:
        reason = error.strerror or str(error)
        raise SystemExit(f"{settings.env_name(field)}: cannot read {path}: {reason}") from None


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes of a service's certificate, key and CA, checked to belong together."""

    certificate_chain: bytes
    private_key: bytes
    # The CA that signs the suite's certificates; None: no client certificates are asked for,
    # and clients verify servers against the system roots.
    root_certificates: bytes | None

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.root_certificates,
            require_client_auth=self.root_certificates is not None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )


def load_tls(settings: ServiceSettings) -> TlsMaterial | None:
    """The service's TLS material, None when TLS is off; exits naming the variable at fault
    when a file is missing, unreadable or not what it should be, or a setting lacks its pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_var, key_var = settings.env_name("tls_cert_file"), settings.env_name("tls_key_file")
    ca_var = settings.env_name("tls_ca_file")
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        if settings.tls_ca_file is not None:
            raise SystemExit(
                f"{ca_var} is set without {cert_var} and {key_var}: set all three for mTLS"
            )
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise SystemExit(f"{cert_var} and {key_var} go together: set both for TLS, or neither")

    def certificates(field: str, data: bytes) -> list[Any]:
        try:
            found = x509.load_pem_x509_certificates(data)
        except ValueError:
            found = []
        if not found:
            path = getattr(settings, field)
            raise SystemExit(f"{settings.env_name(field)}: {path} holds no PEM certificate")
        return found

    chain_pem = _read(settings, "tls_cert_file")
    chain = certificates("tls_cert_file", chain_pem)
    key_pem = _read(settings, "tls_key_file")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise SystemExit(
            f"{key_var}: {settings.tls_key_file} holds no unencrypted PEM private key"
        ) from None
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise SystemExit(
            f"{key_var}: the key in {settings.tls_key_file} is not the key of the certificate "
            f"in {cert_var}"
        )
    if chain[0].not_valid_after_utc < datetime.now(UTC):
        raise SystemExit(
            f"{cert_var}: the certificate in {settings.tls_cert_file} expired on "
            f"{chain[0].not_valid_after_utc:%Y-%m-%d}"
        )
    ca_pem = None
    if settings.tls_ca_file is not None:
        ca_pem = _read(settings, "tls_ca_file")
        certificates("tls_ca_file", ca_pem)
    return TlsMaterial(chain_pem, key_pem, ca_pem)


def read_client_token(settings: ServiceSettings) -> str | None:
    """The bearer token this service sends on its own calls, or None when it sends none."""
    if settings.client_token_file is None:
        return None
    var = settings.env_name("client_token_file")
    try:
        token = _read(settings, "client_token_file").decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        raise SystemExit(
            f"{var}: {settings.client_token_file} must hold one token of printable ASCII"
        )
    return token


# -- tokens and principals ---------------------------------------------------------------------


def token_sha256(token: str) -> str:
    """The digest the tokens file stores for a token: sha256 of its UTF-8 bytes, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


class _PrincipalEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    role: Role
    token_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")


class _TokensFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    principals: list[_PrincipalEntry] = Field(min_length=1)


class TokenTable:
    """The principals of a tokens file, found by the digest of the token a caller presents."""

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        # (sha256 hex digest, principal); few enough to compare every one, in constant time.
        self._entries = [(digest.lower().encode(), principal) for digest, principal in entries]

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> "TokenTable | None":
        """The table of `tokens_file`, None when authentication is off; exits naming the
        variable when the file cannot be read or is not a valid tokens file."""
        if settings.tokens_file is None:
            return None
        var, path = settings.env_name("tokens_file"), settings.tokens_file
        try:
            raw = yaml.safe_load(_read(settings, "tokens_file"))
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise SystemExit(f"{var}: {path} is not valid YAML{where}") from None
        try:
            parsed = _TokensFile.model_validate(raw)
        except ValidationError as error:
            # Messages only, never the input: a mistaken file may hold a plaintext token.
            lines = [
                f"  {'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}"
                for e in error.errors()
            ]
            raise SystemExit(
                f"{var}: {path} is not a valid tokens file:\n" + "\n".join(lines)
            ) from None
        names = [p.name for p in parsed.principals]
        digests = [p.token_sha256.lower() for p in parsed.principals]
        if len(set(names)) != len(names):
            raise SystemExit(f"{var}: {path} names a principal twice")
        if len(set(digests)) != len(digests):
            raise SystemExit(f"{var}: {path} gives two principals the same token")
        return cls((p.token_sha256, Principal(p.name, p.role)) for p in parsed.principals)

    def authenticate(self, token: str | None) -> Principal | None:
        if not token:
            return None
        digest = token_sha256(token).encode()
        found = None
        for known, principal in self._entries:
            if hmac.compare_digest(known, digest):
                found = principal
        return found


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of the one `authorization: Bearer <token>` header, or None."""
    values = [value for key, value in metadata or () if key == AUTHORIZATION_HEADER]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


# -- the interceptor ---------------------------------------------------------------------------


class AuthInterceptor(grpc.ServerInterceptor):
    """Admits a call only with a known token whose role the method's entry in `permissions`
    names. Install it after `ServiceInterceptor` in the server's list (so inside it): the errors
    it raises become statuses there, and the refused calls are logged and counted."""

    def __init__(
        self, tokens: TokenTable, permissions: Mapping[str, frozenset[str]] = PERMISSIONS
    ) -> None:
        self.tokens = tokens
        self.permissions = permissions
        # method path -> (the handler as given, the handler guarded); see ServiceInterceptor
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        path = handler_call_details.method
        if path.split("/", 2)[1] in OPEN_SERVICES:
            return handler
        cached = self._wrapped.get(path)
        if cached is None or cached[0] is not handler:
            guard = _Guard(self.tokens, self.permissions.get(path, frozenset()))
            cached = (handler, guard.wrap(handler))
            self._wrapped[path] = cached
        return cached[1]


class _Guard:
    """The check of one method: who the caller is, and whether its role may call the method."""

    def __init__(self, tokens: TokenTable, roles: frozenset[str]) -> None:
        self.tokens = tokens
        self.roles = roles

    def wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return wrap_handler(handler, self._unary, self._stream)

    def _unary(self, behavior: Callable) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            self._authorize(context)
            return behavior(request, context)

        return handle

    def _stream(self, behavior: Callable) -> Callable:
        def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self._authorize(context)
            yield from behavior(request, context)

        return handle

    def _authorize(self, context: grpc.ServicerContext) -> None:
        principal = self.tokens.authenticate(bearer_token(context.invocation_metadata()))
        if principal is None:
            raise Unauthenticated(UNAUTHENTICATED_MESSAGE)
        call = current_call.get()
        if call is not None:
            call.principal = principal
        if principal.role not in self.roles:
            raise PermissionDenied(PERMISSION_DENIED_MESSAGE)
