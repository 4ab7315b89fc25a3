"""The `creditline` command as an operator types it."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.harness import free_port
from services.scoring.modelling.artifact import load_artifact, validate_artifact

CREDITLINE = Path(sys.executable).parent / "creditline"


def wait_serving(port: int, service: str = "") -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=60, wait_for_ready=True
        )
        next(u for u in watch if u.status == health_pb2.HealthCheckResponse.SERVING)


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_scoring_on_a_chosen_port():
    port = free_port()
    process = subprocess.Popen(
        [CREDITLINE, "serve", "scoring", "--port", str(port)], stdout=subprocess.DEVNULL
    )
    wait_serving(port, "creditline.scoring.v1.ScoringService")
    assert stop(process) == 0


def test_run_starts_the_suite_and_stops_it_on_sigterm():
    port = free_port()
    env = {**os.environ, "CREDITLINE_SCORING_PORT": str(port)}
    process = subprocess.Popen([CREDITLINE, "run"], env=env, stdout=subprocess.DEVNULL)
    wait_serving(port)
    assert stop(process) == 0


def test_model_train_publishes_a_valid_model(tmp_path):
    result = subprocess.run(
        [CREDITLINE, "model", "train", "--name", "application", "--output", tmp_path],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    artifact = load_artifact(tmp_path / "application" / "1.0.0")
    validate_artifact(artifact)
    bundled = Path(__file__).resolve().parent.parent / "models" / "application" / "1.0.0"
    # Same seed and date: the published bytes are the bundled model's, to the byte.
    assert artifact.onnx == (bundled / "model.onnx").read_bytes()
    assert (tmp_path / "application/1.0.0/card.json").read_bytes() == (
        bundled / "card.json"
    ).read_bytes()


def test_unknown_model_name_is_refused(tmp_path):
    result = subprocess.run(
        [CREDITLINE, "model", "train", "--name", "fraud", "--output", tmp_path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "application, behaviour" in result.stderr + result.stdout
