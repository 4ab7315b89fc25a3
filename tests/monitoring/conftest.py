"""Fixtures for monitoring: real scoring, limits and monitoring servers on real databases."""

import grpc
import pytest

from creditline.monitoring.v1 import monitoring_service_pb2_grpc
from services.monitoring.__main__ import build_server
from services.monitoring.settings import MonitoringSettings
from tests.databases import database_url  # noqa: F401
from tests.jetstream import jetstream  # noqa: F401
from tests.limits.conftest import clock, start_limits  # noqa: F401
from tests.servers import start_scoring


class MonitoringClient(monitoring_service_pb2_grpc.MonitoringServiceStub):
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(address)
        super().__init__(self.channel)


@pytest.fixture(scope="module")
def scoring():
    server, _ = start_scoring()
    yield server
    server.stop(0)


def monitoring_settings(database_url: str, **overrides) -> MonitoringSettings:  # noqa: F811
    return MonitoringSettings(
        **{
            "port": 0,
            "database_url": database_url,
            "rules_reload_interval_seconds": 0,
            "shutdown_grace_seconds": 1,
            # Nothing listens here unless a test says so: signals wait in the outbox.
            "limits_target": "127.0.0.1:1",
            **overrides,
        }
    )


@pytest.fixture
def start_monitoring(database_url, scoring):  # noqa: F811
    """Starts monitoring servers on one fresh database; stops them after the test."""
    servers, clients = [], []

    def start(servicer_options: dict | None = None, **overrides) -> MonitoringClient:
        settings = monitoring_settings(
            database_url, **{"scoring_target": f"127.0.0.1:{scoring.port}", **overrides}
        )
        servers.append(build_server(settings, **(servicer_options or {})))
        clients.append(MonitoringClient(f"127.0.0.1:{servers[-1].port}"))
        clients[-1].server = servers[-1]
        return clients[-1]

    yield start
    for client in clients:
        client.channel.close()
    for server in servers:
        server.stop(0)


@pytest.fixture
def monitoring(start_monitoring) -> MonitoringClient:
    return start_monitoring()
