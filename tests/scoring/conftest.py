"""Fixtures that start real scoring servers on port 0 and connect over real channels."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from creditline.scoring.v1 import scoring_service_pb2_grpc
from services.scoring.settings import BUNDLED_MODELS
from tests.reflection_client import ReflectionClient
from tests.servers import start_scoring


@pytest.fixture(scope="session")
def scoring_server():
    """A scoring server on the bundled models, shared by the read-only tests."""
    server, registry = start_scoring()
    yield server, registry
    server.stop(0)


@pytest.fixture(scope="session")
def scoring_channel(scoring_server) -> Iterator[grpc.Channel]:
    server, _ = scoring_server
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture(scope="session")
def scoring_stub(scoring_channel) -> scoring_service_pb2_grpc.ScoringServiceStub:
    return scoring_service_pb2_grpc.ScoringServiceStub(scoring_channel)


@pytest.fixture(scope="session")
def scoring_reflection(scoring_channel) -> ReflectionClient:
    return ReflectionClient(scoring_channel)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A private copy of the bundled models, for tests that add or break versions."""
    target = tmp_path / "models"
    shutil.copytree(BUNDLED_MODELS, target)
    return target
