"""Real servers for tests of any service: build on port 0, connect, wait until serving, stop."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.harness import free_port
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


ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def service_process(
    name: str, settings: dict[str, str], log: Path, port: int | None = None
) -> Iterator[tuple]:
    """`python -m services.<name>` on `port` (a free one by default) with the given settings
    (names without the CREDITLINE_<NAME>_ prefix), output to `log`, serving; yields the process
    and its address. Stopped with SIGTERM at the end (killed if it outlives 30 s), unless a test
    killed it."""
    prefix = f"CREDITLINE_{name.upper()}_"
    port = port or free_port()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        prefix + "PORT": str(port),
        **{prefix + key: value for key, value in settings.items()},
    }
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_serving(port, process=process)
        yield process, f"127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def eventually(
    condition: Callable[[], object], what: str = "", timeout: float = 45.0, interval: float = 0.05
):
    """Polls until `condition` returns something truthy, and returns it: a generous bound for
    work other threads or processes finish, not a timing claim."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout} s: {what or 'the condition'}")
