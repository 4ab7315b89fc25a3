"""Hot reload, refused artifacts, and the challenger scored in shadow."""

import json
import shutil
import threading
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from creditline.scoring.v1 import scoring_service_pb2 as pb
from creditline.scoring.v1 import scoring_service_pb2_grpc
from tests.scoring.helpers import card, score_request, valid_features
from tests.servers import start_scoring

# The bundled application model, and a newer version an operator publishes.
BUNDLED = card("application")["version"]
NEWER = "1.2.0"


def fail_for_age(model_card: dict) -> None:
    """The card of a model failing the four-fifths screen for applicants under 25."""
    age = model_card["fairness"]["groups"]["age"]
    age["under_25"]["approval_rate"], age["25_or_over"]["approval_rate"] = 0.5705, 0.7133
    age.update(air=0.7998, passes_four_fifths=False)


def add_version(
    model_dir, name: str, version: str, *, corrupt: str | None = None, edit=None
) -> None:
    """Copies the bundled version as a new one, the way an operator publishes it: into a
    dot-directory first, renamed into place once complete. `corrupt` breaks the ONNX bytes,
    the card, or the fairness record (failing the four-fifths screen, no search); `edit`
    changes the card."""
    source = sorted((model_dir / name).iterdir())[0]
    staging = model_dir / name / f".{version}"
    shutil.copytree(source, staging)
    card_path = staging / "card.json"
    model_card = json.loads(card_path.read_text())
    model_card["version"] = version
    if corrupt == "card":
        del model_card["score_scale"]
    if corrupt == "fairness":
        fail_for_age(model_card)
        del model_card["fairness"]["search"]
    if edit is not None:
        edit(model_card)
    card_path.write_text(json.dumps(model_card))
    if corrupt == "onnx":
        onnx = staging / "model.onnx"
        onnx.write_bytes(onnx.read_bytes()[:-100])
    staging.rename(model_dir / name / version)


def serving_version(stub, name: str) -> str:
    return stub.GetModel(pb.GetModelRequest(name=name), timeout=5).model.version


@pytest.fixture
def server_on(model_dir):
    started = []

    def start(**overrides):
        server, registry = start_scoring(model_dir=model_dir, **overrides)
        started.append(server)
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        return server, registry, scoring_service_pb2_grpc.ScoringServiceStub(channel)

    yield start
    for server in started:
        server.stop(0)


def test_new_version_swaps_in_under_load_without_a_failed_call(server_on, model_dir):
    _, _, stub = server_on(reload_interval_seconds=0.1)
    request = score_request("application", valid_features(card("application")))
    calls: list[tuple[float, str]] = []  # (when the call started, the version that answered)
    failures: list[grpc.RpcError] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                calls.append((started, stub.Score(request, timeout=5).model_version))
            except grpc.RpcError as error:
                failures.append(error)

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    time.sleep(0.5)
    add_version(model_dir, "application", NEWER)
    deadline = time.monotonic() + 20
    while serving_version(stub, "application") != NEWER and time.monotonic() < deadline:
        time.sleep(0.05)
    swapped_at = time.monotonic()
    time.sleep(0.5)
    stop.set()
    for thread in clients:
        thread.join()

    assert not failures, failures[:3]
    versions = {version for _, version in calls}
    assert versions == {BUNDLED, NEWER}
    # Calls in flight at the swap may finish on the old model; none started later may.
    assert {version for started, version in calls if started > swapped_at} == {NEWER}


@pytest.mark.parametrize("corrupt", ["onnx", "card", "fairness"])
def test_a_bad_artifact_is_refused_and_the_old_model_keeps_serving(server_on, model_dir, corrupt):
    _, registry, stub = server_on()
    refused = (
        REGISTRY.get_sample_value(
            "creditline_model_loads_total", {"model": "application", "outcome": "refused"}
        )
        or 0
    )
    add_version(model_dir, "application", "2.0.0", corrupt=corrupt)
    registry.refresh()
    registry.refresh()  # a refused artifact is not tried again until it changes
    assert serving_version(stub, "application") == BUNDLED
    request = score_request("application", valid_features(card("application")))
    assert stub.Score(request, timeout=5).model_version == BUNDLED
    assert (
        REGISTRY.get_sample_value(
            "creditline_model_loads_total", {"model": "application", "outcome": "refused"}
        )
        == refused + 1
    )


def test_a_model_failing_the_screen_is_served_when_its_search_is_recorded(server_on, model_dir):
    _, registry, stub = server_on()
    add_version(model_dir, "application", NEWER, edit=fail_for_age)  # the search stays
    registry.refresh()
    assert serving_version(stub, "application") == NEWER


def test_challenger_is_scored_in_shadow_and_never_returned(server_on, model_dir):
    add_version(model_dir, "application", NEWER)
    _, registry, stub = server_on(challenger_versions={"application": NEWER})
    model = stub.GetModel(pb.GetModelRequest(name="application"), timeout=5).model
    assert (model.version, model.challenger_version) == (BUNDLED, NEWER)

    labels = {
        "model": "application",
        "champion_version": BUNDLED,
        "challenger_version": NEWER,
        "band_agreement": "same",
    }
    before = REGISTRY.get_sample_value("creditline_shadow_evaluations_total", labels) or 0
    for pick in range(5):
        request = score_request("application", valid_features(card("application"), pick))
        assert stub.Score(request, timeout=5).model_version == BUNDLED
    registry.shadow.drain()
    # The challenger is a copy of the champion here, so every band agrees.
    assert REGISTRY.get_sample_value("creditline_shadow_evaluations_total", labels) == before + 5
