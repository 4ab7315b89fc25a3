"""Measurement helpers for `make bench`: servers in their own processes, latency and rates."""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Footprint:
    """A server process's resident memory: once serving and idle, and when its load is done."""

    server: str
    idle_mib: float
    loaded_mib: float
    peak_mib: float  # the most it ever held (VmHWM)


# Every server process `server_process` ran, in order: `make bench` prints them at the end.
FOOTPRINTS: list[Footprint] = []


def resident_mib(pid: int) -> tuple[float, float]:
    """The process's resident set now and at its highest, in MiB (Linux /proc)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def server_name(args: list[str], env: dict[str, str]) -> str:
    """`scoring`, `limits (postgresql)`: the module run, and the database it runs on."""
    name = (
        (args[1] if args[0] == "-m" else args[0]).removeprefix("services.").removeprefix("bench.")
    )
    databases = {
        v.split(":")[0].split("+")[0] for k, v in env.items() if k.endswith("DATABASE_URL")
    }
    return f"{name} ({', '.join(sorted(databases))})" if databases else name


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    calls: int


def fill_features(features, values: dict) -> None:
    """Sets a protobuf map of google.protobuf.Value from numbers and category strings."""
    for name, value in values.items():
        if isinstance(value, str):
            features[name].string_value = value
        else:
            features[name].number_value = value


def child_pid(module: str) -> int | None:
    """The process this bench started running `module` (None where /proc does not tell)."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = stat.read_text().rsplit(")", 1)[1].split()[1]
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if parent == me and module.encode() in command:
            return int(stat.parent.name)
    return None


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used (/proc/<pid>/stat): what a server spends per
    call depends far less on what else the machine runs than its calls per second do."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def server_process(args: list[str], port: int, env: dict | None = None):
    """Runs a server in its own process (its own GIL) until the block ends."""
    # Its log to a file, not to a pipe nobody reads: past the pipe's 64 KiB the server would
    # block on its next log line.
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed when the block ends
    process = subprocess.Popen(
        [sys.executable, *args],
        env={**ENV, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        time.sleep(0.5)  # let the server finish loading before it is timed
        idle, _ = resident_mib(process.pid)
        yield process
        loaded, peak = resident_mib(process.pid)
        FOOTPRINTS.append(Footprint(server_name(args, env or {}), idle, loaded, peak))
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def sequential(call: Callable[[], object], calls: int, warmup: int = 200) -> Latency:
    for _ in range(warmup):
        call()
    timings = np.empty(calls)
    for i in range(calls):
        started = time.perf_counter()
        call()
        timings[i] = time.perf_counter() - started
    return Latency(
        float(np.percentile(timings, 50) * 1000), float(np.percentile(timings, 99) * 1000), calls
    )


def concurrent_rate(call: Callable[[], object], in_flight: int, seconds: float) -> float:
    """Calls per second with `in_flight` callers, each calling back to back."""
    for _ in range(50):
        call()
    counts = [0] * in_flight
    stop = threading.Event()

    def caller(slot: int) -> None:
        while not stop.is_set():
            call()
            counts[slot] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(in_flight)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def wait_serving(port: int, service: str = "") -> None:
    """Returns once the server on `port` reports `service` SERVING (up to a minute)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=service), timeout=60, wait_for_ready=True
        )
        next(u for u in watch if u.status == health_pb2.HealthCheckResponse.SERVING)
        watch.cancel()


@contextmanager
def service_stub(name: str, stub_class, settings: dict[str, str]):
    """`python -m services.<name>` on a free port with the given settings (names without the
    CREDITLINE_<NAME>_ prefix), serving, and a `stub_class` stub connected to it."""
    prefix = f"CREDITLINE_{name.upper()}_"
    port = free_port()
    env = {prefix + "PORT": str(port), **{prefix + k: v for k, v in settings.items()}}
    with (
        server_process(["-m", f"services.{name}"], port, env),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        wait_serving(port)
        yield stub_class(channel)
