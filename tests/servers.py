"""Real servers for tests of any service: build on port 0, connect, wait until serving, stop."""

import subprocess

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.scoring.__main__ import build_server as build_scoring_server
from services.scoring.settings import ScoringSettings


def scoring_settings(**overrides) -> ScoringSettings:
    defaults = dict(port=0, reload_interval_seconds=0, shutdown_grace_seconds=2)
    return ScoringSettings(**{**defaults, **overrides})


def start_scoring(**overrides):
    """A started scoring server on the bundled models and its registry."""
    return build_scoring_server(scoring_settings(**overrides))


def wait_serving(
    port: int, service: str = "", process: subprocess.Popen | None = None, attempts: int = 24
) -> None:
    """Returns once the server on `port` reports SERVING through the health service's Watch.

    Each attempt waits up to 5 s for the server to come up and say so; when `process` is given
    and has exited, it fails at once instead of waiting out the attempts.
    """
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(attempts):
            if process is not None and process.poll() is not None:
                raise AssertionError(f"the server exited with {process.returncode} before serving")
            watch = health.Watch(
                health_pb2.HealthCheckRequest(service=service), timeout=5, wait_for_ready=True
            )
            try:
                for update in watch:
                    if update.status == health_pb2.HealthCheckResponse.SERVING:
                        return
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            finally:
                watch.cancel()
    raise AssertionError(f"127.0.0.1:{port} did not report SERVING")
