"""The shared runtime on a real server: health, graceful stop, errors, channels, settings."""

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from services.common.channels import ChannelOptions, create_channel
from services.common.context import current_call
from services.common.errors import FailedPrecondition, FieldViolation, InvalidArgument
from services.common.server import GrpcServer, ServiceBinding
from services.common.settings import ServiceSettings, load_settings

SERVICE = "test.v1.Probe"


class Probe:
    """Handlers of raw-bytes methods that exercise the runtime."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.flaky_attempts = 0
        self.relay_target: str | None = None

    def handlers(self) -> grpc.GenericRpcHandler:
        methods = {
            "Sleep": self.sleep,
            "Invalid": self.invalid,
            "Frozen": self.frozen,
            "Crash": self.crash,
            "Flaky": self.flaky,
            "Remaining": self.remaining,
            "Relay": self.relay,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE, {name: grpc.unary_unary_rpc_method_handler(m) for name, m in methods.items()}
        )

    def sleep(self, request, context):
        self.started.set()
        self.release.wait(10)
        return b"done"

    def invalid(self, request, context):
        raise InvalidArgument([FieldViolation("amount", "must be positive")])

    def frozen(self, request, context):
        raise FailedPrecondition("the line is frozen", reason="LINE_FROZEN")

    def crash(self, request, context):
        raise RuntimeError("secret internals")

    def flaky(self, request, context):
        self.flaky_attempts += 1
        if self.flaky_attempts < 3:
            context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return b"ok"

    def remaining(self, request, context):
        call = current_call.get()
        return f"{context.time_remaining():.3f}|{call.request_id}".encode()

    def relay(self, request, context):
        channel = create_channel(self.relay_target, service=SERVICE)
        with channel:
            return channel.unary_unary(f"/{SERVICE}/Remaining")(b"")


@pytest.fixture
def probe_server():
    probe = Probe()
    binding = ServiceBinding(
        lambda _servicer, server: server.add_generic_rpc_handlers((probe.handlers(),)),
        None,
        SERVICE,
    )
    server = GrpcServer(
        ServiceSettings(port=0, shutdown_grace_seconds=5), [binding], domain="test.creditline"
    ).start()
    probe.relay_target = f"127.0.0.1:{server.port}"
    yield server, probe
    probe.release.set()
    server.stop(0)


def call(server, method, timeout=5, **kwargs):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return channel.unary_unary(f"/{SERVICE}/{method}")(b"", timeout=timeout, **kwargs)


def health_status(server, service=""):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_is_not_serving_until_ready_then_serving(probe_server):
    server, _ = probe_server
    assert health_status(server) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert health_status(server, SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    server.mark_ready()
    assert health_status(server) == health_pb2.HealthCheckResponse.SERVING
    assert health_status(server, SERVICE) == health_pb2.HealthCheckResponse.SERVING


def test_stop_turns_health_not_serving_and_finishes_the_call_in_flight(probe_server):
    server, probe = probe_server
    server.mark_ready()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = channel.unary_unary(f"/{SERVICE}/Sleep").future(b"", timeout=10)
        assert probe.started.wait(5)

        stopper = threading.Thread(target=server.stop)
        stopper.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        time.sleep(0.2)
        assert not in_flight.done()  # stop waits for it within the grace period

        probe.release.set()
        assert in_flight.result() == b"done"
        stopper.join(10)
        assert not stopper.is_alive()


def test_invalid_argument_carries_field_violations_and_error_info(probe_server):
    server, _ = probe_server
    with pytest.raises(grpc.RpcError) as raised:
        call(server, "Invalid")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = {d.type_url.split(".")[-1]: d for d in rpc_status.from_call(raised.value).details}
    bad_request = error_details_pb2.BadRequest()
    details["BadRequest"].Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("amount", "must be positive")
    ]
    info = error_details_pb2.ErrorInfo()
    details["ErrorInfo"].Unpack(info)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "test.creditline")


def test_failed_precondition_keeps_its_reason(probe_server):
    server, _ = probe_server
    with pytest.raises(grpc.RpcError) as raised:
        call(server, "Frozen")
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert raised.value.details() == "the line is frozen"
    info = error_details_pb2.ErrorInfo()
    rpc_status.from_call(raised.value).details[0].Unpack(info)
    assert info.reason == "LINE_FROZEN"


def test_a_bug_is_internal_with_a_request_id_and_no_internals(probe_server):
    server, _ = probe_server
    with pytest.raises(grpc.RpcError) as raised:
        call(server, "Crash", metadata=[("x-request-id", "req-42")])
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in raised.value.details()
    assert "req-42" in raised.value.details()


def test_channel_retries_unavailable_only_on_named_methods(probe_server):
    server, probe = probe_server
    target = f"127.0.0.1:{server.port}"
    with create_channel(target, service=SERVICE, retryable_methods=["Flaky"]) as channel:
        assert channel.unary_unary(f"/{SERVICE}/Flaky")(b"") == b"ok"
    assert probe.flaky_attempts == 3

    probe.flaky_attempts = 0
    with create_channel(target, service=SERVICE) as channel, pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary(f"/{SERVICE}/Flaky")(b"")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert probe.flaky_attempts == 1


def test_channel_sets_a_default_deadline(probe_server):
    server, _ = probe_server
    options = ChannelOptions(default_timeout_seconds=3.0)
    with create_channel(f"127.0.0.1:{server.port}", service=SERVICE, options=options) as channel:
        remaining, _ = channel.unary_unary(f"/{SERVICE}/Remaining")(b"").decode().split("|")
    # The wire format of a deadline may round it up a little.
    assert 2.0 < float(remaining) < 3.1


def test_downstream_call_gets_the_callers_remaining_time_and_request_id(probe_server):
    server, _ = probe_server
    reply = call(server, "Relay", timeout=1.5, metadata=[("x-request-id", "req-7")])
    remaining, request_id = reply.decode().split("|")
    # Not the 5 s default: the caller's own deadline (the wire format may round it up a little).
    assert 0 < float(remaining) < 1.6
    assert request_id == "req-7"


def test_bad_settings_fail_fast_naming_the_variable(monkeypatch):
    class Settings(ServiceSettings):
        model_config = {**ServiceSettings.model_config, "env_prefix": "CREDITLINE_PROBE_"}

    monkeypatch.setenv("CREDITLINE_PROBE_PORT", "not-a-port")
    monkeypatch.setenv("CREDITLINE_PROBE_MAX_WORKERS", "0")
    with pytest.raises(SystemExit) as raised:
        load_settings(Settings)
    message = str(raised.value)
    assert "CREDITLINE_PROBE_PORT" in message
    assert "CREDITLINE_PROBE_MAX_WORKERS" in message


def test_a_taken_port_is_refused(probe_server):
    server, _ = probe_server
    with pytest.raises(SystemExit, match="cannot listen"):
        GrpcServer(ServiceSettings(port=server.port), [], domain="test.creditline")


def test_servers_asked_to_share_a_port_both_serve_it():
    first = GrpcServer(ServiceSettings(port=0, reuse_port=True), [], domain="test.creditline")
    first.start()
    second = None
    try:
        second = GrpcServer(
            ServiceSettings(port=first.port, reuse_port=True), [], domain="test.creditline"
        ).start()
        assert second.port == first.port
        first.mark_ready()
        second.mark_ready()
        first.stop(0)  # the port stays served by the other process's server
        assert health_status(second) == health_pb2.HealthCheckResponse.SERVING
    finally:
        first.stop(0)
        if second is not None:
            second.stop(0)


def test_each_call_gets_its_own_request_id_and_deadline(probe_server):
    """Handlers are wrapped once per method: what differs per call must come from the call."""
    server, _ = probe_server
    first = call(server, "Remaining", timeout=4, metadata=[("x-request-id", "req-a")]).decode()
    second = call(server, "Remaining", timeout=2, metadata=[("x-request-id", "req-b")]).decode()
    third = call(server, "Remaining").decode()
    assert [reply.split("|")[1] for reply in (first, second)] == ["req-a", "req-b"]
    # Each its own deadline (the wire format may round it up a little).
    assert 3.0 < float(first.split("|")[0]) < 4.1 and 1.0 < float(second.split("|")[0]) < 2.1
    generated = third.split("|")[1]
    assert len(generated) == 32 and generated not in ("req-a", "req-b")


SIGNAL_DURING_LOGGING = """
import time
from services.common.logging import configure_logging
from services.common.server import catch_shutdown_signals
import structlog

configure_logging("probe", "info")
shutdown = catch_shutdown_signals()
log = structlog.get_logger("probe")
print("ready", flush=True)
deadline = time.monotonic() + 20
while shutdown.received is None and time.monotonic() < deadline:
    log.info("busy", detail="x" * 200)  # the main thread is inside a log line most of the time
raise SystemExit(0 if shutdown.received == "SIGTERM" else 1)
"""


def test_a_signal_landing_in_the_middle_of_a_log_line_still_stops_the_process():
    """The handler runs on the main thread wherever it is; one that logged (as it once did)
    deadlocked on the logger's lock when the signal landed inside a log line."""
    process = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_DURING_LOGGING],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
    )
    assert process.stdout.readline().strip() == b"ready"
    threading.Thread(target=lambda: process.stdout.read(), daemon=True).start()
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(15) == 0
    finally:
        process.kill()
