"""Score and BatchScore against the floors: a bare gRPC echo and raw onnxruntime."""

import json
import time

import grpc
import numpy as np
import onnxruntime as ort

from bench.harness import concurrent_rate, free_port, sequential, server_process
from creditline.scoring.v1 import scoring_service_pb2 as pb
from creditline.scoring.v1 import scoring_service_pb2_grpc
from services.scoring.settings import BUNDLED_MODELS

MODEL = "application"
IN_FLIGHT = 16
BATCH_ROWS = 1000


def sample_rows(card: dict) -> tuple[np.ndarray, list[dict]]:
    """Real holdout rows from the card's parity sample, encoded and as named features."""
    encoded = np.asarray(card["parity_sample"]["features"], dtype=np.float32)
    named = [
        {
            spec["name"]: spec["categories"][int(value)]
            if spec["type"] == "categorical"
            else float(value)
            for spec, value in zip(card["features"], row, strict=True)
        }
        for row in encoded
    ]
    return encoded, named


def score_request(features: dict) -> pb.ScoreRequest:
    request = pb.ScoreRequest(model=MODEL)
    for name, value in features.items():
        if isinstance(value, str):
            request.features[name].string_value = value
        else:
            request.features[name].number_value = value
    return request


def batch_request(card: dict, rows: list[dict]) -> pb.BatchScoreRequest:
    request = pb.BatchScoreRequest(model=MODEL)
    for spec in card["features"]:
        column = request.columns.add(name=spec["name"])
        values = [row[spec["name"]] for row in rows]
        (column.categories if spec["type"] == "categorical" else column.numbers).extend(values)
    return request


def run(seconds: float, calls: int) -> list[tuple]:
    version_dir = sorted((BUNDLED_MODELS / MODEL).iterdir())[-1]
    card = json.loads((version_dir / "card.json").read_text())
    encoded, named = sample_rows(card)
    request = score_request(named[0])
    batch = np.resize(encoded, (BATCH_ROWS, encoded.shape[1]))
    batch_message = batch_request(card, [named[i % len(named)] for i in range(BATCH_ROWS)])

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(version_dir / "model.onnx"), options)
    row = encoded[:1]
    raw = sequential(lambda: session.run(None, {"features": row}), calls)
    started = time.perf_counter()
    repeats = 200
    for _ in range(repeats):
        session.run(None, {"features": batch})
    raw_batch_rate = repeats * BATCH_ROWS / (time.perf_counter() - started)

    port = free_port()
    payload = request.SerializeToString()
    with (
        server_process(["-m", "bench.echo_server", str(port)], port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        echo = channel.unary_unary("/bench.Echo/Echo")
        echo_latency = sequential(lambda: echo(payload, timeout=5), calls)
        echo_rate = concurrent_rate(lambda: echo(payload, timeout=5), IN_FLIGHT, seconds)

    port = free_port()
    env = {"CREDITLINE_SCORING_PORT": str(port), "CREDITLINE_SCORING_RELOAD_INTERVAL_SECONDS": "0"}
    with (
        server_process(["-m", "services.scoring"], port, env),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = scoring_service_pb2_grpc.ScoringServiceStub(channel)
        score_latency = sequential(lambda: stub.Score(request, timeout=5), calls)
        score_rate = concurrent_rate(lambda: stub.Score(request, timeout=5), IN_FLIGHT, seconds)
        stub.BatchScore(batch_message, timeout=30)
        started = time.perf_counter()
        batches = 0
        while time.perf_counter() - started < seconds:
            stub.BatchScore(batch_message, timeout=30)
            batches += 1
        batch_rate = batches * BATCH_ROWS / (time.perf_counter() - started)

    return [
        ("raw onnxruntime, one row, p50", f"{raw.p50_ms * 1000:.0f} µs", "", "", ""),
        ("raw onnxruntime, 1,000-row batches", f"{raw_batch_rate:,.0f} rows/s", "", "", ""),
        ("echo p50 / p99", f"{echo_latency.p50_ms:.3f} / {echo_latency.p99_ms:.3f} ms", "", "", ""),
        (f"echo, {IN_FLIGHT} in flight", f"{echo_rate:,.0f} calls/s", "", "", ""),
        (
            "Score p50",
            f"{score_latency.p50_ms:.3f} ms",
            "echo p50",
            score_latency.p50_ms / echo_latency.p50_ms,
            "<= 1.25x",
        ),
        (
            "Score p99",
            f"{score_latency.p99_ms:.3f} ms",
            "echo p99",
            score_latency.p99_ms / echo_latency.p99_ms,
            "<= 1.5x",
        ),
        (
            f"Score, {IN_FLIGHT} in flight",
            f"{score_rate:,.0f} calls/s",
            "echo",
            score_rate / echo_rate,
            ">= 0.8x",
        ),
        (
            "BatchScore, 1,000-row batches",
            f"{batch_rate:,.0f} rows/s",
            "raw onnxruntime",
            batch_rate / raw_batch_rate,
            ">= 200,000 rows/s",
        ),
    ]
