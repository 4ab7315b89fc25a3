"""Monitoring: events ingested per second by one process, durably, in batches of 100 and 1,000,
over gRPC and from a NATS JetStream stream, and the time from an event to its alert at 1,000
events per second, on SQLite and PostgreSQL, next to each database's raw one-row commit rate
measured in the same run.

The service runs as its own process (`python -m services.monitoring`). Limits and scoring are
not running: signals wait in the outbox and rescoring waits with backoff, so what is measured
is ingestion itself (rules, profiles, alerts and outbox rows, all committed before the ack).
"""

import asyncio
import contextlib
import itertools
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import make_url

from bench.harness import child_pid, cpu_seconds, service_stub
from bench.limits import POSTGRES_URL, postgres_schema, raw_commits
from creditline.monitoring.v1 import monitoring_service_pb2 as pb
from creditline.monitoring.v1 import monitoring_service_pb2_grpc
from creditline.type.v1.money_pb2 import Money
from services.monitoring.jetstream import DUPLICATE_WINDOW_SECONDS
from services.monitoring.partitions import subject_of

ACCOUNTS = 10_000
RATE_TARGET = 20_000  # events per second with batches of 1,000
LATENCY_RATE = 1_000  # events per second while event-to-alert latency is measured
LATENCY_TARGET_MS = 100.0
NATS_URL = "nats://127.0.0.1:4222"
JETSTREAM_EVENTS = 20_000  # waiting in the stream before the consumer starts
DRAIN_DEADLINE_SECONDS = 300
PARTITIONS = 8  # of the stream's subjects, in the partitioned JetStream rows
START = 1_767_600_000  # 2026-01-05, in epoch seconds


def cny(fen: int) -> Money:
    return Money(currency_code="CNY", minor_units=fen)


class Book:
    """Events for ACCOUNTS accounts: opened first, then a month of ordinary life each."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.sequence = [0] * ACCOUNTS
        self.clock = [START] * ACCOUNTS
        self.ids = itertools.count()
        self.random = random.Random(7)

    def event(self, account: int, **kind) -> pb.RepaymentEvent:
        self.sequence[account] += 1
        self.clock[account] += 3600
        return pb.RepaymentEvent(
            event_id=f"{self.prefix}-{next(self.ids)}",
            account_id=f"{self.prefix}-acct-{account}",
            occurred_at=Timestamp(seconds=self.clock[account]),
            sequence=self.sequence[account],
            **kind,
        )

    def opened(self) -> Iterator[pb.RepaymentEvent]:
        for account in range(ACCOUNTS):
            yield self.event(
                account,
                account_opened=pb.AccountOpened(
                    credit_line=cny(500_000), monthly_income=cny(2_000_000)
                ),
            )

    def ordinary(self) -> Iterator[pb.RepaymentEvent]:
        """Repayments, draws, transactions and the odd inquiry, on random accounts."""
        while True:
            account = self.random.randrange(ACCOUNTS)
            roll = self.random.random()
            if roll < 0.5:
                body = {
                    "repayment": pb.Repayment(
                        loan_id="l1", amount=cny(10_000), timing=pb.REPAYMENT_TIMING_ON_TIME
                    )
                }
            elif roll < 0.7:
                body = {"line_drawn": pb.LineDrawn(loan_id="l1", amount=cny(1_000), term_months=3)}
            elif roll < 0.95:
                body = {"transaction": pb.Transaction(amount=cny(5_000 + account % 100))}
            else:
                body = {"credit_inquiry": pb.CreditInquiry(lender_kind="bank")}
            yield self.event(account, **body)

    def batches(self, events: Iterator[pb.RepaymentEvent], size: int, count: int):
        return [
            pb.IngestRequest(
                batch=pb.EventBatch(batch_id=str(i), events=list(itertools.islice(events, size)))
            )
            for i in range(count)
        ]


def monitoring_server(url: str):
    """A monitoring server process on `url`, serving, and a stub connected to it."""
    settings = {
        "DATABASE_URL": url,
        "RULES_RELOAD_INTERVAL_SECONDS": "0",
        "LIMITS_TARGET": "127.0.0.1:1",
        "SCORING_TARGET": "127.0.0.1:1",
        "LOG_LEVEL": "warning",
    }
    return service_stub("monitoring", monitoring_service_pb2_grpc.MonitoringServiceStub, settings)


def ingest_rate(stub, requests: list[pb.IngestRequest]) -> float:
    """Events acknowledged per second over one Ingest stream."""
    events = sum(len(r.batch.events) for r in requests)
    started = time.perf_counter()
    for response in stub.Ingest(iter(requests), timeout=600):
        assert response.ack.applied == len(response.ack.results), "events were refused"
    return events / (time.perf_counter() - started)


def alert_latency(stub, book: Book, seconds: float) -> tuple[float, float]:
    """p50 and p99 (ms) from publishing an event to receiving its alert from WatchAlerts,
    with batches of 10 events every 10 ms; one event of each batch raises an alert."""
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    watch = stub.WatchAlerts(
        pb.WatchAlertsRequest(filter=pb.AlertFilter(types=["days_past_due_1"])), timeout=600
    )

    def read() -> None:
        try:
            for item in watch:
                if item.HasField("alert"):
                    received[item.alert.event_id] = time.perf_counter()
        except grpc.RpcError:
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(0.5)
    ordinary = book.ordinary()
    deadline = time.perf_counter() + seconds
    next_at = time.perf_counter()
    for account in itertools.count():
        if time.perf_counter() >= deadline:
            break
        late = book.event(
            account % ACCOUNTS,
            days_past_due_updated=pb.DaysPastDueUpdated(days_past_due=1 + account // ACCOUNTS),
        )
        events = [late, *itertools.islice(ordinary, 9)]
        sent[late.event_id] = time.perf_counter()
        stub.PublishEvents(pb.PublishEventsRequest(batch=pb.EventBatch(events=events)), timeout=10)
        next_at += 10 / LATENCY_RATE
        time.sleep(max(0.0, next_at - time.perf_counter()))
    time.sleep(1.0)
    watch.cancel()
    latencies = [1000 * (received[e] - sent[e]) for e in sent if e in received]
    if len(latencies) < len(sent) * 0.99:
        raise RuntimeError(f"only {len(latencies)} of {len(sent)} alerts arrived")
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


@dataclass(frozen=True)
class Drained:
    rate: float  # events per second, from the first delivery to the last acknowledgement
    deliveries: float  # deliveries per event: above 1, events came ahead of their account


def jetstream_rate(
    url: str, book: Book, replicas: int = 1, partitions: int = 0, own: bool = True
) -> Drained | str:
    """Events per second `replicas` monitoring processes apply of JETSTREAM_EVENTS ordinary
    events, in batches of 1,000, from the first publish (once every replica is bound to its
    consumers) to the last acknowledgement, and the deliveries that took. Unpartitioned they
    share one durable consumer; with `partitions`, each consumes its own
    (replica i of n: every partition p with p mod n = i), or all of them (`own` false: every
    partition's consumer pulled by every replica). Why not, when no NATS server answers."""
    token = uuid.uuid4().hex[:12]
    stream, subject = f"BENCH_REPAYMENTS_{token}", f"bench.{token}.repayments"
    events = list(itertools.islice(book.ordinary(), JETSTREAM_EVENTS))
    try:
        asyncio.run(_create_stream(stream, subject, partitions))
    except (OSError, TimeoutError, nats.errors.Error) as error:
        return f"skipped: NATS JetStream not reachable at {NATS_URL} ({type(error).__name__})"
    settings = {
        "DATABASE_URL": url,
        "RULES_RELOAD_INTERVAL_SECONDS": "0",
        "LIMITS_TARGET": "127.0.0.1:1",
        "SCORING_TARGET": "127.0.0.1:1",
        "LOG_LEVEL": "warning",
        "JETSTREAM_URL": NATS_URL,
        "JETSTREAM_STREAM": stream,
        "JETSTREAM_SUBJECT": subject,
        "JETSTREAM_CONSUMER": f"bench-{token}",
        "JETSTREAM_DEAD_LETTER_STREAM": f"{stream}_DEAD",
        "JETSTREAM_DEAD_LETTER_SUBJECT": f"bench.{token}.deadletter",
        "JETSTREAM_BATCH_SIZE": "1000",
        "JETSTREAM_PARTITIONS": str(partitions),
    }
    consumers = (
        [f"bench-{token}-{p}" for p in range(partitions)] if partitions else [f"bench-{token}"]
    )
    try:
        with contextlib.ExitStack() as processes:
            for index in range(replicas):
                consume = f"{index}/{replicas}" if partitions and own else "all"
                processes.enter_context(
                    service_stub(
                        "monitoring",
                        monitoring_service_pb2_grpc.MonitoringServiceStub,
                        {**settings, "JETSTREAM_CONSUME_PARTITIONS": consume},
                    )
                )
            return asyncio.run(_drain_rate(stream, subject, events, partitions, consumers))
    finally:
        asyncio.run(_delete_streams(stream, f"{stream}_DEAD"))


async def _create_stream(stream: str, subject: str, partitions: int) -> None:
    nc = await nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False)
    try:
        await nc.jetstream().add_stream(
            name=stream,
            subjects=[f"{subject}.*.*" if partitions else f"{subject}.*"],
            duplicate_window=DUPLICATE_WINDOW_SECONDS,
        )
    finally:
        await nc.close()


async def _drain_rate(
    stream: str,
    subject: str,
    events: list[pb.RepaymentEvent],
    partitions: int,
    consumers: list[str],
) -> Drained | str:
    """Once `consumers` all exist (the replicas create them, then bind), publishes `events` and
    times them from the first publish to every one acknowledged on all of the consumers. A
    replica started earlier than another gets no head start."""
    nc = await nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False)
    try:
        js = nc.jetstream()
        deadline = time.perf_counter() + DRAIN_DEADLINE_SECONDS
        while True:
            try:
                for consumer in consumers:
                    await js.consumer_info(stream, consumer)
                break
            except (nats.js.errors.NotFoundError, nats.errors.TimeoutError):
                if time.perf_counter() > deadline:
                    return "the consumers were never created"
                await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # bound, and fetching
        started = time.perf_counter()
        # Core publishes on one connection keep their order.
        for event in events:
            await nc.publish(
                subject_of(subject, event.account_id, partitions),
                event.SerializeToString(),
                headers={"Nats-Msg-Id": event.event_id},
            )
        await nc.flush()
        while time.perf_counter() < deadline:
            try:
                infos = [await js.consumer_info(stream, consumer) for consumer in consumers]
            except nats.errors.TimeoutError:
                infos = []
            # Nothing pending once every event is stored: all delivered and acknowledged.
            if (
                infos
                and all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)
                and (await js.stream_info(stream)).state.messages >= len(events)
            ):
                deliveries = sum(i.delivered.consumer_seq for i in infos)
                now = time.perf_counter()
                return Drained(len(events) / (now - started), deliveries / len(events))
            await asyncio.sleep(0.1)
        return f"not drained within {DRAIN_DEADLINE_SECONDS} s"
    finally:
        await nc.close()


async def _delete_streams(*names: str) -> None:
    nc = await nats.connect(NATS_URL, connect_timeout=3, allow_reconnect=False)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()


def database_rows(name: str, url: str, seconds: float) -> list[tuple]:
    raw = raw_commits(url, 1, seconds)
    rows = [(f"{name}: raw one-row commits, 1 writer", f"{raw.rate:,.0f} /s", "", "", "")]
    book = Book(f"{name.lower()}-{time.time_ns()}")
    with monitoring_server(url) as stub:
        pid = child_pid("services.monitoring")
        opened = book.opened()
        ingest_rate(stub, book.batches(opened, 1_000, ACCOUNTS // 1_000))
        ordinary = book.ordinary()
        for size, count in ((100, 300), (1_000, 60)):
            requests = book.batches(ordinary, size, count)
            cpu_before = cpu_seconds(pid) if pid else 0.0
            rate = grpc_rate = ingest_rate(stub, requests)
            rows.append(
                (
                    f"{name}: Ingest, batches of {size:,}",
                    f"{rate:,.0f} events/s",
                    "raw one-row commits",
                    rate / raw.rate,
                    f">= {RATE_TARGET:,}/s" if size == 1_000 else "",
                )
            )
        if pid:
            # What one batch of 1,000 costs the server process itself (the database's own
            # work is apart): the rate one core could give it, whatever else runs here.
            per_batch_ms = 1000 * (cpu_seconds(pid) - cpu_before) / count
            rows.append(
                (
                    f"{name}: Ingest, batches of 1,000, server process CPU per batch",
                    f"{per_batch_ms:.1f} ms ({1_000_000 / per_batch_ms:,.0f} events/s a core)",
                    "",
                    "",
                    f"<= {1_000_000 / RATE_TARGET:.0f} ms for {RATE_TARGET:,}/s a core",
                )
            )
        p50, p99 = alert_latency(stub, book, seconds)
        rows.append(
            (
                f"{name}: event to alert p50 / p99 at {LATENCY_RATE:,} events/s",
                f"{p50:.1f} / {p99:.1f} ms",
                f"raw commit p99 {raw.p99_ms:.2f} ms",
                p99 / raw.p99_ms,
                f"p99 < {LATENCY_TARGET_MS:.0f} ms",
            )
        )
    # With the gRPC server above stopped: the same database, each run on accounts of its own.
    # Two replicas share one durable consumer, or each consumes its own partitions, or both
    # consume every partition; on SQLite they would share one writer, so only PostgreSQL.
    one_replica: float | None = None
    runs = [(1, 0, True, "1 replica")]
    if url.startswith("postgresql"):
        runs += [
            (2, 0, True, "2 replicas on one consumer"),
            (2, PARTITIONS, True, f"2 replicas, {PARTITIONS} partitions, each its own half"),
            (2, PARTITIONS, False, f"2 replicas, {PARTITIONS} partitions, each all of them"),
        ]
    for replicas, partitions, own, label in runs:
        drained = jetstream_rate(url, _opened_book(url, name), replicas, partitions, own)
        measure = f"{name}: JetStream ingestion, {label}"
        if isinstance(drained, str):
            rows.append((measure, drained, "", "", ""))
            continue
        value = f"{drained.rate:,.0f} events/s, {drained.deliveries:.2f} deliveries/event"
        if one_replica is None:
            one_replica = drained.rate
            rows.append((measure, value, "Ingest, batches of 1,000", drained.rate / grpc_rate, ""))
        else:
            rows.append((measure, value, "1 replica", drained.rate / one_replica, ""))
    return rows


def _opened_book(url: str, name: str) -> Book:
    """A book of accounts of its own, opened over gRPC: a run whose events were dead-lettered
    (a replica that gave up on a gap) leaves no account stuck for the next."""
    book = Book(f"{name.lower()}-{time.time_ns()}")
    with monitoring_server(url) as stub:
        ingest_rate(stub, book.batches(book.opened(), 1_000, ACCOUNTS // 1_000))
    return book


def run(seconds: float) -> list[tuple]:
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        rows += database_rows("SQLite", f"sqlite:///{Path(directory) / 'monitoring.db'}", seconds)
    with postgres_schema() as url:
        if url is None:
            where = make_url(POSTGRES_URL)
            rows.append(
                ("PostgreSQL", f"skipped: not reachable at {where.host}:{where.port}", "", "", "")
            )
        else:
            rows += database_rows("PostgreSQL", url, seconds)
    return rows
