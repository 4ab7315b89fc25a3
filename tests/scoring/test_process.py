"""The scoring service as an operator runs it: its own process, env config, logs, metrics,
SIGTERM."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.harness import free_port
from creditline.scoring.v1 import scoring_service_pb2_grpc
from tests.scoring.helpers import batch_request, card, score_request, valid_features

# A value to look for in the logs: it must never appear there.
MARKER_AMOUNT = 7373.0


def scoring_process(**popen) -> tuple[subprocess.Popen, int, int]:
    """`python -m services.scoring` on free ports, its log lines on a pipe; and its gRPC and
    metrics ports."""
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "CREDITLINE_SCORING_PORT": str(port),
        "CREDITLINE_SCORING_METRICS_PORT": str(metrics_port),
        "CREDITLINE_SCORING_RELOAD_INTERVAL_SECONDS": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "services.scoring"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    )
    return process, port, metrics_port


def test_process_logs_json_serves_metrics_and_stops_on_sigterm():
    process, port, metrics_port = scoring_process(stderr=subprocess.STDOUT)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=60, wait_for_ready=True)
            for update in watch:
                if update.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            features = valid_features(card("application"))
            features["credit_amount"] = MARKER_AMOUNT
            stub = scoring_service_pb2_grpc.ScoringServiceStub(channel)
            stub.Score(
                score_request("application", features),
                timeout=5,
                metadata=[("x-request-id", "req-process-1")],
            )
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
            process.send_signal(signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(5)

    records = [json.loads(line) for line in lines]  # every line is JSON
    rpc = next(r for r in records if r.get("request_id") == "req-process-1")
    assert rpc["method"] == "creditline.scoring.v1.ScoringService/Score"
    assert rpc["code"] == "OK" and rpc["latency_ms"] > 0
    assert rpc["service"] == "scoring"
    assert not any("7373" in line for line in lines), "a feature value reached the logs"
    assert [r["event"] for r in records if r["event"].startswith("server.stop")] == [
        "server.stopping",
        "server.stopped",
    ]
    text = metrics.decode()
    assert (
        'grpc_server_handling_seconds_count{grpc_code="OK",grpc_method="Score",'
        'grpc_service="creditline.scoring.v1.ScoringService"} 1.0' in text
    )
    assert 'creditline_model_serving{model="application",role="champion",version="1.1.0"}' in text


def young_collections(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    return float(re.search(r'python_gc_collections_total\{generation="0"\} (\S+)', text)[1])


def test_a_serving_process_collects_garbage_rarely_under_batches():
    """Each 1,000-row BatchScore builds thousands of objects: at Python's default threshold
    that is a collection every few hundred, and the process settles its collector once
    serving, so a run of batches triggers only a few."""
    process, port, metrics_port = scoring_process()
    rows = [valid_features(card("application"), pick) for pick in range(1_000)]
    request = batch_request("application", rows)
    try:
        assert process.stdout is not None
        next(line for line in process.stdout if "server.collector_settled" in line)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = scoring_service_pb2_grpc.ScoringServiceStub(channel)
            stub.BatchScore(request, timeout=30)
            before = young_collections(metrics_port)
            for _ in range(20):
                assert len(stub.BatchScore(request, timeout=30).results) == 1_000
            collections = young_collections(metrics_port) - before
    finally:
        process.terminate()
        process.wait(30)
    # 20 batches at Python's default threshold (700 objects) give about 36; settled, none.
    assert collections <= 5


def test_bad_configuration_fails_fast_with_the_variable_named():
    env = {**os.environ, "CREDITLINE_SCORING_MAX_BATCH_ROWS": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "services.scoring"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "CREDITLINE_SCORING_MAX_BATCH_ROWS" in result.stderr
