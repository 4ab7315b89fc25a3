"""`make bench SOAK_MINUTES=10`: the whole suite under mixed traffic for a while, and whether any
service's resident memory keeps growing.

The three services run wired together as `make run` starts them (SQLite, the bundled models;
or PostgreSQL with --soak-postgres), each in its own process. Callers in threads of their own
for the whole soak: Score and BatchScore; Draw and Repay, GetAccount, GetCustomerView and
ListLimitEvents on the opened lines, and new lines opened; repayment events ingested in
batches, a missed payment now and then (alerts, signals to limits, freezes and notices follow);
WatchAlerts and WatchNotices streams opened, read and hung up; a review run. Each process's
resident memory is read every few seconds. A service holds steady when the second half of the
soak adds no more than a small allowance: caches fill in the first half, and a leak keeps on
growing.
"""

import itertools
import json
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bench.harness import free_port, resident_mib, server_process, wait_serving
from bench.limits import POSTGRES_URL, drawer, open_request, postgres_schema
from bench.monitoring import START, cny
from bench.scoring import MODEL, batch_request, sample_rows, score_request
from creditline.limits.v1 import limits_service_pb2 as limits_pb
from creditline.limits.v1 import limits_service_pb2_grpc
from creditline.monitoring.v1 import monitoring_service_pb2 as monitoring_pb
from creditline.monitoring.v1 import monitoring_service_pb2_grpc
from creditline.scoring.v1 import scoring_service_pb2_grpc
from services.scoring.settings import BUNDLED_MODELS

SERVICES = ("scoring", "limits", "monitoring")
ACCOUNTS = 200  # lines opened before the traffic starts; more are opened during it
SAMPLE_SECONDS = 5.0
STREAM_SECONDS = 20.0  # how long a watch stays open before it hangs up and watches again
# An account's events are a day apart: its histories fill their windows (a year at most) within
# the first minutes, so that what grows after them is not history but a leak.
DAY = 86_400
# Seconds between calls of a kind (the others go back to back): a pace for the big ones, so that
# the soak stays a mix rather than a BatchScore benchmark.
PAUSES = {"BatchScore": 0.2, "RunReview": 15.0}
# The second half may add this much (MiB, or this fraction of the first half's end) and still
# count as steady: allocator pools and caches settle in steps.
STEADY_MIB, STEADY_FRACTION = 4.0, 0.03


@dataclass
class Traffic:
    """What the callers did: calls by kind, and refusals (expected ones included) by code."""

    calls: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str, error: grpc.RpcError | None = None) -> None:
        with self.lock:
            self.calls[kind] = self.calls.get(kind, 0) + 1
            if error is not None:
                code = f"{kind}: {error.code().name}"
                self.refused[code] = self.refused.get(code, 0) + 1


class Suite:
    """Scoring, limits and monitoring in processes of their own, on the databases given."""

    def __init__(self, databases: dict[str, str], stack: ExitStack) -> None:
        ports = {name: free_port() for name in SERVICES}
        targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
        settings = {
            "scoring": {"RELOAD_INTERVAL_SECONDS": "0"},
            "limits": {
                "DATABASE_URL": databases["limits"],
                "SCORING_TARGET": targets["scoring"],
                "POLICY_RELOAD_INTERVAL_SECONDS": "0",
            },
            "monitoring": {
                "DATABASE_URL": databases["monitoring"],
                "LIMITS_TARGET": targets["limits"],
                "SCORING_TARGET": targets["scoring"],
                "RULES_RELOAD_INTERVAL_SECONDS": "0",
            },
        }
        self.pids: dict[str, int] = {}
        for name in SERVICES:
            prefix = f"CREDITLINE_{name.upper()}_"
            env = {prefix + "PORT": str(ports[name]), "CREDITLINE_LOG_LEVEL": "warning"}
            env |= {prefix + key: value for key, value in settings[name].items()}
            process = stack.enter_context(
                server_process(["-m", f"services.{name}"], ports[name], env)
            )
            wait_serving(ports[name])
            self.pids[name] = process.pid
        channel = {
            name: stack.enter_context(grpc.insecure_channel(targets[name])) for name in SERVICES
        }
        self.scoring = scoring_service_pb2_grpc.ScoringServiceStub(channel["scoring"])
        self.limits = limits_service_pb2_grpc.LimitsServiceStub(channel["limits"])
        self.monitoring = monitoring_service_pb2_grpc.MonitoringServiceStub(channel["monitoring"])

    def resident(self) -> dict[str, float]:
        return {name: resident_mib(pid)[0] for name, pid in self.pids.items()}


class Lines:
    """The open lines, and each one's next repayment event (sequence and time)."""

    def __init__(self) -> None:
        self.accounts: list[str] = []
        self.sequence: dict[str, int] = {}
        self.lock = threading.Lock()
        self.customers = itertools.count()
        self.event_ids = itertools.count()

    def open(self, suite: Suite, traffic: Traffic) -> None:
        try:
            response = suite.limits.OpenAccount(open_request(next(self.customers)), timeout=10)
        except grpc.RpcError as error:
            traffic.count("OpenAccount", error)
            return
        traffic.count("OpenAccount")
        account = response.account.account_id
        opened = self.event(
            account,
            account_opened=monitoring_pb.AccountOpened(
                credit_line=response.account.credit_line, monthly_income=cny(2_000_000)
            ),
        )
        _ingest(suite, traffic, [opened])
        with self.lock:
            self.accounts.append(account)

    def event(self, account: str, **kind) -> monitoring_pb.RepaymentEvent:
        with self.lock:
            sequence = self.sequence[account] = self.sequence.get(account, 0) + 1
        return monitoring_pb.RepaymentEvent(
            event_id=f"soak-{next(self.event_ids)}",
            account_id=account,
            occurred_at=Timestamp(seconds=START + sequence * DAY),
            sequence=sequence,
            **kind,
        )

    def pick(self, chance: random.Random) -> str:
        with self.lock:
            return chance.choice(self.accounts)


def databases(stack: ExitStack, postgres: bool) -> dict[str, str]:
    """A database for limits and one for monitoring: SQLite files, or PostgreSQL schemas."""
    if postgres:
        urls = {name: stack.enter_context(postgres_schema()) for name in ("limits", "monitoring")}
        if None in urls.values():
            raise SystemExit(f"no PostgreSQL answers at {POSTGRES_URL}")
        return urls  # type: ignore[return-value]
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
    return {name: f"sqlite:///{directory / f'{name}.db'}" for name in ("limits", "monitoring")}


def _ingest(suite: Suite, traffic: Traffic, events: list) -> None:
    request = monitoring_pb.IngestRequest(
        batch=monitoring_pb.EventBatch(batch_id=uuid.uuid4().hex, events=events)
    )
    try:
        for _ in suite.monitoring.Ingest(iter([request]), timeout=30):
            pass
        traffic.count("Ingest")
    except grpc.RpcError as error:
        traffic.count("Ingest", error)


def callers(suite: Suite, lines: Lines, traffic: Traffic) -> dict[str, Callable[[], None]]:
    """One call of each kind; the soak repeats each in a thread of its own."""
    version_dir = sorted((BUNDLED_MODELS / MODEL).iterdir())[-1]
    card = json.loads((version_dir / "card.json").read_text())
    _, named = sample_rows(card)
    score = score_request(named[0])
    batch = batch_request(card, [named[i % len(named)] for i in range(200)])
    chance = random.Random(11)
    draws: dict[str, Callable[[], object]] = {}

    def call(kind: str, method: Callable[[], object]) -> None:
        try:
            method()
            traffic.count(kind)
        except grpc.RpcError as error:
            traffic.count(kind, error)

    def lending() -> None:
        account = lines.pick(chance)
        draw = draws.setdefault(account, drawer(suite.limits, account))
        call("Draw", draw)
        repay = limits_pb.RepayRequest(
            request_id=uuid.uuid4().hex, account_id=account, amount=cny(1), loan_id="bench"
        )
        call("Repay", lambda: suite.limits.Repay(repay, timeout=10))
        get = limits_pb.GetAccountRequest(account_id=account)
        call("GetAccount", lambda: suite.limits.GetAccount(get, timeout=10))
        history = limits_pb.ListLimitEventsRequest(account_id=account, page_size=20)
        call("ListLimitEvents", lambda: suite.limits.ListLimitEvents(history, timeout=10))
        view = limits_pb.GetCustomerViewRequest(customer_id=f"bench-{chance.randrange(ACCOUNTS)}")
        call("GetCustomerView", lambda: suite.limits.GetCustomerView(view, timeout=10))
        if chance.random() < 0.02:
            lines.open(suite, traffic)

    def repayments() -> None:
        events = []
        for _ in range(100):
            account = lines.pick(chance)
            roll = chance.random()
            if roll < 0.005:
                kind = {"payment_missed": monitoring_pb.PaymentMissed(
                    loan_id="bench", instalment_number=1, amount_due=cny(10_000), days_past_due=3
                )}  # fmt: skip
            elif roll < 0.6:
                kind = {"repayment": monitoring_pb.Repayment(
                    loan_id="bench", amount=cny(100), timing=monitoring_pb.REPAYMENT_TIMING_ON_TIME
                )}  # fmt: skip
            elif roll < 0.9:
                kind = {"transaction": monitoring_pb.Transaction(amount=cny(5_000))}
            else:
                kind = {"credit_inquiry": monitoring_pb.CreditInquiry(lender_kind="bank")}
            events.append(lines.event(account, **kind))
        _ingest(suite, traffic, events)

    return {
        "Score": lambda: call("Score", lambda: suite.scoring.Score(score, timeout=10)),
        "BatchScore": lambda: call(
            "BatchScore", lambda: suite.scoring.BatchScore(batch, timeout=30)
        ),
        "lending": lending,
        "repayments": repayments,
        "WatchAlerts": lambda: _watch(
            traffic,
            "WatchAlerts",
            lambda: suite.monitoring.WatchAlerts(
                monitoring_pb.WatchAlertsRequest(), timeout=STREAM_SECONDS
            ),
        ),
        "WatchNotices": lambda: _watch(
            traffic,
            "WatchNotices",
            lambda: suite.limits.WatchNotices(
                limits_pb.WatchNoticesRequest(), timeout=STREAM_SECONDS
            ),
        ),
        "RunReview": lambda: call(
            "RunReview",
            lambda: [
                *suite.limits.RunReview(
                    limits_pb.RunReviewRequest(request_id=uuid.uuid4().hex), timeout=60
                )
            ],
        ),
    }


def _watch(traffic: Traffic, kind: str, open_stream: Callable[[], grpc.Future]) -> None:
    """Reads a watch until its deadline hangs it up, as a client that reconnects would."""
    stream = open_stream()
    try:
        for _ in stream:
            pass
        traffic.count(kind)
    except grpc.RpcError as error:
        if error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
            traffic.count(kind)  # the client's own hang-up
        else:
            traffic.count(kind, error)


def soak(
    minutes: float, postgres: bool = False
) -> tuple[list[tuple], Traffic, list[tuple[int, dict[str, float]]]]:
    """Runs the soak: per service, its memory idle, half-way and at the end, the second
    half's growth and a verdict; what the callers did; each service's memory minute by minute."""
    traffic = Traffic()
    with ExitStack() as stack:
        suite = Suite(databases(stack, postgres), stack)
        idle = suite.resident()
        lines = Lines()
        for _ in range(ACCOUNTS):
            lines.open(suite, traffic)
        stop = threading.Event()

        def repeat(call: Callable[[], None], every: float) -> None:
            while not stop.is_set():
                call()
                stop.wait(every)

        threads = [
            threading.Thread(target=repeat, args=(call, PAUSES.get(kind, 0.0)), daemon=True)
            for kind, call in callers(suite, lines, traffic).items()
        ]
        for thread in threads:
            thread.start()
        samples: list[dict[str, float]] = []
        started = time.monotonic()
        while (elapsed := time.monotonic() - started) < minutes * 60:
            time.sleep(min(SAMPLE_SECONDS, minutes * 60 - elapsed))
            samples.append(suite.resident())
        stop.set()
        for thread in threads:
            thread.join(STREAM_SECONDS + 30)
    half = len(samples) // 2
    rows = []
    for name in SERVICES:
        # Medians of the last few samples of each half, so one sample's noise decides nothing.
        middle = statistics.median(s[name] for s in samples[max(0, half - 3) : half + 1])
        end = statistics.median(s[name] for s in samples[-4:])
        growth = end - middle
        steady = growth <= max(STEADY_MIB, STEADY_FRACTION * middle)
        rows.append((name, idle[name], middle, end, growth, "steady" if steady else "GROWING"))
    per_minute = int(60 / SAMPLE_SECONDS)
    trace = [
        (i // per_minute, samples[i - 1]) for i in range(per_minute, len(samples) + 1, per_minute)
    ]
    return rows, traffic, trace
