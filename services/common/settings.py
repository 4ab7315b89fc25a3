"""Settings every service shares, read from environment variables with one prefix a service."""

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

SettingsT = TypeVar("SettingsT", bound="ServiceSettings")


class ServiceSettings(BaseSettings):
    """The server, logging, metrics and tracing settings of any creditline service.

    Each service subclasses this with its own `env_prefix` (CREDITLINE_SCORING_, ...), so a
    Kubernetes manifest configures a service with plain environment variables.
    """

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Address the gRPC server listens on.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus endpoint.")
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Prometheus /metrics port; unset disables it, 0 picks one.",
    )
    max_workers: int = Field(
        4, ge=1, le=256, description="Threads serving RPCs (4 measured best on 2 cores)."
    )
    reuse_port: bool = Field(
        False,
        description="Let several processes of the service listen on the same port (SO_REUSEPORT), "
        "the kernel spreading connections between them; off, a second server on a taken port "
        "fails.",
    )
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, le=300, description="Time in-flight calls get to finish after SIGTERM."
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request or response message."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Lowest level of log lines written."
    )
    otlp_endpoint: str | None = Field(
        None, description="OTLP/gRPC collector (host:port); tracing is off when unset."
    )
    tls_cert_file: Path | None = Field(
        None,
        description="PEM certificate (chain) this service presents as a server and as a client; "
        "with tls_key_file it turns TLS on.",
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_ca_file: Path | None = Field(
        None,
        description="PEM CA certificates: the server then requires client certificates they "
        "signed (mTLS), and clients verify servers against them (else the system roots).",
    )
    health_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Plaintext port serving only grpc.health.v1, for probes while the gRPC port "
        "is TLS; unset: none, 0 picks one.",
    )
    tokens_file: Path | None = Field(
        None,
        description="YAML of the principals that may call, with their roles and sha256 token "
        "digests; unset turns authentication off.",
    )
    client_token_file: Path | None = Field(
        None,
        description="File holding this service's own bearer token, sent on its calls to the "
        "other services.",
    )

    def env_name(self, field: str) -> str:
        """The environment variable of a field, e.g. CREDITLINE_LIMITS_TLS_CA_FILE."""
        return f"{self.model_config.get('env_prefix', '')}{field}".upper()


def load_settings(cls: type[SettingsT], **overrides: Any) -> SettingsT:
    """Reads settings from the environment, or exits at once with every bad value named.

    Overrides are unchecked (Any): the model validates them, and a bad one is reported here."""
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        prefix = cls.model_config.get("env_prefix", "")
        lines = [
            f"  {prefix}{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in error.errors()
        ]
        raise SystemExit("invalid configuration:\n" + "\n".join(lines)) from None
