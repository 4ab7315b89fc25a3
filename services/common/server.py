"""Starts and stops a creditline gRPC service: the one bootstrap every service uses.

A sync `grpc.server` with a small thread pool: measured on these 2-core machines it gave
about 20-30% more calls per second than grpc.aio for a model server, at the same median
latency (../shared/DESIGN.md); the services' work (onnxruntime, SQLite, PostgreSQL) releases
the GIL. Health starts NOT_SERVING, turns SERVING when the service says it is ready, and
turns NOT_SERVING again on SIGTERM, before `stop(grace)` lets in-flight calls finish.

Security comes from the settings (services.common.auth): TLS or mTLS on the gRPC port, bearer
tokens checked against the tokens file, and, for probes, an optional plaintext port that
serves nothing but health.
"""

import gc
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import tracing
from services.common.auth import AuthInterceptor, TokenTable, load_tls, unlisted_methods
from services.common.interceptors import ServiceInterceptor
from services.common.metrics import serve_metrics
from services.common.settings import ServiceSettings

log = structlog.get_logger("creditline.server")

# Clients may ping every 20 s on idle connections (services.common.channels); the server
# tolerates pings down to 10 s apart instead of answering them with GOAWAY.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


# Python collects its youngest generation after every 700 new container objects by default:
# several times a call for a batch (a BatchScore response, an Ingest batch), each collection a
# walk over what the call still holds. Measured on these machines, collection took about 7% of
# a BatchScore's server CPU and 11% of an Ingest batch's; with this threshold and the start-up
# objects frozen, close to none. Garbage without cycles is freed at once either way.
YOUNG_GENERATION_THRESHOLD = 10_000

ServicerT = TypeVar("ServicerT")


@dataclass(frozen=True)
class ServiceBinding(Generic[ServicerT]):
    """One servicer and the generated function that adds it to a server."""

    add_to_server: Callable[[ServicerT, grpc.Server], None]
    servicer: ServicerT
    full_name: str  # e.g. "creditline.scoring.v1.ScoringService"


class ShutdownSignal:
    """Remembers SIGTERM or SIGINT for the main thread to act on.

    The handler runs on the main thread between two bytecodes, possibly while that thread holds
    a lock (a log line being written, an Event's condition): so it only sets an attribute, and
    logging and stopping happen in `wait`'s caller. Taking a lock in the handler could deadlock
    the process on a signal that lands at the wrong moment.
    """

    POLL_SECONDS = 0.2

    def __init__(self) -> None:
        self.received: str | None = None

    def __call__(self, signum, _frame) -> None:
        self.received = signal.Signals(signum).name

    def wait(self) -> str:
        """Returns the signal's name once one has arrived."""
        while self.received is None:
            time.sleep(self.POLL_SECONDS)
        return self.received


def catch_shutdown_signals() -> ShutdownSignal:
    """Catches SIGTERM and SIGINT from now on. Call it from the main thread before the service
    starts, so that a signal during start-up still ends in a graceful stop."""
    shutdown = ShutdownSignal()
    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    return shutdown


class GrpcServer:
    """A running gRPC server with health, reflection, metrics, security and graceful shutdown.

    `port` is the gRPC port bound (TLS when the settings give a certificate), `health_port` the
    plaintext health-only port or None.
    """

    def __init__(
        self,
        settings: ServiceSettings,
        bindings: Sequence[ServiceBinding[Any]],
        *,
        domain: str,
        on_stopping: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        """`on_stopping` runs as the stop begins (end long-lived streams there, so they do not
        hold the grace period); `on_stop` once every call is done (close resources)."""
        self.settings = settings
        self.bindings = list(bindings)
        self.domain = domain
        self._on_stopping = on_stopping
        self._on_stop = on_stop
        self._stopped = threading.Event()
        tls = load_tls(settings)
        self.tokens = TokenTable.from_settings(settings)
        interceptors = [*tracing.server_interceptors(), ServiceInterceptor(domain)]
        if self.tokens is not None:
            # Inside the service interceptor: refused calls are logged and counted there too.
            interceptors.append(AuthInterceptor(self.tokens))
        self.health = health.HealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=settings.max_workers, thread_name_prefix=f"{domain}-rpc"
            ),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # A second server on a taken port must fail, not silently share it, unless
                # sharing is asked for: CPU-bound servers run a process per core that way.
                ("grpc.so_reuseport", int(settings.reuse_port)),
                *KEEPALIVE_OPTIONS,
            ],
        )
        for binding in self.bindings:
            binding.add_to_server(binding.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [b.full_name for b in self.bindings]
            + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self.server,
        )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{settings.host}:{settings.port}"
        try:
            if tls is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, tls.server_credentials())
        except RuntimeError:
            raise SystemExit(
                f"cannot listen on {address}: the address is taken or invalid"
            ) from None
        self.transport = (
            "plaintext" if tls is None else "mtls" if tls.root_certificates is not None else "tls"
        )
        self.health_server: grpc.Server | None = None
        self.health_port: int | None = None
        if settings.health_port is not None:
            self.health_server, self.health_port = _health_only_server(
                self.health, f"{settings.host}:{settings.health_port}", domain
            )
        self.metrics_port: int | None = None

    def start(self) -> "GrpcServer":
        self.server.start()
        if self.health_server is not None:
            self.health_server.start()
        if self.settings.metrics_port is not None:
            self.metrics_port = serve_metrics(
                self.settings.metrics_host, self.settings.metrics_port
            )
        log.info(
            "server.started",
            port=self.port,
            transport=self.transport,
            health_port=self.health_port,
            metrics_port=self.metrics_port,
        )
        if self.tokens is None:
            log.warning(
                "server.auth_off",
                message=f"{self.settings.env_name('tokens_file')} is unset: every caller may "
                "call every method without a token",
            )
        else:
            log.info("server.auth_on", principals=len(self.tokens))
            unlisted = unlisted_methods(b.full_name for b in self.bindings)
            if unlisted:
                log.error("server.auth_unlisted_methods", methods=unlisted, callers="none")
        return self

    def mark_ready(self) -> None:
        """Tells health checkers that the service can take traffic."""
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("server.serving", port=self.port)

    def set_part_health(self, name: str, serving: bool) -> None:
        """The health of one part of the service under a name of its own (a consumer, say),
        apart from the service's: probes of the service are not moved by it."""
        status = health_pb2.HealthCheckResponse
        self.health.set(name, status.SERVING if serving else status.NOT_SERVING)

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING at once, then lets in-flight calls finish for up to `grace` seconds."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        log.info("server.stopping", grace_seconds=grace)
        self.health.enter_graceful_shutdown()
        if self._on_stopping:
            self._on_stopping()
        self.server.stop(grace).wait()
        if self.health_server is not None:  # answers NOT_SERVING until the last call is done
            self.health_server.stop(0).wait()
        if self._on_stop:
            self._on_stop()
        log.info("server.stopped")

    def serve_until(self, shutdown: ShutdownSignal) -> None:
        """Serves until a shutdown signal arrives (see `catch_shutdown_signals`), then stops
        gracefully. Only a service's own process serves this way: it settles the garbage
        collector for good first (`settle_garbage_collector`)."""
        settle_garbage_collector()
        log.info("server.signal", signal=shutdown.wait())
        self.stop()

    def _set_health(self, status) -> None:
        self.health.set("", status)
        for binding in self.bindings:
            self.health.set(binding.full_name, status)


def settle_garbage_collector() -> None:
    """Once loaded: what start-up built (modules, models, policies) is moved out of the
    collector's sight, so that no full collection walks it again, and young collections run
    less often (`YOUNG_GENERATION_THRESHOLD`). A frozen object is never collected: one left in
    a cycle by a later reload stays, once, which is bounded by what start-up built."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, oldest)
    log.info("server.collector_settled", frozen_objects=gc.get_freeze_count())


def _health_only_server(
    servicer: health.HealthServicer, address: str, domain: str
) -> tuple[grpc.Server, int]:
    """A plaintext server with nothing but the health service: Kubernetes' native gRPC probes
    speak no TLS. It shares the main server's health servicer, so both tell the same."""
    server = grpc.server(
        # Probes call Check; a few threads leave room for a Watch or two beside them.
        futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"{domain}-health"),
        options=[("grpc.so_reuseport", 0), *KEEPALIVE_OPTIONS],
    )
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    try:
        return server, server.add_insecure_port(address)
    except RuntimeError:
        raise SystemExit(
            f"cannot listen for health on {address}: the address is taken or invalid"
        ) from None
