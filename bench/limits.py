"""Draw on SQLite and PostgreSQL against the floor of each: its raw one-row commit rate.

A Draw is one durable transaction (read the idempotency key, lock the account, update it, store
the answer), so the database's commit rate bounds it. The floor is measured in the same run, on
the same durability settings: SQLite through services.common.database (WAL,
synchronous=FULL), PostgreSQL with synchronous_commit on. The service runs as its own process
(`python -m services.limits`), with a scoring process beside it for opening the accounts.
"""

import contextlib
import itertools
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy
from sqlalchemy import BigInteger, Column, MetaData, String, Table, insert, make_url

from bench.harness import (
    child_pid,
    cpu_seconds,
    fill_features,
    free_port,
    server_process,
    service_stub,
)
from creditline.limits.v1 import limits_service_pb2 as pb
from creditline.limits.v1 import limits_service_pb2_grpc
from creditline.type.v1 import money_pb2
from services.common.database import create_engine
from services.limits.ledger import Line
from services.limits.records import Account, RiskState
from services.limits.store import LimitsStore

POSTGRES_URL = os.environ.get(
    "CREDITLINE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_FLIGHT = 8
TARGET = ">= 0.5x"
APPLICANT = {  # band A: a 5,000-yuan line, room for 500,000 one-fen draws
    "duration_months": 12, "credit_amount": 2000, "checking_account": "none",
    "credit_history": "critical_or_other_credits", "purpose": "car_used",
    "savings": "1000_or_more", "employment_since": "7_years_or_more", "installment_rate": 2,
    "other_debtors": "guarantor", "residence_since": 4, "property": "real_estate",
    "other_installment_plans": "none", "housing": "own", "existing_credits": 1, "job": "skilled",
    "dependants": 1, "telephone": "registered",
}  # fmt: skip

commits = Table(
    "bench_commits",
    MetaData(),
    Column("id", String, primary_key=True),
    Column("amount", BigInteger, nullable=False),
)


@dataclass(frozen=True)
class Run:
    rate: float  # calls per second, all clients together
    p50_ms: float
    p99_ms: float
    calls: int = 0  # made in all, the warm-up included


def clients_run(calls: list[Callable[[], object]], seconds: float, warmup: int = 20) -> Run:
    """Each call back to back in a thread of its own for `seconds`; the rate and the latency."""
    for call in calls:
        for _ in range(warmup):
            call()
    timings: list[list[float]] = [[] for _ in calls]
    stop = threading.Event()

    def client(call: Callable[[], object], seen: list[float]) -> None:
        while not stop.is_set():
            started = time.perf_counter()
            call()
            seen.append(time.perf_counter() - started)

    threads = [
        threading.Thread(target=client, args=(call, seen))
        for call, seen in zip(calls, timings, strict=True)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    every = np.concatenate([np.asarray(t) for t in timings]) * 1000
    return Run(
        len(every) / elapsed,
        float(np.percentile(every, 50)),
        float(np.percentile(every, 99)),
        len(every) + warmup * len(calls),
    )


def raw_commits(url: str, writers: int, seconds: float) -> Run:
    """One-row INSERT + COMMIT transactions, back to back, by `writers` connections."""
    engine = create_engine(url)
    try:
        commits.create(engine, checkfirst=True)

        def commit() -> None:
            with engine.begin() as connection:
                connection.execute(insert(commits), {"id": uuid.uuid4().hex, "amount": 1})

        return clients_run([commit] * writers, seconds)
    finally:
        engine.dispose()


@contextmanager
def postgres_schema() -> Iterator[str | None]:
    """The URL of a fresh schema of its own, dropped afterwards; None if none is reachable."""
    admin = sqlalchemy.create_engine(
        POSTGRES_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    schema = f"bench_{uuid.uuid4().hex}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    except sqlalchemy.exc.OperationalError:
        admin.dispose()
        yield None
        return
    try:
        url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


def open_request(customer: int) -> pb.OpenAccountRequest:
    request = pb.OpenAccountRequest(
        request_id=uuid.uuid4().hex,
        customer_id=f"bench-{customer}",
        monthly_income=money_pb2.Money(currency_code="CNY", minor_units=2_000_000),
    )
    fill_features(request.features, APPLICANT)
    return request


def drawer(stub, account_id: str) -> Callable[[], object]:
    """Draws one fen at a time from the account, each with a request_id of its own."""
    prefix, count = uuid.uuid4().hex, iter(range(10**9))
    amount = money_pb2.Money(currency_code="CNY", minor_units=1)

    def draw() -> object:
        request = pb.DrawRequest(
            request_id=f"{prefix}-{next(count)}",
            account_id=account_id,
            amount=amount,
            purpose="consumption",
            loan_id="bench",
        )
        return stub.Draw(request, timeout=10)

    return draw


def limits_server(url: str, scoring_port: int):
    """A limits server process on `url`, serving, and a stub connected to it."""
    settings = {
        "DATABASE_URL": url,
        "SCORING_TARGET": f"127.0.0.1:{scoring_port}",
        "POLICY_RELOAD_INTERVAL_SECONDS": "0",
    }
    return service_stub("limits", limits_service_pb2_grpc.LimitsServiceStub, settings)


def draws(url: str, scoring_port: int, seconds: float) -> tuple[Run, Run, float | None]:
    """Draw with one client, then with IN_FLIGHT clients on accounts of their own; and the
    limits process's CPU seconds per draw of the second run (None where /proc does not tell)."""
    with limits_server(url, scoring_port) as stub:
        accounts = [
            stub.OpenAccount(open_request(i), timeout=10).account.account_id
            for i in range(IN_FLIGHT)
        ]
        one = clients_run([drawer(stub, accounts[0])], seconds)
        pid = child_pid("services.limits")
        cpu_before = cpu_seconds(pid) if pid else 0.0
        many = clients_run([drawer(stub, a) for a in accounts], seconds)
        cpu_per_draw = (cpu_seconds(pid) - cpu_before) / many.calls if pid else None
    return one, many, cpu_per_draw


def database_rows(name: str, url: str, scoring_port: int, seconds: float) -> list[tuple]:
    raw_one = raw_commits(url, 1, seconds)
    raw_many = raw_commits(url, IN_FLIGHT, seconds)
    one, many, cpu_per_draw = draws(url, scoring_port, seconds)
    rows = [
        (f"{name}: raw one-row commits, 1 writer", f"{raw_one.rate:,.0f} /s", "", "", ""),
        (
            f"{name}: raw one-row commits, {IN_FLIGHT} writers",
            f"{raw_many.rate:,.0f} /s",
            "",
            "",
            "",
        ),
        (
            f"{name}: Draw, 1 client",
            f"{one.rate:,.0f} calls/s",
            "raw commits, 1 writer",
            one.rate / raw_one.rate,
            TARGET,
        ),
        (
            f"{name}: Draw, {IN_FLIGHT} in flight",
            f"{many.rate:,.0f} calls/s",
            f"raw commits, {IN_FLIGHT} writers",
            many.rate / raw_many.rate,
            TARGET,
        ),
        (
            f"{name}: Draw p50 / p99, 1 client",
            f"{one.p50_ms:.2f} / {one.p99_ms:.2f} ms",
            f"raw commit p99 {raw_one.p99_ms:.2f} ms",
            one.p99_ms / raw_one.p99_ms,
            "",
        ),
        (
            f"{name}: Draw p50 / p99, {IN_FLIGHT} in flight",
            f"{many.p50_ms:.2f} / {many.p99_ms:.2f} ms",
            f"raw commit p99 {raw_many.p99_ms:.2f} ms",
            many.p99_ms / raw_many.p99_ms,
            "",
        ),
    ]
    if cpu_per_draw is not None:
        # What one draw costs the limits process itself (the database's own work is apart):
        # 0.5x of the raw commits needs at most this much, one process being one core.
        rows.append(
            (
                f"{name}: Draw, {IN_FLIGHT} in flight, server process CPU per call",
                f"{cpu_per_draw * 1e6:,.0f} µs",
                "",
                "",
                f"<= {1e6 / (0.5 * raw_many.rate):,.0f} µs for 0.5x",
            )
        )
    return rows


BEHAVIOUR_PROFILE = {  # a clean account, band A
    "utilisation": 0.2, "days_past_due": 0, "max_dpd_3m": 0, "max_dpd_6m": 0, "max_dpd_12m": 0,
    "dpd30_episodes_12m": 0, "dpd60_episodes_12m": 0, "dpd90_episodes_12m": 0,
    "on_time_streak": 12, "partial_payments_6m": 0, "inquiries_7d": 0, "inquiries_30d": 0,
    "months_on_book": 30, "income_change": 0.05, "debt_to_income": 0.2,
}  # fmt: skip
REVIEW_TARGET = 5_000  # accounts per second: a million accounts in under four minutes


def seed_book(url: str, accounts: int) -> None:
    """`accounts` lines opened two years ago and due for review; nine in ten with a behaviour
    profile monitoring reported a day ago (fresh), the others never reported."""
    opened = datetime.now(UTC) - timedelta(days=730)
    reported = RiskState(
        profile=BEHAVIOUR_PROFILE, profile_at=datetime.now(UTC) - timedelta(days=1)
    )
    store = LimitsStore.open(url)
    try:
        with store.unit_of_work() as uow:
            for i in range(accounts):
                uow.insert_account(
                    Account(
                        account_id=f"acct-{i:08d}",
                        customer_id=f"cust-{i}",
                        currency_code="CNY",
                        line=Line(credit_line=200_000, drawn=(i % 7) * 10_000),
                        opened_at=opened,
                        tier="standard",
                        risk_band="B",
                        next_review_at=opened + timedelta(days=365),
                        risk=reported if i % 10 else RiskState(),
                        declared_monthly_income=2_000_000,  # 20,000 yuan a month
                    )
                )
    finally:
        store.close()


def review_rows(url: str, scoring_port: int, accounts: int) -> list[tuple]:
    """RunReview over a seeded book through a real limits process, in accounts per second."""
    seed_book(url, accounts)
    with limits_server(url, scoring_port) as stub:
        started = time.perf_counter()
        *_, last = stub.RunReview(pb.RunReviewRequest(request_id="bench-review"), timeout=3600)
        elapsed = time.perf_counter() - started
    rate = last.accounts_reviewed / elapsed
    return [
        (
            f"SQLite: RunReview, {accounts:,} accounts",
            f"{rate:,.0f} accounts/s",
            f"target {REVIEW_TARGET:,}/s",
            rate / REVIEW_TARGET,
            f">= {REVIEW_TARGET:,} accounts/s",
        )
    ]


REVIEW_SHARDS = 8


@contextmanager
def limits_servers(url: str, scoring_port: int, count: int) -> Iterator[list]:
    """`count` limits processes on one database (replicas), and a stub for each."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(limits_server(url, scoring_port)) for _ in range(count)]


def sharded_review_rate(url: str, scoring_port: int, accounts: int, workers: int) -> float:
    """A seeded book reviewed by one sharded run that `workers` limits processes work at
    once (each a RunReview call with the run's id), in accounts per second."""
    seed_book(url, accounts)
    with limits_servers(url, scoring_port, workers) as stubs:
        request = pb.RunReviewRequest(request_id="bench-sharded", shards=REVIEW_SHARDS)
        finals: list = [None] * workers

        def work(i: int) -> None:
            *_, finals[i] = stubs[i].RunReview(request, timeout=3600)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    return finals[0].accounts_reviewed / elapsed


def sharded_review_rows(name: str, urls, scoring_port: int, accounts: int) -> list[tuple]:
    """The sharded review with one and with two workers, each on a fresh copy of the book
    (`urls` yields a fresh database URL per run)."""
    one = sharded_review_rate(next(urls), scoring_port, accounts, 1)
    two = sharded_review_rate(next(urls), scoring_port, accounts, 2)
    shards = f"{REVIEW_SHARDS} shards"
    return [
        (
            f"{name}: sharded RunReview, {accounts:,} accounts, 1 worker",
            f"{one:,.0f} accounts/s",
            f"target {REVIEW_TARGET:,}/s",
            one / REVIEW_TARGET,
            f">= {REVIEW_TARGET:,} accounts/s",
        ),
        (
            f"{name}: sharded RunReview, {accounts:,} accounts, 2 workers ({shards})",
            f"{two:,.0f} accounts/s",
            "1 worker",
            two / one,
            "> 1x (2x at best)",
        ),
    ]


def _sqlite_urls(directory: str) -> Iterator[str]:
    for i in itertools.count():
        yield f"sqlite:///{Path(directory) / f'sharded-{i}.db'}"


def _postgres_urls(stack: contextlib.ExitStack) -> Iterator[str]:
    while True:
        url = stack.enter_context(postgres_schema())
        if url is None:
            return
        yield url


def run(seconds: float, review_accounts: int = 100_000) -> list[tuple]:
    """SQLite, then PostgreSQL (skipped with a note when no server answers)."""
    seconds = min(seconds, 5.0) / 2  # four runs a database: keep the section near a minute
    scoring_port = free_port()
    scoring_env = {
        "CREDITLINE_SCORING_PORT": str(scoring_port),
        "CREDITLINE_SCORING_RELOAD_INTERVAL_SECONDS": "0",
    }
    rows = []
    with (
        server_process(["-m", "services.scoring"], scoring_port, scoring_env),
        tempfile.TemporaryDirectory() as directory,
    ):
        rows += database_rows(
            "SQLite", f"sqlite:///{Path(directory) / 'limits.db'}", scoring_port, seconds
        )
        if review_accounts:
            book = f"sqlite:///{Path(directory) / 'book.db'}"
            rows += review_rows(book, scoring_port, review_accounts)
            rows += sharded_review_rows(
                "SQLite", _sqlite_urls(directory), scoring_port, review_accounts
            )
        with postgres_schema() as url:
            if url is None:
                where = make_url(POSTGRES_URL)
                note = f"skipped: not reachable at {where.host}:{where.port}"
                rows.append(("PostgreSQL", note, "", "", ""))
            else:
                rows += database_rows("PostgreSQL", url, scoring_port, seconds)
        if review_accounts:
            with contextlib.ExitStack() as schemas:
                urls = _postgres_urls(schemas)
                if next(urls, None) is not None:  # reachable (that first schema stays unused)
                    rows += sharded_review_rows("PostgreSQL", urls, scoring_port, review_accounts)
    return rows


if __name__ == "__main__":
    for row in run(5.0):
        print(*row, sep=" | ")
