"""Score and BatchScore against the floors: a bare gRPC echo and raw onnxruntime."""

import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager

import grpc
import numpy as np
import onnxruntime as ort

from bench.harness import (
    ENV,
    Latency,
    concurrent_rate,
    cpu_seconds,
    fill_features,
    free_port,
    sequential,
    server_process,
)
from creditline.scoring.v1 import scoring_service_pb2 as pb
from creditline.scoring.v1 import scoring_service_pb2_grpc
from services.scoring.settings import BUNDLED_MODELS

MODEL = "application"
IN_FLIGHT = 16
BATCH_ROWS = 1000
ROUNDS = 5
# Scoring as a pod of two cores would run it: a process a core on one port (SO_REUSEPORT).
# The kernel spreads connections, not calls, so the callers use a connection each of several.
PROCESSES = 2
CONNECTIONS = 4
# BatchScore's result layouts, each measured: a message per row, or columns.
LAYOUTS = {"rows": pb.RESULT_LAYOUT_ROWS, "columns": pb.RESULT_LAYOUT_COLUMNS}


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
    fill_features(request.features, features)
    return request


def batch_request(
    card: dict, rows: list[dict], layout: "pb.ResultLayout.ValueType" = pb.RESULT_LAYOUT_ROWS
) -> pb.BatchScoreRequest:
    request = pb.BatchScoreRequest(model=MODEL, result_layout=layout)
    for spec in card["features"]:
        column = request.columns.add(name=spec["name"])
        values = [row[spec["name"]] for row in rows]
        (column.categories if spec["type"] == "categorical" else column.numbers).extend(values)
    return request


def run(seconds: float, calls: int) -> list[tuple]:
    """Echo and Score measured in alternating turns, so both see the same machine.

    The machine is shared and its speed drifts from minute to minute: each measure is taken
    in ROUNDS short turns, echo and Score back to back (their order alternating), and every
    ratio is the median of the ratios of the same round. Values are medians over the rounds,
    with the lowest and highest in brackets.
    """
    version_dir = sorted((BUNDLED_MODELS / MODEL).iterdir())[-1]
    card = json.loads((version_dir / "card.json").read_text())
    encoded, named = sample_rows(card)
    request = score_request(named[0])
    batch = np.resize(encoded, (BATCH_ROWS, encoded.shape[1]))
    batch_rows = [named[i % len(named)] for i in range(BATCH_ROWS)]
    batches = {layout: batch_request(card, batch_rows, layout) for layout in LAYOUTS.values()}

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

    echo_port, scoring_port = free_port(), free_port()
    env = {"CREDITLINE_SCORING_RELOAD_INTERVAL_SECONDS": "0"}
    payload = request.SerializeToString()
    with (
        server_process(["-m", "bench.echo_server", str(echo_port)], echo_port) as echo_server,
        server_process(
            ["-m", "services.scoring"],
            scoring_port,
            {**env, "CREDITLINE_SCORING_PORT": str(scoring_port)},
        ) as scoring_server,
        shared_port_servers(PROCESSES, env) as shared_port,
        grpc.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel,
        grpc.insecure_channel(f"127.0.0.1:{scoring_port}") as scoring_channel,
        ExitStack() as channels,
    ):
        echo_method = echo_channel.unary_unary("/bench.Echo/Echo")
        stub = scoring_service_pb2_grpc.ScoringServiceStub(scoring_channel)
        shared_stubs = [
            scoring_service_pb2_grpc.ScoringServiceStub(
                channels.enter_context(separate_channel(shared_port, i))
            )
            for i in range(CONNECTIONS)
        ]
        next_shared_stub = itertools.cycle(shared_stubs).__next__
        calls_of = {
            "echo": lambda: echo_method(payload, timeout=5),
            "score": lambda: stub.Score(request, timeout=5),
            "processes": lambda: next_shared_stub().Score(request, timeout=5),
        }
        pids = {"echo": echo_server.pid, "score": scoring_server.pid}
        latency: dict[str, list[Latency]] = {"echo": [], "score": []}
        # Server process CPU seconds per sequential call, and per batch.
        cpu: dict[str, list[float]] = {name: [] for name in ("echo", "score", *LAYOUTS)}
        rate: dict[str, list[float]] = {"echo": [], "score": [], "processes": []}
        batch_rates: dict[str, list[float]] = {name: [] for name in LAYOUTS}
        turn = seconds / ROUNDS
        warmup = 100
        for round_ in range(ROUNDS):
            order = ("echo", "score") if round_ % 2 == 0 else ("score", "echo")
            for name in order:
                before = cpu_seconds(pids[name])
                latency[name].append(sequential(calls_of[name], calls // ROUNDS, warmup))
                cpu[name].append((cpu_seconds(pids[name]) - before) / (calls // ROUNDS + warmup))
            for name in (*order, "processes"):
                rate[name].append(concurrent_rate(calls_of[name], IN_FLIGHT, turn))
            for name, layout in LAYOUTS.items():
                before = cpu_seconds(scoring_server.pid)
                rows_per_second, made = batch_rate(
                    lambda request=batches[layout]: stub.BatchScore(request, timeout=30),
                    BATCH_ROWS,
                    turn,
                )
                batch_rates[name].append(rows_per_second)
                cpu[name].append((cpu_seconds(scoring_server.pid) - before) / made)

    def ratio(numerators: list[float], denominators: list[float]) -> float:
        return statistics.median(n / d for n, d in zip(numerators, denominators, strict=True))

    echo_p50 = [r.p50_ms for r in latency["echo"]]
    echo_p99 = [r.p99_ms for r in latency["echo"]]
    score_p50 = [r.p50_ms for r in latency["score"]]
    score_p99 = [r.p99_ms for r in latency["score"]]
    return [
        ("raw onnxruntime, one row, p50", f"{raw.p50_ms * 1000:.0f} µs", "", "", ""),
        ("raw onnxruntime, 1,000-row batches", f"{raw_batch_rate:,.0f} rows/s", "", "", ""),
        ("echo p50", rounds(echo_p50, "ms"), "", "", ""),
        ("echo p99", rounds(echo_p99, "ms"), "", "", ""),
        (f"echo, {IN_FLIGHT} in flight", rounds(rate["echo"], "calls/s"), "", "", ""),
        ("Score p50", rounds(score_p50, "ms"), "echo p50", ratio(score_p50, echo_p50), "<= 1.25x"),
        ("Score p99", rounds(score_p99, "ms"), "echo p99", ratio(score_p99, echo_p99), "<= 1.5x"),
        (
            f"Score, {IN_FLIGHT} in flight",
            rounds(rate["score"], "calls/s"),
            "echo",
            ratio(rate["score"], rate["echo"]),
            ">= 0.8x",
        ),
        (
            f"Score, {IN_FLIGHT} in flight, {PROCESSES} processes, {CONNECTIONS} connections",
            rounds(rate["processes"], "calls/s"),
            "echo",
            ratio(rate["processes"], rate["echo"]),
            ">= 0.8x",
        ),
        *(
            (
                f"BatchScore, 1,000-row batches, results in {name}",
                rounds(batch_rates[name], "rows/s"),
                "raw onnxruntime",
                statistics.median(batch_rates[name]) / raw_batch_rate,
                ">= 200,000 rows/s",
            )
            for name in LAYOUTS
        ),
        # What the server process itself spends, which load moves far less than latency.
        (
            "echo, server process CPU per sequential call",
            rounds([c * 1e6 for c in cpu["echo"]], "µs"),
            "",
            "",
            "",
        ),
        (
            "Score, server process CPU per sequential call",
            rounds([c * 1e6 for c in cpu["score"]], "µs"),
            "echo",
            ratio(cpu["score"], cpu["echo"]),
            "",
        ),
        *(
            (
                f"BatchScore, server process CPU per 1,000-row batch, results in {name}",
                rounds([c * 1e3 for c in cpu[name]], "ms"),
                "",
                "",
                f"<= {1e3 * BATCH_ROWS / 200_000:.0f} ms for 200,000 rows/s",
            )
            for name in LAYOUTS
        ),
    ]


def rounds(values: list[float], unit: str) -> str:
    """The median over the rounds, then the lowest and highest round in brackets."""
    if unit == "ms":
        low, high = f"{min(values):.2f}", f"{max(values):.2f}"
        return f"{statistics.median(values):.3f} ms [{low}-{high}]"
    return f"{statistics.median(values):,.0f} {unit} [{min(values):,.0f}-{max(values):,.0f}]"


def batch_rate(call: Callable[[], object], rows: int, seconds: float) -> tuple[float, int]:
    """Rows per second of back-to-back batches, one in flight; and the batches made, the
    warm-up included."""
    call()
    started = time.perf_counter()
    batches = 0
    while time.perf_counter() - started < seconds:
        call()
        batches += 1
    return batches * rows / (time.perf_counter() - started), batches + 1


@contextmanager
def shared_port_servers(count: int, env: dict[str, str]):
    """`count` scoring processes listening on one port (CREDITLINE_SCORING_REUSE_PORT), each
    serving before the block starts; yields the port."""
    port = free_port()
    settings = {
        **ENV,
        **env,
        "CREDITLINE_SCORING_PORT": str(port),
        "CREDITLINE_SCORING_REUSE_PORT": "true",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "services.scoring"],
            env=settings,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(listening(p.pid, port) for p in processes):
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                raise RuntimeError("a scoring process on the shared port did not start")
            time.sleep(0.1)
        time.sleep(1.0)  # models are loaded before the port opens; let start-up settle
        yield port
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


def listening(pid: int, port: int) -> bool:
    """Whether process `pid` holds a TCP socket listening on `port` (IPv4 or IPv6)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in itertools.islice(lines, 1, None):
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "0A" and fields[9] in inodes:
                    return True
    return False


def separate_channel(port: int, index: int) -> grpc.Channel:
    """A channel with a connection of its own: channels with equal arguments share one."""
    return grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1), ("bench.index", index)]
    )
