"""Client channels for service-to-service calls, configured one way for the whole suite.

- `dns:///` targets with round_robin: a headless Kubernetes Service resolves to every pod,
  so calls spread over pods instead of riding one HTTP/2 connection to one of them.
- Retries come from the channel's service config, for UNAVAILABLE only, and only on the
  methods the caller names as safe to repeat (reads, and mutations keyed by request_id).
- Every call has a deadline: the caller's own remaining time when it is serving an RPC,
  else a default; the request id of the RPC being served travels downstream.
- Security from the calling service's own settings (`ClientSecurity.from_settings`): TLS with
  its certificate as the client certificate (mTLS) and its CA as the trust anchor, and its own
  bearer token (`client_token_file`) on every call.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from services.common import tracing
from services.common.auth import AUTHORIZATION_HEADER, load_tls, read_client_token
from services.common.context import REQUEST_ID_HEADER, current_call
from services.common.settings import ServiceSettings


@dataclass(frozen=True)
class ChannelOptions:
    default_timeout_seconds: float = 5.0
    max_message_bytes: int = 16 * 1024 * 1024
    retry_attempts: int = 4


@dataclass(frozen=True)
class ClientSecurity:
    """How a service's channels prove who is calling: TLS credentials and a bearer token.

    Build it once from the calling service's settings and pass it to every `create_channel`:

        security = ClientSecurity.from_settings(settings)
        channel = create_channel(target, service=..., security=security)

    `credentials` is None for a plaintext channel, else `grpc.ssl_channel_credentials` of the
    service's CA (`tls_ca_file`, the system roots when unset), key and certificate (presented
    as the client certificate for mTLS). `token` is None, or sent on every call as
    `authorization: Bearer <token>`. The default is plaintext with no token.
    """

    credentials: grpc.ChannelCredentials | None = None
    token: str | None = None

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> "ClientSecurity":
        """From `tls_cert_file`, `tls_key_file`, `tls_ca_file` and `client_token_file`; exits
        naming the variable when one of them is unusable."""
        return cls(client_credentials(settings), read_client_token(settings))


def client_credentials(settings: ServiceSettings) -> grpc.ChannelCredentials | None:
    """The TLS credentials of a service's channels, or None when its TLS settings are unset."""
    tls = load_tls(settings)
    return None if tls is None else tls.channel_credentials()


def service_config(service: str, retryable_methods: Iterable[str], attempts: int) -> str:
    names = [{"service": service, "method": method} for method in retryable_methods]
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if names:
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": attempts,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)


def normalise_target(target: str) -> str:
    """`host:port` becomes `dns:///host:port`; a target with a scheme is kept as it is."""
    return target if "://" in target or target.startswith("unix:") else f"dns:///{target}"


def create_channel(
    target: str,
    *,
    service: str,
    retryable_methods: Iterable[str] = (),
    options: ChannelOptions = ChannelOptions(),
    credentials: grpc.ChannelCredentials | None = None,
    security: ClientSecurity | None = None,
) -> grpc.Channel:
    """A channel to `service` at `target` with deadlines, retries and balancing set up, secured
    by `security` (or by bare `credentials`, without a token); plaintext without either."""
    security = security or ClientSecurity()
    if credentials is not None and security.credentials is not None:
        raise ValueError("give credentials or security.credentials, not both")
    credentials = credentials or security.credentials
    channel_options = [
        ("grpc.service_config", service_config(service, retryable_methods, options.retry_attempts)),
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", options.max_message_bytes),
        ("grpc.max_send_message_length", options.max_message_bytes),
        # Pings every 20 s keep idle connections through proxies; the servers allow 10 s.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    address = normalise_target(target)
    if credentials is None:
        channel = grpc.insecure_channel(address, options=channel_options)
    else:
        channel = grpc.secure_channel(address, credentials, options=channel_options)
    interceptors: list = [DeadlineInterceptor(options.default_timeout_seconds)]
    if security.token is not None:
        interceptors.append(BearerTokenInterceptor(security.token))
    return grpc.intercept_channel(channel, *interceptors, *tracing.client_interceptors())


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


class _CallRewriter(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Rewrites the details of every call, whatever its kind, with `_details`."""

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        raise NotImplementedError

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class DeadlineInterceptor(_CallRewriter):
    """Bounds every call by the caller's remaining time and passes the request id on."""

    def __init__(self, default_timeout: float) -> None:
        self.default_timeout = default_timeout

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        timeout = details.timeout if details.timeout is not None else self.default_timeout
        metadata = list(details.metadata or ())
        call = current_call.get()
        if call is not None:
            remaining = call.time_remaining()
            if remaining is not None:
                # A call with no time left fails at once here instead of loading the callee.
                timeout = max(0.0, min(timeout, remaining))
            if not any(key == REQUEST_ID_HEADER for key, _ in metadata):
                metadata.append((REQUEST_ID_HEADER, call.request_id))
        return _CallDetails(
            details.method,
            timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )


class BearerTokenInterceptor(_CallRewriter):
    """Sends the calling service's own token on every call (plaintext channels too, where call
    credentials cannot go), unless the call already carries an authorization header."""

    def __init__(self, token: str) -> None:
        self.header = (AUTHORIZATION_HEADER, f"Bearer {token}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = list(details.metadata or ())
        if any(key == AUTHORIZATION_HEADER for key, _ in metadata):
            return details
        metadata.append(self.header)
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
