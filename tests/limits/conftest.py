"""Fixtures for limits: a real scoring server, a real limits server on a real database."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from creditline.limits.v1 import limits_service_pb2_grpc
from services.limits.__main__ import build_server
from services.limits.settings import LimitsSettings
from tests.databases import database_url  # noqa: F401
from tests.servers import start_scoring


class Clock:
    """Time the tests can move forward: cool-offs, months on book, waiting periods."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 9, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(scope="module")
def scoring():
    server, _ = start_scoring()
    yield server
    server.stop(0)


@pytest.fixture
def clock() -> Clock:
    return Clock()


class LimitsClient(limits_service_pb2_grpc.LimitsServiceStub):
    """A stub that knows its server's address, for tests that open more channels."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(address)
        super().__init__(self.channel)


@pytest.fixture
def start_limits(database_url, clock):  # noqa: F811
    """Starts limits servers on a fresh database, calling the given scoring server."""
    servers, clients = [], []

    def start(scoring_port: int, **overrides) -> LimitsClient:
        settings = LimitsSettings(
            **{
                "port": 0,
                "database_url": database_url,
                "scoring_target": f"127.0.0.1:{scoring_port}",
                "policy_reload_interval_seconds": 0,
                "shutdown_grace_seconds": 2,
                **overrides,
            }
        )
        servers.append(build_server(settings, clock=clock))
        clients.append(LimitsClient(f"127.0.0.1:{servers[-1].port}"))
        clients[-1].server = servers[-1]
        return clients[-1]

    yield start
    for client in clients:
        client.channel.close()
    for server in servers:
        server.stop(0)


@pytest.fixture
def limits(start_limits, scoring) -> LimitsClient:
    return start_limits(scoring.port)
